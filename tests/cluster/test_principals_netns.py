"""The table of who may send what, against a running cluster, from each principal (issue 21).

Two "hosts" (network namespaces joined by a veth pair). In namespace A a node (the leader)
runs under a small launcher of our own, which can also send frames as the node (it holds the
launch capability, like every launcher); in namespace B a member joins it. Then every message
class of the protocol (tests/protocol_samples.py) is sent to every port the leader's processes
listen on: from another host holding the cluster secret (a process in B), from this host
holding the key (a process in A), and from the node itself. Each frame is acknowledged exactly
when its sender's column of actors/security/permissions.py names its class; nothing with a
``Secret`` reaches a process that is not the node; and calls, status, membership, budgets and
spend reports still work afterwards. Drain and stop come last: the node's own, and a local
process's (which may).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from actors.ops.procs import listening_ports
from actors.security import permissions, trust

import netns
from conftest import OutputLines, fresh_period, fresh_window_s, wait_for
from protocol_samples import DESTRUCTIVE

ROOT = Path(__file__).resolve().parents[2]
TAG = f"{os.getpid() % 10000}"
NS_A, NS_B = f"atpr{TAG}a", f"atpr{TAG}b"
VETH_A, VETH_B = f"ap{TAG}a", f"ap{TAG}b"
SUBNET = 10 + (os.getpid() + 53) % 200
IP_A, IP_B = f"10.79.{SUBNET}.1", f"10.79.{SUBNET}.2"
LEADER_PORT, MEMBER_PORT = 19470, 19471
PROVIDER_KEY = "sk-the-real-provider-key-0123456789abcdef"
ROWS = [f"{m}:{n}" for m, n in permissions.TABLE]
DRAIN, SHUTDOWN = "actors.runtime.protocol.routing:Drain", "thespian.system.messages.admin:SystemShutdown"
CHILD_EXITED = "thespian.actors:ChildActorExited"

# The leader's launcher: start_node, then on each line of stdin a command; one JSON line back each.
LAUNCHER = r"""
import json, os, sys
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests"]
from actors.settings.loader import load_config
from actors.ops.system import start_node
import wire_attacker
node = start_node(load_config(sys.argv[1]), advertise=sys.argv[3], console_log=False)
print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if command["do"] == "send":
        print(json.dumps(wire_attacker.main({**command["spec"], "as_node": True})), flush=True)
    elif command["do"] == "stop":
        node.stop(kill_after_s=10)
        print(json.dumps({"stopped": True}), flush=True)
        break
"""


@pytest.fixture(scope="module")
def two_hosts():
    with netns.two_hosts(NS_A, NS_B, VETH_A, VETH_B, IP_A, IP_B):
        yield


def _config(tmp_path: Path, name: str, port: int, window_s: float, period: str) -> Path:
    config = {"node": {"admin_port": port, "name": name, "log_file": str(tmp_path / f"{name}.log"),
                       "ledger": str(tmp_path / f"{name}.db")},
              "cluster": {"heartbeat_s": 0.5, "failure_timeout_s": 3.0, "reregistration_s": 2},
              "mock_provider": {"port": 0},
              "budgets": [{"deployment": "d1", "usd": 100, "period": period}],
              "deployments": [{"name": "d1", "model": "d1", "provider": "openai_compatible", "upstream_model": "mock-gpt",
                               "endpoint": "mock", "workers": 1, "credentials": {"value": PROVIDER_KEY},
                               "limits": {"rpm": 1000, "key": "shared", "window_s": window_s}}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch_py(ns: str, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(ROOT / "launch.py"), *args],
                          capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def _attack(ns: str, spec: dict) -> dict:
    """tests/wire_attacker.py in namespace ``ns``: the run's cluster key, no capability."""
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(ROOT / "tests" / "wire_attacker.py"),
                          json.dumps(spec)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


