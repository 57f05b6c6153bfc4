"""Who may send what: trust by TCP peer, the peer table, the launch capability, envelope checks.

A frame whose TCP peer is an address of this host (loopback, or one a socket can bind to
here) is LOCAL: one of this node's processes, its launcher, or a local client holding the
key. Anything else is a PEER: another node of the cluster, which can only get here with a
cluster secret configured on purpose. A peer may send only the messages the cluster needs
(:data:`PEER_ALLOWED`); everything else (deploy, drain, shutdown, credential refresh, actor
init, breaker force, ...) is LOCAL only. A ``Deploy`` or ``SessionInit`` must also carry
this node's launch capability, made by its launcher before the ActorSystem was forked, so
held in memory by the node's processes only; it never leaves the host.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Any

from actors.security.allow_list import Refused, printable

__all__ = ["LOCAL", "PEER", "PEER_ALLOWED", "PEER_CREATABLE", "CAPABILITY_CHECKED", "LocalAddresses",
           "new_capability", "set_capability", "capability", "check_envelope"]

LOCAL = "local"
PEER = "peer"

# What another node may send (module, class). Observed by running the cluster tests (two
# network namespaces, strict and approximate limits, status from a third host) with a
# recording hook; see docs/security.md for why each is needed.
PEER_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    # Thespian's convention: a member registers with the leader, the leader answers; a
    # member's admin asks the leader's to create the locator (and is told the result).
    ("thespian.system.messages.convention", "ConventionRegister"),
    ("thespian.system.messages.convention", "ConventionDeRegister"),
    ("thespian.system.messages.admin", "PendingActor"),          # LeaderLocator only (PEER_CREATABLE)
    ("thespian.system.messages.admin", "PendingActorResponse"),
    ("thespian.actors", "ChildActorExited"),                    # a locator on the leader ended (its own host)
    ("thespian.actors", "PoisonMessage"),                       # only wrapping a peer-allowed message
    ("logging", "LogRecord"),                                   # members forward WARNING+ to the leader's log
    # Cluster membership.
    ("actors.runtime.protocol.cluster", "Locate"),
    ("actors.runtime.protocol.cluster", "RegistrarIs"),
    ("actors.runtime.protocol.cluster", "Heartbeat"),
    ("actors.runtime.protocol.cluster", "Membership"),
    # Approximate budgets between limiter hubs.
    ("actors.runtime.protocol.budget", "LimiterDelta"),
    ("actors.runtime.protocol.budget", "LimiterStateRequest"),
    # Strict budgets: member engines and the leader's strict limiter.
    ("actors.runtime.protocol.budget", "StrictAcquire"),
    ("actors.runtime.protocol.budget", "StrictSettle"),
    ("actors.runtime.protocol.budget", "StrictGrant"),
    ("actors.runtime.protocol.budget", "StrictDenied"),
    # Status, gathered by the leader's registrar (also from a status client on another host).
    ("actors.runtime.protocol.cluster", "ClusterStatusRequest"),
    ("actors.runtime.protocol.cluster", "ClusterStatus"),
    ("actors.runtime.protocol.routing", "StatusRequest"),
    ("actors.runtime.protocol.routing", "NodeStatus"),
    # Spend reports (launch.py spend --cluster): sums by key, team, model, deployment; no secrets.
    ("actors.runtime.protocol.ledger", "SpendQuery"),
    ("actors.runtime.protocol.ledger", "SpendReport"),
})

# The only actor a peer may have created here: the cluster's leader locator.
PEER_CREATABLE = frozenset({"actors.runtime.cluster.LeaderLocator"})

# Messages that make a node run what its configuration says: only with this start's capability.
CAPABILITY_CHECKED = frozenset({("actors.runtime.protocol.bringup", "Deploy"), ("actors.runtime.protocol.bringup", "SessionInit"),
                                ("actors.runtime.watchdog", "WatchLauncher")})

_ADDRESS_TYPES = ("TCPv4ActorAddress", "TCPv6ActorAddress", "RoutedTCPv4ActorAddress", "TXOnlyAdminTCPv4ActorAddress")


def _can_bind(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))  # EADDRNOTAVAIL: not an address of this host
        return True
    except OSError:
        return False


class LocalAddresses:
    """Is a peer host one of this host's addresses? Cached per host string (bounded)."""

    def __init__(self, can_bind: Callable[[str], bool] = _can_bind, limit: int = 4096) -> None:
        self._can_bind = can_bind
        self._cache: dict[str, bool] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def is_local(self, host: str | None) -> bool:
        if not host:
            return False
        cached = self._cache.get(host)
        if cached is not None:
            return cached
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        local = address.is_loopback or (not address.is_unspecified and not address.is_multicast
                                        and self._can_bind(str(address)))
        with self._lock:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[host] = local
        return local

    def trust_of(self, peer: tuple[str, int] | None) -> str:
        return LOCAL if peer is not None and self.is_local(peer[0]) else PEER


# --- the launch capability --------------------------------------------------------------

_capability: str | None = None


def new_capability() -> str:
    """Made by the launcher before its ActorSystem exists, so every process of the node inherits it."""
    global _capability
    _capability = secrets.token_hex(32)
    return _capability


def set_capability(value: str | None) -> None:
    global _capability
    _capability = value


def capability() -> str | None:
    return _capability


def _check_capability(message: Any, name: str) -> None:
    mine = _capability
    given = getattr(message, "capability", None)
    if not mine or not isinstance(given, str) or not hmac.compare_digest(given.encode(), mine.encode()):
        raise Refused(f"{name} refused: it does not carry this node's launch capability (only the node's own "
                      f"launcher deploys, from its own configuration)", kind=f"{name} without capability")


# --- envelopes ----------------------------------------------------------------------------

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


def _check_peer_message(message: Any, peer_host: str | None = None, depth: int = 0) -> None:
    name = _qualname(message)
    if name not in PEER_ALLOWED:
        raise Refused(f"{printable(name[1], 60)} is not accepted from another host (local processes only)",
                      kind="not accepted from a peer")
    if name == ("thespian.system.messages.admin", "PendingActor"):
        cls = getattr(message, "actorClassName", None)
        if cls not in PEER_CREATABLE or getattr(message, "globalName", None):
            raise Refused(f"actor creation refused: another host may not create {printable(cls)} here",
                          kind="actor creation from a peer")
    elif name == ("thespian.actors", "ChildActorExited"):
        # Only about an actor of the sender's own host (a locator ending): never "your engine died".
        if peer_host is None or _host_of(message.childAddress) != peer_host:
            raise Refused("ChildActorExited from another host about an actor not on that host",
                          kind="not accepted from a peer")
    elif name == ("thespian.actors", "PoisonMessage") and depth < 2:
        _check_peer_message(message.poisonMessage, peer_host, depth + 1)
    elif name == ("thespian.actors", "PoisonMessage"):
        raise Refused("nested PoisonMessage from another host", kind="not accepted from a peer")


def check_envelope(envelope: Any, trust: str, peer_host: str | None = None) -> None:
    """Refuse an envelope that is malformed, or whose message ``trust`` may not send."""
    if type(envelope) is not tuple or len(envelope) != 2:
        raise Refused(f"malformed envelope: {printable(type(envelope).__name__, 40)}"
                      f"{'' if type(envelope) is not tuple else f' of {len(envelope)}'}, not (sender, message)",
                      kind="malformed envelope")
    sender, message = envelope
    _check_sender(sender)
    name = _qualname(message)
    if trust != LOCAL:
        _check_peer_message(message, peer_host)
    if name in CAPABILITY_CHECKED:
        _check_capability(message, name[1])
