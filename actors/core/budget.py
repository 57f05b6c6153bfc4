"""Spend budgets in USD per key, team, deployment or provider, over periods (core/periods.py).

A budget is counted exactly like a token budget of the rate limits: each engine keeps a
:class:`~actors.core.ratelimit.WindowedLimiter` replica whose "tokens" are nano-USD, and
exchanges GCounter deltas with the node's limiter hub, which merges them across the
convention. So approximate budgets converge the way rate limits do and overshoot by the
same bound (about one sync interval of the cluster's spend, less with the share rule).

A request reserves its *estimated* cost before it is dispatched (prompt and max_tokens at
the deployment's price, :data:`UNKNOWN_PRICE` when the price is unknown), once for all its
attempts; at its terminal the reservation is settled to what it cost: the reported usage
at the price, the estimate for every attempt whose usage is unknown (never zero), nothing
for attempts that never reached the provider. ``mode: strict`` budgets are leased like strict
rate limits (core/leases.py): each engine spends locally under its lease of the period's
nano-USD, reserves and settles in its replica as above, and reports what it spent at its next
ask; no request waits for the leader while its estimate fits the lease.

Counter slots are stable per node, deployment and replica (not per incarnation), so a
restarted engine merges its predecessor's count from the hub, and a restarted node seeds
its slots from its ledger: spend that was flushed is not forgotten.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from actors.core.admission import BUDGET_POLL_S, AdmissionHost, Denied, Leader, StrictBudget, Wait
from actors.core.engine_events import AskLease, PeerCounts
from actors.core.leases import LeaseGrant, LeaseHolder, Pair, incarnation
from actors.core.periods import Period
from actors.core.pricing import Price, cost_usd
from actors.core.ratelimit import (CounterDelta, RateLimits, Reservation, SyncSchedule, WindowedLimiter,
                                   estimate_tokens)
from actors.core.settlement import Settle, Settlement
from actors.errors import BudgetExceeded

__all__ = ["Budget", "BudgetBook", "SpendGate", "SpendHold", "NANO", "UNKNOWN_PRICE", "SPEND_PREFIX", "SCOPES",
           "PublishSpend", "to_nano", "budget_exceeded"]

NANO = 1_000_000_000          # counters hold nano-USD: integers, as GCounters need
SPEND_PREFIX = "spend:"       # the hub's key of a spend budget (beside the deployments' rate-limit keys)
Scope = Literal["key", "team", "deployment", "provider"]
SCOPES: tuple[Scope, ...] = ("key", "team", "deployment", "provider")
# What a call is charged per million tokens when its model has no price: the dearest
# common list price, so an unknown price can only make a budget run out early, never late.
UNKNOWN_PRICE = Price(input=15.0, output=75.0)


def to_nano(usd: float) -> int:
    return max(0, int(round(usd * NANO)))


@dataclass(frozen=True)
class Budget:
    scope: Scope
    name: str
    usd: float
    period: Period
    mode: Literal["approximate", "strict"] = "approximate"

    @property
    def id(self) -> str:
        """How it is named to people (errors, status, reports): ``team=search/1d``."""
        return f"{self.scope}={self.name}/{self.period.text}"

    @property
    def counter_key(self) -> str:
        return SPEND_PREFIX + self.id

    @property
    def nano(self) -> int:
        """The budget in nano-USD (at least 1)."""
        return max(1, to_nano(self.usd))

    @property
    def limits(self) -> RateLimits:
        return RateLimits(tpm=self.nano, window_s=self.period.nominal_s, period=self.period,
                          mode=self.mode, key=self.counter_key)

    def applies(self, key: str, team: str, deployment: str, provider: str) -> bool:
        return {"key": key, "team": team, "deployment": deployment, "provider": provider}[self.scope] == self.name


def budget_exceeded(budget: Budget, spent_nano: int, now: float, cost_nano: int | None = None) -> BudgetExceeded:
    """The refusal callers see: names the budget, what is spent, and when it resets (not before)."""
    index = budget.period.index(now)
    resets = budget.period.end(index)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resets))
    # Only while some is left (a spent budget refuses whatever a request costs). The router refuses
    # with what the engine pushed, built here with the last request's cost (core/refusals.py).
    left = spent_nano < to_nano(budget.usd)
    need = f"; this request would need about ${cost_nano / NANO:.6f}" if cost_nano and left else ""
    return BudgetExceeded(f"budget {budget.id} is spent: ${spent_nano / NANO:.6f} of ${budget.usd:g} in this "
                          f"{budget.period.text} period{need}; it resets at {when}",
                          limit=budget.id, retryable=False, retry_after_s=max(0.0, resets - now))


# -- effects for the engine shell ------------------------------------------------------

@dataclass(frozen=True)
class PublishSpend:
    key: str
    delta: CounterDelta
    sent_unix: float
    limits: RateLimits


# -- one request's hold ----------------------------------------------------------------

@dataclass(eq=False)
class SpendHold:
    """What one request holds against the budgets, from admission to its terminal."""

    estimate_nano: int
    budgets: list[Budget]
    reserved: list[tuple[Budget, Reservation]] = field(default_factory=list)   # strict ones under their lease
    admitted: bool = False
    spent_nano: int = 0        # charged so far, attempt by attempt
    sent: bool = False         # some attempt (may have) reached the provider

    def charge(self, decided: Settlement, usage: Any, price: Price | None) -> None:
        """One finished attempt's charge (:meth:`BudgetBook.attempt_charge`)."""
        self.spent_nano += BudgetBook.attempt_charge(decided, usage, self.estimate_nano, price)
        self.sent = self.sent or decided.action is not Settle.RELEASE

    @property
    def charged_usd(self) -> float:
        return self.spent_nano / NANO

    def charge_estimate(self) -> None:
        """An attempt whose report may come after the terminal settles the budgets: its estimate, now."""
        self.spent_nano += self.estimate_nano
        self.sent = True


