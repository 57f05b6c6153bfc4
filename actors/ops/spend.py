"""Spend at the edge of a node: the ledger checked before a node starts, and reports from it."""

from __future__ import annotations

import time
from typing import Any

from actors.errors import ConfigError
from actors.runtime.ledger_store import GROUPS, LedgerError, check_ledger, merge_reports, report, totals
from actors.runtime.protocol import LedgerInit
from actors.settings.schema import GatewayConfig

__all__ = ["spend_ledger", "parse_since", "local_report", "format_report", "GROUPS"]


def spend_ledger(config: GatewayConfig) -> LedgerInit | None:
    """The node's LedgerInit, after checking the file opens, is a ledger and is writable (ConfigError if not)."""
    path = config.node.ledger
    if path is None:
        return None
    try:
        check_ledger(path)
    except LedgerError as exc:
        raise ConfigError(str(exc), path="node.ledger") from None
    return LedgerInit(path, retention_days=config.node.ledger_retention_days)


def parse_since(text: str, now: float | None = None) -> float:
    """``1h``, ``1d``, ``30d``, ``1mo`` ... -> the Unix time that long ago (``1mo``: the start of this month)."""
    from actors.core.periods import parse_period

    now = time.time() if now is None else now
    try:
        period = parse_period(text)
    except ValueError:
        raise ConfigError(f"expected a duration such as 1h, 1d, 30d or 1mo, got {text!r}", path="--since") from None
    if period.months:
        return period.start(period.index(now))
    return now - period.seconds


def local_report(config: GatewayConfig, since_unix: float, by: str) -> list[dict[str, Any]]:
    if config.node.ledger is None:
        raise ConfigError("this config keeps no ledger (set node.ledger)", path="node.ledger")
    return report(config.node.ledger, since_unix, by)


def format_report(rows: list[dict[str, Any]], by: str, title: str) -> str:
    lines = [title, f"{by:<28} {'requests':>9} {'failed':>7} {'cost USD':>14} {'unknown':>8} {'charged USD':>14}"]
    for row in rows:
        group = row["group"] if row["group"] not in (None, "") else "(none)"
        lines.append(f"{str(group)[:28]:<28} {row['requests']:>9} {row['failed']:>7} {row['cost_usd']:>14.6f} "
                     f"{row['unknown_cost']:>8} {row['charged_usd']:>14.6f}")
    t = totals(rows)
    lines.append(f"{'total':<28} {t['requests']:>9} {t['failed']:>7} {t['cost_usd']:>14.6f} {t['unknown_cost']:>8} "
                 f"{t['charged_usd']:>14.6f}")
    if t["unknown_cost"]:
        lines.append(f"{t['unknown_cost']} request(s) of unknown cost are not in the cost column; the budgets "
                     f"charged them by estimate (charged USD)")
    return "\n".join(lines)


def merged(reports: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return merge_reports(reports)
