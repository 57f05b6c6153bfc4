"""GET /metrics: the node's picture in Prometheus' text format, from a prometheus_client custom collector.

A node is many processes (engines, breakers, the limiter hub, this HTTP process), so the
numbers are collected from the actors by message at scrape time, not kept in process-global
metric objects: the node's status gathering already asks every engine (with its statistics
snapshot), every breaker and the limiter hub in one round, and a scrape costs one such round
plus one membership ask. prometheus_client's multiprocess mode would need every actor
process to write mmap files into a shared directory, stays per host, and knows nothing of
breakers' or budgets' state; the custom collector needs none of that and keeps no global
registry state (each FrontDoor has its own registry, so tests can run several).

Every series carries the labels it is documented with in docs/observability.md; label
values are configured names (deployments, models, providers, endpoints, keys, budgets,
nodes), error class names and fixed outcome names: never request ids or prompts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from actors.core.stats import LATENCY_BOUNDS, Histogram, merge_snapshots

__all__ = ["StatusCollector", "Overhead", "render", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEPLOYMENT_LABELS = ["deployment", "model", "provider", "node"]
TOKEN_KINDS = ("input", "cached_input", "output", "reasoning")


class Overhead:
    """What the gateway adds to each HTTP call, per deployment: the HTTP call's time minus the
    engine's (accept to terminal). Measured in this process, where the HTTP call is timed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by: dict[str, Histogram] = {}

    def observe(self, deployment: str, seconds: float) -> None:
        if not deployment:
            return
        with self._lock:
            hist = self._by.get(deployment)
            if hist is None:
                if len(self._by) >= 256:  # deployments are configured; this only bounds a surprise
                    return
                hist = self._by[deployment] = Histogram()
            hist.observe(seconds)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: h.as_dict() for name, h in self._by.items()}


def _buckets(hist: dict[str, Any]) -> list[tuple[str, float]]:
    counts = list(hist.get("counts") or [])
    counts += [0] * (len(LATENCY_BOUNDS) + 1 - len(counts))
    out, running = [], 0
    for bound, n in zip(LATENCY_BOUNDS, counts):
        running += n
        out.append((repr(float(bound)), running))
    out.append(("+Inf", running + counts[len(LATENCY_BOUNDS)]))
    return out


