"""The wire: signed, allow-listed pickling for every Thespian TCP frame of a node and its clients.

Thespian 4.0.1's TCP transport binds every socket (the admin's and each actor's) to all
interfaces, has no authentication, and unpickles whatever arrives. It takes its serializer
from one module-level name, ``thespian.system.transport.TCPTransport.serializer`` (used as
``serializer.dumps`` / ``serializer.loads``), so :func:`install` puts a :class:`WireSerializer`
there, in the launcher before it creates its ActorSystem (the admin and every actor are
forked from it and inherit it) and in every client process. It

- signs each frame with HMAC-SHA256 under the cluster secret, naming the key by its id so a
  secret can be rotated (every key of the ring is accepted, the first one signs), and checks
  the MAC in constant time before a single byte is unpickled;
- unpickles with an allow-list (:class:`AllowList`): the Thespian message and address
  classes the gateway uses, the project's message, error and config value classes, and a few
  inert value types; anything else is refused even when the signature is valid;
- drops a frame that fails either check (Thespian then answers the sender with its
  data-error ACK, so the sender sees a failed send instead of waiting) and logs why, at most
  one line per peer and reason every ``LOG_INTERVAL_S``, with the count of those it held
  back; frame contents are never logged.

Frame body (Thespian adds its own ``<length>>`` prefix)::

    b"ATS1" | len(key_id): 1 byte | key_id (ASCII) | pickle (protocol 4) | HMAC-SHA256: 32 bytes
    b"ATU1" | pickle                        (no cluster secret: loopback-only nodes, unsigned)

The MAC covers everything before it (magic, key id and payload). Thespian's ACKs are
constants it pickles itself at import; they are recognised by exact bytes, never unpickled.
The secret comes from ``ATOMR_CLUSTER_SECRET`` (with ``ATOMR_CLUSTER_SECRET_PREVIOUS``
during a rotation), ``ATOMR_CLUSTER_SECRET_FILE``, or ``cluster.secret_file`` in the config:
see :func:`load_keyring` and docs/security.md.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import io
import ipaddress
import logging
import os
import pickle
import re
import secrets
import stat
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from actors.errors import ConfigError

__all__ = [
    "ENV_SECRET", "ENV_SECRET_PREVIOUS", "ENV_SECRET_FILE", "WireKey", "KeyRing", "AllowList", "default_allow_list",
    "WireSerializer", "Refused", "RefusalLog", "FROM_ENVIRONMENT", "parse_keys", "load_keyring", "resolve_keyring",
    "generate_key_line", "install",
    "current", "is_loopback", "require_secret", "describe",
]

ENV_SECRET = "ATOMR_CLUSTER_SECRET"
ENV_SECRET_PREVIOUS = "ATOMR_CLUSTER_SECRET_PREVIOUS"
ENV_SECRET_FILE = "ATOMR_CLUSTER_SECRET_FILE"

MAGIC_SIGNED = b"ATS1"
MAGIC_UNSIGNED = b"ATU1"
MAC_LEN = 32
PROTOCOL = 4              # fixed, so no peer ever needs copyreg._reconstructor (protocols 0-1)
MIN_SECRET_CHARS = 32
KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
LOG_INTERVAL_S = 10.0

_KDF_LABEL = b"atomr-wire-v1 hmac-sha256"


def _log() -> logging.Logger:
    # Looked up at each use: Thespian replaces the logging manager in the admin and in every
    # actor process (to forward records to its logger process) after this module is imported.
    return logging.getLogger("atomr.wire")


# --- keys ------------------------------------------------------------------------------

class WireKey:
    """One cluster key: an id (sent in every frame) and the MAC key derived from the secret."""

    __slots__ = ("key_id", "_mac_key", "_keyed")

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id = key_id
        # Derived, so the secret is only ever used for this (domain separation).
        self._mac_key = hmac.digest(secret.encode("utf-8"), _KDF_LABEL, "sha256")
        self._keyed = hmac.new(self._mac_key, digestmod=hashlib.sha256)  # copied per frame: no re-keying

    def mac(self, data: Any) -> bytes:
        h = self._keyed.copy()
        h.update(data)
        return h.digest()

    def same_secret(self, other: "WireKey") -> bool:
        return hmac.compare_digest(self._mac_key, other._mac_key)

    def __repr__(self) -> str:
        return f"WireKey({self.key_id!r}, secret=***)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a WireKey is never pickled: it would carry the cluster secret")


def _derived_key_id(secret: str) -> str:
    # A fingerprint of the secret (a PRF output: it reveals nothing of a high-entropy secret),
    # so the same bare secret gets the same key id on every node.
    return "k" + hmac.digest(secret.encode("utf-8"), b"atomr-wire key id", "sha256").hex()[:8]


def parse_keys(text: str, source: str) -> list[WireKey]:
    """Keys from ``[KEYID:]SECRET`` tokens separated by whitespace, commas or lines; ``#`` comments.

    Error messages name the source and the token's position, never the token.
    """
    tokens = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        tokens.extend(t for t in re.split(r"[\s,]+", line) if t)
    keys: list[WireKey] = []
    for n, token in enumerate(tokens, 1):
        key_id, sep, secret = token.partition(":")
        if not sep or not KEY_ID_RE.fullmatch(key_id):
            key_id, secret = "", token
        if len(secret) < MIN_SECRET_CHARS:
            raise ConfigError(f"key {n}: the secret has {len(secret)} characters, at least {MIN_SECRET_CHARS} are "
                              f"needed (generate one with `python launch.py secret`)", path=source)
        keys.append(WireKey(key_id or _derived_key_id(secret), secret))
    for i, key in enumerate(keys):
        for other in keys[:i]:
            if other.key_id == key.key_id and not other.same_secret(key):
                raise ConfigError(f"key id {key.key_id!r} is given twice with different secrets", path=source)
    unique: list[WireKey] = []
    for key in keys:
        if all(k.key_id != key.key_id for k in unique):
            unique.append(key)
    return unique


class KeyRing:
    """The keys a process accepts; the first one signs."""

    def __init__(self, keys: Iterable[WireKey], source: str) -> None:
        self.keys = tuple(keys)
        if not self.keys:
            raise ConfigError("no key given", path=source)
        self.source = source
        self.signing = self.keys[0]
        self.by_id = {k.key_id.encode("ascii"): k for k in self.keys}

    @property
    def key_ids(self) -> list[str]:
        return [k.key_id for k in self.keys]

    def __repr__(self) -> str:
        return f"KeyRing(signing={self.signing.key_id!r}, accepted={self.key_ids!r}, source={self.source!r})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a KeyRing is never pickled: it carries the cluster secret")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, KeyRing) and self.key_ids == other.key_ids
                and all(a.same_secret(b) for a, b in zip(self.keys, other.keys)))

    __hash__ = object.__hash__


def _read_secret_file(path: str, source: str) -> list[WireKey]:
    expanded = os.path.expanduser(path)
    try:
        info = os.stat(expanded)
        if info.st_mode & 0o077:
            raise ConfigError(f"secret file {path} is accessible by group or others (mode "
                              f"{stat.S_IMODE(info.st_mode):o}); run: chmod 600 {path}", path=source)
        with open(expanded, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}", path=source) from None
    keys = parse_keys(text, f"{source} ({path})")
    if not keys:
        raise ConfigError(f"secret file {path} holds no key", path=source)
    return keys


def load_keyring(secret_file: str | None = None, environ: Mapping[str, str] = os.environ) -> KeyRing | None:
    """The cluster keys of this process, or None when no secret is configured.

    First found wins: ``ATOMR_CLUSTER_SECRET`` (one or more keys, plus any in
    ``ATOMR_CLUSTER_SECRET_PREVIOUS``), then the file named by ``ATOMR_CLUSTER_SECRET_FILE``,
    then ``secret_file`` (``cluster.secret_file`` of the config).
    """
    value = environ.get(ENV_SECRET, "").strip()
    previous = environ.get(ENV_SECRET_PREVIOUS, "").strip()
    if value:
        keys = parse_keys(value, ENV_SECRET)
        if not keys:
            raise ConfigError("holds no key", path=ENV_SECRET)
        keys += [k for k in parse_keys(previous, ENV_SECRET_PREVIOUS) if all(k.key_id != o.key_id for o in keys)]
        return KeyRing(keys, f"environment {ENV_SECRET}" + (f" + {ENV_SECRET_PREVIOUS}" if previous else ""))
    if previous:
        raise ConfigError(f"is set but {ENV_SECRET} is not: set the current secret too", path=ENV_SECRET_PREVIOUS)
    file_from_env = environ.get(ENV_SECRET_FILE, "").strip()
    if file_from_env:
        return KeyRing(_read_secret_file(file_from_env, ENV_SECRET_FILE), f"file {file_from_env}")
    if secret_file:
        return KeyRing(_read_secret_file(secret_file, "cluster.secret_file"), f"file {secret_file}")
    return None


FROM_ENVIRONMENT: Any = object()  # a ``keyring=`` default: whatever load_keyring() finds


def resolve_keyring(keyring: Any, secret_file: str | None = None) -> KeyRing | None:
    """``keyring`` itself, or (for FROM_ENVIRONMENT) the keys :func:`load_keyring` finds."""
    return load_keyring(secret_file) if keyring is FROM_ENVIRONMENT else keyring


def generate_key_line(key_id: str | None = None) -> str:
    """A fresh key in the ``KEYID:SECRET`` form (256 random bits)."""
    if key_id is None:
        key_id = time.strftime("k%Y%m%d")
    if not KEY_ID_RE.fullmatch(key_id):
        raise ConfigError("a key id is 1-32 characters among A-Z a-z 0-9 . _ -", path="--key-id")
    return f"{key_id}:{secrets.token_urlsafe(32)}"


# --- the allow-list --------------------------------------------------------------------

# Thespian's classes that really cross the wire between a node's processes, its clients and
# other nodes (observed by running the whole test suite with a recording unpickler), plus
# PoisonMessage (an actor failure, returned to the sender), WakeupMessage and the status
# messages (operators' diagnostics). Left out on purpose: source loading (ValidateSource,
# ValidatedSource, LoadedSource, UnloadedSource, RegisterSourceAuthority,
# SourceHashTransferRequest/Reply: code from the network), HandleDeadLetters (another
# system taking this one's dead letters), ConventionInvite, SetLogging, ForwardMessage
# (Admin Routing, unused), and every exception class.
THESPIAN_ALLOWED: dict[str, tuple[str, ...]] = {
    "thespian.actors": ("ActorAddress", "ActorSystemConventionUpdate", "ActorExitRequest", "ChildActorExited",
                        "PoisonMessage", "WakeupMessage", "DeadEnvelope"),
    "thespian.system.messages.admin": ("QueryExists", "QueryAck", "SystemShutdown", "SystemShutdownCompleted",
                                       "PendingActor", "PendingActorResponse", "CapabilityUpdate",
                                       "NewCapabilities", "NotifyOnSourceAvailability"),
    "thespian.system.messages.convention": ("ConventionRegister", "ConventionDeRegister",
                                            "NotifyOnSystemRegistration"),
    "thespian.system.messages.multiproc": ("EndpointConnected", "LoggerConnected"),
    "thespian.system.messages.status": ("Thespian_StatusReq", "Thespian_SystemStatus", "Thespian_ActorStatus"),
    "thespian.system.logdirector": ("LogAggregator", "LoggerExitRequest"),
    "thespian.system.transport.IPBase": ("TCPv4ActorAddress", "TCPv6ActorAddress", "RoutedTCPv4ActorAddress",
                                         "TXOnlyAdminTCPv4ActorAddress"),
}

# Inert value types: constructing one runs no code of the sender's choosing.
STDLIB_ALLOWED: dict[str, tuple[str, ...]] = {
    "logging": ("LogRecord",),                       # members forward WARNING+ records to the leader's logger
    "socket": ("AddressFamily", "SocketKind"),       # enums inside Thespian's TCP addresses
    "datetime": ("timedelta",),                      # WakeupMessage.delayPeriod
    "builtins": ("set", "frozenset", "bytearray", "complex"),  # value constructors older protocols use
}

# The project's modules whose value classes travel: every dataclass, Enum and InferenceError
# defined there (never a function, an actor, or a class that does work when built), and the
# few explicit extras below.
WIRE_MODULES = ("actors.types", "actors.runtime.protocol", "actors.errors", "actors.settings.schema", "actors.core.breaker", "actors.core.ratelimit",
                "actors.core.retry", "actors.core.credentials", "actors.core.gcounter", "actors.core.priority_queue",
                "actors.core.pricing")
WIRE_EXTRAS = {("actors.core.credentials", "Secret"), ("actors.core.gcounter", "GCounter")}


class Refused(Exception):
    """A frame this process will not unpickle; ``reason`` is fit for a log line (no contents)."""

    def __init__(self, reason: str, kind: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # What the log's rate limit counts by: never text a sender chooses.
        self.kind = kind or reason.split(":", 1)[0][:40]


def _restore_error(cls: Any, fields: Any) -> Any:
    """``actors.errors._restore`` as the wire may call it: only to rebuild an InferenceError."""
    from actors.errors import InferenceError, _restore

    if not (isinstance(cls, type) and issubclass(cls, InferenceError) and isinstance(fields, dict)):
        raise Refused("actors.errors._restore called with something other than an InferenceError")
    return _restore(cls, fields)


class AllowList:
    """(module, name) -> the object the unpickler may use; built once, eagerly."""

    def __init__(self, thespian: Mapping[str, Iterable[str]] = THESPIAN_ALLOWED,
                 stdlib: Mapping[str, Iterable[str]] = STDLIB_ALLOWED,
                 wire_modules: Iterable[str] = WIRE_MODULES) -> None:
        import importlib

        from thespian.actors import Actor

        from actors.errors import InferenceError

        allowed: dict[tuple[str, str], Any] = {}
        for table in (thespian, stdlib):
            for module_name, names in table.items():
                module = importlib.import_module(module_name)
                for name in names:
                    allowed[(module_name, name)] = getattr(module, name)
        for module_name in wire_modules:
            module = importlib.import_module(module_name)
            for name, obj in vars(module).items():
                if not isinstance(obj, type) or obj.__module__ != module_name or issubclass(obj, Actor):
                    continue
                if (dataclasses.is_dataclass(obj) or issubclass(obj, (enum.Enum, InferenceError))
                        or (module_name, name) in WIRE_EXTRAS):
                    allowed[(module_name, name)] = obj
        allowed[("actors.errors", "_restore")] = _restore_error
        self._allowed = allowed

    def lookup(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise Refused(f"class not allowed: {_printable(module)}.{_printable(name)}") from None

    def names(self) -> list[str]:
        return sorted(f"{m}.{n}" for m, n in self._allowed)

    def __contains__(self, item: tuple[str, str]) -> bool:
        return item in self._allowed


def _printable(text: Any, limit: int = 80) -> str:
    text = str(text)
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def _unpickler_for(allow: AllowList) -> type[pickle.Unpickler]:
    """An Unpickler class whose every global goes through ``allow`` (built once per allow-list)."""

    class AllowListUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return allow.lookup(module, name)

    return AllowListUnpickler


# --- refusal logging --------------------------------------------------------------------

class RefusalLog:
    """At most one line per (peer host, reason kind) every ``interval_s``, counting the rest."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock=time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()
        self.total = 0

    def refused(self, peer: str, kind: str, reason: str, line: str | None = None) -> bool:
        """Log one refusal (or count it); True if a line was written."""
        head, sep, port = peer.rpartition(":")
        host = head if sep and port.rstrip(")").isdigit() else peer  # a flood from one host: any source port
        now = self.clock()
        with self._lock:
            self.total += 1
            last, held = self._last.get((host, kind), (None, 0))
            if last is not None and now - last < self.interval_s:
                self._last[(host, kind)] = (last, held + 1)
                return False
            self._last[(host, kind)] = (now, 0)
            if len(self._last) > 1024:  # many peers: forget the quiet ones
                for key in [k for k, (t, _) in self._last.items() if now - t >= self.interval_s]:
                    del self._last[key]
        more = f" (+{held} more like it in the last {self.interval_s:g}s)" if held else ""
        _emit_after_this_step((line or f"refused a frame from {peer}: {reason}; dropped unread") + more)
        return True


