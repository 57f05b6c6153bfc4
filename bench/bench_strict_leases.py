#!/usr/bin/env python3
"""Strict (leased) against approximate rate budgets, N = 3 and N = 6 nodes, the same offered load, one run.

For each N: N nodes (a leader and N - 1 members) serving two deployments that differ only in
``limits.mode`` (the same rpm cap and window), and one mock provider in its own process that
records when each request arrived. Every node is offered an open loop of both at once, with
unequal demand across nodes (weights 1..3), twice the cap in total, for whole windows.

By default each node runs in its own network namespace with its own address (``launch.py
--convention leader|member --advertise IP``), the namespaces bridged in a hub namespace that
runs the shared mock provider (tests/netns.py ``hosts``; needs root and iproute2); each node's
callers run in its namespace, in a child process of this script (``--caller``) that answers in
JSON. ``--loopback`` runs every node on 127.0.0.1 in this process's namespace instead.

Measured, per mode:
- throughput: calls completed per second of flood (strict / approximate: target >= 0.8);
- latency p50 of the completed calls under the flood, and of sequential uncontended calls from a
  member to a deployment with no limits, an approximate and a strict one (a cap never reached):
  strict's added p50 against approximate's (target <= +1 ms);
- the cap, counted where the requests arrive (the mock's arrival times, per window): never above;
- each node's share of what was admitted against its demand-weighted fair share (target within 25 %);
- calls that arrived upstream after their caller's deadline (each message carries its deadline): 0.

Run (as root): python bench/bench_strict_leases.py [--nodes 3 6] [--cap 60] [--window 10] [--windows 2]
     [--calls 150] [--parts latency flood] [--loopback] [--json out.json]   (4 to 8 minutes on a 2-core VM)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

from actors.client import GatewayClient  # noqa: E402
from actors.ops.procs import port_is_listening  # noqa: E402
from actors.ops.system import start_node  # noqa: E402
from actors.settings.loader import parse_config  # noqa: E402
from actors.testing.load import open_loop  # noqa: E402
from actors.testing.mock_provider import MockProcess  # noqa: E402
from actors.types import Completed, Failed  # noqa: E402

HI = [{"role": "user", "content": "hi"}]
MODES = ("approx", "strict")


def free_ports(n: int, start: int = 19900) -> list[int]:
    return [p for p in range(start, start + 600, 3) if not port_is_listening(p)][:n]


def deployments(mock_url: str, cap: int, window_s: float) -> list[dict]:
    base = {"provider": "openai_compatible", "upstream_model": "mock-gpt", "endpoint": mock_url + "/v1",
            "workers": 4, "queue_capacity": 4096}
    return [{**base, "name": "approx", "model": "approx", "limits": {"rpm": cap, "window_s": window_s}},
            {**base, "name": "strict", "model": "strict", "limits": {"rpm": cap, "window_s": window_s,
                                                                      "mode": "strict"}},
            {**base, "name": "none", "model": "none"},
            {**base, "name": "approx_open", "model": "approx_open", "limits": {"rpm": 10**7}},
            {**base, "name": "strict_open", "model": "strict_open", "limits": {"rpm": 10**7, "mode": "strict"}}]


def wait(condition, timeout_s: float, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise RuntimeError("timed out")


def start_cluster(n: int, mock_url: str, cap: int, window_s: float, log_dir: str):
    ports = free_ports(n)
    nodes, clients = [], []
    try:
        for i, port in enumerate(ports):
            config = parse_config({"node": {"admin_port": port, "name": f"n{i}", "log_level": "WARNING"},
                                   "deployments": deployments(mock_url, cap, window_s)}, "<bench_strict_leases>")
            nodes.append(start_node(config, name=f"n{i}", leader=None if i == 0 else f"127.0.0.1:{ports[0]}",
                                    console_log=False, log_file=f"{log_dir}/bench-leases-n{i}.log"))
            clients.append(GatewayClient(port, timeout_s=60))
        wait(lambda: len(clients[0].cluster_status(members_only=True).members) == n, 90)
    except BaseException:
        stop_cluster(nodes, clients)
        raise
    return nodes, clients


def stop_cluster(nodes, clients) -> None:
    for client in clients:
        client.close()
    for node in reversed(nodes):
        node.stop()


def sequential_p50(client, calls: int) -> dict:
    """Uncontended calls from a member, interleaved so the machine's load falls on every mode alike."""
    models = ("none", "approx_open", "strict_open")
    samples: dict[str, list[float]] = {m: [] for m in models}
    engine: dict[str, list[float]] = {m: [] for m in models}   # accepted to terminal, in the engine
    for model in models:
        for _ in range(10):
            client.complete(model, HI, max_tokens=1, timeout_s=30)
    for _ in range(calls):
        for model in models:
            t0 = time.perf_counter()
            done = client.complete(model, HI, max_tokens=1, timeout_s=30)
            samples[model].append(time.perf_counter() - t0)
            engine[model].append(done.latency_s)
    p50 = {m: statistics.median(v) * 1000 for m, v in samples.items()}
    # Paired: each strict call against the approximate one just before it, so the machine's
    # load drifting over the run (other work on a shared VM) falls on both alike.
    paired = statistics.median(s - a for s, a in zip(samples["strict_open"], samples["approx_open"])) * 1000
    return {"p50_ms": {m: round(v, 2) for m, v in p50.items()},
            "p90_ms": {m: round(statistics.quantiles(v, n=10)[-1] * 1000, 2) for m, v in samples.items()},
            "engine_p50_ms": {m: round(statistics.median(v) * 1000, 2) for m, v in engine.items()},
            "strict_minus_approximate_ms": round(p50["strict_open"] - p50["approx_open"], 2),
            "strict_minus_approximate_paired_median_ms": round(paired, 2)}


