#!/usr/bin/env python3
"""The HTTP front door against the Python client and against direct HTTP to the upstream, in one run.

One node (an ``openai_compatible`` deployment on the mock provider, in its own process) and
its HTTP listener (actors/ops/http_process.py). Three paths make the same call:
- ``direct``: ``requests`` straight to the mock (what the upstream itself costs);
- ``client``: ``GatewayClient`` from Python (the node's own path);
- ``ingress``: ``requests`` to the listener's ``/v1/chat/completions`` (client -> HTTP -> node);
- ``floor`` (sequential only): ``requests`` to a process running the listener's own server
  (waitress with its settings, deadlines and per-client cap) whose application makes the same
  GatewayClient call and nothing else: what any
  HTTP hop in front of the client costs here. ingress - floor is the front door's own work
  (routing, keys, limits, dialects, JSON); floor - client is the HTTP hop itself.

Printed per path: sequential non-streamed latency p50/p99 (and the ingress's added p50 over
the client path), throughput with 4 and 16 client threads, sequential streams (TTFT and full
time, p50), and K concurrent streams (streams/s, TTFT p99). The rounds alternate paths so
machine noise hits them alike.

    python bench/bench_http.py --quick          # ~1 min
    python bench/bench_http.py --json out.json
    python bench/bench_http.py --sequential-only [--floor-server stdlib]   # latency only, ~30 s
    python bench/bench_http.py --door-cpu       # the FrontDoor's own CPU per call, no node
    python bench/bench_http.py --bare-cpu       # a bare HTTP round trip (requests -> waitress, no-op app)
    python bench/bench_http.py --guard-cost     # the listener's server against plain waitress, no-op app
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.client import GatewayClient  # noqa: E402
from actors.ops.http_process import start_http  # noqa: E402
from actors.ops.system import start_node  # noqa: E402
from actors.settings.loader import build, parse_config  # noqa: E402
from actors.settings.schema import HttpConfig  # noqa: E402
from actors.testing.mock_provider import MockProcess  # noqa: E402

MESSAGES = [{"role": "user", "content": "Benchmark prompt with a few words in it"}]
KEY = "sk-atomr-bench-0123456789abcdef"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def thread_session(local: threading.local) -> requests.Session:
    """This thread's own HTTP session (kept alive across calls, as a real client's would be)."""
    s = getattr(local, "session", None)
    if s is None:
        s = local.session = requests.Session()
    return s


class Paths:
    def __init__(self, mock_url: str, admin_port: int, http_url: str, max_tokens: int) -> None:
        self.mock_url, self.http_url, self.max_tokens = mock_url, http_url, max_tokens
        self.gateway = GatewayClient(admin_port, timeout_s=60)
        self.local = threading.local()

    def session(self) -> requests.Session:
        return thread_session(self.local)

    def body(self, stream: bool) -> dict:
        return {"model": "bench", "messages": MESSAGES, "max_tokens": self.max_tokens, "stream": stream}

    def direct(self) -> None:
        r = self.session().post(self.mock_url + "/v1/chat/completions", json={**self.body(False), "model": "mock-gpt"},
                                timeout=60)
        assert r.status_code == 200, r.text

    def client(self) -> None:
        assert self.gateway.complete("bench", MESSAGES, max_tokens=self.max_tokens).text

    def floor(self) -> None:
        r = self.session().post(self.floor_url + "/v1/chat/completions", json=self.body(False), timeout=60)
        assert r.status_code == 200, r.text

    def ingress(self) -> None:
        r = self.session().post(self.http_url + "/v1/chat/completions", json=self.body(False),
                                headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert r.status_code == 200, r.text

    # streams: (ttft, total) in seconds
    def _sse(self, url: str, body: dict, headers: dict) -> tuple[float, float]:
        started = time.perf_counter()
        first = None
        with self.session().post(url, json=body, headers=headers, stream=True, timeout=60) as r:
            for data in r.iter_content(chunk_size=None):
                if first is None and b'"content":"' in data and b'"content":""' not in data.split(b"\n\n")[-2:][0]:
                    first = time.perf_counter()
        end = time.perf_counter()
        return (first or end) - started, end - started

    def direct_stream(self) -> tuple[float, float]:
        return self._sse(self.mock_url + "/v1/chat/completions", {**self.body(True), "model": "mock-gpt"}, {})

    def client_stream(self) -> tuple[float, float]:
        started = time.perf_counter()
        first = None
        with self.gateway.stream("bench", MESSAGES, max_tokens=self.max_tokens) as s:
            for chunk in s:
                if first is None and chunk.text:
                    first = time.perf_counter()
        end = time.perf_counter()
        return (first or end) - started, end - started

    def ingress_stream(self) -> tuple[float, float]:
        return self._sse(self.http_url + "/v1/chat/completions", self.body(True), {"Authorization": f"Bearer {KEY}"})


def serve_floor(admin_port: int) -> int:
    """The floor path's server (run as ``bench_http.py --serve-floor PORT``): the listener's own
    server (waitress with its settings, deadlines and per-client cap) and an application that only
    makes the call."""
    from actors.http.server import guarded_server

    client = GatewayClient(admin_port, timeout_s=60)

    def app(environ: dict, start_response) -> list[bytes]:
        doc = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        result = client.complete(doc["model"], doc["messages"], max_tokens=doc["max_tokens"])
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": result.text}}]}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    config = build(HttpConfig, {"listen": "127.0.0.1:0", "auth": "none"}, "http")
    server = guarded_server(app, config)
    print(f"floor listening on http://127.0.0.1:{server.effective_port}", flush=True)
    server.run()
    return 0


def serve_stdlib_floor(admin_port: int) -> int:
    """The floor on http.server's ThreadingHTTPServer instead: one thread per connection reads,
    calls and writes, with no hand-off between an I/O thread and a worker (for comparison only:
    it bounds neither slow clients nor threads)."""
    import socket
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    client = GatewayClient(admin_port, timeout_s=60)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as waitress does

        def do_POST(self) -> None:
            doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            result = client.complete(doc["model"], doc["messages"], max_tokens=doc["max_tokens"])
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": result.text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"floor listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


def door_cpu(calls: int) -> int:
    """The FrontDoor's own CPU per non-streamed call (``--door-cpu``): the WSGI application
    called in-process with a stand-in client that answers at once, so no node and no socket."""
    import io

    import actors.http.app as app_module
    from actors.http.app import FrontDoor
    from actors.types import Completed, InferenceRequest, Usage

    class Answered:
        def __init__(self, client, request, timeout_s) -> None:
            self.request, self.result = request, None

        def __iter__(self):
            self.result = Completed(self.request.request_id, "You said: Benchmark prompt", "stop", Usage(12, 8),
                                    charged_tokens=20)
            return iter(())

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def close(self) -> None:
            pass

        def cancel(self) -> None:
            pass

    class StandIn:
        asys = None

        def request(self, model, messages, **kw):
            return InferenceRequest(model=model, messages=messages, request_id=kw["request_id"],
                                    stream=kw.get("stream", False), metadata=kw.get("metadata") or {})

    app_module.Stream = Answered
    door = FrontDoor(build(HttpConfig, {"listen": "127.0.0.1:0", "keys": [{"name": "bench", "key": {"value": KEY}}]},
                           "http"), StandIn(), ["bench"])
    body = json.dumps({"model": "bench", "messages": MESSAGES, "max_tokens": 8}).encode()

    def call() -> None:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/chat/completions", "CONTENT_LENGTH": str(len(body)),
                   "CONTENT_TYPE": "application/json", "HTTP_AUTHORIZATION": f"Bearer {KEY}",
                   "HTTP_HOST": "127.0.0.1", "HTTP_USER_AGENT": "python-requests", "HTTP_ACCEPT": "*/*",
                   "wsgi.input": io.BytesIO(body), "waitress.client_disconnected": lambda: False}
        b"".join(door(environ, lambda status, headers: None))

    try:
        for _ in range(500):
            call()
        for _ in range(3):
            started = time.process_time()
            for _ in range(calls):
                call()
            print(f"front door's own CPU: {1e6 * (time.process_time() - started) / calls:.1f} us per call", flush=True)
    finally:
        door.close()
    return 0


def _bare_app():
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hello there"}}]}).encode()

    def app(environ: dict, start_response) -> list[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def _fork_bare_server(kind: str) -> tuple[int, str]:
    """A no-op application in a child process of its own (its threads started there, as the listener's
    are): ``kind`` "waitress" is plain waitress with the listener's settings, "guarded" the listener's
    own server (actors/http/server.py: deadlines and the per-client cap on top)."""
    import waitress

    from actors.http.server import guarded_server, waitress_options

    config = build(HttpConfig, {"listen": "127.0.0.1:0", "auth": "none"}, "http")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        if kind == "guarded":
            server = guarded_server(_bare_app(), config)
        else:
            server = waitress.create_server(_bare_app(), host="127.0.0.1", port=0, **waitress_options(config))
        os.write(write_end, str(server.effective_port).encode())
        server.run()
        os._exit(0)
    return pid, f"http://127.0.0.1:{int(os.read(read_end, 16))}/v1/chat/completions"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_cpu(calls: int) -> int:
    """An HTTP round trip and nothing else (``--bare-cpu``): ``requests`` to waitress, with the
    listener's settings, running a no-op application; the CPU each side spends per call."""
    pid, url = _fork_bare_server("waitress")
    try:
        session = requests.Session()
        doc = {"model": "bench", "messages": MESSAGES, "max_tokens": 8}
        for _ in range(100):
            session.post(url, json=doc, timeout=10)
        for _ in range(3):
            server_before, client_before, lat = _cpu_s(pid), time.process_time(), []
            for _ in range(calls):
                started = time.perf_counter()
                session.post(url, json=doc, timeout=10)
                lat.append(time.perf_counter() - started)
            print(f"bare HTTP round trip p50 {pct(lat, 0.5) * 1000:.2f} ms; CPU per call: waitress "
                  f"{(_cpu_s(pid) - server_before) / calls * 1000:.3f} ms, the requests client "
                  f"{(time.process_time() - client_before) / calls * 1000:.3f} ms", flush=True)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return 0