class _DeferredLines:
    """Log lines held until Thespian's loop leaves its critical section.

    A frame is refused inside the transport's exclusive section, where a log record (itself
    a message to the node's logger process) is only queued, and a quiet admin would not
    send it before its next unrelated transmit. Thespian completes finished transmits just
    after that section (``_finished_intents``, outside it), so the lines ride along as one
    pseudo intent whose completion logs them.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.scheduled = False

    def add(self, line: str) -> bool:
        from thespian.system import logdirector

        transport = getattr(logdirector, "logTransport", None)
        finished = getattr(transport, "_finished_intents", None)
        if not isinstance(finished, list) or not getattr(transport, "_aTB_processing", False):
            return False  # not inside the loop's critical section (or not an actor): log now
        self.lines.append(line)
        if not self.scheduled:
            self.scheduled = True
            finished.append((self, None))
        return True

    def tx_done(self, _status: Any) -> None:
        lines, self.lines, self.scheduled = self.lines, [], False
        for line in lines:
            _log().warning("%s", line)


_deferred = _DeferredLines()


def _emit_after_this_step(line: str) -> None:
    if not _deferred.add(line):
        _log().warning("%s", line)


def _peer_from_stack() -> str:
    """Who sent the frame being refused: read from Thespian's receiving frame (best effort)."""
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            break
        for name in ("inc", "self", "intent"):
            obj = frame.f_locals.get(name)
            sock = getattr(obj, "socket", None)
            if sock is not None and hasattr(sock, "getpeername"):
                try:
                    host, port = sock.getpeername()[:2]
                    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                except OSError:
                    pass
            target = getattr(obj, "targetAddr", None)
            if target is not None:
                return str(target)
        frame = frame.f_back
    return "an unknown peer"


