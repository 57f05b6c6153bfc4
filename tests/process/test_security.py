"""The wire no stranger can use, against real nodes: signed frames, trust by peer, the launch capability.

The tests talk to a node's sockets raw, the way an attacker would (a frame is Thespian's
``<length>>`` followed by the body), to the admin port and to every actor port of the node,
found from its process group in /proc. The pure parts (frame format, allow-list, peer
table, keys) are in tests/unit/test_wire.py; peers on another host in
tests/cluster/test_security_netns.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from thespian.actors import ActorAddress, ActorExitRequest, ActorTypeDispatcher
from thespian.system.transport.IPBase import TCPv4ActorAddress

from actors.security import wire
from actors.ops.remote_status import cluster_status_from
from actors.settings.loader import parse_config
from actors.errors import ConfigError
from actors.runtime import protocol as P
from actors.ops.procs import descriptors, listening_ports, pids_in_group, port_is_listening
from actors.ops.system import start_node

from conftest import RUN_MARK, TEST_KEY_LINE, OutputLines, deployment, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]
FAST_CLUSTER = {"heartbeat_s": 0.5, "failure_timeout_s": 3.0, "reregistration_s": 2}
OTHER_SECRET = "x" * 20 + "another-cluster-secret"


def keyring(text: str) -> wire.KeyRing:
    return wire.KeyRing(wire.parse_keys(text, "test"), "test")


RUN_KEYS = keyring(TEST_KEY_LINE)
# Frames signed with the run's cluster key, as a local key holder signs them: without the node tag
# (this test process launches the nodes, so its own serializer tags its frames as theirs).
SIGNED = wire.WireSerializer(RUN_KEYS, node_key=lambda: None)
SENDER = ActorAddress(TCPv4ActorAddress("127.0.0.1", 1, external=True))


class Evil:
    """Unpickling this would create ``path``: what an attacker sends."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def frame(body: bytes) -> bytes:
    return b"%d>" % len(body) + body


def send_raw(port: int, body: bytes, timeout_s: float = 5.0, host: str = "127.0.0.1") -> bytes:
    """Send one framed body to host:port; what came back before the peer closed or acked."""
    reply = b""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(frame(body))
        try:
            while b"ACK" not in reply:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
        except socket.timeout:
            pass
    return reply


def node_ports(pgid: int, admin_port: int) -> set[int]:
    """Every TCP port the node's processes serve: the admin's and every actor's.

    An actor's own port is held by that actor alone: Thespian closes a parent actor's socket in
    its children, and the launcher's sockets are not inherited (test_the_node_holds_none_of_...).
    """
    held: dict[int, int] = {}
    for pid in pids_in_group(pgid):
        for port in listening_ports(pid):
            held[port] = held.get(port, 0) + 1
    return {port for port, n in held.items() if n == 1} | {admin_port}


def attack_every_port(node, bodies: dict[str, bytes]) -> tuple[dict[tuple[int, str], bytes], set[int]]:
    """Each body to each of the node's ports: the replies, and the ports that still listen afterwards.

    A node that has just started may still have its short-lived leader locator (it exits two
    seconds after answering): a port that went away meanwhile answers nothing, and is not counted."""
    ports = node_ports(node.pgid, node.admin_port)
    replies = {}
    for port in sorted(ports):
        for kind, body in bodies.items():
            try:
                replies[(port, kind)] = send_raw(port, body)
            except ConnectionRefusedError:
                replies[(port, kind)] = b"(gone)"
    live = node_ports(node.pgid, node.admin_port)
    assert len(ports - live) <= 1, (ports, live)
    return {k: v for k, v in replies.items() if k[0] in live}, ports & live


