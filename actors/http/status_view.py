"""The cluster's picture as one JSON document: what /v1/status serves, /ui draws and /metrics exposes.

Built from the status messages the nodes already answer (``ClusterStatus``, ``NodeStatus``,
``EngineStatus`` with its statistics snapshot, breaker snapshots, limiter usage), duck-typed,
so this module needs nothing from the runtime. Every number the dashboard, ``launch.py
status --watch`` and the metrics show comes from here, so they cannot disagree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from actors.core.periods import parse_period
from actors.core.stats import LATENCY_BOUNDS, merge_snapshots, quantile
from actors.settings.schema import KEY_BUDGET_PREFIX

__all__ = ["status_document", "node_document", "CIRCUIT_VALUE"]

CIRCUIT_VALUE = {"closed": 0, "half_open": 1, "open": 2}
_WORST = {"unknown": -1, "closed": 0, "half_open": 1, "open": 2}


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


def _member_table(members: list[Any]) -> dict[str, Any]:
    return {(m.node_id or m.node): m for m in members}


def _node_entry(status: Any, member: Any, leader: str, now: float) -> dict[str, Any]:
    return {"node": status.node, "node_id": status.node_id or status.node, "address": status.address,
            "leader": bool(leader) and status.node == leader,
            "membership": status.membership, "in_cluster": getattr(status, "in_cluster", True),
            "membership_note": getattr(status, "membership_note", ""),
            "started_unix": status.started_unix,
            "up_s": max(0.0, now - status.started_unix),
            "heartbeat_age_s": None if member is None else float(member.last_seen_s),
            "supervision": list(status.supervision or [])}


def _engine_entry(e: Any, node_id: str) -> dict[str, Any]:
    return {"deployment": e.deployment, "replica": e.replica, "node": node_id, "model": getattr(e, "model", ""),
            "provider": getattr(e, "provider", ""), "endpoint": getattr(e, "endpoint", ""),
            "queued": e.queued, "in_flight": e.in_flight, "busy_workers": e.busy_workers, "workers": e.workers,
            "accepted": e.accepted, "completed": e.completed, "failed": e.failed,
            "depth_by_priority": dict(e.depth_by_priority or {}), "circuit": e.circuit, "draining": e.draining,
            "budget_spent": list(getattr(e, "budget_spent", None) or []),
            "budget_view": dict(getattr(e, "budget_view", None) or {}),
            "stats": getattr(e, "stats", None) or {}}


def _breaker_entry(b: Any, node_id: str, now: float) -> dict[str, Any]:
    state = _state(b.state)
    retry_in = max(0.0, b.retry_at_unix_ms / 1000 - now) if state != "closed" and b.retry_at_unix_ms else 0.0
    return {"provider": b.provider, "endpoint": b.endpoint, "node": node_id, "state": state,
            "value": CIRCUIT_VALUE.get(state, 0), "trips": b.trips, "opens": getattr(b, "opens", 0),
            "opened_at_unix": b.opened_at_unix_ms / 1000,
            "retry_at_unix": b.retry_at_unix_ms / 1000, "half_open_in_s": retry_in if state == "open" else 0.0,
            "consecutive_failures": b.consecutive_failures, "window_calls": b.window_calls,
            "window_failures": b.window_failures,
            "transitions": [{"at_unix": t[0] / 1000, "from": t[1], "to": t[2]}
                            for t in getattr(b, "transitions", ()) or ()]}


def _budget_entry(lim: dict[str, Any], node_id: str) -> dict[str, Any]:
    window_s = float(lim.get("window_s") or 60.0)
    start = float(lim.get("window_start_unix") or 0.0)
    key = str(lim["key"])
    return {"key": key, "scope": "key" if key.startswith(KEY_BUDGET_PREFIX) else "deployment",
            "mode": lim.get("mode", ""), "node": node_id, "window_s": window_s,
            "window_start_unix": start, "window_end_unix": start + window_s,
            "requests": lim.get("requests", 0), "rpm": lim.get("rpm"),
            "tokens": lim.get("tokens", 0), "tpm": lim.get("tpm")}


def _spend_entry(b: dict[str, Any], node_id: str) -> dict[str, Any]:
    """One spend budget line of ``NodeStatus.spend`` (docs/spend.md); its id is ``scope=name/period``."""
    ident = str(b.get("budget", ""))
    scope, _, rest = ident.partition("=")
    name, _, period = rest.rpartition("/")
    start = float(b.get("period_start_unix") or 0.0)
    try:
        p = parse_period(period)
        end = p.end(p.index(start + 1e-6)) if start else None
    except ValueError:
        end = None
    used, limit = float(b.get("spent_usd") or 0.0), float(b.get("usd") or 0.0)
    return {"budget": ident, "scope": scope, "name": name, "period": period, "mode": b.get("mode", ""),
            "node": node_id, "spent_usd": used, "usd": limit, "period_start_unix": start, "period_end_unix": end}


def _ledger_entry(ledger: dict[str, Any] | None, node_id: str) -> dict[str, Any]:
    if not ledger:
        return {"node": node_id, "state": "none", "written": 0, "dropped": 0, "queued": 0, "error": "", "path": ""}
    return {"node": node_id, "state": ledger.get("state", ""), "written": ledger.get("written", 0),
            "dropped": ledger.get("dropped", 0), "queued": ledger.get("queued", 0),
            "error": ledger.get("error", ""), "path": ledger.get("path", "")}


def _spend(entries: list[dict[str, Any]], ledgers: list[dict[str, Any]]) -> dict[str, Any]:
    best: dict[str, dict[str, Any]] = {}
    for b in entries:
        # As for the rate limits: every hub merges the cluster's counts; the most advanced view wins.
        mine = best.get(b["budget"])
        if mine is None or (b["period_start_unix"], b["spent_usd"]) > (mine["period_start_unix"], mine["spent_usd"]):
            best[b["budget"]] = b
    budgets = [{**{k: v for k, v in b.items() if k != "node"},
                "fraction": b["spent_usd"] / b["usd"] if b["usd"] else None}
               for _, b in sorted(best.items())]
    return {"budgets": budgets, "budgets_by_node": entries, "ledgers": ledgers}


def _summary(stats: dict[str, Any]) -> dict[str, Any]:
    """The merged statistics reduced to what a row shows: counts, rates, quantiles."""
    outcomes = stats.get("outcomes", {})
    completed = sum(outcomes.get("completed", {}).values())
    failed = sum(outcomes.get("failed", {}).values())
    rejected = sum(stats.get("rejected", {}).values())
    total = completed + failed + rejected
    latency, ttft = stats.get("latency", {}), stats.get("ttft", {})
    lc, tc = latency.get("counts", []), ttft.get("counts", [])
    return {"requests": total, "completed": completed, "failed": failed, "rejected": rejected,
            "error_rate": (failed + rejected) / total if total else 0.0,
            "errors": dict(outcomes.get("failed", {})), "rejections": dict(stats.get("rejected", {})),
            "retries": stats.get("retries", 0), "fallbacks": stats.get("fallbacks", 0),
            "latency_p50_s": quantile(lc, 0.5), "latency_p99_s": quantile(lc, 0.99),
            "ttft_p50_s": quantile(tc, 0.5), "ttft_p99_s": quantile(tc, 0.99),
            "tokens": dict(stats.get("tokens", {})), "cost_usd": stats.get("cost_usd", 0.0),
            "unpriced": stats.get("unpriced", 0), "failing_since_unix": stats.get("failing_since_unix"),
            "last_success_unix": stats.get("last_success_unix"), "last_failure_unix": stats.get("last_failure_unix")}


def _series(stats: dict[str, Any]) -> list[dict[str, Any]]:
    step = stats.get("step_s") or 10
    return [{"t": p[0], "requests_per_s": p[1] / step, "errors_per_s": p[2] / step, "cost_usd": p[3],
             "input_tokens": p[4], "output_tokens": p[5], "latency_p50_s": quantile(p[6], 0.5),
             "latency_p99_s": quantile(p[6], 0.99), "ttft_p50_s": quantile(p[7], 0.5),
             "ttft_p99_s": quantile(p[7], 0.99)} for p in stats.get("series", [])]


def _deployments(engines: list[dict[str, Any]], breakers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for e in engines:
        grouped.setdefault(e["deployment"], []).append(e)
    rows = []
    for name, group in sorted(grouped.items()):
        first = next((e for e in group if e["model"]), group[0])
        circuit = max((e["circuit"] for e in group), key=lambda s: _WORST.get(s, 0))
        stats = merge_snapshots([e["stats"] for e in group])
        summary = _summary(stats)
        opened = [b for b in breakers if b["provider"] == first["provider"] and b["endpoint"] == first["endpoint"]
                  and b["state"] != "closed"]
        failing_since = summary["failing_since_unix"]
        if opened:
            since = min(b["opened_at_unix"] for b in opened)
            failing_since = since if failing_since is None else min(failing_since, since)
        draining = all(e["draining"] for e in group)
        state = ("draining" if draining else "open" if circuit == "open" else "half_open" if circuit == "half_open"
                 else "failing" if summary["failing_since_unix"] is not None else "ok")
        rows.append({"deployment": name, "model": first["model"], "provider": first["provider"],
                     "endpoint": first["endpoint"], "nodes": sorted({e["node"] for e in group}),
                     "replicas": len(group), "state": state, "circuit": circuit, "failing_since_unix": failing_since,
                     "queued": sum(e["queued"] for e in group), "in_flight": sum(e["in_flight"] for e in group),
                     "busy_workers": sum(e["busy_workers"] for e in group),
                     "workers": sum(e["workers"] for e in group), **{k: v for k, v in summary.items()
                                                                     if k != "failing_since_unix"},
                     "budget_spent": sorted({b for e in group for b in e["budget_spent"]}),
                     "keys": stats.get("keys", {}), "series": _series(stats),
                     "latency_hist": stats.get("latency", {}), "ttft_hist": stats.get("ttft", {})})
    return rows


def _keys(engines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[str, dict[str, float]] = {}
    for e in engines:
        for key, per in (e["stats"].get("keys") or {}).items():
            mine = totals.setdefault(key, {})
            for name, n in per.items():
                mine[name] = mine.get(name, 0) + n
    return [{"key": k or "(python client)", **v} for k, v in sorted(totals.items())]


def _budgets(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for lim in entries:
        # Every node's hub holds the merged cluster view of each budget; the most advanced one wins.
        mine = best.get(lim["key"])
        rank = (lim["window_start_unix"], lim["requests"], lim["tokens"])
        if mine is None or rank > (mine["window_start_unix"], mine["requests"], mine["tokens"]):
            best[lim["key"]] = lim
    out = []
    for key, lim in sorted(best.items()):
        out.append({**{k: v for k, v in lim.items() if k != "node"},
                    "requests_fraction": lim["requests"] / lim["rpm"] if lim["rpm"] else None,
                    "tokens_fraction": lim["tokens"] / lim["tpm"] if lim["tpm"] else None})
    return out


def _refusals(engines: list[dict[str, Any]], routers: list[dict[str, dict[str, int]]]) -> list[dict[str, Any]]:
    """Every refused request by model, reason (the error class) and where it was decided: an engine
    (its statistics), or the router in a client process (reported to its node: NodeStatus.refusals)."""
    counts: dict[tuple[str, str, str], int] = {}
    for e in engines:
        for reason, n in (e["stats"].get("refused") or {}).items():
            counts[(e["model"], reason, "engine")] = counts.get((e["model"], reason, "engine"), 0) + n
    for by_model in routers:
        for model, reasons in (by_model or {}).items():
            for reason, n in reasons.items():
                counts[(model, reason, "router")] = counts.get((model, reason, "router"), 0) + n
    return [{"model": m, "reason": r, "where": w, "count": n} for (m, r, w), n in sorted(counts.items())]


def status_document(nodes: list[Any], members: Sequence[Any] = (), leader: str = "", unreachable: Sequence[str] = (),
                    now: float | None = None) -> dict[str, Any]:
    """The whole picture from the nodes' status replies (one node's, or the cluster's)."""
    now = time.time() if now is None else now
    table = _member_table(list(members))
    node_rows, engines, breakers, limits, spend, ledgers, routers = [], [], [], [], [], [], []
    for status in nodes:
        routers.append(getattr(status, "refusals", None) or {})
        node_id = status.node_id or status.node
        node_rows.append(_node_entry(status, table.get(node_id), leader, now))
        engines += [_engine_entry(e, node_id) for e in status.engines if e.deployment]
        breakers += [_breaker_entry(b, node_id, now) for b in status.breakers]
        limits += [_budget_entry(lim, node_id) for lim in status.limits]
        node_spend = getattr(status, "spend", None) or {}
        spend += [_spend_entry(b, node_id) for b in node_spend.get("budgets", [])]
        ledgers.append(_ledger_entry(node_spend.get("ledger"), node_id))
    seen = {row["node_id"] for row in node_rows}
    for node_id, m in table.items():
        if node_id not in seen:  # a member that did not answer the status gathering
            node_rows.append({"node": m.node, "node_id": node_id, "address": f"{m.host}:{m.admin_port}",
                              "leader": m.node == leader, "membership": "unreachable", "in_cluster": None,
                              "membership_note": "", "started_unix": m.started_unix,
                              "up_s": max(0.0, now - m.started_unix), "heartbeat_age_s": float(m.last_seen_s),
                              "supervision": []})
    return {"generated_unix": now, "leader": leader, "unreachable": list(unreachable),
            "latency_bounds_s": list(LATENCY_BOUNDS), "nodes": node_rows,
            "deployments": _deployments(engines, breakers),
            "engines": [{k: v for k, v in e.items() if k != "stats"} for e in engines],
            "breakers": sorted(breakers, key=lambda b: (b["provider"], b["endpoint"], b["node"])),
            "budgets": _budgets(limits), "budgets_by_node": limits, "keys": _keys(engines),
            "spend": _spend(spend, ledgers), "refusals": _refusals(engines, routers),
            "_engines_stats": engines}


def cluster_document(cluster: Any, now: float | None = None) -> dict[str, Any]:
    """``status_document`` of a ``ClusterStatus`` (every node, gathered by the leader)."""
    return status_document(cluster.nodes, cluster.members, cluster.leader, cluster.unreachable, now)


def node_document(status: Any, members: Sequence[Any] = (), leader: str = "", now: float | None = None) -> dict[str, Any]:
    return status_document([status], members, leader, [], now)


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as served: internal fields (the raw per-engine statistics) left out."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}
