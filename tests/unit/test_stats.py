"""Deployment statistics, the breaker's transition history, the status document, the metrics
collector, the operator routes' access rule and the log formats: pure parts, no socket."""

from __future__ import annotations

import json
import logging
import types

import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from actors.core.breaker import BreakerConfig, CircuitBreaker, CircuitState
from actors.core.log_format import JsonFormatter, TextFormatter
from actors.core.records import FALLBACK_METADATA, KEY_METADATA, TerminalRecord, terminal_record
from actors.core.stats import LATENCY_BOUNDS, OTHER_KEY, DeploymentStats, merge_snapshots, quantile
from actors.errors import ServerError
from actors.http import metrics
from actors.http.keys import KeyRing
from actors.http.observe import may_observe
from actors.http.status_view import node_document, public, status_document
from actors.settings.loader import build
from actors.settings.schema import HttpConfig
from actors.types import Completed, Usage

from harness import WALL0, Rig


def record(**kw) -> TerminalRecord:
    base = dict(at_unix=WALL0, request_id="r", node="n1", deployment="d1", model="m", provider="openai", key="team",
                team="", outcome="completed", error_kind="", status=None, attempts=1, streamed=True, input_tokens=10,
                cached_input_tokens=4, output_tokens=5, reasoning_tokens=1, usage_reported=True, charged_tokens=15,
                cost_usd=0.5, latency_s=0.3, ttft_s=0.04)
    base.update(kw)
    return TerminalRecord(**base)


# -- DeploymentStats -------------------------------------------------------------------------

def test_counts_outcomes_retries_tokens_cost_and_histograms():
    stats = DeploymentStats()
    stats.record(record())
    stats.record(record(outcome="failed", error_kind="ServerError", status=500, attempts=3, output_tokens=0,
                        cost_usd=None, latency_s=2.0, ttft_s=None))
    stats.reject("QueueFull")
    stats.reject("QueueFull")
    s = stats.snapshot(WALL0 + 1)
    assert s["outcomes"] == {"completed": {"": 1}, "failed": {"ServerError": 1}}
    assert s["rejected"] == {"QueueFull": 2}
    assert s["retries"] == 2 and s["fallbacks"] == 0
    assert s["tokens"] == {"input": 20, "cached_input": 8, "output": 5, "reasoning": 2}
    assert s["cost_usd"] == 0.5 and s["unpriced"] == 1
    assert s["latency"]["count"] == 2 and s["latency"]["sum"] == pytest.approx(2.3)
    # 0.3 s is in the (0.25, 0.5] bucket, 2.0 s in (1, 2.5]; TTFT only for the one with a token.
    assert s["latency"]["counts"][LATENCY_BOUNDS.index(0.5)] == 1
    assert s["latency"]["counts"][LATENCY_BOUNDS.index(2.5)] == 1
    assert s["ttft"]["count"] == 1
    assert s["keys"] == {"team": {"requests": 2, "failed": 1, "input_tokens": 20, "output_tokens": 5,
                                  "cost_usd": 0.5}}
    json.dumps(s)  # plain data: it crosses processes in EngineStatus


def test_a_request_the_client_marked_as_a_fallback_is_counted_as_one():
    marked = {KEY_METADATA: "team", FALLBACK_METADATA: "gpt-4o"}
    done = Completed("r1", "hi", "stop", Usage(input_tokens=3, output_tokens=2), deployment="claude")
    common = dict(at_unix=WALL0, node="n1", model="claude", provider="anthropic", streamed=False, latency_s=0.1,
                  ttft_s=None, charged_tokens=5, cost_usd=0.0)
    fallback = terminal_record(done, metadata=marked, **common)
    plain = terminal_record(done, metadata={KEY_METADATA: "team"}, **common)
    assert (fallback.fallback_from, plain.fallback_from) == ("gpt-4o", "")
    stats = DeploymentStats()
    for r in (fallback, plain, plain):
        stats.record(r)
    assert stats.snapshot(WALL0)["fallbacks"] == 1
    assert merge_snapshots([stats.snapshot(WALL0), stats.snapshot(WALL0)])["fallbacks"] == 2