def offer(clients: dict, weights, cap: int, window_s: float, windows: int, deadline_s: float,
          start_unix: float) -> dict:
    """Both modes at once from ``start_unix``, node i offered ``weights[i]`` parts of twice the cap;
    each call's outcome (``["ok", latency_s]`` or ``["error", kind]``) per mode, per node."""
    rate = 2 * cap / window_s / sum(weights)
    results: dict = {m: {i: [] for i in clients} for m in MODES}
    threads = [threading.Thread(target=open_loop, args=(client, mode, rate * weights[i], windows * window_s,
                                                         results[mode][i], deadline_s),
                                kwargs={"prompt": lambda deadline, mode=mode, i=i: f"{mode} n{i} {deadline:.4f}"})
               for mode in MODES for i, client in clients.items()]
    time.sleep(max(0.0, start_unix - time.time()))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {m: {i: [["ok", r.latency_s] if isinstance(r, Completed) else ["error", type(r.error).__name__]
                    for r in got if isinstance(r, (Completed, Failed))] for i, got in per_node.items()}
            for m, per_node in results.items()}


def next_window(window_s: float, after_s: float = 0.0) -> float:
    """The unix time the next rate window begins, at least ``after_s`` from now."""
    return math.ceil((time.time() + after_s) / window_s) * window_s


