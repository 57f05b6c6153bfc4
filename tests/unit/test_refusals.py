"""Refusals the gateway decides itself (core/refusals.py): the engine's, the router's, displacement under overload."""

from __future__ import annotations

import pytest

from actors import errors as E
from actors.core import refusals, routing
from actors.core.breaker import CircuitState
from actors.core.budget import BudgetSpec
from actors.core.priority_queue import Priority, RequestQueue
from actors.core.retry import RetryPolicy, caller_may_retry
from actors.types import AttemptInfo, Failed, Usage
from harness import Rig, limits


# -- displacement -------------------------------------------------------------------------------

def test_displace_takes_the_newest_of_the_lowest_level_below():
    q: RequestQueue[str] = RequestQueue(4)
    for key, p in [("l1", Priority.LOW), ("b1", Priority.BACKGROUND), ("l2", Priority.LOW), ("b2", Priority.BACKGROUND)]:
        assert q.push(key, key, p)
    assert q.displace(Priority.HIGH) == ("b2", "b2")
    assert q.displace(Priority.HIGH) == ("b1", "b1")
    assert q.displace(Priority.LOW) is None            # nothing below low is left
    assert q.displace(Priority.NORMAL, eligible=lambda item: item != "l2") == ("l1", "l1")
    assert [k for k, _ in q.items()] == ["l2"] and len(q) == 1


def test_displace_skips_tombstones_and_keeps_fifo_for_the_rest():
    q: RequestQueue[str] = RequestQueue(3)
    for key in ("a", "b", "c"):
        q.push(key, key, Priority.LOW)
    q.remove("c")
    assert q.displace(Priority.HIGH) == ("b", "b")
    q.push("h", "h", Priority.HIGH)
    assert [q.pop()[0], q.pop()[0]] == ["h", "a"] and q.pop() is None


def test_a_high_request_displaces_the_newest_queued_low_which_ends_once_with_queue_full():
    rig = Rig(workers=1, queue_capacity=2)
    rig.submit("busy", priority="low")
    rig.submit("low1", priority="low")
    rig.submit("low2", priority="low")
    rig.submit("high", priority="high")
    err = rig.terminal("low2").error
    assert isinstance(err, E.QueueFull) and err.retryable and err.retry_after_s == refusals.QUEUE_RETRY_S
    assert "high-priority request took" in err.message
    assert rig.terminals("low1") == [] and rig.terminals("high") == []
    rig.submit("high2", priority="high")   # the last low goes too
    rig.submit("high3", priority="high")   # nothing below high is queued: refused, nothing displaced
    assert isinstance(rig.terminal("low1").error, E.QueueFull) and isinstance(rig.terminal("high3").error, E.QueueFull)
    served = []
    for _ in range(2):
        rig.report(rig.dispatches()[-1].request.request_id)
        served.append(rig.dispatches()[-1].request.request_id)
    assert served == ["high", "high2"] and not rig.core.queue
    stats = rig.core.terminals.stats.snapshot(rig.wall())
    assert stats["refused"] == {"QueueFull": 3}   # two displaced, one refused at the door


def test_equal_priorities_never_displace_and_a_retry_keeps_its_place():
    rig = Rig(workers=1, queue_capacity=1, retry=RetryPolicy(max_retries=2, base_delay_s=0.1, jitter="none"))
    rig.submit("first", priority="low")
    rig.report("first", error=E.ServerError("502", status=502))
    rig.submit("busy", priority="low")       # the worker is free again: it runs now
    rig.advance(0.2)                         # "first" is queued again for its retry (front, past the capacity)
    rig.submit("low2", priority="low")
    assert isinstance(rig.terminal("low2").error, E.QueueFull)  # equal priority: refused
    rig.submit("high", priority="high")
    assert rig.terminals("first") == [] and isinstance(rig.terminal("high").error, E.QueueFull)


# -- the engine's own refusals, and what it pushes for the router ---------------------------------

