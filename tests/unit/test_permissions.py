"""Who may send what: the three principals, the one table, the node tag, default deny.

Frames are built and read in-process with the serializer a node's process uses (the table
enforced, this node's tag known); the TCP peer of each frame is given explicitly. The same
table is checked against a running node, from a local process and from another network
namespace, in tests/cluster/test_principals_netns.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from pathlib import Path

import pytest
from thespian.actors import ChildActorExited, PoisonMessage
from thespian.system.messages.admin import PendingActor

from actors.core.credentials import Secret
from actors.runtime import protocol as P
from actors.security import permissions, trust, wire
from actors.security.allow_list import THESPIAN_ALLOWED, WIRE_MODULES
from actors.security.keys import node_key

from protocol_samples import address, samples

ROOT = Path(__file__).resolve().parents[2]
CAP = "c" * 64
KEYS = wire.KeyRing(wire.parse_keys(f"test-run:{'r' * 43}", "test"), "test")
LOCAL_PEER, REMOTE_PEER = ("127.0.0.1", 40001), ("10.9.9.9", 40001)
ME = address("127.0.0.1", 40001)
REMOTE_ME = address("10.9.9.9", 40001)

# Classes of the wire modules that only ever travel inside a message: never a message themselves.
FIELD_VALUES = {
    "actors.types": {"Usage", "ToolCall", "AttemptInfo", "Choice", "EmbeddingResult"},
    "actors.runtime.protocol.routing": {"RouteEntry"},
    "actors.runtime.protocol.cluster": {"MemberInfo"},
    "actors.runtime.protocol.breaker": {"BreakerOutcome"},
}
MESSAGE_MODULES = [m for m in WIRE_MODULES if m.startswith(("actors.runtime.", "actors.types"))]


@pytest.fixture(autouse=True)
def launched():
    """This process plays a node launched with a known capability (its processes hold the node key)."""
    before = trust.capability()
    trust.set_capability(CAP)
    yield
    trust.set_capability(before)


@dataclasses.dataclass
class Receiver:
    """The process reading the frames, as the guards see it (thespian_hooks.THIS_PROCESS in a node)."""

    admin: bool = False
    placed: tuple = ()      # children its actor placed on another node
    awaited: tuple = ()     # the numbers of the children its actor waits to hear about

    def is_admin(self) -> bool:
        return self.admin

    def placed_elsewhere(self, address) -> bool:
        return address in self.placed

    def awaits_child(self, instance) -> bool:
        return instance in self.awaited


def node_side(placed=(), admin: bool = False, awaited=()) -> wire.WireSerializer:
    """What one of the node's processes reads frames with: the table enforced."""
    return wire.WireSerializer(KEYS, local=trust.LocalAddresses(can_bind=lambda host: False),
                               enforce_table=lambda: True, receiver=Receiver(admin, tuple(placed), tuple(awaited)))


ADMIN_ROWS = permissions.ADMIN_ONLY | {("thespian.system.messages.admin", "PendingActorResponse")}


def sender(tag_capability: str | None) -> wire.WireSerializer:
    """A process signing with the wire key, and with the node tag of ``tag_capability`` (None: no tag)."""
    key = node_key(tag_capability) if tag_capability else None
    return wire.WireSerializer(KEYS, node_key=lambda: key, enforce_table=lambda: False)


# principal -> (how it signs, its TCP peer, its own address)
SENDERS = {
    trust.NODE: (sender(CAP), LOCAL_PEER, ME),
    trust.LOCAL: (sender(None), LOCAL_PEER, ME),
    trust.PEER: (sender(None), REMOTE_PEER, REMOTE_ME),
}


def delivered(message, principal: str, reader: wire.WireSerializer | None = None, signer=None, peer=None):
    sign, default_peer, me = SENDERS[principal]
    body = (signer or sign).dumps((me, message))
    out = (reader or node_side()).loads(body, peer=peer or default_peer)
    return out != "ACK+DATAERR"


# --- the table ------------------------------------------------------------------------------

def test_every_message_class_of_the_protocol_is_a_row_of_the_table():
    """Default deny: a message class added to the protocol is refused from everyone until it is a row."""
    messages = set()
    for module_name in MESSAGE_MODULES + ["actors.runtime.watchdog"]:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if isinstance(obj, type) and obj.__module__ == module_name and dataclasses.is_dataclass(obj) \
                    and name not in FIELD_VALUES.get(module_name, ()):
                messages.add((module_name, name))
    for module_name, names in THESPIAN_ALLOWED.items():
        if module_name != "thespian.system.transport.IPBase":
            messages |= {(module_name, n) for n in names if n != "ActorAddress"}
    messages.add(("logging", "LogRecord"))
    assert set(permissions.TABLE) == messages