class Launcher:
    """The leader's launcher in namespace A, and a line-by-line conversation with it."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", NS_A, sys.executable, "-c", LAUNCHER, str(config),
                                      str(ROOT), IP_A], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        self.pid = self._read(120)["pid"]

    def _read(self, timeout_s: float) -> dict:
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        assert got and got[0], f"the launcher said nothing within {timeout_s}s (exit {self.proc.poll()})"
        return json.loads(got[0])

    def ask(self, command: dict, timeout_s: float = 300) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"do": "stop"}, timeout_s=60)
            except (AssertionError, OSError, ValueError):
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _node_ports(launcher_pid: int) -> list[int]:
    """The Thespian ports the leader's processes serve: each held by one process only (inherited sockets
    are held by many), the launcher's own excepted. Loopback-only listeners (an engine's control
    listener, which speaks no Thespian and takes no table: tests/process/test_control_links_e2e.py)
    are not."""
    held: dict[int, int] = {}
    for pid in netns.ns_pids(NS_A):
        for port in listening_ports(pid, reachable_from_other_hosts=True):
            held[port] = held.get(port, 0) + 1
    own = set(listening_ports(launcher_pid))
    return sorted({p for p, n in held.items() if n == 1} - own | {LEADER_PORT})


def _expected(principal: str, row: str, port: int) -> str:
    module, name = row.split(":")
    allowed = principal in permissions.TABLE[(module, name)]
    if principal != trust.NODE:
        # The guards: a ChildActorExited about no child placed elsewhere; admins' messages at an actor.
        admin_only = (module, name) in permissions.ADMIN_ONLY or name == "PendingActorResponse"
        allowed = allowed and row != CHILD_EXITED and (not admin_only or port == LEADER_PORT)
    return "ACK" if allowed else "ACK+DATAERR"


def _check(result: dict, principal: str, ports: list[int], live: set[int]) -> None:
    """Every frame to a port that still listens was acknowledged exactly as the table says.

    On a loaded machine an engine may replace a worker that was slow to answer, or a leader locator
    end, while a pass runs: a port that went away is not counted (two at most)."""
    assert len(set(ports) - live) <= 2, (ports, live)
    wrong = {}
    for sent, reply in result["replies"].items():
        port, row = sent.split(" ", 1)
        if int(port) in live and reply != _expected(principal, row, int(port)):
            wrong[sent] = reply
    assert not wrong, (principal, wrong)
    assert {int(s.split(" ", 1)[0]) for s in result["replies"]} == set(ports)


def _cluster_of_two() -> str | None:
    status = _launch_py(NS_A, "status", "--admin-port", str(LEADER_PORT))
    return status.stdout if "cluster led by ha: 2 node(s)" in status.stdout else None


def test_every_message_class_from_every_principal_to_every_port(two_hosts, tmp_path):
    window_s, period = fresh_window_s(), fresh_period()
    launcher = Launcher(_config(tmp_path, "ha", LEADER_PORT, window_s, period))
    member = None
    try:
        member = subprocess.Popen(["ip", "netns", "exec", NS_B, sys.executable, str(ROOT / "launch.py"),
                                   "--convention", "member", "--leader", f"{IP_A}:{LEADER_PORT}", "--advertise", IP_B,
                                   "--config", str(_config(tmp_path, "hb", MEMBER_PORT, window_s, period))],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        member_out = OutputLines(member)
        member_out.wait_for(f"serving on admin port {MEMBER_PORT}")
        wait_for(_cluster_of_two, timeout_s=40, interval_s=0.5, message="the member in the cluster")
        ask = _launch_py(NS_A, "ask", "--admin-port", str(LEADER_PORT), "--model", "d1", "--max-tokens", "3", "hi")
        assert ask.returncode == 0 and ask.stdout.startswith("You said: hi"), ask.stderr
        ports = _node_ports(launcher.pid)
        assert len(ports) >= 8, ports   # admin, logger, registry, registrar, hub, breaker, session, engine, worker...
        spec = {"host": IP_A, "ports": ports, "rows": ROWS, "sentinel_port": None}

        # 1. Another host with the cluster secret, then a process of this host with the key.
        peer = _attack(NS_B, {**spec, "my_ip": IP_B})
        local = _attack(NS_A, {**spec, "host": "127.0.0.1", "my_ip": "127.0.0.1", "skip": [DRAIN, SHUTDOWN],
                               "until": ["Completed", "Routes"], "listen_s": 30.0})   # the model and the router answer
        live = set(_node_ports(launcher.pid))
        _check(peer, trust.PEER, ports, live)
        _check(local, trust.LOCAL, ports, live)
        assert peer["secrets"] == 0 and local["secrets"] == 0
        assert not [c for c in peer["received"] + local["received"] if "Session" in c or "WorkerInit" in c]
        assert "actors.runtime.protocol.routing.Routes" in local["received"]       # what they may ask is answered
        assert "actors.types.Completed" in local["received"], sorted(set(local["received"]))  # a local caller calls models

        # 2. Nothing outside their columns was acted on: the cluster works as before.
        wait_for(_cluster_of_two, timeout_s=40, interval_s=0.5, message="the member still in the cluster")
        for ns, port in ((NS_A, LEADER_PORT), (NS_B, MEMBER_PORT)):
            ask = _launch_py(ns, "ask", "--admin-port", str(port), "--model", "d1", "--max-tokens", "3", "hi")
            assert ask.returncode == 0 and ask.stdout.startswith("You said: hi"), ask.stderr
        status = _cluster_of_two()
        assert f"budget deployment=d1/{period} (approximate): $" in status, status
        assert "budget shared (approximate), cluster-wide this window: requests " in status, status
        spend = _launch_py(NS_A, "spend", "--cluster", "--config", str(tmp_path / "ha.yaml"), "--by", "deployment",
                           "--admin-port", str(LEADER_PORT))
        assert spend.returncode == 0 and "2 node(s)" in spend.stdout and "d1" in spend.stdout, spend.stderr
        log = (tmp_path / "ha.log").read_text()
        assert f"refused a frame from {IP_B}:" in log and "SessionSubscribe is not accepted from another host" in log
        assert "SessionSubscribe is not accepted from a local process" in log
        assert PROVIDER_KEY not in log

        # 3. Drain: a peer may not (above); a local process may (and is answered).
        registry = local["senders"]["actors.runtime.protocol.routing.Routes"][0]   # who answered the Route
        drained = _attack(NS_A, {**spec, "host": "127.0.0.1", "my_ip": "127.0.0.1", "ports": [registry],
                                 "rows": [DRAIN], "until": "Drained", "listen_s": 30.0})
        assert drained["replies"] == {f"{registry} {DRAIN}": "ACK"}
        assert "actors.runtime.protocol.routing.Drained" in drained["received"]
        # 4. Stop: a peer may not (above); a local process may (the member, from its own host).
        stopped = _attack(NS_B, {"host": "127.0.0.1", "my_ip": "127.0.0.1", "ports": [MEMBER_PORT],
                                 "rows": [SHUTDOWN], "listen_s": 0.5})
        assert stopped["replies"] == {f"{MEMBER_PORT} {SHUTDOWN}": "ACK"}
        member_out.wait_for("the node's admin process", timeout_s=60)     # the member's launcher sees it gone

        # 5. The node itself: its session hands it the credential; then every class is delivered.
        subscribed = launcher.ask({"do": "send", "spec": {**spec, "host": "127.0.0.1", "my_ip": "127.0.0.1",
                                                          "rows": ["actors.runtime.protocol.session:SessionSubscribe"],
                                                          "until": "SessionSnapshot", "listen_s": 30.0}})
        live = set(_node_ports(launcher.pid))
        assert {r for sent, r in subscribed["replies"].items() if int(sent.split()[0]) in live} == {"ACK"}
        assert len(set(ports) - live) <= 2, (ports, live)
        assert subscribed["secrets"] >= 1 and "actors.runtime.protocol.session.SessionSnapshot" in subscribed["received"]
        steady = sorted(set(ports) & set(_node_ports(launcher.pid)))   # the actors that lived through it all
        assert len(set(ports) - set(steady)) <= 2, (ports, steady)
        node = launcher.ask({"do": "send", "spec": {**spec, "host": "127.0.0.1", "my_ip": "127.0.0.1", "ports": steady,
                                                    "skip": [f"{m}:{n}" for m, n in DESTRUCTIVE]}})
        # Nothing the node sends is refused. Acted on, every internal message of Thespian and of the
        # gateway in turn (an engine re-initialised with nothing, a registry deployed again with
        # nothing) makes many actors exit or restart: a port that went away answers nothing ("closed").
        assert "ACK+DATAERR" not in node["replies"].values()
        after = set(_node_ports(launcher.pid))
        assert {reply for sent, reply in node["replies"].items() if int(sent.split(" ", 1)[0]) in after} <= {"ACK"}
        assert list(node["replies"].values()).count("ACK") >= len(ROWS) - len(DESTRUCTIVE)   # one port's worth at least

        # 6. And the node may stop itself, last.
        last = launcher.ask({"do": "send", "spec": {"host": "127.0.0.1", "my_ip": "127.0.0.1", "ports": [registry],
                                                    "rows": sorted(f"{m}:{n}" for m, n in DESTRUCTIVE
                                                                   if n != "SystemShutdown"), "listen_s": 0.5}})
        assert set(last["replies"].values()) == {"ACK"}, last["replies"]
        down = launcher.ask({"do": "send", "spec": {"host": "127.0.0.1", "my_ip": "127.0.0.1", "ports": [LEADER_PORT],
                                                    "rows": [SHUTDOWN], "listen_s": 0.5}})
        # Accepted; whether an admin fed every internal message of Thespian by its own launcher still
        # shuts down cleanly is Thespian's business (the launcher's stop below kills what is left).
        assert down["replies"] == {f"{LEADER_PORT} {SHUTDOWN}": "ACK"}
    finally:
        launcher.close()
        if member is not None:
            if member.poll() is None:
                member.send_signal(signal.SIGTERM)
            try:
                member.wait(60)
            except subprocess.TimeoutExpired:
                member.kill()
                member.wait(10)
    wait_for(lambda: not netns.ns_pids(NS_A) and not netns.ns_pids(NS_B), timeout_s=20,
             message="no process left in either host")
