#!/usr/bin/env python3
"""How many worker processes for a deployment's slots: bursts of short streams, per setting.

For each ``--worker-processes`` value, one node with ``workers = K`` whose slots run in that
many processes (slots as threads, issue 23), and ``--rounds`` bursts of K two-chunk streams
through the Python client (``bench_scale.client_run``: K threads of a child process, each
stream opened at once): the TTFT p50 of each burst and the node's CPU per call by process role
(/proc, over all rounds). Two chunks a stream, so the figures are the control path's: the
request, the dispatch, the first token and its answer, the result and the terminal.

    python bench/bench_worker_processes.py --k 64 --worker-processes 2 4 8 16 64
    python bench/bench_worker_processes.py --k 256 --worker-processes 2 8 16 32

Compare settings within one run (the load average is printed); the machine is shared.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_scale  # noqa: E402
from bench_scale import Meter, Node, client_run, cpu_of, loadavg, summarize  # noqa: E402

from actors.testing.stream_mock import StreamMock  # noqa: E402


def one_setting(mock: StreamMock, k: int, processes: int, rounds: int) -> None:
    node = Node(mock.url, workers=k, http_threads=8, coalesce_ms=0.0, worker_processes=processes)
    try:
        roles = node.roles()
        client_run(node.port, k, 2, 60, "burst", 0, lambda: Meter(node, mock))   # warm: routes, connections
        node.settle()
        before = {pid: cpu_of(pid) for pid in roles}
        ttfts = []
        for _ in range(rounds):
            rows, _, _, _ = client_run(node.port, k, 2, 90, "burst", 0, lambda: Meter(node, mock))
            ttfts.append(summarize(rows, k, 2)["ttft_p50_ms"])
            node.settle()
        by_role: collections.Counter = collections.Counter()
        for pid, role in roles.items():
            by_role[role] += cpu_of(pid) - before[pid]
        per_call = {role: 1000 * cpu / (rounds * k) for role, cpu in by_role.items() if role != "http"}
        print(f"  {processes:4d} processes ({-(-k // processes)} slots each): ttft p50 "
              f"{', '.join(f'{t:.0f}' for t in ttfts)} ms; CPU per call "
              f"{', '.join(f'{r} {v:.1f}' for r, v in sorted(per_call.items(), key=lambda kv: -kv[1]))} ms "
              f"[load {loadavg()}]", flush=True)
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--worker-processes", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench_scale.CALLER_RT[0] = True
    mock = StreamMock(procs=2, drip_ms=50, realtime=True)
    print(f"K={args.k}, bursts of two-chunk streams through the Python client [load {loadavg()}]", flush=True)
    try:
        for processes in args.worker_processes:
            one_setting(mock, args.k, processes, args.rounds)
    finally:
        mock.stop()


if __name__ == "__main__":
    main()
