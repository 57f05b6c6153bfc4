#!/usr/bin/env python3
"""Where a node's CPU goes per chunk and per call under K concurrent streams, by process and thread.

One node (workers = K) and its HTTP listener on ``actors.testing.stream_mock``; K streams
opened at once through the front door (``--path door``, bench/aio_sse.py) or the Python
client (``--path client``, K threads in a child process). Three measurements:

1. **Per call and per chunk** (``--fit``): two bursts of K streams, of ``--chunks`` and of 2
   chunks; the node's CPU per process role is solved for ``cpu = a * streams + b * chunks``:
   ``a`` is what a call costs whatever it streams (request, dispatch, first token, result,
   terminal, the HTTP exchange), ``b`` what each relayed chunk costs.
2. **By thread** (/proc/<pid>/task/<tid>/stat, over a steady window mid-burst): the HTTP
   process's threads (waitress's I/O loop, its worker threads, the stream receiver, the
   disconnect watcher), each worker's actor thread against its reader threads, the engine.
   Thread names come from ``py-spy dump``.
3. **By function** (``--py-spy DIR``, a later window of the same burst): py-spy ``--gil``
   samples of the HTTP process, the busiest worker and the engine, folded per thread group.

    python bench/profile_scale.py --k 64 --path door --fit --py-spy /tmp/prof
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_scale
from bench_scale import Meter, Node, aio_burst, client_run, loadavg, summarize

from actors.testing.stream_mock import StreamMock

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, ValueError, IndexError):
            pass
    return out


def thread_names(pid: int) -> dict[int, str]:
    """tid -> Python thread name, from py-spy dump."""
    try:
        text = subprocess.run(["py-spy", "dump", "--pid", str(pid), "--nonblocking"], capture_output=True,
                              text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', text, re.MULTILINE)}


def group_of(role: str, name: str, is_main: bool) -> str:
    if is_main:
        return "main (waitress I/O loop)" if role == "http" else "main (actor loop)"
    if name.startswith("reader-"):
        return "reader threads"
    if role == "http" and re.match(r"waitress-\d+", name):
        return "waitress worker threads"
    if name.startswith("atomr-stream-receiver"):
        return "stream receiver"
    if name.startswith("http-disconnect-watcher"):
        return "disconnect watcher"
    return name or "unnamed"


def fold(path: Path, n: int = 18) -> None:
    """Self and inclusive samples per function, per thread group, from py-spy's raw output."""
    groups: dict[str, tuple[collections.Counter, collections.Counter, list[int]]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        head = frames[0]
        if re.match(r'thread \((0x[0-9a-fA-F]+)\)', head):
            frames = frames[1:]   # py-spy --threads puts the thread first; grouped by what it runs instead
        group = "waitress worker" if any("handler_thread" in f for f in frames) else \
            "waitress I/O loop" if any("asyncore" in f or "wasyncore" in f for f in frames[:6]) else \
            "reader" if any("Attempt.run" in f or "run (actors/runtime/upstream.py" in f for f in frames) else \
            "stream receiver" if any("stream_receiver" in f and "_run" in f for f in frames) else \
            "other"
        own, incl, total = groups.setdefault(group, (collections.Counter(), collections.Counter(), [0]))
        c = int(count)
        total[0] += c
        own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    grand = sum(t[0] for _, _, t in groups.values()) or 1
    print(f"  {path.name}: {grand} samples (GIL held)")
    for group, (own, incl, total) in sorted(groups.items(), key=lambda kv: -kv[1][2][0]):
        print(f"   [{group}] {100 * total[0] / grand:.1f}% of samples; top self:")
        for frame, c in own.most_common(n):
            print(f"      {100 * c / total[0]:5.1f}%  {frame[:140]}")
        print(f"   [{group}] top inclusive:")
        for frame, c in incl.most_common(n + 12):
            print(f"      {100 * c / total[0]:5.1f}%  {frame[:140]}")


def run_burst(args: argparse.Namespace, node: Node, mock: StreamMock, chunks: int,
              during=None) -> tuple[dict[str, Any], Meter]:
    """One burst of K streams through the chosen path; ``during(start)`` runs alongside."""
    side = None
    if during is not None:
        side = threading.Thread(target=during, args=(time.monotonic(),), daemon=True)
    if args.path == "door":
        with Meter(node, mock) as meter:
            if side is not None:
                side.start()
            rows = aio_burst(node.url, "bench", args.k, chunks, args.bound)
    else:
        if side is not None:
            side.start()
        rows, _, meter, _ = client_run(node.port, args.k, chunks, args.bound, "burst", 0, lambda: Meter(node, mock))
    if side is not None:
        side.join(120)
    return summarize(rows, args.k, chunks), meter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--path", choices=["door", "client"], default="door")
    parser.add_argument("--chunks", type=int, default=400, help="chunks of the profiled burst (50 ms apart)")
    parser.add_argument("--bound", type=float, default=90.0)
    parser.add_argument("--fit", action="store_true", help="also a 2-chunk burst: CPU per call and per chunk")
    parser.add_argument("--py-spy", dest="pyspy", help="record py-spy profiles into this folder")
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--worker-processes", type=int, default=None)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"load average {loadavg()}", flush=True)
    bench_scale.CALLER_RT[0] = True
    mock = StreamMock(procs=2, drip_ms=50, realtime=True)
    node = Node(mock.url, workers=args.k, http_threads=args.k + 8, coalesce_ms=0.0,
                worker_processes=args.worker_processes)
    out: dict[str, Any] = {"k": args.k, "path": args.path, "load": loadavg()}
    try:
        aio_burst(node.url, "bench", args.k, 5, 30)   # warm: every listener thread has its endpoint
        roles = node.roles()
        stream_s = args.chunks * 0.05

        if args.fit:
            fits = {}
            for chunks in (2, min(args.chunks, 200)):
                s, m = run_burst(args, node, mock, chunks)
                fits[chunks] = (s, m)
                print(f"burst of {chunks} chunks: {s['completed']}/{args.k}, node {m.node_cpu:.2f} s CPU "
                      f"({', '.join(f'{r} {v:.2f}' for r, v in m.by_role.items())}), tokens {s['tokens']}", flush=True)
            (s1, m1), (s2, m2) = fits.values()
            n1, n2 = s1["tokens"], s2["tokens"]
            streams = args.k
            table = {}
            for role in sorted(set(m1.by_role) | set(m2.by_role)):
                c1, c2 = m1.by_role.get(role, 0.0), m2.by_role.get(role, 0.0)
                per_chunk = (c2 - c1) / max(1, n2 - n1)
                per_call = (c1 - per_chunk * n1) / streams
                table[role] = {"per_call_ms": per_call * 1000, "per_chunk_us": per_chunk * 1e6}
            total_chunk = sum(v["per_chunk_us"] for v in table.values())
            total_call = sum(v["per_call_ms"] for v in table.values())
            print(f"per call and per chunk (K={args.k}, {args.path}; cpu = a * calls + b * chunks):")
            for role, v in sorted(table.items(), key=lambda kv: -kv[1]["per_chunk_us"]):
                print(f"  {role:13s} {v['per_call_ms']:6.2f} ms/call  {v['per_chunk_us']:6.0f} us/chunk")
            print(f"  {'node':13s} {total_call:6.2f} ms/call  {total_chunk:6.0f} us/chunk", flush=True)
            out["fit"] = {"roles": table, "per_call_ms": total_call, "per_chunk_us": total_chunk}

        names: dict[int, dict[int, str]] = {}
        window: dict[str, Any] = {}
        spies: list[tuple[str, Path, subprocess.Popen]] = []

        def during(start: float) -> None:
            # Window A (/proc per thread) from 25% to 55% of the streams' length; window B (py-spy) after it.
            time.sleep(max(0.0, start + 0.25 * stream_s - time.monotonic()))
            for pid, role in roles.items():
                if role in ("http", "engine") or (role == "workers" and len(names) < 4):
                    names[pid] = thread_names(pid)
            t0 = time.monotonic()
            before = {pid: thread_cpu(pid) for pid in roles}
            time.sleep(max(0.5, start + 0.55 * stream_s - time.monotonic()))
            after = {pid: thread_cpu(pid) for pid in roles}
            window["seconds"] = time.monotonic() - t0
            window["before"], window["after"] = before, after
            if args.pyspy:
                folder = Path(args.pyspy)
                folder.mkdir(parents=True, exist_ok=True)
                busiest = max((p for p, r in roles.items() if r == "workers"),
                              key=lambda p: sum(after[p].values()) - sum(before[p].values()))
                engine = next(p for p, r in roles.items() if r == "engine")
                duration = max(2, int(0.3 * stream_s))
                for label, pid in (("http", node.http.pid), ("worker", busiest), ("engine", engine)):
                    if args.path == "client" and label == "http":
                        continue
                    path = folder / f"{args.path}-k{args.k}-{label}.txt"
                    spies.append((label, path, subprocess.Popen(
                        ["py-spy", "record", "--pid", str(pid), "--duration", str(duration), "--rate", str(args.rate),
                         "--format", "raw", "--threads", "--gil", "--nonblocking", "--output", str(path)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
                for _, _, proc in spies:
                    proc.wait(duration + 60)

        s, m = run_burst(args, node, mock, args.chunks, during)
        print(f"profiled burst: {s['completed']}/{args.k} completed, ttft p50 {s['ttft_p50_ms']:.0f} ms, gap p99 "
              f"{s['gap_p99_ms']:.0f} ms; node {m.node_cpu / m.wall:.2f} cores, {1e6 * m.node_cpu / max(1, s['tokens']):.0f} "
              f"us/chunk [load {loadavg()}]", flush=True)
        if window:
            secs = window["seconds"]
            chunks_per_s = args.k * 20.0   # every stream is mid-way through its tokens in this window
            per_group: collections.Counter = collections.Counter()
            for pid, role in roles.items():
                b, a = window["before"].get(pid, {}), window["after"].get(pid, {})
                tnames = names.get(pid, {})
                for tid in set(a) | set(b):
                    if tid in a and tid in b:
                        cpu = a[tid] - b[tid]
                    elif tid in a:
                        cpu = a[tid]      # a thread born in the window (a reader, an endpoint)
                    else:
                        continue          # died in the window: its CPU is lost to /proc (see below)
                    group = group_of(role, tnames.get(tid, ""), tid == pid)
                    if role == "workers" and tid != pid:
                        group = "reader threads"
                    per_group[(role, group)] += cpu
            total = sum(per_group.values()) or 1e-9
            print(f"by thread, over {secs:.1f} s mid-burst (~{chunks_per_s:.0f} chunks/s): node {total / secs:.2f} cores, "
                  f"{1e6 * total / (secs * chunks_per_s):.0f} us/chunk")
            rows = []
            for (role, group), cpu in per_group.most_common():
                rows.append({"role": role, "threads": group, "share": cpu / total,
                             "us_per_chunk": 1e6 * cpu / (secs * chunks_per_s)})
                print(f"  {role:13s} {group:28s} {100 * cpu / total:5.1f}%  {1e6 * cpu / (secs * chunks_per_s):6.0f} us/chunk")
            out["threads"] = rows
        for label, path, proc in spies:
            if path.exists():
                fold(path)
            else:
                print(f"  py-spy on {label}: {proc.stderr.read().decode()[:300]}")
    finally:
        node.stop()
        mock.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
