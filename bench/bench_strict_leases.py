#!/usr/bin/env python3
"""Strict (leased) against approximate rate budgets, N = 3 and N = 6 nodes, the same offered load, one run.

For each N: N nodes on 127.0.0.1 (a leader and N - 1 members) serving two deployments that differ
only in ``limits.mode`` (the same rpm cap and window), and one mock provider in its own process
that records when each request arrived. Every node is offered an open loop of both at once, with
unequal demand across nodes (weights 1..3), twice the cap in total, for whole windows.

Measured, per mode:
- throughput: calls completed per second of flood (strict / approximate: target >= 0.8);
- latency p50 of the completed calls under the flood, and of sequential uncontended calls from a
  member to a deployment with no limits, an approximate and a strict one (a cap never reached):
  strict's added p50 against approximate's (target <= +1 ms);
- the cap, counted where the requests arrive (the mock's arrival times, per window): never above;
- each node's share of what was admitted against its demand-weighted fair share (target within 25 %);
- calls that arrived upstream after their caller's deadline (each message carries its deadline): 0.

Run: python bench/bench_strict_leases.py [--nodes 3 6] [--cap 60] [--window 10] [--windows 2] [--calls 150]
     [--parts latency flood] [--json out.json]     (about 4 minutes on a 2-core VM)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

from actors.client import GatewayClient  # noqa: E402
from actors.ops.procs import port_is_listening  # noqa: E402
from actors.ops.system import start_node  # noqa: E402
from actors.settings.loader import parse_config  # noqa: E402
from actors.testing.load import open_loop  # noqa: E402
from actors.testing.mock_provider import MockProcess  # noqa: E402
from actors.types import Completed, Failed  # noqa: E402

HI = [{"role": "user", "content": "hi"}]
MODES = ("approx", "strict")


def free_ports(n: int, start: int = 19900) -> list[int]:
    return [p for p in range(start, start + 600, 3) if not port_is_listening(p)][:n]


def deployments(mock_url: str, cap: int, window_s: float) -> list[dict]:
    base = {"provider": "openai_compatible", "upstream_model": "mock-gpt", "endpoint": mock_url + "/v1",
            "workers": 4, "queue_capacity": 4096}
    return [{**base, "name": "approx", "model": "approx", "limits": {"rpm": cap, "window_s": window_s}},
            {**base, "name": "strict", "model": "strict", "limits": {"rpm": cap, "window_s": window_s,
                                                                      "mode": "strict"}},
            {**base, "name": "none", "model": "none"},
            {**base, "name": "approx_open", "model": "approx_open", "limits": {"rpm": 10**7}},
            {**base, "name": "strict_open", "model": "strict_open", "limits": {"rpm": 10**7, "mode": "strict"}}]


def wait(condition, timeout_s: float, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise RuntimeError("timed out")


def start_cluster(n: int, mock_url: str, cap: int, window_s: float, log_dir: str):
    ports = free_ports(n)
    nodes, clients = [], []
    try:
        for i, port in enumerate(ports):
            config = parse_config({"node": {"admin_port": port, "name": f"n{i}", "log_level": "WARNING"},
                                   "deployments": deployments(mock_url, cap, window_s)}, "<bench_strict_leases>")
            nodes.append(start_node(config, name=f"n{i}", leader=None if i == 0 else f"127.0.0.1:{ports[0]}",
                                    console_log=False, log_file=f"{log_dir}/bench-leases-n{i}.log"))
            clients.append(GatewayClient(port, timeout_s=60))
        wait(lambda: len(clients[0].cluster_status(members_only=True).members) == n, 90)
    except BaseException:
        stop_cluster(nodes, clients)
        raise
    return nodes, clients


def stop_cluster(nodes, clients) -> None:
    for client in clients:
        client.close()
    for node in reversed(nodes):
        node.stop()


def sequential_p50(client, calls: int) -> dict:
    """Uncontended calls from a member, interleaved so the machine's load falls on every mode alike."""
    models = ("none", "approx_open", "strict_open")
    samples: dict[str, list[float]] = {m: [] for m in models}
    engine: dict[str, list[float]] = {m: [] for m in models}   # accepted to terminal, in the engine
    for model in models:
        for _ in range(10):
            client.complete(model, HI, max_tokens=1, timeout_s=30)
    for _ in range(calls):
        for model in models:
            t0 = time.perf_counter()
            done = client.complete(model, HI, max_tokens=1, timeout_s=30)
            samples[model].append(time.perf_counter() - t0)
            engine[model].append(done.latency_s)
    p50 = {m: statistics.median(v) * 1000 for m, v in samples.items()}
    # Paired: each strict call against the approximate one just before it, so the machine's
    # load drifting over the run (other work on a shared VM) falls on both alike.
    paired = statistics.median(s - a for s, a in zip(samples["strict_open"], samples["approx_open"])) * 1000
    return {"p50_ms": {m: round(v, 2) for m, v in p50.items()},
            "engine_p50_ms": {m: round(statistics.median(v) * 1000, 2) for m, v in engine.items()},
            "strict_minus_approximate_ms": round(p50["strict_open"] - p50["approx_open"], 2),
            "strict_minus_approximate_paired_median_ms": round(paired, 2)}


