#!/usr/bin/env python3
"""K concurrent streams through one node against the same streams made directly, in one run.

The upstream is the built-in mock provider in its own process, streaming one token per
chunk ``--drip-ms`` apart (25 ms). For each K, K client threads stream back to back for
``--seconds``: first straight to the mock with ``requests``, then through one node whose
deployment has ``workers = K`` and ``coalesce_ms: 0``. Printed per K and path: streams/s,
time to first token p50/p99, the p99 of each stream's largest gap between two chunks,
and for the node its CPU per stream (utime+stime of every process in the node's process
group, from /proc) and its memory (PSS from /proc/<pid>/smaps_rollup). Then an idle
node's CPU, and sequential and 4-thread non-streamed calls against direct ``requests``.

    python bench/bench_streams.py --quick          # K=16,64, 20 chunks, ~2 min
    python bench/bench_streams.py                  # K=16,64,256, 20 and 200 chunks
    python bench/bench_streams.py --k 64 --chunks 20 --seconds 12 --json out.json
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

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.client import GatewayClient  # noqa: E402
from actors.ops.procs import pids_in_group, port_is_listening  # noqa: E402
from actors.ops.system import start_node  # noqa: E402
from actors.providers import make_runner  # noqa: E402
from actors.providers.base import StreamAccumulator  # noqa: E402
from actors.settings.loader import parse_config  # noqa: E402
from actors.testing.mock_provider import MockProcess  # noqa: E402
from actors.types import InferenceRequest  # noqa: E402

MESSAGES = [{"role": "user", "content": "Benchmark prompt with a few words in it"}]
TICK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total / TICK


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


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Recorder:
    """Per-stream timings from all client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ttft: list[float] = []
        self.gaps: list[float] = []
        self.done = 0
        self.failed = 0
        self.short = 0

    def add(self, started: float, times: list[float], expected: int, tokens: int) -> None:
        with self.lock:
            if not times:
                self.failed += 1
                return
            self.done += 1
            self.short += tokens < expected
            self.ttft.append(times[0] - started)
            self.gaps.append(max((b - a for a, b in zip(times, times[1:])), default=0.0))


