"""WireSerializer: what Thespian's TCP transport calls as ``serializer.dumps`` / ``serializer.loads``.

Frame body (Thespian adds its own ``<length>>`` prefix)::

    b"ATS1" | len(key_id): 1 byte | key_id (ASCII) | pickle (protocol 4) | HMAC-SHA256: 32 bytes
    b"ATN1" | the same ...                                                | HMAC-SHA256 | node tag: 32 bytes

The MAC covers everything before it, with a wire key. A node's own processes (which hold
the node key, :mod:`actors.security.trust`) send ``ATN1`` frames, whose node tag is an
HMAC-SHA256 of the same bytes with the node key; a process without that key checks the MAC
and ignores the tag. There is no unsigned format. Reading a frame: the key id, the MAC
(constant time), the node tag, only then the pickle through the allow-list, then the
envelope (a ``(sender, message)`` pair, the sender a Thespian TCP address) and the message
against the sender's principal (:mod:`actors.security.permissions`). A refused frame is never handed on:
``loads`` returns Thespian's own data-error ACK value, so Thespian answers the sender with
``ACK+DATAERR`` and drops it. Refusals are logged at most once per peer host and reason
every ``LOG_INTERVAL_S``, never with the frame's contents.
"""

from __future__ import annotations

import hmac
import io
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from actors.core.log_limit import LineLimiter
from actors.security import trust
from actors.security.allow_list import AllowList, Refused, default_allow_list, printable, unpickler_for
from actors.security.keys import KeyRing, WireKey
from actors.security.permissions import NO_ACTOR, Receiver, check_envelope
from actors.security.trust import LOCAL, NODE, PEER, LocalAddresses

__all__ = ["MAGIC_SIGNED", "MAGIC_NODE", "MAC_LEN", "PROTOCOL", "LOG_INTERVAL_S", "WireSerializer", "RefusalLog",
           "ENV_RECORD"]

MAGIC_SIGNED = b"ATS1"
MAGIC_NODE = b"ATN1"      # signed, and tagged by one of the node's own processes
MAC_LEN = 32
PROTOCOL = 4              # fixed, so no peer ever needs copyreg._reconstructor (protocols 0-1)
LOG_INTERVAL_S = 10.0
ENV_RECORD = "ATOMR_WIRE_RECORD"  # a file: append "pid principal module.Class peer" per accepted frame (diagnostics)


def _log() -> logging.Logger:
    # Looked up at each use: Thespian replaces the logging manager in the admin and in every
    # actor process (to forward records to its logger process) after this module is imported.
    return logging.getLogger("atomr.wire")


def _log_now(line: str) -> None:
    _log().warning("%s", line)


class RefusalLog(LineLimiter):
    """At most one line per (peer host, reason kind) every ``interval_s``, counting the rest."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock=time.monotonic,
                 emit: Callable[[str], None] = _log_now) -> None:
        super().__init__(emit, interval_s, clock)

    def refused(self, peer: str, kind: str, reason: str, line: str | None = None) -> bool:
        """Log one refusal (or count it); True if a line was written."""
        return self.note(peer, kind, line or f"refused a frame from {peer}: {reason}; dropped unread")


def _thespian_acks() -> dict[bytes, str]:
    """Thespian's ACK and data-error ACK bodies, as any Python version pickles them."""
    from thespian.system.transport.streamBuffer import ackDataErrPacket, ackPacket

    bodies = {}
    for packet in (ackPacket, ackDataErrPacket):
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            bodies[pickle.dumps(packet, protocol=protocol)] = packet
    return bodies


