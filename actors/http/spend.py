"""``GET /v1/spend?since=1d&by=key[&cluster=1]``: the ledger's sums as JSON, for dashboards."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

from actors.core.periods import parse_period
from actors.http.errors import FrontDoorError

__all__ = ["spend_document", "GROUPS"]

GROUPS = ("key", "team", "model", "deployment", "provider", "node", "outcome")
_SUMMED = ("requests", "failed", "cost_usd", "unknown_cost", "charged_usd", "input_tokens", "output_tokens")


def _bad(message: str, param: str) -> FrontDoorError:
    return FrontDoorError(400, message, kind="invalid_request_error", code="invalid_parameter", param=param)


def spend_document(client: Any, query: str, now: float | None = None) -> dict[str, Any]:
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    since_text, by = params.get("since", "1d"), params.get("by", "key")
    if by not in GROUPS:
        raise _bad(f"by: expected one of {', '.join(GROUPS)}, got {by!r}", "by")
    try:
        period = parse_period(since_text)
    except ValueError:
        raise _bad(f"since: expected a duration such as 1h, 1d, 30d or 1mo, got {since_text!r}", "since") from None
    now = time.time() if now is None else now
    since = period.start(period.index(now)) if period.months else now - period.seconds
    cluster = params.get("cluster", "") in ("1", "true", "yes")
    reports = client.spend(since, by, cluster=cluster)
    merged: dict[Any, dict[str, Any]] = {}
    for report in reports:
        for row in report.rows:
            into = merged.setdefault(row["group"], {"group": row["group"], **{k: 0 for k in _SUMMED}})
            for k in _SUMMED:
                into[k] += row.get(k, 0)
    rows = sorted(merged.values(), key=lambda r: -r["cost_usd"])
    total = {k: sum(r[k] for r in rows) for k in _SUMMED}
    return {"object": "spend", "since_unix": since, "by": by, "rows": rows, "total": total,
            "nodes": [{"node": r.node, "error": r.error} for r in reports]}