def test_the_columns_nest_local_holds_peer_and_node_holds_all():
    node, local, peer = (permissions.column(p) for p in (trust.NODE, trust.LOCAL, trust.PEER))
    assert peer <= local <= node == set(permissions.TABLE)
    assert permissions.PEER_ALLOWED == peer


NODE_ONLY = ["SessionSubscribe", "SessionSnapshot", "SessionRefresh", "SessionVersion", "SessionInit", "Deploy",
             "EngineInit", "WorkerInit", "BreakerInit", "LimiterInit", "StrictInit", "LedgerInit", "RegistrarConfig",
             "Dispatch", "WorkerResult", "WorkerReady", "FirstToken", "EngineLoad", "LedgerRecords",
             "BreakerOutcomes", "BreakerCheck", "BreakerSubscribe", "ActorExitRequest", "WakeupMessage",
             "WatchLauncher", "Introduce", "RelayTargets",
             "RelayTargetsTaken"]


def test_credentials_wiring_and_supervision_are_node_only():
    rows = {name: who for (_, name), who in permissions.TABLE.items()}
    assert {name: rows[name] for name in NODE_ONLY} == {name: {trust.NODE} for name in NODE_ONLY}
    # What a local caller needs, and no more: call models, status, drain and stop (docs/security.md).
    local_only = {name for (_, name) in permissions.column(trust.LOCAL) - permissions.column(trust.PEER)}
    assert local_only == {"Route", "ModelsRequest", "EngineCheck", "Drain", "SystemShutdown", "QueryExists", "BreakerForce",
                          "LimiterHubRequest", "LimiterRegister", "RouterRefusals"}


@pytest.mark.parametrize("principal", [trust.NODE, trust.LOCAL, trust.PEER])
def test_each_principal_may_send_its_column_and_nothing_else(principal):
    me = SENDERS[principal][2]
    for row, message in samples(me, capability=CAP).items():
        expected = principal in permissions.TABLE[row]
        if row == ("thespian.actors", "ChildActorExited") and principal != trust.NODE:
            expected = False  # about no child this process placed elsewhere: refused (below)
        reader = node_side(admin=row in ADMIN_ROWS)
        assert delivered(message, principal, reader=reader) is expected, (principal, row)


def test_what_admins_say_to_each_other_reaches_no_actor_from_outside_the_node():
    from thespian.system.messages.admin import QueryExists, SystemShutdown
    from thespian.system.messages.convention import ConventionRegister

    for message in (SystemShutdown(), QueryExists(), ConventionRegister(ME, {}, False),
                    PendingActor("actors.runtime.cluster.LeaderLocator", ME, 1, None, None)):
        for principal in (trust.LOCAL, trust.PEER):
            if principal in permissions.TABLE[(type(message).__module__, type(message).__name__)]:
                assert delivered(message, principal, reader=node_side(admin=True)), (principal, message)
                assert not delivered(message, principal, reader=node_side(admin=False)), (principal, message)
        assert delivered(message, trust.NODE, reader=node_side(admin=False))


def test_news_of_a_child_from_another_node_only_while_the_actor_waits_for_it():
    """"Creating your child 1 failed", forged from another host, made a registrar start a second
    strict limiter (its first child). Another node's admin answers an actor once: about the child
    it asked that node for (a leader locator), while it waits."""
    from thespian.system.messages.admin import PendingActorResponse

    failed = PendingActorResponse(ME, 1, None, errorCode=1)
    for principal in (trust.LOCAL, trust.PEER):
        assert not delivered(failed, principal, reader=node_side())
        assert not delivered(failed, principal, reader=node_side(awaited={2}))
        assert delivered(failed, principal, reader=node_side(awaited={1}))
        assert delivered(failed, principal, reader=node_side(admin=True))
    assert delivered(failed, trust.NODE, reader=node_side())


def test_what_no_column_names_is_refused_even_from_the_node(caplog):
    for message in ("a string", {"a": 1}, P.RouteEntry("d", "m", None, "n"), P.MemberInfo("n", None, None, 0.0, "i"),
                    Secret("sk-live-123"), 42):
        with caplog.at_level("WARNING", logger="atomr.wire"):
            assert not delivered(message, trust.NODE), message
    assert "is not a message of the protocol (no one may send it)" in caplog.text
    assert "sk-live-123" not in caplog.text


