"""Per-key rpm/tpm budgets at the front door, cluster-wide like deployments' budgets.

A key with ``limits`` gets one WindowedLimiter here (its slot is this HTTP process). A
call is admitted against the merged view before any work reaches the node, reserving
the request's token estimate; when the call ends the reservation is settled with what it
really used (``Completed.charged_tokens``). The counts travel as GCounter deltas through
the node's limiter hub (actors/http/key_sync.py) under the budget name ``key:<name>``, so
every front door serving the same key, on any node, spends from the same budget, with
the same approximation as deployment limits (about one sync interval of overshoot).

Thread-safe: the server's worker threads admit and settle, the sync thread merges and
publishes.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import actors.errors as E
from actors.core.ratelimit import RateLimits, Reservation, WindowedLimiter, estimate_tokens
from actors.core.settlement import Settlement, apply_settlement, settlement
from actors.http.errors import FrontDoorError
from actors.settings.schema import HttpKey
from actors.types import Completed

__all__ = ["KeyLimits", "KeyHold", "NO_HOLD", "key_settlement", "new_slot"]

# Refusals of the gateway itself: nothing reached a provider, so the key gets its budget back.
_NEVER_SENT = (E.CircuitOpen, E.QueueFull, E.BudgetExceeded, E.LeaderUnavailable, E.GatewayUnavailable)


def new_slot() -> str:
    """This front door's slot in the budgets' GCounters: fresh per process, so a restarted
    listener never counts from below what the cluster already merged for its predecessor."""
    return f"http/{os.getpid()}/{secrets.token_hex(3)}"


def key_settlement(outcome: Completed | BaseException | None) -> Settlement:
    """What a finished call leaves charged to its key (the rule of actors/core/settlement.py).

    A Completed call is charged what the engine charged its deployment budget (the reported
    usage, or the estimate when the provider reported none); a refusal by the gateway before
    any provider saw the call gives everything back; an error the provider answered costs
    its partial usage (0 when none); anything else (a timeout, a crash, a caller that left)
    keeps the estimate, since the provider may have run the whole call.
    """
    if isinstance(outcome, Completed):
        if outcome.charged_tokens or outcome.usage.reported:
            return settlement(True, outcome.charged_tokens or outcome.usage.total_tokens)
        return settlement(True, None)
    if isinstance(outcome, E.InferenceError):
        partial = outcome.partial_usage
        if partial:
            return settlement(True, int(partial.get("input_tokens") or 0) + int(partial.get("output_tokens") or 0))
        if isinstance(outcome, _NEVER_SENT) or (isinstance(outcome, (E.NotFound, E.ShuttingDown))
                                                and outcome.status is None):
            return settlement(False, None)
        if outcome.status is not None and outcome.provider:
            return settlement(True, 0)
    return settlement(True, None)


class KeyHold:
    """One admitted call's reservation on its key: settled exactly once, from any code path."""

    __slots__ = ("_owner", "_limiter", "_reservation", "_share")

    def __init__(self, owner: "KeyLimits | None", limiter: WindowedLimiter | None,
                 reservation: Reservation | None,
                 share: tuple[WindowedLimiter, Reservation] | None = None) -> None:
        self._owner, self._limiter, self._reservation = owner, limiter, reservation
        self._share = share   # also held on this node's share while outside the cluster

    def settle(self, outcome: Completed | BaseException | None = None) -> None:
        reservation, self._reservation = self._reservation, None
        if reservation is not None and self._owner is not None and self._limiter is not None:  # (not NO_HOLD)
            decided = key_settlement(outcome)
            self._owner._settle(self._limiter, reservation, decided)
            if self._share is not None:
                self._owner._settle(self._share[0], self._share[1], decided)

    @property
    def settled(self) -> bool:
        return self._reservation is None


NO_HOLD = KeyHold(None, None, None)  # a key without limits: nothing to settle


@dataclass(slots=True)
class _Budget:
    name: str             # the key's name
    budget: str           # the hub's budget name, KEY_BUDGET_PREFIX + name
    limiter: WindowedLimiter
    share: WindowedLimiter | None = None   # this node's share, while outside the cluster