def figures(run: dict, arrivals, weights, cap: int, window_s: float, windows: int) -> dict:
    first = run["first"]
    out = {}
    for mode in MODES:
        per_node = [sum(kind == "ok" for kind, _ in node) for node in run["results"][mode]]
        latencies = [value for node in run["results"][mode] for kind, value in node if kind == "ok"]
        errors: dict[str, int] = {}
        for node in run["results"][mode]:
            for kind, value in node:
                if kind == "error":
                    errors[value] = errors.get(value, 0) + 1
        mine = [(t, p.split()) for t, p in arrivals if p.startswith(mode + " ")]
        per_window = {w: 0 for w in range(first, first + windows)}
        late: list[float] = []
        for t, (_, _, deadline) in mine:
            w = int(t // window_s)
            per_window[w] = per_window.get(w, 0) + 1
            if t > float(deadline):
                late.append(round(1000 * (t - float(deadline)), 1))
        total = sum(per_node)
        fair = [w / sum(weights) for w in weights]
        deviation = [round(100 * ((n / total) / f - 1), 1) if total else None for n, f in zip(per_node, fair)]
        out[mode] = {"completed": total, "throughput_per_s": round(total / (windows * window_s), 2),
                     "completed_per_node": per_node, "share_vs_fair_pct": deviation,
                     "max_share_deviation_pct": max(abs(d) for d in deviation if d is not None) if total else None,
                     "p50_latency_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
                     "upstream_per_window": [per_window[w] for w in sorted(per_window)],
                     "cap_exceeded": any(n > cap for n in per_window.values()),
                     "arrived_after_deadline": len(late), "arrived_late_by_ms": sorted(late),
                     "refused": errors}
    out["strict_vs_approximate_throughput"] = round(out["strict"]["completed"] / max(1, out["approx"]["completed"]), 3)
    return out


def flood_figures(results: dict, start_unix: float, arrivals, weights, args) -> dict:
    run = {"results": {m: [results[m][i] for i in range(len(weights))] for m in MODES},
           "first": math.floor(start_unix / args.window)}
    out = figures(run, arrivals, weights, args.cap, args.window, args.windows)
    out.update(weights=weights, cap=args.cap, window_s=args.window, windows=args.windows,
               offered_per_s=round(2 * args.cap / args.window, 2), deadline_s=args.deadline)
    return out


def measure_loopback(n: int, args, log_dir: str) -> dict:
    weights = [1 + (i % 3) for i in range(n)]   # unequal demand: 1, 2, 3, 1, 2, 3
    mock = MockProcess()
    try:
        nodes, clients = start_cluster(n, mock.url, args.cap, args.window, log_dir)
        try:
            for client in clients:   # every engine a lease client; a new strict leader learns for 3 s first
                for mode in MODES:
                    client.complete(mode, HI, max_tokens=1, timeout_s=60)
            out: dict = {"nodes": n, "hosts": "loopback"}
            if "latency" in args.parts:
                out["sequential"] = sequential_p50(clients[1], args.calls)
            if "flood" in args.parts:
                start = next_window(args.window)
                results = offer(dict(enumerate(clients)), weights, args.cap, args.window, args.windows,
                                args.deadline, start)
                time.sleep(1.0)   # the last calls land
                out.update(flood_figures(results, start, mock.arrivals(), weights, args))
            return out
        finally:
            stop_cluster(nodes, clients)
    finally:
        mock.stop()


# --- Each node in its own network namespace -------------------------------------------------------------

MOCK_PORT, ADMIN_BASE = 19699, 19700   # each namespace has its own ports: no clash with anything outside


def caller(spec: dict) -> None:
    """One job of a node's callers, run in that node's namespace (``--caller``); its answer is the last
    line on stdout, in JSON. ``flood`` says ``ready`` once connected and waits for the start time on stdin."""
    if spec["job"] == "arrivals":
        import requests
        print(json.dumps(requests.get(spec["url"] + "/_mock/arrivals", timeout=30).json()))
        return
    out: object = None
    with GatewayClient(spec["port"], timeout_s=60) as client:
        if spec["job"] == "members":
            wait(lambda: len(client.cluster_status(members_only=True).members) == spec["n"], 90)
        elif spec["job"] == "warm":   # every engine a lease client; a new strict leader learns for 3 s first
            for mode in MODES:
                client.complete(mode, HI, max_tokens=1, timeout_s=60)
        elif spec["job"] == "latency":
            out = sequential_p50(client, spec["calls"])
        elif spec["job"] == "flood":
            for mode in MODES:
                client.routes(mode)
            print("ready", flush=True)
            start = float(sys.stdin.readline())
            out = offer({spec["node"]: client}, spec["weights"], spec["cap"], spec["window"], spec["windows"],
                        spec["deadline"], start)
    print(json.dumps(out), flush=True)


class Namespaces:
    """The processes of one namespaced run: started in a namespace, stopped whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def popen(self, ns: str, *args: str, stdin=None) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *args], stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def start(self, ns: str, *args: str, wait_for: str) -> subprocess.Popen:
        """A server: returns once it printed ``wait_for``; its output is drained from then on."""
        proc = self.popen(ns, *args)
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if wait_for in line:
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                return proc
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"{' '.join(args[:2])} in {ns} did not say {wait_for!r} (exit {proc.poll()})")

    def answer(self, proc: subprocess.Popen, timeout_s: float = 600):
        out, err = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"caller failed ({proc.returncode}): {err[-3000:]}")
        return json.loads(out.strip().splitlines()[-1])

    def call(self, ns: str, spec: dict, timeout_s: float = 600):
        return self.answer(self.popen(ns, __file__, "--caller", json.dumps(spec)), timeout_s)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def node_config(tmp: Path, i: int, mock_url: str, args) -> Path:
    config = {"node": {"admin_port": ADMIN_BASE + i, "name": f"n{i}", "log_level": "WARNING",
                       "log_file": f"/tmp/bench-leases-ns-n{i}.log"},
              "deployments": deployments(mock_url, args.cap, args.window)}
    path = tmp / f"n{i}.json"
    path.write_text(json.dumps(config))   # YAML is a superset of JSON
    return path


def measure_netns(n: int, args) -> dict:
    import netns

    weights = [1 + (i % 3) for i in range(n)]   # unequal demand: 1, 2, 3, 1, 2, 3
    os.environ.setdefault("ATOMR_CLUSTER_SECRET", f"bench-strict-leases:{secrets.token_urlsafe(32)}")
    os.environ["PYTHONPATH"] = str(ROOT)
    prefix, subnet = f"bsl{os.getpid() % 10000}n", f"10.86.{10 + os.getpid() % 200}"
    run = Namespaces()
    with tempfile.TemporaryDirectory() as tmp, netns.hosts(n, prefix, subnet) as net:
        try:
            run.start(net.hub, "-m", "actors.testing.mock_provider", "--host", net.hub_ip, "--port", str(MOCK_PORT),
                      wait_for="mock provider listening on")
            mock_url = f"http://{net.hub_ip}:{MOCK_PORT}"
            launch = str(ROOT / "launch.py")
            run.start(net.namespaces[0], launch, "--convention", "leader", "--advertise", net.ips[0],
                      "--config", str(node_config(Path(tmp), 0, mock_url, args)),
                      wait_for=f"serving on admin port {ADMIN_BASE}")
            for i in range(1, n):
                run.start(net.namespaces[i], launch, "--convention", "member", "--leader",
                          f"{net.ips[0]}:{ADMIN_BASE}", "--advertise", net.ips[i],
                          "--config", str(node_config(Path(tmp), i, mock_url, args)),
                          wait_for=f"serving on admin port {ADMIN_BASE + i}")
            run.call(net.namespaces[0], {"job": "members", "port": ADMIN_BASE, "n": n})
            warming = [run.popen(ns, __file__, "--caller", json.dumps({"job": "warm", "port": ADMIN_BASE + i}))
                       for i, ns in enumerate(net.namespaces)]
            for proc in warming:
                run.answer(proc)
            out: dict = {"nodes": n, "hosts": "namespaces"}
            if "latency" in args.parts:
                out["sequential"] = run.call(net.namespaces[1], {"job": "latency", "port": ADMIN_BASE + 1,
                                                                 "calls": args.calls})
            if "flood" in args.parts:
                spec = {"job": "flood", "weights": weights, "cap": args.cap, "window": args.window,
                        "windows": args.windows, "deadline": args.deadline}
                callers = [run.popen(ns, __file__, "--caller", json.dumps({**spec, "node": i, "port": ADMIN_BASE + i}),
                                     stdin=subprocess.PIPE) for i, ns in enumerate(net.namespaces)]
                for proc in callers:
                    if proc.stdout.readline().strip() != "ready":
                        raise RuntimeError(f"a flood caller did not start: {proc.communicate()[1][-3000:]}")
                start = next_window(args.window, after_s=0.2)
                for proc in callers:
                    proc.stdin.write(f"{start!r}\n")
                    proc.stdin.flush()
                results: dict = {m: {} for m in MODES}
                for i, proc in enumerate(callers):
                    got = run.answer(proc)
                    for mode in MODES:
                        results[mode][i] = got[mode][str(i)]
                time.sleep(1.0)   # the last calls land
                arrivals = run.call(net.hub, {"job": "arrivals", "url": mock_url})
                out.update(flood_figures(results, start, [(float(t), str(p)) for t, p in arrivals], weights, args))
            return out
        finally:
            run.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--cap", type=int, default=60, help="requests per window, cluster-wide, per mode")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=1.0, help="each flood request's deadline, seconds")
    parser.add_argument("--calls", type=int, default=150, help="sequential calls per mode for the latency p50")
    parser.add_argument("--parts", nargs="+", default=["latency", "flood"], choices=["latency", "flood"])
    parser.add_argument("--loopback", action="store_true",
                        help="every node on 127.0.0.1 in this namespace, not each in its own")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--caller", help=argparse.SUPPRESS)   # a node's callers, in its namespace
    args = parser.parse_args()
    if args.caller:
        caller(json.loads(args.caller))
        return
    log_dir = "/tmp"
    report = {}
    for n in args.nodes:
        try:
            report[f"N={n}"] = measure_loopback(n, args, log_dir) if args.loopback else measure_netns(n, args)
        except BaseException as exc:   # tests/netns.py skips, as in a test, where namespaces cannot be made
            if type(exc).__name__ != "Skipped":
                raise
            sys.exit(f"no network namespaces ({exc}); run as root with iproute2, or with --loopback")
        print(f"N={n}:", json.dumps(report[f"N={n}"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
