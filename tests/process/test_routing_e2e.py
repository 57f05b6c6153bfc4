"""Routing end to end: real nodes, real processes, one mock provider playing every deployment.

Each deployment points at its own path on the mock (``/<name>/...``), optionally with a
fault directive in the path (``/<name>/mock:status=500/v1``), so the mock's per-path
request counts are per-deployment upstream attempts: what each strategy picked, which
fallback ran, and how many attempts a request really made.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter

import anthropic
import openai
import pytest

from actors import errors as E
from actors.client import GatewayClient
from actors.ops.http_process import start_http
from actors.settings.loader import build
from actors.settings.schema import HttpConfig

from conftest import deployment, free_port, fresh_period, fresh_window_s, wait_for

HI = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "word " * 400}]     # ~500 tokens by the client's estimate
RETRY2 = {"max_retries": 2, "base_delay_s": 0.01, "max_delay_s": 0.02}
# A deployment's own failure: a 502 counts at once, where a 500 would first be judged by a known-good
# probe (one more request on its path: docs/reliability.md, "Whose fault is a failure").
DOWN = "status=502"


def dep(mock, name, model, fault=None, **kw):
    path = f"/{name}" + (f"/mock:{fault}" if fault else "")
    return deployment(mock.url + path, name, model=model, **kw)


def hits(mock, name=None):
    requests = mock.stats()["requests"]
    if name is None:
        return Counter({path.split("/")[1]: n for path, n in requests.items()})
    return sum(n for path, n in requests.items() if path.startswith(f"/{name}/"))


@contextlib.contextmanager
def fresh_client(node, ttl_s=0.05):
    """A client that looks routes up every ``ttl_s``: the engines' pushed state, nearly as it is."""
    client = GatewayClient(node.admin_port, timeout_s=30, route_ttl_s=ttl_s)
    try:
        yield client
    finally:
        client.close()


def entry(client, deployment_name, model):
    return next(e for e in client.routes(model, refresh=True) if e.deployment == deployment_name)


# -- strategies --------------------------------------------------------------------------------

def test_weighted_shares_follow_the_weights_over_200_calls(gateway, mock):
    node, client = gateway([dep(mock, "a", "m", weight=3), dep(mock, "b", "m", weight=1),
                            dep(mock, "never", "m", weight=0)])
    served = Counter(client.complete("m", HI, max_tokens=2).deployment for _ in range(200))
    assert served["never"] == 0 and hits(mock, "never") == 0
    assert 120 <= served["a"] <= 180, served     # 150 expected, sd ~6
    assert served["a"] + served["b"] == 200 and hits(mock, "a") == served["a"]


