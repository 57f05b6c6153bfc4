"""Resolving credentials (env, file, literal, command) and deciding when to refresh them.

:class:`Secret` keeps a credential out of every repr, str, log line and traceback; only
``reveal()`` hands the raw value to the code that puts it on the wire.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors.core.classify import redact
from actors.errors import AuthenticationError, ConfigError

__all__ = ["Secret", "ResolvedCredential", "resolve", "next_refresh_at", "looks_secret"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9+/=_\-.~]{32,}")


def looks_secret(text: str) -> bool:
    """True when ``text`` is shaped like a key or token rather than a name or a path, so a
    message about it must not repeat it (a key pasted into the wrong field)."""
    if not isinstance(text, str):
        return False
    if "[redacted]" in redact(text):
        return True
    return bool(_TOKEN_LIKE.fullmatch(text.strip())) and "/" not in text


class Secret:
    """A credential value: a string, or a mapping of strings (e.g. AWS key id, secret, token)."""

    __slots__ = ("_value",)

    def __init__(self, value: str | Mapping[str, str]) -> None:
        self._value = value if isinstance(value, str) else dict(value)

    def reveal(self) -> Any:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(repr(self))

    def __reduce__(self) -> tuple[type[Secret], tuple[str | dict[str, str]]]:
        return (Secret, (self._value,))


@dataclass(frozen=True)
class ResolvedCredential:
    secret: Secret
    expires_unix: float | None


def _parse_expiry(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()  # reads a trailing "Z" (3.11+)
        except ValueError:
            pass
    raise ValueError(f"unrecognised expiry {value!r}")


def _from_command_output(output: str, source: CredentialSource, now: float) -> ResolvedCredential:
    text = output.strip()
    if not text:
        raise ValueError("command printed nothing")
    if not text.startswith("{"):
        return ResolvedCredential(Secret(text), now + source.ttl_s if source.ttl_s else None)
    doc = json.loads(text)
    if "AccessKeyId" in doc:  # AWS credential_process format
        secret = Secret({"access_key_id": doc["AccessKeyId"], "secret_access_key": doc["SecretAccessKey"],
                         **({"session_token": doc["SessionToken"]} if doc.get("SessionToken") else {})})
        expires = _parse_expiry(doc.get("Expiration"))
    else:
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise ValueError("JSON output needs a non-empty 'token' (or 'access_token')")
        secret = Secret(token)
        expires = _parse_expiry(doc.get("expires_at"))
        if expires is None and doc.get("expires_in") is not None:
            expires = now + float(doc["expires_in"])
    if expires is None and source.ttl_s:
        expires = now + source.ttl_s
    return ResolvedCredential(secret, expires)


def resolve(source: CredentialSource, *, environ: Mapping[str, str] = os.environ,
            now: Callable[[], float] = time.time,
            run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> ResolvedCredential:
    """Read the credential now. Errors name the source, never the value."""
    t = now()
    expires = t + source.ttl_s if source.ttl_s else None
    if source.value is not None:
        return ResolvedCredential(Secret(source.value), None)
    if source.env is not None:
        value = environ.get(source.env, "").strip()
        if not value:
            raise ConfigError(f"environment variable {source.env} is not set", path="credentials.env")
        return ResolvedCredential(Secret(value), expires)
    if source.file is not None:
        try:
            with open(os.path.expanduser(source.file), encoding="utf-8") as fh:
                value = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read credential file {source.file}: {exc.strerror}",
                              path="credentials.file") from None
        if not value:
            raise ConfigError(f"credential file {source.file} is empty", path="credentials.file")
        return ResolvedCredential(Secret(value), expires)
    assert source.command is not None
    try:
        proc = run(source.command, capture_output=True, text=True, timeout=source.command_timeout_s,
                   check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuthenticationError(f"credential command {source.command[0]!r} failed: {type(exc).__name__}") from None
    if proc.returncode != 0:
        # stderr may echo the secret it failed to produce; report only the exit status.
        raise AuthenticationError(f"credential command {source.command[0]!r} exited with {proc.returncode}")
    try:
        return _from_command_output(proc.stdout, source, t)
    except (ValueError, KeyError, TypeError) as exc:
        raise AuthenticationError(f"credential command {source.command[0]!r} printed unusable output: "
                                  f"{type(exc).__name__}") from None


@dataclass(frozen=True)
class CredentialSource:
    """Where a secret comes from; exactly one of env, file, value, command.

    ``command`` output is either the token itself (valid ``ttl_s``) or JSON with ``token``
    (or AWS credential-process fields) and ``expires_at``/``expires_in``. Credentials are
    re-resolved ``refresh_margin_s`` before they expire, every ``refresh_s`` when set, and
    after the provider answers 401.
    """

    env: str | None = None
    file: str | None = None
    value: str | None = None
    command: list[str] | None = None
    ttl_s: float | None = None
    refresh_s: float | None = None
    refresh_margin_s: float = 60.0
    command_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        given = [k for k in ("env", "file", "value", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file, value, command"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.command is not None and not self.command:
            raise ValueError("command: must not be empty, got []")
        if self.env is not None and (not _ENV_NAME.fullmatch(self.env) or looks_secret(self.env)):
            # Most often a key pasted where its variable's name belongs: never repeat it.
            raise ValueError("env: must be the name of an environment variable (letters, digits, _), "
                             "got a value that is not one (not shown: it may be a key)")
        for name in ("ttl_s", "refresh_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.refresh_margin_s < 0 or self.command_timeout_s <= 0:
            raise ValueError("refresh_margin_s must be >= 0 and command_timeout_s > 0")

    def __repr__(self) -> str:
        # The literal form never shows its value.
        shown = {k: getattr(self, k) for k in ("env", "file", "command") if getattr(self, k) is not None}
        if self.value is not None:
            shown["value"] = "***"
        return f"CredentialSource({shown})"


def next_refresh_at(source: CredentialSource, resolved: ResolvedCredential, now: float) -> float | None:
    """When to resolve again: before expiry, on the periodic schedule, whichever is first."""
    candidates = []
    if resolved.expires_unix is not None:
        lifetime = resolved.expires_unix - now
        # Short-lived tokens refresh at half-life rather than never getting a margin at all.
        margin = min(source.refresh_margin_s, max(0.0, lifetime) / 2)
        candidates.append(resolved.expires_unix - margin)
    if source.refresh_s is not None:
        candidates.append(now + source.refresh_s)
    return min(candidates) if candidates else None
