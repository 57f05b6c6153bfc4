"""Credentials: the session actor and its subscribers. Node-only, every one of them: no process but
the node's own may send them (actors/security/permissions.py), so a credential never leaves its node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.errors import InferenceError


@dataclass
class SessionSubscribe:
    subscriber: Any     # must be the sender: an actor subscribes itself
    wants_secret: bool = True


@dataclass
class SessionSnapshot:
    """Node-only: carries the credential to this node's workers."""

    version: int
    credential: Any  # credentials.Secret | None
    expires_unix: float | None = None


@dataclass
class SessionRefresh:
    """Ask for a fresh credential (e.g. after a 401 with version ``seen_version``)."""

    seen_version: int
    reason: str = ""


@dataclass
class SessionVersion:
    version: int
    ok: bool = True
    error: InferenceError | None = None
