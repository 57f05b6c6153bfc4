#!/usr/bin/env python3
"""Hundreds of concurrent streams through one node (issue 23), against direct calls in the same run.

The upstream is ``actors.testing.stream_mock`` (asyncio, ``--mock-procs`` processes on one
socket, its CPU reported so it is seen not to be the bottleneck). For each K, K streams of
``--chunks`` one-token chunks ``--drip-ms`` apart are opened at once (a burst), each once:

- ``direct``: a lean asyncio client (bench/aio_sse.py) straight to the mock;
- ``door``: the same client to the node's HTTP front door (``/v1/chat/completions``);
- ``client``: ``GatewayClient.stream`` from K threads of a child process (the Python client).

Each path is bounded (``--bound`` seconds); printed: completed (every token once, in order,
a clean end) of K, TTFT p50/p99, the p99 of each stream's largest gap between two chunks,
completion time p99, the node's CPU per stream and per delivered chunk (utime+stime from
/proc of every node process and the HTTP listener) with the share of each role, its
largest PSS while the burst ran, and its start-up time (node with ``workers = K``, then the
listener, until both answer). Then, with ``--short``, K=64 short streams back to back
(20 chunks x 25 ms) for streams/s; with ``--unary``, non-streamed calls: sequential p50 and
4-thread throughput, direct ``requests`` against the client and the front door.

    python bench/bench_scale.py --k 64 256                  # the bursts, ~4 min
    python bench/bench_scale.py --k 1000 --paths direct door --bound 90
    python bench/bench_scale.py --k 64 --short --unary --no-burst
    python bench/bench_scale.py --k 64 --json out.json

The machine is shared: compare paths within one run; the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
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

from aio_sse import Pool, Result

from actors.testing.stream_mock import StreamMock, expected_text, realtime

MESSAGES = [{"role": "user", "content": "Benchmark prompt with a few words in it"}]
TICK = os.sysconf("SC_CLK_TCK")
CHAT = "/chat/completions"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, ValueError, IndexError):
        return 0.0


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Node:
    """One node with workers = K and its HTTP listener; its processes by role."""

    def __init__(self, mock_url: str, workers: int, http_threads: int, coalesce_ms: float,
                 worker_processes: int | None = None) -> None:
        from actors.ops.http_process import start_http
        from actors.ops.procs import admin_process, port_is_listening
        from actors.ops.system import start_node
        from actors.settings.loader import build, parse_config
        from actors.settings.schema import HttpConfig

        os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
        self.port = next(p for p in range(19600, 19790) if not port_is_listening(p))
        config = parse_config({
            "node": {"admin_port": self.port, "name": "bench-scale", "log_level": "WARNING"},
            "deployments": [{"name": "bench", "model": "bench", "provider": "openai_compatible",
                             "upstream_model": "mock-gpt", "endpoint": mock_url + "/v1", "workers": workers,
                             "queue_capacity": 16384, "coalesce_ms": coalesce_ms,
                             **({"worker_processes": worker_processes} if worker_processes else {}),
                             "timeouts": {"total_s": 600, "read_s": 120},
                             "limits": {"rpm": 10_000_000, "tpm": 10_000_000_000}}]})
        t0 = time.monotonic()
        self.node = start_node(config, console_log=False, log_file=f"/tmp/atomr-bench-scale-{self.port}.log",
                               deploy_timeout_s=max(60.0, workers * 0.5))
        self.node_start_s = time.monotonic() - t0
        self.http = None
        try:
            http = build(HttpConfig, {"listen": "127.0.0.1:0", "auth": "none", "threads": http_threads,
                                      "connection_limit": max(1000, http_threads + 64),
                                      # every stream of the burst comes from this one address
                                      "max_connections_per_client": max(1000, http_threads + 64)}, "http")
            self.http = start_http(http, self.port, models=["bench"], log_file=f"/tmp/atomr-bench-scale-http-{self.port}.log",
                                   log_level="WARNING", start_timeout_s=120)
        except BaseException:
            self.node.stop()
            raise
        self.startup_s = time.monotonic() - t0
        self.url = self.http.url + "/v1"
        self.admin_pid = (admin_process(self.port) or (None,))[0]

    def settle(self, cores: float = 0.15, timeout_s: float = 90.0) -> float:
        """Wait until the node is idle again (below ``cores`` over a second): the last burst's tail done."""
        t0 = time.monotonic()
        pids = list(self.roles())
        while time.monotonic() - t0 < timeout_s:
            c0 = sum(cpu_of(p) for p in pids)
            time.sleep(1.0)
            if sum(cpu_of(p) for p in pids) - c0 < cores:
                break
        return time.monotonic() - t0

    def roles(self) -> dict[int, str]:
        """The engine is the admin's grandchild with children of its own: its worker processes
        (one per slot before issue 23's slots as threads, a few now)."""
        from actors.ops.procs import parent_pid, pids_in_group

        pids = pids_in_group(self.node.pgid)
        parents = {pid: parent_pid(pid) for pid in pids}
        children = collections.Counter(parents.values())
        tops = {pid for pid in pids if parents[pid] == self.admin_pid}
        engine = next((pid for pid in pids if parents[pid] in tops and children[pid]), None)
        out = {pid: ("admin" if pid == self.admin_pid else "engine" if pid == engine else
                     "workers" if parents[pid] == engine else "other actors") for pid in pids}
        out[self.http.pid] = "http"
        return out

    def stop(self) -> None:
        try:
            if self.http is not None:
                self.http.stop(timeout_s=5)
        finally:
            self.node.stop()


