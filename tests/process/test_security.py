"""The wire no stranger can use: signed frames, allow-listed unpickling, secrets kept out of sight.

Most tests run real nodes (the ``gateway`` fixture; conftest gives the whole run one cluster
key) and talk to their sockets raw, the way an attacker would: a frame is Thespian's
``<length>>`` followed by the body.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from thespian.actors import ActorExitRequest, ActorTypeDispatcher

from actors.security import wire
from actors.client import GatewayClient
from actors.ops.remote_status import cluster_status_from
from actors.settings.loader import load_config, parse_config
from actors.errors import ConfigError, InternalError, RateLimited
from actors.types import InferenceRequest
from actors.ops.procs import port_is_listening
from actors.ops.system import start_node

from conftest import RUN_MARK, TEST_KEY_LINE, OutputLines, deployment, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]
FAST_CLUSTER = {"heartbeat_s": 0.5, "failure_timeout_s": 3.0, "reregistration_s": 2}
OTHER_SECRET = "x" * 20 + "another-cluster-secret"


def keyring(text: str) -> wire.KeyRing:
    return wire.KeyRing(wire.parse_keys(text, "test"), "test")


RUN_KEYS = keyring(TEST_KEY_LINE)


@pytest.fixture(autouse=True)
def _run_keys_back():
    """Tests below install other keys in this process; every other test expects the run's."""
    yield
    wire.install(RUN_KEYS)


class Evil:
    """Unpickling this would create ``path``: what an attacker sends."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def frame(body: bytes) -> bytes:
    return b"%d>" % len(body) + body


def send_raw(port: int, body: bytes, timeout_s: float = 5.0) -> bytes:
    """Send one framed body to 127.0.0.1:port; what came back before the peer closed or acked."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
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


def log_text(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.log"
    return path.read_text() if path.exists() else ""


def thespian_log() -> str:
    path = Path(f"/tmp/{RUN_MARK}-thespian.log")
    return path.read_text(errors="replace") if path.exists() else ""


# --- the frame format, without actors --------------------------------------------------

def test_frames_round_trip_signed_and_unsigned():
    from datetime import timedelta

    from actors.core.credentials import Secret
    from actors.types import Failed

    message = (None, [InferenceRequest(model="m", messages=HI, params={"max_tokens": 3}),
                      Failed("r1", RateLimited("slow down", provider="openai", retry_after_s=2.0)),
                      timedelta(milliseconds=5), {1, 2}, frozenset({"a"}), Secret("s3cr3t"), b"bytes", 1.5])
    for ring in (RUN_KEYS, None):
        serializer = wire.WireSerializer(ring)
        body = serializer.dumps(message)
        assert body[:4] == (wire.MAGIC_SIGNED if ring else wire.MAGIC_UNSIGNED)
        assert serializer.loads(body) == message
    # Thespian's ACKs are constants it pickles itself: recognised by their bytes.
    for packet in ("ACK", "ACK+DATAERR"):
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            assert wire.WireSerializer(RUN_KEYS).loads(pickle.dumps(packet, protocol=protocol)) == packet


def test_bad_frames_are_dropped_unread_and_logged_without_contents(caplog, tmp_path):
    marker = tmp_path / "pwned"
    signed = wire.WireSerializer(RUN_KEYS)
    good = signed.dumps((None, "a message about the-payload-text"))
    tampered = bytearray(good)
    tampered[20] ^= 1
    cases = {
        "bad signature for key id 'test-run'": bytes(tampered),
        "bad signature for key id 'test-run': a wrong": wire.WireSerializer(
            keyring(f"test-run:{OTHER_SECRET}")).dumps((None, "the-payload-text")),
        "key id 'other', which this node does not accept": wire.WireSerializer(
            keyring(f"other:{OTHER_SECRET}")).dumps((None, "the-payload-text")),
        "unsigned frame": wire.WireSerializer(None).dumps((None, "the-payload-text")),
        "not a gateway frame": pickle.dumps((None, Evil(str(marker)))),
        "class not allowed: io.open": signed.dumps((None, Evil(str(marker)))),
        "truncated": good[:20],
    }
    for reason, body in cases.items():
        caplog.clear()
        fresh = wire.WireSerializer(RUN_KEYS)  # its own rate limit: every case logs
        with caplog.at_level("WARNING", logger="atomr.wire"):
            assert fresh.loads(body) == "ACK+DATAERR"
        assert reason in caplog.text, (reason, caplog.text)
        assert "the-payload-text" not in caplog.text
    assert not marker.exists()
    # A process without a secret refuses signed frames (it cannot check them) and plain pickles.
    assert wire.WireSerializer(None).loads(good) == "ACK+DATAERR"
    assert wire.WireSerializer(None).loads(pickle.dumps((None, Evil(str(marker))))) == "ACK+DATAERR"
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("builtins", "open"), ("os", "system"), ("subprocess", "Popen"), ("copyreg", "_reconstructor"),
    ("actors.ops.procs", "kill_group"), ("actors.core.credentials", "resolve"), ("actors.testing.mock_provider", "MockProvider"),
    ("actors.runtime.engine", "RemoteEngineCoreActor"), ("actors.settings.loader", "load_config"), ("actors.security.wire", "install"),
    ("thespian.actors", "ValidateSource"), ("thespian.system.messages.admin", "RegisterSourceAuthority"),
    ("thespian.system.messages.convention", "SourceHashTransferReply"), ("thespian.actors", "ActorSystem"),
])
def test_the_allow_list_refuses_what_could_run_code_even_when_signed(module, name):
    allow = wire.default_allow_list()
    assert (module, name) not in allow
    # A hand-made pickle naming that global, signed with the right key, is still refused.
    payload = b"\x80\x04\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) \
        + name.encode() + b"\x93."
    body = wire.MAGIC_SIGNED + bytes([8]) + b"test-run" + payload
    body += RUN_KEYS.signing.mac(body)
    assert wire.WireSerializer(RUN_KEYS).loads(body) == "ACK+DATAERR"