# --- the serializer ---------------------------------------------------------------------

def _thespian_acks() -> dict[bytes, str]:
    """Thespian's ACK and data-error ACK bodies, as any Python version pickles them."""
    from thespian.system.transport.streamBuffer import ackDataErrPacket, ackPacket

    bodies = {}
    for packet in (ackPacket, ackDataErrPacket):
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            bodies[pickle.dumps(packet, protocol=protocol)] = packet
    return bodies


class WireSerializer:
    """What Thespian's TCP transport calls as ``serializer.dumps`` and ``serializer.loads``."""

    def __init__(self, keyring: KeyRing | None, allow: AllowList | None = None,
                 refusals: RefusalLog | None = None) -> None:
        from thespian.system.transport.streamBuffer import ackDataErrPacket

        from thespian.system.messages.admin import PendingActor

        self.keyring = keyring
        self.allow = allow or default_allow_list()
        self._unpickler = _unpickler_for(self.allow)
        self.refusals = refusals or RefusalLog()
        self._acks = _thespian_acks()
        self.refused_packet = ackDataErrPacket
        self._pending_actor = PendingActor
        self._actor_classes: set[str] = set()
        self._state = threading.local()
        if keyring is not None:
            signing = keyring.signing
            self._header = MAGIC_SIGNED + bytes([len(signing.key_id)]) + signing.key_id.encode("ascii")
            self._sign = signing.mac
        else:
            self._header = MAGIC_UNSIGNED
            self._sign = None

    @property
    def authenticated(self) -> bool:
        return self.keyring is not None

    def dumps(self, obj: Any) -> bytes:
        payload = self._header + pickle.dumps(obj, protocol=PROTOCOL)
        if self._sign is None:
            return payload
        return payload + self._sign(payload)

    def verify(self, data: Any) -> memoryview:
        """The payload of a frame that passes this process's authentication; else Refused."""
        view = memoryview(data)
        magic = bytes(view[:4])
        if magic == MAGIC_SIGNED:
            if self.keyring is None:
                raise Refused("signed frame, but this process has no cluster secret to check it")
            if len(view) < 5 + MAC_LEN:
                raise Refused("truncated signed frame")
            id_len = view[4]
            key_id = bytes(view[5:5 + id_len])
            key = self.keyring.by_id.get(key_id)
            if key is None:
                raise Refused(f"signed with key id {_printable(key_id.decode('ascii', 'replace'), 32)!r}, which "
                              f"this node does not accept (it accepts {', '.join(self.keyring.key_ids)}): "
                              f"a different cluster secret", kind="unknown key id")
            body = view[:-MAC_LEN]
            if len(body) < 5 + id_len or not hmac.compare_digest(key.mac(body), view[-MAC_LEN:]):
                raise Refused(f"bad signature for key id {key.key_id!r}: a wrong cluster secret, or altered in "
                              f"transit")
            return body[5 + id_len:]
        if magic == MAGIC_UNSIGNED:
            if self.keyring is not None:
                raise Refused("unsigned frame: the sender has no cluster secret")
            return view[4:]
        raise Refused("not a gateway frame (a plain Thespian pickle, or a probe)")

    def loads(self, data: bytes) -> Any:
        ack = self._acks.get(data) if len(data) < 64 else None
        if ack is not None:
            return ack
        try:
            payload = self.verify(data)
            try:
                envelope = self._unpickler(io.BytesIO(payload)).load()
            except Refused:
                raise
            except Exception as exc:  # noqa: BLE001 - a corrupt or hostile payload, whatever it raised
                raise Refused(f"malformed payload ({type(exc).__name__})") from None
            if type(envelope) is tuple and len(envelope) == 2 and type(envelope[1]) is self._pending_actor:
                self._check_actor_creation(envelope[1])
            return envelope
        except Refused as refused:
            self.refusals.refused(_peer_from_stack(), refused.kind, refused.reason)
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
            raise Refused(f"actor creation refused: {_printable(name)} is not an actor class",
                          kind="actor creation refused")
        self._actor_classes.add(name)

    def take_refused_flag(self) -> bool:
        flag = getattr(self._state, "refused", False)
        self._state.refused = False
        return flag


