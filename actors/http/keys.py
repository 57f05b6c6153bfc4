"""The HTTP callers' keys: made, resolved to digests once, and checked in constant time.

Only SHA-256 digests are kept after start-up, so a key never sits in this process's memory
longer than it takes to hash it, and never reaches a log line, a repr or an error body.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from actors.errors import ConfigError
from actors.settings.schema import HttpConfig, HttpKey

__all__ = ["KEY_PREFIX", "new_key", "digest", "Caller", "KeyRing", "presented_key"]

KEY_PREFIX = "sk-atomr-"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def new_key() -> tuple[str, str]:
    """A fresh key and the line to paste into the config (the digest, never the key)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, f"sha256: {digest(key).hex()}"


@dataclass(frozen=True)
class Caller:
    """Who made a request: the key's name and its allow-list (None: every model)."""

    name: str
    models: frozenset[str] | None
    team: str = ""      # the key's team (its calls count against the team's spend budgets)
    admin: bool = False     # may read the node's metrics, status and dashboard

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Caller("anonymous", None)


def _resolve(entry: HttpKey, where: str, environ: Mapping[str, str]) -> bytes:
    source = entry.key
    if source.sha256 is not None:
        return bytes.fromhex(source.sha256)
    if source.value is not None:
        return digest(source.value.strip())
    if source.env is not None:
        value = environ.get(source.env, "").strip()
        if not value:
            raise ConfigError(f"environment variable {source.env} is not set (key {entry.name!r})",
                              path=f"{where}.key.env")
        return digest(value)
    assert source.file is not None, "ApiKeySource holds exactly one of env, file, value, sha256"
    try:
        value = Path(os.path.expanduser(source.file)).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"key file {source.file} is not readable: {exc.strerror}", path=f"{where}.key.file") from None
    if not value:
        raise ConfigError(f"key file {source.file} is empty", path=f"{where}.key.file")
    return digest(value)


class KeyRing:
    """Digest -> caller. ``check`` compares against every digest (no early exit), in constant time."""

    def __init__(self, config: HttpConfig, environ: Mapping[str, str] = os.environ) -> None:
        self.open = config.auth == "none"
        self._entries: list[tuple[bytes, Caller]] = []
        for i, entry in enumerate(config.keys):
            models = frozenset(entry.models) if entry.models is not None else None
            self._entries.append((_resolve(entry, f"http.keys[{i}]", environ),
                                  Caller(entry.name, models, entry.team or "", entry.admin)))

    @property
    def has_admin(self) -> bool:
        return any(caller.admin for _, caller in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"KeyRing({len(self._entries)} keys{', auth none' if self.open else ''})"

    def check(self, presented: str | None) -> Caller | None:
        """The caller this key belongs to, or None. With ``auth: none`` any request is anonymous."""
        if presented is None:
            return ANONYMOUS if self.open else None
        wanted = digest(presented)
        found = None
        for known, caller in self._entries:
            if hmac.compare_digest(known, wanted) and found is None:
                found = caller
        if found is None and self.open:
            return ANONYMOUS
        return found


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer`` or ``x-api-key`` (what the openai and anthropic SDKs send).
    ``headers`` keys are lower-case."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = headers.get("x-api-key", "").strip()
    return api_key or None


def new_key_text() -> str:
    """What ``python launch.py key new`` prints: the key once, and the line for the config."""
    key, line = new_key()
    return (f"key (give it to the caller; it is not stored anywhere): {key}\n"
            f"paste into the config under http.keys:\n"
            f"  - name: <who>\n"
            f"    key: {{{line}}}\n")
