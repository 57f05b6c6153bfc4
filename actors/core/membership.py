"""The cluster's member table and failure detector: pure, on an injectable clock.

A member is keyed by its node id (``name@host:admin_port``), unique without the user's
help, and carries an incarnation (random per start). A heartbeat from a new incarnation
of a known id is either a restart (the old one went quiet) or an impostor (two live
nodes claim one id, e.g. two hosts advertising the same address). The newcomer is held
until that is decided: refused if the old incarnation is heard from after the newcomer
first claimed the id, admitted in the old one's place if it stays silent for
``confirm_s``. A member silent for ``failure_timeout_s`` is dropped, except the leader's own
node (pinned): a leader never drops itself.

Silence is counted only while the one who listens was running (:class:`Stalls`): a registrar
or registry that was not scheduled for a while (a starved machine, a stopped or blocked
process) has not heard the heartbeats queued for it, so that time is nobody's silence. The
same rule as Cassandra's failure detector, which ignores what it saw across a local pause.

:class:`Standing` is the other side: one node's own place in the cluster (in it, joining,
outside since its leader went quiet, refused), when to try joining again and when to warn,
and what last happened to it (``note``), for status.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["Verdict", "Heard", "MemberTable", "Standing", "Stalls", "node_id", "WARN_EVERY_S"]

WARN_EVERY_S = 30.0   # how often a node outside the cluster repeats its WARNING
NOTES_KEPT = 3        # the events of a node's standing its status shows
_DROPS_REMEMBERED = 256


class Stalls:
    """How long this process stood still between two steps meant to come every ``every_s``.

    A step later than twice its period means the process was not running its loop (not
    scheduled, stopped, or blocked in a send): the excess is a stall. The first step only
    starts the count.
    """

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.last: float | None = None

    def step(self) -> float:
        now = self.clock()
        last, self.last = self.last, now
        return 0.0 if last is None else max(0.0, now - last - 2 * self.every_s)


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
    """The registrar's table; :meth:`sweep` is meant to run every ``sweep_every_s``."""

    def __init__(self, failure_timeout_s: float = 5.0, confirm_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, sweep_every_s: float = 1.0) -> None:
        self.failure_timeout_s = failure_timeout_s
        self.confirm_s = confirm_s
        self.clock = clock
        self.stalls = Stalls(sweep_every_s, clock)
        self.stalled_s = 0.0            # the stall the last sweep found (0: on time)
        self.pinned: set[str] = set()   # never dropped: the leader's own node
        self._members: dict[str, _Member] = {}
        self._claims: dict[str, _Claim] = {}
        self._dropped: dict[str, float] = {}   # id -> when it was dropped, until it is back

    def pin(self, key: str) -> None:
        self.pinned.add(key)

    def heartbeat(self, key: str, incarnation: str, info: Any) -> Heard:
        now = self.clock()
        member = self._members.get(key)
        if member is None:
            self._members[key] = _Member(incarnation, info, now)
            self._claims.pop(key, None)
            dropped = self._dropped.pop(key, None)
            if dropped is None:
                return Heard(Verdict.JOINED)
            return Heard(Verdict.JOINED, f"back {now - dropped:.1f}s after it was dropped for missed heartbeats")
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
        # (The holder has not spoken since the claim, or the claim would be refused: silent as long.)
        if now - claim.first >= self.confirm_s:
            self._members[key] = _Member(incarnation, info, now)
            del self._claims[key]
            return Heard(Verdict.REPLACED, f"node id {key} restarted (incarnation {member.incarnation} -> {incarnation})")
        return Heard(Verdict.HELD, why + "; waiting to see whether it is still alive")

    def sweep(self) -> list[str]:
        """Drop members silent for longer than the failure timeout (the pinned never); their ids.

        A stall of the sweeper since its last sweep is added to everyone's last-heard time
        first (``stalled_s`` says how long): their heartbeats may be queued unread.
        """
        now = self.clock()
        self.stalled_s = stall = self.stalls.step()
        if stall:
            for m in self._members.values():
                m.seen = min(now, m.seen + stall)
        gone = [key for key, m in self._members.items()
                if now - m.seen > self.failure_timeout_s and key not in self.pinned]
        for key in gone:
            del self._members[key]
            self._dropped[key] = now
        while len(self._dropped) > _DROPS_REMEMBERED:
            del self._dropped[next(iter(self._dropped))]
        # A claim nobody repeats is forgotten: the claimant went away.
        stale = [key for key, c in self._claims.items() if now - c.first > 2 * self.failure_timeout_s + self.confirm_s]
        for key in stale:
            del self._claims[key]
        return gone

    def members(self) -> list[tuple[str, Any, float]]:
        """(id, info, seconds since last heard), sorted by id."""
        now = self.clock()
        return sorted((key, m.info, now - m.seen) for key, m in self._members.items())  # ids are unique

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def __len__(self) -> int:
        return len(self._members)