class Meter:
    """CPU per role over a run (and the mock's, and this process's), PSS sampled every second."""

    def __init__(self, node: Node | None, mock: StreamMock) -> None:
        self.node, self.mock = node, mock
        self.roles = node.roles() if node is not None else {}
        self.mock_pids = mock.pids()
        self.peak_pss = 0
        self._stop = threading.Event()

    def __enter__(self) -> Meter:
        self.cpu0 = {pid: cpu_of(pid) for pid in self.roles}
        self.mock0 = sum(cpu_of(p) for p in self.mock_pids)
        self.self0 = self_cpu()
        self.t0 = time.monotonic()
        self.load0 = loadavg()
        self._late()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _late(self) -> dict[str, Any]:
        try:
            return self.mock.lateness()
        except OSError:
            return {}

    def _sample(self) -> None:
        while True:
            if self.roles:
                self.peak_pss = max(self.peak_pss, pss_kib(list(self.roles)))
            if self._stop.wait(1.0):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.wall = time.monotonic() - self.t0
        by_role: collections.Counter = collections.Counter()
        for pid, role in self.roles.items():
            by_role[role] += cpu_of(pid) - self.cpu0[pid]
        self.by_role = dict(by_role)
        self.node_cpu = sum(by_role.values())
        self.mock_cpu = sum(cpu_of(p) for p in self.mock_pids) - self.mock0
        self.bench_cpu = self_cpu() - self.self0
        self.mock_late = self._late()

    def figures(self, streams: int, chunks: int) -> dict[str, Any]:
        out = {"wall_s": self.wall, "mock_cores": self.mock_cpu / self.wall, "bench_cores": self.bench_cpu / self.wall,
               "load_at_start": self.load0, "mock_late_p99_ms": self.mock_late.get("late_p99_ms", float("nan"))}
        if self.roles:
            out.update(node_cpu_s=self.node_cpu, node_cores=self.node_cpu / self.wall,
                       node_cpu_ms_per_stream=1000 * self.node_cpu / max(1, streams),
                       node_cpu_us_per_chunk=1e6 * self.node_cpu / max(1, chunks),
                       node_pss_mib=self.peak_pss / 1024, node_processes=len(self.roles),
                       roles={r: {"cpu_s": c, "share": c / max(1e-9, self.node_cpu),
                                  "n": sum(1 for v in self.roles.values() if v == r)}
                              for r, c in sorted(self.by_role.items(), key=lambda kv: -kv[1])})
        return out


def body_for(chunks: int, model: str) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "max_tokens": chunks, "stream": True}


