"""GET /metrics and GET /v1/status of a real node and its HTTP listener, after a known sequence of calls.

The scrape is parsed with prometheus_client's own parser, so what is asserted is what
Prometheus would store.
"""

from __future__ import annotations

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from actors.ops.http_process import start_http
from actors.settings.loader import build
from actors.settings.schema import HttpConfig

from conftest import deployment, fresh_window_s, wait_for

KEY = "sk-atomr-metrics-team-0123456789"
ADMIN = "sk-atomr-metrics-admin-abcdefgh"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def observed(gateway, mock, tmp_path):
    started = []

    def make(deployments, keys=None):
        node, client = gateway(deployments)
        keys = keys if keys is not None else [{"name": "team", "key": {"value": KEY}},
                                              {"name": "ops", "key": {"value": ADMIN}, "admin": True}]
        section = {"listen": "127.0.0.1:0", "keys": keys} if keys else {"listen": "127.0.0.1:0", "auth": "none"}
        handle = start_http(build(HttpConfig, section, "http"), node.admin_port,
                            models=[d["model"] for d in deployments], log_file=str(tmp_path / "http.log"))
        started.append(handle)
        return handle, node, client

    yield make
    for handle in started:
        handle.stop(timeout_s=10)


def scrape(url: str, key: str = ADMIN) -> dict[tuple[str, frozenset], float]:
    reply = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            key_ = (sample.name, frozenset(sample.labels.items()))
            assert key_ not in out, f"duplicate series {key_}"
            out[key_] = sample.value
    return out


def value(samples, name, **labels):
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples match"
    return found[0]


def fail(client, directive, kind):
    with pytest.raises(kind):
        client.chat.completions.create(model="d1", messages=[{"role": "user", "content": f"{directive} hi"}],
                                       max_tokens=6)


