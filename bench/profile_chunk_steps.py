#!/usr/bin/env python3
"""What each step of relaying one chunk costs on its own, in CPU per chunk (thread_time).

Each step of today's front-door path runs in a loop on the real code, measured with the
calling thread's CPU clock, so other load on the machine changes it little:

worker (per upstream event): reading one SSE event with ``requests`` (raw.read1, one event
per read from a writer process 1 ms apart), decoding it (the runner's stream decoder and
the accumulator), framing it (JSON + HMAC-SHA256), writing the frame to a socket;
HTTP process (per chunk): reading and verifying a frame, filing it in an Inbox (pipe
write), waking the thread that waits for it (its Thespian endpoint, ``listen_or_watch``;
against a plain ``select`` on the pipe and a ``queue.Queue``), rendering the OpenAI SSE
chunk. The sum is what the steps themselves need; the rest of what /proc measures per
chunk (bench/profile_scale.py) is scheduling, GIL hand-offs and the servers' loops.

    python bench/profile_chunk_steps.py [--n 5000]
"""

from __future__ import annotations

import argparse
import os
import queue
import select
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.core.frames import FrameCodec, FrameDecoder, chunk_body, chunk_fields
from actors.providers import make_runner
from actors.providers.base import StreamAccumulator
from actors.security.keys import KeyRing, WireKey
from actors.settings.loader import parse_config
from actors.stream_receiver import Inbox
from actors.types import TokenChunk

EVENT = (b'data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":0,"model":"mock-gpt",'
         b'"choices":[{"index":0,"delta":{"content":"w17 "},"finish_reason":null}]}\n\n')


def per_call(fn, n: int) -> float:
    """Microseconds of this thread's CPU per call."""
    fn()
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return 1e6 * (time.thread_time() - t0) / n


def runner():
    cfg = parse_config({"deployments": [{"name": "b", "model": "b", "provider": "openai_compatible",
                                         "endpoint": "http://127.0.0.1:9/v1", "upstream_model": "m"}]})
    return make_runner(cfg.deployments[0])


def read1_step(n: int) -> float:
    """requests reading a chunked SSE body, one event per read (the writer, a child process, 1 ms apart)."""
    import requests

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
        for _ in range(n + 10):
            conn.sendall(piece)
            time.sleep(0.001)
        conn.sendall(b"0\r\n\r\n")
        conn.close()
        os._exit(0)
    session = requests.Session()
    session.trust_env = False
    resp = session.get(f"http://127.0.0.1:{port}/", stream=True, timeout=30)
    raw = resp.raw
    reads = 0
    t0 = time.thread_time()
    got = 0
    while True:
        data = raw.read1(65536, decode_content=True)
        if not data:
            break
        reads += 1
        got += len(data)
    cpu = time.thread_time() - t0
    os.waitpid(pid, 0)
    server.close()
    events = got // len(EVENT)
    print(f"    (read1: {events} events in {reads} reads)")
    return 1e6 * cpu / max(1, reads)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    n = args.n
    rows: list[tuple[str, str, float]] = []

    rows.append(("worker", "read one SSE event (requests raw.read1, a recv per event)", read1_step(min(n, 3000))))

    r = runner()
    dec, acc = r.stream_decoder(), StreamAccumulator()

    def decode() -> None:
        for delta in dec.feed(EVENT):
            acc.add(delta)
        acc.take_pending()
    rows.append(("worker", "decode it: SSE + JSON + accumulate (runner decoder)", per_call(decode, n)))

    ring = KeyRing([WireKey("k1", "s" * 32)], "bench")
    codec = FrameCodec(ring)
    rows.append(("worker", "frame it: chunk body + JSON + HMAC-SHA256", per_call(
        lambda: codec.encode(chunk_body("req_0123456789abcdef0123456789abcdef", 17, "w17 ", [])), n)))

    a, b = socket.socketpair()
    frame = codec.encode(chunk_body("req_0123456789abcdef0123456789abcdef", 17, "w17 ", []))
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                if not b.recv(1 << 20):
                    return
            except OSError:
                return
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    rows.append(("worker", "write the frame (sendall, loopback)", per_call(lambda: a.sendall(frame), n)))
    stop.set()
    a.close()
    t.join(2)
    b.close()

    decoder = FrameDecoder(codec)
    frames = frame * 1

    def receive() -> None:
        for body in decoder.feed(frames):
            fields = chunk_fields(body)
            TokenChunk(*fields)
    rows.append(("http", "verify + decode a frame (HMAC, JSON, TokenChunk)", per_call(receive, n)))

    inbox = Inbox()
    chunk = TokenChunk("req_x", 1, "w17 ", [])

    def put_drain() -> None:
        inbox.put(chunk)
        inbox.drain()
    rows.append(("http", "hand it to the thread's Inbox (deque + pipe write + drain)", per_call(put_drain, n)))

    from actors.http import openai_dialect
    enc = openai_dialect.StreamEncoder("req_x", "bench", False)
    rows.append(("http", "render the OpenAI SSE chunk (StreamEncoder.chunk)", per_call(lambda: enc.chunk(chunk), n)))

    for name, cost in wake_steps(min(n, 2000)):
        rows.append(("http", name, cost))

    for name, cost in call_steps(min(n, 1000)):
        rows.append(("call", name, cost))

    width = max(len(s) for _, s, _ in rows)
    print(f"{'where':7s} {'step':{width}s}  us/chunk (thread CPU)")
    for where, step, cost in rows:
        print(f"{where:7s} {step:{width}s}  {cost:7.1f}")


