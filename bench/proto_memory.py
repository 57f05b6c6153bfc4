#!/usr/bin/env python3
"""What holding N concurrent calls costs in memory and start-up, piece by piece (issue 23, options a, c).

- ``door``: a server holding N open streams that send nothing yet (callers waiting for a
  first token): an asyncio server (one loop, no thread per stream) against waitress with a
  thread per stream (the thread blocked, as a front-door thread waits for its chunks); PSS of
  the server process.
- ``endpoints``: N threads each opening a private Thespian endpoint (``asys.private()``, what
  GatewayClient makes per thread; the front door has one per waitress thread): time to make
  them, PSS and file descriptors of the process.
- ``slots``: N slot threads in one process, each with a ``requests`` Session that has made
  one call to the upstream (its pooled connection kept), as the worker stack imports them:
  PSS per slot and start-up, against the same process with no slot.
- ``tls``: what each slot's own TLS context would add with an HTTPS upstream (urllib3 makes
  one per connection pool, so one per slot's Session, each loading the CA bundle), against
  one context shared by every slot.

    python bench/proto_memory.py [--n 1000] [--what door endpoints slots tls]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import pss_kib


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- door: N idle streams ---------------------------------------------------------------------


def serve_asyncio(port_file: str) -> None:
    held = []

    class Hold(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            held.append(self)

        def data_received(self, data):
            if b"\r\n\r\n" in data:
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n")

    async def main():
        server = await asyncio.get_running_loop().create_server(Hold, "127.0.0.1", 0, backlog=4096)
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        await server.serve_forever()
    asyncio.run(main())


def serve_waitress(port_file: str, threads: int) -> None:
    import waitress

    forever = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def body():
            yield b""
            forever.wait()
        return body()
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads, connection_limit=threads + 64,
                                    backlog=4096, asyncore_use_poll=True)
    Path(port_file).write_text(str(server.effective_port))
    server.run()


def door(n: int) -> None:
    for kind in ("asyncio", "waitress"):
        port_file = f"/tmp/proto-memory-{os.getpid()}-{kind}"
        code = (f"import sys; sys.path[:0] = {[str(ROOT), str(ROOT / 'bench')]!r}; import proto_memory as m; "
                + (f"m.serve_asyncio({port_file!r})" if kind == "asyncio" else f"m.serve_waitress({port_file!r}, {n + 8})"))
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not Path(port_file).exists() or not Path(port_file).read_text():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not start")
                time.sleep(0.05)
            port = int(Path(port_file).read_text())
            base = pss_kib([proc.pid])
            socks = []
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                socks.append(s)
            time.sleep(3.0)
            held = pss_kib([proc.pid])
            c0 = _cpu(proc.pid)
            time.sleep(5.0)
            idle = (_cpu(proc.pid) - c0) / 5.0
            threads = len(os.listdir(f"/proc/{proc.pid}/task"))
            print(f"  door {kind:8s}: {n} idle streams: PSS {base / 1024:.1f} -> {held / 1024:.1f} MiB "
                  f"({(held - base) / n:.1f} KiB per stream), {threads} threads, idle CPU {100 * idle:.1f}% of a core",
                  flush=True)
            for s in socks:
                s.close()
        finally:
            proc.kill()
            proc.wait(5)
            Path(port_file).unlink(missing_ok=True)


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


# -- endpoints --------------------------------------------------------------------------------


def endpoints(n: int) -> None:
    from thespian.actors import ActorSystem

    from actors.ops.procs import port_is_listening

    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    port = next(p for p in range(19400, 19590) if not port_is_listening(p))
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True)
    try:
        base, fd0 = pss_kib([os.getpid()]), fds()
        made = []
        barrier = threading.Barrier(n + 1)
        release = threading.Event()

        def one() -> None:
            manager = asys.private()
            made.append(manager.__enter__())
            barrier.wait()
            release.wait()
        t0 = time.monotonic()
        threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        barrier.wait(timeout=300)
        took = time.monotonic() - t0
        time.sleep(1.0)
        pss, fd1 = pss_kib([os.getpid()]), fds()
        # A thread alone, for comparison (its stack and Python state).
        print(f"  endpoints: {n} threads each with a private Thespian endpoint: made in {took:.2f} s "
              f"({1000 * took / n:.1f} ms each), PSS +{(pss - base) / 1024:.1f} MiB ({(pss - base) / n:.0f} KiB "
              f"per thread+endpoint), file descriptors +{fd1 - fd0}", flush=True)
        release.set()
    finally:
        asys.shutdown()
    base = pss_kib([os.getpid()])
    release2 = threading.Event()
    ts = [threading.Thread(target=release2.wait, daemon=True) for _ in range(n)]
    for t in ts:
        t.start()
    time.sleep(1.0)
    print(f"  (a bare thread: PSS +{(pss_kib([os.getpid()]) - base) / n:.0f} KiB each)", flush=True)
    release2.set()


# -- slots ------------------------------------------------------------------------------------


def slots(n: int) -> None:
    import requests

    import actors.runtime.worker  # noqa: F401 - the worker's imports
    from actors.testing.stream_mock import StreamMock

    mock = StreamMock(procs=1)
    try:
        base = pss_kib([os.getpid()])
        ready = threading.Barrier(n + 1)
        release = threading.Event()

        def slot() -> None:
            s = requests.Session()
            s.trust_env = False
            s.post(mock.url + "/v1/chat/completions", json={"model": "m", "messages": [], "max_tokens": 4}, timeout=30)
            ready.wait()
            release.wait()
        t0 = time.monotonic()
        for _ in range(n):
            threading.Thread(target=slot, daemon=True).start()
        ready.wait(timeout=300)
        took = time.monotonic() - t0
        time.sleep(1.0)
        pss = pss_kib([os.getpid()])
        print(f"  slots: one process with the worker's imports: PSS {base / 1024:.1f} MiB; with {n} slot threads "
              f"(a Session each, one call made, its connection pooled): {pss / 1024:.1f} MiB, "
              f"{(pss - base) / n:.0f} KiB per slot, ready in {took:.2f} s", flush=True)
        release.set()
    finally:
        mock.stop()


def tls(n: int) -> None:
    try:
        import certifi

        where = certifi.where()
    except ImportError:
        where = None
    base = rss_kib()
    contexts = []
    t0 = time.monotonic()
    for _ in range(n):
        ctx = ssl.create_default_context()
        if where:
            ctx.load_verify_locations(where)
        contexts.append(ctx)
    took = time.monotonic() - t0
    rss = rss_kib()
    print(f"  tls: {n} TLS contexts with the CA bundle loaded: RSS +{(rss - base) / 1024:.1f} MiB "
          f"({(rss - base) / n:.0f} KiB each), {1000 * took / n:.2f} ms each to make; one shared context: once",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--what", nargs="*", default=["door", "endpoints", "slots", "tls"])
    args = parser.parse_args()
    for what in args.what:
        globals()[what](args.n)


if __name__ == "__main__":
    main()
