"""Who may send what: the one table of message classes per principal, and the one check of every frame.

Three principals send frames to a node's processes (docs/security.md, "The table"):

- **node**: the node's own processes (its launcher, admin, logger and actors), proved by the
  node tag, a MAC keyed from the launch capability that only they hold in memory;
- **local**: any other process on this host that holds the wire key (applications using
  GatewayClient, the HTTP listener, ``launch.py ask/status/stop``, another node on this host);
- **peer**: a process on another host that holds the cluster secret (another node, or
  ``status --leader`` from there).

:data:`TABLE` names, for every message class of the protocol, the principals that may send
it. A class it does not name is refused from everyone (default deny). The local column holds
the peer column: whoever holds the key on this host could start a node of its own with it.
The node's processes enforce the table (:func:`check_envelope`); a client process, which hosts
no actor, refuses only what a peer may not send.
"""

from __future__ import annotations

import hmac
from typing import Any, Protocol

from actors.security.allow_list import Refused, printable
from actors.security.trust import LOCAL, NODE, PEER, capability

__all__ = ["NODE", "LOCAL", "PEER", "TABLE", "column", "PEER_ALLOWED", "CREATABLE", "ADMIN_ONLY", "CAPABILITY_CHECKED",
           "Receiver", "NO_ACTOR", "check_envelope"]

_N, _L, _P = NODE, LOCAL, PEER


def _rows(spec: dict[str, dict[str, str]]) -> dict[tuple[str, str], frozenset[str]]:
    letters = {"N": NODE, "L": LOCAL, "P": PEER}
    return {(module, name): frozenset(letters[c] for c in who)
            for module, classes in spec.items() for name, who in classes.items()}


# N: the node's own processes; L: a local key holder; P: a peer with the cluster secret.
# Why each class is where it is: docs/security.md. Every message class of the protocol is a
# row (tests/unit/test_permissions.py checks it); a new message is refused until it is added.
TABLE: dict[tuple[str, str], frozenset[str]] = _rows({
    "thespian.actors": {
        "ActorExitRequest": "N",            # stopping one actor: supervision
        "ChildActorExited": "NLP",          # from outside the node: only about a child placed elsewhere (a locator)
        "PoisonMessage": "NLP",             # only wrapping what the sender may send itself
        "WakeupMessage": "N",               # an actor's own timers (a forged "restart" would start engines)
        "DeadEnvelope": "N",
        "ActorSystemConventionUpdate": "N",  # from the node's admin to its registry
    },
    "thespian.system.messages.admin": {
        "QueryExists": "NL",
        "QueryAck": "N",
        "SystemShutdown": "NL",             # stopping the node (launch.py stop, Node.stop)
        "SystemShutdownCompleted": "N",
        "PendingActor": "NLP",              # outside the node: only the actors of CREATABLE
        "PendingActorResponse": "NLP",      # the leader's admin answers a member's admin
        "CapabilityUpdate": "N",
        "NewCapabilities": "N",
        "NotifyOnSourceAvailability": "N",
    },
    "thespian.system.messages.convention": {
        "ConventionRegister": "NLP",
        "ConventionDeRegister": "NLP",
        "NotifyOnSystemRegistration": "N",
    },
    "thespian.system.messages.multiproc": {"EndpointConnected": "N", "LoggerConnected": "N"},
    "thespian.system.messages.status": {"Thespian_StatusReq": "N", "Thespian_SystemStatus": "N",
                                        "Thespian_ActorStatus": "N"},
    "thespian.system.logdirector": {"LogAggregator": "N", "LoggerExitRequest": "N"},
    "logging": {"LogRecord": "NLP"},        # members forward WARNING+ records to the leader's logger
    "actors.types": {
        # A peer: another node's relay calling this node's deployments (docs/routing.md, "Across a
        # cluster"), and this node's engines and workers answering it there.
        "InferenceRequest": "NLP", "Cancel": "NLP",
        "TokenChunk": "NLP", "Completed": "NLP", "Failed": "NLP",
    },
    "actors.runtime.protocol.routing": {
        "Route": "NL", "EngineCheck": "NL", "Drain": "NL", "ModelsRequest": "NL",
        "RouterRefusals": "NL",             # a client's router tells its node what it refused
        "StatusRequest": "NLP", "NodeStatus": "NLP",
        "PeerRoutes": "NLP",                # a member's registry: its engines and their load, for routing
        "Routes": "N", "ModelList": "N", "EngineLiveness": "N", "EngineLoad": "N", "EngineStatus": "N", "Drained": "N",
        "NotReady": "N", "RelayTargets": "N", "RelayTargetsTaken": "N",
    },
    "actors.runtime.protocol.bringup": {
        "Deploy": "N", "Deployed": "N", "EngineInit": "N", "EngineReady": "N", "BreakerInit": "N",
        "SessionInit": "N", "LimiterInit": "N", "WorkerInit": "N",
    },
    "actors.runtime.protocol.work": {"Dispatch": "N", "FirstToken": "N", "FirstTokenHeard": "N", "WorkerResult": "N",
                                     "WorkerReady": "N", "RestartSlot": "N", "LinkHello": "N"},
    "actors.runtime.protocol.session": {
        "SessionSubscribe": "N", "SessionSnapshot": "N", "SessionRefresh": "N", "SessionVersion": "N",
    },
    "actors.runtime.protocol.breaker": {
        "BreakerForce": "NL",               # operator control: open or close a circuit
        "BreakerSubscribe": "N", "BreakerState": "N", "BreakerOutcomes": "N", "BreakerCheck": "N",
        "BreakerAdmitted": "N", "BreakerRefused": "N", "BreakerQuery": "N",
    },
    "actors.runtime.protocol.budget": {
        "LimiterHubRequest": "NL", "LimiterRegister": "NL",     # the HTTP listener's key budgets
        "LimiterDelta": "NLP", "LimiterStateRequest": "NLP",
        "LeaseRefresh": "NLP", "LeaseOffer": "NLP",    # strict budgets' leases (rate and spend): engines <-> the leader
        "LimiterQuery": "N", "LimiterUsage": "N", "LimiterPeers": "N", "LimiterHubIs": "N",
        "StrictLimiterIs": "N", "StrictInit": "N",
    },
    "actors.runtime.protocol.ledger": {
        "SpendQuery": "NLP", "SpendReport": "NLP",
        "LedgerInit": "N", "LedgerRecords": "N", "LedgerFlush": "N", "LedgerState": "N",
    },
    "actors.runtime.protocol.cluster": {
        "Locate": "NLP", "RegistrarIs": "NLP", "Heartbeat": "NLP", "Membership": "NLP", "MemberRefused": "NLP",
        "ClusterStatusRequest": "NLP", "ClusterStatus": "NLP",
        "Introduce": "N", "RegistrarConfig": "N",
    },
    "actors.runtime.watchdog": {"WatchLauncher": "N", "Watching": "N"},
})


