"""Per-key budgets at the front door (actors/http/key_limits.py), the hub's leases, and their config."""

from __future__ import annotations

import time

import pytest

from actors import errors as E
from actors.core.settlement import Settle
from actors.errors import ConfigError
from actors.http.errors import FrontDoorError, http_error
from actors.http.key_limits import NO_HOLD, KeyLimits, key_settlement
from actors.runtime import limiter as hub_module
from actors.runtime.limiter import RateLimiterActor
from actors.runtime.protocol import LimiterDelta, LimiterInit, LimiterPeers, LimiterRegister
from actors.settings.loader import parse_config
from actors.settings.schema import ApiKeySource, HttpKey, KeyLimits as KeyLimitsConfig
from actors.types import Completed, Usage
from harness import Recorder

HI = [{"role": "user", "content": "hi"}]
DIGEST = "ab" * 32
START = 1_000_040.0  # 20 s into a 60 s window (60 * 16667 = 1_000_020)


class Clock:
    def __init__(self, wall=START):
        self.wall, self.mono = wall, 100.0

    def advance(self, seconds):
        self.wall += seconds
        self.mono += seconds


def key(name, **limits):
    return HttpKey(name, ApiKeySource(sha256=DIGEST), limits=KeyLimitsConfig(**limits) if limits else None)


def door(*keys, clock=None, slot="front-a", rand=lambda: 0.0):
    clock = clock or Clock()
    return KeyLimits(keys, slot, wall_clock=lambda: clock.wall, clock=lambda: clock.mono, rand=rand), clock


def refusal(limits, name, messages=HI, max_tokens=None) -> FrontDoorError:
    with pytest.raises(FrontDoorError) as caught:
        limits.admit(name, messages, max_tokens)
    return caught.value


def completed(charged, reported=True, total=None):
    usage = Usage(input_tokens=total or charged, output_tokens=0, reported=reported)
    return Completed("r", "ok", "stop", usage, charged_tokens=charged)


# --- admission -------------------------------------------------------------------------

def test_a_key_over_its_rpm_is_refused_with_429_until_the_window_ends_and_an_unlimited_key_is_not():
    limits, clock = door(key("search", rpm=3), key("free"))
    holds = [limits.admit("search", HI, 5) for _ in range(3)]
    assert all(not h.settled for h in holds)
    err = refusal(limits, "search")
    assert err.status == 429 and err.code == "key_rate_limited" and "'search'" in err.message and "rpm" in err.message
    # retry-after: the rest of the window (40 s of 60), what the SDKs' RateLimitError waits
    assert err.retry_after_s == pytest.approx(40.0)
    http = http_error(err)
    assert ("retry-after-ms", "40000") in http.headers() and ("x-should-retry", "true") in http.headers()
    assert http.openai_type == "rate_limit_error" and http.anthropic_type == "rate_limit_error"
    assert all(limits.admit("free", HI) is NO_HOLD for _ in range(50))  # no limits: nothing counted
    assert limits.refused == 1
    clock.advance(40.0)  # the next window
    assert not limits.admit("search", HI).settled


def test_tokens_are_reserved_by_estimate_and_reconciled_to_what_the_call_was_charged():
    limits, _ = door(key("t", tpm=1000))
    hold = limits.admit("t", HI, 600)   # estimate: 600 output + a few input tokens
    assert limits.usage()[0]["tokens"] > 600
    refusal(limits, "t", max_tokens=600)  # two estimates do not fit
    hold.settle(completed(charged=50))
    assert limits.usage()[0]["tokens"] == 50
    limits.admit("t", HI, 600)             # now it fits
    hold.settle(completed(charged=999))    # a second settle is a no-op
    assert limits.usage()[0]["tokens"] > 600 and limits.usage()[0]["tokens"] < 700


def test_a_request_larger_than_the_whole_budget_is_refused_as_not_retryable():
    limits, _ = door(key("t", tpm=100))
    err = refusal(limits, "t", max_tokens=500)
    assert err.status == 429 and err.retryable is False
    assert ("x-should-retry", "false") in http_error(err).headers()


def test_what_never_reached_a_provider_is_given_back_and_what_may_have_stays_charged():
    limits, _ = door(key("t", rpm=2))
    limits.admit("t", HI).settle(E.QueueFull("full"))
    limits.admit("t", HI).settle(E.CircuitOpen("open"))
    assert limits.usage()[0]["requests"] == 0
    limits.admit("t", HI).settle(E.Timeout("slow", provider="openai"))
    limits.admit("t", HI).settle(None)  # the caller went away mid-stream
    assert limits.usage()[0]["requests"] == 2
    refusal(limits, "t")