def test_a_prompt_too_long_for_the_window_is_refused_before_it_is_queued():
    rig = Rig(max_input_tokens=100)
    rig.submit("long", messages=[{"role": "user", "content": "x" * 404}])
    err = rig.terminal("long").error
    assert err == refusals.context_too_long("d1", "openai", 101, 100) and rig.dispatches() == []
    rig.submit("fits", messages=[{"role": "user", "content": "x" * 400}])
    assert rig.dispatches("fits")
    assert rig.core.terminals.stats.snapshot(rig.wall())["refused"] == {"ContextLengthExceeded": 1}


def router_refusal(rig: Rig, now_unix: float, input_tokens: int | None = None) -> E.InferenceError:
    """What the router makes of the state this engine pushes (its LoadState's refusal), as the client does."""
    pushed = rig.core.refusal()
    candidate = routing.Candidate("d1", provider="openai", refusal=pushed[0] if pushed else None,
                                  refusal_until_unix=pushed[1] if pushed else None,
                                  max_input_tokens=rig.core.window)
    error = routing.refusal_of(candidate, input_tokens, now_unix)
    return refusals.for_group("d1", [("d1", error)])


def same(a: E.InferenceError, b: E.InferenceError) -> None:
    """Field by field; the retry-after within the time between the two clock readings."""
    fa, fb = a.fields(), b.fields()
    after_a, after_b = fa.pop("retry_after_s"), fb.pop("retry_after_s")
    assert type(a) is type(b) and fa == fb
    assert (after_a is None) == (after_b is None) and (after_a is None or abs(after_a - after_b) < 0.01)


def test_an_open_circuit_the_router_refuses_with_the_engines_own_error():
    rig = Rig()
    rig.breaker(CircuitState.OPEN, retry_in_s=30)
    routed = router_refusal(rig, rig.wall() + 5)
    rig.advance(5)
    rig.submit("r1")
    engine = rig.terminal("r1").error
    same(routed, engine)
    assert isinstance(engine, E.CircuitOpen) and engine.retryable and engine.provider == "openai"
    assert 24.9 < engine.retry_after_s <= 25.0
    assert rig.core.refusal() is not None
    rig.advance(26)   # past the probe time: nothing to refuse (the next call is the probe)
    assert rig.core.refusal() is None and routing.refusal_of(
        routing.Candidate("d1", refusal=E.CircuitOpen("x"), refusal_until_unix=rig.wall() - 1), None, rig.wall()) is None


def test_a_spent_rate_window_the_router_refuses_with_the_engines_own_error():
    rig = Rig(limits=limits(rpm=1, window_s=60))
    rig.submit("r1")
    rig.report("r1")
    routed = router_refusal(rig, rig.wall())
    rig.submit("r2", deadline_in=5)   # cannot wait for the window: refused
    same(routed, rig.terminal("r2").error)
    assert routed.retryable and routed.provider == "openai" and "rpm budget spent" in routed.message


def test_a_spent_spend_budget_the_router_refuses_with_the_engines_own_error():
    budget = BudgetSpec(usd=0.01, period="1d", deployment="d1").budget()
    rig = Rig()
    rig.start(budgets=[budget], price=None)
    rig.submit("r1")
    rig.report("r1", usage=Usage(1000, 1000))   # at the unknown-price rate, far past $0.01: spent in full
    routed = router_refusal(rig, rig.wall())
    rig.submit("r2")
    engine = rig.terminal("r2").error
    same(routed, engine)
    assert not engine.retryable and "budget deployment=d1/1d is spent" in engine.message and "resets at" in engine.message


def test_the_router_refuses_a_prompt_too_long_as_the_engine_does():
    rig = Rig(max_input_tokens=100)
    routed = router_refusal(rig, rig.wall(), input_tokens=routing.input_estimate([{"content": "x" * 404}]))
    rig.submit("long", messages=[{"role": "user", "content": "x" * 404}])
    same(routed, rig.terminal("long").error)


