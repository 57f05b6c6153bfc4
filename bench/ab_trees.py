"""Two checkouts of this repository, A/B, on one machine: K-stream bursts through each node's front door.

The figures of one burst move by +-100 ms from run to run on a shared 2-core VM, more than most
changes do. This alternates the two trees node by node (a fresh node and mock each time, a
rest between), runs several bursts on each node, and prints every burst's figures, so that a
change is judged against its own baseline measured minutes apart:

    git worktree add /tmp/base HEAD~1
    python bench/ab_trees.py /tmp/base . --rounds 2 --bursts 3 --chunks 200

Per burst: the door's TTFT p50, the p99 of each stream's largest gap, and the node's CPU per
delivered chunk (utime+stime of every node process and the listener). Each tree runs its own
``bench/bench_scale.py`` (its node, its listener), in a child process with that tree first on
``PYTHONPATH``; the caller and the mock run SCHED_RR where allowed, as in bench_scale.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def child(spec: dict) -> None:
    """One node of one tree: a warm-up burst, then ``bursts`` measured ones; one JSON line."""
    tree = Path(spec["tree"])
    sys.path[:0] = [str(tree / "bench"), str(tree)]
    import actors
    import bench_scale as b

    assert Path(actors.__file__).resolve().is_relative_to(tree), f"{actors.__file__} is not {tree}'s"

    k, chunks = spec["k"], spec["chunks"]
    b.CALLER_RT[0] = True
    mock = b.StreamMock(procs=2, drip_ms=50, realtime=True)
    node = b.Node(mock.url, workers=k, http_threads=k + 8, coalesce_ms=20)
    try:
        roles = node.roles()
        b.aio_burst(node.url, "bench", k, 5, 60)
        out = []
        for _ in range(spec["bursts"]):
            time.sleep(spec["rest_s"])
            cpu0 = sum(b.cpu_of(pid) for pid in roles)
            rows = b.aio_burst(node.url, "bench", k, chunks, 60)
            cpu = sum(b.cpu_of(pid) for pid in roles) - cpu0
            s = b.summarize(rows, k, chunks)
            out.append({"completed": s["completed"], "ttft_p50_ms": s["ttft_p50_ms"], "gap_p99_ms": s["gap_p99_ms"],
                        "us_per_chunk": 1e6 * cpu / max(1, k * chunks)})
        print(json.dumps(out), flush=True)
    finally:
        node.stop()
        mock.stop()


def run_tree(tree: Path, spec: dict) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree)}   # the node's processes import the tree's actors too
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps({**spec, "tree": str(tree)})],
                          env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{tree}: the child failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="*", type=Path, help="two checkouts: A (the baseline) and B")
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--bursts", type=int, default=6, help="measured bursts per node")
    parser.add_argument("--rounds", type=int, default=2, help="nodes per tree, alternating A, B, A, B ...")
    parser.add_argument("--rest", type=float, default=10.0, help="seconds between nodes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    if len(args.trees) != 2:
        parser.error("give two trees: A B")
    spec = {"k": args.k, "chunks": args.chunks, "bursts": args.bursts, "rest_s": 2.0}
    results: dict[str, list[dict]] = {str(t): [] for t in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            time.sleep(args.rest)
            bursts = run_tree(tree.resolve(), spec)
            results[str(tree)].extend(bursts)
            print(f"{str(tree):20s} ttft p50 {[round(b['ttft_p50_ms']) for b in bursts]} ms, gap p99 "
                  f"{[round(b['gap_p99_ms']) for b in bursts]} ms, {[round(b['us_per_chunk']) for b in bursts]} "
                  f"us/chunk, completed {[b['completed'] for b in bursts]}", flush=True)
    for tree, bursts in results.items():
        med = {key: round(statistics.median(b[key] for b in bursts)) for key in ("ttft_p50_ms", "gap_p99_ms", "us_per_chunk")}
        print(f"{tree:20s} medians over {len(bursts)} bursts: {med}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