@pytest.mark.parametrize("outcome, action, tokens", [
    (completed(40), Settle.RECONCILE, 40),
    (completed(0, reported=True), Settle.RECONCILE, 0),
    (completed(0, reported=False), Settle.KEEP, None),
    (E.QueueFull("x"), Settle.RELEASE, None),
    (E.BudgetExceeded("x"), Settle.RELEASE, None),
    (E.NotFound("no deployment serves model"), Settle.RELEASE, None),
    (E.NotFound("upstream 404", provider="openai", status=404), Settle.RECONCILE, 0),
    (E.BadRequest("bad", provider="openai", status=400), Settle.RECONCILE, 0),
    (E.StreamError("cut", partial_usage={"input_tokens": 5, "output_tokens": 7}), Settle.RECONCILE, 12),
    (E.EngineCrashed("gone"), Settle.KEEP, None),
    (None, Settle.KEEP, None),
])
def test_key_settlement_rule(outcome, action, tokens):
    decided = key_settlement(outcome)
    assert decided.action is action and (tokens is None or decided.tokens == tokens)


# --- two front doors, one budget ----------------------------------------------------------

def test_two_front_doors_exchanging_deltas_share_one_budget():
    clock = Clock()
    a, _ = door(key("t", rpm=20), clock=clock, slot="front-a")
    b, _ = door(key("t", rpm=20), clock=clock, slot="front-b")
    admitted = {"a": 0, "b": 0}

    def sync(src, dst):
        for budget, delta, sent in src.take_deltas():
            assert budget == "key:t"
            dst.merge(budget, delta, sent)

    for _ in range(30):  # both doors try every step; the counts cross after each
        for name, limits in (("a", a), ("b", b)):
            try:
                limits.admit("t", HI)
                admitted[name] += 1
            except FrontDoorError:
                pass
        clock.advance(0.2)
        sync(a, b)
        sync(b, a)
    total = admitted["a"] + admitted["b"]
    assert 16 <= total <= 20, admitted
    assert admitted["a"] > 0 and admitted["b"] > 0
    assert a.usage()[0]["requests"] == b.usage()[0]["requests"] == total
    assert not a.merge("key:other", {}, None)  # a budget this door does not serve is not kept


def test_without_sync_each_door_enforces_the_budget_on_its_own():
    clock = Clock()
    a, _ = door(key("t", rpm=5), clock=clock, slot="front-a")
    b, _ = door(key("t", rpm=5), clock=clock, slot="front-b")
    for limits in (a, b):
        for _ in range(5):
            limits.admit("t", HI)
        refusal(limits, "t")


# --- the hub's leases ---------------------------------------------------------------------

class Teller(Recorder):
    """Sends on request, so that it is the sender the hub sees; keeps what it receives."""

    def receiveMessage(self, msg, sender):
        if isinstance(msg, tuple) and msg and msg[0] == "tell":
            self.send(msg[1], msg[2])
        else:
            super().receiveMessage(msg, sender)


def _deltas(asys, actor):
    return [m for m in asys.ask(actor, "seen?", 2) if isinstance(m, LimiterDelta)]