def call_steps(n: int) -> list[tuple[str, float]]:
    """Per call, not per chunk: opening a stream with requests (as a slot does) against a bare
    HTTP/1.1 request on a kept-alive socket, to the stream mock (a 1-token stream, read to its end)."""
    import requests

    from actors.testing.stream_mock import StreamMock
    from actors.types import InferenceRequest

    out = []
    r = runner()
    with StreamMock(procs=1, drip_ms=1) as mock:
        r_url = mock.url
        cfg = parse_config({"deployments": [{"name": "b", "model": "b", "provider": "openai_compatible",
                                             "endpoint": r_url + "/v1", "upstream_model": "m"}]})
        r = make_runner(cfg.deployments[0])
        http = r.build_request(InferenceRequest(model="b", messages=[{"role": "user", "content": "hi"}],
                                                params={"max_tokens": 1}, stream=True), None)
        session = requests.Session()
        session.trust_env = False

        def with_requests() -> None:
            with session.post(http.url, data=http.body, headers=http.headers, stream=True, timeout=10) as resp:
                raw = resp.raw
                while raw.read1(65536, decode_content=True):
                    pass
        out.append(("open a stream and read it: requests (Session.post, stream=True)", per_call(with_requests, n)))
        host, port = r_url.split("//")[1].split(":")
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = "".join(f"{k}: {v}\r\n" for k, v in http.headers.items() if k.lower() != "content-length")
        request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(http.body)}\r\n{head}\r\n"
                   .encode() + http.body)

        def bare() -> None:
            sock.sendall(request)
            buf = b""
            while not buf.endswith(b"0\r\n\r\n"):
                buf += sock.recv(65536)
        out.append(("open a stream and read it: a bare request on a kept-alive socket", per_call(bare, n)))
        out.append(("build the provider request (runner.build_request)", per_call(
            lambda: r.build_request(InferenceRequest(model="b", messages=[{"role": "user", "content": "hi"}],
                                                     params={"max_tokens": 1}, stream=True), None), n)))

        def thread_start() -> None:
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()
        out.append(("start and join a thread (a reader thread per attempt)", per_call(thread_start, n)))
    return out


def wake_steps(n: int) -> list[tuple[str, float]]:
    """The woken thread's CPU per wake-up: Thespian endpoint + pipe, select on a pipe, a Queue."""
    out = []

    def ping_pong(wait, signal_fn, label: str) -> None:
        done = threading.Event()
        cpu = [0.0]
        ack = threading.Semaphore(0)

        def waiter() -> None:
            wait()  # warm
            ack.release()
            t0 = time.thread_time()
            for _ in range(n):
                wait()
                ack.release()
            cpu[0] = time.thread_time() - t0
            done.set()
        th = threading.Thread(target=waiter, daemon=True)
        th.start()
        for _ in range(n + 1):
            signal_fn()
            ack.acquire()
        done.wait(60)
        out.append((label, 1e6 * cpu[0] / n))

    r, w = os.pipe()

    def sel_wait() -> None:
        select.select([r], [], [], 5)
        os.read(r, 4096)
    ping_pong(sel_wait, lambda: os.write(w, b"\0"), "wake the waiting thread: select on a pipe")
    q: queue.Queue = queue.Queue()
    ping_pong(lambda: q.get(timeout=5), lambda: q.put(1), "wake the waiting thread: queue.Queue")

    # Today's: the thread blocks in its own Thespian endpoint, which also watches the pipe.
    from thespian.actors import ActorSystem

    from actors.ops.procs import port_is_listening
    from actors.security.thespian_hooks import WATCHED, listen_or_watch

    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    port = next(p for p in range(19400, 19590) if not port_is_listening(p))
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True)
    try:
        holder: dict = {}

        def th_wait() -> None:
            endpoint = holder.get("ep")
            if endpoint is None:
                holder["mgr"] = asys.private()
                endpoint = holder["ep"] = holder["mgr"].__enter__()
            assert listen_or_watch(endpoint, [r], 5) is WATCHED
            os.read(r, 4096)
        ping_pong(th_wait, lambda: os.write(w, b"\0"),
                  "wake the waiting thread: its Thespian endpoint (listen_or_watch)")
    finally:
        asys.shutdown()
    os.close(r)
    os.close(w)
    return out


if __name__ == "__main__":
    main()