class StatusCollector(Collector):
    """``source()`` returns (this node's status document, its Overhead snapshot); see status_view."""

    def __init__(self, source: Callable[[], tuple[dict[str, Any], dict[str, Any]]]) -> None:
        self.source = source

    def describe(self) -> list[Any]:
        return []  # no describe-time scrape of the node (the registry is built with auto_describe off)

    def collect(self):  # noqa: C901 - one family after the other, in the documented order
        doc, overhead = self.source()
        node = doc["nodes"][0]["node_id"] if doc.get("nodes") else ""
        engines = doc.get("_engines_stats", [])
        c = CounterMetricFamily
        g = GaugeMetricFamily
        requests = c("atomr_requests", "Requests ended, by outcome (completed, failed, rejected at admission) "
                     "and error kind", labels=DEPLOYMENT_LABELS + ["outcome", "error_kind"])
        retries = c("atomr_retries", "Attempts beyond the first (retries, credential and crash retries)",
                    labels=DEPLOYMENT_LABELS)
        fallbacks = c("atomr_fallbacks", "Requests served after falling back from another deployment",
                      labels=DEPLOYMENT_LABELS)
        latency = HistogramMetricFamily("atomr_request_latency_seconds", "Engine latency, accepted to terminal "
                                        "(queue, upstream, retries)", labels=DEPLOYMENT_LABELS)
        ttft = HistogramMetricFamily("atomr_ttft_seconds", "Time to first token, accepted to first token",
                                     labels=DEPLOYMENT_LABELS)
        gateway = HistogramMetricFamily("atomr_gateway_overhead_seconds", "HTTP call time minus engine latency, "
                                        "measured by this node's HTTP listener", labels=DEPLOYMENT_LABELS)
        tokens = c("atomr_tokens", "Tokens by kind (input includes cached_input, output includes reasoning)",
                   labels=DEPLOYMENT_LABELS + ["kind"])
        cost = c("atomr_cost_usd", "Cost in USD of ended requests (known prices only)", labels=DEPLOYMENT_LABELS)
        unpriced = c("atomr_unpriced_requests", "Ended requests whose cost is unknown", labels=DEPLOYMENT_LABELS)
        queue = g("atomr_queue_depth", "Requests waiting in the engines' queues", labels=DEPLOYMENT_LABELS)
        in_flight = g("atomr_in_flight", "Requests on a worker", labels=DEPLOYMENT_LABELS)
        workers = g("atomr_workers", "Worker processes by state (busy, idle)", labels=DEPLOYMENT_LABELS + ["state"])
        circuit = g("atomr_deployment_circuit_state", "The circuit as the deployment's engines see it: 0 closed, "
                    "1 half-open, 2 open (the worst replica)", labels=DEPLOYMENT_LABELS)
        failing = g("atomr_deployment_failing_since_seconds", "Unix time since which the deployment fails "
                    "(no success since, or its circuit opened); absent when healthy", labels=DEPLOYMENT_LABELS)
        spent = g("atomr_deployment_budget_spent", "1 for each spend budget of the deployment or its provider "
                  "that is spent (routing skips the deployment until it resets)", labels=DEPLOYMENT_LABELS + ["budget"])
        staleness = g("atomr_budget_view_staleness_seconds", "How stale the rate-limit replica of the deployment "
                      "may be, as its engines measure it from arriving deltas (the worst replica)",
                      labels=DEPLOYMENT_LABELS)
        late = c("atomr_budget_late_deltas", "Deltas that arrived older than the staleness their replica assumed: "
                 "an approximate budget may have been overrun then (docs/cluster.md)", labels=DEPLOYMENT_LABELS)
        by_key: dict[str, dict[str, float]] = {}   # key -> its counts (requests, failed, tokens, cost)
        for row in doc.get("deployments", []):
            labels = [row["deployment"], row["model"], row["provider"], node]
            mine = [e for e in engines if e["deployment"] == row["deployment"]]
            stats = merge_snapshots([e["stats"] for e in mine])
            for outcome in ("completed", "failed"):
                for kind, n in sorted(stats["outcomes"].get(outcome, {}).items()):
                    requests.add_metric(labels + [outcome, kind], n)
            for kind, n in sorted(stats["rejected"].items()):
                requests.add_metric(labels + ["rejected", kind], n)
            retries.add_metric(labels, stats["retries"])
            fallbacks.add_metric(labels, stats["fallbacks"])
            latency.add_metric(labels, _buckets(stats["latency"]), stats["latency"]["sum"])
            ttft.add_metric(labels, _buckets(stats["ttft"]), stats["ttft"]["sum"])
            if row["deployment"] in overhead:
                gateway.add_metric(labels, _buckets(overhead[row["deployment"]]), overhead[row["deployment"]]["sum"])
            for kind in TOKEN_KINDS:
                tokens.add_metric(labels + [kind], stats["tokens"].get(kind, 0))
            cost.add_metric(labels, stats["cost_usd"])
            unpriced.add_metric(labels, stats["unpriced"])
            queue.add_metric(labels, row["queued"])
            in_flight.add_metric(labels, row["in_flight"])
            workers.add_metric(labels + ["busy"], row["busy_workers"])
            workers.add_metric(labels + ["idle"], max(0, row["workers"] - row["busy_workers"]))
            circuit.add_metric(labels, {"closed": 0, "half_open": 1, "open": 2}.get(row["circuit"], 0))
            if row["failing_since_unix"] is not None:
                failing.add_metric(labels, row["failing_since_unix"])
            for budget in row.get("budget_spent", []):
                spent.add_metric(labels + [budget], 1)
            views = [e["budget_view"] for e in mine if e.get("budget_view")]
            if views:
                staleness.add_metric(labels, max(v["staleness_s"] for v in views))
                late.add_metric(labels, sum(v["late_deltas"] for v in views))
            for key, per in stats["keys"].items():
                mine_key = by_key.setdefault(key, {})
                for name, n in per.items():
                    mine_key[name] = mine_key.get(name, 0) + n
        yield from (requests, retries, fallbacks, latency, ttft, gateway, tokens, cost, unpriced, queue, in_flight,
                    workers, circuit, failing, spent, staleness, late)

        state = g("atomr_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
                  labels=["provider", "endpoint", "node"])
        opens = c("atomr_breaker_opens", "Times the circuit opened", labels=["provider", "endpoint", "node"])
        trips = g("atomr_breaker_trips", "Consecutive trips (the open time's escalation level; back to 0 after "
                  "a healthy spell)", labels=["provider", "endpoint", "node"])
        half_open = g("atomr_breaker_half_open_in_seconds", "Seconds until an open circuit lets a probe through "
                      "(0 when not open)", labels=["provider", "endpoint", "node"])
        for b in doc.get("breakers", []):
            labels = [b["provider"], b["endpoint"], node]
            state.add_metric(labels, b["value"])
            opens.add_metric(labels, b["opens"])
            trips.add_metric(labels, b["trips"])
            half_open.add_metric(labels, b["half_open_in_s"])
        yield from (state, opens, trips, half_open)

        blabels = ["budget", "scope", "mode", "node"]
        used_r = g("atomr_budget_requests_used", "Requests admitted in the current window, cluster-wide "
                   "(this node's merged view)", labels=blabels)
        limit_r = g("atomr_budget_requests_limit", "Requests allowed per window (absent: unlimited)", labels=blabels)
        used_t = g("atomr_budget_tokens_used", "Tokens charged in the current window, cluster-wide "
                   "(this node's merged view)", labels=blabels)
        limit_t = g("atomr_budget_tokens_limit", "Tokens allowed per window (absent: unlimited)", labels=blabels)
        window = g("atomr_budget_window_seconds", "Length of the budget's window", labels=blabels)
        for lim in doc.get("budgets", []):
            labels = [lim["key"], lim["scope"], lim["mode"], node]
            used_r.add_metric(labels, lim["requests"])
            used_t.add_metric(labels, lim["tokens"])
            window.add_metric(labels, lim["window_s"])
            if lim["rpm"]:
                limit_r.add_metric(labels, lim["rpm"])
            if lim["tpm"]:
                limit_t.add_metric(labels, lim["tpm"])
        yield from (used_r, limit_r, used_t, limit_t, window)

        slabels = ["budget", "scope", "period", "mode", "node"]
        spent = g("atomr_spend_used_usd", "USD charged to a spend budget in its current period, cluster-wide "
                  "(this node's merged view)", labels=slabels)
        spend_limit = g("atomr_spend_limit_usd", "USD a spend budget allows per period", labels=slabels)
        spend_end = g("atomr_spend_period_end_seconds", "Unix time the budget's current period ends (it resets then)",
                      labels=slabels)
        spend = doc.get("spend") or {}
        for b in spend.get("budgets", []):
            labels = [b["budget"], b["scope"], b["period"], b["mode"], node]
            spent.add_metric(labels, b["spent_usd"])
            spend_limit.add_metric(labels, b["usd"])
            if b["period_end_unix"] is not None:
                spend_end.add_metric(labels, b["period_end_unix"])
        ledger_state = g("atomr_ledger_degraded", "1 when the node's spend ledger is losing records (disk full, I/O "
                         "error, queue full), 0 when ok; absent without a ledger", labels=["node"])
        written = c("atomr_ledger_records_written", "Terminal records committed to the ledger", labels=["node"])
        dropped = c("atomr_ledger_records_dropped", "Terminal records the ledger lost", labels=["node"])
        queued = g("atomr_ledger_records_queued", "Terminal records waiting for the ledger's writer", labels=["node"])
        for ledger in spend.get("ledgers", []):
            if ledger["state"] in ("ok", "degraded"):
                ledger_state.add_metric([node], 1 if ledger["state"] == "degraded" else 0)
                written.add_metric([node], ledger["written"])
                dropped.add_metric([node], ledger["dropped"])
                queued.add_metric([node], ledger["queued"])
        yield from (spent, spend_limit, spend_end, ledger_state, written, dropped, queued)

        members = g("atomr_cluster_members", "Nodes in the cluster, as this node knows it", labels=["node"])
        members.add_metric([node], len(doc.get("nodes", [])))
        heartbeat = g("atomr_cluster_member_heartbeat_age_seconds", "Seconds since the leader last heard "
                      "from each member", labels=["member", "node"])
        for n in doc.get("nodes", []):
            if n["heartbeat_age_s"] is not None:
                heartbeat.add_metric([n["node_id"], node], n["heartbeat_age_s"])
        yield from (members, heartbeat)

        refused = c("atomr_refusals", "Requests refused without reaching a provider, by model, reason (the error "
                    "class) and where it was decided: engine, or router (in a client process, reported to the node)",
                    labels=["model", "reason", "where", "node"])
        for row in doc.get("refusals", []):
            refused.add_metric([row["model"], row["reason"], row["where"], node], row["count"])
        yield refused

        key_requests = c("atomr_key_requests", "Requests ended, per API key (outcome: completed, failed)",
                         labels=["key", "outcome", "node"])
        key_tokens = c("atomr_key_tokens", "Tokens per API key (input, output)", labels=["key", "kind", "node"])
        key_cost = c("atomr_key_cost_usd", "Cost in USD per API key", labels=["key", "node"])
        for key, per in sorted(by_key.items()):
            name = key or "(python client)"
            key_requests.add_metric([name, "completed", node], per["requests"] - per["failed"])
            key_requests.add_metric([name, "failed", node], per["failed"])
            key_tokens.add_metric([name, "input", node], per["input_tokens"])
            key_tokens.add_metric([name, "output", node], per["output_tokens"])
            key_cost.add_metric([name, node], per["cost_usd"])
        yield from (key_requests, key_tokens, key_cost)


def render(source: Callable[[], tuple[dict[str, Any], dict[str, Any]]]) -> bytes:
    """One scrape: a fresh registry holding only this collector (no global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(source))
    return generate_latest(registry)
