"""/metrics and /v1/status of a node with USD budgets, a ledger, a per-key limit and a fallback.

A deployment in a 503 storm falls back to another model's deployment; the scrape (parsed
with prometheus_client's parser) must count the fallbacks on the deployment that served
them, show each budget's spend against its limit, the ledger's state, the key's own limit,
and agree with the ledger about what the key spent.
"""

from __future__ import annotations

import openai
import pytest
import requests

from actors.core.periods import parse_period
from actors.ops.http_process import start_http
from actors.settings.loader import build
from actors.settings.schema import HttpConfig

from conftest import deployment, fresh_period, fresh_window_s, period_end, wait_for
from test_metrics import scrape, value

KEY = "sk-atomr-metrics-spend-0123456789"
ADMIN = "sk-atomr-metrics-spend-admin-abcd"
HI = [{"role": "user", "content": "hi"}]
NO_RETRY = {"max_retries": 0, "base_delay_s": 0.05, "max_delay_s": 0.2}
# mock-gpt is priced as gpt-4o-mini ($0.15 in, $0.60 out per million): "hi" with max_tokens 6 is
# 4 tokens in and 6 out, $0.0000042 (tests/process/test_spend.py).
CALL_USD = 0.0000042


@pytest.fixture
def front(gateway, mock, tmp_path):
    deployments = [deployment(mock.url + "/primary/mock:status=503", "primary", model="gpt", retry=NO_RETRY),
                   deployment(mock.url + "/backup", "backup", model="backup", retry=NO_RETRY),
                   deployment(mock.url + "/capped", "capped", retry=NO_RETRY)]
    day = fresh_period()   # three lengths, so that a budget shown with another's period is seen
    longer = fresh_period(longer_than=day)
    longest = fresh_period(longer_than=longer)
    budgets = [{"key": "team", "usd": 1.0, "period": day},
               {"team": "search", "usd": 0.5, "period": longest},
               {"deployment": "backup", "usd": 0.0001, "period": longer},
               {"deployment": "capped", "usd": 3 * CALL_USD + 0.0000004, "period": day}]   # three calls
    node, client = gateway(deployments, node={"ledger": str(tmp_path / "ledger.db")}, budgets=budgets,
                           routing={"fallbacks": {"gpt": ["backup"]}})
    section = {"listen": "127.0.0.1:0",
               "keys": [{"name": "team", "key": {"value": KEY}, "team": "search", "limits": {"rpm": 50, "tpm": 5000, "window_s": fresh_window_s()}},
                        {"name": "ops", "key": {"value": ADMIN}, "admin": True}]}
    http = start_http(build(HttpConfig, section, "http"), node.admin_port, models=["gpt", "backup", "capped"],
                      log_file=str(tmp_path / "http.log"))
    try:
        yield http, node, client, (day, longer, longest)
    finally:
        http.stop(timeout_s=10)