def test_a_group_refusal_is_the_one_that_lifts_first_naming_every_deployment():
    soon = E.CircuitOpen("circuit open for openai a", provider="openai", retry_after_s=3, retryable=True)
    late = E.BudgetExceeded("budget deployment=b/1d is spent", provider="anthropic", retry_after_s=900,
                            retryable=False)
    err = refusals.for_group("m", [("b", late), ("a", soon)])
    assert type(err) is E.CircuitOpen and err.retry_after_s == 3 and err.retryable and err.provider == "openai"
    assert err.message == ("no deployment of model 'm' can take the request: a (circuit open), b (no budget); "
                           "circuit open for openai a")
    assert soon.message == "circuit open for openai a"   # the engine's own error is left as it was
    small = refusals.context_too_long("s", "openai", 500, 100)
    big = refusals.context_too_long("b", "openai", 500, 400)
    assert refusals.for_group("m", [("s", small), ("b", big)]).max_tokens == 400


def test_router_refusals_are_tallied_and_sent_at_most_every_interval():
    tally = refusals.Tally(every_s=0.25)
    assert tally.add("m", "CircuitOpen", 10.0)             # the first goes at once
    assert tally.take(10.0) == {"m": {"CircuitOpen": 1}} and tally.due() is None
    assert not tally.add("m", "CircuitOpen", 10.1) and not tally.add("m", "BudgetExceeded", 10.2)
    assert tally.due() == pytest.approx(10.25)
    assert tally.add("n", "CircuitOpen", 10.3)
    assert tally.take(10.3) == {"m": {"CircuitOpen": 1, "BudgetExceeded": 1}, "n": {"CircuitOpen": 1}}


# -- one retry budget from the SDK to the provider -----------------------------------------------

@pytest.mark.parametrize("error, log, expected", [
    (E.QueueFull("full", retryable=True), [AttemptInfo("d1", "queue_full", None, 0.0, False)], True),
    (E.CircuitOpen("open", retryable=True), [AttemptInfo("d1", "circuit_open", None, 0.0, False)], True),
    (E.BudgetExceeded("rpm spent", retry_after_s=3), [AttemptInfo("d1", "budget_exceeded", None, 0.0, False)], True),
    (E.BudgetExceeded("budget spent", retryable=False), [], False),
    (E.ServerError("500", status=500), [AttemptInfo("d1", "server_error", 500)] * 3, False),   # retries spent
    (E.RateLimited("429", status=429, retry_after_s=1), [AttemptInfo("d1", "rate_limited", 429)], False),
    (E.EmptyResponse("empty"), [AttemptInfo("d1", "empty_response")] * 2, False),
    (E.ContextLengthExceeded("too long", status=400), [AttemptInfo("d1", "context_length_exceeded", 400)], False),
])
def test_the_caller_may_retry_only_what_can_help_and_duplicates_no_attempt(error, log, expected):
    assert caller_may_retry(error, log) is expected


def test_a_failed_terminal_after_attempts_says_so_in_its_attempt_list():
    rig = Rig(retry=RetryPolicy(max_retries=1, base_delay_s=0.1, jitter="none"))
    rig.submit("r1")
    rig.report("r1", error=E.ServerError("502", status=502))
    rig.advance(0.2)
    rig.report("r1", error=E.ServerError("502", status=502))
    failed = rig.terminal("r1")
    assert isinstance(failed, Failed) and failed.error.retryable   # the engine's error: a 502 is transient ...
    assert not caller_may_retry(failed.error, failed.attempt_log)  # ... but the caller must not repeat the call


def test_a_node_adds_its_clients_refusal_counts_bounded_whatever_arrives():
    node: dict[str, dict[str, int]] = {}
    refusals.add_counts(node, {"m": {"CircuitOpen": 2}})
    refusals.add_counts(node, {"m": {"CircuitOpen": 1, "BudgetExceeded": 1}, "n": {"X": -4, "Y": True}, 5: "junk"})
    assert node == {"m": {"CircuitOpen": 3, "BudgetExceeded": 1}, "n": {}}
    refusals.add_counts(node, {f"model{i}": {"CircuitOpen": 1} for i in range(400)}, max_models=10)
    assert len(node) == 10
    refusals.add_counts(node, ["not", "a", "dict"])