def test_a_refusal_says_who_may_send_it(caplog):
    with caplog.at_level("WARNING", logger="atomr.wire"):
        assert not delivered(P.SessionSubscribe(ME, wants_secret=True), trust.LOCAL)
        assert not delivered(P.Drain(1.0), trust.PEER)
    assert ("SessionSubscribe is not accepted from a local process that is not one of this node's (only this "
            "node's own processes may send it)") in caplog.text
    assert "Drain is not accepted from another host (only this node's own processes and local processes" in caplog.text


# --- the node tag ---------------------------------------------------------------------------

def test_the_node_tags_its_frames_and_the_tag_says_nothing_of_the_capability():
    tagged = sender(CAP).dumps((ME, P.StatusRequest()))
    plain = sender(None).dumps((ME, P.StatusRequest()))
    assert tagged[:4] == wire.MAGIC_NODE and plain[:4] == wire.MAGIC_SIGNED
    assert len(tagged) == len(plain) + wire.MAC_LEN
    assert CAP.encode() not in tagged and node_key(CAP).mac(b"")[:8] not in tagged
    # Another process of this host reads it like any frame: the MAC checks, the tag is ignored.
    client = wire.WireSerializer(KEYS, node_key=lambda: None, enforce_table=lambda: False)
    assert client.loads(tagged, peer=LOCAL_PEER)[1] == P.StatusRequest()


@pytest.mark.parametrize("case", ["another node on this host", "the tag altered", "tagged, from another host"])
def test_only_a_good_tag_from_this_host_makes_a_frame_the_node(case):
    """A node on this host holds the key but not this node's tag: it is a local process here. A tag
    replayed from another host makes a frame no more than a peer's."""
    subscribe = P.SessionSubscribe(ME, wants_secret=True)
    if case == "another node on this host":
        body, peer = sender("d" * 64).dumps((ME, subscribe)), LOCAL_PEER
    elif case == "the tag altered":
        good = bytearray(sender(CAP).dumps((ME, subscribe)))
        good[-1] ^= 1
        body, peer = bytes(good), LOCAL_PEER
    else:
        body, peer = sender(CAP).dumps((REMOTE_ME, subscribe)), REMOTE_PEER
    assert node_side().loads(body, peer=peer) == "ACK+DATAERR"
    heartbeat = P.Heartbeat(P.MemberInfo("n", None, None, 0.0, "i"))
    allowed = sender("d" * 64 if case == "another node on this host" else CAP).dumps(
        (REMOTE_ME if peer == REMOTE_PEER else ME, heartbeat))
    assert node_side().loads(allowed, peer=peer) != "ACK+DATAERR"  # still what any key holder may send
    assert delivered(subscribe, trust.NODE)


def test_the_node_key_comes_from_the_capability_and_forks_hold_it():
    """The launcher's forks (admin, logger, actors) hold the key and enforce the table; the launcher does not."""
    trust.set_capability(None)
    assert trust.current_node_key() is None
    made = trust.new_capability()
    assert trust.current_node_key() is not None and trust.capability() == made
    assert not trust.in_node_process()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a process of the node
        os.write(write, b"1" if trust.in_node_process() and trust.capability() == made else b"0")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read)


# --- the guards on the few Thespian messages outside the node column ---------------------------

def test_a_child_exited_from_outside_the_node_is_only_about_a_child_placed_elsewhere():
    """Thespian forgets an address and the actor restarts what it supervised on this message: from
    outside the node it is believed only about a leader locator this process placed on another node."""
    locator, engine = address("127.0.0.1", 45001), address("127.0.0.1", 45002)
    remote_locator = address("10.9.9.9", 45001)
    placed = node_side(placed=(locator, remote_locator))
    assert delivered(ChildActorExited(locator), trust.LOCAL, reader=placed)
    assert not delivered(ChildActorExited(engine), trust.LOCAL, reader=placed)
    assert delivered(ChildActorExited(remote_locator), trust.PEER, reader=placed)
    assert not delivered(ChildActorExited(locator), trust.PEER, reader=placed)  # not on the sender's host
    assert delivered(ChildActorExited(engine), trust.NODE, reader=placed)