def test_failing_since_is_the_first_failure_after_the_last_success():
    stats = DeploymentStats()
    stats.record(record(at_unix=WALL0 + 1, outcome="failed", error_kind="ServerError"))
    stats.record(record(at_unix=WALL0 + 2, outcome="failed", error_kind="ServerError"))
    assert stats.snapshot(WALL0 + 3)["failing_since_unix"] == WALL0 + 1
    stats.record(record(at_unix=WALL0 + 4))
    assert stats.snapshot(WALL0 + 5)["failing_since_unix"] is None


def test_keys_are_bounded():
    stats = DeploymentStats(max_keys=3)
    for i in range(10):
        stats.record(record(key=f"k{i}"))
    keys = stats.snapshot(WALL0)["keys"]
    assert set(keys) == {"k0", "k1", "k2", OTHER_KEY} and keys[OTHER_KEY]["requests"] == 7


def test_series_is_a_ring_of_fixed_steps_over_15_minutes():
    stats = DeploymentStats()
    for i in range(200):                       # 200 buckets of 10 s: only the last 90 are kept
        stats.record(record(at_unix=WALL0 + 10 * i + 3))
    series = stats.snapshot(WALL0 + 10 * 199 + 5)["series"]
    assert len(series) == 90 and series[0][0] == WALL0 + 10 * 110 and series[-1][0] == WALL0 + 10 * 199
    assert all(p[1] == 1 for p in series)
    # Older buckets drop out of the snapshot as time passes, even with no traffic.
    assert len(stats.snapshot(WALL0 + 10 * 199 + 600)["series"]) == 30


def test_quantile_interpolates_within_a_bucket():
    counts = [0] * (len(LATENCY_BOUNDS) + 1)
    counts[LATENCY_BOUNDS.index(0.5)] = 10     # all in (0.25, 0.5]
    assert quantile(counts, 0.5) == pytest.approx(0.375)
    assert quantile([0] * len(counts), 0.5) is None
    counts[-1] = 1000                          # above the last bound: reported as that bound
    assert quantile(counts, 0.99) == LATENCY_BOUNDS[-1]


def test_quantile_ranks_across_buckets_from_zero():
    counts = [0] * (len(LATENCY_BOUNDS) + 1)
    counts[0] = 10                              # (0, 0.005]
    assert quantile(counts, 0.5) == pytest.approx(0.0025)
    assert quantile(counts, 0.05) == pytest.approx(0.00025)      # under one observation into the bucket
    counts[1] = 10                              # (0.005, 0.01]
    assert quantile(counts, 0.75) == pytest.approx(0.0075)
    counts[2] = 20                              # (0.01, 0.025]
    assert quantile(counts, 0.75) == pytest.approx(0.01 + 0.015 * 10 / 20)


def test_merge_adds_replicas_exactly():
    a, b = DeploymentStats(), DeploymentStats()
    a.record(record(at_unix=WALL0 + 1))
    b.record(record(at_unix=WALL0 + 2, key="other", outcome="failed", error_kind="Timeout", attempts=2))
    merged = merge_snapshots([a.snapshot(WALL0 + 3), b.snapshot(WALL0 + 3), {}])
    assert merged["outcomes"] == {"completed": {"": 1}, "failed": {"Timeout": 1}}
    assert merged["retries"] == 1 and merged["latency"]["count"] == 2 and merged["tokens"]["input"] == 20
    assert set(merged["keys"]) == {"team", "other"}
    assert len(merged["series"]) == 1 and merged["series"][0][1] == 2
    assert merged["failing_since_unix"] is None   # one replica still succeeds


_RECORDS = st.lists(st.tuples(
    st.floats(0, 800), st.sampled_from(["completed", "failed"]), st.sampled_from(["", "k1", "k2"]),
    st.integers(0, 50), st.integers(0, 50), st.one_of(st.none(), st.floats(0, 2)), st.floats(0, 400),
    st.one_of(st.none(), st.floats(0, 40)), st.integers(1, 3), st.booleans(), st.booleans()), max_size=30)


