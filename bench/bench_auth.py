#!/usr/bin/env python3
"""What the signed, allow-listed wire costs: the same work with it on and off, in one run.

Two wire modes, each installed before its actor system is forked (actors/security/):
- ``off``: Thespian's own plain pickle, the wire before issue 6 (a baseline only: never run so);
- ``signed``: HMAC-SHA256 with the cluster key, the allow-list and the trust checks (what every
  node runs: there is no unsigned mode any more).

One bare actor system and one whole gateway node run per mode, side by side; the rounds then
take short turns on each mode (the order rotates every round, and this process switches its
own serializer to match before each turn), so machine noise hits every mode alike. The median
over rounds is reported, with ratios against ``off``:
- serializer CPU: dumps + loads of a typical message (TokenChunk / InferenceRequest), in-process;
- message throughput: 4 sender actors each send a burst of TokenChunks to their own receiver
  actor (8 actor processes, both cores busy);
- ask latency: client ask -> echo actor -> reply (an InferenceRequest out, a Completed back);
- request latency and throughput through a whole gateway node (engine, worker, HTTP to the
  mock provider in its own process): one thread sequentially, and 4 client threads.

Run: python bench/bench_auth.py [--quick] [--json out.json]      (about 4 min; --quick 30 s)
     python bench/bench_auth.py --node-tag                        (the node tag's CPU per frame, seconds)
Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

if __name__ == "__main__":
    # Actor classes must be importable by name in the forked actor processes: run this file
    # as the module ``bench_auth`` rather than as ``__main__``.
    sys.path[:0] = [str(ROOT), str(BENCH)]
    import bench_auth

    sys.exit(bench_auth.main())

from thespian.actors import Actor, ActorSystem  # noqa: E402

from actors.security import wire  # noqa: E402
from actors.types import Completed, InferenceRequest, TokenChunk, Usage  # noqa: E402

MODES = ("off", "signed")
MESSAGES = [{"role": "user", "content": "Benchmark prompt with a few words in it, about a sentence long."}]
BENCH_KEY = wire.KeyRing(wire.parse_keys("bench:" + "b" * 43, "bench"), "bench key")
WIRE_INSTALL = wire.install  # the real one: main() routes wire.install (start_node, GatewayClient) to the mode


# --- actors ------------------------------------------------------------------------------

class Echo(Actor):
    def receiveMessage(self, msg, sender):
        if isinstance(msg, InferenceRequest):
            self.send(sender, Completed(msg.request_id, "You said: hi", "stop", Usage(12, 8), deployment="echo"))


class Receiver(Actor):
    def receiveMessage(self, msg, sender):
        if isinstance(msg, tuple) and msg[0] == "expect":
            self.left, self.reply_to = msg[1], sender
            self.send(sender, "ready")
        elif isinstance(msg, TokenChunk):
            self.left -= 1
            if self.left == 0:
                self.send(self.reply_to, "done")


class Sender(Actor):
    def receiveMessage(self, msg, sender):
        if isinstance(msg, tuple) and msg[0] == "go":
            _, n, target = msg
            for seq in range(n):
                self.send(target, TokenChunk("bench-request", seq, "tokens of a coalesced chunk "))


# --- modes -------------------------------------------------------------------------------

def install_mode(mode: str) -> None:
    """This process's serializer for ``mode``; what it forks from now on inherits it."""
    from thespian.system.transport import TCPTransport

    if mode == "off":
        TCPTransport.serializer = pickle
    else:
        WIRE_INSTALL(BENCH_KEY)


class _ModeInstall:
    """start_node and GatewayClient call wire.install: route it to the mode under test."""

    def __init__(self) -> None:
        self.mode = "signed"

    def __call__(self, keyring):
        install_mode(self.mode)
        return wire.current()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- measures ----------------------------------------------------------------------------