def guard_cost(calls: int, rounds: int, threads: int = 16, seconds: float = 2.0) -> dict:
    """``--guard-cost``: the listener's server (header and body deadlines, the per-client cap) against
    plain waitress, a no-op application on each, in turns in one run: sequential p50, the server's CPU
    per call, and ``threads``-thread throughput. Ratios are per round (guarded / plain), then the median."""
    servers = {kind: _fork_bare_server(kind) for kind in ("waitress", "guarded")}
    doc = {"model": "bench", "messages": MESSAGES, "max_tokens": 8}
    seen: dict[str, dict[str, list[float]]] = {k: {"p50": [], "cpu": [], "rps": []} for k in servers}
    ratios: dict[str, list[float]] = {"p50": [], "cpu": [], "rps": []}
    try:
        sessions = {kind: requests.Session() for kind in servers}
        for kind, (_, url) in servers.items():
            for _ in range(100):
                sessions[kind].post(url, json=doc, timeout=10)
        for r in range(rounds):
            this: dict[str, dict[str, float]] = {}
            for kind in (("waitress", "guarded") if r % 2 == 0 else ("guarded", "waitress")):
                pid, url = servers[kind]
                before, lat = _cpu_s(pid), []
                for _ in range(calls):
                    started = time.perf_counter()
                    sessions[kind].post(url, json=doc, timeout=10)
                    lat.append(time.perf_counter() - started)
                cpu = (_cpu_s(pid) - before) / calls
                def call(url=url, local=threading.local()) -> None:
                    if not hasattr(local, "s"):
                        local.s = requests.Session()
                    local.s.post(url, json=doc, timeout=10)
                rps = throughput(call, threads, seconds)
                this[kind] = {"p50": pct(lat, 0.5), "cpu": cpu, "rps": rps}
                for key, value in this[kind].items():
                    seen[kind][key].append(value)
            for key in ratios:
                ratios[key].append(this["guarded"][key] / this["waitress"][key] if this["waitress"][key] else 1.0)
            print(f"round {r + 1}: " + "; ".join(
                f"{kind} p50 {v['p50'] * 1000:.2f} ms, server CPU {v['cpu'] * 1000:.3f} ms/call, {v['rps']:.0f} req/s "
                f"({threads} threads)" for kind, v in this.items()), flush=True)
    finally:
        for pid, _ in servers.values():
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    out = {"median": {kind: {k: statistics.median(v) for k, v in values.items()} for kind, values in seen.items()},
           "ratio": {k: statistics.median(v) for k, v in ratios.items()}}
    print(f"guarded / plain waitress, median of per-round ratios: p50 {out['ratio']['p50']:.3f}x, server CPU per "
          f"call {out['ratio']['cpu']:.3f}x, throughput {out['ratio']['rps']:.3f}x", flush=True)
    return out