def _rounded(value):
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


@settings(max_examples=60)
@given(_RECORDS, st.lists(st.sampled_from(["QueueFull", "BadRequest"]), max_size=4),
       st.lists(st.booleans(), max_size=4))
def test_merged_snapshots_are_the_snapshot_of_every_record_together(rows, rejects, probes):
    """Replicas (or nodes) merge exactly: what two add up to is what one would have counted."""
    replicas, together = [DeploymentStats(), DeploymentStats()], DeploymentStats()
    for i, (at, outcome, key, tin, tout, cost, latency, ttft, attempts, fallback, on_b) in enumerate(
            sorted(rows, key=lambda row: row[0])):
        r = record(at_unix=WALL0 + at, outcome=outcome, error_kind="" if outcome == "completed" else "Timeout",
                   key=key, input_tokens=tin, output_tokens=tout, cached_input_tokens=tin // 2,
                   reasoning_tokens=tout // 3, cost_usd=cost, latency_s=latency, ttft_s=ttft, attempts=attempts,
                   fallback_from="m0" if fallback else "")
        replicas[on_b].record(r)
        together.record(r)
    for i, kind in enumerate(rejects):
        replicas[i % 2].reject(kind)
        together.reject(kind)
    for i, ok in enumerate(probes):
        replicas[i % 2].probe(ok)
        together.probe(ok)
    now = WALL0 + 801
    merged = merge_snapshots([replicas[0].snapshot(now), {}, replicas[1].snapshot(now)])
    expected = together.snapshot(now)
    merged.pop("failing_since_unix"), expected.pop("failing_since_unix")   # its own rule: the test below
    assert _rounded(merged) == _rounded(expected)


def test_a_merged_deployment_is_failing_only_when_every_replica_that_served_is():
    failing, also_failing, idle = DeploymentStats(), DeploymentStats(), DeploymentStats()
    failing.record(record(at_unix=WALL0 + 1, outcome="failed", error_kind="Timeout"))
    also_failing.record(record(at_unix=WALL0 + 2))
    also_failing.record(record(at_unix=WALL0 + 5, outcome="failed", error_kind="Timeout"))
    now = WALL0 + 10
    merged = merge_snapshots([failing.snapshot(now), also_failing.snapshot(now), idle.snapshot(now)])
    assert merged["failing_since_unix"] == WALL0 + 5     # since the latest of them began failing
    assert merged["last_success_unix"] == WALL0 + 2 and merged["last_failure_unix"] == WALL0 + 5
    also_failing.record(record(at_unix=WALL0 + 6))
    assert merge_snapshots([failing.snapshot(now), also_failing.snapshot(now)])["failing_since_unix"] is None
    assert merge_snapshots([]) == merge_snapshots([{}, {}]) and merge_snapshots([])["step_s"] == 10


# -- the engine core counts its terminals -----------------------------------------------------

def test_engine_core_status_carries_the_statistics():
    rig = Rig()
    rig.submit("r1")
    rig.report("r1", usage=Usage(7, 3))
    rig.submit("r2")
    rig.report("r2", error=ServerError("boom", status=500, provider="openai"))
    rig.advance(0.2)                           # r2's retry goes out
    rig.report("r2", usage=Usage(7, 3))
    status = rig.core.status()
    s = status["stats"]
    assert s["outcomes"] == {"completed": {"": 2}} and s["retries"] == 1
    assert s["tokens"]["output"] == 6 and s["latency"]["count"] == 2
    assert (status["model"], status["provider"]) == ("d1", "openai")
    for i in range(7):
        rig.submit(f"q{i}")                    # 2 on workers, 4 queued: one over the queue's capacity
    assert rig.core.status()["stats"]["rejected"] == {"QueueFull": 1}


# -- the breaker keeps its transitions --------------------------------------------------------

