"""An event-driven upstream for benchmarks with hundreds of concurrent streams (OpenAI Chat only).

The built-in mock provider (``mock_provider.py``) serves each connection on its own thread
and sleeps between tokens: at a thousand concurrent streams its own CPU and thread switching
would be part of what a benchmark measures. This one serves every connection of a process
from one asyncio loop, writes the tokens that are due together from one timer callback per
millisecond tick, and can run as several processes accepting on one listening socket
(``--procs``), so the upstream stays far from being the bottleneck (``bench/bench_scale.py``
reports its CPU next to the node's).

It speaks OpenAI Chat Completions, streamed and not, with keep-alive. Token ``i`` of a reply
is ``"w<i> "``, so a client can check that every token arrived once and in order. The reply
has ``max_tokens`` tokens (24 when absent); the first is sent at once, the next ``--drip-ms`` apart, or as a path
directive says (``/mock:drip_ms=25;delay_ms=5/v1``, like the built-in mock's). No faults.

    python -m actors.testing.stream_mock --port 0 --procs 2 --drip-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any

__all__ = ["StreamMock", "expected_text", "realtime"]

TICK_S = 0.001
MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
_PATH_DIRECTIVE = re.compile(r"/mock:([^/]*)")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}


def expected_text(n: int) -> str:
    """The text of an ``n``-token reply."""
    return "".join(f"w{i} " for i in range(n))


def _directive(path: str) -> dict[str, int]:
    match = _PATH_DIRECTIVE.search(path)
    out: dict[str, int] = {}
    if match:
        for item in match.group(1).split(";"):
            key, _, value = item.partition("=")
            if value.isdigit():
                out[key] = int(value)
    return out


def _sse_chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = json.dumps({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]},
                      separators=(",", ":"))
    data = b"data: " + body.encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Ticker:
    """Every stream's next token in per-millisecond buckets: one timer callback per busy tick."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buckets: dict[int, list[_Stream]] = {}
        self.late: list[float] = []     # how late each tick fired (s): is the mock itself keeping up?

    def at(self, when: float, stream: _Stream) -> None:
        tick = int(when / TICK_S) + 1
        bucket = self.buckets.get(tick)
        if bucket is None:
            bucket = self.buckets[tick] = []
            self.loop.call_at(tick * TICK_S, self._fire, tick)
        bucket.append(stream)

    def _fire(self, tick: int) -> None:
        if len(self.late) < 200_000:
            self.late.append(self.loop.time() - tick * TICK_S)
        for stream in self.buckets.pop(tick, ()):
            stream.next()


class _Stream:
    __slots__ = ("conn", "drip", "due", "i", "model", "n", "ticker", "usage")

    def __init__(self, conn: _Conn, model: str, n: int, drip: float, usage: bool, ticker: _Ticker) -> None:
        self.conn, self.model, self.n, self.i, self.drip, self.usage, self.ticker = conn, model, n, 0, drip, usage, ticker
        self.due = 0.0

    def start(self, delay: float) -> None:
        self.conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                        b"Cache-Control: no-cache\r\nx-request-id: mock-stream\r\n\r\n"
                        + _sse_chunk(self.model, {"role": "assistant", "content": ""}))
        self.due = self.ticker.loop.time() + delay
        if delay > 0:
            self.ticker.at(self.due, self)
        else:
            self.next()

    def next(self) -> None:
        if self.conn.closed:
            return
        self.conn.write(_sse_chunk(self.model, {"content": f"w{self.i} "}))
        self.i += 1
        if self.i < self.n:
            # From the schedule, not from now: a late tick does not stretch the stream.
            self.due += self.drip
            self.ticker.at(self.due, self)
            return
        tail = _sse_chunk(self.model, {}, "stop")
        if self.usage:
            data = b"data: " + json.dumps({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                                           "model": self.model, "choices": [],
                                           "usage": _usage(self.n)}).encode() + b"\n\n"
            tail += b"%x\r\n%s\r\n" % (len(data), data)
        data = b"data: [DONE]\n\n"
        self.conn.write(tail + b"%x\r\n%s\r\n" % (len(data), data) + b"0\r\n\r\n")
        self.conn.busy = False
        self.conn.served += 1
        self.conn.parse()  # a pipelined next request


def _usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}


