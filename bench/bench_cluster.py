#!/usr/bin/env python3
"""Cluster measurements: limiter accuracy, the cost of admission, and failure detection.

Three nodes (a leader and two members) on 127.0.0.1 with the mock provider in its own process.

- accuracy: every node is offered 10x its third of an RPM budget, open loop, for whole
  windows; the merged GCounters give what the cluster admitted per window, against the
  budget and against the analytical overshoot of a plain GCounter limiter,
  (nodes - 1) x offered rate x sync interval.
- admission: one client, sequential non-streaming calls to three deployments that differ
  only in their limits: none, approximate, strict (a round trip to the leader per call).
- failures: a member SIGKILLed -> dropped by the leader; the leader SIGKILLed -> noticed by a
  member; the leader restarted on its port -> the member back in its membership.

Run: python bench/bench_cluster.py [--window 60] [--windows 2] [--budget 300] [--quick]
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

from actors.client import GatewayClient
from actors.testing.load import open_loop  # noqa: E402
from actors.settings.loader import parse_config  # noqa: E402
from actors.errors import LeaderUnavailable  # noqa: E402
from actors.types import Completed, Failed
from actors.runtime.protocol import LimiterDelta, LimiterStateRequest  # noqa: E402
from actors.testing.mock_provider import MockProcess  # noqa: E402
from actors.ops.procs import port_is_listening  # noqa: E402
from actors.ops.system import start_node  # noqa: E402

HI = [{"role": "user", "content": "hi"}]


def free_ports(n: int, start: int = 19600) -> list[int]:
    ports = [p for p in range(start, start + 300, 3) if not port_is_listening(p)]
    return ports[:n]


def deployments(mock_url: str, budget: int, window_s: float) -> list[dict]:
    base = {"provider": "openai", "upstream_model": "mock-gpt", "endpoint": mock_url + "/v1", "workers": 2,
            "queue_capacity": 4096}
    return [
        {**base, "name": "approx", "model": "approx", "limits": {"rpm": budget, "window_s": window_s}},
        {**base, "name": "none", "model": "none"},
        {**base, "name": "cheap", "model": "cheap", "limits": {"rpm": 10**7}},
        {**base, "name": "strict", "model": "strict", "limits": {"rpm": 10**7, "mode": "strict"}},
    ]


def start_cluster(mock_url: str, budget: int, window_s: float, cluster: dict, log_dir: str):
    ports = free_ports(3)
    nodes = []
    for i, port in enumerate(ports):
        config = parse_config({"node": {"admin_port": port, "name": f"n{i}", "log_level": "WARNING"},
                               "cluster": cluster, "deployments": deployments(mock_url, budget, window_s)})
        nodes.append(start_node(config, name=f"n{i}", leader=None if i == 0 else f"127.0.0.1:{ports[0]}",
                                console_log=False, log_file=f"{log_dir}/bench-cluster-n{i}.log"))
    clients = [GatewayClient(node.admin_port, timeout_s=60) for node in nodes]
    wait(lambda: len(clients[0].cluster_status(members_only=True).members) == 3, 30)
    return nodes, clients


def wait(condition, timeout_s: float, interval_s: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(interval_s)
    raise RuntimeError("timed out")


def accuracy(clients, budget: int, window_s: float, windows: int, sync_s: float) -> dict:
    hub = next(m.limiter for m in clients[0].cluster_status(members_only=True).members if m.node == "n0")
    counts: dict[int, int] = {}
    stop = threading.Event()

    def monitor():
        endpoint = clients[0]._endpoint()
        while not stop.wait(0.2):
            reply = endpoint.ask(hub, LimiterStateRequest("approx"), 5)
            if isinstance(reply, LimiterDelta):
                for w, named in reply.delta.items():
                    counts[int(w)] = (sum(named.get("requests", {}).values())
                                      - sum(named.get("requests_refunded", {}).values()))

    wait(lambda: time.time() % window_s < 0.05, window_s + 1, 0.005)
    first = math.floor(time.time() / window_s)
    per_node_rate = 10 * budget / window_s / len(clients)
    results: list = []
    watcher = threading.Thread(target=monitor)
    watcher.start()
    threads = [threading.Thread(target=open_loop, args=(c, "approx", per_node_rate, windows * window_s, results, 1.0))
               for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1.0)  # the last deltas land; the monitor samples twice more
    stop.set()
    watcher.join()
    admitted = [counts.get(w, 0) for w in range(first, first + windows)]
    naive_bound = (len(clients) - 1) * per_node_rate * sync_s
    return {"budget": budget, "window_s": window_s, "offered_per_window": 10 * budget, "admitted": admitted,
            "overshoot_pct": [round(100 * (a - budget) / budget, 2) for a in admitted],
            "naive_gcounter_bound_requests": round(naive_bound, 2),
            "completed": sum(isinstance(r, Completed) for r in results),
            "refused": sum(isinstance(r, Failed) for r in results)}


def admission(clients, rounds: int, calls: int) -> dict:
    member = clients[1]  # strict admission from a member is a round trip to the leader
    samples = {"none": [], "cheap": [], "strict": []}
    for model in samples:
        for _ in range(20):
            member.complete(model, HI, max_tokens=1)
    for _ in range(rounds):
        for model in samples:
            for _ in range(calls):
                t0 = time.perf_counter()
                member.complete(model, HI, max_tokens=1)
                samples[model].append(time.perf_counter() - t0)
    p50 = {m: statistics.median(v) * 1000 for m, v in samples.items()}
    return {"p50_ms": {m: round(v, 3) for m, v in p50.items()},
            "approximate_cost_ms": round(p50["cheap"] - p50["none"], 3),
            "strict_cost_ms": round(p50["strict"] - p50["none"], 3)}


def failures(nodes, clients, budget, window_s, cluster, mock_url, log_dir) -> dict:
    leader_client = clients[0]
    nodes[2].kill()
    member_dropped = wait(lambda: len(leader_client.cluster_status(members_only=True).members) == 2, 60, 0.02)
    port = nodes[0].admin_port
    nodes[0].kill()

    def member_refuses_strict_admission():
        try:
            clients[1].complete("strict", HI, max_tokens=1, timeout_s=10)
        except LeaderUnavailable:
            return True
        return False
    leader_noticed = wait(member_refuses_strict_admission, 60, 0.02)
    config = parse_config({"node": {"admin_port": port, "name": "n0", "log_level": "WARNING"},
                           "cluster": cluster, "deployments": deployments(mock_url, budget, window_s)})
    restarted = time.monotonic()
    nodes[0] = start_node(config, name="n0", console_log=False, log_file=f"{log_dir}/bench-cluster-n0b.log")
    clients[0] = GatewayClient(port, timeout_s=60)
    wait(lambda: len(clients[0].cluster_status(members_only=True).members) == 2, 60, 0.02)
    rejoined = time.monotonic() - restarted
    clients[2].close()  # its node is gone
    return {"member_sigkill_to_dropped_s": round(member_dropped, 2),
            "leader_sigkill_to_noticed_by_member_s": round(leader_noticed, 2),
            "leader_restart_to_member_rejoined_s": round(rejoined, 2),
            "heartbeat_s": cluster.get("heartbeat_s", 1.0), "failure_timeout_s": cluster.get("failure_timeout_s", 5.0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=300, help="requests per window, cluster-wide")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="10 s windows, fewer calls")
    parser.add_argument("--parts", nargs="+", default=["admission", "accuracy", "failures"],
                        choices=["admission", "accuracy", "failures"], help="which measurements to run")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.window, args.budget, args.calls = 10.0, 100, 40
    cluster = {}  # the defaults: sync 50 ms, heartbeat 1 s, failure timeout 5 s, re-registration 3 s
    sync_s = 0.05
    log_dir = "/tmp"
    mock = MockProcess()
    nodes, clients = start_cluster(mock.url, args.budget, args.window, cluster, log_dir)
    figures = {}
    try:
        if "admission" in args.parts:
            figures["admission"] = admission(clients, args.rounds, args.calls)
            print("admission, sequential calls from a member, p50:", figures["admission"])
        if "accuracy" in args.parts:
            figures["accuracy"] = accuracy(clients, args.budget, args.window, args.windows, sync_s)
            print("approximate limiter, 3 nodes at 10x:", figures["accuracy"])
        if "failures" in args.parts:
            figures["failures"] = failures(nodes, clients, args.budget, args.window, cluster, mock.url, log_dir)
            print("failure detection:", figures["failures"])
    finally:
        for client in clients:
            client.close()
        for node in reversed(nodes):
            node.stop()
        mock.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