_ALLOW: AllowList | None = None
_INSTALLED: WireSerializer | None = None
_install_lock = threading.Lock()


def default_allow_list() -> AllowList:
    global _ALLOW
    if _ALLOW is None:
        _ALLOW = AllowList()
    return _ALLOW


def install(keyring: KeyRing | None) -> WireSerializer:
    """Make this process (and every process it forks from now on) speak the gateway's wire."""
    global _INSTALLED
    from thespian.system.transport import TCPTransport

    with _install_lock:
        if _INSTALLED is not None and _INSTALLED.keyring == keyring and TCPTransport.serializer is _INSTALLED:
            return _INSTALLED
        serializer = WireSerializer(keyring)
        TCPTransport.serializer = serializer
        _quiet_thespian_log()
        _INSTALLED = serializer
        return serializer


def current() -> WireSerializer | None:
    from thespian.system.transport import TCPTransport

    serializer = TCPTransport.serializer
    return serializer if isinstance(serializer, WireSerializer) else None


def _wrap_thesplog(module: Any, hook: Any) -> None:
    """Put ``hook(msg, args)`` in front of Thespian's internal log in ``module``; True drops the line."""
    original = module.thesplog
    if getattr(original, "_atomr_wire", False):
        return

    def thesplog(msg: str, *args: Any, **kw: Any) -> Any:
        try:
            if hook(msg, args):
                return None
        except Exception:  # noqa: BLE001 - never let our hook break Thespian's logging
            pass
        return original(msg, *args, **kw)

    thesplog._atomr_wire = True  # type: ignore[attr-defined]
    module.thesplog = thesplog