class BudgetBook:
    """One engine's view of every budget that can apply to its requests."""

    def __init__(self, budgets: Iterable[Budget], *, slot: str, deployment: str, provider: str,
                 wall: Callable[[], float], clock: Callable[[], float], sync_interval_s: float = 0.05,
                 rand: Callable[[], float] | None = None, seed: Mapping[str, int] | None = None) -> None:
        self.slot = slot
        self.wall, self.clock = wall, clock
        mine = [b for b in budgets if b.scope in ("key", "team")
                or (b.scope == "deployment" and b.name == deployment) or (b.scope == "provider" and b.name == provider)]
        self.budgets: dict[str, Budget] = {b.counter_key: b for b in mine}
        self.limiters: dict[str, WindowedLimiter] = {}
        self.leases: dict[str, StrictBudget] = {}
        for key, b in self.budgets.items():
            limiter = WindowedLimiter(slot, b.limits, wall_clock=wall, sync_interval_s=sync_interval_s, clock=clock,
                                      rand=random.random if rand is None else rand)
            self.limiters[key] = limiter
            if b.mode == "strict":
                # The lease's client is the counter's slot, stable across restarts (the leader's seed
                # counts it once); its asks are numbered per incarnation, so a restarted engine's
                # never supersede its predecessor's grants (core/leases.py).
                holder = LeaseHolder(slot, clock=clock, first_seq=incarnation(wall()))
                self.leases[key] = StrictBudget(key, b.limits, limiter, holder)
            seeded = (seed or {}).get(key, 0)
            if seeded > 0:
                # This slot's spend in the current period before the restart, from the ledger.
                limiter.record(seeded)  # as one request
        self.sync = SyncSchedule(sync_interval_s, clock(), dirty=bool(seed))
        self.typical_nano = 0

    @property
    def keys(self) -> list[str]:
        return list(self.budgets)

    def applicable(self, metadata: Mapping[str, Any], deployment: str, provider: str) -> list[Budget]:
        key, team = str(metadata.get("http_key", "") or ""), str(metadata.get("http_team", "") or "")
        return [b for b in self.budgets.values() if b.applies(key, team, deployment, provider)]

    # -- admission -----------------------------------------------------------------------

    def admit(self, hold: SpendHold, now: float, leader: Leader) -> Wait | Denied | None:
        """None: admitted (reserved in every budget that applies); or wait, or refused.

        Strict budgets are looked at first and only taken once every one has room under its
        lease, so a request that waits holds nothing in any replica meanwhile."""
        if hold.admitted:
            return None
        wall = self.wall()
        cost = hold.estimate_nano
        self.typical_nano = cost
        strict = [b for b in hold.budgets if b.mode == "strict"]
        verdict = self._strict(strict, cost, now, leader)
        if verdict is not None:
            return verdict
        for b in hold.budgets:
            if b.mode == "strict":
                continue
            limiter = self.limiters[b.counter_key]
            reserved = limiter.try_acquire(cost)  # one request
            self.sync.touch()
            if isinstance(reserved, Reservation):
                hold.reserved.append((b, reserved))
                continue
            self._release(hold)
            if self._exhausted(b, cost):
                return Denied(budget_exceeded(b, limiter.usage().tokens, wall, cost))
            return Wait(now + max(0.005, min(reserved.retry_after_s or 0.05, 1.0)))
        for b in strict:
            taken = self.leases[b.counter_key].take((1, cost), now)
            if taken is None:   # the period rolled over since _strict looked: look again
                self._release(hold)
                return Wait(now + BUDGET_POLL_S)
            hold.reserved.append((b, taken))
            self.sync.touch()
        hold.admitted = True
        return None

    def _strict(self, strict: list[Budget], cost: int, now: float, leader: Leader) -> Wait | Denied | None:
        """None when every strict budget's lease covers ``cost``; else why not, in this order: a
        budget too small for it or spent across the cluster, the leader out of reach, a lease
        to wait for (asked for at once)."""
        shorts: list[tuple[Budget, StrictBudget, str]] = []
        for b in strict:
            lease = self.leases[b.counter_key]
            if cost > b.nano:
                return Denied(budget_exceeded(b, self.limiters[b.counter_key].usage().tokens, self.wall(), cost))
            if not lease.fits((1, cost), now):
                shorts.append((b, lease, lease.short((1, cost), now, leader.available)))
        for b, lease, why in shorts:
            if why == "spent":
                left = lease.left()
                spent = b.nano - left if left is not None else self.limiters[b.counter_key].usage().tokens
                return Denied(budget_exceeded(b, max(0, spent), self.wall(), cost))
        unreachable = [lease for _, lease, why in shorts if why == "unreachable"]
        if unreachable:
            if leader.starting(now):
                return Wait(now + BUDGET_POLL_S)
            return leader.unreachable("a strict spend budget", unreachable[0].unusable(now))
        if shorts:
            return Wait(min(lease.wait_until(now) for _, lease, _ in shorts))
        return None

    def _exhausted(self, budget: Budget, cost: int) -> bool:
        return self.limiters[budget.counter_key].usage().tokens + cost > budget.nano

    def _release(self, hold: SpendHold) -> None:
        for b, reservation in hold.reserved:
            self.limiters[b.counter_key].release(reservation)
        hold.reserved = []
        self.sync.touch()

    # -- charging ------------------------------------------------------------------------

    @staticmethod
    def estimate(messages: Any, max_tokens: int | None, default_output: int, price: Price | None) -> int:
        """Nano-USD a request may cost: its prompt (~4 characters a token) and its whole output allowance."""
        price = price or UNKNOWN_PRICE
        prompt = estimate_tokens(messages, 0, 0)
        output = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else default_output
        return max(1, math.ceil((prompt * price.input + output * price.output) * NANO / 1e6))

    @staticmethod
    def attempt_charge(decided: Settlement, usage: Any, estimate_nano: int, price: Price | None) -> int:
        """What one finished attempt is charged: its usage at the price, the estimate when unknown."""
        if decided.action is Settle.RELEASE:
            return 0
        if decided.action is Settle.KEEP:
            return estimate_nano
        if usage is not None and getattr(usage, "reported", False):
            usd = cost_usd(usage, price or UNKNOWN_PRICE)
            return to_nano(usd) if usd is not None else estimate_nano
        return 0  # the provider answered with an error before any output: nothing generated

    def settle(self, hold: SpendHold) -> None:
        """At the terminal: replace every reservation by what the request was charged (under a
        strict budget's lease too: what this engine reports spent at its next ask)."""
        actual = hold.spent_nano
        for b, reservation in hold.reserved:
            limiter = self.limiters[b.counter_key]
            if hold.sent:
                limiter.reconcile(reservation, actual)
            else:
                limiter.release(reservation)
        hold.reserved = []
        self.sync.touch()

    # -- leases of strict budgets ----------------------------------------------------------

    def arrived(self, hold: SpendHold) -> None:
        """A request came in: what each strict budget's lease asks for follows it."""
        for b in hold.budgets:
            if b.mode == "strict":
                self.leases[b.counter_key].holder.arrive((1, hold.estimate_nano))

    def blocked_until(self, now: float) -> float | None:
        """When to look again at a request that waits for a lease (None: none does)."""
        return min((lease.wait_until(now) for lease in self.leases.values() if lease.holder.blocked), default=None)

    def refresh_due(self, now: float) -> float | None:
        return min((t for lease in self.leases.values() if (t := lease.due(now)) is not None), default=None)

    def asks(self, now: float, backlog: Callable[[str], Pair]) -> list[AskLease]:
        """The lease asks due now, each with what waits for its budget in the queue."""
        return [ask for key, lease in self.leases.items() if (ask := lease.ask(now, backlog(key))) is not None]

    def offered(self, key: str, grant: LeaseGrant, now: float) -> bool:
        lease = self.leases.get(key)
        return lease is not None and lease.holder.granted(grant, now)

    # -- sync and status -----------------------------------------------------------------

    def sync_due(self) -> float | None:
        return self.sync.due()

    def publish(self, now: float) -> list[PublishSpend]:
        self.sync.sent(now)
        out = []
        for key, limiter in self.limiters.items():
            oldest = limiter.unpublished_since
            delta = limiter.take_delta()
            if delta:
                out.append(PublishSpend(key, delta, oldest or self.wall(), limiter.limits))
        return out

    def merge(self, key: str, delta: Mapping[int, Mapping[str, Mapping[str, int]]], sent_unix: float | None) -> bool:
        limiter = self.limiters.get(key)
        if limiter is None:
            return False
        limiter.merge(delta, sent_unix)
        return True

    def refusal(self) -> tuple[BudgetExceeded, float] | None:
        """What a spent deployment or provider budget answers a typical request (the last one's cost),
        and when it resets."""
        wall = self.wall()
        for key, b in self.budgets.items():
            if b.scope in ("deployment", "provider") and self._exhausted(b, max(1, self.typical_nano)):
                return (budget_exceeded(b, self.limiters[key].usage().tokens, wall, self.typical_nano),
                        b.period.end(b.period.index(wall)))
        return None

    def spent(self) -> list[str]:
        """Deployment and provider budgets with too little left for a typical request (routing skips them)."""
        out = []
        for key, b in self.budgets.items():
            if b.scope in ("deployment", "provider") and self._exhausted(b, max(1, self.typical_nano)):
                out.append(b.id)
        return out


