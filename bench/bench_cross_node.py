#!/usr/bin/env python3
"""What a cross-node call costs: the same calls served on the caller's node and on another, one run.

Two nodes, each in its own network namespace with its own address (a veth pair, as
tests/cluster/ does it; needs root and iproute2), each with its own mock provider on its own
loopback. Node ha serves model ``here``; node hb serves model ``there`` (the same mock, the
same settings). A caller in ha's namespace (a GatewayClient of ha) alternates calls to the
two, so both see the same machine load:

- non-streamed: p50 (and p90) latency of ``complete()``, 5 tokens;
- streamed: p50 time to the first chunk (TTFT) and to the end, 40 tokens.

The difference is the cost of the hop: caller -> ha's relay -> hb's engine -> hb's worker ->
ha's relay -> caller, signed Thespian messages across hosts (docs/routing.md, "Across a cluster").

Run (as root): python bench/bench_cross_node.py [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("ATOMR_CLUSTER_SECRET", f"bench-cross-node:{secrets.token_urlsafe(32)}")
os.environ["PYTHONPATH"] = str(ROOT)

import netns
import yaml

TAG = f"{os.getpid() % 10000}"
NS_A, NS_B, VETH_A, VETH_B = f"bxn{TAG}a", f"bxn{TAG}b", f"bx{TAG}a", f"bx{TAG}b"
IP_A, IP_B = "10.83.1.1", "10.83.1.2"
MOCK_PORT, ADMIN_A, ADMIN_B = 19571, 19572, 19573

CALLER = r"""
import json, statistics, sys, time
from actors.client import GatewayClient
port, calls = int(sys.argv[1]), int(sys.argv[2])
HI = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "stream [[mock words=40]]"}]
with GatewayClient(port, timeout_s=30, route_ttl_s=1.0) as client:
    deadline = time.monotonic() + 60
    while not client.routes("there", refresh=True) and time.monotonic() < deadline:
        time.sleep(0.2)
    for model in ("here", "there"):        # warm: workers, connections, route caches
        for _ in range(10):
            client.complete(model, HI, max_tokens=5)
    out = {m: {"latency": [], "ttft": [], "stream": []} for m in ("here", "there")}
    for _ in range(calls):
        for model in ("here", "there"):
            t0 = time.perf_counter()
            client.complete(model, HI, max_tokens=5)
            out[model]["latency"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            first = None
            with client.stream(model, LONG) as s:
                for _chunk in s:
                    first = first or time.perf_counter() - t0
            out[model]["ttft"].append(first)
            out[model]["stream"].append(time.perf_counter() - t0)
print(json.dumps(out))
"""


def _config(tmp: Path, name: str, port: int, model: str) -> Path:
    config = {"node": {"admin_port": port, "name": name, "log_file": str(tmp / f"{name}.log")},
              "cluster": {"heartbeat_s": 0.5, "failure_timeout_s": 3.0, "reregistration_s": 2},
              "routing": {"cross_node": "prefer_local"},
              "deployments": [{"name": model, "model": model, "provider": "openai", "upstream_model": "mock-gpt",
                               "workers": 2, "endpoint": f"http://127.0.0.1:{MOCK_PORT}/v1"}]}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(ns: str, *args: str, wait: str) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if wait in line:
            return proc
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"{args[:2]} in {ns} did not say {wait!r}")


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp, netns.two_hosts(NS_A, NS_B, VETH_A, VETH_B, IP_A, IP_B):
        try:
            for ns in (NS_A, NS_B):
                procs.append(_start(ns, "-m", "actors.testing.mock_provider", "--port", str(MOCK_PORT),
                                    wait="mock provider listening on"))
            procs.append(_start(NS_A, str(ROOT / "launch.py"), "--convention", "leader", "--advertise", IP_A,
                                "--config", str(_config(Path(tmp), "ha", ADMIN_A, "here")),
                                wait=f"serving on admin port {ADMIN_A}"))
            procs.append(_start(NS_B, str(ROOT / "launch.py"), "--convention", "member", "--leader",
                                f"{IP_A}:{ADMIN_A}", "--advertise", IP_B,
                                "--config", str(_config(Path(tmp), "hb", ADMIN_B, "there")),
                                wait=f"serving on admin port {ADMIN_B}"))
            run = subprocess.run(["ip", "netns", "exec", NS_A, sys.executable, "-c", CALLER, str(ADMIN_A),
                                  str(args.calls)], capture_output=True, text=True, cwd=ROOT, timeout=1800)
            if run.returncode != 0:
                raise RuntimeError(run.stderr[-3000:])
            got = json.loads(run.stdout.strip().splitlines()[-1])
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
            for proc in reversed(procs):
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"{args.calls} calls of each kind, alternating, from a client of ha (ms)")
    print(f"{'':24}{'served on ha':>14}{'served on hb':>14}{'added':>10}")
    for label, key, q in (("non-streamed p50", "latency", 0.5), ("non-streamed p90", "latency", 0.9),
                          ("streamed TTFT p50", "ttft", 0.5), ("streamed TTFT p90", "ttft", 0.9),
                          ("streamed, whole p50", "stream", 0.5)):
        here, there = _ms(got["here"][key], q), _ms(got["there"][key], q)
        print(f"{label:24}{here:14.2f}{there:14.2f}{there - here:+10.2f}")


if __name__ == "__main__":
    main()