def _quiet_refusals(msg: Any, args: tuple) -> bool:
    """Drop Thespian's "OUCH! Error deserializing" report of a frame we refused.

    We have logged that refusal already (rate-limited, without contents); Thespian's line
    holds a traceback and whatever bytes followed the frame, for every frame.
    """
    from thespian.system.transport import TCPTransport

    serializer = TCPTransport.serializer
    return (isinstance(msg, str) and msg.startswith("OUCH!") and isinstance(serializer, WireSerializer)
            and len(args) > 1 and args[1] == serializer.refused_packet and serializer.take_refused_flag())


def _explain_refused_registration(msg: Any, args: tuple) -> bool:
    """A member whose registration the leader refuses says so in its own log, not only Thespian's."""
    from thespian.system.transport import SendStatus, TCPTransport

    if isinstance(msg, str) and msg.startswith("Admin cannot register with convention") and len(args) >= 3 \
            and args[2] is SendStatus.BadPacket:
        serializer = TCPTransport.serializer
        if isinstance(serializer, WireSerializer):
            keyring = serializer.keyring
            mine = f"signs with key id {keyring.signing.key_id}" if keyring else "has no cluster secret"
            serializer.refusals.refused(str(args[0]), "registration refused", "", line=(
                f"the convention leader at {args[0]} refused this node's registration: it does not accept this "
                f"node's cluster key (this node {mine}); the leader's log says why"))
    return False


