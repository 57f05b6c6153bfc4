#!/usr/bin/env python3
"""Prototype of the relay path and the front door (issue 23, options a, b, c): not production code.

A stripped data plane, faithful where the costs are: the worker side reads the upstream with
``requests`` (one synchronous slot per stream), decodes with the real runner decoder and
accumulator, and writes signed frames (``actors.core.frames.FrameCodec``) on one persistent
connection per door process; the door reads them, verifies, renders OpenAI SSE with the real
``openai_dialect.StreamEncoder`` and writes the caller's socket. No engine, no budgets, no
retries (the control path is bench/proto_control.py). Pieces, each chosen by a flag:

``--door``
  ``asyncio``: an event-driven door: one loop per process holds every caller's connection and
  every worker link, and writes a chunk to the caller in the callback that read its frame
  (no thread per stream, no hand-off, no wake-up per chunk).
  ``waitress-thespian``: today's shape: waitress, a thread per stream, chunks through the real
  ``StreamReceiver`` and ``Inbox``, the thread waking in its own Thespian endpoint
  (``listen_or_watch``), as GatewayClient does.
  ``waitress-select``: the same with the thread waiting in a plain ``select`` on its Inbox.
``--door-procs N``: N door processes accepting on one port (SO_REUSEPORT; asyncio only).
``--workers``
  ``threads``: ``--worker-procs`` processes, each with K / procs slot threads doing
  synchronous ``requests`` streams to ``actors.testing.stream_mock``;
  ``synthetic``: one asyncio process that emits the frames on the streams' schedule without
  an upstream, so that the door's own cost is measured alone.
``--render worker``: the worker renders the caller's SSE bytes and the door only verifies
  and writes them (decode once, encode once, both in the worker).

Each run opens K streams at once (bench/aio_sse.py), straight to the mock first (direct),
then through the prototype; printed: completed, TTFT p50/p99, largest-gap p99, CPU per
relayed chunk of the door and the workers, their PSS, start-up.

    python bench/proto_relay.py --k 256 --door asyncio --workers threads --worker-procs 2
    python bench/proto_relay.py --k 256 --door waitress-thespian --workers synthetic
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from actors.core.frames import FrameCodec, FrameDecoder
from actors.security.keys import KeyRing, WireKey

SECRET = "proto-relay-secret-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Benchmark prompt with a few words in it"}]


def codec() -> FrameCodec:
    return FrameCodec(KeyRing([WireKey("proto", SECRET)], "proto"))


def ready(line: str) -> None:
    print(f"ready {line}", flush=True)


class Out:
    """One connection's writer, shared by many threads: frames that queue while one thread
    writes go out together in its next write (batched, one syscall)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.pending: list[bytes] = []
        self.sending = False
        self.writes = 0
        self.frames = 0

    def send(self, frame: bytes) -> None:
        with self.lock:
            self.pending.append(frame)
            self.frames += 1
            if self.sending:
                return
            self.sending = True
        while True:
            with self.lock:
                if not self.pending:
                    self.sending = False
                    return
                data = b"".join(self.pending)
                self.pending.clear()
            try:
                self.sock.sendall(data)
                self.writes += 1
            except OSError:
                with self.lock:
                    self.pending.clear()
                    self.sending = False
                return


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def end_body(req: dict[str, Any], finish: str, count: int, usage: dict[str, Any]) -> dict[str, Any]:
    """The end of a stream; for a door on today's StreamReceiver (which files chunks only), as a marked chunk."""
    if req.get("ch"):
        return {"r": req["q"], "s": count, "t": "", "c": [{"_end": finish}]}
    return {"r": req["q"], "e": finish, "n": count, "u": usage}


# -- worker processes: slots as threads, synchronous requests ---------------------------------