def test_spend_budgets_ledger_key_limits_and_fallbacks_in_the_metrics(front, mock):
    http, node, client, (day, longer, longest) = front
    key_budget, team_budget = f"key=team/{day}", f"team=search/{longest}"
    backup_budget, capped_budget = f"deployment=backup/{longer}", f"deployment=capped/{day}"
    sdk = openai.OpenAI(base_url=http.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    for _ in range(2):   # the 503 storm on primary: each call falls back to the model "backup"
        assert sdk.chat.completions.create(model="gpt", messages=HI, max_tokens=6).choices[0].message.content
    sdk.chat.completions.create(model="backup", messages=HI, max_tokens=6)   # asked for directly: no fallback
    assert mock.stats()["total"] == 2 + 3

    spent = 3 * CALL_USD

    def settled():
        s = scrape(http.url, ADMIN)
        views = [value(s, "atomr_spend_used_usd", budget=b) for b in (key_budget, team_budget, backup_budget)]
        assert value(s, "atomr_spend_used_usd", budget=capped_budget) == 0
        ledger = value(s, "atomr_ledger_records_written_total")
        key_requests = value(s, "atomr_budget_requests_used", budget="key:team")
        # The hub merges the engines' and the front door's counts every sync interval; the ledger commits in batches.
        done = views == [pytest.approx(spent, rel=1e-6)] * 3 and ledger == 5 and key_requests == 3
        return s if done else None
    s = wait_for(settled, timeout_s=10, message="the budgets' spend in the hub and the records in the ledger")

    primary = {"deployment": "primary", "model": "gpt", "provider": "openai"}
    backup = {"deployment": "backup", "model": "backup", "provider": "openai"}
    # The fallback is counted on the deployment that took it, never on the one that failed.
    assert value(s, "atomr_fallbacks_total", **backup) == 2
    assert value(s, "atomr_fallbacks_total", **primary) == 0
    assert value(s, "atomr_requests_total", **primary, outcome="failed", error_kind="ServerError") == 2
    assert value(s, "atomr_requests_total", **backup, outcome="completed", error_kind="") == 3

    assert value(s, "atomr_spend_limit_usd", budget=team_budget, scope="team", period=longest, mode="approximate") == 0.5
    assert value(s, "atomr_spend_limit_usd", budget=key_budget, scope="key", period=day) == 1.0
    assert value(s, "atomr_spend_limit_usd", budget=backup_budget, scope="deployment", period=longer) == 0.0001
    assert value(s, "atomr_spend_period_end_seconds", budget=backup_budget) == period_end(longer)
    assert value(s, "atomr_ledger_degraded") == 0
    assert value(s, "atomr_ledger_records_dropped_total") == 0
    assert value(s, "atomr_ledger_records_queued") == 0
    # The key's own rate limit: 3 calls admitted at the front door (the fallback is the same call).
    assert value(s, "atomr_budget_requests_limit", budget="key:team", scope="key") == 50
    assert value(s, "atomr_budget_tokens_limit", budget="key:team", scope="key") == 5000
    assert value(s, "atomr_budget_tokens_used", budget="key:team", scope="key") == 3 * (4 + 6)

    # What the statistics say the key cost agrees with the budgets and with the ledger.
    key_cost = value(s, "atomr_key_cost_usd_total", key="team")
    assert key_cost == pytest.approx(spent, rel=1e-6)
    report = requests.get(f"{http.url}/v1/spend?since=1d&by=key", headers={"Authorization": f"Bearer {KEY}"},
                          timeout=30).json()
    (row,) = [r for r in report["rows"] if r["group"] == "team"]
    assert (row["requests"], row["failed"]) == (5, 2) and row["cost_usd"] == pytest.approx(key_cost, rel=1e-9)

    doc = requests.get(http.url + "/v1/status", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).json()
    budgets = {b["budget"]: b for b in doc["spend"]["budgets"]}
    assert set(budgets) == {key_budget, team_budget, backup_budget, capped_budget}
    line = budgets[backup_budget]
    assert (line["scope"], line["name"], line["period"]) == ("deployment", "backup", longer)
    assert line["fraction"] == pytest.approx(spent / 0.0001, rel=1e-6)
    assert line["period_end_unix"] == period_end(longer)
    assert line["period_end_unix"] - line["period_start_unix"] == parse_period(longer).seconds
    (ledger,) = doc["spend"]["ledgers"]
    assert (ledger["state"], ledger["written"], ledger["dropped"]) == ("ok", 5, 0)
    rows = {d["deployment"]: d for d in doc["deployments"]}
    assert (rows["backup"]["fallbacks"], rows["primary"]["fallbacks"]) == (2, 0)
    (key_limit,) = [b for b in doc["budgets"] if b["scope"] == "key"]
    assert (key_limit["key"], key_limit["requests"], key_limit["rpm"]) == ("key:team", 3, 50)
    labels = {v for (_, ls) in s for _, v in ls}
    assert not any(v.startswith("req_") or "ledger.db" in v for v in labels), labels

    # A deployment whose USD budget is spent: flagged, so an operator sees why routing skips it.
    assert not any(n == "atomr_deployment_budget_spent" for (n, _) in s)
    for _ in range(3):
        client.complete("capped", HI, max_tokens=6)

    def flagged():
        s = scrape(http.url, ADMIN)
        return s if any(n == "atomr_deployment_budget_spent" for (n, _) in s) else None
    s = wait_for(flagged, timeout_s=10, message="the spent budget flagged on its deployment")
    assert value(s, "atomr_deployment_budget_spent", deployment="capped", budget=capped_budget) == 1
    assert [(n, dict(ls)["deployment"]) for (n, ls) in s if n == "atomr_deployment_budget_spent"] == [
        ("atomr_deployment_budget_spent", "capped")]