def test_an_actor_creation_request_must_name_an_actor_class():
    from thespian.system.messages.admin import PendingActor

    signed = wire.WireSerializer(RUN_KEYS)
    fine = (None, PendingActor("actors.runtime.node.NodeRegistry", None, 1, None, "atomr-node"))
    assert type(signed.loads(signed.dumps(fine))[1]) is PendingActor
    for name in ("os.fork", "http.server.test", "actors.ops.procs.kill_group", "no.such.module.Actor", "Unqualified"):
        assert signed.loads(signed.dumps((None, PendingActor(name, None, 1, None, None)))) == "ACK+DATAERR", name
    from_source = PendingActor("actors.runtime.node.NodeRegistry", None, 1, None, None, sourceHash="abc123")
    assert signed.loads(signed.dumps((None, from_source))) == "ACK+DATAERR"


def test_the_allow_list_is_what_crosses_the_wire():
    names = set(wire.default_allow_list().names())
    for needed in ("thespian.actors.ActorAddress", "thespian.system.transport.IPBase.TCPv4ActorAddress",
                   "thespian.system.messages.convention.ConventionRegister", "thespian.actors.PoisonMessage",
                   "logging.LogRecord", "datetime.timedelta", "socket.AddressFamily", "actors.runtime.protocol.Heartbeat",
                   "actors.errors.RateLimited", "actors.errors._restore", "actors.settings.schema.DeploymentConfig",
                   "actors.core.breaker.CircuitState", "actors.core.credentials.Secret"):
        assert needed in names
    # Every project class allowed is a plain value: a dataclass, an enum or a typed error.
    assert not [n for n in names if n.startswith("actors.") and ("Actor" in n.rsplit(".", 1)[1])]
    # _restore rebuilds typed errors only.
    restore = wire.default_allow_list().lookup("actors.errors", "_restore")
    with pytest.raises(wire.Refused):
        restore(InferenceRequest, {})


def test_refusal_logs_are_rate_limited_per_peer_and_reason(caplog):
    now = [0.0]
    log = wire.RefusalLog(interval_s=10, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="atomr.wire"):
        assert log.refused("10.0.0.9:4001", "bad signature", "bad signature for key id 'a'")
        for port in range(4002, 4052):  # a flood from one host, any source port
            assert not log.refused(f"10.0.0.9:{port}", "bad signature", "bad signature for key id 'a'")
        assert log.refused("10.0.0.8:4001", "bad signature", "bad signature for key id 'a'")  # another peer
        assert log.refused("10.0.0.9:4001", "unsigned frame", "unsigned frame")               # another reason
        now[0] = 10.5
        assert log.refused("10.0.0.9:4100", "bad signature", "bad signature for key id 'a'")
    lines = caplog.text.strip().splitlines()
    assert len(lines) == 4 and "(+50 more like it in the last 10s)" in lines[-1]
    assert log.total == 54


# --- keys --------------------------------------------------------------------------------