class KeyLimits:
    """The limited keys of one front door, by key name."""

    def __init__(self, keys: Iterable[HttpKey], slot: str | None = None, *, sync_interval_s: float = 0.05,
                 default_output_tokens: int = 256, wall_clock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic, rand: Callable[[], float] = random.random) -> None:
        self.slot = slot or new_slot()
        self._wall = wall_clock
        self.default_output_tokens = default_output_tokens
        self._lock = threading.Lock()
        self._by_key: dict[str, _Budget] = {}
        self._by_budget: dict[str, _Budget] = {}
        for entry in keys:
            if entry.limits is None:
                continue
            limits = entry.limits.rate_limits(entry.name)
            limiter = WindowedLimiter(self.slot, limits, wall_clock=wall_clock, sync_interval_s=sync_interval_s,
                                      rand=rand, clock=clock)
            assert limits.key is not None, "rate_limits() names the key's budget"
            budget = _Budget(entry.name, limits.key, limiter)
            self._by_key[entry.name] = self._by_budget[limits.key] = budget
        self.refused = 0
        self._wall_clock, self._clock = wall_clock, clock
        self.outside: int | None = None   # while outside the cluster: in how many shares a budget splits

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def __repr__(self) -> str:
        return f"KeyLimits({sorted(self._by_key)})"

    # -- admission (worker threads) ------------------------------------------------------

    def estimate(self, messages: Any, max_tokens: Any) -> int:
        return estimate_tokens(messages, max_tokens if isinstance(max_tokens, int) else None,
                               self.default_output_tokens)

    def admit(self, key_name: str, messages: Any, max_tokens: Any = None) -> KeyHold:
        """Reserve one request and its estimate on the key's budget, or refuse with a 429."""
        budget = self._by_key.get(key_name)
        if budget is None:
            return NO_HOLD
        tokens = self.estimate(messages, max_tokens)
        with self._lock:
            share = self._share(budget, tokens) if self.outside is not None else None
            if share is not None and not isinstance(share, Reservation):
                verdict = share   # refused by this node's share, or not admitted outside at all
            else:
                verdict = budget.limiter.try_acquire(tokens)   # counted where the cluster sees it once back
                if share is not None and budget.share is not None and not isinstance(verdict, Reservation):
                    budget.share.release(share)
        if isinstance(verdict, E.LeaderUnavailable):
            self.refused += 1
            raise FrontDoorError(503, f"key {key_name!r}: {verdict.message}", kind="api_error",
                                 code="leader_unavailable", retry_after_s=verdict.retry_after_s or 1.0)
        if isinstance(verdict, Reservation):
            held = (budget.share, share) if isinstance(share, Reservation) and budget.share is not None else None
            return KeyHold(self, budget.limiter, verdict, held)
        self.refused += 1
        limit = verdict.limit or "rpm"
        if verdict.retryable:
            raise FrontDoorError(429, f"key {key_name!r} is over its {limit} limit: {verdict.message}",
                                 kind="rate_limit_error", code="key_rate_limited",
                                 retry_after_s=max(0.001, verdict.retry_after_s or 1.0))
        # More than the whole budget in one request: waiting will not help.
        raise FrontDoorError(429, f"key {key_name!r}: {verdict.message}", kind="rate_limit_error",
                             code="key_rate_limited", retryable=False)

    def _share(self, budget: _Budget, tokens: int) -> Any:
        """Outside the cluster (``limits.leader_unavailable``): a reservation on this node's share
        of the key's budget, its refusal, or the LeaderUnavailable error that refuses the call."""
        limits = budget.limiter.limits
        if limits.leader_unavailable == "fail" or not self.outside:
            why = ("limits.leader_unavailable: fail" if limits.leader_unavailable == "fail" else
                   "this node has not been in the cluster yet, so its share is unknown")
            return E.LeaderUnavailable(f"this node is not in the cluster (its leader is unreachable): {why}",
                                       retry_after_s=1.0)
        if budget.share is None:
            budget.share = WindowedLimiter(self.slot + "/share", limits.divided(self.outside),
                                           wall_clock=self._wall_clock, exclusive=True, clock=self._clock)
        return budget.share.try_acquire(tokens)

    def set_cluster(self, in_cluster: bool, shares: int) -> None:
        """What the node says of its membership: outside, each key spends only this node's share
        (one of ``shares``, the nodes it knows), never the whole budget (docs/http.md)."""
        with self._lock:
            outside = None if in_cluster else shares
            if outside != self.outside:
                for b in self._by_key.values():
                    b.share = None   # a fresh share per spell outside, sized by the nodes known then
            self.outside = outside

    def _settle(self, limiter: WindowedLimiter, reservation: Reservation, decided: Settlement) -> None:
        with self._lock:
            apply_settlement(limiter, reservation, decided)

    # -- cluster sync (the sync thread) ---------------------------------------------------

    def budgets(self) -> list[tuple[str, RateLimits]]:
        """(budget name, limits) of every limited key: what the hub is told to keep."""
        return [(b.budget, b.limiter.limits) for b in self._by_key.values()]

    def set_sync_interval(self, seconds: float) -> None:
        with self._lock:
            for b in self._by_key.values():
                b.limiter.sync_interval_s = seconds

    def take_deltas(self) -> list[tuple[str, dict, float]]:
        """(budget name, delta, when its oldest admission happened) for every budget that changed."""
        out = []
        with self._lock:
            for b in self._by_key.values():
                oldest = b.limiter.unpublished_since
                delta = b.limiter.take_delta()
                if delta:
                    out.append((b.budget, delta, oldest if oldest is not None else self._wall()))
        return out

    def states(self) -> dict[str, dict]:
        """Every budget's whole state (all slots), for the hub to make good any lost delta."""
        with self._lock:
            return {b.budget: b.limiter.state() for b in self._by_key.values()}

    def merge(self, budget: str, delta: Mapping[int, Mapping[str, Mapping[str, int]]],
              sent_unix: float | None = None) -> bool:
        """Merge counts from the hub (other front doors, here or on other nodes); False: not a budget of ours."""
        b = self._by_budget.get(budget)
        if b is None:
            return False
        with self._lock:
            b.limiter.merge(delta, sent_unix)
        return True

    def usage(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for b in self._by_key.values():
                u = b.limiter.usage()
                out.append({"key": b.name, "requests": u.requests, "tokens": u.tokens, "rpm": u.rpm, "tpm": u.tpm})
        return out