def worker_main(ports: list[int], slots: int, mock_url: str, render: str) -> None:
    """One process per port, forked from this one once the worker stack is imported (as Thespian forks
    its actors): ``slots`` slot threads each. Prints ready once every process listens."""
    import requests  # noqa: F401 - imported before the forks, shared copy-on-write

    import actors.http.openai_dialect
    import actors.providers
    import actors.runtime.worker  # noqa: F401 - a real worker's imports (Thespian, the runtime), for its memory

    t0 = time.monotonic()
    r, w = os.pipe()
    for port in ports[1:]:
        if os.fork() == 0:
            os.close(r)
            worker_serve(port, slots, mock_url, render, w)
            os._exit(0)
    os.close(w)
    worker_serve(ports[0], slots, mock_url, render, None, lambda: _wait_children(r, len(ports) - 1, t0, slots, ports))


def _wait_children(r: int, n: int, t0: float, slots: int, ports: list[int]) -> None:
    got = 0
    while got < n:
        data = os.read(r, 4096)
        if not data:
            break
        got += len(data)
    ready(f"{len(ports)} processes x {slots} slots in {time.monotonic() - t0:.3f} s")


def worker_serve(port: int, slots: int, mock_url: str, render: str, notify: int | None,
                 announce=None) -> None:
    import requests

    from actors.http import openai_dialect
    from actors.providers import make_runner
    from actors.providers.base import StreamAccumulator
    from actors.settings.loader import parse_config
    from actors.types import InferenceRequest, TokenChunk

    cfg = parse_config({"deployments": [{"name": "b", "model": "bench", "provider": "openai_compatible",
                                         "endpoint": mock_url + "/v1", "upstream_model": "mock-gpt"}]})
    runner = make_runner(cfg.deployments[0])
    cod = codec()
    jobs: queue.Queue = queue.Queue()
    cancelled: set[str] = set()
    replies: dict[tuple[int, str], Out] = {}
    replies_lock = threading.Lock()

    def reply_to(conn_out: Out, req: dict[str, Any]) -> Out:
        spec = req.get("ch")
        if not spec:
            return conn_out
        key = (spec["port"], spec["token"])
        with replies_lock:
            out = replies.get(key)
            if out is None:
                sock = socket.create_connection(("127.0.0.1", spec["port"]))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(cod.encode({"hello": spec["token"]}))
                out = replies[key] = Out(sock)
        return out

    read_mode = os.environ.get("PROTO_READ", "requests")
    host, mport = _host_port(mock_url)

    def slot() -> None:
        session = requests.Session()
        session.trust_env = False
        sock_conn: list[Any] = [None]
        while True:
            conn_out, req = jobs.get()
            rid = req["q"]
            out = reply_to(conn_out, req)
            seq = 0
            finish, usage = None, None
            try:
                http = runner.build_request(InferenceRequest(model="bench", messages=req["m"],
                                                             params={"max_tokens": req["n"]}, stream=True,
                                                             request_id=rid), None)
                dec, acc = runner.stream_decoder(), StreamAccumulator()
                enc = openai_dialect.StreamEncoder(rid, "bench", False) if render == "worker" else None
                if read_mode == "socket":
                    body_reader = _SocketStream(sock_conn, host, int(mport), http)
                    resp = None
                else:
                    resp = session.post(http.url, data=http.body, headers=http.headers, stream=True, timeout=(5, 120))
                    raw = resp.raw
                    body_reader = raw._fp if read_mode == "httpclient" else None
                try:
                    while rid not in cancelled:
                        if body_reader is None:
                            data = raw.read1(65536, decode_content=True)
                        else:
                            data = body_reader.read1(65536)
                        if not data:
                            break
                        for delta in dec.feed(data):
                            acc.add(delta)
                        if acc.has_pending:
                            text, tools = acc.take_pending()
                            if enc is not None:
                                body = {"r": rid, "s": seq, "x": enc.chunk(TokenChunk(rid, seq, text, tools)).decode()}
                            else:
                                body = {"r": rid, "s": seq, "t": text}
                            out.send(cod.encode(body))
                            seq += 1
                    finish, usage = acc.finish_reason, acc.usage
                finally:
                    if resp is not None:
                        resp.close()
            except Exception as exc:  # noqa: BLE001 - the prototype ends the stream with an error frame
                finish = f"error: {type(exc).__name__}"
            cancelled.discard(rid)
            out.send(cod.encode(end_body(req, finish or "stop", seq, {"in": getattr(usage, "input_tokens", None),
                                                                        "out": getattr(usage, "output_tokens", None)})))

    def door_link(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out = Out(conn)
        dec = FrameDecoder(cod)
        while True:
            try:
                data = conn.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            for body in dec.feed(data):
                if "c" in body:
                    cancelled.add(body["c"])
                else:
                    jobs.put((out, body))

    for _ in range(slots):
        threading.Thread(target=slot, daemon=True).start()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(256)
    if notify is not None:
        os.write(notify, b"\0")
        os.close(notify)
    if announce is not None:
        announce()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=door_link, args=(conn,), daemon=True).start()


