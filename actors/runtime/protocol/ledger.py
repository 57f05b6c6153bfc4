"""The spend ledger: terminal records from engines to the node's ledger, and spend reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.core.records import TerminalRecord


@dataclass
class LedgerInit:
    path: str
    node: str = ""
    retention_days: float = 90.0
    batch_interval_s: float = 0.25
    queue_limit: int = 100_000


@dataclass
class LedgerRecords:
    """A batch of an engine's TerminalRecords (never one message per request), with its budget slot."""

    slot: str
    records: list[TerminalRecord]


@dataclass
class LedgerFlush:
    """Write what is queued now; answered with LedgerState once it is on disk (or lost)."""

    token: str = ""


@dataclass
class LedgerState:
    path: str
    state: str              # "ok" | "degraded"
    written: int
    dropped: int
    queued: int
    error: str = ""         # the first failure, when degraded
    token: str = ""


@dataclass
class SpendQuery:
    since_unix: float
    by: str = "key"         # key | team | model | deployment | provider | node
    token: str = ""
    reply_to: Any = None    # set by the registry that forwards it to its ledger


@dataclass
class SpendReport:
    node: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # {"group", "requests", "cost_usd", "unknown", ...}
    error: str = ""
    token: str = ""