def _quiet_thespian_log() -> None:
    from thespian.system.admin import convention
    from thespian.system.transport import TCPTransport

    _wrap_thesplog(TCPTransport, _quiet_refusals)
    _wrap_thesplog(convention, _explain_refused_registration)


# --- policy -----------------------------------------------------------------------------

def is_loopback(host: str | None) -> bool:
    if not host:
        return True  # nothing given: Thespian is told 127.0.0.1
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def require_secret(keyring: KeyRing | None, what: str, addresses: Mapping[str, str | None]) -> None:
    """Refuse to run ``what`` on non-loopback ``addresses`` (label -> host) without a cluster secret."""
    if keyring is not None:
        return
    outside = {label: host for label, host in addresses.items() if not is_loopback(host)}
    if not outside:
        return
    where = ", ".join(f"{label} {host}" for label, host in outside.items())
    raise ConfigError(
        f"no cluster secret: {what} on a non-loopback address ({where}) would accept unauthenticated messages "
        f"from the network. Set {ENV_SECRET} (generate a key with `python launch.py secret`), or "
        f"{ENV_SECRET_FILE}, or cluster.secret_file in the config, to the same key on every node and client",
        path="cluster.secret_file")


def describe(serializer: WireSerializer | KeyRing | None) -> str:
    """One line for start-up output: is this process's wire authenticated, and with what."""
    keyring = serializer.keyring if isinstance(serializer, WireSerializer) else serializer
    if keyring is None:
        return (f"wire: NO cluster secret ({ENV_SECRET} unset): messages are not authenticated, loopback-only use; "
                f"classes are still allow-listed")
    others = [k for k in keyring.key_ids if k != keyring.signing.key_id]
    also = f", also accepting {', '.join(others)}" if others else ""
    return f"wire: HMAC-SHA256 authenticated, signing with key id {keyring.signing.key_id}{also} ({keyring.source})"
