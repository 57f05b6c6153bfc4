#!/usr/bin/env python3
"""Prototype of the control path (issue 23, option d): Thespian messages against a socket channel.

A call's control conversation is request -> engine -> dispatch -> worker -> result -> engine
-> terminal -> caller (a stream adds FirstToken). Three shapes, each in a real node's actor
system (the signed, allow-listed wire installed), with a stand-in engine that decides every
terminal (bench/proto_control_actors.py):

- ``messages``: today's: the four as Thespian messages (InferenceRequest, Dispatch,
  WorkerResult, Completed);
- ``channel``: the same four as signed frames on persistent loopback connections (the
  caller's to the engine, the engine's to each worker); engine and workers stay actors,
  woken by Thespian when a watched socket is readable (``ThespianWatch``);
- ``plain``: the floor: the same frames, the engine a plain ``selectors`` loop and the
  worker a plain thread (no Thespian at all).

Measured sequentially (latency p50 added over the worker's own work) and with 4 caller
threads (calls/s), and the CPU per call of every process involved (engine, workers, the
node's admin and logger, the caller). ``--http`` makes each worker's call a real
non-streamed ``requests`` call to ``actors.testing.stream_mock``, compared with the same
call made directly.

    python bench/proto_control.py [--calls 400] [--http]
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import cpu_of, loadavg, self_cpu
from proto_control_actors import _codec

from actors.core.frames import FrameDecoder
from actors.testing.stream_mock import StreamMock
from actors.types import InferenceRequest

MESSAGES = [{"role": "user", "content": "Benchmark prompt with a few words in it"}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class ChannelCaller:
    """One caller thread's persistent connection to the engine."""

    def __init__(self, port: int) -> None:
        self.codec = _codec()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(self.codec.encode({"hello": "caller"}))
        self.decoder = FrameDecoder(self.codec)
        self.n = 0

    def call(self) -> dict[str, Any]:
        self.n += 1
        rid = f"r{threading.get_ident()}-{self.n}"
        self.sock.sendall(self.codec.encode({"q": rid, "m": MESSAGES, "n": 8}))
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the engine closed the connection")
            for body in self.decoder.feed(data):
                if body.get("t") == rid:
                    return body


