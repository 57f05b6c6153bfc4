"""Refusals say the truth, the same from every layer (docs/reliability.md, "Refusals"): what the router
refuses in the caller's process carries the engine's own error for the same condition, in Python and
over HTTP, and every refusal is counted by model and reason in /v1/status and /metrics.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import openai
import pytest
import requests

from actors import errors as E
from actors.client import GatewayClient
from actors.http.app import OPENAI
from actors.http.errors import http_error
from actors.ops.http_process import start_http
from actors.settings.loader import build
from actors.settings.schema import HttpConfig
from actors.types import Failed

from conftest import deployment, fresh_period, fresh_window_s, free_port, period_end, wait_for

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-atomr-refusals-0123456789"
NO_RETRY = {"max_retries": 0}
HI = "hi"
# mock-gpt is priced as gpt-4o-mini: "hi" with max_tokens 6 is estimated at $0.00000435 and costs
# $0.0000042: $0.000005 admits one call, and then too little is left for another.
ONE_CALL = 0.000005
FIELDS = {E.CircuitOpen: ("endpoint", "opened_at_unix_ms", "retry_at_unix_ms"), E.BudgetExceeded: ("limit",),
          E.ContextLengthExceeded: ("tokens", "max_tokens")}


def same_error(router: E.InferenceError, engine: E.InferenceError) -> None:
    assert type(router) is type(engine), (router, engine)
    for name in ("status", "retryable", "provider", "message", *FIELDS[type(engine)]):
        assert getattr(router, name) == getattr(engine, name), (name, router, engine)
    if engine.retry_after_s is None:
        assert router.retry_after_s is None
    else:
        assert abs(router.retry_after_s - engine.retry_after_s) < 2.0, (router, engine)


def same_response(router: requests.Response, engine: requests.Response) -> None:
    assert router.status_code == engine.status_code and router.json() == engine.json()
    assert router.headers.get("x-should-retry") == engine.headers.get("x-should-retry")
    for name in ("retry-after",):
        a, b = router.headers.get(name), engine.headers.get(name)
        assert (a is None) == (b is None) and (a is None or abs(int(a) - int(b)) <= 2), (a, b)


def refused(client: GatewayClient, model: str) -> tuple[int, int]:
    """(the engine's, the router's) refusals counted for ``model`` so far, from the node's status."""
    status = client.status()
    engine = sum(n for e in status.engines if e.model == model for n in e.stats.get("refused", {}).values())
    return engine, sum((status.refusals or {}).get(model, {}).values())


def post(url: str, model: str, content: str = HI) -> requests.Response:
    return requests.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}",
                                                                "x-stainless-timeout": "5"},
                         json={"model": model, "max_tokens": 6, "messages": [{"role": "user", "content": content}]},
                         timeout=30)


def engine_refusal(client: GatewayClient, model: str, content: str = HI) -> E.InferenceError:
    """The raw protocol: a request sent straight to the model's engine (no router in the way)."""
    (entry,) = client.routes(model, refresh=True)
    request = client.request(model, [{"role": "user", "content": content}], max_tokens=6, timeout_s=5)
    reply = client.asys.ask(entry.engine, request, 10)
    assert isinstance(reply, Failed), reply
    return reply.error


def router_refusal(node, model: str, content: str = HI, pushed: bool = True) -> E.InferenceError:
    with GatewayClient(node.admin_port, timeout_s=10) as fresh:
        if pushed:   # the engine's refusal reached the routes (a window is known from the configuration)
            wait_for(lambda: fresh.routes(model, refresh=True)[0].refusal is not None, message=f"{model} routed")
        with pytest.raises(E.InferenceError) as caught:
            fresh.complete(model, [{"role": "user", "content": content}], max_tokens=6, timeout_s=5)
    assert [a.sent for a in caught.value.attempt_log] == [False]
    return caught.value


