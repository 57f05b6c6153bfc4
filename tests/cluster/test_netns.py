"""Leader and member on two "hosts": network namespaces joined by a veth pair, real non-loopback IPs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import netns
from conftest import OutputLines, free_port, fresh_window_s, wait_for

ROOT = Path(__file__).resolve().parents[2]
TAG = f"{os.getpid() % 10000}"
NS_A, NS_B = f"atomr{TAG}a", f"atomr{TAG}b"
VETH_A, VETH_B = f"at{TAG}a", f"at{TAG}b"
SUBNET = 10 + os.getpid() % 200
IP_A, IP_B = f"10.77.{SUBNET}.1", f"10.77.{SUBNET}.2"


@pytest.fixture
def two_hosts():
    with netns.two_hosts(NS_A, NS_B, VETH_A, VETH_B, IP_A, IP_B):
        yield


def _config(tmp_path: Path, name: str, port: int, window_s: float = 60.0) -> Path:
    config = {"node": {"admin_port": port, "name": name, "log_file": str(tmp_path / f"{name}.log")},
              "cluster": {"heartbeat_s": 0.5, "failure_timeout_s": 3.0, "reregistration_s": 2},
              "mock_provider": {"port": 0},
              "deployments": [{"name": "d1", "model": "d1", "provider": "openai", "upstream_model": "mock-gpt",
                               "endpoint": "mock", "workers": 1, "limits": {"rpm": 1000, "key": "shared", "window_s": window_s}}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _in(ns: str, *args: str, **kw) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, str(ROOT / "launch.py"), *args]


def _start(ns: str, *args: str) -> tuple[subprocess.Popen, OutputLines]:
    proc = subprocess.Popen(_in(ns, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    return proc, OutputLines(proc)


def test_leader_and_member_on_two_hosts(two_hosts, tmp_path):
    leader_port, member_port = free_port(), free_port()
    window_s = fresh_window_s()   # the two asks and the status below fall in one window
    leader, leader_out = _start(NS_A, "--convention", "leader", "--config", str(_config(tmp_path, "ha", leader_port, window_s)),
                                "--advertise", IP_A)
    member = None
    try:
        leader_out.wait_for(f"serving on admin port {leader_port}")
        member, member_out = _start(NS_B, "--convention", "member", "--leader", f"{IP_A}:{leader_port}",
                                    "--config", str(_config(tmp_path, "hb", member_port, window_s)), "--advertise", IP_B)
        member_out.wait_for(f"serving on admin port {member_port}")
        for ns, port in ((NS_A, leader_port), (NS_B, member_port)):
            ask = subprocess.run(_in(ns, "ask", "--admin-port", str(port), "--model", "d1", "--max-tokens", "3", "hi"),
                                 capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert ask.returncode == 0 and ask.stdout.startswith("You said: hi"), ask.stderr

        # From the member's host, through a short-lived admin that joins the convention remotely.
        def cluster_of_two():
            status = subprocess.run(_in(NS_B, "status", "--leader", f"{IP_A}:{leader_port}", "--advertise", IP_B),
                                    capture_output=True, text=True, timeout=60, cwd=ROOT)
            return status.stdout if "cluster led by ha: 2 node(s)" in status.stdout else None
        out = wait_for(cluster_of_two, timeout_s=30, interval_s=0.5, message="both nodes in the status")
        assert f"- ha (leader) at {IP_A}" in out, out
        assert f"- hb at {IP_B}" in out, out  # real, non-loopback addresses
        assert "budget shared (approximate), cluster-wide this window: requests 2/1000" in out
    finally:
        for proc in (member, leader):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (member, leader):
            if proc is not None:
                try:
                    assert proc.wait(timeout=60) == 0
                finally:
                    if proc.poll() is None:
                        proc.kill()
    wait_for(lambda: not netns.ns_pids(NS_A) and not netns.ns_pids(NS_B), timeout_s=15, message="no process left in either host")
