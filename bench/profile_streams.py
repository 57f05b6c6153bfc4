#!/usr/bin/env python3
"""Where a node's CPU goes under K concurrent streams: CPU per process role, and py-spy.

Starts the mock (25 ms between tokens) and one node (workers = K, coalesce_ms 0), drives
K client threads streaming back to back, and prints each role's share of the node's CPU
(admin, logger, engine, workers, others, from /proc and the process titles). With
``--py-spy DIR`` it also records a flame profile (``--format raw``, folded stacks) of the
engine, one worker and the admin while the load runs, and prints their top frames.

    python bench/profile_streams.py --k 64 --seconds 10 [--py-spy /tmp/prof]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_streams import Recorder, cpu_seconds, drive, free_port, make_config, node_stream  # noqa: E402

from actors.client import GatewayClient  # noqa: E402
from actors.ops.procs import admin_process, parent_pid, pids_in_group  # noqa: E402
from actors.ops.system import start_node  # noqa: E402
from actors.testing.mock_provider import MockProcess  # noqa: E402


def roles_of(pids: list[int], admin_pid: int) -> dict[int, str]:
    """admin (holds the admin port), engine (the parent of the workers), workers, other actors."""
    parents = {pid: parent_pid(pid) for pid in pids}
    children = collections.Counter(parents.values())
    engine = children.most_common(1)[0][0]
    out = {}
    for pid in pids:
        out[pid] = ("admin" if pid == admin_pid else "engine" if pid == engine else
                    "worker" if parents[pid] == engine else "other actors")
    return out


def per_pid_cpu(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds([pid]) for pid in pids}


def fold_top(path: Path, n: int = 25) -> list[tuple[int, str]]:
    """Self time and inclusive time per function from py-spy's raw (folded) output."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = stack.split(";")
        own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    print(f"  {path.name}: {total} samples; top self time:")
    for frame, c in own.most_common(n):
        print(f"    {100 * c / total:5.1f}%  {frame[:150]}")
    print("  top inclusive:")
    for frame, c in incl.most_common(n + 10):
        print(f"    {100 * c / total:5.1f}%  {frame[:150]}")
    return own.most_common(n)


def install_cprofile(folder: str) -> None:
    """Profile the main thread's CPU (thread_time) of every worker and engine the node forks.

    The admin is forked from this process, and the actors from the admin, so patching the
    classes here reaches them. Each process writes ``<role>-<pid>.pstats`` every 2 s."""
    import cProfile

    from actors.runtime.engine import RemoteEngineCoreActor
    from actors.runtime.worker import RemoteWorkerActor

    Path(folder).mkdir(parents=True, exist_ok=True)

    def wrap(cls, role: str) -> None:
        original = cls.receiveMessage
        state: dict = {}

        def receiveMessage(self, msg, sender):
            # Enabled from the first message on, so Thespian's transport loop (sends, acks,
            # selects) between handlers is measured too, not just the handlers.
            prof = state.get("prof")
            if prof is None or state.get("pid") != os.getpid():
                prof = state["prof"] = cProfile.Profile(time.thread_time)
                state["pid"], state["dumped"] = os.getpid(), time.monotonic()
                prof.enable()
            if time.monotonic() - state["dumped"] > 2.0:
                prof.disable()
                state["dumped"] = time.monotonic()
                prof.dump_stats(f"{folder}/{role}-{os.getpid()}.pstats")
                prof.enable()
            return original(self, msg, sender)
        cls.receiveMessage = receiveMessage

    wrap(RemoteWorkerActor, "worker")
    wrap(RemoteEngineCoreActor, "engine")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--py-spy", dest="pyspy", help="record py-spy profiles into this folder")
    parser.add_argument("--cprofile", help="cProfile (CPU time) every worker's and engine's handlers into this folder")
    args = parser.parse_args()
    if args.cprofile:
        install_cprofile(args.cprofile)
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    mock = MockProcess(words_per_second=40)
    port = free_port()
    node = start_node(make_config(port, mock.url, workers=args.k), console_log=False,
                      log_file=f"/tmp/atomr-profile-{port}.log", deploy_timeout_s=max(60.0, args.k * 0.5))
    client = GatewayClient(port, timeout_s=120)
    spies = []
    try:
        drive(args.k, 1.0, lambda r: node_stream(client, args.chunks, r), Recorder())
        pids = pids_in_group(node.pgid)
        roles = roles_of(pids, admin_process(port)[0])
        if args.pyspy:
            out = Path(args.pyspy)
            out.mkdir(parents=True, exist_ok=True)
            # The busiest process of each role over a second of load.
            busy0 = per_pid_cpu(pids)
            drive(args.k, 1.0, lambda r: node_stream(client, args.chunks, r), Recorder())
            busy1 = per_pid_cpu(pids)
            picks = {}
            for pid in sorted(pids, key=lambda p: busy0[p] - busy1[p]):
                picks.setdefault(roles[pid], pid)
            print("open fds of the busiest worker:", len(os.listdir(f"/proc/{picks['worker']}/fd")))
            for r, pid in picks.items():
                if r in ("engine", "worker", "admin"):
                    spies.append((r, out / f"{r}.txt", subprocess.Popen(
                        ["py-spy", "record", "--pid", str(pid), "--duration", str(int(args.seconds) - 1),
                         "--rate", "200", "--format", "raw", "--output", str(out / f"{r}.txt"), "--nonblocking"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        before, t0 = per_pid_cpu(pids), time.monotonic()
        rec = Recorder()
        wall = drive(args.k, args.seconds, lambda r: node_stream(client, args.chunks, r), rec)
        after = per_pid_cpu(pids)
        by_role: collections.Counter = collections.Counter()
        for pid in pids:
            by_role[roles[pid]] += after[pid] - before[pid]
        total = sum(by_role.values())
        print(f"K={args.k}: {rec.done} streams in {wall:.1f} s ({rec.done / wall:.1f}/s), node CPU "
              f"{total:.2f} s = {total / wall:.2f} cores, {1000 * total / max(1, rec.done):.1f} ms per stream, "
              f"{1e6 * total / max(1, rec.done * args.chunks):.0f} us per chunk")
        for r, cpu in by_role.most_common():
            n = sum(1 for v in roles.values() if v == r)
            print(f"  {r:10s} x{n:<3d} {cpu:6.2f} s  {100 * cpu / max(total, 1e-9):5.1f}%  "
                  f"{1000 * cpu / max(1, rec.done):6.2f} ms/stream")
        for r, path, proc in spies:
            proc.wait(30)
            if path.exists():
                fold_top(path)
            else:
                print(f"  py-spy on the {r}: {proc.stderr.read().decode()[:300]}")
    finally:
        client.close()
        node.stop()
        mock.stop()


if __name__ == "__main__":
    main()
