#!/usr/bin/env python3
"""What the ledger and spend budgets cost per call: two nodes on one mock provider, in one run.

- plain: no ledger, no budgets;
- spend: a ledger (SQLite, WAL, batched) and three budgets that every call is checked and
  settled against (its key, its team, its deployment), with their GCounter deltas to the hub.
Rounds alternate between the two and the median round is reported, so machine noise hits both
alike. Run: python bench/bench_spend.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
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
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 160, 3
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


if __name__ == "__main__":
    main()
