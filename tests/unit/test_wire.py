"""The wire's pure parts: frame format, allow-list, trust by peer, the launch capability, envelope checks.

Who may send what (the table, the node tag) is in tests/unit/test_permissions.py.

No sockets: frames are built and read in-process, and the peer of each frame is given
explicitly (the TCP peer Thespian's socket would report).
"""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from thespian.actors import ActorAddress
from thespian.system.messages.admin import PendingActor
from thespian.system.transport.IPBase import TCPv4ActorAddress

from actors.errors import ConfigError, RateLimited
from actors.runtime import protocol as P
from actors.runtime.watchdog import WatchLauncher
from actors.security import trust, wire
from actors.types import Failed, InferenceRequest

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]
OTHER_SECRET = "x" * 20 + "another-cluster-secret"
LOCAL_PEER = ("127.0.0.1", 40001)
REMOTE_PEER = ("10.9.9.9", 40001)


def keyring(text: str, scope: str = wire.CLUSTER) -> wire.KeyRing:
    return wire.KeyRing(wire.parse_keys(text, "test"), "test", scope=scope)


KEYS = keyring(f"test-run:{'r' * 43}")
HOST_KEYS = keyring(f"host-1:{'h' * 43}", scope=wire.HOST)


def serializer(keys: wire.KeyRing = KEYS) -> wire.WireSerializer:
    """A client's serializer (no node key, the table not enforced: tests/unit/test_permissions.py has that).
    10.0.0.0/8 is never this host's here; loopback always is."""
    return wire.WireSerializer(keys, local=trust.LocalAddresses(can_bind=lambda host: False), node_key=lambda: None,
                               enforce_table=lambda: False)


def addr(host: str = "127.0.0.1", port: int = 40001) -> ActorAddress:
    return ActorAddress(TCPv4ActorAddress(host, port, external=True))


SENDER = addr()