def test_metrics_show_exactly_the_calls_made(observed, mock):
    d1 = deployment(mock.url, "d1", retry={"max_retries": 0},
                    breaker={"consecutive_failures": 3, "open_s": 60, "max_open_s": 60})
    d2 = deployment(mock.url, "d2", provider="anthropic",
                    retry={"max_retries": 2, "base_delay_s": 0.01, "max_delay_s": 0.02},
                    limits={"rpm": 1000, "tpm": 100000, "window_s": fresh_window_s()})
    handle, node, client = observed([d1, d2])
    sdk = openai.OpenAI(base_url=handle.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    sdk.chat.completions.create(model="d1", messages=HI, max_tokens=6)
    assert len(list(sdk.chat.completions.create(model="d1", messages=HI, max_tokens=6, stream=True))) > 1
    fail(sdk, "[[mock status=429]]", openai.RateLimitError)
    for _ in range(3):                               # the 503 storm: the circuit opens on the third
        fail(sdk, "[[mock status=503]]", openai.InternalServerError)
    wait_for(lambda: all(e.circuit == "open" for e in client.status().engines if e.deployment == "d1"),
             message="the open circuit pushed to the engine")
    fail(sdk, "", openai.APIStatusError)             # refused by the open circuit, never sent
    # One call on d2 that fails once upstream and succeeds on its retry.
    sdk.chat.completions.create(model="d2", messages=[{"role": "user", "content": "[[mock fail_times=1 key=r1 "
                                                       "status=503]] hi"}], max_tokens=4)
    assert mock.stats()["total"] == 2 + 1 + 3 + 2

    limit_key = node.config.deployments[1].limit_key
    seen = []

    def budget_settled():
        s = scrape(handle.url)
        seen.append(value(s, "atomr_budget_requests_used", budget=limit_key))
        return s if seen[-1] == 2 else None         # each attempt is admitted (and charged: it reached the provider)
    s = wait_for(budget_settled, timeout_s=5, message="the budget's use in the hub")
    d1l = {"deployment": "d1", "model": "d1", "provider": "openai"}
    assert value(s, "atomr_requests_total", **d1l, outcome="completed", error_kind="") == 2
    assert value(s, "atomr_requests_total", **d1l, outcome="failed", error_kind="RateLimited") == 1
    assert value(s, "atomr_requests_total", **d1l, outcome="failed", error_kind="ServerError") == 3
    assert value(s, "atomr_requests_total", **d1l, outcome="failed", error_kind="CircuitOpen") == 1
    assert sum(v for (n, ls), v in s.items() if n == "atomr_requests_total" and ("deployment", "d1") in ls) == 7
    assert value(s, "atomr_retries_total", **d1l) == 0
    assert value(s, "atomr_fallbacks_total", **d1l) == 0
    assert value(s, "atomr_request_latency_seconds_count", **d1l) == 7
    assert value(s, "atomr_ttft_seconds_count", **d1l) == 1          # only the stream has a first token
    assert value(s, "atomr_tokens_total", **d1l, kind="output") == 12
    assert value(s, "atomr_deployment_circuit_state", **d1l) == 2
    assert value(s, "atomr_deployment_failing_since_seconds", **d1l) > 0
    assert value(s, "atomr_workers", **d1l, state="idle") == 2 and value(s, "atomr_workers", **d1l, state="busy") == 0
    assert value(s, "atomr_queue_depth", **d1l) == 0
    assert value(s, "atomr_gateway_overhead_seconds_count", **d1l) == 2   # timed on the HTTP calls that completed
    breaker = {"provider": "openai", "endpoint": mock.url + "/v1"}
    assert value(s, "atomr_breaker_state", **breaker) == 2
    assert value(s, "atomr_breaker_opens_total", **breaker) == 1
    assert 0 < value(s, "atomr_breaker_half_open_in_seconds", **breaker) <= 60
    d2l = {"deployment": "d2", "model": "d2", "provider": "anthropic"}
    assert value(s, "atomr_requests_total", **d2l, outcome="completed", error_kind="") == 1
    assert value(s, "atomr_retries_total", **d2l) == 1
    assert value(s, "atomr_tokens_total", **d2l, kind="output") == 4
    assert value(s, "atomr_budget_requests_limit", budget=limit_key) == 1000
    assert value(s, "atomr_budget_tokens_limit", budget=limit_key) == 100000
    assert value(s, "atomr_cluster_members") == 1
    assert value(s, "atomr_key_requests_total", key="team", outcome="completed") == 3
    assert value(s, "atomr_key_requests_total", key="team", outcome="failed") == 5
    assert value(s, "atomr_key_tokens_total", key="team", kind="output") == 16
    # No label carries a request id or prompt text.
    labels = {v for (_, ls) in s for _, v in ls}
    assert not any(v.startswith("req_") or "[[mock" in v or v == "hi" for v in labels), labels

    doc = requests.get(handle.url + "/v1/status", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).json()
    row = next(d for d in doc["deployments"] if d["deployment"] == "d1")
    assert (row["state"], row["completed"], row["failed"], row["errors"]) == (
        "open", 2, 5, {"RateLimited": 1, "ServerError": 3, "CircuitOpen": 1})
    by_provider = {b["provider"]: b for b in doc["breakers"]}
    assert [t["to"] for t in by_provider["openai"]["transitions"]] == ["open"]
    assert by_provider["anthropic"]["transitions"] == [] and by_provider["anthropic"]["state"] == "closed"
    assert [n["node"] for n in doc["nodes"]] == ["n1"]


def test_operator_routes_need_an_admin_key(observed, mock):
    handle, _, _ = observed([deployment(mock.url, "d1")])
    for path in ("/metrics", "/v1/status", "/ui"):
        assert requests.get(handle.url + path, timeout=10).status_code == 401       # loopback, but admin keys exist
        assert requests.get(handle.url + path, headers={"Authorization": f"Bearer {KEY}"},
                            timeout=10).status_code == 403                           # a key, not an admin one
        assert requests.get(handle.url + path, headers={"Authorization": f"Bearer {ADMIN}"},
                            timeout=10).status_code == 200
    assert requests.get(handle.url + "/ui", auth=("ops", ADMIN), timeout=10).status_code == 200  # a browser's Basic
    challenge = requests.get(handle.url + "/ui", timeout=10)
    assert challenge.headers["WWW-Authenticate"].startswith("Basic ") and ADMIN not in challenge.text


def test_without_admin_keys_loopback_may_observe(observed, mock):
    handle, _, _ = observed([deployment(mock.url, "d1")], keys=[{"name": "team", "key": {"value": KEY}}])
    reply = requests.get(handle.url + "/v1/status", timeout=10)
    assert reply.status_code == 200 and [d["deployment"] for d in reply.json()["deployments"]] == ["d1"]
    assert requests.post(handle.url + "/v1/status", timeout=10).status_code == 405


def test_json_logs_one_object_per_line_with_the_request_fields(gateway, mock, tmp_path):
    import json

    node, client = gateway([deployment(mock.url, "d1", retry={"max_retries": 0})], node={"log_format": "json"})
    http = start_http(build(HttpConfig, {"listen": "127.0.0.1:0", "keys": [{"name": "team", "key": {"value": KEY}}]},
                            "http"), node.admin_port, models=["d1"], log_file=str(tmp_path / "http.log"),
                      log_format="json")
    try:
        sdk = openai.OpenAI(base_url=http.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
        sdk.chat.completions.create(model="d1", messages=[{"role": "user", "content": "a secret plan"}], max_tokens=5)
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(model="d1", messages=[{"role": "user", "content": "[[mock status=503]] plan"}])
    finally:
        http.stop(timeout_s=10)
    log = tmp_path / "n1.log"

    def request_lines():
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        found = [line for line in lines if line.get("event") == "request"]
        return found if len(found) == 2 else None
    ok, failed = sorted(wait_for(request_lines, message="two request lines in the node log"),
                        key=lambda r: r["outcome"])
    assert (ok["outcome"], ok["deployment"], ok["attempts"], ok["output_tokens"], ok["key"]) == (
        "completed", "d1", 1, 5, "team")
    assert ok["request_id"].startswith("req_") and ok["latency_s"] > 0 and ok["cost_usd"] > 0
    assert (failed["outcome"], failed["error_kind"], failed["status"]) == ("failed", "ServerError", 503)
    assert {"ts", "level", "logger"} <= set(ok) and ok["logger"] == "atomr.requests"
    http_lines = [json.loads(line) for line in (tmp_path / "http.log").read_text().splitlines() if line.strip()]
    calls = [line for line in http_lines if line.get("path") == "/v1/chat/completions"]
    assert [c["http_status"] for c in calls] == [200, 502] and {c["request_id"] for c in calls} == {
        ok["request_id"], failed["request_id"]}
    for text in (log.read_text(), (tmp_path / "http.log").read_text()):
        assert "plan" not in text and KEY not in text   # neither prompt text nor the key