def test_each_router_refusal_is_the_engines_own_in_python_and_over_http_and_is_counted(gateway, mock, tmp_path):
    breaker = {"consecutive_failures": 1, "open_s": 60, "max_open_s": 120}
    period = fresh_period()
    resets = period_end(period)
    node, client = gateway([
        deployment(f"http://127.0.0.1:{free_port()}", "dead", retry=NO_RETRY, breaker=breaker, workers=1),
        deployment(mock.url, "window", retry=NO_RETRY, workers=1, limits={"rpm": 1, "window_s": fresh_window_s()}),
        deployment(mock.url, "spend", retry=NO_RETRY, workers=1),
        deployment(mock.url, "small", retry=NO_RETRY, workers=1, max_input_tokens=20)],
        budgets=[{"deployment": "spend", "usd": ONE_CALL, "period": period}])
    http = start_http(build(HttpConfig, {"listen": "127.0.0.1:0", "keys": [{"name": "team", "key": {"value": KEY}}]},
                            "http"), node.admin_port, models=["dead", "window", "spend", "small"],
                      log_file=str(tmp_path / "http.log"))
    try:
        for model, first_status in (("dead", 502), ("window", 200), ("spend", 200)):
            # Over HTTP: the call that brings the condition about, then at once (the listener's routes are
            # still those of before, so the engine decides), then once the routes carry it (the router).
            assert post(http.url, model).status_code == first_status
            before = refused(client, model)
            by_engine = post(http.url, model)
            assert refused(client, model)[0] == before[0] + 1, f"{model}: the engine did not refuse it"
            wait_for(lambda: client.routes(model, refresh=True)[0].refusal is not None, message="routed")
            time.sleep(1.1)   # the listener's own route cache (client.ROUTE_TTL_S)
            by_router = post(http.url, model)
            wait_for(lambda: refused(client, model)[1] == before[1] + 1, message=f"{model}: the router's counted")
            same_response(by_router, by_engine)
            assert by_engine.status_code in (429, 503)
            # In Python: the raw protocol's answer from the engine, and the router's in a fresh client.
            same_error(router_refusal(node, model), engine_refusal(client, model))
        # A prompt longer than the window: the router knows it from the configuration, so only the raw
        # protocol reaches the engine; over HTTP the engine's refusal is rendered by the same mapping.
        long = "x" * 100
        by_router = post(http.url, "small", long)
        engine = engine_refusal(client, "small", long)
        assert by_router.status_code == 400 and by_router.json() == OPENAI.body(http_error(engine))
        same_error(router_refusal(node, "small", long, pushed=False), engine)
        # What each says (the table): the truth about retrying, and when.
        circuit = router_refusal(node, "dead")
        assert circuit.retryable and 50 < circuit.retry_after_s <= 60 and circuit.provider == "openai"
        window = router_refusal(node, "window")
        assert window.retryable and window.retry_after_s > 100 and "rpm budget spent" in window.message
        asked = time.time()
        spend = router_refusal(node, "spend")
        answered = time.time()
        # Not before the period's end: the wait until it, as of when the router answered.
        assert not spend.retryable and resets - answered - 2 <= spend.retry_after_s <= resets - asked + 2, spend
        assert f"budget deployment=spend/{period} is spent" in spend.message
        assert f"resets at {datetime.fromtimestamp(resets, timezone.utc):%Y-%m-%dT%H:%M:%SZ}" in spend.message
        # Every refusal counted by model, reason and layer, in /v1/status and /metrics.
        # (Router counts reach the node at most every REFUSALS_EVERY_S from each client process.)
        expected = {("dead", "CircuitOpen"): (2, 3), ("window", "BudgetExceeded"): (2, 3),
                    ("spend", "BudgetExceeded"): (2, 3), ("small", "ContextLengthExceeded"): (1, 2)}

        def counted():
            doc = requests.get(http.url + "/v1/status", timeout=30).json()
            rows = {(r["model"], r["reason"], r["where"]): r["count"] for r in doc["refusals"]}
            return rows if all(rows.get((m, r, "engine")) == n and rows.get((m, r, "router")) == k
                               for (m, r), (n, k) in expected.items()) else None
        rows = wait_for(counted, message="every refusal counted by model, reason and layer")
        assert not {key for key in rows if (key[0], key[1]) not in expected}, rows
        metrics = requests.get(http.url + "/metrics", timeout=30).text
        for model, reason in expected:
            assert f'atomr_refusals_total{{model="{model}",node=' in metrics
            assert any(line.startswith("atomr_refusals_total") and f'model="{model}"' in line
                       and f'reason="{reason}"' in line and 'where="router"' in line for line in metrics.splitlines())
        # And in `launch.py status`, from the node's own status (the same rows).
        shown = subprocess.run([sys.executable, str(ROOT / "launch.py"), "status", "--admin-port", str(node.admin_port)],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert shown.returncode == 0, shown.stderr
        for (model, reason), (by_engine, by_router) in expected.items():
            assert f"refused {model}: {by_engine} {reason} (by the engine)" in shown.stdout, shown.stdout
            assert f"refused {model}: {by_router} {reason} (by the router)" in shown.stdout, shown.stdout
        # The SDK sees what each refusal means: the open circuit is worth repeating after its probe time.
        with pytest.raises(openai.InternalServerError) as caught:
            openai.OpenAI(base_url=http.url + "/v1", api_key=KEY, max_retries=0).chat.completions.create(
                model="dead", max_tokens=6, messages=[{"role": "user", "content": HI}])
        assert caught.value.response.headers["x-should-retry"] == "true"
    finally:
        http.stop(timeout_s=10)