def test_key_formats_and_sources(tmp_path):
    bare = "b" * 43
    one, again = wire.parse_keys(bare, "t")[0], wire.parse_keys(f"  {bare}\n", "t")[0]
    assert one.key_id == again.key_id and one.key_id.startswith("k") and one.same_secret(again)
    keys = wire.parse_keys(f"# rotation\nnew:{'n' * 40}  # signs\nold:{'o' * 40}\n\n", "t")
    assert [k.key_id for k in keys] == ["new", "old"]
    env = {wire.ENV_SECRET: f"new:{'n' * 40}", wire.ENV_SECRET_PREVIOUS: f"old:{'o' * 40}"}
    ring = wire.load_keyring(environ=env)
    assert ring.signing.key_id == "new" and ring.key_ids == ["new", "old"]
    assert wire.load_keyring(environ={wire.ENV_SECRET: f"new:{'n' * 40},old:{'o' * 40}"}).key_ids == ["new", "old"]
    assert wire.load_keyring(environ={}) is None
    # a file: the environment's secret wins over it, the file variable over the config's file
    path = tmp_path / "cluster.key"
    path.write_text(f"f1:{'f' * 40}\n")
    path.chmod(0o600)
    assert wire.load_keyring(str(path), environ={}).key_ids == ["f1"]
    assert wire.load_keyring(str(path), environ=env).key_ids == ["new", "old"]
    other = tmp_path / "other.key"
    other.write_text(f"f2:{'g' * 40}\n")
    other.chmod(0o600)
    assert wire.load_keyring(str(path), environ={wire.ENV_SECRET_FILE: str(other)}).key_ids == ["f2"]
    # a config names it relative to itself
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"secret_file": "cluster.key"},
                                      "deployments": [{"name": "d", "model": "d", "provider": "openai",
                                                       "endpoint": "http://127.0.0.1:9/v1"}]}))
    assert load_config(config).cluster.secret_file == str(path)


@pytest.mark.parametrize("case", ["short", "mode", "previous-alone", "duplicate-id", "empty-file"])
def test_bad_keys_are_refused_without_showing_them(tmp_path, case):
    secret = "s3cr3t-" + "q" * 10
    path = tmp_path / "cluster.key"
    path.write_text(f"k1:{secret * 3}\n")
    path.chmod(0o600)
    env: dict[str, str] = {}
    if case == "short":
        env = {wire.ENV_SECRET: f"k1:{secret}"}
    elif case == "mode":
        path.chmod(0o644)
        env = {wire.ENV_SECRET_FILE: str(path)}
    elif case == "previous-alone":
        env = {wire.ENV_SECRET_PREVIOUS: f"k1:{secret * 3}"}
    elif case == "duplicate-id":
        env = {wire.ENV_SECRET: f"k1:{secret * 3} k1:{secret * 4}"}
    elif case == "empty-file":
        path.write_text("# nothing yet\n")
        env = {wire.ENV_SECRET_FILE: str(path)}
    with pytest.raises(ConfigError) as err:
        wire.load_keyring(environ=env)
    assert "s3cr3t" not in str(err.value) and "s3cr3t" not in repr(err.value)
    assert {"short": "at least 32", "mode": "chmod 600", "previous-alone": "set the current secret",
            "duplicate-id": "given twice", "empty-file": "no key"}[case] in str(err.value)


def test_secrets_stay_out_of_reprs_and_pickles():
    ring = keyring(f"k1:{'s3cr3t' * 8} k0:{'0ld5ecret' * 5}")
    for text in (repr(ring), str(ring), repr(ring.signing), str(ring.keys[1]), wire.describe(ring)):
        assert "s3cr3t" not in text and "0ld5ecret" not in text
    assert "k1" in repr(ring) and "k0" in repr(ring)
    for obj in (ring, ring.signing):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


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
    """Reports which serializer its process uses; "nested" asks a child of its own too."""

    def receiveMsg_str(self, msg, sender):
        from thespian.system.transport import TCPTransport

        serializer = TCPTransport.serializer
        me = {"pid": os.getpid(), "serializer": f"{type(serializer).__module__}.{type(serializer).__name__}",
              "key_ids": serializer.keyring.key_ids if getattr(serializer, "keyring", None) else None}
        if msg == "nested":
            self.reply_to = sender
            self.me = me
            self.child = self.createActor(WireProbe)
            self.send(self.child, "probe")
        else:
            self.send(sender, me)

    def receiveMsg_dict(self, msg, sender):
        self.send(self.reply_to, [self.me, msg])
        self.send(self.child, ActorExitRequest())


