"""Several "hosts" for cluster tests and benchmarks: network namespaces with real IPs.

``two_hosts`` joins two namespaces by a veth pair; ``hosts(n)`` joins n namespaces through a
bridge in a hub namespace (one veth per host, addresses in one /24, the hub on .254, so a
shared upstream in the hub is reachable from every host). Both skip where `ip netns` is
unavailable, and kill every process left in their namespaces and delete them, whatever the
caller did.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def ns_pids(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns).stdout.split() if p.isdigit()]


@contextlib.contextmanager
def _namespaces(names: list[str], steps: list[tuple[str, ...]], what: str) -> Iterator[None]:
    """Create ``names``, run the `ip` ``steps``; on the way out kill what runs in them and delete them."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    created = ip("netns", "add", names[0])
    if created.returncode != 0:
        pytest.skip(f"network namespaces are not available here: {created.stderr.strip()}")
    try:
        for step in [("netns", "add", ns) for ns in names[1:]] + steps:
            result = ip(*step)
            if result.returncode != 0:
                pytest.skip(f"could not build {what} ({' '.join(step)}): {result.stderr.strip()}")
        yield
    finally:
        for ns in names:
            for pid in ns_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            ip("netns", "del", ns)


@contextlib.contextmanager
def two_hosts(ns_a: str, ns_b: str, veth_a: str, veth_b: str, ip_a: str, ip_b: str) -> Iterator[None]:
    steps = [("link", "add", veth_a, "type", "veth", "peer", "name", veth_b),
             ("link", "set", veth_a, "netns", ns_a), ("link", "set", veth_b, "netns", ns_b),
             ("-n", ns_a, "addr", "add", f"{ip_a}/24", "dev", veth_a),
             ("-n", ns_b, "addr", "add", f"{ip_b}/24", "dev", veth_b),
             ("-n", ns_a, "link", "set", "lo", "up"), ("-n", ns_b, "link", "set", "lo", "up"),
             ("-n", ns_a, "link", "set", veth_a, "up"), ("-n", ns_b, "link", "set", veth_b, "up")]
    with _namespaces([ns_a, ns_b], steps, "the veth pair"):
        yield


@dataclass(frozen=True)
class Hosts:
    namespaces: list[str]   # host i runs in namespaces[i] ...
    ips: list[str]          # ... with address ips[i] on its eth0
    hub: str                # the hub namespace, holding the bridge ...
    hub_ip: str             # ... with this address on it


@contextlib.contextmanager
def hosts(n: int, prefix: str, subnet: str) -> Iterator[Hosts]:
    """``n`` hosts ``{prefix}0``.. on ``{subnet}.1``.. (``subnet`` is three octets, e.g. ``10.84.7``),
    bridged in the hub namespace ``{prefix}h`` at ``{subnet}.254``. Interface names live inside
    the namespaces (``br0``, ``v{i}``, ``eth0``), so concurrent users only need distinct prefixes."""
    if not 1 <= n <= 253:
        raise ValueError(f"hosts: n must be 1..253, not {n}")
    names, hub = [f"{prefix}{i}" for i in range(n)], f"{prefix}h"
    made = Hosts(names, [f"{subnet}.{i + 1}" for i in range(n)], hub, f"{subnet}.254")
    steps: list[tuple[str, ...]] = [("-n", hub, "link", "add", "br0", "type", "bridge"),
                                    ("-n", hub, "addr", "add", f"{made.hub_ip}/24", "dev", "br0"),
                                    ("-n", hub, "link", "set", "lo", "up"), ("-n", hub, "link", "set", "br0", "up")]
    for i, (ns, address) in enumerate(zip(names, made.ips)):
        steps += [("-n", hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns),
                  ("-n", hub, "link", "set", f"v{i}", "master", "br0"), ("-n", hub, "link", "set", f"v{i}", "up"),
                  ("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"),
                  ("-n", ns, "link", "set", "lo", "up"), ("-n", ns, "link", "set", "eth0", "up")]
    with _namespaces([hub, *names], steps, f"the bridge of {n} hosts"):
        yield made