class _SocketStream:
    """A slot's own keep-alive HTTP/1.1 connection: one request, then the chunked body by read1()."""

    def __init__(self, holder: list, host: str, port: int, http: Any) -> None:
        if holder[0] is None:
            sock = socket.create_connection((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            holder[0] = sock
        self.sock = holder[0]
        path = "/" + http.url.split("/", 3)[3]
        body = http.body if isinstance(http.body, bytes) else http.body.encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in http.headers.items() if k.lower() != "content-length")
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n{head}\r\n"
                          .encode() + body)
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the headers")
            buf += data
        _, _, rest = buf.partition(b"\r\n\r\n")
        self.raw = bytearray(rest)
        self.left = -1      # bytes left in this chunk, CRLF included; -1: at a size line
        self.done = False

    def read1(self, size: int) -> bytes:
        while not self.done:
            out = self._take()
            if out:
                return out
            if self.done:
                break
            data = self.sock.recv(size)
            if not data:
                raise ConnectionError("closed mid-body")
            self.raw += data
        return b""

    def _take(self) -> bytes:
        out = []
        buf = self.raw
        pos = 0
        while True:
            if self.left < 0:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(buf[pos:eol]), 16)
                pos = eol + 2
                if size == 0:
                    self.done = True
                    pos = min(len(buf), pos + 2)
                    break
                self.left = size + 2
            take = min(self.left, len(buf) - pos)
            if take <= 0:
                break
            piece = bytes(buf[pos:pos + take])
            self.left -= take
            pos += take
            if self.left < 2:
                piece = piece[:len(piece) - (2 - self.left)]
            out.append(piece)
            if self.left == 0:
                self.left = -1
        del buf[:pos]
        return b"".join(out)