class Evil:
    """Unpickling this would create ``path``: what an attacker sends."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(autouse=True)
def capability():
    """This process plays a node launched with a known capability."""
    before = trust.capability()
    trust.set_capability("c" * 64)
    yield "c" * 64
    trust.set_capability(before)


def accepted(body: bytes, peer=LOCAL_PEER, ser: wire.WireSerializer | None = None):
    out = (ser or serializer()).loads(body, peer=peer)
    return out if out != "ACK+DATAERR" else None


# --- the frame format ----------------------------------------------------------------------

def test_frames_are_signed_and_round_trip():
    from actors.core.credentials import Secret

    message = (SENDER, [InferenceRequest(model="m", messages=HI, params={"max_tokens": 3}),
                        Failed("r1", RateLimited("slow down", provider="openai", retry_after_s=2.0)),
                        timedelta(milliseconds=5), {1, 2}, frozenset({"a"}), Secret("s3cr3t"), b"bytes", 1.5])
    ser = serializer()
    body = ser.dumps(message)
    assert body[:4] == wire.MAGIC_SIGNED and body[5:13] == b"test-run"
    assert ser.loads(body, peer=LOCAL_PEER) == message
    for packet in ("ACK", "ACK+DATAERR"):  # Thespian's own constants: recognised by their bytes
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            assert ser.loads(pickle.dumps(packet, protocol=protocol)) == packet


def test_there_is_no_unsigned_mode():
    with pytest.raises(ConfigError, match="no key"):
        wire.WireSerializer(None)
    with pytest.raises(ConfigError, match="no key for the wire"):
        wire.install(None)
    unsigned = b"ATU1" + pickle.dumps((SENDER, "hello"), protocol=4)  # the old unsigned format
    assert accepted(unsigned) is None


def test_bad_frames_are_dropped_unread_and_logged_without_contents(caplog, tmp_path):
    marker = tmp_path / "pwned"
    good = serializer().dumps((SENDER, "a message about the-payload-text"))
    tampered = bytearray(good)
    tampered[20] ^= 1
    cases = {
        "bad signature for key id 'test-run'": bytes(tampered),
        "bad signature for key id 'test-run': a wrong": serializer(keyring(f"test-run:{OTHER_SECRET}")).dumps(
            (SENDER, "the-payload-text")),
        "key id 'other', which this node does not accept": serializer(keyring(f"other:{OTHER_SECRET}")).dumps(
            (SENDER, "the-payload-text")),
        "not a signed gateway frame": b"ATU1" + pickle.dumps((SENDER, "the-payload-text")),
        "not a signed gateway frame (a plain": pickle.dumps((None, Evil(str(marker)))),
        "class not allowed: io.open": serializer().dumps((SENDER, Evil(str(marker)))),
        "truncated": good[:20],
    }
    for reason, body in cases.items():
        caplog.clear()
        with caplog.at_level("WARNING", logger="atomr.wire"):
            assert accepted(body) is None
        assert reason in caplog.text, (reason, caplog.text)
        assert "the-payload-text" not in caplog.text
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("builtins", "open"), ("os", "system"), ("subprocess", "Popen"), ("copyreg", "_reconstructor"),
    ("actors.ops.procs", "kill_group"), ("actors.core.credentials", "resolve"),
    ("actors.testing.mock_provider", "MockProvider"), ("actors.runtime.engine", "RemoteEngineCoreActor"),
    ("actors.runtime.watchdog", "LauncherWatchdog"), ("actors.settings.loader", "load_config"),
    ("actors.security.wire", "install"), ("thespian.actors", "ValidateSource"),
    ("thespian.system.messages.admin", "RegisterSourceAuthority"),
    ("thespian.system.messages.convention", "SourceHashTransferReply"), ("thespian.actors", "ActorSystem"),
])
def test_the_allow_list_refuses_what_could_run_code_even_when_signed(module, name):
    assert (module, name) not in wire.default_allow_list()
    payload = b"\x80\x04\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) \
        + name.encode() + b"\x93."
    body = wire.MAGIC_SIGNED + bytes([8]) + b"test-run" + payload
    body += KEYS.signing.mac(body)
    assert accepted(body) is None


def test_an_actor_creation_request_must_name_an_actor_class():
    ser = serializer()
    fine = (SENDER, PendingActor("actors.runtime.node.NodeRegistry", None, 1, None, "atomr-node"))
    assert type(accepted(ser.dumps(fine))[1]) is PendingActor
    for name in ("os.fork", "http.server.test", "actors.ops.procs.kill_group", "no.such.module.Actor", "Unqualified"):
        assert accepted(ser.dumps((SENDER, PendingActor(name, None, 1, None, None)))) is None, name
    from_source = PendingActor("actors.runtime.node.NodeRegistry", None, 1, None, None, sourceHash="abc123")
    assert accepted(ser.dumps((SENDER, from_source))) is None


def test_refusal_logs_are_rate_limited_per_peer_and_reason():
    now = [0.0]
    lines: list[str] = []
    log = wire.RefusalLog(interval_s=10, clock=lambda: now[0], emit=lines.append)
    assert log.refused("10.0.0.9:4001", "bad signature", "bad signature for key id 'a'")
    for port in range(4002, 4052):  # a flood from one host, any source port
        assert not log.refused(f"10.0.0.9:{port}", "bad signature", "bad signature for key id 'a'")
    assert log.refused("10.0.0.8:4001", "bad signature", "bad signature for key id 'a'")  # another peer
    assert log.refused("10.0.0.9:4001", "unsigned frame", "unsigned frame")               # another reason
    now[0] = 10.5
    assert log.refused("10.0.0.9:4100", "bad signature", "bad signature for key id 'a'")
    assert len(lines) == 4 and "(+50 more like it in the last 10s)" in lines[-1]
    assert log.total == 54


# --- malformed envelopes (issue 17 item 4) ---------------------------------------------------

@pytest.mark.parametrize("envelope", [
    "just a string", (SENDER,), (SENDER, P.StatusRequest(), "extra"), [SENDER, P.StatusRequest()],
    (None, P.StatusRequest()), ("", P.StatusRequest()), (b"", P.StatusRequest()), (0, P.StatusRequest()),
    (ActorAddress(None), P.StatusRequest()), ("ActorAddr-(T|127.0.0.1:1)", P.StatusRequest()),
    ({"sockname": ("127.0.0.1", 1)}, P.StatusRequest()),
], ids=lambda e: type(e).__name__ if not isinstance(e, tuple) else "-".join(type(x).__name__ for x in e))
def test_malformed_envelopes_are_refused_and_logged(envelope, caplog):
    with caplog.at_level("WARNING", logger="atomr.wire"):
        assert accepted(serializer().dumps(envelope)) is None
    assert "malformed envelope" in caplog.text


# --- trust by peer ---------------------------------------------------------------------------

def test_local_means_an_address_of_this_host():
    asked: list[str] = []
    local = trust.LocalAddresses(can_bind=lambda host: asked.append(host) or host == "192.0.2.7")
    assert local.is_local("127.0.0.1") and local.is_local("127.9.9.9") and local.is_local("::1")
    assert local.is_local("::ffff:127.0.0.1")
    assert local.is_local("192.0.2.7") and not local.is_local("192.0.2.8")
    assert local.is_local("192.0.2.7") and asked.count("192.0.2.7") == 1  # cached
    assert not local.is_local("") and not local.is_local(None) and not local.is_local("not-an-ip")
    assert not local.is_local("0.0.0.0") and not local.is_local("224.0.0.1")
    assert local.trust_of(None) == trust.PEER  # a frame whose peer is unknown is not trusted


def test_a_host_key_admits_no_other_host(caplog):
    ser = serializer(HOST_KEYS)
    with caplog.at_level("WARNING", logger="atomr.wire"):
        assert accepted(ser.dumps((addr("10.9.9.9"), P.Heartbeat(None))), peer=REMOTE_PEER, ser=ser) is None
    assert "this node has no cluster secret" in caplog.text
    assert accepted(ser.dumps((SENDER, P.Drain(1.0))), ser=ser) is not None


# --- the launch capability --------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda cap: P.Deploy("n", [], capability=cap),
    lambda cap: P.SessionInit("d", "openai", None, capability=cap),
    lambda cap: WatchLauncher(1, 1, cap),
], ids=["Deploy", "SessionInit", "WatchLauncher"])
def test_deploy_needs_this_starts_capability_even_from_this_host(make, capability, caplog):
    for wrong in ("", "c" * 63, "d" * 64, None, 12):
        with caplog.at_level("WARNING", logger="atomr.wire"):
            assert accepted(serializer().dumps((SENDER, make(wrong)))) is None, wrong
        assert "does not carry this node's launch capability" in caplog.text
    assert accepted(serializer().dumps((SENDER, make(capability)))) is not None
    trust.set_capability(None)  # a process that was never launched as a node: nothing deploys
    assert accepted(serializer().dumps((SENDER, make(capability)))) is None


def test_the_attack_frame_is_refused_at_the_wire(tmp_path):
    """Issue 9: an allow-listed Deploy whose deployment runs a command, signed or not, local or not."""
    from actors.settings.loader import parse_config

    marker = tmp_path / "pwned"
    config = parse_config({"deployments": [{"name": "x", "model": "x", "provider": "openai",
                                            "endpoint": "http://127.0.0.1:9/v1",
                                            "credentials": {"command": ["/bin/sh", "-c", f"id > {marker}; echo tok"]}}]},
                          "<attack>")
    deploy = P.Deploy("victim", config.deployments, config.cluster)
    for body, peer in ((b"ATU1" + pickle.dumps((SENDER, deploy)), LOCAL_PEER),
                       (serializer().dumps((SENDER, deploy)), LOCAL_PEER),
                       (serializer().dumps((addr("10.9.9.9"), deploy)), REMOTE_PEER)):
        assert accepted(body, peer=peer) is None
    assert not marker.exists()


# --- keys ----------------------------------------------------------------------------------

def test_key_formats_and_sources(tmp_path):
    bare = "b" * 43
    one, again = wire.parse_keys(bare, "t")[0], wire.parse_keys(f"  {bare}\n", "t")[0]
    assert one.key_id == again.key_id and one.key_id.startswith("k") and one.same_secret(again)
    keys = wire.parse_keys(f"# rotation\nnew:{'n' * 40}  # signs\nold:{'o' * 40}\n\n", "t")
    assert [k.key_id for k in keys] == ["new", "old"]
    env = {wire.ENV_SECRET: f"new:{'n' * 40}", wire.ENV_SECRET_PREVIOUS: f"old:{'o' * 40}"}
    ring = wire.load_keyring(environ=env)
    assert ring.signing.key_id == "new" and ring.key_ids == ["new", "old"] and ring.admits_peers
    assert wire.load_keyring(environ={wire.ENV_SECRET: f"new:{'n' * 40},old:{'o' * 40}"}).key_ids == ["new", "old"]
    assert wire.load_keyring(environ={}) is None
    path = tmp_path / "cluster.key"
    path.write_text(f"f1:{'f' * 40}\n")
    path.chmod(0o600)
    assert wire.load_keyring(str(path), environ={}).key_ids == ["f1"]
    assert wire.load_keyring(str(path), environ=env).key_ids == ["new", "old"]


def test_a_node_makes_a_private_host_key_that_local_clients_find(tmp_path):
    env = {wire.ENV_HOST_KEY_DIR: str(tmp_path / "atomr")}
    assert wire.resolve_keyring(wire.FROM_ENVIRONMENT, environ=env) is None  # a client never makes one
    made = wire.resolve_keyring(wire.FROM_ENVIRONMENT, create_host_key=True, environ=env)
    path = tmp_path / "atomr" / "host.key"
    assert made.scope == wire.HOST and not made.admits_peers and str(path) in made.source
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert wire.resolve_keyring(wire.FROM_ENVIRONMENT, environ=env) == made           # a client finds it
    assert wire.resolve_keyring(wire.FROM_ENVIRONMENT, create_host_key=True, environ=env) == made  # reused
    cluster = wire.resolve_keyring(wire.FROM_ENVIRONMENT, environ={**env, wire.ENV_SECRET: f"c1:{'c' * 40}"})
    assert cluster.key_ids == ["c1"] and cluster.admits_peers                          # a configured secret wins
    xdg = tmp_path / "run"
    xdg.mkdir()
    assert wire.host_key_path({"XDG_RUNTIME_DIR": str(xdg)}) == str(xdg / "atomr" / "host.key")
    assert wire.host_key_path({"HOME": "/nonexistent"}).endswith("/.config/atomr/host.key")
    assert path.read_text().split("\n")[1].split(":")[1] not in repr(made) + wire.describe(made)


def test_a_host_key_cannot_lead_a_convention_off_loopback():
    with pytest.raises(ConfigError, match="needs a cluster secret"):
        wire.require_secret(HOST_KEYS, "node n", {"advertised address": "192.0.2.10"})
    wire.require_secret(HOST_KEYS, "node n", {"advertised address": "127.0.0.1"})
    wire.require_secret(KEYS, "node n", {"advertised address": "192.0.2.10"})


def test_two_keys_made_on_one_day_get_different_ids():
    ids = {wire.generate_key_line().split(":")[0] for _ in range(20)}
    assert len(ids) == 20


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
    for obj in (ring, ring.signing):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


def test_one_key_per_process():
    """install() with the same keys again is a no-op; with other keys it says why it cannot."""
    script = f"""