def summarize(rows: list[dict[str, Any]], k: int, chunks: int) -> dict[str, Any]:
    """rows: {ok, ttft, gap, dur, tokens, err}, one per stream."""
    ok = [r for r in rows if r["ok"]]
    errors = collections.Counter(r["err"] for r in rows if not r["ok"])
    return {"k": k, "completed": len(ok), "ttft_p50_ms": 1000 * pct([r["ttft"] for r in ok], 0.5),
            "ttft_p99_ms": 1000 * pct([r["ttft"] for r in ok], 0.99),
            "gap_p99_ms": 1000 * pct([r["gap"] for r in ok], 0.99),
            "done_p99_s": pct([r["dur"] for r in ok], 0.99),
            "tokens": sum(r["tokens"] for r in rows), "events": sum(r.get("events", r["tokens"]) for r in rows),
            "errors": dict(errors.most_common(4))}


def row_of(result: Result, chunks: int) -> dict[str, Any]:
    ok = result.status == 200 and result.done and result.error is None and result.text == expected_text(chunks)
    err = None
    if not ok:
        err = (result.error or (f"status {result.status}" if result.status != 200 else
                                "missing or repeated tokens" if result.done else "no end"))[:80]
    return {"ok": ok, "ttft": result.ttft or 0.0, "gap": result.largest_gap,
            "dur": (result.ended or time.monotonic()) - result.started, "tokens": len(result.text.split()),
            "events": len(result.parts), "err": err}


async def _burst(url: str, model: str, k: int, chunks: int, bound_s: float) -> list[Result]:
    pools = [Pool(url) for _ in range(k)]
    try:
        return list(await asyncio.gather(*[p.post(CHAT, body_for(chunks, model), bound_s) for p in pools]))
    finally:
        for p in pools:
            p.close()


async def _loop(url: str, model: str, k: int, chunks: int, seconds: float) -> tuple[list[Result], float]:
    stop_at = time.monotonic() + seconds
    out: list[Result] = []

    async def one() -> None:
        pool = Pool(url)
        try:
            while time.monotonic() < stop_at:
                out.append(await pool.post(CHAT, body_for(chunks, model), 60))
        finally:
            pool.close()
    t0 = time.monotonic()
    await asyncio.gather(*[one() for _ in range(k)])
    return out, time.monotonic() - t0


CALLER_RT = [False]   # the asyncio caller in SCHED_RR while it measures (--realtime)


def _run_as_caller(coro):
    """Run the asyncio caller, in SCHED_RR when asked: it stands for callers on other machines."""
    if not CALLER_RT[0]:
        return asyncio.run(coro)
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    realtime()
    try:
        return asyncio.run(coro)
    finally:
        os.sched_setscheduler(0, policy, param)


def aio_burst(url: str, model: str, k: int, chunks: int, bound_s: float) -> list[dict[str, Any]]:
    return [row_of(r, chunks) for r in _run_as_caller(_burst(url, model, k, chunks, bound_s))]


def aio_loop(url: str, model: str, k: int, chunks: int, seconds: float) -> tuple[list[dict[str, Any]], float]:
    results, wall = _run_as_caller(_loop(url, model, k, chunks, seconds))
    return [row_of(r, chunks) for r in results], wall


# -- the Python client, in a child process -----------------------------------------------


def gateway_child(spec: dict[str, Any]) -> None:
    """K threads of one GatewayClient: a burst (each thread one stream) or a loop; JSON rows on stdout."""
    from actors.client import GatewayClient

    client = GatewayClient(spec["port"], timeout_s=spec["bound_s"] + 30)
    k, chunks, mode = spec["k"], spec["chunks"], spec["mode"]
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(k + 1)
    stop_at = [0.0]

    def one() -> None:
        started = time.monotonic()
        times, parts, err = [], [], None
        try:
            with client.stream("bench", MESSAGES, max_tokens=chunks, timeout_s=spec["bound_s"]) as stream:
                for chunk in stream:
                    times.append(time.monotonic())
                    parts.append(chunk.text)
        except Exception as exc:  # noqa: BLE001 - counted
            err = f"{type(exc).__name__}: {str(exc)[:60]}"
        text = "".join(parts)
        ok = err is None and text == expected_text(chunks)
        row = {"ok": ok, "ttft": times[0] - started if times else 0.0,
               "gap": max((b - a for a, b in zip(times, times[1:])), default=0.0),
               "dur": time.monotonic() - started, "tokens": len(text.split()), "events": len(times),
               "err": None if ok else (err or "missing or repeated tokens")}
        with lock:
            rows.append(row)

    # A long-running caller has the route cached (expired or not): warm it, as the listener's warm-up does.
    for attempt in range(6):
        try:
            client._route_lookup("bench")
            break
        except Exception as exc:  # noqa: BLE001 - a node still busy with the last burst: try again
            print(f"route lookup failed ({exc}); retrying", file=sys.stderr, flush=True)

    def thread() -> None:
        client._correlator()  # this thread's endpoint, made before the clock starts
        barrier.wait()
        if mode == "burst":
            one()
        else:
            while time.monotonic() < stop_at[0]:
                one()

    threads = [threading.Thread(target=thread, daemon=True) for _ in range(k)]
    for t in threads:
        t.start()
    # Set before the barrier opens: a thread past it reads it at once (set after, some threads
    # read 0.0 and ran no stream at all, and the loop's streams/s came out low and erratic).
    stop_at[0] = time.monotonic() + spec.get("seconds", 0)
    barrier.wait()
    t0, cpu0 = time.monotonic(), self_cpu()
    print("go", flush=True)
    for t in threads:
        t.join(max(1.0, t0 + spec["bound_s"] + 40 - time.monotonic()))
    wall = time.monotonic() - t0
    print(json.dumps({"rows": rows, "wall": wall, "cpu": self_cpu() - cpu0}), flush=True)
    os._exit(0)  # the stuck threads, if any, and the endpoints: the node stops anyway