def worker_async_main(ports: list[int], mock_url: str, render: str) -> None:
    """The alternative to slots: one asyncio loop per process reads every upstream stream (no thread
    per slot); decoding and framing as the slots do."""
    import actors.runtime.worker  # noqa: F401 - the same imports as a worker, for its memory
    from actors.http import openai_dialect
    from actors.providers import make_runner
    from actors.providers.base import StreamAccumulator
    from actors.settings.loader import parse_config
    from actors.types import InferenceRequest, TokenChunk

    t0 = time.monotonic()
    r, w = os.pipe()
    mine = ports[0]
    for port in ports[1:]:
        if os.fork() == 0:
            os.close(r)
            mine, r = port, None
            break
    cfg = parse_config({"deployments": [{"name": "b", "model": "bench", "provider": "openai_compatible",
                                         "endpoint": mock_url + "/v1", "upstream_model": "mock-gpt"}]})
    runner = make_runner(cfg.deployments[0])
    cod = codec()
    host, mport = _host_port(mock_url)
    idle: list[Upstream] = []

    class Sink:
        def __init__(self, transport: Any) -> None:
            self.transport, self.buffer = transport, []

        def add(self, frame: bytes) -> None:
            if not self.buffer:
                asyncio.get_running_loop().call_soon(self.flush)
            self.buffer.append(frame)

        def flush(self) -> None:
            if self.buffer and not self.transport.is_closing():
                self.transport.write(b"".join(self.buffer))
            self.buffer.clear()

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.closed = False

        def connection_lost(self, exc: Any) -> None:
            self.closed = True

        def start(self, sink: Sink, req: dict[str, Any]) -> None:
            self.sink, self.req, self.rid, self.seq = sink, req, req["q"], 0
            http = runner.build_request(InferenceRequest(model="bench", messages=req["m"],
                                                         params={"max_tokens": req["n"]}, stream=True,
                                                         request_id=self.rid), None)
            self.dec, self.acc = runner.stream_decoder(), StreamAccumulator()
            self.enc = openai_dialect.StreamEncoder(self.rid, "bench", False) if render == "worker" else None
            self.head, self.in_head = bytearray(), True
            self.body = _SocketStream.__new__(_SocketStream)
            self.body.raw, self.body.left, self.body.done = bytearray(), -1, False
            path = "/" + http.url.split("/", 3)[3]
            head = "".join(f"{k}: {v}\r\n" for k, v in http.headers.items() if k.lower() != "content-length")
            self.transport.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{mport}\r\nContent-Length: {len(http.body)}\r\n"
                                 f"{head}\r\n".encode() + http.body)

        def data_received(self, data: bytes) -> None:
            if self.in_head:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                data = bytes(self.head[end + 4:])
                self.in_head = False
            self.body.raw += data
            payload = self.body._take()
            if payload:
                for delta in self.dec.feed(payload):
                    self.acc.add(delta)
                if self.acc.has_pending:
                    text, tools = self.acc.take_pending()
                    if self.enc is not None:
                        body = {"r": self.rid, "s": self.seq, "x": self.enc.chunk(TokenChunk(self.rid, self.seq, text,
                                                                                             tools)).decode()}
                    else:
                        body = {"r": self.rid, "s": self.seq, "t": text}
                    self.sink.add(cod.encode(body))
                    self.seq += 1
            if self.body.done:
                self.sink.add(cod.encode(end_body(self.req, self.acc.finish_reason or "stop", self.seq, {})))
                idle.append(self)

    async def begin(sink: Sink, req: dict[str, Any]) -> None:
        up = None
        while idle:
            up = idle.pop()
            if not up.closed:
                break
            up = None
        if up is None:
            _, up = await asyncio.get_running_loop().create_connection(Upstream, host, int(mport))
        up.start(sink, req)

    class Link(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sink, self.dec = Sink(transport), FrameDecoder(cod)

        def data_received(self, data: bytes) -> None:
            for body in self.dec.feed(data):
                if "q" in body:
                    asyncio.ensure_future(begin(self.sink, body))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Link, "127.0.0.1", mine)
        if r is None:
            os.write(w, b"\0")
            os.close(w)
        else:
            os.close(w)
            _wait_children(r, len(ports) - 1, t0, 0, ports)
        await server.serve_forever()

    asyncio.run(main())


# -- the synthetic worker: frames on the streams' schedule, no upstream -----------------------


def synthetic_main(port: int, drip_ms: float, render: str) -> None:
    from actors.http import openai_dialect
    from actors.types import TokenChunk

    cod = codec()
    drip = drip_ms / 1000

    class Sink:
        """A connection to write frames to, flushing once per tick."""

        def __init__(self, transport: Any) -> None:
            self.transport = transport
            self.buffer: list[bytes] = []

        def add(self, frame: bytes) -> None:
            if not self.buffer:
                asyncio.get_running_loop().call_soon(self.flush)
            self.buffer.append(frame)

        def flush(self) -> None:
            if self.buffer and not self.transport.is_closing():
                self.transport.write(b"".join(self.buffer))
            self.buffer.clear()

    sinks: dict[tuple[int, str], Sink] = {}
    cancelled: set[str] = set()

    async def sink_for(conn_sink: Sink, req: dict[str, Any]) -> Sink:
        spec = req.get("ch")
        if not spec:
            return conn_sink
        key = (spec["port"], spec["token"])
        if key not in sinks:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", spec["port"])
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport.write(cod.encode({"hello": spec["token"]}))
            sinks[key] = Sink(transport)
        return sinks[key]

    async def stream(conn_sink: Sink, req: dict[str, Any]) -> None:
        sink = await sink_for(conn_sink, req)
        rid, n = req["q"], req["n"]
        enc = openai_dialect.StreamEncoder(rid, "bench", False) if render == "worker" else None
        loop = asyncio.get_running_loop()
        due = loop.time()
        for seq in range(n):
            if rid in cancelled:
                break
            text = f"w{seq} "
            if enc is not None:
                body = {"r": rid, "s": seq, "x": enc.chunk(TokenChunk(rid, seq, text, [])).decode()}
            else:
                body = {"r": rid, "s": seq, "t": text}
            sink.add(cod.encode(body))
            due += drip
            await asyncio.sleep(max(0.0, due - loop.time()))
        sink.add(cod.encode(end_body(req, "stop", n, {"in": 8, "out": n})))

    class Link(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sink = Sink(transport)
            self.dec = FrameDecoder(cod)

        def data_received(self, data: bytes) -> None:
            for body in self.dec.feed(data):
                if "c" in body:
                    cancelled.add(body["c"])
                else:
                    asyncio.ensure_future(stream(self.sink, body))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Link, "127.0.0.1", port)
        ready("synthetic")
        await server.serve_forever()

    asyncio.run(main())