def _show_peer(peer: tuple[str, int] | None) -> str:
    if peer is None:
        return "an unknown peer"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class WireSerializer:
    """Signs every frame; refuses what is unsigned, badly signed, not allow-listed or not allowed for its sender."""

    def __init__(self, keyring: KeyRing, allow: AllowList | None = None, refusals: RefusalLog | None = None,
                 local: LocalAddresses | None = None,
                 peer_of_frame: Callable[[], tuple[str, int] | None] = lambda: None,
                 node_key: Callable[[], WireKey | None] = trust.current_node_key,
                 enforce_table: Callable[[], bool] = trust.in_node_process,
                 receiver: Receiver = NO_ACTOR) -> None:
        from thespian.system.transport.streamBuffer import ackDataErrPacket

        from actors.errors import ConfigError

        if not isinstance(keyring, KeyRing):
            raise ConfigError("no key: every frame is signed; set ATOMR_CLUSTER_SECRET or start a node on this "
                              "host (it makes this host's key)", path="cluster.secret_file")
        self.keyring = keyring
        self.allow = allow or default_allow_list()
        self._unpickler = unpickler_for(self.allow)
        self.refusals = refusals or RefusalLog()
        self.local = local or LocalAddresses()
        self.peer_of_frame = peer_of_frame  # set by thespian_hooks: the TCP peer of the frame being read
        # Read at each frame, not once: the launcher makes its capability after installing the
        # wire, and a process that launched two nodes signs with the last one's.
        self.node_key = node_key
        self.enforce_table = enforce_table
        self.receiver = receiver     # set by thespian_hooks: what the guards ask of this process's actor
        self._acks = _thespian_acks()
        self.refused_packet = ackDataErrPacket
        self._actor_classes: set[str] = set()
        self._state = threading.local()
        signing = keyring.signing
        self._header = MAGIC_SIGNED + bytes([len(signing.key_id)]) + signing.key_id.encode("ascii")
        self._sign = signing.mac
        record = os.environ.get(ENV_RECORD)
        self._record = open(record, "a", buffering=1) if record else None  # noqa: SIM115 - process lifetime

    @property
    def authenticated(self) -> bool:
        return True

    def dumps(self, obj: Any) -> bytes:
        node = self.node_key()
        if node is None:
            payload = self._header + pickle.dumps(obj, protocol=PROTOCOL)
            return payload + self._sign(payload)
        payload = MAGIC_NODE + self._header[4:] + pickle.dumps(obj, protocol=PROTOCOL)
        return payload + self._sign(payload) + node.mac(payload)

    def verify(self, data: Any) -> tuple[memoryview, bool]:
        """The payload of a frame that passes this process's authentication, and whether it carries
        this node's tag; else Refused."""
        view = memoryview(data)
        magic = bytes(view[:4])
        tagged = magic == MAGIC_NODE
        if magic != MAGIC_SIGNED and not tagged:
            raise Refused("not a signed gateway frame (a plain Thespian pickle, an older unsigned frame, or a probe)",
                          kind="not a gateway frame")
        if len(view) < 5 + (2 if tagged else 1) * MAC_LEN:
            raise Refused("truncated signed frame")
        id_len = view[4]
        key_id = bytes(view[5:5 + id_len])
        key = self.keyring.by_id.get(key_id)
        if key is None:
            raise Refused(f"signed with key id {printable(key_id.decode('ascii', 'replace'), 32)!r}, which "
                          f"this node does not accept (it accepts {', '.join(self.keyring.key_ids)}): "
                          f"a different cluster secret", kind="unknown key id")
        end = len(view) - (2 if tagged else 1) * MAC_LEN
        body = view[:end]
        if end < 5 + id_len or not hmac.compare_digest(key.mac(body), view[end:end + MAC_LEN]):
            raise Refused(f"bad signature for key id {key.key_id!r}: a wrong cluster secret, or altered in "
                          f"transit")
        node = self.node_key() if tagged else None
        # A tag this process cannot check (it is not that node) is ignored: the frame is then local or a peer's.
        ours = node is not None and hmac.compare_digest(node.mac(body), view[end + MAC_LEN:])
        return body[5 + id_len:], ours

    def trust_of(self, peer: tuple[str, int] | None) -> str:
        trust = self.local.trust_of(peer)
        if trust == PEER and not self.keyring.admits_peers:
            raise Refused("frame from another host, but this node has no cluster secret (its host key admits "
                          "local processes only)", kind="peer without cluster secret")
        return trust

    def loads(self, data: bytes, peer: tuple[str, int] | None = None) -> Any:
        ack = self._acks.get(data) if len(data) < 64 else None
        if ack is not None:
            return ack
        if peer is None:
            peer = self.peer_of_frame()
        try:
            payload, tagged = self.verify(data)
            principal = self.trust_of(peer)
            if principal == LOCAL and tagged:
                principal = NODE  # from this host, and tagged by a process of this node
            try:
                envelope = self._unpickler(io.BytesIO(payload)).load()
            except Refused:
                raise
            except Exception as exc:  # noqa: BLE001 - a corrupt or hostile payload, whatever it raised
                raise Refused(f"malformed payload ({type(exc).__name__})") from None
            check_envelope(envelope, principal, peer[0] if peer else None, enforce_table=self.enforce_table(),
                           receiver=self.receiver)
            message = envelope[1]
            if type(message).__name__ == "PendingActor":
                self._check_actor_creation(message)
            if self._record is not None:
                self._record.write(f"{os.getpid()} {principal} {type(message).__module__}."
                                   f"{type(message).__qualname__} {_show_peer(peer)}\n")
            return envelope
        except Refused as refused:
            self.refusals.refused(_show_peer(peer), refused.kind, refused.reason)
            self._state.refused = True
            # Thespian treats this as a bad packet: the incoming side answers the sender with
            # its data-error ACK and closes the socket; a sender waiting for an ACK fails the send.
            return self.refused_packet

    def _check_actor_creation(self, pending: Any) -> None:
        """A request to create an actor may only name an Actor class, never a loaded source.

        Thespian imports the named module and calls the named object in a new process: without
        this check any importable zero-argument callable would do.
        """
        name = pending.actorClassName
        if getattr(pending, "sourceHash", None):
            raise Refused("actor creation from loaded source code")
        if name in self._actor_classes:
            return
        import importlib

        from thespian.actors import Actor

        module_name, _, class_name = str(name).rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), class_name)
        except Exception:  # noqa: BLE001 - not importable here: Thespian would fail it anyway
            obj = None
        if not (isinstance(obj, type) and issubclass(obj, Actor)):
            raise Refused(f"actor creation refused: {printable(name)} is not an actor class",
                          kind="actor creation refused")
        self._actor_classes.add(name)

    def take_refused_flag(self) -> bool:
        flag = getattr(self._state, "refused", False)
        self._state.refused = False
        return flag


__all__ += ["NODE", "LOCAL", "PEER"]