def client_run(port: int, k: int, chunks: int, bound_s: float, mode: str, seconds: float,
               meter_factory) -> tuple[list[dict[str, Any]], float, Any, float]:
    spec = {"port": port, "k": k, "chunks": chunks, "bound_s": bound_s, "mode": mode, "seconds": seconds}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--gateway-child", json.dumps(spec)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()   # "go": every thread has its endpoint
        if line.strip() != "go":
            raise RuntimeError(f"the client child did not start: {line!r}")
        with meter_factory() as meter:
            out = proc.stdout.readline()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    doc = json.loads(out)
    return doc["rows"], doc["wall"], meter, doc["cpu"]


# -- the runs ------------------------------------------------------------------------------


def show(name: str, s: dict[str, Any]) -> None:
    line = (f"  {name:7s} {s['completed']:4d}/{s['k']:<4d} ttft p50 {s['ttft_p50_ms']:7.0f} p99 {s['ttft_p99_ms']:7.0f} ms  "
            f"gap p99 {s['gap_p99_ms']:6.0f} ms  done p99 {s['done_p99_s']:5.1f} s  mock {s['mock_cores']:.2f} cores "
            f"(late p99 {s['mock_late_p99_ms']:.0f} ms), "
            f"bench {s['bench_cores']:.2f}")
    if s.get("client_cores") is not None:
        line += f", client {s['client_cores']:.2f}"
    if "node_cpu_s" in s:
        line += (f"\n          node {s['node_cores']:.2f} cores: {s['node_cpu_ms_per_stream']:.0f} ms/stream, "
                 f"{s['node_cpu_us_per_chunk']:.0f} us/chunk, PSS {s['node_pss_mib']:.0f} MiB in "
                 f"{s['node_processes']} processes; " +
                 ", ".join(f"{r} {v['share'] * 100:.0f}%" for r, v in s["roles"].items()))
    if s["errors"]:
        line += f"\n          errors: {s['errors']}"
    print(line + f"  [load {s['load_at_start']}]", flush=True)