# -- the asyncio door ---------------------------------------------------------------------------


HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def asyncio_door_main(port: int, worker_ports: list[int]) -> None:
    from actors.http import openai_dialect
    from actors.types import TokenChunk

    cod = codec()
    streams: dict[str, Caller] = {}
    links: list[Link] = []
    rr = [0]

    class Link(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.dec = FrameDecoder(cod)

        def data_received(self, data: bytes) -> None:
            touched: dict[Caller, list[bytes]] = {}
            for body in self.dec.feed(data):
                caller = streams.get(body.get("r"))
                if caller is None:
                    continue
                out = touched.setdefault(caller, [])
                if not caller.started:
                    caller.started = True
                    out.append(HEAD + _chunked(caller.enc.start()))
                if "e" in body:
                    out.append(_chunked(b"".join(caller.enc.end(_Done(body["e"])))) + b"0\r\n\r\n")
                    streams.pop(caller.rid, None)
                    caller.rid = None
                    continue
                sse = body["x"].encode() if "x" in body else caller.enc.chunk(TokenChunk(body["r"], body["s"],
                                                                                          body["t"], []))
                out.append(_chunked(sse))
            for caller, parts in touched.items():  # one write per caller per batch of frames
                caller.transport.write(b"".join(parts))

    class Caller(asyncio.Protocol):
        def __init__(self) -> None:
            self.buffer = bytearray()
            self.rid: str | None = None
            self.started = False

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.rid is not None and streams.pop(self.rid, None) is not None:
                self.link.transport.write(cod.encode({"c": self.rid}))

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            doc = json.loads(bytes(self.buffer[end + 4:end + 4 + length]))
            del self.buffer[:end + 4 + length]
            self.rid = "req_" + uuid.uuid4().hex
            self.started = False
            self.enc = openai_dialect.StreamEncoder(self.rid, doc.get("model", ""), False)
            streams[self.rid] = self
            link = self.link = links[rr[0] % len(links)]
            rr[0] += 1
            link.transport.write(cod.encode({"q": self.rid, "m": doc.get("messages"), "n": doc.get("max_tokens", 16)}))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for wp in worker_ports:
            _, link = await loop.create_connection(Link, "127.0.0.1", wp)
            links.append(link)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(4096)
        server = await loop.create_server(Caller, sock=sock, backlog=4096)
        ready("asyncio door")
        await server.serve_forever()

    asyncio.run(main())


class _Done:
    def __init__(self, finish: str) -> None:
        self.finish_reason = finish
        self.usage = None


# -- the waitress door (today's shape) ------------------------------------------------------------


def waitress_door_main(port: int, worker_ports: list[int], wait: str, threads: int) -> None:
    import waitress

    from actors.http import openai_dialect
    from actors.stream_receiver import Inbox, StreamReceiver

    cod = codec()
    receiver = StreamReceiver(KeyRing([WireKey("proto", SECRET)], "proto"))
    links = []
    for wp in worker_ports:
        sock = socket.create_connection(("127.0.0.1", wp))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        links.append(Out(sock))
    rr = [0]
    local = threading.local()
    asys = None
    if wait == "thespian":
        from thespian.actors import ActorSystem

        asys = ActorSystem("multiprocTCPBase", {"Admin Port": int(os.environ["PROTO_ADMIN_PORT"])})

    from actors.security.thespian_hooks import WATCHED, listen_or_watch

    def wait_for(inbox: Inbox, timeout: float) -> None:
        if wait == "select":
            select.select([inbox.fileno()], [], [], timeout)
            return
        endpoint = getattr(local, "endpoint", None)
        if endpoint is None:
            local.manager = asys.private()
            endpoint = local.endpoint = local.manager.__enter__()
        listen_or_watch(endpoint, [inbox.fileno()], timeout) is WATCHED  # noqa: B015

    def app(environ: dict, start_response) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        doc = json.loads(environ["wsgi.input"].read(length))
        rid = "req_" + uuid.uuid4().hex
        inbox = Inbox()
        receiver.route(rid, inbox)
        link = links[rr[0] % len(links)]
        rr[0] += 1
        link.send(cod.encode({"q": rid, "m": doc.get("messages"), "n": doc.get("max_tokens", 16), "ch": receiver.spec}))
        enc = openai_dialect.StreamEncoder(rid, doc.get("model", ""), False)

        def body():
            try:
                yield enc.start()
                while True:
                    wait_for(inbox, 60)
                    for chunk in inbox.drain():
                        if chunk.tool_calls and "_end" in chunk.tool_calls[0]:
                            yield b"".join(enc.end(_Done(chunk.tool_calls[0]["_end"])))
                            return
                        yield enc.chunk(chunk)
            finally:
                receiver.unroute(rid)
                inbox.close()
        start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")])
        return body()

    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=threads,
                                    connection_limit=threads + 64, channel_request_lookahead=1,
                                    asyncore_use_poll=True, backlog=4096, ident="proto")
    ready("waitress door")
    server.run()


