"""GET /ui in a real headless browser (Debian's chromium + chromedriver, driven by selenium).

Skipped, with the command that installs them, where they are missing; required under .ci/run
(``ATOMR_REQUIRE_BROWSER=1``), which installs them.

A node and its HTTP listener serve a few calls, a 500 storm opens one circuit, and the
browser loads the dashboard, waits for the data and reads what an operator would see.
The screenshot goes to a temporary file; ``ATOMR_UPDATE_SCREENSHOT=1`` writes the README's
(docs/dashboard.png) instead, so a test run leaves the checkout as it found it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import openai
import pytest

from actors.ops.http_process import start_http
from actors.settings.loader import build
from actors.settings.schema import HttpConfig

from conftest import deployment, fresh_period, fresh_window_s, period_end, wait_for

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
KEY = "sk-atomr-dashboard-0123456789"


# .ci/run installs the browser and sets this, so there the test is required; elsewhere (the
# README's command on a fresh machine, where pip cannot bring a browser) it is skipped, saying why.
BROWSER_REQUIRED = os.environ.get("ATOMR_REQUIRE_BROWSER") == "1"
INSTALL = "apt-get install -y chromium chromium-driver"


@pytest.fixture
def browser():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        why = f"the dashboard test needs Debian's chromium and chromedriver at {CHROMIUM}, {CHROMEDRIVER}: {INSTALL}"
        if BROWSER_REQUIRED:
            pytest.fail(why + " (ATOMR_REQUIRE_BROWSER=1: this run must have them)")
        pytest.skip(why + " (.ci/run installs them and makes this test required)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="atomr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1440,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_shows_deployments_an_open_breaker_and_budgets(browser, gateway, mock, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    deps = [deployment(mock.url, "chat", retry={"max_retries": 0},
                       breaker={"consecutive_failures": 3, "open_s": 120, "max_open_s": 120}),
            deployment(mock.url, "claude", provider="anthropic", limits={"rpm": 100, "tpm": 20000, "window_s": fresh_window_s()})]
    # Windows and budget periods are aligned on Unix time: the calls and the page's wait never straddle an end.
    period = fresh_period()
    resets = period_end(period)
    usd_budget = f"deployment=claude/{period}"
    node, client = gateway(deps, node={"ledger": str(tmp_path / "ledger.db")},
                           budgets=[{"deployment": "claude", "usd": 0.001, "period": period}])
    http = start_http(build(HttpConfig, {"listen": "127.0.0.1:0", "keys": [{"name": "team", "key": {"value": KEY}}]},
                            "http"), node.admin_port, models=["chat", "claude"], log_file=str(tmp_path / "http.log"))
    try:
        sdk = openai.OpenAI(base_url=http.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
        for i in range(3):
            if i == 1:  # the rest in the charts' next 10 s bucket, so that they draw lines, not dots
                bucket = time.time() // 10
                wait_for(lambda: time.time() // 10 != bucket, timeout_s=11, interval_s=0.1, message="the next bucket")
            sdk.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hello there"}],
                                        max_tokens=8)
            list(sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=5, stream=True))
        for _ in range(3):
            with pytest.raises(openai.InternalServerError):
                sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "[[mock status=503]]"}])
        wait_for(lambda: any(b.state.value == "open" for b in client.status().breakers), message="the open circuit")

        browser.get(http.url + "/ui")   # a loopback caller, and no admin key configured: no key needed
        WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))

        def rows(table):   # the rows as one poll drew them (a redraw mid-read makes them stale: read again)
            return WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda _: [r.text for r in browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")])

        def budget_seen(_):
            budgets = browser.find_elements(By.CSS_SELECTOR, "#budgets .budget")
            return any("requests: 3 / 100" in b.text for b in budgets)
        WebDriverWait(browser, 20).until(budget_seen)   # the hub merges the engines' counts every 50 ms
        deployments = {r.split()[0]: r for r in rows("deployments")}
        assert set(deployments) == {"chat", "claude"}
        assert "open" in deployments["chat"] and "since" in deployments["chat"]   # failing, and since when
        assert "ok" in deployments["claude"].split() and "anthropic" in deployments["claude"]
        assert "50%" in deployments["chat"]                 # 3 of 6 failed
        # Then a call the open circuit refuses (read after the deployments' rates above).
        with pytest.raises(openai.APIStatusError) as refused:   # refused without calling the provider
            sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert refused.value.status_code == 503 and "circuit" in str(refused.value).lower()
        breakers = rows("breakers")
        assert any(r.startswith("openai") and "open" in r and "half-open in" in r for r in breakers), breakers
        assert any(r.startswith("anthropic") and "closed" in r for r in breakers), breakers
        timeline = browser.find_elements(By.CSS_SELECTOR, "#breakers svg.timeline rect")
        assert {t.get_attribute("fill") for t in timeline} >= {"#2f9e5b", "#d23f3f"}   # closed, then open
        bar = browser.find_element(By.CSS_SELECTOR, "#budgets .bar > div")
        assert bar.get_attribute("style").replace(" ", "") == "width:3%;"
        # The USD budget: a bar of what the cluster spent of it this period, as the status document says.
        import re

        import requests

        def spend_bar(_):
            bars = browser.find_elements(By.CSS_SELECTOR, f'#spend .budget[data-budget="{usd_budget}"] .bar')
            width = re.search(r"width:\s*([0-9.e+-]+)%", bars[0].find_element(By.TAG_NAME, "div").get_attribute(
                "style")) if bars else None
            (spent,) = requests.get(http.url + "/v1/status", timeout=10).json()["spend"]["budgets"]
            if not width or float(width.group(1)) != pytest.approx(100 * spent["fraction"], rel=1e-3):
                return None   # not drawn yet, or the hub's view moved on since the page's last poll
            card = browser.find_element(By.CSS_SELECTOR, f'#spend .budget[data-budget="{usd_budget}"]').text
            return bars[0].text, card, spent
        # Read in one step: the page redraws on each poll, and an element read after a redraw is stale.
        usd_bar, card, spent = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
            spend_bar)
        assert spent["budget"] == usd_budget and 0 < spent["spent_usd"] < 0.001
        assert spent["period_end_unix"] == resets
        assert f"deployment claude, {period} period, approximate, resets in" in card and "/ $0.00100 (" in usd_bar
        hours = re.search(r"resets in ([0-9.]+) h", card)   # at least fresh_period's 2 h: shown in hours
        assert hours and float(hours.group(1)) == pytest.approx((resets - time.time()) / 3600, abs=0.15), card
        assert "ok" in browser.find_element(By.CSS_SELECTOR, "#ledgers .ledger").text
        assert any(r.startswith("n1@") and "leader" in r for r in rows("nodes"))
        assert any(r.startswith("team") for r in rows("keys"))
        # The refused call, by model and reason (the engine's or the router's, as the node counted it).
        WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda _: any(r.split()[:2] == ["chat", "CircuitOpen"] for r in rows("refusals")))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-rps polyline")) == 2   # one line per deployment
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-latency polyline")) == 4  # p50 and p99 each
        screenshot = README_SCREENSHOT if os.environ.get("ATOMR_UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
        browser.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000
    finally:
        http.stop(timeout_s=10)