def plain_engine_main(url: str, workers: int) -> None:
    """The floor: a selectors loop as the engine, plain threads as workers, all in this process group."""
    import requests

    codec = _codec()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]

    def worker() -> None:
        session = requests.Session()
        session.trust_env = False
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(codec.encode({"hello": "worker"}))
        dec = FrameDecoder(codec)
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return
            out = []
            for body in dec.feed(data):
                if url:
                    r = session.post(url + "/v1/chat/completions", json={"model": "m", "messages": body["m"],
                                                                         "max_tokens": body["n"]}, timeout=30).json()
                    text, usage = r["choices"][0]["message"]["content"], [r["usage"]["prompt_tokens"],
                                                                          r["usage"]["completion_tokens"]]
                else:
                    text, usage = "w0 w1 ", [8, 2]
                out.append(codec.encode({"res": body["d"], "text": text, "usage": usage}))
            sock.sendall(b"".join(out))

    if os.fork() == 0:   # the workers in a process of their own, as slots would be
        listener.close()
        for _ in range(workers):
            threading.Thread(target=worker, daemon=True).start()
        threading.Event().wait()
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, None)
    conns: dict[socket.socket, tuple[FrameDecoder, list]] = {}
    workers_: list[socket.socket] = []
    waiting: dict[str, socket.socket] = {}
    nxt = [0]
    print(f"ready {port}", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                sock, _ = listener.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[sock] = (FrameDecoder(codec), [])
                sel.register(sock, selectors.EVENT_READ, "c")
                continue
            sock = key.fileobj
            data = sock.recv(1 << 16)
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            out: dict[socket.socket, list[bytes]] = {}
            for body in conns[sock][0].feed(data):
                if body.get("hello") == "worker":
                    workers_.append(sock)
                elif "q" in body:
                    waiting[body["q"]] = sock
                    nxt[0] = (nxt[0] + 1) % len(workers_)
                    out.setdefault(workers_[nxt[0]], []).append(codec.encode({"d": body["q"], "m": body["m"],
                                                                              "n": body["n"]}))
                elif "res" in body:
                    caller = waiting.pop(body["res"], None)
                    if caller is not None:
                        out.setdefault(caller, []).append(codec.encode({"t": body["res"], "text": body["text"],
                                                                        "finish": "stop", "usage": body["usage"]}))
            for target, frames in out.items():
                target.sendall(b"".join(frames))


def run(call_factory, calls: int, threads: int) -> tuple[list[float], float, float]:
    """Latencies, calls/s, and this process's CPU seconds."""
    lat: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        call = call_factory()
        mine = []
        for _ in range(calls // threads):
            t0 = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)
    pool = [threading.Thread(target=work) for _ in range(threads)]
    c0, t0 = self_cpu(), time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return lat, len(lat) / (time.perf_counter() - t0), self_cpu() - c0


def measure(name: str, call_factory, pids: list[int], calls: int, rounds: int, out: dict) -> None:
    call_factory()()  # warm
    seq, par, cpu_call, caller_call = [], [], [], []
    for _ in range(rounds):
        c0 = sum(cpu_of(p) for p in pids)
        lat, _, mine = run(call_factory, calls, 1)
        node = sum(cpu_of(p) for p in pids) - c0
        seq.append(pct(lat, 0.5))
        cpu_call.append(node / calls)
        caller_call.append(mine / calls)
        par.append(run(call_factory, calls, 4)[1])
    row = {"seq_p50_ms": 1000 * statistics.median(seq), "threads4_cps": statistics.median(par),
           "node_cpu_ms_per_call": 1000 * statistics.median(cpu_call),
           "caller_cpu_ms_per_call": 1000 * statistics.median(caller_call)}
    out[name] = row
    print(f"  {name:9s} sequential p50 {row['seq_p50_ms']:6.2f} ms, 4 threads {row['threads4_cps']:6.0f} calls/s, CPU per "
          f"call: engine+workers+admin {row['node_cpu_ms_per_call']:.2f} ms, caller {row['caller_cpu_ms_per_call']:.2f} ms",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--http", action="store_true", help="each worker makes a real non-streamed call to the mock")
    args = parser.parse_args()

    from actors.client import GatewayClient
    from actors.ops.procs import admin_process, pids_in_group, port_is_listening
    from actors.ops.system import start_node
    from actors.settings.loader import parse_config

    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    print(f"load average {loadavg()}; {'with' if args.http else 'without'} the worker's HTTP call", flush=True)
    mock = StreamMock(procs=1) if args.http else None
    url = mock.url if mock else None
    port = next(p for p in range(19400, 19590) if not port_is_listening(p))
    node = start_node(parse_config({"node": {"admin_port": port, "name": "proto-control", "log_level": "WARNING"},
                                    "deployments": [{"name": "x", "model": "x", "provider": "openai_compatible",
                                                     "endpoint": "http://127.0.0.1:9/v1", "workers": 1}]}),
                      console_log=False, log_file=f"/tmp/atomr-proto-control-{port}.log")
    client = GatewayClient(port, timeout_s=30)
    out: dict[str, Any] = {"load": loadavg()}
    plain = None
    try:
        admin_pid = admin_process(port)[0]
        if args.http:
            import requests

            local = threading.local()

            def direct_factory():
                s = requests.Session()
                s.trust_env = False
                return lambda: s.post(url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES,
                                                                         "max_tokens": 8}, timeout=30).json()
            measure("direct", direct_factory, [], args.calls, args.rounds, out)
            del local

        engine = client.asys.createActor("proto_control_actors.MsgEngine")
        ready = client._endpoint().ask(engine, ("init", url, args.workers), 30)
        pids = [ready[1], *ready[2], admin_pid]

        def msg_factory():
            endpoint = client._endpoint()
            return lambda: endpoint.ask(engine, InferenceRequest("x", MESSAGES, {"max_tokens": 8}), 30)
        measure("messages", msg_factory, pids, args.calls, args.rounds, out)

        chan = client.asys.createActor("proto_control_actors.ChannelEngine")
        ready = client._endpoint().ask(chan, ("init", url, args.workers), 30)
        cpids = [ready[1], *ready[2], admin_pid]
        measure("channel", lambda: ChannelCaller(ready[3]).call, cpids, args.calls, args.rounds, out)
        wakeups = client._endpoint().ask(chan, ("wakeups",), 10)
        print(f"  (the channel engine was woken {wakeups[1]} times)", flush=True)

        plain = subprocess.Popen([sys.executable, __file__, "--plain-engine", url or "", str(args.workers)],
                                 stdout=subprocess.PIPE, text=True, start_new_session=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        pport = int(plain.stdout.readline().split()[1])
        time.sleep(0.5)
        measure("plain", lambda: ChannelCaller(pport).call, pids_in_group(plain.pid), args.calls, args.rounds, out)
    finally:
        if plain is not None:
            os.killpg(plain.pid, 9)
            plain.wait(5)
        client.close()
        node.stop()
        if mock:
            mock.stop()
    base = out.get("direct", {}).get("seq_p50_ms")
    if base:
        print("added p50 over direct: " + ", ".join(f"{n} {out[n]['seq_p50_ms'] - base:+.2f} ms"
                                                    for n in ("messages", "channel", "plain")))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--plain-engine":
        plain_engine_main(sys.argv[2], int(sys.argv[3]))
    else:
        main()