def column(principal: str) -> frozenset[tuple[str, str]]:
    """Every message class ``principal`` may send."""
    return frozenset(name for name, who in TABLE.items() if principal in who)


PEER_ALLOWED = column(PEER)

# The actors a sender from outside the node may have created here (PendingActor).
CREATABLE: dict[str, dict[str, str | None]] = {
    # A member places its locator on the leader (no global name): the cluster's one way in.
    PEER: {"actors.runtime.cluster.LeaderLocator": None},
    # A client looks the node's registry up by its global name (Thespian's createActor with a
    # globalName returns the existing actor); a node on this host places a locator like a peer.
    LOCAL: {"actors.runtime.cluster.LeaderLocator": None, "actors.runtime.node.NodeRegistry": "atomr-node"},
}

# What clients and other admins say to an admin: from outside the node, read by an admin only.
ADMIN_ONLY = frozenset({("thespian.system.messages.admin", "PendingActor"),
                        ("thespian.system.messages.admin", "QueryExists"),
                        ("thespian.system.messages.admin", "SystemShutdown"),
                        ("thespian.system.messages.convention", "ConventionRegister"),
                        ("thespian.system.messages.convention", "ConventionDeRegister")})

# Messages that make a node run what its configuration says: only with this start's capability.
CAPABILITY_CHECKED = frozenset({("actors.runtime.protocol.bringup", "Deploy"),
                                ("actors.runtime.protocol.bringup", "SessionInit"),
                                ("actors.runtime.watchdog", "WatchLauncher")})

class Receiver(Protocol):
    """What the guards need to know about the process reading a frame (thespian_hooks.THIS_PROCESS)."""

    def is_admin(self) -> bool:
        """Is it an actor system's admin?"""

    def placed_elsewhere(self, address: Any) -> bool:
        """Is ``address`` a child its actor had created on another node?"""

    def awaits_child(self, instance: Any) -> bool:
        """Is its actor still waiting to learn where its child number ``instance`` was created?"""


class _NoActor:
    """A process that hosts no actor (a client): none of it."""

    def is_admin(self) -> bool:
        return False

    def placed_elsewhere(self, address: Any) -> bool:
        return False

    def awaits_child(self, instance: Any) -> bool:
        return False


NO_ACTOR: Receiver = _NoActor()


class _NotANode:
    """A process that is no node's (a client, ``status --leader``'s own admin): the guards that keep a
    node's actors and supervision safe have nothing to keep here; only the peer column applies."""

    def is_admin(self) -> bool:
        return True

    def placed_elsewhere(self, address: Any) -> bool:
        return True

    def awaits_child(self, instance: Any) -> bool:
        return True


_NOT_A_NODE: Receiver = _NotANode()

_ADDRESS_TYPES = ("TCPv4ActorAddress", "TCPv6ActorAddress", "RoutedTCPv4ActorAddress", "TXOnlyAdminTCPv4ActorAddress")


def _qualname(obj: Any) -> tuple[str, str]:
    cls = type(obj)
    return cls.__module__, cls.__qualname__