def flood(clients, weights, cap: int, window_s: float, windows: int, deadline_s: float) -> dict:
    """Both modes at once, each node offered ``weight`` parts of twice the cap, from a window boundary."""
    rate = 2 * cap / window_s / sum(weights)
    results = {m: [[] for _ in clients] for m in MODES}
    wait(lambda: time.time() % window_s < 0.05, window_s + 1, 0.005)
    first, started = math.floor(time.time() / window_s), time.monotonic()
    threads = [threading.Thread(target=open_loop, args=(client, mode, rate * w, windows * window_s,
                                                         results[mode][i], deadline_s),
                                kwargs={"prompt": lambda deadline, mode=mode, i=i: f"{mode} n{i} {deadline:.4f}"})
               for mode in MODES for i, (client, w) in enumerate(zip(clients, weights))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"results": results, "first": first, "seconds": time.monotonic() - started, "rate": rate}


def figures(run: dict, arrivals, weights, cap: int, window_s: float, windows: int) -> dict:
    first = run["first"]
    out = {}
    for mode in MODES:
        per_node = [sum(isinstance(r, Completed) for r in node) for node in run["results"][mode]]
        latencies = [r.latency_s for node in run["results"][mode] for r in node if isinstance(r, Completed)]
        errors: dict[str, int] = {}
        for node in run["results"][mode]:
            for r in node:
                if isinstance(r, Failed):
                    errors[type(r.error).__name__] = errors.get(type(r.error).__name__, 0) + 1
        mine = [(t, p.split()) for t, p in arrivals if p.startswith(mode + " ")]
        per_window = {w: 0 for w in range(first, first + windows)}
        late: list[float] = []
        for t, (_, _, deadline) in mine:
            w = int(t // window_s)
            per_window[w] = per_window.get(w, 0) + 1
            if t > float(deadline):
                late.append(round(1000 * (t - float(deadline)), 1))
        total = sum(per_node)
        fair = [w / sum(weights) for w in weights]
        deviation = [round(100 * ((n / total) / f - 1), 1) if total else None for n, f in zip(per_node, fair)]
        out[mode] = {"completed": total, "throughput_per_s": round(total / (windows * window_s), 2),
                     "completed_per_node": per_node, "share_vs_fair_pct": deviation,
                     "max_share_deviation_pct": max(abs(d) for d in deviation if d is not None) if total else None,
                     "p50_latency_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
                     "upstream_per_window": [per_window[w] for w in sorted(per_window)],
                     "cap_exceeded": any(n > cap for n in per_window.values()),
                     "arrived_after_deadline": len(late), "arrived_late_by_ms": sorted(late),
                     "refused": errors}
    out["strict_vs_approximate_throughput"] = round(out["strict"]["completed"] / max(1, out["approx"]["completed"]), 3)
    return out


def measure(n: int, args, log_dir: str) -> dict:
    weights = [1 + (i % 3) for i in range(n)]   # unequal demand: 1, 2, 3, 1, 2, 3
    mock = MockProcess()
    try:
        nodes, clients = start_cluster(n, mock.url, args.cap, args.window, log_dir)
        try:
            for client in clients:   # every engine a lease client; a new strict leader learns for 3 s first
                for mode in MODES:
                    client.complete(mode, HI, max_tokens=1, timeout_s=60)
            out: dict = {"nodes": n}
            if "latency" in args.parts:
                out["sequential"] = sequential_p50(clients[1], args.calls)
            if "flood" in args.parts:
                run = flood(clients, weights, args.cap, args.window, args.windows, args.deadline)
                time.sleep(1.0)   # the last calls land
                out.update(figures(run, mock.arrivals(), weights, args.cap, args.window, args.windows))
                out.update(weights=weights, cap=args.cap, window_s=args.window, windows=args.windows,
                           offered_per_s=round(run["rate"] * sum(weights), 2), deadline_s=args.deadline)
            return out
        finally:
            stop_cluster(nodes, clients)
    finally:
        mock.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--cap", type=int, default=60, help="requests per window, cluster-wide, per mode")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=1.0, help="each flood request's deadline, seconds")
    parser.add_argument("--calls", type=int, default=150, help="sequential calls per mode for the latency p50")
    parser.add_argument("--parts", nargs="+", default=["latency", "flood"], choices=["latency", "flood"])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    log_dir = "/tmp"
    report = {}
    for n in args.nodes:
        report[f"N={n}"] = measure(n, args, log_dir)
        print(f"N={n}:", json.dumps(report[f"N={n}"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