def start_floor(admin_port: int, server: str) -> tuple[subprocess.Popen, str]:
    flag = "--serve-floor" if server == "waitress" else "--serve-stdlib-floor"
    proc = subprocess.Popen([sys.executable, __file__, flag, str(admin_port)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline()
    if not line.startswith("floor listening on "):
        proc.kill()
        raise RuntimeError(f"the floor server did not start: {line!r}")
    return proc, line.split()[-1]


def alternating_latency(paths: object, names: tuple[str, ...], calls: int, warmup: int) -> dict[str, list[float]]:
    """``calls`` sequential calls per path (after ``warmup`` each), in rounds whose order rotates,
    so that machine noise hits every path alike: each path's latencies in seconds."""
    for name in names:
        for _ in range(warmup):
            getattr(paths, name)()
    lat: dict[str, list[float]] = {n: [] for n in names}
    for i in range(calls):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            started = time.perf_counter()
            getattr(paths, name)()
            lat[name].append(time.perf_counter() - started)
    return lat


def throughput(fn, threads: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def run(i: int) -> None:
        while time.monotonic() < stop:
            fn()
            counts[i] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.monotonic() - started)


def concurrent_streams(fn, k: int, seconds: float) -> dict:
    stop = time.monotonic() + seconds
    ttfts: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        while time.monotonic() < stop:
            ttft, _ = fn()
            with lock:
                ttfts.append(ttft)

    workers = [threading.Thread(target=run) for _ in range(k)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"streams_per_s": len(ttfts) / (time.monotonic() - started), "ttft_p99_ms": pct(ttfts, 0.99) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls", type=int, help="sequential calls per path (default 300, quick 100)")
    parser.add_argument("--seconds", type=float, help="per throughput measurement (default 5, quick 2)")
    parser.add_argument("--k", type=int, default=16, help="concurrent streams")
    parser.add_argument("--drip-ms", type=float, default=10.0, help="between streamed tokens")
    parser.add_argument("--sequential-only", action="store_true", help="only the sequential latency (profiling)")
    parser.add_argument("--http-threads", type=int, default=64, help="the listener's worker threads")
    parser.add_argument("--hold", type=float, default=0.0,
                        help="seconds of extra ingress-only calls after the figures (to attach py-spy)")
    parser.add_argument("--http-log", help="the listener's access log (INFO: each call's time in the app)")
    parser.add_argument("--floor-server", choices=("waitress", "stdlib"), default="waitress",
                        help="what the floor path runs on (stdlib: http.server, a thread per connection)")
    parser.add_argument("--door-cpu", action="store_true", help="only the front door's own CPU per call, in-process")
    parser.add_argument("--bare-cpu", action="store_true", help="only a bare HTTP round trip: its p50 and CPU per call")
    parser.add_argument("--guard-cost", action="store_true",
                        help="only the listener's server against plain waitress (deadlines, per-client cap)")
    parser.add_argument("--rounds", type=int, default=6, help="--guard-cost rounds")
    parser.add_argument("--serve-floor", type=int, metavar="ADMIN_PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-stdlib-floor", type=int, metavar="ADMIN_PORT", help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.serve_floor:
        return serve_floor(args.serve_floor)
    if args.serve_stdlib_floor:
        return serve_stdlib_floor(args.serve_stdlib_floor)
    if args.door_cpu:
        return door_cpu(args.calls or 5000)
    if args.bare_cpu:
        return bare_cpu(args.calls or 1000)
    if args.guard_cost:
        result = guard_cost(args.calls or 500, args.rounds, seconds=args.seconds or 2.0)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    calls = args.calls or (100 if args.quick else 300)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    os.environ.setdefault("ATOMR_CLUSTER_SECRET", "bench:" + "h" * 43)
    mock = MockProcess(words_per_second=1000 / args.drip_ms)
    port = 19700 + os.getpid() % 200
    config = parse_config({"deployments": [{"name": "bench", "model": "bench", "provider": "openai_compatible",
                                            "upstream_model": "mock-gpt", "endpoint": mock.url + "/v1",
                                            "workers": 16, "coalesce_ms": 0}],
                           "node": {"admin_port": port, "name": "bench"}})
    node = start_node(config, console_log=False, log_file="/tmp/bench_http_node.log")
    http = start_http(build(HttpConfig, {"listen": "127.0.0.1:0", "threads": args.http_threads,
                                         "keys": [{"name": "bench", "key": {"value": KEY}}]}, "http"),
                      port, models=["bench"], log_level="INFO" if args.http_log else "WARNING",
                      log_file=args.http_log)
    floor, floor_url = start_floor(port, args.floor_server)
    figures: dict = {"calls": calls, "seconds": seconds, "k": args.k, "drip_ms": args.drip_ms, "cpus": os.cpu_count()}
    try:
        paths = Paths(mock.url, port, http.url, max_tokens=8)
        paths.floor_url = floor_url
        names = ("direct", "client", "ingress")
        sequential = names + ("floor",)
        lat = alternating_latency(paths, sequential, calls, warmup=20)
        figures["sequential_ms"] = {n: {"p50": pct(v, 0.5) * 1000, "p99": pct(v, 0.99) * 1000} for n, v in lat.items()}
        figures["ingress_added_p50_ms_over_client"] = (figures["sequential_ms"]["ingress"]["p50"]
                                                       - figures["sequential_ms"]["client"]["p50"])
        seq_ms = figures["sequential_ms"]
        figures["floor_added_p50_ms_over_client"] = seq_ms["floor"]["p50"] - seq_ms["client"]["p50"]
        figures["ingress_added_p50_ms_over_floor"] = seq_ms["ingress"]["p50"] - seq_ms["floor"]["p50"]
        for n in sequential:
            s = seq_ms[n]
            print(f"sequential {n:8s} p50 {s['p50']:6.2f} ms  p99 {s['p99']:6.2f} ms  "
                  f"ratio to client {s['p50'] / seq_ms['client']['p50']:.3f}", flush=True)
        print(f"the HTTP hop (floor - client) {figures['floor_added_p50_ms_over_client']:+.2f} ms; the front door's "
              f"own work (ingress - floor) {figures['ingress_added_p50_ms_over_floor']:+.2f} ms", flush=True)
        figures["ingress_p50_ratio_to_client"] = (figures["sequential_ms"]["ingress"]["p50"]
                                                  / figures["sequential_ms"]["client"]["p50"])
        print(f"ingress adds {figures['ingress_added_p50_ms_over_client']:+.2f} ms p50 over the client path "
              f"(ratio {figures['ingress_p50_ratio_to_client']:.3f}; listener pid {http.pid})", flush=True)
        if args.hold:
            stop = time.monotonic() + args.hold
            while time.monotonic() < stop:
                paths.ingress()
        if args.sequential_only:
            return 0
        figures["throughput_rps"] = {}
        for threads in (4, 16):
            row = figures["throughput_rps"][threads] = {n: throughput(getattr(paths, n), threads, seconds) for n in names}
            print(f"{threads:2d} threads  " + "  ".join(f"{n} {v:7.1f}/s" for n, v in row.items()), flush=True)
        stream_paths = {n: getattr(paths, f"{n}_stream") for n in names}
        seq: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for i in range(max(20, calls // 5)):
            for n in names:
                seq[n].append(stream_paths[n]())
        figures["stream_ms"] = {n: {"ttft_p50": pct([a for a, _ in v], 0.5) * 1000,
                                    "full_p50": pct([b for _, b in v], 0.5) * 1000} for n, v in seq.items()}
        for n, s in figures["stream_ms"].items():
            print(f"stream     {n:8s} ttft p50 {s['ttft_p50']:6.2f} ms  full p50 {s['full_p50']:7.2f} ms", flush=True)
        figures["concurrent_streams"] = {}
        for n in names:
            row = figures["concurrent_streams"][n] = concurrent_streams(stream_paths[n], args.k, seconds * 2)
            print(f"K={args.k} streams {n:8s} {row['streams_per_s']:6.1f} streams/s  ttft p99 {row['ttft_p99_ms']:6.1f} ms",
                  flush=True)
    finally:
        floor.terminate()
        floor.wait(timeout=10)
        http.stop(timeout_s=5)
        node.stop(kill_after_s=10)
        mock.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