class SpendGate:
    """One engine's spend budgets at admission, before its rate limits: once per request, for all
    its attempts. Approximate budgets reserve in the book's replicas; strict ones are spent
    locally under the lease this engine holds of each from the leader (core/leases.py), asked
    for in the background with what the queue waits for, as the deployment's strict rate
    limits are."""

    def __init__(self, book: BudgetBook, host: AdmissionHost, leader: Leader, provider: str) -> None:
        self.book = book
        self.host = host
        self.leader = leader
        self.provider = provider
        self.backlog: Callable[[str], Pair] = lambda key: (0, 0)   # what waits for budget ``key`` (the core sets it)

    def admit(self, hold: SpendHold, now: float) -> Wait | Denied | None:
        """None when admitted (or when no budget applies)."""
        if not hold.budgets or hold.admitted:
            return None
        if any(b.mode != "strict" for b in hold.budgets):
            outside = self.leader.spend_outside(now, self.provider)
            if outside is not None:
                return outside
        verdict = self.book.admit(hold, now, self.leader)
        if isinstance(verdict, Wait):
            self.refresh(now)
            blocked = self.book.blocked_until(now)   # after the ask just sent: its answer is awaited
            if blocked is not None:
                verdict = Wait(blocked)
        if isinstance(verdict, Denied):
            verdict.error.provider = self.provider
        return verdict

    def arrived(self, hold: SpendHold) -> None:
        self.book.arrived(hold)

    def refresh_due(self) -> float | None:
        return self.book.refresh_due(self.book.clock()) if self.leader.available else None

    def refresh(self, now: float) -> None:
        """Ask the leader for the leases due: what this engine spent of each, holds and wants."""
        if self.leader.available:
            for ask in self.book.asks(now, self.backlog):
                self.host.emit(ask)

    def offered(self, key: str, grant: LeaseGrant, now: float) -> bool:
        """The leader's answer for budget ``key``: True when this engine took it (its queue may move)."""
        return self.book.offered(key, grant, now)

    def settle(self, hold: SpendHold) -> None:
        self.book.settle(hold)

    def publish(self, now: float) -> None:
        for effect in self.book.publish(now):
            self.host.emit(effect)

    def merge(self, e: PeerCounts) -> bool:
        """Another slot's counts of one of these budgets: True when they were one of its budgets."""
        return e.origin != self.book.slot and self.book.merge(e.key, e.delta, e.sent_unix)