import sys
from actors.security import wire
from actors.errors import ConfigError
a = wire.KeyRing(wire.parse_keys("a1:{'a' * 40}", "t"), "first")
b = wire.KeyRing(wire.parse_keys("b1:{'b' * 40}", "t"), "second")
first = wire.install(a)
assert wire.install(wire.KeyRing(wire.parse_keys("a1:{'a' * 40}", "t"), "again")) is first
try:
    wire.install(b)
except ConfigError as exc:
    print(exc)
    sys.exit(0)
sys.exit(1)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "already uses the wire key 'a1' (first); it cannot switch to 'b1' (second)" in out.stdout
    assert "a" * 40 not in out.stdout and "b" * 40 not in out.stdout


def test_the_allow_list_holds_what_crosses_the_wire_and_only_values():
    from actors.security.allow_list import Refused

    names = set(wire.default_allow_list().names())
    for needed in ("thespian.actors.ActorAddress", "thespian.system.transport.IPBase.TCPv4ActorAddress",
                   "thespian.system.messages.convention.ConventionRegister", "thespian.actors.PoisonMessage",
                   "logging.LogRecord", "datetime.timedelta", "socket.AddressFamily",
                   "actors.runtime.protocol.cluster.Heartbeat", "actors.runtime.watchdog.WatchLauncher",
                   "actors.errors.RateLimited", "actors.errors._restore", "actors.settings.schema.DeploymentConfig",
                   "actors.core.breaker.CircuitState", "actors.core.credentials.Secret"):
        assert needed in names
    assert not [n for n in names if n.startswith("actors.") and "Actor" in n.rsplit(".", 1)[1]]
    with pytest.raises(Refused):
        wire.default_allow_list().lookup("actors.errors", "_restore")(InferenceRequest, {})