def test_every_process_of_a_node_uses_the_signed_wire(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1")])
    assert node.wire.startswith("wire: HMAC-SHA256 authenticated, signing with key id test-run")
    probe = client.asys.createActor(WireProbe)
    try:
        parent, child = client.asys.ask(probe, "nested", 10)
    finally:
        client.asys.tell(probe, ActorExitRequest())
    for seen in (parent, child):
        assert seen["serializer"] == "actors.security.wire.WireSerializer" and seen["key_ids"] == ["test-run"]
    assert len({parent["pid"], child["pid"], os.getpid()}) == 3  # forked admin -> actor -> child actor
    stream = client.stream("d1", HI, max_tokens=5)
    assert len([chunk for chunk in stream]) >= 2 and stream.result.usage.output_tokens == 5


def test_a_malicious_pickle_runs_nowhere_and_the_node_keeps_serving(gateway, mock, tmp_path):
    node, client = gateway([deployment(mock.url, "d1")])
    engine_port = client.routes("d1")[0].engine.addressDetails.sockname[1]
    ouch_before = thespian_log().count("OUCH")
    for port, where in ((node.admin_port, "admin"), (engine_port, "engine")):
        marker = tmp_path / f"pwned-{where}"
        evil = Evil(str(marker))
        bodies = {
            "plain pickle": pickle.dumps((None, evil)),                          # what Thespian would take
            "signed, not allowed": wire.WireSerializer(RUN_KEYS).dumps((None, evil)),
            "wrong key": wire.WireSerializer(keyring(f"test-run:{OTHER_SECRET}")).dumps((None, evil)),
        }
        for kind, body in bodies.items():
            reply = send_raw(port, body)
            assert b"ACK+DATAERR" in reply, (where, kind, reply)  # the sender is told, at once
            assert not marker.exists(), (where, kind)
        assert client.complete("d1", HI, max_tokens=3).text.startswith("You said: hi")
    log = wait_for(lambda: (t := log_text(tmp_path, "n1")).count("refused a frame") >= 6 and t,
                   message="six refusals in the node's log")
    for reason in ("not a gateway frame", "class not allowed: io.open", "bad signature for key id 'test-run'"):
        assert log.count(reason) == 2, (reason, log)  # once from the admin, once from the engine's process
    assert OTHER_SECRET not in log and TEST_KEY_LINE.split(":")[1] not in log and "pwned" not in log
    assert thespian_log().count("OUCH") == ouch_before  # Thespian's own traceback line is not repeated


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


def test_a_rotation_mid_way_keeps_the_cluster_whole(gateway, mock, tmp_path):
    """Leader signs with the old key and accepts the new; the member signs with the new, accepts the old."""
    new = f"k-new:{'N' * 40}"
    leader, leader_client = gateway([deployment(mock.url, "d1", workers=1)], name="n0", cluster=FAST_CLUSTER,
                                    keyring=keyring(f"{TEST_KEY_LINE} {new}"))
    port = free_port()
    env = {**os.environ, wire.ENV_SECRET: new, wire.ENV_SECRET_PREVIOUS: TEST_KEY_LINE}
    with launched(member_args(tmp_path, mock, "m1", port, leader.admin_port), env) as out:
        out.wait_for(f"serving on admin port {port}")
        out.wait_for("signing with key id k-new, also accepting test-run")
        wait_for(lambda: [m.node for m in leader_client.cluster_status(members_only=True).members] == ["m1", "n0"],
                 timeout_s=20, interval_s=0.2, message="the member to join")
        ask = subprocess.run([sys.executable, str(ROOT / "launch.py"), "ask", "--admin-port", str(port), "--model",
                              "d1", "--max-tokens", "3", "hi"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env=env)
        assert ask.returncode == 0 and ask.stdout.startswith("You said: hi"), ask.stderr
    assert "refused a frame" not in log_text(tmp_path, "n0") + log_text(tmp_path, "m1")


def test_a_client_with_the_wrong_key_is_told_so(gateway, mock):
    node, _ = gateway([deployment(mock.url, "d1", workers=1)])
    with pytest.raises(InternalError) as err:
        GatewayClient(node.admin_port, keyring=keyring(f"k-wrong:{OTHER_SECRET}"))
    assert f"the node on 127.0.0.1:{node.admin_port} did not accept this client's messages" in str(err.value)
    assert "signs with key id k-wrong" in str(err.value) and OTHER_SECRET not in str(err.value)


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


def test_loopback_without_a_secret_runs_and_says_so(tmp_path):
    port = free_port()
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["node"].update(admin_port=port, log_file=str(tmp_path / "node.log"))
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != wire.ENV_SECRET}
    with launched(["--config", str(path)], env) as out:
        out.wait_for("wire: NO cluster secret (ATOMR_CLUSTER_SECRET unset): messages are not authenticated")
        out.wait_for(f"serving on admin port {port}")
        ask = subprocess.run([sys.executable, str(ROOT / "launch.py"), "ask", "--admin-port", str(port),
                              "--max-tokens", "3", "hi"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert ask.returncode == 0 and ask.stdout.startswith("You said: hi"), ask.stderr
        # Unauthenticated, yet still allow-listed: a raw pickle runs nothing.
        marker = tmp_path / "pwned"
        assert b"ACK+DATAERR" in send_raw(port, pickle.dumps((None, Evil(str(marker)))))
        assert b"ACK+DATAERR" in send_raw(port, wire.WireSerializer(None).dumps((None, Evil(str(marker)))))
        assert not marker.exists()
    assert not port_is_listening(port)
