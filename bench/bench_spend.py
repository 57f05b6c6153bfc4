#!/usr/bin/env python3
"""What the ledger and spend budgets cost per call: two nodes on one mock provider, in one run.

- plain: no ledger, no budgets;
- spend: a ledger (SQLite, WAL, batched) and three budgets that every call is checked and
  settled against (its key, its team, its deployment), with their GCounter deltas to the hub.
Rounds alternate between the two and the median round is reported, so machine noise hits both
alike. Run: python bench/bench_spend.py [--quick]

``--cluster N``: strict (leased) against approximate spend budgets on N nodes (a leader and N - 1
members) in one run. Every node serves one deployment; a team budget of each mode, large enough
never to bind (the cost of admission is measured, not the cap: tests/cluster/test_spend_cluster.py
checks the cap), and a team with no budget as the baseline. Throughput: every node's threads at
once, rounds alternating between the teams, median round. Added latency: sequential calls from a
member, the three teams interleaved, p50 each and the paired median of strict minus approximate.
Run: python bench/bench_spend.py --cluster 3 [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_gateway import pct, run_threads  # noqa: E402

from actors.client import GatewayClient  # noqa: E402
from actors.ops.procs import port_is_listening  # noqa: E402
from actors.ops.system import start_node  # noqa: E402
from actors.settings.loader import parse_config  # noqa: E402
from actors.testing.mock_provider import MockProcess  # noqa: E402

MESSAGES = [{"role": "user", "content": "Benchmark prompt with a few words in it"}]
META = {"http_key": "bench-key", "http_team": "bench-team"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("ledger", "budgets"), help="measure one of the two alone")
    parser.add_argument("--budgets", type=int, default=3, help="how many of the three budgets (key, team, deployment)")
    parser.add_argument("--cluster", type=int, default=0, metavar="N",
                        help="strict against approximate spend budgets on N nodes instead")
    parser.add_argument("--json", help="write the --cluster figures here too")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 160, 3
    if args.cluster:
        return cluster(args)
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    mock = MockProcess()
    ledger = os.path.join(tempfile.mkdtemp(), "spend.db")
    ports = [p for p in range(19800, 19900, 3) if not port_is_listening(p)][:2]
    nodes, clients = [], {}
    try:
        for name, port in zip(("plain", "spend"), ports):
            data = {"node": {"admin_port": port, "name": name, "log_level": "WARNING"},
                    "deployments": [{"name": "bench", "model": "bench", "provider": "openai",
                                     "upstream_model": "mock-gpt", "endpoint": mock.url + "/v1", "workers": 4,
                                     "queue_capacity": 4096}]}
            if name == "spend" and args.only != "budgets":
                data["node"]["ledger"] = ledger
            if name == "spend" and args.only != "ledger":
                data["budgets"] = [{"key": "bench-key", "usd": 1000, "period": "1d"},
                                   {"team": "bench-team", "usd": 1000, "period": "1d"},
                                   {"deployment": "bench", "usd": 1000, "period": "30d"}][-args.budgets:]
            nodes.append(start_node(parse_config(data, name), console_log=False,
                                    log_file=f"/tmp/atomr-bench-spend-{port}.log"))
            clients[name] = GatewayClient(port, timeout_s=60)
        calls = {name: (lambda c=c: c.complete("bench", MESSAGES, max_tokens=8, metadata=META))
                 for name, c in clients.items()}
        for _ in range(50):
            for call in calls.values():
                call()
        rows = {name: [] for name in calls}
        seq = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                rate, _ = run_threads(args.threads, max(1, args.requests // args.threads), call)
                rows[name].append(rate)
                _, lat = run_threads(1, args.requests // 4, call)
                seq[name].append(pct(lat, 0.5))
        written = clients["spend"].status().spend["ledger"] or {"written": 0, "dropped": 0, "state": "off"}
    finally:
        for c in clients.values():
            c.close()
        for node in nodes:
            node.stop(drain_timeout_s=5)
        mock.stop()
    plain_rate, spend_rate = statistics.median(rows["plain"]), statistics.median(rows["spend"])
    plain_p50, spend_p50 = statistics.median(seq["plain"]), statistics.median(seq["spend"])
    print(f"{args.threads} threads: plain {plain_rate:.0f} req/s, spend {spend_rate:.0f} req/s "
          f"({spend_rate / plain_rate * 100:.0f} %)")
    print(f"one thread p50: plain {plain_p50 * 1000:.2f} ms, spend {spend_p50 * 1000:.2f} ms "
          f"({(spend_p50 - plain_p50) * 1000:+.2f} ms)")
    print(f"ledger: {written['written']} rows written, {written['dropped']} lost, state {written['state']}")


# -- strict against approximate spend budgets on N nodes ----------------------------------------

TEAMS = ("none", "approx", "strict")


def cluster(args: argparse.Namespace) -> None:
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    mock = MockProcess()
    ports = [p for p in range(19800, 20400, 3) if not port_is_listening(p)][:args.cluster]
    dep = {"name": "bench", "model": "bench", "provider": "openai_compatible", "upstream_model": "mock-gpt",
           "endpoint": mock.url + "/v1", "workers": 4, "queue_capacity": 4096}
    budgets = [{"team": "approx", "usd": 1000, "period": "2d"},
               {"team": "strict", "usd": 1000, "period": "2d", "mode": "strict"}]
    nodes, clients = [], []
    try:
        for i, port in enumerate(ports):
            config = parse_config({"node": {"admin_port": port, "name": f"n{i}", "log_level": "WARNING"},
                                   "deployments": [dep], "budgets": budgets}, "<bench_spend --cluster>")
            nodes.append(start_node(config, name=f"n{i}", leader=None if i == 0 else f"127.0.0.1:{ports[0]}",
                                    console_log=False, log_file=f"/tmp/atomr-bench-spend-n{i}.log"))
            clients.append(GatewayClient(port, timeout_s=60))
        deadline = time.monotonic() + 90
        while len(clients[0].cluster_status(members_only=True).members) < len(clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not form in 90 s")
            time.sleep(0.1)

        def call(client: GatewayClient, team: str) -> None:
            client.complete("bench", MESSAGES, max_tokens=8, timeout_s=30,
                            metadata={"http_key": "bench-key", "http_team": team})

        for client in clients:     # every engine a lease client (a new leader first learns for a lease length)
            for team in TEAMS:
                for _ in range(20):
                    call(client, team)
        per_thread = max(1, args.requests // args.threads)
        rates: dict[str, list[float]] = {t: [] for t in TEAMS}
        for _ in range(args.rounds):
            for team in TEAMS:
                rates[team].append(everywhere(clients, args.threads, per_thread, lambda c, t=team: call(c, t)))
        seq: dict[str, list[float]] = {t: [] for t in TEAMS}
        member = clients[1 % len(clients)]
        for _ in range(args.requests // 2):
            for team in TEAMS:
                t0 = time.perf_counter()
                call(member, team)
                seq[team].append(time.perf_counter() - t0)
    finally:
        for client in clients:
            client.close()
        for node in reversed(nodes):
            node.stop(drain_timeout_s=5)
        mock.stop()
    rate = {t: statistics.median(v) for t, v in rates.items()}
    p50 = {t: statistics.median(v) * 1000 for t, v in seq.items()}
    paired = statistics.median(s - a for s, a in zip(seq["strict"], seq["approx"])) * 1000
    out = {"nodes": args.cluster, "threads_per_node": args.threads, "rounds": args.rounds,
           "throughput_req_s": {t: round(v) for t, v in rate.items()},
           "strict_over_approximate": round(rate["strict"] / rate["approx"], 3),
           "p50_ms": {t: round(v, 2) for t, v in p50.items()},
           "strict_minus_approximate_paired_median_ms": round(paired, 2)}
    print(f"N = {args.cluster}, {args.threads} threads a node: throughput none {rate['none']:.0f}, approximate "
          f"{rate['approx']:.0f}, strict {rate['strict']:.0f} req/s (strict / approximate "
          f"{out['strict_over_approximate']:.2f})")
    print(f"sequential p50 from a member: none {p50['none']:.2f}, approximate {p50['approx']:.2f}, strict "
          f"{p50['strict']:.2f} ms (strict - approximate, paired median: {paired:+.2f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def everywhere(clients: list[GatewayClient], threads: int, per_thread: int, call) -> float:
    """Calls completed per second with ``threads`` closed-loop threads on every node at once."""
    done = [0]
    lock = threading.Lock()

    def worker(client: GatewayClient) -> None:
        for _ in range(per_thread):
            call(client)
        with lock:
            done[0] += per_thread

    pool = [threading.Thread(target=worker, args=(c,)) for c in clients for _ in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return done[0] / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