def test_least_busy_sends_around_a_deployment_that_holds_its_calls(gateway, mock):
    node, _ = gateway([dep(mock, "slow", "m", fault="delay_ms=200", workers=8),
                       dep(mock, "fast", "m", workers=8)], routing={"strategy": "least-busy"})
    served: Counter = Counter()
    lock = threading.Lock()
    with fresh_client(node) as client:
        def run():
            for _ in range(25):
                name = client.complete("m", HI, max_tokens=2).deployment
                with lock:
                    served[name] += 1
        threads = [threading.Thread(target=run) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert sum(served.values()) == 200
    # Equal busy counts at 200 ms vs a few ms per call: the slow one serves a small share.
    # Any load-blind strategy would give it about half.
    assert served["slow"] <= 40, served


def test_least_busy_sees_other_callers_load_through_the_engines_pushed_state(gateway, mock):
    node, _ = gateway([dep(mock, "x", "m", workers=4), dep(mock, "y", "m", workers=4)],
                      routing={"strategy": "least-busy"})
    held = [{"role": "user", "content": "hold [[mock delay_ms=4000]]"}]
    with fresh_client(node) as other, fresh_client(node) as client:
        threads = [threading.Thread(target=other.complete, args=("x", held), kwargs={"max_tokens": 2})
                   for _ in range(4)]
        for t in threads:
            t.start()
        try:
            # This client has nothing in flight anywhere: only the pushed state can show x is busy.
            wait_for(lambda: entry(client, "x", "m").in_flight + entry(client, "x", "m").queue_depth >= 4,
                     message="x's load in the routes")
            served = Counter(client.complete("m", HI, max_tokens=2).deployment for _ in range(20))
        finally:
            for t in threads:
                t.join(30)
    assert served == {"y": 20}, served


def test_latency_reads_ttft_for_streams_and_latency_for_calls(gateway, mock):
    # dripper: a stream's first token at once, then 25 ms per token; a whole reply one byte per ms.
    # laggard: 50 ms before anything, then everything at once.
    node, _ = gateway([dep(mock, "dripper", "m", fault="drip_ms=25;words=5;trickle_ms=1"),
                       dep(mock, "laggard", "m", fault="delay_ms=50;words=5")], routing={"strategy": "latency"})
    with fresh_client(node) as client:
        streams = []
        for _ in range(100):
            with client.stream("m", HI, max_tokens=5) as stream:
                stream.text()
            streams.append(stream.result.deployment)
        calls = [client.complete("m", HI, max_tokens=5).deployment for _ in range(100)]
    assert Counter(streams[-50:])["dripper"] >= 45, Counter(streams)
    assert Counter(calls[-50:])["laggard"] >= 45, Counter(calls)


def test_cost_sends_every_call_to_the_cheapest_for_its_estimate(gateway, mock):
    node, client = gateway([dep(mock, "pricey", "m", pricing={"input": 5.0, "output": 15.0}),
                            dep(mock, "cheap", "m", pricing={"input": 0.1, "output": 0.4}),
                            dep(mock, "unpriced", "m", upstream_model="nobody-prices-this")],
                           routing={"models": {"m": {"strategy": "cost"}}})
    served = Counter(client.complete("m", HI, max_tokens=2).deployment for _ in range(200))
    assert served == {"cheap": 200}, served
    assert hits(mock, "pricey") == hits(mock, "unpriced") == 0


def test_usage_prefers_headroom_and_a_spent_budget_is_skipped(gateway, mock):
    window_s = fresh_window_s()   # windows are aligned on the clock: this one does not roll over mid-test
    node, _ = gateway([dep(mock, "tight", "m", limits={"rpm": 8, "window_s": window_s}),
                       dep(mock, "roomy", "m", limits={"rpm": 100000, "window_s": window_s}),
                       dep(mock, "spent", "w", limits={"rpm": 2, "window_s": window_s}), dep(mock, "spare", "w")],
                      routing={"models": {"m": {"strategy": "usage"}}})
    with fresh_client(node) as client:
        for _ in range(2):   # by deployment name: straight to that deployment
            client.complete("tight", HI, max_tokens=2)
            client.complete("spent", HI, max_tokens=2)
        wait_for(lambda: (entry(client, "tight", "m").headroom or 1) <= 0.75
                 and entry(client, "spent", "w").headroom == 0, message="the budgets' use in the routes")
        served = Counter(client.complete("m", HI, max_tokens=2).deployment for _ in range(200))
        assert served == {"roomy": 200}, served
        # A spent budget is skipped before any strategy (here the default, weighted): not even refused.
        results = [client.complete("w", HI, max_tokens=2) for _ in range(20)]
    assert {r.deployment for r in results} == {"spare"}
    assert all(a.deployment == "spare" for r in results for a in r.attempt_log)
    assert hits(mock, "spent") == 2


# -- fallbacks ----------------------------------------------------------------------------------

def test_each_fallback_kind_triggers_on_its_error_and_only_on_it(gateway, mock):
    node, client = gateway([
        dep(mock, "p500", "gpt", fault=DOWN, retry=RETRY2),
        dep(mock, "filtering", "filtered", fault="status=400;code=content_filter", retry=RETRY2),
        dep(mock, "small", "mini", fault="context=30", retry=RETRY2),
        dep(mock, "other500", "plain", fault=DOWN, retry=RETRY2),
        dep(mock, "limited", "rl", fault="status=429", retry=RETRY2),
        dep(mock, "claude", "claude"), dep(mock, "safe", "safe"), dep(mock, "big", "big"), dep(mock, "spare", "spare"),
    ], routing={"fallbacks": {"gpt": ["claude"], "filtered": ["claude"], "mini": ["claude"], "rl": ["spare"]},
                "content_policy_fallbacks": {"filtered": ["safe"], "plain": ["safe"], "rl": ["safe"]},
                "context_window_fallbacks": {"mini": ["big"], "plain": ["big"], "rl": ["big"]}})
    served = client.complete("gpt", HI, max_tokens=2)
    assert served.deployment == "claude" and hits(mock, "p500") == 3 and served.attempts == 4
    assert [(a.deployment, a.error_kind, a.status) for a in served.attempt_log] == \
        [("p500", "server_error", 502)] * 3 + [("claude", "", None)]
    assert served.attempt_log[0].delay_s > 0

    served = client.complete("filtered", HI, max_tokens=2)
    assert served.deployment == "safe" and hits(mock, "filtering") == 1   # never retried
    assert hits(mock, "claude") == 1                                      # the generic list was not used

    served = client.complete("mini", LONG, max_tokens=2)
    assert served.deployment == "big" and hits(mock, "small") == 1 and hits(mock, "claude") == 1

    served = client.complete("mini", HI, max_tokens=2)   # short enough: no fallback at all
    assert served.deployment == "small"

    with pytest.raises(E.ServerError) as info:           # a 500 is neither a filter nor a context error
        client.complete("plain", HI, max_tokens=2)
    assert hits(mock, "safe") == 1 and hits(mock, "big") == 1 and hits(mock, "other500") == 3
    assert [a.deployment for a in info.value.attempt_log] == ["other500"] * 3

    served = client.complete("rl", HI, max_tokens=2)     # 429: retried, then the generic list only
    assert served.deployment == "spare" and hits(mock, "limited") == 3
    assert [(a.error_kind, a.status) for a in served.attempt_log[:3]] == [("rate_limited", 429)] * 3
    assert hits(mock, "safe") == 1 and hits(mock, "big") == 1


def test_retries_and_fallbacks_share_one_budget(gateway, mock):
    node, client = gateway([dep(mock, "a", "a", fault=DOWN, retry=RETRY2),
                            dep(mock, "b", "b", fault=DOWN, retry=RETRY2),
                            dep(mock, "c", "c", fault="status=503", retry=RETRY2)],
                           routing={"fallbacks": {"a": ["b", "c"]}})
    with pytest.raises(E.ServerError) as info:
        client.complete("a", HI, max_tokens=2)
    # 1 + 2 retries on a; one attempt each on b and c: 5, where retry x fallback would be 9.
    assert hits(mock) == {"a": 3, "b": 1, "c": 1}, hits(mock)
    assert [(x.deployment, x.status) for x in info.value.attempt_log] == \
        [("a", 502)] * 3 + [("b", 502), ("c", 503)]
    assert all(x.sent for x in info.value.attempt_log)


def test_a_configured_num_retries_is_the_whole_requests_budget(gateway, mock):
    node, client = gateway([dep(mock, "a", "a", fault=DOWN, retry=RETRY2),
                            dep(mock, "a2", "a", fault=DOWN, retry=RETRY2),
                            dep(mock, "b", "b", fault=DOWN, retry=RETRY2)],
                           routing={"fallbacks": {"a": ["b"]}, "num_retries": 1})
    with pytest.raises(E.ServerError):
        client.complete("a", HI, max_tokens=2)
    counts = hits(mock)
    # The group's two deployments and the fallback: one attempt each, plus the one retry.
    assert sum(counts.values()) == 4 and counts["b"] == 1 and counts["a"] + counts["a2"] == 3, counts


def test_a_stream_falls_back_before_its_first_token_but_never_after(gateway, mock):
    node, client = gateway([dep(mock, "down", "gpt", fault="status=500", retry=RETRY2),
                            dep(mock, "breaks", "flaky", fault="error_after=3", retry=RETRY2),
                            dep(mock, "claude", "claude")],
                           routing={"fallbacks": {"gpt": ["claude"], "flaky": ["claude"]}})
    with client.stream("gpt", HI, max_tokens=5) as stream:
        text = stream.text()
    assert text and stream.result.deployment == "claude" and hits(mock, "claude") == 1

    got = []
    with pytest.raises(E.InferenceError) as info:
        with client.stream("flaky", HI, max_tokens=8) as stream:
            for chunk in stream:
                got.append(chunk.text)
    assert got and not info.value.retryable
    assert hits(mock, "claude") == 1 and hits(mock, "breaks") == 1   # no fallback, no retry mid-stream


def test_the_pre_call_check_sends_a_long_prompt_where_it_fits_without_a_wasted_call(gateway, mock):
    node, client = gateway([dep(mock, "tiny", "t", max_input_tokens=50),
                            dep(mock, "g-small", "g", max_input_tokens=50), dep(mock, "g-large", "g"),
                            dep(mock, "big", "big")],
                           routing={"context_window_fallbacks": {"t": ["big"]}})
    served = client.complete("t", LONG, max_tokens=2)
    assert served.deployment == "big" and hits(mock, "tiny") == 0
    assert [(a.deployment, a.error_kind, a.sent) for a in served.attempt_log] == \
        [("tiny", "context_length_exceeded", False), ("big", "", True)]
    assert {client.complete("g", LONG, max_tokens=2).deployment for _ in range(20)} == {"g-large"}
    assert hits(mock, "g-small") == 0
    assert client.complete("t", HI, max_tokens=2).deployment == "tiny"
    with pytest.raises(E.ContextLengthExceeded) as info:   # too long for g-small and nothing to fall back to
        client.complete("g-small", LONG, max_tokens=2)
    assert "g-small" in info.value.message and hits(mock, "g-small") == 0


def test_a_requests_own_fallbacks_from_the_client_and_over_http(gateway, mock, tmp_path):
    node, client = gateway([dep(mock, "down", "gpt", fault="status=500", retry={"max_retries": 0}),
                            dep(mock, "claude", "claude"), dep(mock, "safe", "safe")],
                           routing={"fallbacks": {"gpt": ["claude"]}})
    assert client.complete("gpt", HI, max_tokens=2, fallbacks=["safe"]).deployment == "safe"
    assert hits(mock, "claude") == 0
    key = "sk-atomr-test-key-0123456789"
    section = {"listen": "127.0.0.1:0", "keys": [{"name": "team", "key": {"value": key}},
                                                {"name": "narrow", "key": {"value": key + "x"}, "models": ["gpt"]}]}
    http = start_http(build(HttpConfig, section, "http"), node.admin_port, models=["gpt", "claude", "safe"],
                      log_file=str(tmp_path / "http.log"))
    try:
        sdk = openai.OpenAI(base_url=http.url + "/v1", api_key=key, max_retries=0, timeout=30)
        reply = sdk.chat.completions.create(model="gpt", messages=HI, max_tokens=2, extra_body={"fallbacks": ["safe"]})
        assert reply.choices[0].message.content and hits(mock, "safe") == 2 and hits(mock, "claude") == 0
        reply = sdk.chat.completions.create(model="gpt", messages=HI, max_tokens=2)   # the configured list
        assert hits(mock, "claude") == 1
        ant = anthropic.Anthropic(base_url=http.url, api_key=key, max_retries=0, timeout=30)
        message = ant.messages.create(model="gpt", messages=HI, max_tokens=2, extra_body={"fallbacks": ["safe"]})
        assert message.content[0].text and hits(mock, "safe") == 3 and hits(mock, "claude") == 1
        with pytest.raises(openai.BadRequestError, match="fallbacks"):
            sdk.chat.completions.create(model="gpt", messages=HI, max_tokens=2, extra_body={"fallbacks": "safe"})
        narrow = openai.OpenAI(base_url=http.url + "/v1", api_key=key + "x", max_retries=0, timeout=30)
        with pytest.raises(openai.PermissionDeniedError, match="safe"):   # a key's fallbacks stay in its allow-list
            narrow.chat.completions.create(model="gpt", messages=HI, max_tokens=2, extra_body={"fallbacks": ["safe"]})
    finally:
        http.stop(timeout_s=10)


# -- health and the all-open case ------------------------------------------------------------------

def test_when_every_deployment_is_open_the_call_fails_fast_naming_them(gateway, mock):
    breaker = {"consecutive_failures": 1, "open_s": 60, "max_open_s": 120}
    node, client = gateway([
        deployment(f"http://127.0.0.1:{free_port()}", "east", model="m", breaker=breaker, retry={"max_retries": 0}),
        deployment(f"http://127.0.0.1:{free_port()}", "west", model="m", breaker=breaker, retry={"max_retries": 0})])
    with pytest.raises(E.NetworkError):
        client.complete("m", HI, max_tokens=2)   # tries both dead endpoints; each circuit opens
    wait_for(lambda: {e.circuit for e in client.routes("m", refresh=True)} == {"open"},
             message="both circuits open in the routes")
    with pytest.raises(E.CircuitOpen) as info:
        client.complete("m", HI, max_tokens=2)
    assert "east" in info.value.message and "west" in info.value.message
    assert [(a.deployment, a.error_kind, a.sent) for a in info.value.attempt_log] == \
        [("east", "circuit_open", False), ("west", "circuit_open", False)]


def test_health_probes_find_a_dead_idle_deployment_before_a_user_does(gateway, mock):
    probes = {"interval_s": 0.2, "timeout_s": 1}
    node, client = gateway([
        deployment(f"http://127.0.0.1:{free_port()}", "dead", model="m", health_check=probes,
                   breaker={"consecutive_failures": 2, "open_s": 60, "max_open_s": 120}),
        dep(mock, "live", "m", health_check=probes)])
    wait_for(lambda: entry(client, "dead", "m").circuit == "open", timeout_s=15,
             message="the dead deployment's circuit opened from probes alone")
    assert hits(mock, "live") >= 1                  # the live one is probed too, and stays closed
    assert entry(client, "live", "m").circuit == "closed"
    results = [client.complete("m", HI, max_tokens=2) for _ in range(20)]
    assert {r.deployment for r in results} == {"live"}
    assert all(a.deployment == "live" for r in results for a in r.attempt_log)


def test_a_deployment_whose_usd_budget_is_spent_is_skipped_not_refused(gateway, mock):
    # "free" weighs a thousandth of "capped": without the skip, nearly every call would go to "capped".
    node, _ = gateway([dep(mock, "capped", "m"), dep(mock, "free", "m", weight=0.001)],
                      budgets=[{"deployment": "capped", "usd": 0.000013, "period": fresh_period()}])   # ~3 calls
    with fresh_client(node) as client:
        refused = None
        for _ in range(20):   # by name, straight to it, until its budget refuses
            try:
                client.complete("capped", HI, max_tokens=2)
            except E.BudgetExceeded as exc:
                refused = exc
                break
        assert refused is not None and "capped" in str(refused)
        wait_for(lambda: entry(client, "capped", "m").budget_spent, timeout_s=10, interval_s=0.05,
                 message="the spent budget in the routes")
        before = hits(mock, "capped")
        results = [client.complete("m", HI, max_tokens=2) for _ in range(20)]
    assert {r.deployment for r in results} == {"free"}
    assert all(a.deployment == "free" for r in results for a in r.attempt_log)   # skipped, not tried and refused
    assert hits(mock, "capped") == before