def burst_k(args: argparse.Namespace, mock: StreamMock, k: int) -> dict[str, Any]:
    row: dict[str, Any] = {"k": k, "chunks": args.chunks, "drip_ms": args.drip_ms}
    print(f"K={k}: {args.chunks} chunks x {args.drip_ms:g} ms, bound {args.bound:g} s", flush=True)

    def direct() -> None:
        with Meter(None, mock) as m:
            rows = aio_burst(mock.url + "/v1", "mock-gpt", k, args.chunks, args.bound)
        s = row["direct"] = {**summarize(rows, k, args.chunks), **m.figures(k, 0)}
        show("direct", s)

    direct()
    node = None
    if {"door", "client"} & set(args.paths):
        print(f"  starting a node with {k} workers and a listener with {k + 8} threads ...", flush=True)
        node = Node(mock.url, workers=k, http_threads=k + 8, coalesce_ms=args.coalesce_ms,
                    worker_processes=args.worker_processes)
        row["startup_s"], row["node_start_s"] = node.startup_s, node.node_start_s
        print(f"  start-up {node.startup_s:.1f} s (node {node.node_start_s:.1f} s)", flush=True)
    try:
        for n, path in enumerate(p for p in args.paths if p != "direct"):
            if n:
                print(f"  (settled in {node.settle():.1f} s)", flush=True)
            if path == "door":
                if args.warm:
                    aio_burst(node.url, "bench", k, 5, args.bound)
                with Meter(node, mock) as m:
                    rows = aio_burst(node.url, "bench", k, args.chunks, args.bound)
                s = summarize(rows, k, args.chunks)
                row["door"] = s = {**s, **m.figures(k, s["tokens"])}
                show("door", s)
            else:
                rows, _, m, ccpu = client_run(node.port, k, args.chunks, args.bound, "burst", 0,
                                              lambda: Meter(node, mock))
                s = summarize(rows, k, args.chunks)
                row["client"] = s = {**s, **m.figures(k, s["tokens"]), "client_cores": ccpu / m.wall}
                show("client", s)
        if args.paths and args.paths[-1] != "direct" and node is not None and args.direct_after:
            direct()
    finally:
        if node is not None:
            node.stop()
    return row


def short_runs(args: argparse.Namespace, mock: StreamMock) -> dict[str, Any]:
    k, chunks = args.short_k, 20
    base = mock.url + "/mock:drip_ms=25"
    url = base + "/v1"
    print(f"short streams: K={k}, {chunks} chunks x 25 ms, {args.short_seconds:g} s per path", flush=True)
    out: dict[str, Any] = {"k": k}

    def line(name: str, rows: list, wall: float, m: Meter, extra: str = "") -> dict[str, Any]:
        done = sum(r["ok"] for r in rows)
        s = {"streams_per_s": done / wall, "completed": done, "failed": len(rows) - done,
             **m.figures(done, done * chunks)}
        base = out.get("direct", {}).get("streams_per_s")
        ratio = f" ({s['streams_per_s'] / base:.2f}x)" if base else ""
        cpu = f", node {s['node_cpu_ms_per_stream']:.1f} ms/stream, {s['node_cores']:.2f} cores" if "node_cpu_s" in s else ""
        print(f"  {name:7s} {s['streams_per_s']:6.1f} streams/s{ratio}, {s['failed']} failed{cpu}, mock "
              f"{s['mock_cores']:.2f} cores{extra}  [load {s['load_at_start']}]", flush=True)
        return s

    with Meter(None, mock) as m:
        rows, wall = aio_loop(url, "mock-gpt", k, chunks, args.short_seconds)
    out["direct"] = line("direct", rows, wall, m)
    node = Node(base, workers=k, http_threads=k + 8, coalesce_ms=args.coalesce_ms,
                worker_processes=args.worker_processes)
    try:
        aio_loop(node.url, "bench", k, 2, 2.0)
        with Meter(node, mock) as m:
            rows, wall = aio_loop(node.url, "bench", k, chunks, args.short_seconds)
        out["door"] = line("door", rows, wall, m)
        rows, wall, m, ccpu = client_run(node.port, k, chunks, 120, "loop", args.short_seconds,
                                         lambda: Meter(node, mock))
        out["client"] = line("client", rows, wall, m, f", client {ccpu / wall:.2f} cores")
    finally:
        node.stop()
    return out