def test_the_hub_forwards_key_deltas_to_leased_front_doors_and_peers_but_not_back(asys, monkeypatch):
    limits = KeyLimitsConfig(rpm=10).rate_limits("t")
    hub = asys.createActor(RateLimiterActor)
    asys.tell(hub, LimiterInit("n1", 0.05))
    peer = asys.createActor(Recorder)
    asys.tell(hub, LimiterPeers([peer]))
    front, other = asys.createActor(Teller), asys.createActor(Teller)
    for t in (front, other):
        asys.tell(t, ("tell", hub, LimiterRegister(None, "key:t", limits)))
    window = int(time.time() // 60)
    delta = {window: {"requests": {"http/x": 1}}}
    asys.tell(other, ("tell", hub, LimiterDelta("key:t", delta, "http/x", limits, 1.0)))
    got = _deltas(asys, front)
    assert [(d.key, d.delta) for d in got] == [("key:t", delta)]
    assert _deltas(asys, other) == []  # not echoed to its sender
    relayed = [d for d in _deltas(asys, peer) if d.key == "key:t"]
    assert relayed and relayed[0].origin == "hub:n1" and relayed[0].limits == limits
    # A lease that lapses (the front door went away) is no longer sent to.
    monkeypatch.setattr(hub_module, "LEASE_S", -1.0)
    asys.tell(front, ("tell", hub, LimiterRegister(None, "key:t", limits)))
    asys.tell(other, ("tell", hub, LimiterDelta("key:t", {window: {"requests": {"http/x": 2}}}, "http/x", limits)))
    seen = [d.delta[window]["requests"]["http/x"] for d in _deltas(asys, front)]
    assert seen == [1, 1]  # the delta, then the state the renewal is answered with; never the 2


# --- config ---------------------------------------------------------------------------------

def _config(limits):
    return {"deployments": [{"name": "d", "model": "m", "provider": "openai", "endpoint": "http://127.0.0.1:9"}],
            "http": {"listen": "127.0.0.1:4000", "keys": [
                {"name": "team-search", "key": {"sha256": DIGEST}, "models": ["m"], "limits": limits}]}}


def test_key_limits_load_as_the_issue_writes_them():
    config = parse_config(_config({"rpm": 600, "tpm": 200000}), "gateway.yaml")
    limits = config.http.keys[0].limits
    assert (limits.rpm, limits.tpm, limits.window_s) == (600, 200000, 60.0)
    assert limits.rate_limits("team-search").key == "key:team-search"


@pytest.mark.parametrize("limits, where, says", [
    ({"rpm": 0}, "http.keys[0].limits.rpm", "must be >= 1, got 0"),
    ({"tpm": -5}, "http.keys[0].limits.tpm", "must be >= 1, got -5"),
    ({"rpm": 2.5}, "http.keys[0].limits.rpm", "expected an integer, got float 2.5"),
    ({"rpm": 5, "burst": 3}, "http.keys[0].limits.burst", "must be in (0, 1], got 3"),
    ({"rpm": 5, "window_s": 0}, "http.keys[0].limits.window_s", "must be > 0, got 0"),
    ({"rpm": 5, "mode": "strict"}, "http.keys[0].limits.mode", "unknown key 'mode'"),
    ({}, "http.keys[0].limits", "expected rpm, tpm or both, got neither"),
    ("600", "http.keys[0].limits", "expected a mapping"),
])
def test_bad_key_limits_name_the_file_field_and_value(limits, where, says):
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(limits), "gateway.yaml")
    text = str(caught.value)
    assert text.startswith(f"gateway.yaml: {where}: ") and says in text, text


def test_a_deployment_budget_may_not_take_a_key_budget_name():
    data = _config({"rpm": 5})
    data["deployments"][0]["limits"] = {"rpm": 5, "key": "key:team-search"}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "gateway.yaml")
    assert "gateway.yaml: deployments[0].limits.key" in str(caught.value) and "'key:team-search'" in str(caught.value)


# --- outside the cluster: limits.leader_unavailable ---------------------------------------

def test_outside_the_cluster_a_key_spends_only_this_nodes_share_then_the_whole_budget_again():
    limits, clock = door(key("search", rpm=6))
    limits.set_cluster(False, 3)        # the node says: outside, 3 nodes known
    held = [limits.admit("search", HI, 5) for _ in range(2)]   # 6 / 3
    err = refusal(limits, "search")
    assert err.status == 429 and err.code == "key_rate_limited" and err.retry_after_s == pytest.approx(40.0)
    held[0].settle(E.QueueFull("full"))   # never sent: given back to the share and to the budget
    limits.admit("search", HI, 5)
    assert refusal(limits, "search").status == 429
    limits.set_cluster(True, 3)         # back: the cluster's budget, where the two held outside count
    assert [not limits.admit("search", HI, 5).settled for _ in range(4)] == [True] * 4
    assert refusal(limits, "search").status == 429   # 6 in the window


def test_outside_the_cluster_a_fail_key_and_a_node_never_in_it_are_refused_as_leader_unavailable():
    limits, _ = door(key("strict", rpm=6, leader_unavailable="fail"), key("open", rpm=6))
    limits.set_cluster(False, 3)
    err = refusal(limits, "strict")
    assert (err.status, err.code) == (503, "leader_unavailable") and "leader_unavailable: fail" in err.message
    assert ("x-should-retry", "true") in http_error(err).headers()
    assert not limits.admit("open", HI).settled      # local_share: admitted within its share
    limits.set_cluster(False, 0)        # a member that never joined: its share is unknown
    err = refusal(limits, "open")
    assert err.status == 503 and "has not been in the cluster yet" in err.message
    limits.set_cluster(True, 0)
    assert not limits.admit("strict", HI).settled


def test_key_limits_leader_unavailable_is_read_and_checked_at_the_edge():
    config = parse_config(_config({"rpm": 5, "leader_unavailable": "fail"}), "gateway.yaml")
    assert config.http.keys[0].limits.rate_limits("k").leader_unavailable == "fail"
    with pytest.raises(ConfigError) as caught:
        parse_config(_config({"rpm": 5, "leader_unavailable": "whole"}), "gateway.yaml")
    assert str(caught.value).startswith("gateway.yaml: http.keys[0].limits.leader_unavailable: ")