class Standing:
    """One node's own standing: the leader is always in; a member is in while memberships
    counting it keep arriving within ``failure_timeout_s``.

    A member outside retries joining every ``retry_s`` and warns after ``failure_timeout_s``
    outside, then every ``warn_every_s``: bounded, whatever the traffic. The node calls
    :meth:`step` once per ``tick_every_s``; a stall of its own is not its leader's silence.
    """

    def __init__(self, leader: bool, failure_timeout_s: float = 5.0, retry_s: float = 3.0,
                 warn_every_s: float = WARN_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 tick_every_s: float = 1.0) -> None:
        self.leader = leader
        self.stalls = Stalls(tick_every_s, clock)
        self.events: deque[tuple[float, str, str]] = deque(maxlen=NOTES_KEPT)  # (when, kind, text), oldest first
        self.failure_timeout_s = failure_timeout_s
        self.retry_s = retry_s
        self.warn_every_s = warn_every_s
        self.clock = clock
        self.started = now = clock()
        self.outside_since: float | None = None if leader else now
        self.heard_at: float | None = None     # the last membership that counted this node
        self.quiet = False                     # the leader has gone quiet since (reported once)
        self.leader_node = ""
        self.lost_why = ""
        self.refused = ""
        self.next_retry = now + retry_s
        self.next_warning = now + failure_timeout_s

    @property
    def in_cluster(self) -> bool:
        return self.leader or (self.outside_since is None and not self.refused)

    def heard(self, leader_node: str) -> float | None:
        """A membership that counts this node; when it (re)joins with it, how long it was outside."""
        now = self.clock()
        first = self.heard_at is None
        self.heard_at, self.leader_node, self.refused, self.quiet = now, leader_node, "", False
        if self.outside_since is None:
            return 0.0 if first else None
        outside, self.outside_since = now - self.outside_since, None
        if not first:
            self._note("back", f"back in the cluster led by {leader_node or '?'} after {outside:.1f}s outside it"
                       + (f" ({self.lost_why})" if self.lost_why else ""))
        return outside

    def step(self) -> float:
        """Once per tick: this node's own stall since the last one (0.0 when on time), which is
        added to the time the last membership came: memberships may be queued unread."""
        stall = self.stalls.step()
        if stall:
            if self.heard_at is not None:
                self.heard_at = min(self.clock(), self.heard_at + stall)
            self._note("stall", f"this node stood still for {stall:.1f}s (not scheduled, stopped or blocked), "
                       "a silence not counted against the cluster")
        return stall

    def dropped(self, what: str) -> None:
        """The leader's registrar dropped this node and took it back (``what`` says when): noted."""
        self._note("dropped", f"the leader's registrar dropped this node and took it back: {what}")

    def note(self) -> str:
        """What last happened to this node's standing, newest first, each with how long ago ("" if nothing)."""
        now = self.clock()
        return "; ".join(f"{text} ({now - at:.0f}s ago)" for at, _, text in reversed(self.events))

    def _note(self, kind: str, text: str) -> None:
        if self.events and self.events[-1][1] == kind:
            self.events.pop()  # a repeat (stall after stall under a long load) keeps the older news in view
        self.events.append((self.clock(), kind, text))

    def silent_for(self) -> float | None:
        """Seconds since the last membership, once that exceeds the failure timeout (the leader is lost)."""
        if self.quiet or self.heard_at is None:
            return None
        silent = self.clock() - self.heard_at
        return silent if silent > self.failure_timeout_s else None

    def since_heard(self) -> float | None:
        return None if self.heard_at is None else self.clock() - self.heard_at

    def lost(self, why: str) -> None:
        self.quiet = True
        if self.leader:
            self._note("registrar", f"its own registrar did not answer ({why}), located again: still the leader")
            return
        if self.outside_since is not None:
            return
        now = self.clock()
        self.outside_since, self.lost_why = now, why
        self._note("lost", f"left the cluster: leader {self.leader_node or '?'} unreachable ({why})")
        self.next_retry = now  # at the next tick
        self.next_warning = now + self.warn_every_s  # the loss itself is logged as it happens

    def refuse(self, reason: str) -> bool:
        """The cluster refused this node; True the first time (log it then)."""
        first = reason != self.refused
        self.refused = reason
        if first:
            self._note("refused", f"refused by the cluster: {reason}")
        if self.outside_since is None and not self.leader:
            self.outside_since = self.clock()
        return first

    def retry_due(self) -> bool:
        """Time to ask the leader to take this node in again (once per ``retry_s`` while outside)."""
        now = self.clock()
        if self.in_cluster or now < self.next_retry:
            return False
        self.next_retry = now + self.retry_s
        return True

    def warning_due(self) -> str | None:
        """The WARNING to log now, if one is due: at most one per ``warn_every_s``."""
        now = self.clock()
        if self.in_cluster or self.refused or now < self.next_warning:
            return None
        self.next_warning = now + self.warn_every_s
        return self.describe()

    def describe(self) -> str:
        """What status shows: ``leader``, ``member``, ``refused: ...`` or ``not in cluster: ...``."""
        if self.leader:
            return "leader"
        if self.refused:
            return f"refused: {self.refused}"
        if self.outside_since is None:
            return "member"
        outside = self.clock() - self.outside_since
        if self.heard_at is None:
            return f"not in cluster: joining, no membership from the leader in {outside:.0f}s since start"
        return (f"not in cluster: leader {self.leader_node or '?'} unreachable for {outside:.0f}s"
                + (f" ({self.lost_why})" if self.lost_why else ""))
