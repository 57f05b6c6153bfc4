"""The cluster's member table and failure detector: pure, on an injectable clock.

A member is keyed by its node id (``name@host:admin_port``), unique without the user's
help, and carries an incarnation (random per start). A heartbeat from a new incarnation
of a known id is either a restart (the old one went quiet) or an impostor (two live
nodes claim one id, e.g. two hosts advertising the same address). The newcomer is held
until that is decided: refused if the old incarnation is heard from after the newcomer
first claimed the id, admitted in the old one's place if it stays silent for
``confirm_s``. A member silent for ``failure_timeout_s`` is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["Verdict", "Heard", "MemberTable", "node_id"]


def node_id(name: str, host: str, admin_port: int) -> str:
    return f"{name}@{host or '?'}:{admin_port or '?'}"


class Verdict(Enum):
    JOINED = "joined"         # a new member (the table changed)
    KNOWN = "known"           # a heartbeat of a current member
    REPLACED = "replaced"     # a restarted node took its silent predecessor's place (the table changed)
    HELD = "held"             # a second claimant of a live id: not a member (yet)
    REFUSED = "refused"       # a second claimant while the first one is provably alive


@dataclass(frozen=True)
class Heard:
    verdict: Verdict
    reason: str = ""

    @property
    def changed(self) -> bool:
        return self.verdict in (Verdict.JOINED, Verdict.REPLACED)


@dataclass
class _Member:
    incarnation: str
    info: Any
    seen: float


@dataclass
class _Claim:
    incarnation: str
    first: float
    refused: bool = False


class MemberTable:
    def __init__(self, failure_timeout_s: float = 5.0, confirm_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_timeout_s = failure_timeout_s
        self.confirm_s = confirm_s
        self.clock = clock
        self._members: dict[str, _Member] = {}
        self._claims: dict[str, _Claim] = {}

    def heartbeat(self, key: str, incarnation: str, info: Any) -> Heard:
        now = self.clock()
        member = self._members.get(key)
        if member is None:
            self._members[key] = _Member(incarnation, info, now)
            self._claims.pop(key, None)
            return Heard(Verdict.JOINED)
        if member.incarnation == incarnation:
            member.info, member.seen = info, now
            claim = self._claims.get(key)
            if claim is not None and not claim.refused and now > claim.first:
                claim.refused = True  # the holder spoke after the newcomer's claim: both are alive
            return Heard(Verdict.KNOWN)
        claim = self._claims.get(key)
        if claim is None or claim.incarnation != incarnation:
            claim = self._claims[key] = _Claim(incarnation, now)
        why = (f"node id {key} is already held by a live node (incarnation {member.incarnation}, "
               f"heard from {now - member.seen:.1f}s ago)")
        if claim.refused:
            return Heard(Verdict.REFUSED, why + "; give this node another name (--name) or advertised address")
        if now - member.seen >= self.confirm_s and now - claim.first >= self.confirm_s:
            self._members[key] = _Member(incarnation, info, now)
            del self._claims[key]
            return Heard(Verdict.REPLACED, f"node id {key} restarted (incarnation {member.incarnation} -> {incarnation})")
        return Heard(Verdict.HELD, why + "; waiting to see whether it is still alive")

    def sweep(self) -> list[str]:
        """Drop members silent for longer than the failure timeout; their ids."""
        now = self.clock()
        gone = [key for key, m in self._members.items() if now - m.seen > self.failure_timeout_s]
        for key in gone:
            del self._members[key]
        # A claim nobody repeats is forgotten: the claimant went away.
        stale = [key for key, c in self._claims.items() if now - c.first > 2 * self.failure_timeout_s + self.confirm_s]
        for key in stale:
            del self._claims[key]
        return gone

    def members(self) -> list[tuple[str, Any, float]]:
        """(id, info, seconds since last heard), sorted by id."""
        now = self.clock()
        return sorted(((key, m.info, now - m.seen) for key, m in self._members.items()), key=lambda t: t[0])

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def __len__(self) -> int:
        return len(self._members)
