"""What happens to a rate-limit reservation once its attempt is over: one rule for every limiter.

An attempt that never reached the provider gives its reservation back; one whose usage is
known is reconciled to it; anything else keeps the estimate charged, because the provider
may have billed it and a hard cap must not be exceeded on a guess. The engine's local
limiter and the strict ledger on the leader both apply :func:`settlement` and
:func:`apply_settlement`, so they cannot drift apart.

Reservation ids at the strict limiter name one attempt of one request; they are made and
read only here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

__all__ = ["Settle", "Settlement", "settlement", "apply_settlement", "AttemptId", "attempt_tokens"]


class Settle(str, Enum):
    RELEASE = "release"      # never reached the provider: give requests and tokens back
    RECONCILE = "reconcile"  # reached it, usage known: charge exactly that
    KEEP = "keep"            # reached it (or may have), usage unknown: the estimate stays charged


@dataclass(frozen=True, slots=True)
class Settlement:
    action: Settle
    tokens: int | None = None  # what stays charged for RECONCILE

    def charged(self, estimate: int) -> int:
        """Tokens the budget is charged in the end."""
        if self.action is Settle.RELEASE:
            return 0
        if self.action is Settle.RECONCILE:
            return self.tokens or 0
        return estimate


def settlement(sent: bool, actual_tokens: int | None) -> Settlement:
    """The one settlement rule. ``actual_tokens`` is None when usage is unknown."""
    if not sent:
        return Settlement(Settle.RELEASE)
    if actual_tokens is not None:
        return Settlement(Settle.RECONCILE, max(0, int(actual_tokens)))
    return Settlement(Settle.KEEP)


class _Limiter(Protocol):
    def release(self, reservation: Any) -> None: ...
    def reconcile(self, reservation: Any, actual_tokens: int) -> None: ...


def apply_settlement(limiter: _Limiter, reservation: Any, decided: Settlement) -> None:
    if decided.action is Settle.RELEASE:
        limiter.release(reservation)
    elif decided.action is Settle.RECONCILE:
        limiter.reconcile(reservation, decided.tokens or 0)


def attempt_tokens(usage: Any, error: Any, chunks: int, answered: bool) -> int | None:
    """Tokens one finished attempt used, or None when unknown.

    Reported usage wins. An error the provider itself answered with (an HTTP status)
    before any output generated nothing. A transport failure or a crash after the request
    went out is unknown: the provider may have run the whole call.
    """
    if usage is not None and getattr(usage, "reported", False):
        return int(usage.total_tokens)
    if error is not None and chunks == 0 and answered:
        return 0
    return None


@dataclass(frozen=True, slots=True)
class AttemptId:
    """One attempt of one request, as the strict limiter knows it (``"<request_id>#<attempt>"``)."""

    request_id: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.request_id}#{self.attempt}"

    @classmethod
    def parse(cls, text: str) -> "AttemptId | None":
        request_id, sep, attempt = str(text).rpartition("#")
        if not sep or not request_id or not attempt.isdigit():
            return None
        return cls(request_id, int(attempt))