def serializer_cpu(mode: str, n: int) -> dict[str, float]:
    """Microseconds per dumps+loads of a stream chunk and of a request, in this process."""
    install_mode(mode)
    from thespian.system.transport import TCPTransport

    serializer = TCPTransport.serializer
    out = {}
    for name, message in (("chunk", TokenChunk("r" * 32, 3, "tokens of a coalesced chunk ")),
                          ("request", InferenceRequest(model="bench", messages=MESSAGES, params={"max_tokens": 8}))):
        envelope = (None, message)
        best = float("inf")
        for _ in range(5):  # the best of 5: scheduling noise only ever adds
            t0 = time.perf_counter()
            for _ in range(n // 5):
                serializer.loads(serializer.dumps(envelope))
            best = min(best, (time.perf_counter() - t0) / (n // 5))
        out[f"{name}_us"] = best * 1e6
    return out


class Bare:
    """One bare actor system in ``mode``: an echo actor, and ``pairs`` sender/receiver pairs."""

    def __init__(self, mode: str, port: int, pairs: int = 4) -> None:
        from actors.ops.procs import admin_pgid

        install_mode(mode)
        self.mode, self.port = mode, port
        self.asys = ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True)
        self.pgid = admin_pgid(port)
        self.echo = self.asys.createActor("bench_auth.Echo")
        self.pairs = [(self.asys.createActor("bench_auth.Sender"), self.asys.createActor("bench_auth.Receiver"))
                      for _ in range(pairs)]
        self.request = InferenceRequest(model="bench", messages=MESSAGES, params={"max_tokens": 8})

    def asks(self, n: int) -> list[float]:
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            reply = self.asys.ask(self.echo, self.request, 5)
            lat.append(time.perf_counter() - t0)
            assert isinstance(reply, Completed), reply
        return lat

    def burst(self, n: int) -> float:
        """Every pair at once, ``n`` messages each: messages per second, all pairs together.

        Several pairs keep both cores busy, so the serializer's CPU cost shows as much as it
        can (one pair alone is bound by Thespian's one message in flight per pair).
        """
        for _, receiver in self.pairs:
            assert self.asys.ask(receiver, ("expect", n), 10) == "ready"
        t0 = time.perf_counter()
        for sender, receiver in self.pairs:
            self.asys.tell(sender, ("go", n, receiver))
        for _ in self.pairs:
            done = self.asys.listen(120)
            assert done == "done", done
        return n * len(self.pairs) / (time.perf_counter() - t0)

    def stop(self) -> None:
        from actors.ops.procs import kill_group, pids_in_group, wait_until

        install_mode(self.mode)
        self.asys.shutdown()
        if self.pgid is not None and not wait_until(lambda: not pids_in_group(self.pgid), 10):
            kill_group(self.pgid)


class Gateway:
    """One whole gateway node in ``mode``, on the shared mock provider, and a client of it."""

    def __init__(self, mode: str, port: int, hooks: _ModeInstall, mock_url: str, threads: int) -> None:
        from actors.client import GatewayClient
        from actors.settings.loader import parse_config
        from actors.ops.system import start_node

        hooks.mode = self.mode = mode
        config = parse_config({"node": {"admin_port": port, "name": f"bench-{mode}", "log_level": "WARNING"},
                               "deployments": [{"name": "bench", "model": "bench", "provider": "openai",
                                                "upstream_model": "mock-gpt", "endpoint": mock_url + "/v1",
                                                "workers": threads, "queue_capacity": 4096,
                                                "limits": {"rpm": 10_000_000, "tpm": 10_000_000_000}}]}, "<bench>")
        self.node = start_node(config, console_log=False, log_file=f"/tmp/atomr-bench-auth-{port}.log",
                               keyring=BENCH_KEY if mode == "signed" else None)
        self.client = GatewayClient(port, timeout_s=60)
        self.threads = threads

    def call(self) -> None:
        self.client.complete("bench", MESSAGES, max_tokens=8)

    def sequential(self, n: int) -> list[float]:
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.call()
            lat.append(time.perf_counter() - t0)
        return lat

    def parallel(self, per_thread: int) -> float:
        def worker():
            for _ in range(per_thread):
                self.call()

        pool = [threading.Thread(target=worker) for _ in range(self.threads)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return self.threads * per_thread / (time.perf_counter() - t0)

    def stop(self) -> None:
        install_mode(self.mode)
        self.client.close()
        self.node.stop(kill_after_s=10)


# --- the run -----------------------------------------------------------------------------

def node_tag_cpu(n: int = 20000) -> dict[str, dict[str, float]]:
    """``--node-tag``: microseconds per dumps + loads, in-process, of a frame without the node tag
    (what a client sends), with it (what the node's processes send), and with it read where the
    table is enforced (a node's process). Best of 5 repeats: scheduling noise only ever adds."""
    import timeit

    from thespian.actors import ActorAddress
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    from actors.security.keys import node_key

    me = ActorAddress(TCPv4ActorAddress("127.0.0.1", 4000, external=True))
    tag = node_key("c" * 64)
    WireSerializer = wire.WireSerializer
    readers = {"no tag (a client's frame)": WireSerializer(BENCH_KEY, node_key=lambda: None, enforce_table=lambda: False),
               "node tag": WireSerializer(BENCH_KEY, node_key=lambda: tag, enforce_table=lambda: False),
               "node tag, table enforced": WireSerializer(BENCH_KEY, node_key=lambda: tag, enforce_table=lambda: True)}
    out: dict[str, dict[str, float]] = {}
    for name, message in (("chunk", TokenChunk("r" * 32, 3, "tokens of a coalesced chunk ")),
                          ("request", InferenceRequest(model="bench", messages=MESSAGES, params={"max_tokens": 8}))):
        envelope = (me, message)
        for label, serializer in readers.items():
            def pair(serializer: wire.WireSerializer = serializer) -> None:
                serializer.loads(serializer.dumps(envelope), peer=("127.0.0.1", 5000))
            out.setdefault(name, {})[label] = min(timeit.repeat(pair, number=n, repeat=5)) / n * 1e6
        print(f"{name}: " + ", ".join(f"{label} {us:.2f} us" for label, us in out[name].items()), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 rounds, smaller turns")
    parser.add_argument("--json", help="write the figures here as JSON")
    parser.add_argument("--node-tag", action="store_true", help="only the node tag's CPU per frame, in-process")
    args = parser.parse_args()
    if args.node_tag:
        figures = node_tag_cpu()
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return 0
    asks, burst, sequential, per_thread, cpu_n = 60, 200, 40, 15, 10000
    if args.quick:
        args.rounds, asks, burst, sequential, per_thread, cpu_n = 5, 40, 100, 20, 8, 5000
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    os.environ.pop(wire.ENV_SECRET, None)
    logging.getLogger("atomr").setLevel(logging.ERROR)  # the "no cluster secret" warnings of two modes
    from actors.testing.mock_provider import MockProcess
    from actors.ops.procs import port_is_listening

    ports = iter(p for p in range(19800, 19990) if not port_is_listening(p))
    hooks = _ModeInstall()
    wire.install = hooks
    mock = MockProcess()
    bare: dict[str, Bare] = {}
    gateways: dict[str, Gateway] = {}
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}

    def add(mode: str, key: str, value: float) -> None:
        samples[mode].setdefault(key, []).append(value)

    def turns(r: int) -> tuple[str, ...]:
        order = MODES[r % 3:] + MODES[:r % 3]
        return tuple(reversed(order)) if r % 2 else order

    try:
        # Phase 1: the bare systems alone (no node's timers running beside them).
        for mode in MODES:
            bare[mode] = Bare(mode, next(ports))
        for mode in MODES:  # warm up: connections, imports
            install_mode(mode)
            bare[mode].asks(30)
            bare[mode].burst(100)
        def rounds(phase: str, turn, shown: tuple[str, str, str, str]) -> None:
            """Every round, one turn per mode, in the rotating order; a line per round."""
            for r in range(args.rounds):
                for mode in turns(r):
                    install_mode(mode)
                    turn(mode)
                first, first_unit, second, second_unit = shown
                print(f"{phase} round {r + 1}/{args.rounds}: " + "  ".join(
                    f"{m} {samples[m][first][-1]:.0f} {first_unit}, {samples[m][second][-1]:.2f} {second_unit}"
                    for m in MODES), flush=True)

        def bare_turn(mode: str) -> None:
            for key, value in serializer_cpu(mode, cpu_n).items():
                add(mode, key, value)
            lat = bare[mode].asks(asks)
            add(mode, "ask_p50_ms", pct(lat, 0.5) * 1000)
            add(mode, "ask_p99_ms", pct(lat, 0.99) * 1000)
            add(mode, "msgs_per_s", bare[mode].burst(burst))

        def gateway_turn(mode: str) -> None:
            lat = gateways[mode].sequential(sequential)
            add(mode, "req_p50_ms", pct(lat, 0.5) * 1000)
            add(mode, "req_p99_ms", pct(lat, 0.99) * 1000)
            add(mode, "req_per_s", gateways[mode].parallel(per_thread))

        rounds("bare", bare_turn, ("msgs_per_s", "msg/s", "ask_p50_ms", "ms ask"))
        for mode in MODES:
            bare.pop(mode).stop()
        # Phase 2: whole gateway nodes.
        for mode in MODES:
            gateways[mode] = Gateway(mode, next(ports), hooks, mock.url, threads=4)
        for mode in MODES:
            install_mode(mode)
            gateways[mode].sequential(20)
        rounds("gateway", gateway_turn, ("req_per_s", "req/s", "req_p50_ms", "ms p50"))
    finally:
        for thing in list(gateways.values()) + list(bare.values()):
            try:
                thing.stop()
            except Exception as exc:  # noqa: BLE001 - stop the rest whatever happened
                print(f"stopping {thing.mode}: {exc}", file=sys.stderr)
        mock.stop()
        wire.install = WIRE_INSTALL
        install_mode("signed")

    keys = list(samples["off"])
    # Each round's value over the same round's "off": pairs taken minutes apart never meet.
    ratios = {m: {k: statistics.median(v / o for v, o in zip(samples[m][k], samples["off"][k])) for k in keys}
              for m in MODES}
    figures = {"rounds": args.rounds, "asks": asks, "burst_per_pair": burst, "pairs": 4, "sequential": sequential,
               "threads": 4, "per_thread": per_thread, "modes": {m: {k: statistics.median(samples[m][k]) for k in keys}
                                                   for m in MODES}, "ratios": ratios}
    print(f"\nmedian of {args.rounds} rounds (modes take turns within each round); "
          f"ratio = median over rounds of mode / off in the same round")
    print(f"  {'measure':16s} " + " ".join(f"{m:>18s}" for m in MODES))
    for k in keys:
        cells = []
        for mode in MODES:
            v = figures["modes"][mode][k]
            cells.append(f"{v:9.2f} ({ratios[mode][k]:5.3f}x)" if mode != "off" else f"{v:18.2f}")
        print(f"  {k:16s} " + " ".join(f"{c:>18s}" for c in cells))
    figures["throughput_loss_pct"] = {
        "actor_messages": (1 - ratios["signed"]["msgs_per_s"]) * 100,
        "gateway_requests": (1 - ratios["signed"]["req_per_s"]) * 100}
    print(f"throughput loss, signed vs off: actor messages {figures['throughput_loss_pct']['actor_messages']:+.1f}%, "
          f"gateway requests {figures['throughput_loss_pct']['gateway_requests']:+.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0