# -- the launcher ---------------------------------------------------------------------------------


_used_ports: set[int] = set()


def free_port() -> int:
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _used_ports:
            _used_ports.add(port)
            return port


class Child:
    def __init__(self, role: str, *args: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> None:
        t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--role", role, *args],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"{role} did not start: {line!r}")
        self.startup_s = time.monotonic() - t0
        self.note = line[6:].strip()

    def pids(self) -> list[int]:
        from actors.ops.procs import pids_in_group

        return pids_in_group(self.proc.pid)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait(10)


def main() -> None:
    if "--role" in sys.argv:
        return child_main()
    import bench_scale
    from bench_scale import aio_burst, cpu_of, loadavg, pss_kib, summarize

    from actors.testing.stream_mock import StreamMock

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="*", default=[256])
    parser.add_argument("--door", default="asyncio", choices=["asyncio", "waitress-thespian", "waitress-select"])
    parser.add_argument("--door-procs", type=int, default=1)
    parser.add_argument("--workers", default="threads", choices=["threads", "synthetic", "asyncio"])
    parser.add_argument("--read", default="requests", choices=["requests", "httpclient", "socket"],
                        help="how a slot reads the upstream body (threads workers)")
    parser.add_argument("--worker-procs", type=int, default=2)
    parser.add_argument("--render", default="door", choices=["door", "worker"])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--drip-ms", type=float, default=50.0)
    parser.add_argument("--bound", type=float, default=60.0)
    parser.add_argument("--mock-procs", type=int, default=2)
    parser.add_argument("--no-realtime", dest="realtime", action="store_false",
                        help="the mock and the caller at normal priority (see bench_scale.py)")
    parser.add_argument("--no-direct", action="store_true")
    parser.add_argument("--short", type=float, metavar="SECONDS",
                        help="instead of a burst: K streams of 20 chunks x 25 ms back to back for SECONDS (streams/s)")
    parser.add_argument("--kill-one-at", type=float, help="SIGKILL one worker process this many seconds into the burst")
    parser.add_argument("--json")
    args = parser.parse_args()
    bench_scale.CALLER_RT[0] = args.realtime
    if args.short:
        args.chunks, args.drip_ms = 20, 25.0
    mock = StreamMock(procs=args.mock_procs, drip_ms=args.drip_ms, realtime=args.realtime)
    admin = None
    results = []
    try:
        if args.door == "waitress-thespian":
            from thespian.actors import ActorSystem

            os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
            os.environ["PROTO_ADMIN_PORT"] = str(free_port())
            admin = ActorSystem("multiprocTCPBase", {"Admin Port": int(os.environ["PROTO_ADMIN_PORT"])},
                                transientUnique=True)
        for k in args.k:
            row: dict[str, Any] = {"k": k, "door": args.door, "door_procs": args.door_procs, "workers": args.workers,
                                   "worker_procs": args.worker_procs, "render": args.render, "load": loadavg()}
            row["read"] = args.read
            print(f"K={k}: door {args.door} x{args.door_procs}, workers {args.workers}"
                  f"{f' x{args.worker_procs}' if args.workers != 'synthetic' else ''}"
                  f"{f' reading with {args.read}' if args.workers == 'threads' else ''}, render in the {args.render} "
                  f"[load {row['load']}]", flush=True)
            if not args.no_direct:
                m0, t0 = sum(cpu_of(p) for p in mock.pids()), time.monotonic()
                mock.lateness()
                if args.short:
                    rows, swall = bench_scale.aio_loop(mock.url + "/v1", "mock-gpt", k, args.chunks, args.short)
                    s = summarize(rows, k, args.chunks)
                    s["streams_per_s"] = s["completed"] = sum(r["ok"] for r in rows)
                    s["streams_per_s"] /= swall
                    print(f"  direct {s['streams_per_s']:.1f} streams/s", flush=True)
                else:
                    s = summarize(aio_burst(mock.url + "/v1", "mock-gpt", k, args.chunks, args.bound), k, args.chunks)
                s["mock_late"] = mock.lateness()
                s["mock_cores"] = (sum(cpu_of(p) for p in mock.pids()) - m0) / (time.monotonic() - t0)
                row["direct"] = s
                print(f"  direct {s['completed']}/{k} ttft p50 {s['ttft_p50_ms']:.0f} p99 {s['ttft_p99_ms']:.0f} ms, "
                      f"gap p99 {s['gap_p99_ms']:.0f} ms, done p99 {s['done_p99_s']:.1f} s, mock {s['mock_cores']:.2f} cores, "
                      f"its ticks late p99 {s['mock_late']['late_p99_ms']:.0f} ms", flush=True)
            children: list[tuple[str, Child]] = []
            try:
                wports = []
                t0 = time.monotonic()
                if args.workers in ("threads", "asyncio"):
                    per = -(-k // args.worker_procs)
                    wports = [free_port() for _ in range(args.worker_procs)]
                    group = Child("worker" if args.workers == "threads" else "worker-async", json.dumps(wports),
                                  str(per), mock.url, args.render, timeout_s=600, env={"PROTO_READ": args.read})
                    children.append(("workers", group))
                    row["workers_note"] = group.note
                else:
                    wp = free_port()
                    children.append(("synthetic", Child("synthetic", str(wp), str(args.drip_ms), args.render)))
                    wports.append(wp)
                workers_up = time.monotonic() - t0
                dport = free_port()
                for _ in range(args.door_procs if args.door == "asyncio" else 1):
                    children.append(("door", Child("door", args.door, str(dport), json.dumps(wports), str(k + 8))))
                row["startup_s"] = time.monotonic() - t0
                row["workers_startup_s"] = workers_up
                url = f"http://127.0.0.1:{dport}/v1"
                aio_burst(url, "bench", min(k, 64), 3, 30)  # warm: links, sessions, endpoints
                pids = {role: [p for r, c in children if r == role for p in c.pids()] for role in
                        ("door", "workers", "synthetic")}
                cpu0 = {role: sum(cpu_of(p) for p in ps) for role, ps in pids.items()}
                m0, t0 = sum(cpu_of(p) for p in mock.pids()), time.monotonic()
                peak = [0]
                stop = threading.Event()

                def sample(peak=peak, pids=pids, stop=stop) -> None:
                    while True:
                        peak[0] = max(peak[0], pss_kib(pids["door"] + pids["workers"]))
                        if stop.wait(1.0):
                            return
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                if args.kill_one_at is not None and args.workers == "threads":
                    victim = max(pids["workers"])

                    def kill(victim: int = victim) -> None:
                        time.sleep(args.kill_one_at)
                        os.kill(victim, signal.SIGKILL)
                        print(f"  killed worker process {victim} at {args.kill_one_at:g} s", flush=True)
                    threading.Thread(target=kill, daemon=True).start()
                mock.lateness()
                if args.short:
                    rows, swall = bench_scale.aio_loop(url, "bench", k, args.chunks, args.short)
                    s = summarize(rows, k, args.chunks)
                    s["streams_per_s"] = sum(r["ok"] for r in rows) / swall
                    s["completed"] = sum(r["ok"] for r in rows)
                else:
                    s = summarize(aio_burst(url, "bench", k, args.chunks, args.bound), k, args.chunks)
                s["mock_late"] = mock.lateness()
                stop.set()
                sampler.join(5)
                wall = time.monotonic() - t0
                cpu = {role: sum(cpu_of(p) for p in ps) - cpu0[role] for role, ps in pids.items()}
                s.update(wall_s=wall, mock_cores=(sum(cpu_of(p) for p in mock.pids()) - m0) / wall,
                         pss_mib=peak[0] / 1024, cpu_s=cpu,
                         us_per_chunk={r: 1e6 * c / max(1, s["tokens"]) for r, c in cpu.items()})
                row["proto"] = s
                if args.short:
                    per_stream = {r: 1000 * c / max(1, s["completed"]) for r, c in cpu.items()}
                    base = row.get("direct", {}).get("streams_per_s")
                    print(f"  proto  {s['streams_per_s']:.1f} streams/s" + (f" ({s['streams_per_s'] / base:.2f}x direct)" if base else "")
                          + f", {len(rows) - s['completed']} failed; CPU per stream: door {per_stream['door']:.2f} ms, workers "
                          f"{per_stream['workers']:.2f} ms", flush=True)
                    s["cpu_ms_per_stream"] = per_stream
                node_us = s["us_per_chunk"]["door"] + s["us_per_chunk"]["workers"]
                print(f"  proto  {s['completed']}/{k} ttft p50 {s['ttft_p50_ms']:.0f} p99 {s['ttft_p99_ms']:.0f} ms, gap p99 "
                      f"{s['gap_p99_ms']:.0f} ms, done p99 {s['done_p99_s']:.1f} s; CPU per chunk: door "
                      f"{s['us_per_chunk']['door']:.0f} us, workers {s['us_per_chunk']['workers']:.0f} us"
                      f"{'' if args.workers != 'synthetic' else ' (synthetic ' + format(s['us_per_chunk']['synthetic'], '.0f') + ' us)'}"
                      f" = {node_us:.0f} us; door {cpu['door'] / wall:.2f} cores, workers {cpu['workers'] / wall:.2f}; "
                      f"PSS {s['pss_mib']:.0f} MiB; start-up {row['startup_s']:.2f} s; mock {s['mock_cores']:.2f} cores; "
                      f"events {s['events']} for {s['tokens']} tokens; mock ticks late p99 "
                      f"{s['mock_late']['late_p99_ms']:.0f} ms, max {s['mock_late']['late_max_ms']:.0f} ms"
                      + (f"\n         errors {s['errors']}" if s["errors"] else ""), flush=True)
            finally:
                for _, child in children:
                    child.stop()
            results.append(row)
    finally:
        if admin is not None:
            admin.shutdown()
        mock.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))


def child_main() -> None:
    i = sys.argv.index("--role")
    role, rest = sys.argv[i + 1], sys.argv[i + 2:]
    if role == "worker":
        worker_main(json.loads(rest[0]), int(rest[1]), rest[2], rest[3])
    elif role == "worker-async":
        worker_async_main(json.loads(rest[0]), rest[2], rest[3])
    elif role == "synthetic":
        synthetic_main(int(rest[0]), float(rest[1]), rest[2])
    elif role == "door":
        kind, port, wports, threads = rest[0], int(rest[1]), json.loads(rest[2]), int(rest[3])
        if kind == "asyncio":
            asyncio_door_main(port, wports)
        else:
            waitress_door_main(port, wports, kind.split("-")[1], threads)


if __name__ == "__main__":
    main()
