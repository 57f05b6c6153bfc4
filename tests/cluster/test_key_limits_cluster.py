"""Per-key limits across the cluster: two nodes' HTTP listeners serving one key share its budget.

Two nodes in one convention on 127.0.0.1, each with its own front door process configured
with the same keys; the calls go over HTTP with the real openai and anthropic SDKs.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import anthropic
import openai
import pytest

from actors.ops.http_process import start_http
from actors.settings.loader import build
from actors.settings.schema import HttpConfig

from conftest import deployment, free_port, fresh_window_s, wait_for

ROOT = Path(__file__).resolve().parents[2]
SHARED, FREE = "sk-atomr-shared-key-0123456789", "sk-atomr-free-key-abcdefghij"
METERED, TPM = "sk-atomr-metered-key-klmnopqrs", 100_000
HI = [{"role": "user", "content": "hi"}]
CAP = 10
NO_RETRY = {"max_retries": 0, "base_delay_s": 0.05, "max_delay_s": 0.2}
FAST_CLUSTER = {"heartbeat_s": 0.5, "failure_timeout_s": 3.0, "reregistration_s": 2}


def _key_budget(client, name):
    found = [u for u in client.status().limits if u["key"] == f"key:{name}"]
    return found[0] if found else None


@pytest.fixture
def two_doors(gateway, mock, tmp_path):
    """Two nodes in a convention, each with a front door; both serve keys 'shared' (rpm CAP), 'free'
    (no limits) and 'metered' (tpm TPM)."""
    doors = []
    leader_port = free_port()
    section = {"listen": "127.0.0.1:0", "keys": [
        {"name": "shared", "key": {"value": SHARED}, "limits": {"rpm": CAP, "window_s": fresh_window_s()}},
        {"name": "free", "key": {"value": FREE}},
        {"name": "metered", "key": {"value": METERED}, "limits": {"tpm": TPM, "window_s": fresh_window_s()}}]}
    nodes = []
    for i in range(2):
        node, client = gateway([deployment(mock.url, "gpt", retry=NO_RETRY)], name=f"n{i}", cluster=FAST_CLUSTER,
                               port=leader_port if i == 0 else None,
                               leader=None if i == 0 else f"127.0.0.1:{leader_port}")
        nodes.append((node, client))
    wait_for(lambda: len(nodes[0][1].cluster_status(members_only=True).members) == 2, timeout_s=20,
             message="2 members")
    try:
        for i, (node, client) in enumerate(nodes):
            doors.append(start_http(build(HttpConfig, section, "http"), node.admin_port, models=["gpt"],
                                    log_file=str(tmp_path / f"http{i}.log")))
        for _, client in nodes:  # each front door registered its key budget with its node's hub
            wait_for(lambda: (_key_budget(client, "shared") or {}).get("engines") == 1, timeout_s=15,
                     message="the key budget registered with the hub")
        yield doors, nodes, section
    finally:
        for door in doors:
            door.stop(timeout_s=10)


def test_two_nodes_share_one_keys_budget_and_a_key_without_limits_is_unaffected(two_doors, mock):
    (door0, door1), nodes, section = two_doors
    via_openai = openai.OpenAI(base_url=door0.url + "/v1", api_key=SHARED, max_retries=0, timeout=30)
    via_anthropic = anthropic.Anthropic(base_url=door1.url, api_key=SHARED, max_retries=0, timeout=30)
    admitted = [0, 0]
    refused: list = []
    for i in range(3 * CAP):  # three times the budget, alternating between the two nodes
        for attempt in range(4):
            try:
                if i % 2 == 0:
                    via_openai.chat.completions.create(model="gpt", messages=HI, max_tokens=2)
                else:
                    via_anthropic.messages.create(model="gpt", messages=HI, max_tokens=2)
                admitted[i % 2] += 1
            except (openai.RateLimitError, anthropic.RateLimitError) as exc:
                if "until the next sync" in exc.message and attempt < 3:
                    # Calls this fast outrun the sync: a front door that admitted its share of what
                    # was left refuses until its view catches up (the share rule, core/ratelimit.py;
                    # 7 of 10 were admitted once without this). A client honouring Retry-After gets
                    # the rest, as this one does.
                    time.sleep(float(exc.response.headers["retry-after"]))
                    continue
                refused.append(exc)
            break
    total = sum(admitted)
    # One budget for both: each node alone would have admitted CAP (2 * CAP in all).
    assert CAP - 2 <= total <= CAP + 2, admitted
    assert admitted[0] > 0 and admitted[1] > 0, admitted
    assert len(refused) == 3 * CAP - total
    assert {type(e) for e in refused} == {openai.RateLimitError, anthropic.RateLimitError}
    for exc in refused:
        assert exc.status_code == 429 and int(exc.response.headers["retry-after"]) >= 1
        assert exc.response.headers["x-should-retry"] == "true"
        assert "'shared' is over its rpm limit" in exc.message
    assert mock.stats()["total"] == total  # nothing refused reached the provider
    # Both hubs converge on the cluster-wide count of the key's window.
    for _, client in nodes:
        wait_for(lambda: _key_budget(client, "shared")["requests"] == total, timeout_s=10,
                 message="the hubs to agree on the key's count")
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "status", "--leader",
                           f"127.0.0.1:{nodes[0][0].admin_port}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"budget key:shared (approximate), cluster-wide this window: requests {total}/{CAP}" in proc.stdout
    # The key without limits, on both nodes, right after: never refused.
    for url in (door0.url, door1.url):
        free = openai.OpenAI(base_url=url + "/v1", api_key=FREE, max_retries=0, timeout=30)
        for _ in range(CAP + 2):
            assert free.chat.completions.create(model="gpt", messages=HI, max_tokens=2).choices[0].message.content
    assert _key_budget(nodes[0][1], "free") is None


def test_a_concurrent_burst_through_both_nodes_stays_near_the_keys_budget(two_doors, mock):
    (door0, door1), nodes, section = two_doors
    clients = [openai.OpenAI(base_url=door.url + "/v1", api_key=SHARED, max_retries=0, timeout=30)
               for door in (door0, door1)]
    outcomes: list = []

    def caller(client, calls):
        for _ in range(calls):
            try:
                client.chat.completions.create(model="gpt", messages=HI, max_tokens=2)
                outcomes.append("ok")
            except openai.RateLimitError:
                outcomes.append("429")

    threads = [threading.Thread(target=caller, args=(clients[i % 2], CAP)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    admitted = outcomes.count("ok")
    print("admitted in the burst", admitted, "of", len(outcomes))
    assert len(outcomes) == 6 * CAP
    # Approximate, like deployment limits: at most about one sync interval of overshoot. Below
    # the budget, because a node refused for its share until the next sync, and these callers
    # (max_retries=0) gave up at once instead of coming back after the retry-after it said.
    assert CAP // 2 <= admitted <= CAP + 3, admitted
    assert mock.stats()["total"] == admitted


def test_a_keys_tokens_are_reserved_by_estimate_and_charged_what_the_calls_used(two_doors, mock):
    (door0, door1), nodes, section = two_doors
    clients = [openai.OpenAI(base_url=door.url + "/v1", api_key=METERED, max_retries=0, timeout=30)
               for door in (door0, door1)]
    # Each call reserves its estimate (1000 tokens of output allowed) but the mock answers with 2
    # words: once the calls are over the key is charged what they used, on both nodes' hubs.
    ask = [{"role": "user", "content": "hi [[mock words=2]]"}]
    used = 0
    for i in range(10):
        reply = clients[i % 2].chat.completions.create(model="gpt", messages=ask, max_tokens=1000)
        used += reply.usage.total_tokens
    assert 10 <= used < 200  # against 10 reservations of over 1000
    for _, client in nodes:
        wait_for(lambda: _key_budget(client, "metered")["tokens"] == used, timeout_s=10,
                 message="the key's token count to be the calls' usage")
    # One call that could use more than the whole budget: refused, and not worth retrying.
    with pytest.raises(openai.RateLimitError) as caught:
        clients[0].chat.completions.create(model="gpt", messages=ask, max_tokens=2 * TPM)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert f"against a tpm budget of {TPM}" in caught.value.message
    assert _key_budget(nodes[0][1], "metered")["requests"] == 10


def test_a_restarted_listener_keeps_spending_from_the_keys_budget(two_doors, tmp_path):
    (door0, door1), nodes, section = two_doors

    def admitted_until_refused(url, limit):
        client = openai.OpenAI(base_url=url + "/v1", api_key=SHARED, max_retries=0, timeout=30)
        for n in range(limit):
            try:
                client.chat.completions.create(model="gpt", messages=HI, max_tokens=2)
            except openai.RateLimitError:
                return n
        return limit

    assert admitted_until_refused(door0.url, 2 * CAP) == CAP
    door0.stop(timeout_s=10)
    again = start_http(build(HttpConfig, section, "http"), nodes[0][0].admin_port, models=["gpt"],
                       log_file=str(tmp_path / "http0-again.log"))
    try:
        # Its fresh slot starts from the hub's view of the window, not from an empty budget
        # (at most the calls it admits before the hub's state reaches it).
        assert admitted_until_refused(again.url, CAP) <= 1
        assert admitted_until_refused(door1.url, CAP) == 0
    finally:
        again.stop(timeout_s=10)