def drive(k: int, seconds: float, one_stream, rec: Recorder) -> float:
    """K threads streaming back to back until ``seconds`` pass; returns the wall time used."""
    stop_at = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop_at:
            try:
                one_stream(rec)
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                with rec.lock:
                    rec.failed += 1
                if rec.failed < 5:
                    print(f"    stream failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(k)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return time.monotonic() - start


def summary(rec: Recorder, wall: float) -> dict:
    return {"streams": rec.done, "failed": rec.failed, "short": rec.short, "streams_per_s": rec.done / wall,
            "ttft_p50_ms": pct(rec.ttft, 0.5) * 1000, "ttft_p99_ms": pct(rec.ttft, 0.99) * 1000,
            "gap_p99_ms": pct(rec.gaps, 0.99) * 1000}


def make_config(port: int, url: str, workers: int, replicas: int = 1, coalesce_ms: float = 0.0):
    return parse_config({"node": {"admin_port": port, "name": "bench-streams", "log_level": "WARNING"},
                         "deployments": [{"name": "bench", "model": "bench", "provider": "openai_compatible",
                                          "upstream_model": "mock-gpt", "endpoint": url + "/v1",
                                          "workers": workers, "replicas": replicas, "queue_capacity": 8192,
                                          "coalesce_ms": coalesce_ms,
                                          "limits": {"rpm": 10_000_000, "tpm": 10_000_000_000}}]})


def free_port() -> int:
    return next(p for p in range(19800, 19990) if not port_is_listening(p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--k", type=int, nargs="*", help="concurrent streams (default 16 64, full: 16 64 256)")
    parser.add_argument("--chunks", type=int, nargs="*", help="chunks per stream (default 20, full: 20 200)")
    parser.add_argument("--seconds", type=float, help="per path and K (default 6 quick, 12 full)")
    parser.add_argument("--drip-ms", type=float, default=25.0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--coalesce-ms", type=float, default=0.0)
    parser.add_argument("--idle-seconds", type=float, help="how long an idle node is watched (3 quick, 10 full)")
    parser.add_argument("--no-unary", action="store_true", help="skip the non-streamed comparison")
    parser.add_argument("--unary-only", action="store_true", help="only the non-streamed comparison")
    parser.add_argument("--json", help="write the figures here as JSON")
    parser.add_argument("--no-messages", action="store_true",
                        help="skip the node run with the stream channel off (chunks as Thespian messages)")
    args = parser.parse_args()
    ks = args.k or ([16, 64] if args.quick else [16, 64, 256])
    chunk_counts = args.chunks or ([20] if args.quick else [20, 200])
    seconds = args.seconds or (6.0 if args.quick else 12.0)
    args.idle_seconds = args.idle_seconds or (3.0 if args.quick else 10.0)
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

    mock = MockProcess(words_per_second=1000 / args.drip_ms)
    figures: dict = {"drip_ms": args.drip_ms, "seconds": seconds, "replicas": args.replicas,
                     "coalesce_ms": args.coalesce_ms, "cpus": os.cpu_count(), "runs": []}
    runner = make_runner(make_config(1, mock.url, 1).deployments[0])
    local = threading.local()

    def direct_stream(chunks: int):
        def one(rec: Recorder) -> None:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = requests.Session()
            http = runner.build_request(InferenceRequest(model="bench", messages=MESSAGES,
                                                         params={"max_tokens": chunks}, stream=True), None)
            started = time.monotonic()
            times, words = [], 0
            decoder = runner.stream_decoder()
            with session.post(http.url, data=http.body, headers=http.headers, stream=True, timeout=60) as resp:
                for data in resp.iter_content(chunk_size=None):
                    for delta in decoder.feed(data):
                        if delta.text:
                            times.append(time.monotonic())
                            words += len(delta.text.split())
            rec.add(started, times, chunks, words)
        return one

    try:
        for chunks in [] if args.unary_only else chunk_counts:
            for k in ks:
                secs = max(seconds, 3 * chunks * args.drip_ms / 1000)
                row: dict = {"k": k, "chunks": chunks}
                print(f"K={k} chunks={chunks} ({secs:.0f} s per path)", flush=True)
                rec = Recorder()
                c0 = self_cpu()
                row["direct"] = summary(rec, drive(k, secs, direct_stream(chunks), rec))
                row["direct"]["client_cpu_ms_per_stream"] = (self_cpu() - c0) * 1000 / max(1, rec.done)
                print(f"  direct  {fmt(row['direct'])}", flush=True)
                paths = [("node", True)] + ([] if args.no_messages else [("node_messages", False)])
                for name, channel in paths:
                    row[name] = node_run(args, mock.url, k, chunks, secs, channel=channel)
                    print(f"  {'node' if channel else 'node, chunks as messages'}  {fmt(row[name])}", flush=True)
                    d, n = row["direct"], row[name]
                    row["ratios" if channel else "ratios_messages"] = r = {
                        "streams_per_s": n["streams_per_s"] / d["streams_per_s"],
                        "ttft_p50_added_ms": n["ttft_p50_ms"] - d["ttft_p50_ms"],
                        "gap_p99": n["gap_p99_ms"] / d["gap_p99_ms"]}
                    print(f"  ratios  streams/s {r['streams_per_s']:.2f}x  ttft p50 {r['ttft_p50_added_ms']:+.1f} ms  "
                          f"gap p99 {r['gap_p99']:.2f}x", flush=True)
                figures["runs"].append(row)
        if not args.no_unary:
            figures["unary"] = unary_run(args, mock.url, runner)
    finally:
        mock.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def fmt(s: dict) -> str:
    out = (f"{s['streams_per_s']:6.1f} streams/s  ttft p50 {s['ttft_p50_ms']:6.1f} p99 {s['ttft_p99_ms']:7.1f} ms  "
           f"gap p99 {s['gap_p99_ms']:6.1f} ms  ({s['streams']} ok, {s['failed']} failed, {s['short']} missing tokens)")
    if "node_cpu_ms_per_stream" in s:
        out += (f"\n          node CPU {s['node_cpu_ms_per_stream']:.1f} ms/stream ({s['node_cpu_cores']:.2f} cores), "
                f"client CPU {s['client_cpu_ms_per_stream']:.1f} ms/stream, node PSS {s['node_pss_mib']:.0f} MiB "
                f"in {s['node_processes']} processes, idle {s['idle_cpu_pct']:.2f}% of a core")
    return out


def node_run(args, url: str, k: int, chunks: int, secs: float, channel: bool = True) -> dict:
    port = free_port()
    config = make_config(port, url, workers=k, replicas=args.replicas, coalesce_ms=args.coalesce_ms)
    t0 = time.monotonic()
    node = start_node(config, console_log=False, log_file=f"/tmp/atomr-bench-streams-{port}.log",
                      deploy_timeout_s=max(60.0, k * 0.5))
    client = GatewayClient(port, timeout_s=120, stream_channel=channel)
    try:
        # Warm: every worker has its connection and every thread its endpoint.
        warm = Recorder()
        drive(k, 1.0, lambda rec: node_stream(client, chunks, rec), warm)
        startup_s = time.monotonic() - t0
        pids = pids_in_group(node.pgid)
        idle0, idle_t = cpu_seconds(pids), time.monotonic()
        time.sleep(args.idle_seconds)  # /proc counts in 10 ms ticks: a short look reads 0 or 0.3%
        idle = (cpu_seconds(pids) - idle0) / (time.monotonic() - idle_t)
        rec = Recorder()
        pids = pids_in_group(node.pgid)
        cpu0, c0 = cpu_seconds(pids), self_cpu()
        wall = drive(k, secs, lambda r: node_stream(client, chunks, r), rec)
        cpu = cpu_seconds(pids) - cpu0
        out = summary(rec, wall)
        out.update(node_cpu_ms_per_stream=cpu * 1000 / max(1, rec.done), node_cpu_cores=cpu / wall,
                   client_cpu_ms_per_stream=(self_cpu() - c0) * 1000 / max(1, rec.done),
                   node_pss_mib=pss_kib(pids) / 1024, node_processes=len(pids), idle_cpu_pct=idle * 100,
                   startup_s=startup_s)
        return out
    finally:
        client.close()
        node.stop()


def node_stream(client: GatewayClient, chunks: int, rec: Recorder) -> None:
    started = time.monotonic()
    times, words = [], 0
    with client.stream("bench", MESSAGES, max_tokens=chunks, timeout_s=120) as stream:
        for chunk in stream:
            times.append(time.monotonic())
            words += len(chunk.text.split())
    rec.add(started, times, chunks, words)


def unary_run(args, url: str, runner) -> dict:
    """Sequential and 4-thread non-streamed calls, direct and through a 4-worker node, alternating rounds."""
    port = free_port()
    node = start_node(make_config(port, url, workers=4, replicas=args.replicas, coalesce_ms=args.coalesce_ms),
                      console_log=False, log_file=f"/tmp/atomr-bench-streams-{port}.log")
    client = GatewayClient(port, timeout_s=60)
    local = threading.local()
    http = runner.build_request(InferenceRequest(model="bench", messages=MESSAGES, params={"max_tokens": 8}), None)

    def direct() -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        resp = session.post(http.url, data=http.body, headers=http.headers, timeout=30)
        StreamAccumulator().add(runner.parse_response(resp.content))

    def via_node() -> None:
        client.complete("bench", MESSAGES, max_tokens=8)

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
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return len(lat) / (time.perf_counter() - start), lat

    rounds = 3 if args.quick else 5
    try:
        for call in (direct, via_node):
            run(4, 25, call)
        seq = {"direct": [], "node": []}
        par = {"direct": [], "node": []}
        for _ in range(rounds):
            for name, call in (("direct", direct), ("node", via_node)):
                seq[name].append(pct(run(1, 60, call)[1], 0.5))
                par[name].append(run(4, 60, call)[0])
    finally:
        client.close()
        node.stop()
    out = {"seq_p50_ms": {n: statistics.median(v) * 1000 for n, v in seq.items()},
           "threads4_rps": {n: statistics.median(v) for n, v in par.items()}}
    out["added_p50_ms"] = out["seq_p50_ms"]["node"] - out["seq_p50_ms"]["direct"]
    out["threads4_ratio"] = out["threads4_rps"]["node"] / out["threads4_rps"]["direct"]
    print(f"non-streamed (median of {rounds} rounds): sequential p50 direct {out['seq_p50_ms']['direct']:.2f} ms, "
          f"node {out['seq_p50_ms']['node']:.2f} ms ({out['added_p50_ms']:+.2f} ms); 4 threads direct "
          f"{out['threads4_rps']['direct']:.0f}/s, node {out['threads4_rps']['node']:.0f}/s "
          f"({out['threads4_ratio']:.2f}x)", flush=True)
    return out


if __name__ == "__main__":
    main()
