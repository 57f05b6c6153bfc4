"""Spend on a real node: the ledger on disk, budgets over HTTP and the Python client, restarts, reports."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import anthropic
import openai
import pytest
import requests

from actors import errors as E
from actors.ops.http_process import start_http
from actors.settings.loader import build
from actors.providers import PROVIDERS
from actors.settings.schema import HttpConfig
from actors.types import Completed

from conftest import deployment, fresh_period, wait_for
from test_providers_e2e import HELLO, every_provider

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-atomr-spend-key-0123456789"
HI = [{"role": "user", "content": "hi"}]
NO_RETRY = {"max_retries": 0, "base_delay_s": 0.05, "max_delay_s": 0.2}
# mock-gpt is priced as gpt-4o-mini ($0.15 in, $0.60 out per million): "hi" with max_tokens 6 costs
# 4 in + 6 out = $0.0000042 and is estimated at $0.00000435; $0.000013 admits exactly three.
THREE_CALLS = 0.000013


def rows(path, **where):
    if not Path(path).exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        clause = " AND ".join(f"{k} = ?" for k in where) or "1"
        return [dict(r) for r in db.execute(f"SELECT * FROM spend WHERE {clause}", tuple(where.values()))]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_streamed_and_unstreamed_calls_of_every_provider_record_the_same_cost(gateway, mock, tmp_path):
    ledger = tmp_path / "ledger.db"
    deployments = every_provider(mock.url) + [deployment(mock.url, "unpriced", upstream_model="mystery-model-9")]
    node, client = gateway(deployments, node={"ledger": str(ledger)})
    ids = {}
    for name in list(PROVIDERS) + ["unpriced"]:
        whole = client.complete(name, HELLO, max_tokens=12)
        stream = client.stream(name, HELLO, max_tokens=12)
        list(stream)
        ids[name] = (whole.request_id, stream.result.request_id)
    wait_for(lambda: len(rows(ledger)) == 2 * len(ids), timeout_s=10, message="every call in the ledger")
    for name, (whole_id, stream_id) in ids.items():
        (whole,), (streamed,) = rows(ledger, request_id=whole_id), rows(ledger, request_id=stream_id)
        assert whole["streamed"] == 0 and streamed["streamed"] == 1 and whole["deployment"] == name
        assert whole["usage_reported"] == streamed["usage_reported"] == 1, name
        assert (whole["input_tokens"], whole["output_tokens"]) == (streamed["input_tokens"], streamed["output_tokens"])
        if name == "unpriced":
            # An unknown price is recorded as unknown, and charged against budgets by estimate.
            assert whole["cost_usd"] is None and streamed["cost_usd"] is None
            assert whole["charged_usd"] == streamed["charged_usd"] > 0
        else:
            assert whole["cost_usd"] == pytest.approx(streamed["cost_usd"]) and whole["cost_usd"] > 0, name
            assert whole["charged_usd"] == pytest.approx(whole["cost_usd"]), name
    # Nothing of the prompt or the answer is kept.
    assert b"Say hello" not in ledger.read_bytes() and b"You said" not in ledger.read_bytes()
    # The report reads the same file: known costs summed, the unknown one counted apart.
    config = tmp_path / "node.yaml"
    config.write_text(f"deployments:\n  - {{name: x, model: x, provider: openai, endpoint: 'http://127.0.0.1:9/v1'}}\n"
                      f"node: {{ledger: {ledger}}}\n")
    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), "spend", "--config", str(config), "--since", "1h",
                          "--by", "deployment"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    total = next(line for line in out.stdout.splitlines() if line.startswith("total"))
    assert total.split()[1] == str(2 * len(ids)) and total.split()[4] == "2"
    assert "2 request(s) of unknown cost" in out.stdout


@pytest.fixture
def spend_front(gateway, mock, tmp_path):
    """A node with a ledger and a key budget, and its HTTP listener; restartable on the same port."""
    started = []
    ledger = str(tmp_path / "ledger.db")
    period = fresh_period()   # the same one across restarts
    budgets = [{"key": "search-bot", "usd": THREE_CALLS, "period": period},
               {"deployment": "capped", "usd": THREE_CALLS, "period": period}]
    deployments = [deployment(mock.url, "gpt", retry=NO_RETRY), deployment(mock.url, "capped", retry=NO_RETRY)]

    def make(port=None):
        node, client = gateway(deployments, node={"ledger": ledger}, budgets=budgets, port=port)
        section = {"listen": "127.0.0.1:0", "keys": [{"name": "search-bot", "key": {"value": KEY}, "team": "search"}]}
        handle = start_http(build(HttpConfig, section, "http"), node.admin_port, models=["gpt", "capped"],
                            log_file=str(tmp_path / f"http-{len(started)}.log"))
        started.append(handle)
        return handle, node, client

    yield make, ledger, period
    for handle in started:
        handle.stop(timeout_s=10)


def test_a_key_budget_refuses_over_http_once_spent_and_the_sdk_does_not_retry(spend_front, mock):
    make, ledger, period = spend_front
    http, node, client = make()
    sdk = openai.OpenAI(base_url=http.url + "/v1", api_key=KEY, max_retries=3, timeout=30)
    for _ in range(3):
        assert sdk.chat.completions.create(model="gpt", messages=HI, max_tokens=6).choices[0].message.content
    sent = mock.stats()["total"]
    with pytest.raises(openai.RateLimitError) as info:
        sdk.chat.completions.create(model="gpt", messages=HI, max_tokens=6)
    assert info.value.status_code == 429
    assert info.value.response.headers["x-should-retry"] == "false"
    assert int(info.value.response.headers["retry-after"]) > 0
    body = info.value.response.json()["error"]
    assert body["code"] == "budget_exceeded" and f"budget key=search-bot/{period} is spent" in body["message"]
    assert mock.stats()["total"] == sent  # refused before any upstream call, and not retried by the SDK
    claude = anthropic.Anthropic(base_url=http.url, api_key=KEY, max_retries=3, timeout=30)
    with pytest.raises(anthropic.RateLimitError) as info:
        claude.messages.create(model="gpt", messages=HI, max_tokens=6)
    assert f"budget key=search-bot/{period} is spent" in info.value.message and mock.stats()["total"] == sent
    # The Python client (no key) is not held by the key's budget ...
    assert isinstance(client.complete("gpt", HI, max_tokens=6), Completed)
    # ... and the ledger knows the key and its team; /v1/spend reports it.
    wait_for(lambda: len(rows(ledger, key="search-bot")) == 5, message="the key's calls in the ledger")
    wait_for(lambda: len(rows(ledger)) == 6, message="the Python client's call in the ledger too")
    assert {r["team"] for r in rows(ledger, key="search-bot")} == {"search"}
    report = requests.get(f"{http.url}/v1/spend?since=1d&by=key", headers={"Authorization": f"Bearer {KEY}"},
                          timeout=30).json()
    by_key = {r["group"]: r for r in report["rows"]}
    assert by_key["search-bot"]["requests"] == 5 and by_key["search-bot"]["failed"] == 2
    assert by_key["search-bot"]["cost_usd"] == pytest.approx(3 * 0.0000042)
    assert report["total"]["requests"] == 6
    bad = requests.get(f"{http.url}/v1/spend?by=prompt", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert bad.status_code == 400 and "by" in bad.json()["error"]["message"]
    assert requests.get(f"{http.url}/v1/spend", timeout=30).status_code == 401


def test_a_spent_budget_stays_spent_across_a_restart_of_the_node(spend_front, mock):
    make, ledger, period = spend_front
    capped = f"deployment=capped/{period}"
    http, node, client = make()
    for _ in range(3):
        assert isinstance(client.complete("capped", HI, max_tokens=6), Completed)
    with pytest.raises(E.BudgetExceeded) as info:
        client.complete("capped", HI, max_tokens=6)
    assert not info.value.retryable and capped in str(info.value)
    status = client.status()
    assert any(e.budget_spent == [capped] for e in status.engines)  # routing skips it
    assert status.spend["ledger"]["state"] == "ok"

    def hub_spent(c):  # the node's merged view, one sync interval behind the engines
        return {b["budget"]: b["spent_usd"] for b in c.status().spend["budgets"]}.get(capped)

    wait_for(lambda: hub_spent(client) == pytest.approx(3 * 0.0000042), message="the hub's view of the spend")
    port = node.admin_port
    http.stop(timeout_s=10)
    node.stop(drain_timeout_s=5)  # the drain flushes the ledger
    assert len(rows(ledger, deployment="capped")) == 4
    _, _, again = make(port=port)
    with pytest.raises(E.BudgetExceeded):
        again.complete("capped", HI, max_tokens=6)
    assert isinstance(again.complete("gpt", HI, max_tokens=6), Completed)  # other deployments serve on
    # Restarted, it still counts what it spent before.
    wait_for(lambda: hub_spent(again) == pytest.approx(3 * 0.0000042), message="the seeded spend at the hub")


def test_a_corrupted_ledger_stops_the_launch_with_a_clear_message(tmp_path):
    ledger = tmp_path / "ledger.db"
    ledger.write_bytes(b"\x00garbage" * 1000)
    config = tmp_path / "node.yaml"
    config.write_text("deployments:\n  - {name: x, model: x, provider: openai, endpoint: 'http://127.0.0.1:9/v1'}\n"
                      "node: {ledger: ledger.db, admin_port: 1}\n")
    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", str(config)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert f"configuration error: node.ledger: ledger {ledger} is corrupted" in out.stderr


def test_an_engine_killed_with_its_budget_spent_comes_back_still_refusing_and_counts_it_once(gateway, mock,
                                                                                               tmp_path):
    import os
    import signal

    from proctree import engines_and_workers

    ledger = str(tmp_path / "ledger.db")
    period = fresh_period()
    node, client = gateway([deployment(mock.url, "capped", retry=NO_RETRY)], node={"ledger": ledger},
                           budgets=[{"deployment": "capped", "usd": THREE_CALLS, "period": period}])
    for _ in range(3):
        assert isinstance(client.complete("capped", HI, max_tokens=6), Completed)
    wait_for(lambda: len(rows(ledger)) == 3, message="the calls in the ledger")
    (engine,) = engines_and_workers(node.admin_port, node.pgid)
    os.kill(engine, signal.SIGKILL)
    wait_for(lambda: any(s.get("restarts") for s in client.status().supervision) and
             client.routes("capped", refresh=True), timeout_s=20, message="the engine to be restarted")

    def refused():
        try:
            client.complete("capped", HI, max_tokens=6)
        except E.BudgetExceeded:
            return True
        except E.InferenceError:
            return False  # e.g. EngineCrashed on a stale route
        raise AssertionError("a call passed a spent budget after the engine restarted")
    wait_for(refused, timeout_s=10, message="the restarted engine to refuse")
    # Seeded from the ledger and merged with the hub's count for the same slot: counted once, not twice.
    spend = {b["budget"]: b["spent_usd"] for b in client.status().spend["budgets"]}
    assert spend[f"deployment=capped/{period}"] == pytest.approx(3 * 0.0000042)
