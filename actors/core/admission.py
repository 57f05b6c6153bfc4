"""Admission for the request at the head of an engine's queue: the breaker gate, then the budget.

Typed verdicts, so a caller cannot mistake a generation for an error: the breaker says
:class:`Admit` (with the generation its outcome is reported under, and whether it is a
half-open probe), :class:`Refuse` or :class:`NeedProbe`; the budget says
:class:`Reserved`, :class:`Wait` (until when) or :class:`Denied` (the typed error).
Budget comes from the local limiter replica (approximate mode) or one round trip to the
strict limiter on the leader. While the leader is out of reach (strict) or this node is
outside the cluster (approximate), ``limits.leader_unavailable`` decides: refuse, or admit
within this node's share; a node that has never been in the cluster has no share to take.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actors.core.breaker import BreakerView
from actors.core.engine_events import AskProbe, AskStrict, ReportOutcomes
from actors.core.ratelimit import RateLimits, Reservation, WindowedLimiter
from actors.core.settlement import AttemptId
from actors.errors import Cancelled, InferenceError, LeaderUnavailable

if TYPE_CHECKING:
    from actors.core.engine_core import EngineCore, Job

__all__ = ["Admission", "Admit", "Refuse", "NeedProbe", "Reserved", "Wait", "Denied",
           "PROBE_RETRY_S", "STRICT_ASK_TIMEOUT_S", "BUDGET_POLL_S"]

PROBE_RETRY_S = 0.25        # how soon an unanswered or refused probe ask is repeated
STRICT_ASK_TIMEOUT_S = 2.0  # how soon an unanswered strict ask is repeated (same id: granted once)
BUDGET_POLL_S = 0.05        # how soon a wait with no known end is looked at again


@dataclass(frozen=True)
class Admit:
    generation: int
    probe: bool = False


@dataclass(frozen=True)
class Refuse:
    error: InferenceError


@dataclass(frozen=True)
class NeedProbe:
    pass


@dataclass(frozen=True)
class Reserved:
    reservation: Reservation | None


@dataclass(frozen=True)
class Wait:
    until: float


@dataclass(frozen=True)
class Denied:
    error: InferenceError


class Admission:
    def __init__(self, core: "EngineCore", failure_timeout_s: float) -> None:
        self.core = core
        self.failure_timeout_s = failure_timeout_s
        dep = core.dep
        self.strict = dep.limits.mode == "strict" and core.limiter is not None
        self.leader_available = False
        self.leader_lost = False
        self.leader_down_since: float | None = core.clock()  # unknown until the registry says
        self.in_cluster = True   # until the registry says otherwise (a leader's node always is)
        self.shares = 0          # what a budget splits into while outside: unknown until the registry says
        self.fallback: WindowedLimiter | None = None
        self.probe_grant: int | None = None
        self.probe_token = ""
        self.probe_asked_at = 0.0
        self.probe_refused_at: float | None = None
        self._tokens = itertools.count(1)

    # -- breaker ---------------------------------------------------------------------

    def breaker(self, now: float) -> Admit | Refuse | NeedProbe:
        verdict, detail = self.core.view.admit(self.core.wall() * 1000)
        if verdict == BreakerView.REFUSE:
            return Refuse(detail)
        if verdict == BreakerView.NEED_PROBE:
            return NeedProbe()
        return Admit(detail)

    def take_probe(self, now: float) -> Admit | None:
        """The granted probe, or None after asking the breaker actor for one."""
        if self.probe_grant is not None:
            grant, self.probe_grant = self.probe_grant, None
            return Admit(grant, probe=True)
        view = self.core.view
        holding_off = view.probe_requested or self.probe_refused_at is not None
        if not holding_off or now - max(self.probe_asked_at, self.probe_refused_at or 0.0) >= PROBE_RETRY_S:
            view.probe_requested = True
            self.probe_asked_at, self.probe_refused_at = now, None
            self.probe_token = f"{self.core.slot}:{next(self._tokens)}"
            self.core.emit(AskProbe(self.probe_token))
        self.core.pump_soon(max(self.probe_asked_at, self.probe_refused_at or 0.0) + PROBE_RETRY_S)
        return None

    def put_back(self, gate: Admit) -> None:
        if gate.probe:
            self.probe_grant = gate.generation  # unused: released at end() unless the next job takes it

    def end(self) -> None:
        if self.probe_grant is not None:
            self.release_probe(self.probe_grant)
            self.probe_grant = None

    def release_probe(self, generation: int) -> None:
        # An unused probe slot: a non-counted outcome frees it at the breaker.
        self.core.emit(ReportOutcomes([(generation, Cancelled("probe not used"))]))

    def probe_admitted(self, token: str, generation: int) -> None:
        if token != self.probe_token or self.probe_grant is not None:
            return self.release_probe(generation)  # a stale answer: the current ask is still out
        self.core.view.probe_requested = False
        self.probe_grant = generation

    def probe_refused(self, token: str, now: float) -> None:
        if token == self.probe_token:
            self.core.view.probe_requested = False
            self.probe_refused_at = now  # the next ask waits PROBE_RETRY_S
            self.core.pump_soon(now + PROBE_RETRY_S)

    # -- budget ----------------------------------------------------------------------

    def budget(self, job: "Job", now: float) -> Reserved | Wait | Denied:
        core = self.core
        if core.limiter is None or job.reservation is not None:
            return Reserved(job.reservation)
        if self.strict:
            return self._strict(job, now)
        if not self.in_cluster:
            return self._outside(job, core.limiter, now)
        return self._local(job, core.limiter, now)

    def _local(self, job: "Job", limiter: WindowedLimiter, now: float) -> Reserved | Wait | Denied:
        verdict = limiter.try_acquire(job.estimate)
        self.core.dirty = True
        if isinstance(verdict, Reservation):
            job.held_by = limiter
        return self._verdict(job, verdict, now)

    def _verdict(self, job: "Job", verdict: Reservation | InferenceError, now: float) -> Reserved | Wait | Denied:
        if isinstance(verdict, Reservation):
            job.reservation = verdict
            return Reserved(verdict)
        wait = verdict.retry_after_s if verdict.retry_after_s is not None and verdict.retry_after_s > 0 else BUDGET_POLL_S
        verdict.provider = self.core.dep.provider
        if not verdict.retryable or (job.deadline is not None and now + wait >= job.deadline):
            return Denied(verdict)
        return Wait(now + min(max(wait, 0.005), 1.0))

    def leader(self, available: bool, shares: int, now: float, in_cluster: bool = True) -> None:
        known = available or shares > 0  # no shares: this node has not been in the cluster yet (still starting)
        self.leader_available, self.shares, self.in_cluster = available, shares, in_cluster
        self.leader_lost = not available and known
        if available or known:
            self.leader_down_since = None if available else now
        if (available if self.strict else in_cluster):
            self.fallback = None

    def _starting(self, now: float) -> bool:
        """Not told where the leader is yet, and not for long: the registry will say."""
        return (not self.leader_lost and self.leader_down_since is not None
                and now - self.leader_down_since < self.failure_timeout_s)

    def _outside(self, job: "Job", replica: WindowedLimiter, now: float) -> Reserved | Wait | Denied:
        """An approximate budget while this node is outside the cluster: its replica sees only
        part of the cluster, so it is never spent as if it were the whole budget."""
        if self._starting(now):
            return Wait(now + BUDGET_POLL_S)
        if self.core.dep.limits.leader_unavailable == "local_share":
            return self._shared(job, now, replica)
        return Denied(LeaderUnavailable("this node is not in the cluster (its leader is unreachable) and the budget "
                                        "is limits.leader_unavailable: fail", provider=self.core.dep.provider,
                                        retry_after_s=self.failure_timeout_s))

    def _shared(self, job: "Job", now: float, replica: WindowedLimiter | None = None) -> Reserved | Wait | Denied:
        """Admission within this node's share (``local_share``); approximate budgets also within their replica."""
        if self.shares < 1:
            return self._no_share()
        fallback = self._fallback()
        if replica is None:  # strict: the share alone
            return self._local(job, fallback, now)
        share = fallback.try_acquire(job.estimate)
        if not isinstance(share, Reservation):
            return self._verdict(job, share, now)
        held = self._local(job, replica, now)  # counted where the cluster sees it once back
        if not isinstance(held, Reserved):
            fallback.release(share)
        return held

    def _no_share(self) -> Denied:
        return Denied(LeaderUnavailable("this node has not been in the cluster since it started, so it does not "
                                        "know its share of the budget", provider=self.core.dep.provider,
                                        retry_after_s=self.failure_timeout_s))

    def spend_outside(self, now: float) -> Wait | Denied | None:
        """Approximate spend budgets of a node never in the cluster: its replica knows no one
        else's spend, so wait while starting, then refuse. (After a loss the replica still holds
        the cluster's spend for the period, and admission goes on against it.)"""
        if self.in_cluster or self.shares > 0:
            return None
        return Wait(now + BUDGET_POLL_S) if self._starting(now) else self._no_share()

    def _strict(self, job: "Job", now: float) -> Reserved | Wait | Denied:
        """Exact admission: one round trip to the strict limiter on the leader per attempt."""
        if job.strict_denied is not None:
            denied, job.strict_denied = job.strict_denied, None
            return self._verdict(job, denied, now)
        unanswered = (job.strict_first_ask is not None
                      and now - job.strict_first_ask >= self.failure_timeout_s + STRICT_ASK_TIMEOUT_S)
        if not self.leader_available or unanswered:
            if self._starting(now) and not unanswered:
                return Wait(now + BUDGET_POLL_S)  # still starting up: the registry will say where it is
            job.strict_asked = job.strict_first_ask = None
            if self.core.dep.limits.leader_unavailable == "local_share":
                return self._shared(job, now)
            return Denied(LeaderUnavailable("strict rate limiting needs the convention leader, which is "
                                            "unreachable", provider=self.core.dep.provider,
                                            retry_after_s=self.failure_timeout_s))
        if job.strict_asked is None or now - job.strict_asked >= STRICT_ASK_TIMEOUT_S:
            job.strict_asked = now
            if job.strict_first_ask is None:
                job.strict_first_ask = now
            self.core.emit(AskStrict(str(AttemptId(job.request_id, job.attempts + 1)), job.estimate))
        return Wait(job.strict_asked + STRICT_ASK_TIMEOUT_S)

    def _fallback(self) -> WindowedLimiter:
        """This engine's share of the budget while away from the cluster (``leader_unavailable: local_share``)."""
        if self.fallback is None:
            core, share = self.core, self.shares
            limits = core.dep.limits
            scaled = RateLimits(rpm=max(1, limits.rpm // share) if limits.rpm else None,
                                tpm=max(1, limits.tpm // share) if limits.tpm else None,
                                burst=limits.burst, window_s=limits.window_s)
            self.fallback = WindowedLimiter(core.slot + "/fallback", scaled, wall_clock=core.wall,
                                            exclusive=True, clock=core.clock)
        return self.fallback