def unary_runs(args: argparse.Namespace, mock: StreamMock) -> dict[str, Any]:
    """Sequential p50 and 4-thread throughput: direct requests, the Python client, the front door."""
    import requests

    from actors.client import GatewayClient

    node = Node(mock.url, workers=4, http_threads=16, coalesce_ms=args.coalesce_ms,
                worker_processes=args.worker_processes)
    client = GatewayClient(node.port, timeout_s=60)
    local = threading.local()
    body = {"messages": MESSAGES, "max_tokens": 8}

    def session() -> requests.Session:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
            s.trust_env = False
        return s

    def direct() -> None:
        r = session().post(mock.url + "/v1/chat/completions", json={**body, "model": "mock-gpt"}, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected_text(8)

    def door() -> None:
        r = session().post(node.url + "/chat/completions", json={**body, "model": "bench"}, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected_text(8), r.text

    def python_client() -> None:
        assert client.complete("bench", MESSAGES, max_tokens=8).text == expected_text(8)

    def run(threads: int, per_thread: int, call) -> tuple[float, list[float]]:
        lat: list[float] = []
        lock = threading.Lock()

        def work() -> None:
            mine = []
            for _ in range(per_thread):
                t = time.perf_counter()
                call()
                mine.append(time.perf_counter() - t)
            with lock:
                lat.extend(mine)
        pool = [threading.Thread(target=work) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return len(lat) / (time.perf_counter() - t0), lat

    paths = {"direct": direct, "client": python_client, "door": door}
    seq: dict[str, list[float]] = {n: [] for n in paths}
    par: dict[str, list[float]] = {n: [] for n in paths}
    try:
        for call in paths.values():
            run(4, 25, call)
        for _ in range(args.unary_rounds):
            for name, call in paths.items():
                seq[name].append(pct(run(1, 100, call)[1], 0.5))
                par[name].append(run(4, 100, call)[0])
    finally:
        client.close()
        node.stop()
    out: dict[str, Any] = {"seq_p50_ms": {n: 1000 * statistics.median(v) for n, v in seq.items()},
                           "threads4_rps": {n: statistics.median(v) for n, v in par.items()}, "load": loadavg()}
    d = out["seq_p50_ms"]["direct"]
    print(f"non-streamed (median of {args.unary_rounds} rounds) [load {out['load']}]: sequential p50 direct {d:.2f} ms, "
          + ", ".join(f"{n} {out['seq_p50_ms'][n]:.2f} ms ({out['seq_p50_ms'][n] - d:+.2f})" for n in ("client", "door"))
          + f"; 4 threads direct {out['threads4_rps']['direct']:.0f}/s, "
          + ", ".join(f"{n} {out['threads4_rps'][n]:.0f}/s ({out['threads4_rps'][n] / out['threads4_rps']['direct']:.2f}x)"
                      for n in ("client", "door")), flush=True)
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--gateway-child":
        return gateway_child(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="*", default=[64, 256])
    parser.add_argument("--paths", nargs="*", default=["direct", "door", "client"],
                        choices=["direct", "door", "client"])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--drip-ms", type=float, default=50.0)
    parser.add_argument("--bound", type=float, default=60.0, help="seconds a burst may take; later is not completed")
    parser.add_argument("--coalesce-ms", type=float, default=0.0)
    parser.add_argument("--worker-processes", type=int, default=None,
                        help="the deployment's worker_processes (default: the node's own rule)")
    parser.add_argument("--mock-procs", type=int, default=2)
    parser.add_argument("--no-realtime", dest="realtime", action="store_false",
                        help="leave the mock and the asyncio caller at normal priority (by default they run "
                             "SCHED_RR, standing for other machines: a node with hundreds of runnable threads "
                             "would otherwise starve them on a 2-core machine)")
    parser.add_argument("--no-warm", dest="warm", action="store_false",
                        help="no warm-up burst through the door (the listener's threads then make their endpoints)")
    parser.add_argument("--direct-after", action="store_true", help="direct again after the node's paths")
    parser.add_argument("--no-burst", action="store_true")
    parser.add_argument("--short", action="store_true", help="short streams back to back: streams/s")
    parser.add_argument("--short-k", type=int, default=64)
    parser.add_argument("--short-seconds", type=float, default=15.0)
    parser.add_argument("--unary", action="store_true", help="non-streamed: sequential p50, 4 threads")
    parser.add_argument("--unary-rounds", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    figures: dict[str, Any] = {"cpus": os.cpu_count(), "load_at_start": loadavg(), "args": vars(args), "bursts": []}
    print(f"load average {figures['load_at_start']}, {os.cpu_count()} cpus", flush=True)
    CALLER_RT[0] = args.realtime
    mock = StreamMock(procs=args.mock_procs, drip_ms=args.drip_ms, realtime=args.realtime)
    try:
        if not args.no_burst:
            for k in args.k:
                figures["bursts"].append(burst_k(args, mock, k))
        if args.short:
            figures["short"] = short_runs(args, mock)
        if args.unary:
            figures["unary"] = unary_runs(args, mock)
    finally:
        mock.stop()
        figures["load_at_end"] = loadavg()
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
