"""The refusals the gateway decides without asking a provider, built one way for every layer.

An engine refuses a request when its queue is full, its circuit is open, a budget is spent or
the prompt cannot fit the deployment's window; the router in each client refuses the same
conditions from the state engines push, before sending anything. Both answer with the error
the engine builds (the router with the one the engine pushed, :func:`as_of` the router's
clock), so a refusal carries the same type, status, ``retryable``, ``retry_after_s``,
``provider`` and message whichever layer decided it (docs/reliability.md, "Refusals").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

from actors.core.breaker import BreakerView
from actors.errors import BudgetExceeded, CircuitOpen, ContextLengthExceeded, InferenceError, QueueFull

__all__ = ["QUEUE_RETRY_S", "queue_full", "displaced", "context_too_long", "current", "as_of", "for_group",
           "Tally", "add_counts"]

QUEUE_RETRY_S = 1.0   # a full queue's retry-after: about one upstream call's time, not a promise

_WHY = {CircuitOpen: "circuit open", BudgetExceeded: "no budget", ContextLengthExceeded: "prompt too long"}


def queue_full(deployment: str, capacity: int, provider: str) -> QueueFull:
    """Nothing was sent and a moment later there may be room: retryable, with a retry-after."""
    return QueueFull(f"queue of {deployment} is full ({capacity} waiting)", provider=provider,
                     retryable=True, retry_after_s=QUEUE_RETRY_S)


def displaced(deployment: str, capacity: int, provider: str, by: str) -> QueueFull:
    """A queued request whose place a higher-priority one took (core/priority_queue.py: displace)."""
    return QueueFull(f"queue of {deployment} is full ({capacity} waiting): a {by}-priority request took this "
                     f"request's place", provider=provider, retryable=True, retry_after_s=QUEUE_RETRY_S)


def context_too_long(deployment: str, provider: str, tokens: int, window: int) -> ContextLengthExceeded:
    """The prompt's estimate (``routing.input_estimate``, which errs low) is over the deployment's window."""
    return ContextLengthExceeded(f"the prompt (about {tokens} tokens) is longer than the {window}-token context "
                                 f"window of deployment {deployment}", tokens=tokens, max_tokens=window,
                                 provider=provider)


def current(view: Any, book: Any, limiter: Any, provider: str, wall: float) -> tuple[InferenceError, float | None] | None:
    """What an engine answers a typical request now without calling its provider, and when that lifts
    (unix): an open circuit (``view``, a BreakerView), a spent spend budget (``book``), a spent rate
    window (``limiter``), each built by the code that refuses a real request. Its retry-after is left
    to whoever reads it later (:func:`as_of`), so the pushed state does not change every instant."""
    verdict, detail = view.admit(wall * 1000)
    if verdict == BreakerView.REFUSE:
        error, until = detail, detail.retry_at_unix_ms / 1000
    elif book is not None and (spent := book.refusal()) is not None:
        error, until = spent
    elif limiter is not None and (error := limiter.refusal(1)) is not None:
        until = None if error.retry_after_s is None else wall + error.retry_after_s
    else:
        return None
    error.provider, error.retry_after_s = provider, None
    return error, until


def as_of(error: InferenceError, until_unix: float | None, now_unix: float) -> InferenceError:
    """A copy of a pushed refusal with its retry-after as of ``now_unix`` (``until_unix``: when it lifts)."""
    out = copy.copy(error)
    out.retry_after_s = None if until_unix is None else max(0.0, until_unix - now_unix)
    return out


def _retry_after(error: InferenceError) -> float:
    return math.inf if error.retry_after_s is None else error.retry_after_s


def for_group(model: str, refused: Sequence[tuple[str, InferenceError]]) -> InferenceError:
    """One refusal for a model none of whose deployments may be tried: with one deployment, its own.

    With several: the one that lifts first (the earliest probe, window or budget reset), or,
    when every prompt is too long, the deployment with the largest window; its message then
    names every deployment and why.
    """
    if len(refused) == 1:
        return refused[0][1]
    errors = [error for _, error in refused]
    chosen: InferenceError
    if all(isinstance(e, ContextLengthExceeded) for e in errors):
        chosen = max((e for e in errors if isinstance(e, ContextLengthExceeded)), key=lambda e: e.max_tokens or 0)
    else:
        chosen = min((e for e in errors if not isinstance(e, ContextLengthExceeded)), key=_retry_after)
    names = ", ".join(f"{name} ({_WHY.get(type(e), e.kind.replace('_', ' '))})" for name, e in sorted(refused))
    out = copy.copy(chosen)
    out.message = f"no deployment of model {model!r} can take the request: {names}; {chosen.message}"
    out.args = (out.message,)
    return out


class Tally:
    """Router refusals counted in a client process, by model and reason, until they are sent to the node.

    A refusal storm (an open circuit under load) must not become a message storm: counts go
    out at most every ``every_s``, the first at once.
    """

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.counts: dict[str, dict[str, int]] = {}
        self.sent_at = float("-inf")

    def add(self, model: str, reason: str, now: float) -> bool:
        """Count one; True when the counts should be sent now."""
        mine = self.counts.setdefault(model, {})
        mine[reason] = mine.get(reason, 0) + 1
        return now - self.sent_at >= self.every_s

    def due(self) -> float | None:
        """When what is counted should go out at the latest (None: nothing to send)."""
        return self.sent_at + self.every_s if self.counts else None

    def take(self, now: float) -> dict[str, dict[str, int]]:
        counts, self.counts = self.counts, {}
        self.sent_at = now
        return counts


def add_counts(into: dict[str, dict[str, int]], counts: Any, max_models: int = 256, max_reasons: int = 32) -> None:
    """Add a client's reported counts (model -> reason -> n) to a node's, bounded whatever arrives:
    a router only refuses models its node routes, for a handful of reasons."""
    for model, reasons in (counts or {}).items() if isinstance(counts, dict) else ():
        model = str(model)
        if (model not in into and len(into) >= max_models) or not isinstance(reasons, dict):
            continue
        mine = into.setdefault(model, {})
        for reason, n in reasons.items():
            reason = str(reason)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0 and (reason in mine or len(mine) < max_reasons):
                mine[reason] = mine.get(reason, 0) + n