# -- the errors themselves: what every layer answers with ------------------------------------------

def test_a_full_queue_is_retryable_after_about_one_call_and_names_the_deployment():
    error = refusals.queue_full("d1", 8, "openai")
    assert (type(error), error.message, error.provider, error.retryable, error.retry_after_s) == (
        E.QueueFull, "queue of d1 is full (8 waiting)", "openai", True, refusals.QUEUE_RETRY_S)
    taken = refusals.displaced("d1", 8, "openai", "high")
    assert (taken.message, taken.provider, taken.retryable, taken.retry_after_s) == (
        "queue of d1 is full (8 waiting): a high-priority request took this request's place", "openai", True,
        refusals.QUEUE_RETRY_S)


def test_a_prompt_too_long_names_its_estimate_and_the_window():
    error = refusals.context_too_long("d1", "anthropic", 1200, 1000)
    assert (error.message, error.tokens, error.max_tokens, error.provider, error.retryable) == (
        "the prompt (about 1200 tokens) is longer than the 1000-token context window of deployment d1",
        1200, 1000, "anthropic", False)


def test_a_pushed_refusal_counts_its_retry_after_down_to_zero_and_leaves_the_original_alone():
    pushed = E.CircuitOpen("open", provider="openai")
    assert refusals.as_of(pushed, 1000.0, 990.5).retry_after_s == 9.5
    assert refusals.as_of(pushed, 1000.0, 1000.5).retry_after_s == 0.0   # lifted a moment ago: try now
    assert refusals.as_of(pushed, None, 5.0).retry_after_s is None and pushed.retry_after_s is None


def test_a_group_refusal_prefers_one_that_says_when_it_lifts_and_names_unknown_kinds():
    never = E.BudgetExceeded("budget deployment=a/1d is spent", provider="openai")   # no retry-after
    later = E.QueueFull("queue of b is full", provider="openai", retry_after_s=30.0, retryable=True)
    chosen = refusals.for_group("m", [("a", never), ("b", later)])
    assert type(chosen) is E.QueueFull and chosen.retry_after_s == 30.0
    assert chosen.message.startswith("no deployment of model 'm' can take the request: a (no budget), b (queue full); ")
    assert chosen.args == (chosen.message,)
    unknown = E.ContextLengthExceeded("long", max_tokens=None)
    known = E.ContextLengthExceeded("long too", max_tokens=1)
    assert refusals.for_group("m", [("u", unknown), ("k", known)]).message.endswith("long too")


def test_the_tally_starts_sendable_adds_up_and_waits_its_interval_exactly():
    tally = refusals.Tally()
    assert tally.every_s == 0.25 and tally.add("m", "CircuitOpen", 0.0)
    assert tally.add("m", "CircuitOpen", 0.0)   # not sent yet: still due
    assert tally.take(0.0) == {"m": {"CircuitOpen": 2}}
    assert not tally.add("m", "QueueFull", 0.1)
    assert tally.add("m", "QueueFull", 0.25)   # exactly one interval after the last send


def test_a_node_keeps_at_most_its_bounds_of_models_and_reasons_and_skips_junk_without_stopping():
    node: dict[str, dict[str, int]] = {}
    refusals.add_counts(node, {f"model{i}": {"CircuitOpen": 1} for i in range(300)})
    assert len(node) == 256
    refusals.add_counts(node, {"model0": {f"reason{i}": 1 for i in range(40)}})
    assert len(node["model0"]) == 32
    refusals.add_counts(node, {"model0": {"CircuitOpen": 5}})     # a reason it has: still counted when full
    assert node["model0"]["CircuitOpen"] == 6
    fresh: dict[str, dict[str, int]] = {}
    refusals.add_counts(fresh, {"junk": "not counts", "zero": {"QueueFull": 0}, "m": {"QueueFull": 2}})
    assert fresh == {"zero": {}, "m": {"QueueFull": 2}}
