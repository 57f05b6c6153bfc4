"""Cluster keys and host keys: where a process's signing keys come from (pure: no Thespian).

Every frame is signed, always. A key is either a **cluster** key (configured on purpose:
``ATOMR_CLUSTER_SECRET``, ``ATOMR_CLUSTER_SECRET_FILE`` or ``cluster.secret_file``), which
lets nodes on other hosts exchange cluster messages, or the **host** key a node makes for
its own host when none is configured (mode 600 in ``$XDG_RUNTIME_DIR/atomr/`` or
``~/.config/atomr/``), which local clients find there and which admits no other host.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from typing import Any

from actors.errors import ConfigError

__all__ = ["ENV_SECRET", "ENV_SECRET_PREVIOUS", "ENV_SECRET_FILE", "ENV_HOST_KEY_DIR", "CLUSTER", "HOST",
           "WireKey", "KeyRing", "node_key", "parse_keys", "load_keyring", "resolve_keyring", "host_key_path", "host_keyring",
           "generate_key_line", "FROM_ENVIRONMENT", "is_loopback", "require_secret", "describe"]

ENV_SECRET = "ATOMR_CLUSTER_SECRET"
ENV_SECRET_PREVIOUS = "ATOMR_CLUSTER_SECRET_PREVIOUS"
ENV_SECRET_FILE = "ATOMR_CLUSTER_SECRET_FILE"
ENV_HOST_KEY_DIR = "ATOMR_HOST_KEY_DIR"   # overrides where the host key lives (tests, unusual layouts)
HOST_KEY_FILE = "host.key"

CLUSTER = "cluster"   # configured on purpose: peers on other hosts may exchange cluster messages
HOST = "host"         # made by a node for its host: only local processes

MIN_SECRET_CHARS = 32
KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
_KDF_LABEL = b"atomr-wire-v1 hmac-sha256"
_NODE_LABEL = b"atomr-wire-v1 node tag"


class WireKey:
    """One key: an id (sent in every frame) and the MAC key derived from the secret."""

    __slots__ = ("key_id", "_mac_key", "_keyed")

    def __init__(self, key_id: str, secret: str, label: bytes = _KDF_LABEL) -> None:
        self.key_id = key_id
        # Derived, so the secret is only ever used for this (domain separation).
        self._mac_key = hmac.digest(secret.encode("utf-8"), label, "sha256")
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


def node_key(capability: str) -> WireKey:
    """The node-only key: derived from the launch capability, so only the launcher and its forks hold it."""
    return WireKey("node", capability, label=_NODE_LABEL)


def _derived_key_id(secret: str) -> str:
    # A fingerprint of the secret (a PRF output: it reveals nothing of a high-entropy secret),
    # so the same bare secret gets the same key id on every node.
    return "k" + hmac.digest(secret.encode("utf-8"), b"atomr-wire key id", "sha256").hex()[:8]


def parse_keys(text: str, source: str) -> list[WireKey]:
    """Keys from ``[KEYID:]SECRET`` tokens separated by whitespace, commas or lines; ``#`` comments.

    Error messages name the source and the token's position, never the token.
    """
    tokens: list[str] = []
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
    """The keys a process accepts; the first one signs. ``scope`` is CLUSTER or HOST."""

    def __init__(self, keys: Iterable[WireKey], source: str, scope: str = CLUSTER) -> None:
        self.keys = tuple(keys)
        if not self.keys:
            raise ConfigError("no key given", path=source)
        if scope not in (CLUSTER, HOST):
            raise ValueError(f"scope must be {CLUSTER!r} or {HOST!r}")
        self.source = source
        self.scope = scope
        self.signing = self.keys[0]
        self.by_id = {k.key_id.encode("ascii"): k for k in self.keys}

    @property
    def key_ids(self) -> list[str]:
        return [k.key_id for k in self.keys]

    @property
    def admits_peers(self) -> bool:
        """True only for a cluster secret configured on purpose."""
        return self.scope == CLUSTER

    def __repr__(self) -> str:
        return (f"KeyRing(signing={self.signing.key_id!r}, accepted={self.key_ids!r}, scope={self.scope!r}, "
                f"source={self.source!r})")

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a KeyRing is never pickled: it carries the cluster secret")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, KeyRing) and self.key_ids == other.key_ids and self.scope == other.scope
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
    """The cluster keys configured for this process, or None when no secret is configured.

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


