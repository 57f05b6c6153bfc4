#!/usr/bin/env python3
"""The whole path through one gateway node, against the same calls made directly, in one run.

Measures, against the built-in mock provider (its own process, TCP_NODELAY, loopback):
- non-streaming requests/s and latency p50/p99 with C client threads, through the Python
  client (caller link -> engine -> worker -> HTTP -> engine -> caller) and directly with `requests`;
- sequential (one thread) latency, whose difference is the gateway's added latency;
- time to first token of a stream, through the gateway and directly.
Rounds alternate (direct, gateway, direct, ...) and the median round is reported, so
machine noise hits both sides alike. Run: python bench/bench_gateway.py [--quick]
(``bench_scale.py --unary`` measures the same through the HTTP front door too.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.client import GatewayClient  # noqa: E402
from actors.settings.loader import parse_config  # noqa: E402
from actors.testing.mock_provider import MockProcess  # noqa: E402
from actors.ops.procs import port_is_listening  # noqa: E402
from actors.providers.base import StreamAccumulator  # noqa: E402
from actors.providers import make_runner  # noqa: E402
from actors.types import InferenceRequest  # noqa: E402
from actors.ops.system import start_node  # noqa: E402

MESSAGES = [{"role": "user", "content": "Benchmark prompt with a few words in it"}]


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_threads(threads: int, per_thread: int, call) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()

    def worker():
        mine = []
        for _ in range(per_thread):
            t0 = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(latencies) / (time.perf_counter() - start), latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400, help="per round, all threads together")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 120, 3
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    mock = MockProcess()
    node = client = None
    try:
        port = next(p for p in range(19700, 19800) if not port_is_listening(p))
        config = parse_config({"node": {"admin_port": port, "name": "bench", "log_level": "WARNING"},
                               "deployments": [{"name": "bench", "model": "bench", "provider": "openai_compatible",
                                                "upstream_model": "mock-gpt", "endpoint": mock.url + "/v1",
                                                "workers": args.workers, "queue_capacity": 4096,
                                                "limits": {"rpm": 10_000_000, "tpm": 10_000_000_000}}]})
        node = start_node(config, console_log=False, log_file=f"/tmp/atomr-bench-{port}.log")
        client = GatewayClient(port, timeout_s=60)
        figures = measure(args, config, client)
    finally:
        if client is not None:
            client.close()
        if node is not None:
            node.stop()
        mock.stop()
    report(figures, args)


def measure(args: argparse.Namespace, config: Any, client: GatewayClient) -> dict[str, Any]:
    runner = make_runner(config.deployments[0])
    local = threading.local()

    def direct(stream=False, words=8):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        req = InferenceRequest(model="bench", messages=MESSAGES, params={"max_tokens": words}, stream=stream)
        http = runner.build_request(req, None)
        resp = session.post(http.url, data=http.body, headers=http.headers, stream=stream, timeout=30)
        if not stream:
            acc = StreamAccumulator()
            acc.add(runner.parse_response(resp.content))
            return acc
        return resp

    def via_gateway():
        return client.complete("bench", MESSAGES, max_tokens=8)

    paths = (("direct", direct), ("gateway", via_gateway))
    for _ in range(50):  # warm every path: connections, imports, worker processes
        for _, call in paths:
            call()
    per_thread = max(1, args.requests // args.threads)
    rows = {name: [] for name, _ in paths}
    for _ in range(args.rounds):
        for name, call in paths:
            rate, lat = run_threads(args.threads, per_thread, call)
            rows[name].append((rate, pct(lat, 0.5), pct(lat, 0.99)))
    seq = {name: [] for name, _ in paths}
    for _ in range(args.rounds):
        for name, call in paths:
            _, lat = run_threads(1, 100 if not args.quick else 40, call)
            seq[name].append((pct(lat, 0.5), pct(lat, 0.99)))
    ttft = {"direct": [], "gateway": []}
    for _ in range(args.rounds * 10):
        t0 = time.perf_counter()
        resp = direct(stream=True, words=20)
        decoder = runner.stream_decoder()
        for data in resp.iter_content(chunk_size=None):
            if any(d.text for d in decoder.feed(data)):
                ttft["direct"].append(time.perf_counter() - t0)
                break
        resp.close()
        t0 = time.perf_counter()
        stream = client.stream("bench", MESSAGES, max_tokens=20)
        for _chunk in stream:
            ttft["gateway"].append(time.perf_counter() - t0)
            break
        for _chunk in stream:  # drain the rest so the next call starts clean
            pass

    def med(rows, i):
        return statistics.median(r[i] for r in rows)

    figures = {"threads": args.threads, "workers": args.workers, "rounds": args.rounds, "paths": {}}
    for name in rows:
        figures["paths"][name] = {
            "rps": med(rows[name], 0), "p50_ms": med(rows[name], 1) * 1000, "p99_ms": med(rows[name], 2) * 1000,
            "seq_p50_ms": med(seq[name], 0) * 1000, "seq_p99_ms": med(seq[name], 1) * 1000}
    paths = figures["paths"]
    figures["added_p50_ms"] = paths["gateway"]["seq_p50_ms"] - paths["direct"]["seq_p50_ms"]
    figures["ttft_direct_p50_ms"] = statistics.median(ttft["direct"]) * 1000
    figures["ttft_gateway_p50_ms"] = statistics.median(ttft["gateway"]) * 1000
    figures["ttft_overhead_ms"] = figures["ttft_gateway_p50_ms"] - figures["ttft_direct_p50_ms"]
    return figures


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    paths = figures["paths"]
    print(f"non-streaming, median of {args.rounds} rounds; {args.threads} client threads / one thread; "
          f"{args.workers} workers")
    print(f"  {'path':12s} {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s}   {'1-thread p50':>12s} {'p99':>7s}")
    for name, p in paths.items():
        print(f"  {name:12s} {p['rps']:7.0f} {p['p50_ms']:8.2f} {p['p99_ms']:8.2f}   {p['seq_p50_ms']:12.2f} "
              f"{p['seq_p99_ms']:7.2f}")
    print(f"added latency p50 (one thread): gateway {figures['added_p50_ms']:+.2f} ms")
    print(f"time to first token p50: direct {figures['ttft_direct_p50_ms']:.2f} ms, gateway "
          f"{figures['ttft_gateway_p50_ms']:.2f} ms ({figures['ttft_overhead_ms']:+.2f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