class _Conn(asyncio.Protocol):
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport   # set by connection_made, which asyncio calls first
        self.closed = False
        self.busy = False
        self.served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport), "a TCP server's connection is a stream"
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_HEAD + MAX_BODY:
            self.transport.close()
            return
        self.parse()

    def parse(self) -> None:
        while not self.busy and not self.closed:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip() or 0)
            if length > MAX_BODY:
                return self._answer(413, {"error": {"message": "too large"}}, close=True)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            method, path, _ = (head[0].split(" ") + ["", ""])[:3]
            self.handle(method, path, body)

    def _answer(self, status: int, doc: dict[str, Any], close: bool = False) -> None:
        body = json.dumps(doc).encode()
        self.write(f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\nx-request-id: mock-unary\r\n\r\n".encode() + body)
        if close:
            self.transport.close()

    def handle(self, method: str, path: str, raw: bytes) -> None:
        if method == "GET" and path == "/_mock/stats":
            late = sorted(self.server.ticker.late)
            self.server.ticker.late = []
            q = (lambda f: 1000 * late[min(len(late) - 1, int(f * len(late)))] if late else 0.0)
            return self._answer(200, {"pid": os.getpid(), "ticks": len(late), "late_p50_ms": q(0.5),
                                      "late_p99_ms": q(0.99), "late_max_ms": 1000 * late[-1] if late else 0.0})
        if method != "POST" or not path.split("?")[0].endswith("/chat/completions"):
            return self._answer(404, {"error": {"message": f"no such route {path}"}})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._answer(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
        directive = _directive(path)
        n = max(1, min(100_000, int(body.get("max_tokens") or directive.get("words") or 24)))
        model = str(body.get("model", ""))
        if not body.get("stream"):
            return self._answer(200, {"id": "chatcmpl-mock", "object": "chat.completion", "created": int(time.time()),
                                      "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": expected_text(n)}}],
                                      "usage": _usage(n)})
        self.busy = True
        drip = directive.get("drip_ms", self.server.drip_ms) / 1000
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        _Stream(self, model, n, drip, usage, self.server.ticker).start(directive.get("delay_ms", 0) / 1000)


class _Server:
    def __init__(self, drip_ms: float) -> None:
        self.drip_ms = drip_ms
        self.ticker: _Ticker   # set by serve, before the first connection

    async def serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.ticker = _Ticker(loop)
        server = await loop.create_server(lambda: _Conn(self), sock=sock, backlog=4096)
        async with server:
            await server.serve_forever()


def realtime(priority: int = 1) -> bool:
    """Put the calling thread in SCHED_RR at a low real-time priority, where allowed.

    A benchmark's upstream (and its caller) stand for machines of their own: on a shared
    2-core machine, a node with hundreds of runnable threads would otherwise starve them, and
    the benchmark would measure the mock's lateness instead of the node. Real-time tasks are
    capped by the kernel (sched_rt_runtime_us), and the mock needs a fraction of a core."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
        return True
    except (AttributeError, OSError):
        return False


def _serve(sock: socket.socket, drip_ms: float, rt: bool = False) -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if rt:
        realtime()
    try:
        asyncio.run(_Server(drip_ms).serve(sock))
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--procs", type=int, default=1, help="processes accepting on the one socket")
    parser.add_argument("--drip-ms", type=float, default=50.0)
    parser.add_argument("--realtime", action="store_true", help="SCHED_RR where allowed (see realtime())")
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    sock.setblocking(False)
    children = []
    for _ in range(args.procs - 1):
        pid = os.fork()
        if pid == 0:
            _serve(sock, args.drip_ms, args.realtime)
            os._exit(0)
        children.append(pid)
    print(f"stream mock listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    try:
        _serve(sock, args.drip_ms, args.realtime)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    return 0


class StreamMock:
    """The mock in its own process group (``procs`` processes); ``pids()`` for their CPU, ``stop()``."""

    def __init__(self, procs: int = 1, drip_ms: float = 50.0, host: str = "127.0.0.1",
                 realtime: bool = False) -> None:
        cmd = [sys.executable, "-m", "actors.testing.stream_mock", "--host", host, "--procs", str(procs),
               "--drip-ms", str(drip_ms)] + (["--realtime"] if realtime else [])
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self._proc.stdout is not None, "stdout=PIPE"
        line = self._proc.stdout.readline().strip()
        if not line.startswith("stream mock listening on "):
            self.stop()
            raise RuntimeError(f"stream mock did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1]

    def lateness(self) -> dict[str, Any]:
        """How late the mock's ticks fired since the last look (one of its processes answers)."""
        import urllib.request

        with urllib.request.urlopen(self.url + "/_mock/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def pids(self) -> list[int]:
        out = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self._proc.pid:  # the process group
                    out.append(int(name))
        return out

    def stop(self) -> None:
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> StreamMock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