@dataclass(frozen=True)
class BudgetSpec:
    """One ``budgets:`` entry as written: exactly one of key, team, deployment, provider; usd; period; mode."""

    usd: float
    period: str
    key: str | None = None
    team: str | None = None
    deployment: str | None = None
    provider: str | None = None
    mode: Literal["approximate", "strict"] = "approximate"

    def __post_init__(self) -> None:
        given = [s for s in SCOPES if getattr(self, s) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of key, team, deployment, provider"
                             + (f" (got {', '.join(given)})" if given else ""))
        if not str(getattr(self, given[0])).strip():
            raise ValueError(f"{given[0]}: must not be empty, got ''")
        if isinstance(self.usd, bool) or not isinstance(self.usd, (int, float)) or not math.isfinite(self.usd) \
                or self.usd <= 0:
            raise ValueError(f"usd: must be > 0, got {self.usd!r}")
        from actors.core.periods import parse_period

        parse_period(self.period)
        if self.mode not in ("approximate", "strict"):
            raise ValueError(f"mode: must be approximate or strict, got {self.mode!r}")

    @property
    def scope(self) -> Scope:
        return next(s for s in SCOPES if getattr(self, s) is not None)

    def budget(self) -> Budget:
        from actors.core.periods import parse_period

        return Budget(self.scope, str(getattr(self, self.scope)), float(self.usd), parse_period(self.period),
                      self.mode)
