"""Two "hosts" for cluster tests: network namespaces joined by a veth pair, with real IPs.

Skips the test where `ip netns` is unavailable; kills every process left in either
namespace and deletes both, whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def ns_pids(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns).stdout.split() if p.isdigit()]


@contextlib.contextmanager
def two_hosts(ns_a: str, ns_b: str, veth_a: str, veth_b: str, ip_a: str, ip_b: str) -> Iterator[None]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    created = ip("netns", "add", ns_a)
    if created.returncode != 0:
        pytest.skip(f"network namespaces are not available here: {created.stderr.strip()}")
    try:
        for step in [("netns", "add", ns_b), ("link", "add", veth_a, "type", "veth", "peer", "name", veth_b),
                     ("link", "set", veth_a, "netns", ns_a), ("link", "set", veth_b, "netns", ns_b),
                     ("-n", ns_a, "addr", "add", f"{ip_a}/24", "dev", veth_a),
                     ("-n", ns_b, "addr", "add", f"{ip_b}/24", "dev", veth_b),
                     ("-n", ns_a, "link", "set", "lo", "up"), ("-n", ns_b, "link", "set", "lo", "up"),
                     ("-n", ns_a, "link", "set", veth_a, "up"), ("-n", ns_b, "link", "set", veth_b, "up")]:
            result = ip(*step)
            if result.returncode != 0:
                pytest.skip(f"could not build the veth pair ({' '.join(step)}): {result.stderr.strip()}")
        yield
    finally:
        for ns in (ns_a, ns_b):
            for pid in ns_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            ip("netns", "del", ns)
