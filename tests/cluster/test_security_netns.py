"""Issue 9's attack from another host: a peer in its own network namespace, holding the cluster key.

A node runs in namespace A (advertising a real, non-loopback address); the attacker runs
in namespace B, joined to A by a veth pair, and sends raw frames to the node's admin port
and to every actor port (found from the node's processes in /proc). Nothing it sends may
deploy, drain, stop or create anything; the node keeps serving; its log names the refusals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from actors.ops.procs import listening_ports

import netns
from conftest import OutputLines, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
TAG = f"{os.getpid() % 10000}"
NS_A, NS_B = f"atsec{TAG}a", f"atsec{TAG}b"
VETH_A, VETH_B = f"as{TAG}a", f"as{TAG}b"
SUBNET = 10 + (os.getpid() + 97) % 200
IP_A, IP_B = f"10.78.{SUBNET}.1", f"10.78.{SUBNET}.2"


@pytest.fixture(scope="module")
def two_hosts():
    with netns.two_hosts(NS_A, NS_B, VETH_A, VETH_B, IP_A, IP_B):
        yield


def _node_config(tmp_path: Path, name: str, port: int, marker: Path) -> Path:
    config = {"node": {"admin_port": port, "name": name, "log_file": str(tmp_path / f"{name}.log")},
              "mock_provider": {"port": 0},
              "deployments": [{"name": "d1", "model": "d1", "provider": "openai_compatible", "upstream_model": "mock-gpt",
                               "endpoint": "mock", "workers": 1,
                               "credentials": {"command": ["/bin/echo", "local-token"]}}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(ns: str, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, OutputLines]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(ROOT / "launch.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    return proc, OutputLines(proc)


def _served_ports(ns: str, admin_port: int) -> set[int]:
    """The node's ports another host can reach: each held by one process only (inherited sockets are
    held by many), and the admin's. Loopback-only listeners (an engine's control listener) are not."""
    held: dict[int, int] = {}
    for pid in netns.ns_pids(ns):
        for port in listening_ports(pid, reachable_from_other_hosts=True):
            held[port] = held.get(port, 0) + 1
    return {port for port, n in held.items() if n == 1} | {admin_port}


ATTACKER = r"""
import json, os, pickle, socket, sys
from thespian.actors import ActorAddress, ActorExitRequest
from thespian.system.messages.admin import PendingActor, SystemShutdown
from thespian.system.transport.IPBase import TCPv4ActorAddress
from actors.security import wire
from actors.runtime import protocol as P
from actors.settings.loader import parse_config

host, ports, marker, key_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
keys = wire.KeyRing(wire.parse_keys(open(key_file).read(), "stolen"), "stolen") if key_file != "-" else \
    wire.load_keyring()
signed = wire.WireSerializer(keys)
me = ActorAddress(TCPv4ActorAddress(os.environ["ATTACKER_IP"], 1, external=True))
deps = parse_config({"deployments": [{"name": "pwn", "model": "pwn", "provider": "openai",
                     "endpoint": "http://127.0.0.1:9/v1",
                     "credentials": {"command": ["/bin/sh", "-c", f"id > {marker}; echo tok"]}}]}, "<x>").deployments
attacks = {
    "unsigned Deploy": b"ATU1" + pickle.dumps((me, P.Deploy("x", deps)), protocol=4),
    "Deploy": signed.dumps((me, P.Deploy("x", deps))),
    "SessionInit": signed.dumps((me, P.SessionInit("pwn", "openai", deps[0].credentials))),
    "SessionRefresh": signed.dumps((me, P.SessionRefresh(0))),
    "Drain": signed.dumps((me, P.Drain(0.1))),
    "SystemShutdown": signed.dumps((me, SystemShutdown())),
    "ActorExitRequest": signed.dumps((me, ActorExitRequest())),
    "PendingActor": signed.dumps((me, PendingActor("actors.runtime.session.RemoteSessionActor", None, 1, None, None))),
    "malformed": signed.dumps(("", P.StatusRequest())),
}
replies, refused = {}, []
for port in ports:
    answers = {}
    try:
        for kind, body in attacks.items():
            reply = b""
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(b"%d>" % len(body) + body)
                try:
                    while b"ACK" not in reply:
                        chunk = sock.recv(256)
                        if not chunk:
                            break
                        reply += chunk
                except socket.timeout:
                    pass
            answers[f"{port} {kind}"] = reply.decode("latin-1")
    except ConnectionRefusedError:
        refused.append(port)   # closed since it was listed: a short-lived actor (a leader locator) exited
        continue
    replies.update(answers)
print(json.dumps({"replies": replies, "refused": refused}))
"""


def _attack(ports: set[int], marker: Path, key_file: str = "-") -> tuple[dict[str, str], list[int]]:
    out = subprocess.run(["ip", "netns", "exec", NS_B, sys.executable, "-c", ATTACKER, IP_A, json.dumps(sorted(ports)),
                          str(marker), key_file], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "ATTACKER_IP": IP_B, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    return result["replies"], result["refused"]


def _ask(port: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", NS_A, sys.executable, str(ROOT / "launch.py"), "ask", "--admin-port",
                           str(port), "--model", "d1", "--max-tokens", "3", "hi"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("mode", ["cluster secret", "host key"])
def test_a_peer_cannot_deploy_drain_or_stop_a_node(two_hosts, tmp_path, mode):
    """With the cluster key (a member gone bad) nothing but cluster messages are accepted from a peer;
    with only a host key (even a stolen copy) nothing at all is."""
    port = free_port()
    marker = tmp_path / "pwned"
    env = dict(os.environ)
    args = ["--config", str(_node_config(tmp_path, "victim", port, marker))]
    if mode == "host key":
        env.pop("ATOMR_CLUSTER_SECRET", None)
        env["ATOMR_HOST_KEY_DIR"] = str(tmp_path / "keys")
    else:
        args += ["--advertise", IP_A]
    proc, out = _launch(NS_A, args, env)
    try:
        out.wait_for(f"serving on admin port {port}")
        assert _ask(port, env).stdout.startswith("You said: hi")
        ports = _served_ports(NS_A, port)
        assert port in ports and len(ports) >= 5, ports
        replies, refused = _attack(ports, marker, str(tmp_path / "keys" / "host.key") if mode == "host key" else "-")
        assert all("ACK+DATAERR" in reply for reply in replies.values()), replies
        # On a loaded machine a short-lived actor may exit between the listing and the attack:
        # its port refuses. The node's own ports never do, and nothing that answered took a frame.
        assert port not in refused and not set(refused) & _served_ports(NS_A, port), refused
        assert len(ports) - len(refused) >= 5
        ask = _ask(port, env)  # not drained, not stopped, no actor lost
        assert ask.returncode == 0 and ask.stdout.startswith("You said: hi"), ask.stderr
        assert port in _served_ports(NS_A, port)
        expected = ("Deploy is not accepted from another host" if mode == "cluster secret"
                    else "frame from another host, but this node has no cluster secret")
        log = wait_for(lambda: expected in (t := (tmp_path / "victim.log").read_text()) and t, timeout_s=20,
                       message="the refusals in the node's log")
        assert f"refused a frame from {IP_B}:" in log and "not a signed gateway frame" in log
        assert len(replies) == 9 * (len(ports) - len(refused))
        assert "pwned" not in log and "echo tok" not in log
    finally:
        _stop(proc)
    assert not marker.exists()