def test_actor_creation_from_outside_the_node():
    admin = node_side(admin=True)
    locator = PendingActor("actors.runtime.cluster.LeaderLocator", ME, 1, None, None)
    registry = PendingActor("actors.runtime.node.NodeRegistry", ME, 1, None, "atomr-node")
    for principal, message, expected in [
        (trust.LOCAL, locator, True), (trust.LOCAL, registry, True), (trust.PEER, locator, True),
        (trust.PEER, registry, False),
        (trust.LOCAL, PendingActor("actors.runtime.node.NodeRegistry", ME, 1, None, None), False),
        (trust.LOCAL, PendingActor("actors.runtime.session.RemoteSessionActor", ME, 1, None, None), False),
        (trust.LOCAL, PendingActor("actors.runtime.cluster.LeaderLocator", ME, 1, None, "a-name"), False),
        (trust.NODE, PendingActor("actors.runtime.session.RemoteSessionActor", ME, 1, None, None), True),
    ]:
        assert delivered(message, principal, reader=admin) is expected, (principal, message.actorClassName,
                                                                          message.globalName)


def test_a_poison_message_carries_only_what_its_sender_may_send():
    assert delivered(PoisonMessage(P.StatusRequest()), trust.PEER)
    assert not delivered(PoisonMessage(P.Drain(1.0)), trust.PEER)
    assert delivered(PoisonMessage(P.Drain(1.0)), trust.LOCAL)
    assert not delivered(PoisonMessage(P.SessionSnapshot(1, Secret("sk-x"))), trust.LOCAL)
    assert not delivered(PoisonMessage(PoisonMessage(PoisonMessage(P.StatusRequest()))), trust.LOCAL)


def test_a_client_process_enforces_only_the_peer_column():
    """A process that hosts no actor of a node (a client, a launcher, ``status --leader``'s admin)
    reads what its node sends it; from another host, what the peer column names (the leader's admin
    answers its locator's creation directly: no guard of a node's supervision applies)."""
    from thespian.system.messages.admin import PendingActorResponse

    client = wire.WireSerializer(KEYS, local=trust.LocalAddresses(can_bind=lambda host: False),
                                 node_key=lambda: None, enforce_table=lambda: False)
    assert delivered(P.Routes("m", []), trust.LOCAL, reader=client)
    assert delivered(P.SessionSnapshot(1, None), trust.LOCAL, reader=client)
    assert not delivered(P.Routes("m", []), trust.PEER, reader=client)
    assert delivered(PendingActorResponse(REMOTE_ME, 1, None, actualAddress=REMOTE_ME), trust.PEER, reader=client)
    assert delivered(ChildActorExited(address("10.9.9.9", 45001)), trust.PEER, reader=client)
    assert not delivered(ChildActorExited(address("127.0.0.1", 45001)), trust.PEER, reader=client)
    assert not delivered(PendingActor("actors.runtime.session.RemoteSessionActor", ME, 1, None, None), trust.PEER,
                         reader=client)


def test_lease_traffic_is_peer_traffic_and_where_it_goes_is_the_nodes_own_word():
    """An engine on a member asks the leader's strict limiter for its lease over the wire: a peer
    message. Who the limiter is, and what a node's engines are told about it, is not: a forged
    StrictLimiterIs or StrictInit would send a node's leases elsewhere or restart the limiter."""
    ask = P.LeaseRefresh("d1", None, "n1/d1/0/ab", 1, 100, 0, (None, None), (0, 0), (5, 100))
    offer = P.LeaseOffer("d1", "n1/d1/0/ab", 1, 100, (5, None), 3.0, (120, None))
    for message in (ask, offer):
        assert delivered(message, trust.PEER) and delivered(message, trust.LOCAL) and delivered(message, trust.NODE)
    for message in (P.StrictLimiterIs(ME, 3, True), P.StrictInit("n0", ME)):
        assert not delivered(message, trust.PEER) and not delivered(message, trust.LOCAL)
        assert delivered(message, trust.NODE)


def test_the_capability_is_still_checked_for_the_node():
    assert not delivered(P.Deploy("n", [], capability="d" * 64), trust.NODE)
    assert delivered(P.Deploy("n", [], capability=CAP), trust.NODE)


# --- the table in docs/security.md is this table ------------------------------------------------

def test_the_documented_table_is_the_enforced_one():
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("<!-- the table -->", 2)[1]
    documented: dict[tuple[str, str], frozenset[str]] = {}
    module = None
    for line in section.splitlines():
        heading = re.match(r"^\| \*\*`([\w.]+)`\*\* \|", line)
        if heading:
            module = heading.group(1)
            continue
        row = re.match(r"^\| `(\w+)` \| (.*?) \| (.*?) \| (.*?) \|", line)
        if row and module:
            who = {p for p, cell in zip((trust.NODE, trust.LOCAL, trust.PEER), row.groups()[1:]) if cell.strip()}
            documented[(module, row.group(1))] = frozenset(who)
    assert documented == permissions.TABLE