def test_breaker_snapshot_lists_the_last_hours_transitions():
    mono, wall = [0.0], [WALL0]
    breaker = CircuitBreaker("openai", "e", BreakerConfig(consecutive_failures=1, open_s=5),
                             clock=lambda: mono[0], wall_clock=lambda: wall[0])
    breaker.record_failure()
    mono[0] += 6
    wall[0] += 6
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.record_success()
    snap = breaker.snapshot()
    assert [(t[1], t[2]) for t in snap.transitions] == [("closed", "open"), ("open", "half_open"),
                                                        ("half_open", "closed")]
    assert snap.transitions[0][0] == WALL0 * 1000 and snap.opens == 1
    wall[0] += 3601                            # an hour later the timeline is empty, the count stays
    assert breaker.snapshot().transitions == () and breaker.snapshot().opens == 1
    for _ in range(500):                       # bounded however much it flaps
        breaker.force_open(1)
    assert len(breaker.snapshot().transitions) <= 120


# -- the status document and the metrics built from it ----------------------------------------

def fake_node(now: float) -> types.SimpleNamespace:
    stats = DeploymentStats()
    stats.record(record(at_unix=now - 5))
    stats.record(record(at_unix=now - 4, outcome="failed", error_kind="ServerError"))
    stats.reject("QueueFull")
    breaker = CircuitBreaker("openai", "https://api.example/v1", BreakerConfig(consecutive_failures=1, open_s=30),
                             clock=lambda: 0.0, wall_clock=lambda: now)
    breaker.record_failure()
    engine = types.SimpleNamespace(deployment="d1", replica=0, node="n1", queued=3, in_flight=1, busy_workers=1,
                                   workers=4, accepted=5, completed=1, failed=1, depth_by_priority={"normal": 3},
                                   circuit="open", draining=False, model="m", provider="openai",
                                   endpoint="https://api.example/v1", budget_spent=["deployment=d1/1h"],
                                   budget_view={"staleness_s": 0.31, "late_deltas": 2, "worst_late_s": 0.9},
                                   stats=stats.snapshot(now))
    limits = [{"key": "openai:m", "mode": "approximate", "requests": 30, "rpm": 120, "tokens": 900, "tpm": None,
               "window_s": 60.0, "window_start_unix": now - 10},
              {"key": "key:team", "mode": "approximate", "requests": 2, "rpm": 10, "tokens": 50, "tpm": 1000,
               "window_s": 60.0, "window_start_unix": now - 10}]
    hour = (now // 3600) * 3600
    spend = {"budgets": [{"budget": "team=search/1d", "spent_usd": 0.25, "usd": 1.0, "mode": "approximate",
                          "period_start_unix": (now // 86400) * 86400},
                         {"budget": "deployment=d1/1h", "spent_usd": 2.5, "usd": 2.0, "mode": "strict",
                          "period_start_unix": hour}],
             "ledger": {"path": "/var/lib/atomr/spend.db", "state": "degraded", "written": 7, "dropped": 3,
                        "queued": 1, "error": "ENOSPC on write", "token": ""}}
    return types.SimpleNamespace(node="n1", node_id="n1@10.0.0.1:1900", address="10.0.0.1:1900",
                                 membership="leader", started_unix=now - 100, engines=[engine],
                                 breakers=[breaker.snapshot()], limits=limits, supervision=[], spend=spend,
                                 refusals={"m": {"CircuitOpen": 4}})


def test_status_document_rows():
    now = WALL0 + 1000
    member = types.SimpleNamespace(node="n1", node_id="n1@10.0.0.1:1900", last_seen_s=0.4, host="10.0.0.1",
                                   admin_port=1900, started_unix=now - 100)
    gone = types.SimpleNamespace(
        node="n2", node_id="n2@10.0.0.2:1900", last_seen_s=4.5, host="10.0.0.2", admin_port=1900,
        started_unix=now - 50)
    doc = public(status_document([fake_node(now)], [member, gone], "n1", ["n2"], now=now))
    json.dumps(doc)
    (row,) = doc["deployments"]
    assert (row["state"], row["queued"], row["workers"], row["requests"], row["error_rate"]) == ("open", 3, 4, 3,
                                                                                                  pytest.approx(2 / 3))
    assert row["failing_since_unix"] == now - 4     # the first failure after the last success
    assert doc["breakers"][0]["state"] == "open" and doc["breakers"][0]["half_open_in_s"] == pytest.approx(30)
    key_budget, budget = doc["budgets"]
    assert budget["requests_fraction"] == 0.25 and budget["tokens_fraction"] is None
    assert budget["window_end_unix"] == now + 50 and budget["scope"] == "deployment"
    assert (key_budget["key"], key_budget["scope"], key_budget["requests_fraction"]) == ("key:team", "key", 0.2)
    team, dep = sorted(doc["spend"]["budgets"], key=lambda b: b["scope"] != "team")
    assert (team["scope"], team["name"], team["period"], team["fraction"]) == ("team", "search", "1d", 0.25)
    assert team["period_end_unix"] == (now // 86400 + 1) * 86400
    assert (dep["budget"], dep["mode"], dep["period_end_unix"]) == ("deployment=d1/1h", "strict",
                                                                    (now // 3600 + 1) * 3600)
    (ledger,) = doc["spend"]["ledgers"]
    assert (ledger["state"], ledger["dropped"], ledger["queued"]) == ("degraded", 3, 1)
    assert row["budget_spent"] == ["deployment=d1/1h"]
    assert [(n["node"], n["leader"], n["heartbeat_age_s"]) for n in doc["nodes"]] == [("n1", True, 0.4),
                                                                                      ("n2", False, 4.5)]
    assert doc["keys"] == [{"key": "team", "requests": 2, "failed": 1, "input_tokens": 20, "output_tokens": 10,
                            "cost_usd": 1.0}]
    # Every refusal by model and reason: the engine's own, and the router's its clients reported.
    assert doc["refusals"] == [{"model": "m", "reason": "CircuitOpen", "where": "router", "count": 4},
                               {"model": "m", "reason": "QueueFull", "where": "engine", "count": 1}]


def test_metrics_collector_output_parses_and_bounds_labels():
    now = WALL0 + 1000
    doc = node_document(fake_node(now), now=now)
    text = metrics.render(lambda: (doc, {})).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    labels = (("deployment", "d1"), ("model", "m"), ("node", "n1@10.0.0.1:1900"), ("provider", "openai"))

    def get(name, *extra):
        return samples[(name, tuple(sorted(labels + extra)))]
    assert get("atomr_requests_total", ("outcome", "completed"), ("error_kind", "")) == 1
    assert get("atomr_requests_total", ("outcome", "failed"), ("error_kind", "ServerError")) == 1
    assert get("atomr_requests_total", ("outcome", "rejected"), ("error_kind", "QueueFull")) == 1
    assert get("atomr_request_latency_seconds_bucket", ("le", "+Inf")) == 2
    node = ("node", "n1@10.0.0.1:1900")
    assert samples[("atomr_refusals_total", (("model", "m"), node, ("reason", "CircuitOpen"), ("where", "router")))] == 4
    assert samples[("atomr_refusals_total", (("model", "m"), node, ("reason", "QueueFull"), ("where", "engine")))] == 1
    assert get("atomr_workers", ("state", "idle")) == 3 and get("atomr_queue_depth") == 3
    assert get("atomr_deployment_circuit_state") == 2
    assert get("atomr_deployment_budget_spent", ("budget", "deployment=d1/1h")) == 1
    assert get("atomr_budget_view_staleness_seconds") == 0.31 and get("atomr_budget_late_deltas_total") == 2
    assert samples[("atomr_breaker_state", (("endpoint", "https://api.example/v1"), ("node", "n1@10.0.0.1:1900"),
                                            ("provider", "openai")))] == 2
    node = ("node", "n1@10.0.0.1:1900")
    assert samples[("atomr_budget_requests_limit", (("budget", "openai:m"), ("mode", "approximate"), node,
                                                    ("scope", "deployment")))] == 120
    assert not any(name == "atomr_budget_tokens_limit" and ("budget", "openai:m") in ls
                   for name, ls in samples)  # unlimited: no series
    assert samples[("atomr_budget_tokens_used", (("budget", "key:team"), ("mode", "approximate"), node,
                                                 ("scope", "key")))] == 50
    team = (("budget", "team=search/1d"), ("mode", "approximate"), node, ("period", "1d"), ("scope", "team"))
    assert samples[("atomr_spend_used_usd", team)] == 0.25 and samples[("atomr_spend_limit_usd", team)] == 1.0
    assert samples[("atomr_spend_period_end_seconds", team)] == (now // 86400 + 1) * 86400
    assert samples[("atomr_ledger_degraded", (node,))] == 1
    assert samples[("atomr_ledger_records_dropped_total", (node,))] == 3
    assert samples[("atomr_ledger_records_written_total", (node,))] == 7
    assert samples[("atomr_ledger_records_queued", (node,))] == 1
    assert "/var/lib" not in text and "ENOSPC" not in text     # no paths or messages as label values
    names = {k for _, ls in samples for k, _ in ls}
    assert names <= {"deployment", "model", "provider", "node", "outcome", "error_kind", "le", "kind", "state",
                     "endpoint", "budget", "mode", "member", "key", "scope", "period", "reason", "where"}


# -- who may read the operator's routes --------------------------------------------------------

def _ring(*keys):
    return KeyRing(build(HttpConfig, {"listen": "127.0.0.1:0", "keys": list(keys)}, "http"))


@pytest.mark.parametrize("headers, remote, expected", [
    ({}, "127.0.0.1", (True, 200)),
    ({}, "10.1.2.3", (False, 401)),
    ({"authorization": "Bearer sk-user"}, "127.0.0.1", (False, 403)),   # a key is given: it must be an admin one
    ({"authorization": "Bearer wrong"}, "127.0.0.1", (False, 401)),
])
def test_without_an_admin_key_loopback_callers_may_observe(headers, remote, expected):
    ring = _ring({"name": "user", "key": {"value": "sk-user"}})
    assert may_observe(ring, headers, remote)[:2] == expected


@pytest.mark.parametrize("headers, remote, expected", [
    ({}, "127.0.0.1", (False, 401)),                                     # once an admin key exists, loopback too
    ({"authorization": "Bearer sk-user"}, "10.1.2.3", (False, 403)),
    ({"authorization": "Bearer sk-admin"}, "10.1.2.3", (True, 200)),
    ({"x-api-key": "sk-admin"}, "10.1.2.3", (True, 200)),
    ({"authorization": "Basic b3BzOnNrLWFkbWlu"}, "10.1.2.3", (True, 200)),   # ops:sk-admin, as a browser sends it
    ({"authorization": "Basic !!!"}, "10.1.2.3", (False, 401)),
])
def test_with_an_admin_key_it_is_needed_from_everywhere(headers, remote, expected):
    ring = _ring({"name": "user", "key": {"value": "sk-user"}}, {"name": "ops", "key": {"value": "sk-admin"},
                                                                 "admin": True})
    allowed, status, why = may_observe(ring, headers, remote)
    assert (allowed, status) == expected and "sk-admin" not in why


# -- log formats -------------------------------------------------------------------------------

def _log_record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("atomr.requests", logging.INFO, __file__, 1, "%d request(s) ended", (2,), None)
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_writes_one_object_per_request_and_only_allowed_fields():
    lines = [{"request_id": "req_1", "deployment": "d1", "outcome": "completed", "attempts": 1, "prompt": "secret"},
             {"request_id": "req_2", "deployment": "d1", "outcome": "failed", "error_kind": "Timeout"}]
    out = JsonFormatter().format(_log_record(requests=lines)).splitlines()
    parsed = [json.loads(line) for line in out]
    assert [p["request_id"] for p in parsed] == ["req_1", "req_2"] and all(p["event"] == "request" for p in parsed)
    assert "prompt" not in parsed[0] and parsed[1]["error_kind"] == "Timeout"
    plain = json.loads(JsonFormatter().format(_log_record(http_status=200, password="x")))
    assert plain["message"] == "2 request(s) ended" and plain["http_status"] == 200 and "password" not in plain
    text = TextFormatter().format(_log_record(requests=lines)).splitlines()
    assert len(text) == 2 and "request_id=req_1" in text[0] and "secret" not in text[0]


def test_a_json_log_line_has_its_time_level_logger_and_exception():
    rec = _log_record(http_status=201)
    rec.created, rec.msecs = 1_800_000_000.25, 250.0
    line = json.loads(JsonFormatter().format(rec))
    assert line == {"ts": "2027-01-15T08:00:00.250Z", "level": "INFO", "logger": "atomr.requests",
                    "message": "2 request(s) ended", "http_status": 201}
    try:
        raise ValueError("bad thing")
    except ValueError:
        import sys
        failed = logging.LogRecord("atomr.engine", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    out = json.loads(JsonFormatter().format(failed))
    assert out["level"] == "ERROR" and "ValueError: bad thing" in out["exception"] and "Traceback" in out["exception"]
    assert json.loads(JsonFormatter().format(failed))["exception"] == out["exception"]   # formatted once, kept


def test_log_lines_carry_values_json_cannot_as_text():
    odd = _log_record(requests=[{"request_id": "r1", "cost_usd": ValueError("x")}], http_status=b"x")
    (line,) = JsonFormatter().format(odd).splitlines()
    assert json.loads(line)["cost_usd"] == "x"
    assert json.loads(JsonFormatter().format(_log_record(http_status=ValueError("y"))))["http_status"] == "y"


def test_a_text_log_line_is_the_plain_format_and_skips_empty_fields():
    rec = _log_record()
    plain = TextFormatter().format(rec)
    assert plain.endswith(" INFO    atomr.requests: 2 request(s) ended") and plain[:4].isdigit()
    batch = _log_record(requests=[{"request_id": "r1", "status": None, "key": "", "attempts": 2},
                                  {"request_id": "r2"}, "not a request"])
    lines = TextFormatter().format(batch).split("\n")
    assert [line.split(" ", 2)[2] for line in lines] == ["INFO    atomr.requests: request request_id=r1 attempts=2",
                                                         "INFO    atomr.requests: request request_id=r2"]


def test_the_terminal_view_draws_spend_budgets_and_the_ledger():
    from rich.console import Console

    from actors.http import terminal

    now = WALL0 + 1000
    console = Console(record=True, width=200, color_system=None)
    console.print(terminal.render(status_document([fake_node(now)], now=now)))
    text = console.export_text()
    assert "spend budgets" in text
    team = next(line for line in text.splitlines() if "team=search/1d" in line)
    assert "team search" in team and "$0.25/$1 (25%)" in team
    assert "$2.5/$2 (125%)" in next(line for line in text.splitlines() if "deployment=d1/1h (strict)" in line)
    assert "ledger of n1@10.0.0.1:1900: degraded · 7 written, 3 dropped, 1 queued" in text
    # Refusals by model and reason, the router's (its clients') and the engines', each counted.
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.count("│") == 5]
    assert ["m", "CircuitOpen", "router", "4"] in cells and ["m", "QueueFull", "engine", "1"] in cells


def test_probes_are_counted_apart_each_by_its_outcome():
    stats = DeploymentStats()
    stats.probe(True)
    stats.probe(True)
    stats.probe(False)
    assert stats.snapshot(WALL0)["probes"] == {"ok": 2, "failed": 1}


def test_a_log_line_of_a_request_carries_its_record_fields_and_no_others():
    from actors.core.log_format import LOG_FIELDS, request_fields

    fields = request_fields(record(request_id="r9", status=502, outcome="failed"))
    assert set(fields) <= set(LOG_FIELDS) and fields["request_id"] == "r9" and fields["status"] == 502
    assert "charged_tokens" not in fields and "fallback_from" not in fields


def test_engine_status_counts_what_it_holds():
    rig = Rig(workers=1, queue_capacity=4)
    rig.submit("r1")
    rig.submit("r2", priority="high")
    status = rig.core.status()
    assert {k: status[k] for k in ("queued", "in_flight", "busy_workers", "workers", "accepted", "completed",
                                   "failed", "circuit", "draining", "model", "provider", "endpoint")} == {
        "queued": 1, "in_flight": 1, "busy_workers": 1, "workers": 1, "accepted": 2, "completed": 0, "failed": 0,
        "circuit": "closed", "draining": False, "model": "d1", "provider": "openai",
        "endpoint": rig.dep.endpoint_label}
    assert status["depth_by_priority"]["high"] == 1 and status["budget_spent"] == []
    assert status["budget_view"] == {}     # no rate limits: no replica to be stale


def test_the_text_formatter_takes_the_logging_formatters_options():
    rec = _log_record()
    rec.created = 86400.0 * 500  # mid-1971 in every time zone
    assert TextFormatter(datefmt="%Y").format(rec).startswith("1971 INFO")
    assert TextFormatter("%(message)s").format(rec) == "2 request(s) ended"


def test_a_quantile_past_every_observation_is_the_last_bound():
    counts = [0] * (len(LATENCY_BOUNDS) + 1)
    counts[0] = 4                              # all in the first bucket
    assert quantile(counts, 1.5) == LATENCY_BOUNDS[-1] and quantile(counts, 1.0) == LATENCY_BOUNDS[0]


def test_bucket_counts_of_different_lengths_add_up_position_by_position():
    from actors.core.stats import _add_counts

    assert _add_counts([1, 2, 3], [10]) == [11, 2, 3] and _add_counts([1], [10, 20]) == [11, 20]
    assert _add_counts([], []) == []


def test_the_logging_config_names_the_formatter_of_the_chosen_format():
    import logging.config

    from actors.core.log_format import formatter_definition

    assert formatter_definition("json") == {"()": "actors.core.log_format.JsonFormatter"}
    assert formatter_definition("text") == {"()": "actors.core.log_format.TextFormatter"}
    # the name resolves as dictConfig resolves it (without reconfiguring this process's logging)
    assert logging.config.BaseConfigurator({}).resolve(formatter_definition("json")["()"]) is JsonFormatter


def test_snapshots_missing_parts_merge_as_if_those_parts_were_zero():
    from actors.core.stats import SERIES_STEP_S, merge_snapshots

    counted = {"outcomes": {"completed": {"": 2}}, "rejected": {"BadRequest": 1}, "refused": {"QueueFull": 2},
               "probes": {"ok": 1}, "retries": 3, "fallbacks": 4, "step_s": SERIES_STEP_S * 2,
               "latency": {"counts": [1, 2], "sum": 0.5, "count": 3}, "ttft": {"counts": [3], "sum": 0.25, "count": 3},
               "tokens": {"input": 5}, "cost_usd": 0.25, "unpriced": 1, "keys": {"k": {"calls": 1}}}
    failing_only = {"last_failure_unix": 100.0, "failing_since_unix": 90.0}
    merged = merge_snapshots([counted, failing_only])
    assert merged == {
        "outcomes": {"completed": {"": 2}}, "rejected": {"BadRequest": 1}, "refused": {"QueueFull": 2},
        "probes": {"ok": 1, "failed": 0}, "retries": 3, "fallbacks": 4,
        "latency": {"counts": [1, 2], "sum": 0.5, "count": 3}, "ttft": {"counts": [3], "sum": 0.25, "count": 3},
        "tokens": {"input": 5}, "cost_usd": 0.25, "unpriced": 1, "keys": {"k": {"calls": 1}},
        "last_success_unix": None, "last_failure_unix": 100.0,
        "failing_since_unix": 90.0,          # the one replica that served anything is failing
        "step_s": SERIES_STEP_S * 2, "series": []}


def test_a_series_point_keeps_each_count_in_its_own_field():
    stats = DeploymentStats()
    stats.record(record(at_unix=WALL0 + 1, outcome="failed", error_kind="Timeout"))
    (point,) = stats.snapshot(WALL0 + 2)["series"]
    assert point[1:6] == [1, 1, 0.5, 10, 5]         # requests, failed, cost, input and output tokens
    assert sum(point[6]) == sum(point[7]) == 1 and point[6] != point[7]  # 0.3 s to the end, 0.04 s to a token
