"""The spend ledger on disk: one SQLite row per terminal, in WAL mode, written in batches.

Only names, counts, prices and times are stored: never a prompt or a completion. Readers
(the seed of a restarted node's budget counters, ``launch.py spend``, ``GET /v1/spend``)
open their own connection; WAL lets them read while the node's writer writes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from actors.core.budget import NANO, Budget

__all__ = ["LedgerStore", "LedgerError", "check_ledger", "GROUPS", "seed_for", "report"]

GROUPS = ("key", "team", "model", "deployment", "provider", "node", "outcome")
COLUMNS = ("at_unix", "request_id", "node", "slot", "key", "team", "model", "deployment", "provider", "outcome",
           "error_kind", "status", "attempts", "streamed", "input_tokens", "cached_input_tokens", "output_tokens",
           "reasoning_tokens", "usage_reported", "charged_tokens", "cost_usd", "charged_usd", "latency_s", "ttft_s")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS spend ({", ".join(c + (" REAL" if c in ("at_unix", "cost_usd", "charged_usd", "latency_s",
                                                                      "ttft_s") else "") for c in COLUMNS)});
CREATE INDEX IF NOT EXISTS spend_at ON spend (at_unix);
CREATE INDEX IF NOT EXISTS spend_slot ON spend (slot, at_unix);
"""
_INSERT = f"INSERT INTO spend ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# The ledger's row column a budget of each scope is matched on.
_SCOPE_COLUMN = {"key": "key", "team": "team", "deployment": "deployment", "provider": "provider"}


class LedgerError(Exception):
    """The ledger file cannot be used; the message says which file and why."""


def _connect(path: str, readonly: bool = False, timeout_s: float = 5.0) -> sqlite3.Connection:
    if readonly:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s, check_same_thread=False)
    return sqlite3.connect(path, timeout=timeout_s, check_same_thread=False)


def check_ledger(path: str) -> None:
    """At start: the ledger opens, is a database, passes SQLite's quick check and is writable; else LedgerError."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise LedgerError(f"ledger {path} is a directory, not a file")
    if not os.path.isdir(directory):
        raise LedgerError(f"ledger {path}: its directory {directory} does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise LedgerError(f"ledger {path} is not writable by this user")
    try:
        store = LedgerStore(path)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} is corrupted or not a ledger ({exc}); move it aside to start a new one "
                          f"(its spend is then not counted)") from None
    except (sqlite3.Error, OSError) as exc:
        raise LedgerError(f"ledger {path} cannot be opened for writing: {exc}") from None
    try:
        result = store.db.execute("PRAGMA quick_check").fetchone()
        if not result or result[0] != "ok":
            raise LedgerError(f"ledger {path} is corrupted (SQLite quick_check: {result[0] if result else '?'}); "
                              f"move it aside to start a new one")
        store.db.execute("BEGIN IMMEDIATE")
        store.db.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} is corrupted or not writable ({exc})") from None
    finally:
        store.close()


class LedgerStore:
    """The writer's connection: created with the schema, WAL, and ``synchronous=NORMAL`` (a
    committed batch survives a process crash; an OS crash may lose the last commits)."""

    def __init__(self, path: str, *, max_pages: int | None = None) -> None:
        self.path = path
        self.db = _connect(path)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if max_pages is not None:
                self.db.execute(f"PRAGMA max_page_count={int(max_pages)}")  # tests: a disk that fills up
            self.db.executescript(_SCHEMA)
        except BaseException:
            self.db.close()
            raise

    def write(self, batch: Iterable[tuple[str, Any]]) -> int:
        """(slot, TerminalRecord) pairs, in one transaction: all of them or none."""
        rows = [_row(slot, record) for slot, record in batch]
        with self.db:
            self.db.executemany(_INSERT, rows)
        return len(rows)

    def purge(self, before_unix: float) -> int:
        with self.db:
            return self.db.execute("DELETE FROM spend WHERE at_unix < ?", (before_unix,)).rowcount

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM spend").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def _row(slot: str, r: Any) -> tuple:
    return (r.at_unix, r.request_id, r.node, slot, r.key, r.team, r.model, r.deployment, r.provider, r.outcome,
            r.error_kind, r.status, r.attempts, int(r.streamed), r.input_tokens, r.cached_input_tokens,
            r.output_tokens, r.reasoning_tokens, int(r.usage_reported), r.charged_tokens, r.cost_usd,
            getattr(r, "charged_usd", None), r.latency_s, r.ttft_s)


def seed_for(path: str, slot: str, budgets: Iterable[Budget], now: float) -> dict[str, int]:
    """What ``slot`` was charged in each budget's current period, in nano-USD (counter key -> amount).

    Reads a missing ledger as empty; any other failure raises (the caller logs it and starts from zero)."""
    if not os.path.exists(path):
        return {}
    seeds: dict[str, int] = {}
    db = _connect(path, readonly=True)
    try:
        for b in budgets:
            column = _SCOPE_COLUMN[b.scope]
            start = b.period.start(b.period.index(now))
            (total,) = db.execute(f"SELECT COALESCE(SUM(charged_usd), 0) FROM spend WHERE slot = ? AND at_unix >= ? "
                                  f"AND \"{column}\" = ?", (slot, start, b.name)).fetchone()
            if total:
                seeds[b.counter_key] = int(round(total * NANO))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    finally:
        db.close()
    return seeds


def report(path: str, since_unix: float, by: str) -> list[dict[str, Any]]:
    """Spend since ``since_unix`` grouped by ``by``: one dict per group, costs known and unknown apart."""
    if by not in GROUPS:
        raise ValueError(f"by: expected one of {', '.join(GROUPS)}, got {by!r}")
    if not os.path.exists(path):
        return []
    db = _connect(path, readonly=True)
    try:
        rows = db.execute(
            f"SELECT \"{by}\", COUNT(*), COALESCE(SUM(cost_usd), 0), SUM(cost_usd IS NULL), "
            f"COALESCE(SUM(charged_usd), 0), SUM(input_tokens), SUM(output_tokens), SUM(outcome = 'failed') "
            f"FROM spend WHERE at_unix >= ? GROUP BY \"{by}\" ORDER BY 3 DESC", (since_unix,)).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        db.close()
    return [{"group": g, "requests": n, "cost_usd": cost, "unknown_cost": unknown or 0, "charged_usd": charged,
             "input_tokens": tin or 0, "output_tokens": tout or 0, "failed": failed or 0}
            for g, n, cost, unknown, charged, tin, tout, failed in rows]


def merge_reports(reports: Iterable[Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Several nodes' reports summed group by group (``--cluster``)."""
    merged: dict[Any, dict[str, Any]] = {}
    for rows in reports:
        for row in rows:
            into = merged.setdefault(row["group"], {k: (v if k == "group" else 0) for k, v in row.items()})
            for k, v in row.items():
                if k != "group":
                    into[k] += v
    return sorted(merged.values(), key=lambda r: -r["cost_usd"])


def totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": 0, "cost_usd": 0.0, "unknown_cost": 0, "charged_usd": 0.0,
                           "input_tokens": 0, "output_tokens": 0, "failed": 0}
    for row in rows:
        for k in out:
            out[k] += row.get(k, 0)
    return out
