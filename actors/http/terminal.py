"""``launch.py status --watch``: the status document (status_view.py) drawn live in a terminal with rich.

The same picture as /ui, refreshed every second, for the whole cluster from any node;
Ctrl-C leaves it cleanly (the terminal is restored and the exit status is 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["render", "watch"]

_STYLE = {"ok": "green", "closed": "green", "half_open": "yellow", "failing": "yellow", "draining": "yellow",
          "open": "bold red"}


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 1:
        return f"{v * 1000:.0f}ms"
    return f"{v:.1f}s" if v < 120 else f"{v / 60:.0f}min"


def _bar(used: float, limit: float | None, width: int = 20, unit: str = "") -> Text:
    if not limit:
        return Text(f"{unit}{used:g} (no limit)")
    fraction = used / limit
    filled = min(width, round(fraction * width))
    style = "red" if fraction >= 1 else "yellow" if fraction >= 0.8 else "green"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"),
                         f" {unit}{used:.6g}/{unit}{limit:g} ({fraction:.0%})")


def render(doc: dict[str, Any], refreshes: int = 0) -> Group:
    now = doc["generated_unix"]
    leader = f"led by {doc['leader']}" if doc.get("leader") else "single node"
    head = Text.assemble(("atomr cluster ", "bold"), f"{len(doc['nodes'])} node(s), {leader} · ",
                         f"updated {time.strftime('%H:%M:%S', time.localtime(now))} (#{refreshes}) · Ctrl-C to quit")
    nodes = Table("node", "address", "role", "up", "last heartbeat", title="nodes", title_justify="left")
    for n in doc["nodes"]:
        nodes.add_row(n["node_id"], n["address"], "leader" if n["leader"] else n["membership"] or "member",
                      _secs(n["up_s"]), "-" if n["heartbeat_age_s"] is None else f"{_secs(n['heartbeat_age_s'])} ago")
    for u in doc.get("unreachable", []):
        nodes.add_row(u, "", Text("unreachable", "red"), "", "")
    deps = Table("deployment", "provider", "state", "queue", "workers", "requests", "errors", "p50/p99",
                 "ttft p50/p99", "tokens in/out", "cost", title="deployments", title_justify="left")
    for d in doc["deployments"]:
        state = Text(d["state"], _STYLE.get(d["state"], ""))
        if d["failing_since_unix"]:
            state.append(f" since {time.strftime('%H:%M:%S', time.localtime(d['failing_since_unix']))}", "dim")
        deps.add_row(d["deployment"], d["provider"], state, str(d["queued"]), f"{d['busy_workers']}/{d['workers']}",
                     str(d["requests"]), f"{d['error_rate']:.0%}",
                     f"{_secs(d['latency_p50_s'])}/{_secs(d['latency_p99_s'])}",
                     f"{_secs(d['ttft_p50_s'])}/{_secs(d['ttft_p99_s'])}",
                     f"{d['tokens'].get('input', 0)}/{d['tokens'].get('output', 0)}", f"${d['cost_usd']:.4f}")
    breakers = Table("circuit", "node", "state", "opens", "half-open in", title="breakers", title_justify="left")
    for b in doc["breakers"]:
        breakers.add_row(f"{b['provider']} {b['endpoint']}", b["node"], Text(b["state"], _STYLE.get(b["state"], "")),
                         str(b["opens"]), _secs(b["half_open_in_s"]) if b["state"] == "open" else "-")
    budgets = Table("budget", "requests", "tokens", "resets in", title="budgets (cluster-wide, this window)",
                    title_justify="left")
    for lim in doc["budgets"]:
        budgets.add_row(f"{lim['key']} ({lim['mode']})", _bar(lim["requests"], lim["rpm"]),
                        _bar(lim["tokens"], lim["tpm"]), _secs(max(0.0, lim["window_end_unix"] - now)))
    spend = doc.get("spend") or {}
    spent = Table("spend budget", "scope", "period", "USD", "resets in", title="spend budgets (cluster-wide, this "
                  "period)", title_justify="left")
    for b in spend.get("budgets", []):
        resets = _secs(max(0.0, b["period_end_unix"] - now)) if b["period_end_unix"] else "-"
        spent.add_row(f"{b['budget']} ({b['mode']})", f"{b['scope']} {b['name']}", b["period"],
                      _bar(b["spent_usd"], b["usd"], unit="$"), resets)
    refused = Table("model", "reason", "where", "calls", title="refused without calling the provider (since each "
                    "node started)", title_justify="left")
    for r in doc.get("refusals", []):
        refused.add_row(r["model"], r["reason"], r["where"], str(r["count"]))
    ledgers = [Text.assemble(f"ledger of {x['node']}: ", (x["state"], "green" if x["state"] == "ok" else "bold red"),
                             f" · {x['written']} written, {x['dropped']} dropped, {x['queued']} queued")
               for x in spend.get("ledgers", []) if x["state"] != "none"]
    parts: list[Any] = [head, nodes, deps, breakers]
    if doc["budgets"]:
        parts.append(budgets)
    if spend.get("budgets"):
        parts.append(spent)
    parts += ledgers
    if doc.get("refusals"):
        parts.append(refused)
    return Group(*parts)


def watch(fetch: Callable[[], dict[str, Any]], interval_s: float = 1.0, console: Console | None = None) -> int:
    """Redraw ``fetch()`` every ``interval_s`` until Ctrl-C; a failed fetch is shown, and retried."""
    console = console or Console()
    refreshes = 0
    try:
        with Live(Text("asking the cluster…"), console=console, auto_refresh=False, transient=False) as live:
            while True:
                started = time.monotonic()
                try:
                    refreshes += 1
                    live.update(render(fetch(), refreshes), refresh=True)
                except Exception as exc:  # noqa: BLE001 - a node that does not answer now may answer next time
                    live.update(Text(f"status unavailable (#{refreshes}): {exc}", "red"), refresh=True)
                time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0