def _check_sender(sender: Any) -> None:
    from thespian.actors import ActorAddress

    details = getattr(sender, "addressDetails", None) if type(sender) is ActorAddress else None
    if details is None or type(details).__name__ not in _ADDRESS_TYPES \
            or type(details).__module__ not in ("thespian.system.transport.IPBase",
                                                "thespian.system.transport.TCPTransport"):
        raise Refused(f"malformed envelope: the sender is {printable(type(sender).__name__, 40)}, not a Thespian "
                      f"TCP address", kind="malformed envelope")


def _host_of(address: Any) -> str | None:
    details = getattr(address, "addressDetails", None)
    sockname = getattr(details, "sockname", None)
    return str(sockname[0]) if isinstance(sockname, tuple) and sockname else None


def _check_capability(message: Any, name: str) -> None:
    mine = capability()
    given = getattr(message, "capability", None)
    if not mine or not isinstance(given, str) or not hmac.compare_digest(given.encode(), mine.encode()):
        raise Refused(f"{name} refused: it does not carry this node's launch capability (only the node's own "
                      f"launcher deploys, from its own configuration)", kind=f"{name} without capability")


_WHO = {NODE: "this node's own processes", LOCAL: "local processes", PEER: "other nodes"}
_FROM = {LOCAL: "from a local process that is not one of this node's", PEER: "from another host"}


def _check_message(message: Any, principal: str, peer_host: str | None, receiver: Receiver, depth: int = 0) -> None:
    name = _qualname(message)
    if principal not in TABLE.get(name, ()):
        if name not in TABLE:
            raise Refused(f"{printable(name[1], 60)} is not a message of the protocol (no one may send it)",
                          kind="not in the table")
        who = " and ".join(_WHO[p] for p in (NODE, LOCAL, PEER) if p in TABLE[name])
        # The rate limit of the log counts by class: a table row, never a name the sender made up.
        raise Refused(f"{printable(name[1], 60)} is not accepted {_FROM[principal]} (only {who} may send it)",
                      kind=f"{name[1]} from {principal}")
    if principal == NODE:
        return
    if name in ADMIN_ONLY and not receiver.is_admin():
        raise Refused(f"{name[1]} {_FROM[principal]} is for the admin, not an actor", kind=f"{name[1]} to an actor")
    if name == ("thespian.system.messages.admin", "PendingActorResponse") and not receiver.is_admin() \
            and not receiver.awaits_child(getattr(message, "instanceNum", None)):
        # An actor takes it as news of its own child ("creating child N failed": a supervisor
        # restarts it); from another node only while that child's creation there is awaited.
        raise Refused(f"PendingActorResponse {_FROM[principal]} about a child this actor is not waiting for",
                      kind=f"PendingActorResponse from {principal}")
    if name == ("thespian.system.messages.admin", "PendingActor"):
        cls = getattr(message, "actorClassName", None)
        creatable = CREATABLE[principal]
        if cls not in creatable or getattr(message, "globalName", None) != creatable[cls]:
            raise Refused(f"actor creation refused: {_FROM[principal]}, {printable(cls)} may not be created here"
                          + (" under that name" if cls in creatable else ""), kind=f"actor creation from {principal}")
    elif name == ("thespian.actors", "ChildActorExited"):
        # "Your child died" makes Thespian forget that address and the actor restart what it
        # supervised: from outside the node only about a child this process placed on another
        # node (a leader locator saying goodbye), never about one of this node's own actors.
        child = getattr(message, "childAddress", None)
        if not receiver.placed_elsewhere(child) or (principal == PEER and (peer_host is None or _host_of(child) != peer_host)):
            raise Refused(f"ChildActorExited {_FROM[principal]} about an actor that is not its own",
                          kind=f"not accepted from {principal}")
    elif name == ("thespian.actors", "PoisonMessage"):
        if depth >= 2:
            raise Refused(f"nested PoisonMessage {_FROM[principal]}", kind=f"not accepted from {principal}")
        _check_message(message.poisonMessage, principal, peer_host, receiver, depth + 1)


def check_envelope(envelope: Any, principal: str, peer_host: str | None = None, *, enforce_table: bool = True,
                   receiver: Receiver = NO_ACTOR) -> None:
    """Refuse an envelope that is malformed, or whose message ``principal`` may not send.

    ``enforce_table`` is true in the node's processes. A process that hosts no actor (a
    client, a launcher) checks only what comes from another host, against the peer column.
    """
    if type(envelope) is not tuple or len(envelope) != 2:
        raise Refused(f"malformed envelope: {printable(type(envelope).__name__, 40)}"
                      f"{'' if type(envelope) is not tuple else f' of {len(envelope)}'}, not (sender, message)",
                      kind="malformed envelope")
    sender, message = envelope
    _check_sender(sender)
    if enforce_table:
        _check_message(message, principal, peer_host, receiver)
    elif principal == PEER:
        _check_message(message, principal, peer_host, _NOT_A_NODE)
    name = _qualname(message)
    if name in CAPABILITY_CHECKED:
        _check_capability(message, name[1])