def host_key_path(environ: Mapping[str, str] = os.environ) -> str:
    """Where this user's host key lives: ``$ATOMR_HOST_KEY_DIR``, ``$XDG_RUNTIME_DIR/atomr``, ``~/.config/atomr``."""
    base = environ.get(ENV_HOST_KEY_DIR, "").strip()
    if not base:
        runtime = environ.get("XDG_RUNTIME_DIR", "").strip()
        base = os.path.join(runtime, "atomr") if runtime and os.path.isdir(runtime) else \
            os.path.join(os.path.expanduser("~"), ".config", "atomr")
    return os.path.join(base, HOST_KEY_FILE)


def host_keyring(create: bool, environ: Mapping[str, str] = os.environ) -> KeyRing | None:
    """This host's key (made, mode 600, when ``create`` and there is none yet), or None."""
    path = host_key_path(environ)
    if create and not os.path.exists(path):
        try:
            _make_host_key(path)
        except OSError as exc:
            raise ConfigError(f"cannot make this host's key at {path}: {exc.strerror}; set {ENV_SECRET} or "
                              f"{ENV_HOST_KEY_DIR} to a writable directory", path="host key") from None
    if not os.path.exists(path):
        return None
    return KeyRing(_read_secret_file(path, "host key"), f"host key {path}", scope=HOST)


def _make_host_key(path: str) -> None:
    """Mode 600 in a 700 directory; never replaces a key another node made meanwhile."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    line = generate_key_line("host-" + secrets.token_hex(3))
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# atomr host key: made by a node with no cluster secret; local processes only.\n")
        fh.write(line + "\n")
    try:
        os.link(tmp, path)  # atomic, and never replaces a key another node made meanwhile
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


FROM_ENVIRONMENT: Any = object()  # a ``keyring=`` default: the configured secret, else the host key


def resolve_keyring(keyring: Any, secret_file: str | None = None, *, create_host_key: bool = False,
                    environ: Mapping[str, str] = os.environ) -> KeyRing | None:
    """``keyring`` itself, or (for FROM_ENVIRONMENT) the configured secret, else this host's key.

    A node passes ``create_host_key=True`` (it makes the host key if none exists); clients
    only look for it.
    """
    if keyring is not FROM_ENVIRONMENT:
        return keyring
    return load_keyring(secret_file, environ) or host_keyring(create_host_key, environ)


def generate_key_line(key_id: str | None = None) -> str:
    """A fresh key in the ``KEYID:SECRET`` form (256 random bits); the default id is unique per key."""
    if key_id is None:
        key_id = time.strftime("k%Y%m%d-") + secrets.token_hex(3)
    if not KEY_ID_RE.fullmatch(key_id):
        raise ConfigError("a key id is 1-32 characters among A-Z a-z 0-9 . _ -", path="--key-id")
    return f"{key_id}:{secrets.token_urlsafe(32)}"


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
    if keyring is not None and keyring.admits_peers:
        return
    outside = {label: host for label, host in addresses.items() if not is_loopback(host)}
    if not outside:
        return
    where = ", ".join(f"{label} {host}" for label, host in outside.items())
    raise ConfigError(
        f"no cluster secret: {what} on a non-loopback address ({where}) needs a cluster secret shared by every "
        f"node (this host's own key admits no other host). Set {ENV_SECRET} (generate a key with `python "
        f"launch.py secret`), or {ENV_SECRET_FILE}, or cluster.secret_file in the config, to the same key on "
        f"every node and client", path="cluster.secret_file")


def describe(keyring: Any) -> str:
    """One line for start-up output: how this process's wire is authenticated, and with what."""
    keyring = getattr(keyring, "keyring", keyring)  # a serializer, or its keys
    if keyring is None:
        return "wire: no key"
    others = [k for k in keyring.key_ids if k != keyring.signing.key_id]
    also = f", also accepting {', '.join(others)}" if others else ""
    if keyring.scope == HOST:
        return (f"wire: HMAC-SHA256 authenticated with this host's key ({keyring.source}), signing with key id "
                f"{keyring.signing.key_id}: local processes only, frames from other hosts are refused "
                f"(set {ENV_SECRET} for a cluster)")
    return f"wire: HMAC-SHA256 authenticated, signing with key id {keyring.signing.key_id}{also} ({keyring.source})"