def refused_everywhere(replies: dict[tuple[int, str], bytes], client) -> None:
    """Every Thespian port answered ACK+DATAERR; the engine's control listener, which speaks no
    Thespian, sent its greeting and nothing more, and closed each connection (docs/security.md,
    "The control links")."""
    (engine,) = client.status().engines
    control = engine.control["port"]
    assert any(port == control for port, _ in replies), "the control listener was attacked too"
    for (port, kind), reply in replies.items():
        assert (greeting_only(reply, client) if port == control else b"ACK+DATAERR" in reply), (port, kind, reply)
    kinds = {kind for _, kind in replies}
    assert client.status().engines[0].control["refused"] == len(kinds)


def greeting_only(reply: bytes, client) -> bool:
    """``reply`` is nothing, or one whole frame: the engine's LinkHello naming it."""
    if not reply:
        return True
    (length,) = struct.unpack(">I", reply[:4])
    if len(reply) != 4 + length:
        return False
    envelope = wire.current().loads(reply[4:], ("127.0.0.1", 0))
    (entry,) = client.routes("d1", refresh=True)
    return isinstance(envelope, tuple) and isinstance(envelope[1], P.LinkHello) and envelope[1].engine == entry.engine


def log_text(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.log"
    return path.read_text() if path.exists() else ""


def thespian_log() -> str:
    path = Path(f"/tmp/{RUN_MARK}-thespian.log")
    return path.read_text(errors="replace") if path.exists() else ""


def attack_deployment(marker: Path) -> list:
    """A deployment whose credential command writes ``marker``: what issue 9's attacker sent."""
    config = parse_config({"deployments": [{
        "name": "pwn", "model": "pwn", "provider": "openai", "endpoint": "http://127.0.0.1:9/v1",
        "credentials": {"command": ["/bin/sh", "-c", f"id > {marker}; echo tok"]}}]}, "<attacker>")
    return config.deployments


def test_launch_secret_writes_a_private_key_file(tmp_path):
    out = tmp_path / "cluster.key"
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "secret", "--key-id", "2026-02", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert wire.load_keyring(str(out), environ={}).key_ids == ["2026-02"]
    assert out.read_text().split("\n")[1].split(":")[1] not in proc.stdout  # the secret is not echoed
    again = subprocess.run([sys.executable, str(ROOT / "launch.py"), "secret", "--out", str(out)],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert again.returncode == 2 and "exists already" in again.stderr
    ids = {subprocess.run([sys.executable, str(ROOT / "launch.py"), "secret"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT).stdout.split(":")[0] for _ in range(2)}
    assert len(ids) == 2, ids  # two keys made the same day: two ids


# --- real nodes --------------------------------------------------------------------------

@contextlib.contextmanager
def launched(args: list[str], env: dict[str, str]):
    """``launch.py ARGS`` in the background with its output readable; SIGTERM at the end, exit 0."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    try:
        yield OutputLines(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def member_args(tmp_path: Path, mock, name: str, port: int, leader_port: int) -> list[str]:
    config = {"node": {"admin_port": port, "name": name, "log_file": str(tmp_path / f"{name}.log")},
              "cluster": FAST_CLUSTER, "deployments": [deployment(mock.url, "d1", workers=1)]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--convention", "member", "--leader", f"127.0.0.1:{leader_port}", "--config", str(path)]


class WireProbe(ActorTypeDispatcher):
    """Reports which serializer its process uses; "nested" asks a child of its own too.

    It speaks the protocol's own messages (a StatusRequest in, a NodeStatus out): the node's
    processes accept nothing else (docs/security.md, the table)."""

    def receiveMsg_StatusRequest(self, msg, sender):
        from thespian.system.transport import TCPTransport

        serializer = TCPTransport.serializer
        me = {"pid": os.getpid(), "serializer": f"{type(serializer).__module__}.{type(serializer).__name__}",
              "key_ids": serializer.keyring.key_ids if getattr(serializer, "keyring", None) else None}
        if msg.token == "nested":
            self.reply_to = sender
            self.me = me
            self.child = self.createActor(WireProbe)
            self.send(self.child, P.StatusRequest("probe"))
        else:
            self.send(sender, P.NodeStatus(json.dumps(me), 0.0, [], [], []))

    def receiveMsg_NodeStatus(self, msg, sender):
        self.send(self.reply_to, P.NodeStatus(json.dumps([self.me, json.loads(msg.node)]), 0.0, [], [], []))
        self.send(self.child, ActorExitRequest())


def test_every_process_of_a_node_uses_the_signed_wire(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1")])
    assert node.wire.startswith("wire: HMAC-SHA256 authenticated, signing with key id test-run")
    probe = client.asys.createActor(WireProbe)
    try:
        parent, child = json.loads(client.asys.ask(probe, P.StatusRequest("nested"), 10).node)
    finally:
        client.asys.tell(probe, ActorExitRequest())
    for seen in (parent, child):
        assert seen["serializer"] == "actors.security.serializer.WireSerializer" and seen["key_ids"] == ["test-run"]
    assert len({parent["pid"], child["pid"], os.getpid()}) == 3  # forked admin -> actor -> child actor
    stream = client.stream("d1", HI, max_tokens=5)
    assert [chunk for chunk in stream] and stream.result.usage.output_tokens == 5


def test_a_malicious_pickle_runs_nowhere_and_the_node_keeps_serving(gateway, mock, tmp_path):
    node, client = gateway([deployment(mock.url, "d1")])
    engine_port = client.routes("d1")[0].engine.addressDetails.sockname[1]
    ouch_before = thespian_log().count("OUCH")
    for port, where in ((node.admin_port, "admin"), (engine_port, "engine")):
        marker = tmp_path / f"pwned-{where}"
        evil = Evil(str(marker))
        bodies = {
            "plain pickle": pickle.dumps((None, evil)),                          # what Thespian would take
            "signed, not allowed": SIGNED.dumps((SENDER, evil)),
            "wrong key": wire.WireSerializer(keyring(f"test-run:{OTHER_SECRET}"), node_key=lambda: None).dumps(
                (SENDER, evil)),
        }
        for kind, body in bodies.items():
            reply = send_raw(port, body)
            assert b"ACK+DATAERR" in reply, (where, kind, reply)  # the sender is told, at once
            assert not marker.exists(), (where, kind)
        assert client.complete("d1", HI, max_tokens=3).text.startswith("You said: hi")
    log = wait_for(lambda: (t := log_text(tmp_path, "n1")).count("refused a frame") >= 6 and t,
                   message="six refusals in the node's log")
    for reason in ("not a signed gateway frame", "class not allowed: io.open", "bad signature for key id 'test-run'"):
        assert log.count(reason) == 2, (reason, log)  # once from the admin, once from the engine's process
    assert OTHER_SECRET not in log and TEST_KEY_LINE.split(":")[1] not in log and "pwned" not in log
    assert thespian_log().count("OUCH") == ouch_before  # Thespian's own traceback line is not repeated


def test_the_node_holds_none_of_the_launchers_descriptors(gateway, mock, tmp_path):
    """The admin and every actor are forked from the program that calls start_node: none of them
    may hold what that program had open (a listening socket, a pipe, a file)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    launcher_file = open(tmp_path / "launcher-only", "w")
    try:
        mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in (listener.fileno(), read_end, write_end,
                                                               launcher_file.fileno())}
        node, client = gateway([deployment(mock.url, "d1")])
        assert client.complete("d1", HI, max_tokens=3).text.startswith("You said: hi")
        held = {pid: descriptors(pid) & mine for pid in pids_in_group(node.pgid)}
        assert len(held) >= 5 and not any(held.values()), held   # admin, logger, registry, engine, worker...
        # What holding them did: the launcher's closed socket stayed bound, and its pipe never ended.
        listener.close()
        assert not port_is_listening(port)
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 1) == b""   # the end of the pipe: no node process holds its write end
    finally:
        listener.close()
        launcher_file.close()
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


def test_the_remote_deploy_attack_runs_no_command_on_any_port(gateway, mock, tmp_path):
    """Issue 9: an allow-listed Deploy (and SessionInit) carrying a command credential, unsigned and
    signed with the cluster key, from loopback, to the admin port and to every actor port."""
    node, client = gateway([deployment(mock.url, "d1", credentials={"value": "sk-local"})])
    marker = tmp_path / "pwned"
    deployments = attack_deployment(marker)
    attacks = {
        "unsigned Deploy": b"ATU1" + pickle.dumps((SENDER, P.Deploy("n1", deployments)), protocol=4),
        "signed Deploy": SIGNED.dumps((SENDER, P.Deploy("n1", deployments))),
        "signed Deploy, a guessed capability": SIGNED.dumps((SENDER, P.Deploy("n1", deployments, capability="0" * 64))),
        "signed SessionInit": SIGNED.dumps((SENDER, P.SessionInit("pwn", "openai", deployments[0].credentials))),
    }
    replies, ports = attack_every_port(node, attacks)
    assert node.admin_port in ports and len(ports) >= 6, ports  # admin, logger, registry, engine, workers, ...
    refused_everywhere(replies, client)
    assert client.complete("d1", HI, max_tokens=3).text.startswith("You said: hi")  # still serving
    assert [d.name for d in node.config.deployments] == ["d1"]
    assert {r.deployment for r in client.routes("pwn", refresh=True)} == set()
    local = "is not accepted from a local process that is not one of this node's (only this node's own processes"
    log = wait_for(lambda: (t := log_text(tmp_path, "n1")).count(local) >= 2 * (len(ports) - 1) and t,
                   timeout_s=20, message="every port's refusals in the node's log")
    assert f"Deploy {local}" in log and f"SessionInit {local}" in log
    assert "not a signed gateway frame" in log
    assert not marker.exists()


MALFORMED = {
    "empty sender": ("", P.StatusRequest()),
    "no sender": (None, P.StatusRequest()),
    "sender is a number": (0, P.StatusRequest()),
    "three fields": (SENDER, P.StatusRequest(), "more"),
    "one field": (SENDER,),
    "a list": [SENDER, P.StatusRequest()],
    "a bare message": P.StatusRequest(),
    "a bare string": "hello",
}


def test_malformed_frames_are_refused_on_every_port_and_the_node_serves(gateway, mock, tmp_path):
    """Issue 17 item 4: a frame with an empty sender used to kill whichever actor received it."""
    node, client = gateway([deployment(mock.url, "d1", workers=2)])
    before = client.status()
    replies, ports = attack_every_port(node, {kind: SIGNED.dumps(envelope) for kind, envelope in MALFORMED.items()})
    refused_everywhere(replies, client)
    assert client.complete("d1", HI, max_tokens=3).text.startswith("You said: hi")
    after = client.status()
    assert [(e.deployment, e.workers) for e in after.engines] == [(e.deployment, e.workers) for e in before.engines]
    # No long-lived actor died: the admin, the registry and the engine still listen (locators come and go).
    critical = {node.admin_port, node.registry.addressDetails.sockname[1],
                client.routes("d1", refresh=True)[0].engine.addressDetails.sockname[1]}
    assert critical <= ports and critical <= node_ports(node.pgid, node.admin_port)
    log = wait_for(lambda: "malformed envelope" in (t := log_text(tmp_path, "n1")) and t,
                   message="the refusals in the node's log")
    assert "the sender is str, not a Thespian TCP address" in log


def attack_from(spec: dict, env: dict | None = None) -> dict:
    """tests/wire_attacker.py in its own process: the run's key, no capability (a local key holder)."""
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "wire_attacker.py"), json.dumps(spec)],
                         capture_output=True, text=True, timeout=180, cwd=ROOT, env=env or dict(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


CREDENTIAL_ROWS = ["actors.runtime.protocol.session:SessionSubscribe", "actors.runtime.protocol.session:SessionRefresh",
                   "actors.runtime.protocol.session:SessionInit", "actors.runtime.protocol.bringup:SessionInit",
                   "actors.runtime.protocol.bringup:WorkerInit", "actors.runtime.protocol.work:Dispatch",
                   "thespian.actors:ActorExitRequest", "thespian.actors:WakeupMessage"]


def test_a_local_key_holder_gets_no_credential_from_any_port_but_may_call_drain_and_stop(gateway, mock, tmp_path):
    """Issue 21: SessionSubscribe(subscriber=me, wants_secret=True), signed with the key every local
    application holds, sent to every port of a node, used to come back with the provider's key."""
    node, client = gateway([deployment(mock.url, "d1", credentials={"value": "sk-the-real-provider-key"})])
    ports = sorted(node_ports(node.pgid, node.admin_port))
    rows = [r for r in CREDENTIAL_ROWS if r != "actors.runtime.protocol.session:SessionInit"]
    result = attack_from({"host": "127.0.0.1", "ports": ports, "my_ip": "127.0.0.1", "rows": rows,
                          "sentinel_port": node.registry.addressDetails.sockname[1]})
    # Less a leader locator that ended meanwhile, if any. A port is counted where one process holds
    # it: a process forked just then holds its parent's for a moment, so the count is waited for.
    def settled() -> set[int] | None:
        now = node_ports(node.pgid, node.admin_port)
        return now if len(set(ports) - now) <= 1 else None
    live = wait_for(settled, message="the node's ports, each held by one process")
    assert len(result["replies"]) == len(rows) * len(ports)
    control = client.status().engines[0].control["port"]   # speaks no Thespian: closes instead
    assert {r for sent, r in result["replies"].items() if int(sent.split()[0]) in live - {control}} == {"ACK+DATAERR"}
    assert {r for sent, r in result["replies"].items() if int(sent.split()[0]) == control} == {"closed"}
    assert result["secrets"] == 0 and "actors.runtime.protocol.session.SessionSnapshot" not in result["received"]
    assert "actors.runtime.protocol.routing.NodeStatus" in result["received"]  # what a local caller may ask
    assert client.complete("d1", HI, max_tokens=3).text.startswith("You said: hi")  # nothing was acted on
    log = wait_for(lambda: "SessionSubscribe is not accepted from a local process" in (t := log_text(tmp_path, "n1"))
                   and t, message="the refusal in the node's log")
    assert "sk-the-real-provider-key" not in log
    # What a local caller may do: call a model, drain, stop (launch.py ask, status, stop).
    script = (f"from actors.client import GatewayClient\nfrom actors.runtime.protocol import Drain, Drained\n"
              f"with GatewayClient({node.admin_port}) as c:\n"
              f"    print(c.complete('d1', [{{'role': 'user', 'content': 'hi'}}], max_tokens=3).text)\n"
              f"    print(type(c.asys.ask(c._registry, Drain(1.0), 10)).__name__)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.split("\n")[:2] == ["You said: hi", "Drained"], out.stderr[-2000:]
    stop = subprocess.run([sys.executable, str(ROOT / "launch.py"), "stop", "--admin-port", str(node.admin_port)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stderr
    assert wait_for(lambda: not pids_in_group(node.pgid), timeout_s=30, message="the node to stop")


def test_a_member_with_the_wrong_secret_cannot_join_and_the_leader_says_why(gateway, mock, tmp_path):
    leader, leader_client = gateway([deployment(mock.url, "d1", workers=1)], name="n0", cluster=FAST_CLUSTER)
    port = free_port()
    env = {**os.environ, wire.ENV_SECRET: f"test-run:{OTHER_SECRET}"}  # same key id, another secret
    with launched(member_args(tmp_path, mock, "intruder", port, leader.admin_port), env) as out:
        out.wait_for(f"serving on admin port {port}")
        out.wait_for("signing with key id test-run")
        # It keeps registering (every 2 s here); it never becomes a member.
        wait_for(lambda: "bad signature for key id 'test-run'" in log_text(tmp_path, "n0"), timeout_s=15,
                 message="the leader to log the refused registration")
        # Through another refused attempt (logged at most every 10 s), it is never a member.
        refused = log_text(tmp_path, "n0").count("bad signature for key id 'test-run'")

        def refused_again_and_still_out():
            members = [m.node for m in leader_client.cluster_status(members_only=True).members]
            assert members == ["n0"], members
            return log_text(tmp_path, "n0").count("bad signature for key id 'test-run'") >= refused + 1
        wait_for(refused_again_and_still_out, timeout_s=30, interval_s=0.2, message="another refused attempt")
        assert leader_client.complete("d1", HI, max_tokens=2).text
    leader_log = log_text(tmp_path, "n0")
    assert "refused a frame from 127.0.0.1:" in leader_log
    member_log = log_text(tmp_path, "intruder")
    assert f"the convention leader at ActorAddr-(T|:{leader.admin_port}) refused this node's " \
           "registration: it does not accept this node's cluster key (this node signs with key id test-run)" \
           in member_log, member_log
    assert OTHER_SECRET not in leader_log and OTHER_SECRET not in member_log
    assert not port_is_listening(port)


def test_a_rotation_mid_way_keeps_the_cluster_whole(mock, tmp_path):
    """Leader signs with the old key and accepts the new; the member signs with the new, accepts the old."""
    new = f"k-new:{'N' * 40}"
    leader_port, port = free_port(), free_port()
    leader_cfg = {"node": {"admin_port": leader_port, "name": "n0", "log_file": str(tmp_path / "n0.log")},
                  "cluster": FAST_CLUSTER, "deployments": [deployment(mock.url, "d1", workers=1)]}
    (tmp_path / "n0.yaml").write_text(yaml.safe_dump(leader_cfg))
    leader_env = {**os.environ, wire.ENV_SECRET: f"{TEST_KEY_LINE} {new}"}
    env = {**os.environ, wire.ENV_SECRET: new, wire.ENV_SECRET_PREVIOUS: TEST_KEY_LINE}
    with launched(["--config", str(tmp_path / "n0.yaml")], leader_env) as leader_out:
        leader_out.wait_for(f"serving on admin port {leader_port}")
        with launched(member_args(tmp_path, mock, "m1", port, leader_port), env) as out:
            out.wait_for(f"serving on admin port {port}")
            out.wait_for("signing with key id k-new, also accepting test-run")

            def joined():
                status = subprocess.run([sys.executable, str(ROOT / "launch.py"), "status", "--admin-port", str(port)],
                                        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
                return ": 2 node(s)" in status.stdout
            wait_for(joined, timeout_s=30, interval_s=0.5, message="the member to join")
            ask = subprocess.run([sys.executable, str(ROOT / "launch.py"), "ask", "--admin-port", str(port), "--model",
                                  "d1", "--max-tokens", "3", "hi"], capture_output=True, text=True, timeout=60,
                                 cwd=ROOT, env=env)
            assert ask.returncode == 0 and ask.stdout.startswith("You said: hi"), ask.stderr
    assert "refused a frame" not in log_text(tmp_path, "n0") + log_text(tmp_path, "m1")


def test_a_client_with_the_wrong_key_is_told_so(gateway, mock):
    node, _ = gateway([deployment(mock.url, "d1", workers=1)])
    script = (f"from actors.client import GatewayClient\n"
              f"try:\n    GatewayClient({node.admin_port})\nexcept Exception as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90, cwd=ROOT,
                         env={**os.environ, wire.ENV_SECRET: f"k-wrong:{OTHER_SECRET}"})
    assert f"the node on 127.0.0.1:{node.admin_port} did not accept this client's messages" in out.stdout, out
    assert "signs with key id k-wrong" in out.stdout and OTHER_SECRET not in out.stdout


def test_one_process_cannot_switch_keys(gateway, mock):
    gateway([deployment(mock.url, "d1", workers=1)])  # this process now signs with the run's key
    with pytest.raises(ConfigError, match="it cannot switch to 'k-other'"):
        wire.install(keyring(f"k-other:{OTHER_SECRET}"))
    assert wire.current().keyring == RUN_KEYS


# --- without a secret ----------------------------------------------------------------------

def test_without_a_secret_a_non_loopback_convention_is_refused(tmp_path):
    port = free_port()
    config = parse_config({"node": {"admin_port": port, "name": "lonely"},
                           "deployments": [{"name": "d1", "model": "d1", "provider": "openai",
                                            "endpoint": "http://127.0.0.1:9/v1"}]}, "<test>")
    # 192.0.2.0/24 is TEST-NET-1: the check comes before anything is sent anywhere.
    for kw, shown in (({"advertise": "192.0.2.10"}, "advertised address 192.0.2.10"),
                      ({"leader": "192.0.2.10:1900"}, "leader 192.0.2.10"),
                      ({"leader": "gateway-a.internal:1900"}, "leader gateway-a.internal")):
        with pytest.raises(ConfigError) as err:
            start_node(config, keyring=None, **kw)
        message = str(err.value)
        assert message.startswith("cluster.secret_file: no cluster secret") and shown in message
        assert "this host's own key admits no other host" in message
        assert "ATOMR_CLUSTER_SECRET" in message and "python launch.py secret" in message
    with pytest.raises(ConfigError, match="no cluster secret: a status client"):
        cluster_status_from("192.0.2.10:1900", keyring=None)
    assert not port_is_listening(port)
    env = {k: v for k, v in os.environ.items() if k != wire.ENV_SECRET}
    config_path = tmp_path / "member.yaml"
    config_path.write_text(yaml.safe_dump({"node": {"admin_port": port},
                                           "deployments": [{"name": "d1", "model": "d1", "provider": "openai",
                                                            "endpoint": "http://127.0.0.1:9/v1"}]}))
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--convention", "member", "--leader",
                           "192.0.2.10:1900", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 2
    assert "configuration error: cluster.secret_file: no cluster secret: node node-" in proc.stderr
    assert "Set ATOMR_CLUSTER_SECRET" in proc.stderr
    assert not port_is_listening(port)


def test_without_a_secret_a_node_uses_a_host_key_that_local_clients_find(tmp_path):
    port = free_port()
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["node"].update(admin_port=port, log_file=str(tmp_path / "node.log"))
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    key_dir = tmp_path / "keys"
    env = {**{k: v for k, v in os.environ.items() if k != wire.ENV_SECRET}, wire.ENV_HOST_KEY_DIR: str(key_dir)}
    with launched(["--config", str(path)], env) as out:
        out.wait_for(f"wire: HMAC-SHA256 authenticated with this host's key (host key {key_dir}/host.key)")
        assert stat.S_IMODE((key_dir / "host.key").stat().st_mode) == 0o600
        ask = subprocess.run([sys.executable, str(ROOT / "launch.py"), "ask", "--admin-port", str(port),
                              "--max-tokens", "3", "hi"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert ask.returncode == 0 and ask.stdout.startswith("You said: hi"), ask.stderr
        # The run's cluster key is not this host's key: refused. So is the old unsigned format.
        marker = tmp_path / "pwned"
        assert b"ACK+DATAERR" in send_raw(port, SIGNED.dumps((SENDER, P.StatusRequest())))
        assert b"ACK+DATAERR" in send_raw(port, b"ATU1" + pickle.dumps((None, Evil(str(marker)))))
        assert not marker.exists()
    assert not port_is_listening(port)
