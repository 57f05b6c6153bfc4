"""Admission for the request at the head of an engine's queue: the breaker gate, then the budget gate.

Typed verdicts, so a caller cannot mistake a generation for an error: the breaker gate says
:class:`Admit` (with the generation its outcome is reported under, and whether it is a
half-open probe), :class:`Refuse` or :class:`NeedProbe`; the budget gate says
:class:`Reserved`, :class:`Wait` (until when) or :class:`Denied` (the typed error).
Budget comes from the local limiter replica (approximate mode) or, for a strict budget, the
lease this engine holds from the leader (spent locally, refreshed in the background). While the leader is out of reach (strict) or this node is
outside the cluster (approximate), ``limits.leader_unavailable`` decides: refuse, or admit
within this node's share; a node that has never been in the cluster has no share to take.

The gates do not know the engine: they put effects and wakeups through an
:class:`AdmissionHost` (two methods), and read a request through its :class:`~actors.core.jobs.Job`.
:class:`Admission` asks them in their order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from actors.core.breaker import BreakerView
from actors.core.engine_events import AskLease, AskProbe, PeerCounts, PublishCounts, ReportOutcomes
from actors.core.leases import LeaseGrant, LeaseHolder, Pair
from actors.core.ratelimit import RateLimits, Reservation, SyncSchedule, WindowedLimiter
from actors.core.settlement import Settle, Settlement, apply_settlement
from actors.errors import BudgetExceeded, Cancelled, CircuitOpen, InferenceError, LeaderUnavailable

if TYPE_CHECKING:
    from actors.core.budget import SpendGate
    from actors.core.jobs import Job

__all__ = ["Admission", "AdmissionHost", "BreakerGate", "BudgetGate", "Leader", "Held", "Admit", "Refuse",
           "NeedProbe", "Reserved", "StrictBudget", "Wait", "Denied", "PROBE_RETRY_S", "STRICT_ASK_TIMEOUT_S",
           "BUDGET_POLL_S", "TICK_S"]

PROBE_RETRY_S = 0.25        # how soon an unanswered or refused probe ask is repeated
STRICT_ASK_TIMEOUT_S = 2.0  # how long a lease ask may go unanswered before the leader is presumed lost
BUDGET_POLL_S = 0.05        # how soon a wait with no known end is looked at again
TICK_S = 0.05               # how soon a success outcome reaches the breaker


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


class AdmissionHost(Protocol):
    """What a gate needs of the engine it admits for."""

    def emit(self, effect: object) -> None:
        """Carry out ``effect`` (an engine_events effect) after this step."""

    def pump_soon(self, when: float) -> None:
        """Look at the queue again at ``when`` (the core's monotonic clock) at the latest."""


@dataclass(eq=False)
class Held:
    """Rate-limit budget held for one attempt until it is settled: a reservation in a replica
    (the deployment's, under a strict budget's lease too, or this node's share)."""

    reservation: Reservation | None = None
    limiter: WindowedLimiter | None = None


# -- the breaker gate -----------------------------------------------------------------------

class BreakerGate:
    """The breaker as one engine sees it: the pushed view (a closed circuit admits with no
    message), half-open probes asked of the breaker actor, and what the engine reports back
    (failures and probes at once, successes batched for ``TICK_S``)."""

    def __init__(self, host: AdmissionHost, view: BreakerView, *, slot: str, wall: Callable[[], float]) -> None:
        self.host = host
        self.view = view
        self.slot = slot
        self.wall = wall
        self.probe_grant: int | None = None
        self.probe_token = ""
        self.probe_asked_at = 0.0
        self.probe_refused_at: float | None = None
        self._tokens = itertools.count(1)
        self.outcomes: list[tuple[int, InferenceError | None]] = []
        self.flush_at: float | None = None

    def admit(self, now: float) -> Admit | Refuse | NeedProbe:
        _, detail = self.view.admit(self.wall() * 1000)
        if isinstance(detail, CircuitOpen):
            return Refuse(detail)
        if detail is None:
            return NeedProbe()
        return Admit(detail)

    def take_probe(self, now: float) -> Admit | None:
        """The granted probe, or None after asking the breaker actor for one."""
        if self.probe_grant is not None:
            grant, self.probe_grant = self.probe_grant, None
            return Admit(grant, probe=True)
        holding_off = self.view.probe_requested or self.probe_refused_at is not None
        if not holding_off or now - self._held_off_since() >= PROBE_RETRY_S:
            self.view.probe_requested = True
            self.probe_asked_at, self.probe_refused_at = now, None
            self.probe_token = f"{self.slot}:{next(self._tokens)}"
            self.host.emit(AskProbe(self.probe_token))
        self.host.pump_soon(self._held_off_since() + PROBE_RETRY_S)
        return None

    def _held_off_since(self) -> float:
        """When the last ask went, or the last refusal came when that is later."""
        refused = self.probe_refused_at
        return self.probe_asked_at if refused is None else max(self.probe_asked_at, refused)

    def put_back(self, gate: Admit) -> None:
        if gate.probe:
            self.probe_grant = gate.generation  # unused: released at end() unless the next job takes it

    def end(self) -> None:
        if self.probe_grant is not None:
            self.release_probe(self.probe_grant)
            self.probe_grant = None

    def release_probe(self, generation: int) -> None:
        # An unused probe slot: a non-counted outcome frees it at the breaker.
        self.host.emit(ReportOutcomes([(generation, Cancelled("probe not used"))]))

    def probe_admitted(self, token: str, generation: int) -> None:
        if token != self.probe_token or self.probe_grant is not None:
            return self.release_probe(generation)  # a stale answer: the current ask is still out
        self.view.probe_requested = False
        self.probe_grant = generation

    def probe_refused(self, token: str, now: float) -> None:
        if token == self.probe_token:
            self.view.probe_requested = False
            self.probe_refused_at = now  # the next ask waits PROBE_RETRY_S
            self.host.pump_soon(now + PROBE_RETRY_S)

    # -- what the breaker hears -----------------------------------------------------------

    def report(self, generation: int, error: InferenceError | None) -> None:
        """An outcome the breaker must hear now (a failure, a probe's result), with any batched before it."""
        self.outcomes.append((generation, error))
        self.flush()

    def succeeded(self, generation: int, now: float) -> None:
        """A success of a call that was no probe: batched, heard within ``TICK_S``."""
        self.outcomes.append((generation, None))
        if self.flush_at is None:
            self.flush_at = now + TICK_S

    def flush(self) -> None:
        self.flush_at = None
        if self.outcomes:
            self.host.emit(ReportOutcomes(self.outcomes))
            self.outcomes = []

    def lost(self, generation: int, probe: bool, error: InferenceError | None) -> None:
        """An attempt abandoned or lost with its worker: it says nothing about the provider, but a
        probe's half-open slot is freed (a probe abandoned after it succeeded reports its success)."""
        if probe:
            self.report(generation, error if error is None else Cancelled("probe abandoned"))


# -- where the cluster is -------------------------------------------------------------------

class Leader:
    """Where the cluster is, as the registry last said (``StrictLeader``): whether the strict
    limiter's leader answers, whether this node is in the cluster, and in how many shares a
    budget splits while it is not (0: never in the cluster since it started)."""

    def __init__(self, now: float, failure_timeout_s: float) -> None:
        self.failure_timeout_s = failure_timeout_s
        self.available = False
        self.lost = False
        self.down_since: float | None = now  # unknown until the registry says
        # Outside until the node says otherwise: a call that comes before the node's first word
        # waits (``starting``), then is refused, rather than spend a budget as if it were the cluster's.
        self.in_cluster = False
        self.shares = 0

    def update(self, available: bool, shares: int, now: float, in_cluster: bool = True) -> None:
        known = available or shares > 0  # no shares: this node has not been in the cluster yet (still starting)
        self.available, self.shares, self.in_cluster = available, shares, in_cluster
        self.lost = not available and known
        if available or known:
            self.down_since = None if available else now

    def starting(self, now: float) -> bool:
        """Not told where the leader is yet, and not for long: the registry will say."""
        return not self.lost and self.down_since is not None and now - self.down_since < self.failure_timeout_s

    def no_share(self, provider: str) -> Denied:
        return Denied(LeaderUnavailable("this node has not been in the cluster since it started, so it does not "
                                        "know its share of the budget", provider=provider,
                                        retry_after_s=self.failure_timeout_s))

    def unreachable(self, what: str, held: str, provider: str = "") -> Denied:
        """A strict budget's lease does not cover a request and the leader is out of reach."""
        return Denied(LeaderUnavailable(f"{what} needs the convention leader, which is unreachable, and {held}",
                                        provider=provider, retry_after_s=self.failure_timeout_s))

    def spend_outside(self, now: float, provider: str) -> Wait | Denied | None:
        """Approximate spend budgets of a node never in the cluster: its replica knows no one
        else's spend, so wait while starting, then refuse. (After a loss the replica still holds
        the cluster's spend for the period, and admission goes on against it.)"""
        if self.in_cluster or self.shares > 0:
            return None
        return Wait(now + BUDGET_POLL_S) if self.starting(now) else self.no_share(provider)


# -- a strict budget's lease ----------------------------------------------------------------

class StrictBudget:
    """One strict budget as one engine spends it: the lease it holds from the leader
    (core/leases.py) and the replica that counts what it spent under it, which is what it
    reports at its next ask. The deployment's rate limits use one (requests and tokens); a
    strict spend budget another (requests unlimited, tokens in nano-USD over its period)."""

    def __init__(self, key: str, limits: RateLimits, replica: WindowedLimiter, holder: LeaseHolder) -> None:
        self.key, self.limits = key, limits
        self.replica = replica
        self.holder = holder

    def fits(self, cost: Pair, now: float) -> bool:
        return self._fits(self.replica.current_window(), cost, now)

    def _fits(self, window: int, cost: Pair, now: float) -> bool:
        return self.holder.allows(window, now, self.replica.own(window), cost)

    def take(self, cost: Pair, now: float) -> Reservation | None:
        """Spent locally when the lease covers ``cost`` (no message); None when it does not."""
        window = self.replica.current_window()
        if not self._fits(window, cost, now):
            return None
        self.holder.blocked = False
        return self.replica.record(cost[1], cost[0], window=window)

    def short(self, cost: Pair, now: float, available: bool) -> Literal["unreachable", "spent", "short"]:
        """Why ``cost`` does not fit: the leader is out of reach (or has not answered for
        ``STRICT_ASK_TIMEOUT_S``), the window has no room for it anywhere in the cluster, or this
        lease is too small for now (then the holder is blocked: it asks at once)."""
        holder, window = self.holder, self.replica.current_window()
        if not available or holder.unanswered(now) >= STRICT_ASK_TIMEOUT_S:
            holder.blocked = False
            return "unreachable"
        if holder.spent_out(window, cost):
            holder.blocked = False
            return "spent"
        holder.blocked, holder.need = True, cost
        return "short"

    def unusable(self, now: float) -> str:
        expired = self.holder.usable(self.replica.current_window(), now) is None
        return "its lease has expired" if expired else "its lease is spent"

    def left(self) -> int | None:
        """What the last grant said is left of the window's tokens across the cluster (None: unknown)."""
        g = self.holder.grant
        return g.left[1] if g is not None and g.window == self.replica.current_window() else None

    def wait_until(self, now: float) -> float:
        due = self.holder.due(now)
        return now + BUDGET_POLL_S if due is None else min(due, now + BUDGET_POLL_S)

    def due(self, now: float) -> float | None:
        return self.holder.due(now)

    def ask(self, now: float, backlog: Pair) -> AskLease | None:
        """The ask due now (what this engine spent in the window, holds and wants), if any."""
        due = self.holder.due(now)
        if due is None or due > now:
            return None
        window = self.replica.current_window()
        return AskLease(self.key, self.limits, self.holder.ask(now, window, self.replica.own(window), backlog))


# -- the budget gate ------------------------------------------------------------------------

class BudgetGate:
    """The deployment's rate limits as one engine admits against them: its replica (synced with
    the node's hub as GCounter deltas), strict asks to the leader, and this node's share while
    away from the cluster."""

    def __init__(self, host: AdmissionHost, limits: RateLimits, replica: WindowedLimiter | None, leader: Leader, *,
                 provider: str, slot: str, key: str, clock: Callable[[], float], wall: Callable[[], float],
                 sync_interval_s: float) -> None:
        self.host = host
        self.limits = limits
        self.replica = replica
        self.leader = leader
        self.provider, self.slot, self.key = provider, slot, key
        self.clock, self.wall = clock, wall
        self.strict = (StrictBudget(key, limits, replica, LeaseHolder(slot, clock=clock))
                       if limits.mode == "strict" and replica is not None else None)
        self.backlog: Callable[[], Pair] = lambda: (0, 0)   # what waits in the engine's queue (the core sets it)
        self.fallback: WindowedLimiter | None = None
        self.sync = SyncSchedule(sync_interval_s, clock())

    def admit(self, job: Job, now: float) -> Reserved | Wait | Denied:
        if self.replica is None or job.held.reservation is not None:
            return Reserved(job.held.reservation)
        if self.strict is not None:
            return self._strict(job, now)
        if not self.leader.in_cluster:
            return self._outside(job, self.replica, now)
        return self._local(job, self.replica, now)

    def _local(self, job: Job, limiter: WindowedLimiter, now: float) -> Reserved | Wait | Denied:
        verdict = limiter.try_acquire(job.estimate)
        self.sync.touch()
        if isinstance(verdict, Reservation):
            job.held.limiter = limiter
        return self._verdict(job, verdict, now)

    def _verdict(self, job: Job, verdict: Reservation | InferenceError, now: float) -> Reserved | Wait | Denied:
        if isinstance(verdict, Reservation):
            job.held.reservation = verdict
            return Reserved(verdict)
        wait = verdict.retry_after_s if verdict.retry_after_s is not None and verdict.retry_after_s > 0 else BUDGET_POLL_S
        verdict.provider = self.provider
        if not verdict.retryable or (job.deadline is not None and now + wait >= job.deadline):
            return Denied(verdict)
        return Wait(now + min(max(wait, 0.005), 1.0))

    def leader_changed(self, available: bool, shares: int, now: float, in_cluster: bool) -> None:
        self.leader.update(available, shares, now, in_cluster)
        if available if self.strict is not None else in_cluster:
            self.fallback = None

    def _outside(self, job: Job, replica: WindowedLimiter, now: float) -> Reserved | Wait | Denied:
        """An approximate budget while this node is outside the cluster: its replica sees only
        part of the cluster, so it is never spent as if it were the whole budget."""
        if self.leader.starting(now):
            return Wait(now + BUDGET_POLL_S)
        if self.limits.leader_unavailable == "local_share":
            return self._shared(job, now, replica)
        return Denied(LeaderUnavailable("this node is not in the cluster (its leader is unreachable) and the budget "
                                        "is limits.leader_unavailable: fail", provider=self.provider,
                                        retry_after_s=self.leader.failure_timeout_s))

    def _shared(self, job: Job, now: float, replica: WindowedLimiter | None = None) -> Reserved | Wait | Denied:
        """Admission within this node's share (``local_share``); approximate budgets also within their replica."""
        if self.leader.shares < 1:
            return self.leader.no_share(self.provider)
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

    def _fallback(self) -> WindowedLimiter:
        """This engine's share of the budget while away from the cluster (``leader_unavailable: local_share``)."""
        if self.fallback is None:
            self.fallback = WindowedLimiter(self.slot + "/fallback", self.limits.divided(self.leader.shares),
                                            wall_clock=self.wall, exclusive=True, clock=self.clock)
        return self.fallback

    # -- strict: spent locally under the leader's lease (core/leases.py) ------------------

    def _strict(self, job: Job, now: float) -> Reserved | Wait | Denied:
        strict = self.strict
        assert strict is not None
        replica = strict.replica
        refused = replica.refusal(job.estimate)
        if refused is not None and not refused.retryable:
            return self._verdict(job, refused, now)   # more than the whole budget: never fits
        cost = (1, job.estimate)
        reservation = strict.take(cost, now)
        if reservation is not None:
            job.held = Held(reservation, replica)
            self.sync.touch()
            return Reserved(reservation)
        short = strict.short(cost, now, self.leader.available)
        if short == "unreachable":
            if self.leader.starting(now):
                return Wait(now + BUDGET_POLL_S)  # still starting up: the registry will say where it is
            if self.limits.leader_unavailable == "local_share":
                return self._shared(job, now)
            return self.leader.unreachable("strict rate limiting", strict.unusable(now), self.provider)
        if short == "spent":
            return self._verdict(job, BudgetExceeded(
                f"strict budget {self.key} is spent in this window across the cluster", limit="rpm",
                retry_after_s=replica.until_next_window()), now)
        self.refresh(now)
        return Wait(strict.wait_until(now))

    def arrived(self, job: Job) -> None:
        """A request came in: what the lease asks for follows it."""
        if self.strict is not None:
            self.strict.holder.arrive((1, job.estimate))

    def refresh_due(self) -> float | None:
        return self.strict.due(self.clock()) if self.strict is not None and self.leader.available else None

    def refresh(self, now: float) -> None:
        """Ask the leader again if it is time: what this engine spent, holds and wants."""
        if self.strict is not None and self.leader.available:
            ask = self.strict.ask(now, self.backlog())
            if ask is not None:
                self.host.emit(ask)

    def offered(self, key: str, grant: LeaseGrant, now: float) -> bool:
        """The leader's answer: True when this engine took it (its queue may move)."""
        return self.strict is not None and key == self.key and self.strict.holder.granted(grant, now)

    def settle(self, held: Held, decided: Settlement) -> None:
        """What an attempt's budget comes to, in the replica it was reserved in (under a lease too:
        what this engine reports spent at its next ask)."""
        if held.reservation is not None and held.limiter is not None:
            apply_settlement(held.limiter, held.reservation, decided)
            self.sync.touch()
        held.reservation = held.limiter = None

    # -- sync with the node's hub ---------------------------------------------------------

    def sync_due(self) -> float | None:
        return self.sync.due()   # (touched only where there is a replica)

    def publish(self, now: float) -> None:
        if self.replica is None:
            return
        self.sync.sent(now)
        oldest = self.replica.unpublished_since
        delta = self.replica.take_delta()
        if delta:
            self.host.emit(PublishCounts(delta, oldest or self.wall()))

    def merge(self, e: PeerCounts) -> None:
        if self.replica is not None and e.key == self.key and e.origin != self.slot:
            self.replica.merge(e.delta, e.sent_unix)


# -- the gates in their order ---------------------------------------------------------------

class Admission:
    """For the request at the head of an engine's queue: the breaker gate, then the spend
    budgets (:class:`~actors.core.budget.SpendGate`, once per request), then the rate limits
    (once per attempt); and what comes back to them when an attempt or a request is over."""

    def __init__(self, breaker: BreakerGate, budget: BudgetGate, spend: SpendGate | None) -> None:
        self.breaker = breaker
        self.budget = budget
        self.spend = spend
        # Every strict budget this engine holds a lease of (fixed once the gates are made).
        self.stricts: tuple[StrictBudget, ...] = (
            *((budget.strict,) if budget.strict is not None else ()),
            *(spend.book.leases.values() if spend is not None else ()))

    def admit(self, job: Job, now: float, idle: bool) -> Admit | Refuse | Denied | Wait | None:
        """``Admit``: dispatch it under that generation. ``Refuse``, ``Denied``: it fails now.
        ``Wait``: look again then. None: no idle worker (``idle``), or no probe granted yet."""
        gate = self.breaker.admit(now)
        if isinstance(gate, Refuse):
            return gate  # fail fast, worker or not: the caller may fall back to another deployment
        if not idle:
            return None
        admitted = self.breaker.take_probe(now) if isinstance(gate, NeedProbe) else gate
        if admitted is None:
            return None
        budget: Reserved | Wait | Denied | None = None
        if self.spend is not None:
            budget = self.spend.admit(job.spend, now)
        if budget is None:
            budget = self.budget.admit(job, now)
        if isinstance(budget, Reserved):
            return admitted
        self.breaker.put_back(admitted)
        return budget

    def end(self) -> None:
        """The queue was looked at: a probe granted and not used is given back."""
        self.breaker.end()

    def settle(self, held: Held, decided: Settlement) -> None:
        self.budget.settle(held, decided)

    def ended(self, job: Job) -> None:
        """At ``job``'s terminal: what it held for an attempt that never went is released, and its
        spend budgets are settled to what it was charged."""
        self.budget.settle(job.held, Settlement(Settle.RELEASE))
        if self.spend is not None:
            self.spend.settle(job.spend)

    # -- the strict budgets' leases -------------------------------------------------------

    def arrived(self, job: Job) -> None:
        """A request came in: the leases of the strict budgets it needs ask for it."""
        self.budget.arrived(job)
        if self.spend is not None:
            self.spend.arrived(job.spend)

    def leader_changed(self, available: bool, shares: int, now: float, in_cluster: bool) -> None:
        """Where the cluster is, as the registry says. A leader reachable again (or a new one)
        never answers the asks sent while it was not: they are forgotten, or the leases would
        look unanswered, the leader lost, until a new ask happened to be answered."""
        back = available and not self.budget.leader.available
        self.budget.leader_changed(available, shares, now, in_cluster)
        if back:
            for strict in self.stricts:
                strict.holder.sent.clear()

    def unblock(self) -> None:
        """Before the queue is looked at: no lease waits for a request unless its head says so
        again (one that ended, or was refused on another budget, no longer does)."""
        for strict in self.stricts:
            strict.holder.blocked = False

    def refresh_dues(self) -> list[float | None]:
        return [self.budget.refresh_due(), self.spend.refresh_due() if self.spend is not None else None]

    def refresh(self, now: float) -> None:
        self.budget.refresh(now)
        if self.spend is not None:
            self.spend.refresh(now)

    def offered(self, key: str, grant: LeaseGrant, now: float) -> bool:
        """A lease the leader offered, for the deployment's rate limits or a spend budget."""
        if self.spend is not None and self.spend.offered(key, grant, now):
            return True
        return self.budget.offered(key, grant, now)

    def sync_dues(self) -> list[float | None]:
        """When the replicas' changes are due at the node's hub."""
        return [self.budget.sync_due(), self.spend.book.sync_due() if self.spend is not None else None]

    def publish(self, now: float) -> None:
        if self.spend is not None:
            self.spend.publish(now)
        self.budget.publish(now)

    def merge(self, e: PeerCounts) -> None:
        if self.spend is None or not self.spend.merge(e):
            self.budget.merge(e)
