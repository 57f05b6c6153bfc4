"""Routing as pure functions: each strategy on fixed state, the skips, the fallback plan, the
shared retry budget, the context-window table, the config checks, and the engine's side of
it (the retry budget a request brings, the attempt list, the pushed load)."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from actors import errors as E
from actors.core import routing as R
from actors.core.load import Decayed, LoadTracker, headroom
from actors.core.ratelimit import WindowUsage
from actors.errors import ConfigError
from actors.providers import runner_class
from actors.settings.loader import parse_config
from actors.types import Completed, Failed, Usage
from harness import Rig

UNKNOWN = Usage(reported=False)


def cand(name, **kw):
    return R.Candidate(name, **kw)


def names(ordered):
    return [c.deployment for c in ordered]


def seq(*values):
    """A rand() that returns these values in turn (then repeats the last)."""
    it = iter(values)
    last = [values[-1]]

    def rand():
        try:
            last[0] = next(it)
        except StopIteration:
            pass
        return last[0]
    return rand


# -- weighted ------------------------------------------------------------------------------

def test_weighted_picks_by_where_the_draw_falls_in_the_weights():
    cands = [cand("a", weight=3), cand("b", weight=1)]
    assert names(R.order("weighted", cands, rand=seq(0.0)))[0] == "a"
    assert names(R.order("weighted", cands, rand=seq(0.74)))[0] == "a"   # 0.74 * 4 = 2.96 < 3
    assert names(R.order("weighted", cands, rand=seq(0.76)))[0] == "b"   # 3.04 >= 3
    # Without replacement: the second is the one left.
    assert names(R.order("weighted", cands, rand=seq(0.76, 0.0))) == ["b", "a"]


def test_weighted_shares_follow_the_weights_and_zero_weight_is_last():
    rng = random.Random(7)
    cands = [cand("a", weight=3), cand("b", weight=1), cand("z", weight=0)]
    first = Counter(names(R.order("weighted", cands, rand=rng.random))[0] for _ in range(4000))
    assert first["z"] == 0
    assert 2850 <= first["a"] <= 3150, first   # 3000 expected; ~27 sd
    assert all(names(R.order("weighted", cands, rand=rng.random))[-1] == "z" for _ in range(50))


# -- least-busy, latency, cost, usage -------------------------------------------------------

def test_least_busy_picks_fewest_queued_plus_in_flight():
    cands = [cand("a", queued=3, in_flight=1), cand("b", queued=0, in_flight=2), cand("c", queued=1, in_flight=4)]
    assert names(R.order("least-busy", cands, rand=seq(0.5))) == ["b", "a", "c"]


def test_least_busy_breaks_ties_at_random_so_idle_replicas_share():
    rng = random.Random(1)
    cands = [cand("a"), cand("b")]
    firsts = Counter(names(R.order("least-busy", cands, rand=rng.random))[0] for _ in range(1000))
    assert 400 <= firsts["a"] <= 600, firsts


def test_latency_reads_ttft_for_streams_and_latency_for_calls():
    cands = [cand("a", latency_s=0.2, ttft_s=0.9), cand("b", latency_s=0.5, ttft_s=0.1)]
    assert names(R.order("latency", cands, rand=seq(0.5)))[0] == "a"
    assert names(R.order("latency", cands, rand=seq(0.5), streamed=True))[0] == "b"


def test_latency_ties_an_untimed_deployment_with_the_fastest_and_a_stream_without_ttft_uses_latency():
    cands = [cand("fast", latency_s=0.01), cand("new"), cand("slow", latency_s=0.5)]
    assert names(R.order("latency", cands, rand=seq(0.9, 0.1, 0.5))) == ["new", "fast", "slow"]
    assert names(R.order("latency", cands, rand=seq(0.1, 0.9, 0.5))) == ["fast", "new", "slow"]
    assert names(R.order("latency", [cand("a"), cand("b")], rand=seq(0.9, 0.1))) == ["b", "a"]
    cands = [cand("a", latency_s=0.3), cand("b", latency_s=0.1)]
    assert names(R.order("latency", cands, rand=seq(0.5), streamed=True)) == ["b", "a"]


def test_cost_uses_the_requests_estimate_so_the_mix_of_input_and_output_matters():
    cheap_in = cand("cheap-in", price_in=0.1, price_out=10.0)
    cheap_out = cand("cheap-out", price_in=5.0, price_out=1.0)
    assert names(R.order("cost", [cheap_in, cheap_out], rand=seq(0.5), input_tokens=10_000,
                         output_tokens=10))[0] == "cheap-in"
    assert names(R.order("cost", [cheap_in, cheap_out], rand=seq(0.5), input_tokens=10,
                         output_tokens=10_000))[0] == "cheap-out"


def test_cost_never_takes_an_unknown_price_for_a_cheap_one():
    cands = [cand("unknown"), cand("priced", price_in=50.0, price_out=50.0)]
    assert names(R.order("cost", cands, rand=seq(0.0), input_tokens=100, output_tokens=100)) == ["priced", "unknown"]


def test_usage_picks_the_most_headroom_and_no_limit_counts_as_full():
    cands = [cand("half", headroom=0.5), cand("most", headroom=0.9), cand("unlimited", headroom=None)]
    assert names(R.order("usage", cands, rand=seq(0.5))) == ["unlimited", "most", "half"]


def test_an_unknown_strategy_name_is_refused():
    with pytest.raises(ValueError, match="fastest"):
        R.order("fastest", [cand("a")], rand=random.random)


# -- skips before the strategy ---------------------------------------------------------------

def test_what_the_engine_refuses_and_too_small_a_window_are_skipped():
    circuit = E.CircuitOpen("circuit open for openai e", provider="openai", retryable=True)
    spent = E.BudgetExceeded("rpm budget spent in this window (5/5)", limit="rpm", provider="openai")
    assert R.skip_reason(cand("a", refusal=circuit, refusal_until_unix=30.0), now_unix=10.0) == "circuit_open"
    assert R.skip_reason(cand("a", circuit="half_open"), now_unix=10.0) is None
    assert R.skip_reason(cand("a", refusal=spent, refusal_until_unix=60.0), now_unix=10.0) == "no_budget"
    assert R.skip_reason(cand("a", headroom=0.01), now_unix=10.0) is None
    assert R.skip_reason(cand("a", max_input_tokens=100), input_tokens=101) == "context_window"
    assert R.skip_reason(cand("a", max_input_tokens=100), input_tokens=100) is None
    assert R.skip_reason(cand("a"), input_tokens=10**9) is None  # no known window: no check


def test_the_router_refuses_with_the_engines_pushed_error_as_of_its_own_clock():
    pushed = E.BudgetExceeded("budget deployment=a/1d is spent: $1 of $1 in this 1d period; it resets at X",
                              limit="deployment=a/1d", provider="openai", retryable=False)
    err = R.refusal_of(cand("a", refusal=pushed, refusal_until_unix=1000.0), None, 400.0)
    assert err is not pushed and err.retry_after_s == 600.0 and err.message == pushed.message
    assert not err.retryable and err.provider == "openai" and pushed.retry_after_s is None


# -- fallbacks --------------------------------------------------------------------------------

@pytest.mark.parametrize("error, kind", [
    (E.ServerError("500", status=500), "fallbacks"),
    (E.RateLimited("429", status=429), "fallbacks"),
    (E.NetworkError("refused"), "fallbacks"),
    (E.CircuitOpen("open"), "fallbacks"),
    (E.QueueFull("full"), "fallbacks"),
    (E.AuthenticationError("401", status=401), "fallbacks"),
    (E.ContextLengthExceeded("too long", status=400), "context_window_fallbacks"),
    (E.ContentFiltered("no", status=400), "content_policy_fallbacks"),
    (E.BadRequest("bad", status=400), None),
    (E.Cancelled("by caller"), None),
    (E.DeadlineExceeded("late"), None),
])
def test_each_error_triggers_its_own_fallback_kind_only(error, kind):
    assert R.fallback_kind(error) == kind


def policy(**kw):
    return R.RoutingPolicy(**kw)


def test_the_plan_follows_the_list_of_the_errors_kind_once_each():
    plan = R.FallbackPlan("gpt-4o", policy(fallbacks={"gpt-4o": ["claude", "gemini"]},
                                           content_policy_fallbacks={"gpt-4o": ["claude"]},
                                           context_window_fallbacks={"gpt-4o": ["big"]}))
    assert plan.next_model(E.ContentFiltered("no")) == "claude"
    assert plan.next_model(E.ServerError("500")) == "gemini"     # claude was visited already
    assert plan.next_model(E.ServerError("500")) is None
    assert plan.next_model(E.ContextLengthExceeded("long")) == "big"
    assert plan.next_model(E.BadRequest("bad")) is None


def test_fallbacks_of_a_fallback_are_not_followed_so_a_chain_cannot_loop():
    plan = R.FallbackPlan("a", policy(fallbacks={"a": ["b"], "b": ["a", "c"]}))
    assert plan.next_model(E.ServerError("500")) == "b"
    assert plan.next_model(E.ServerError("500")) is None


def test_a_requests_own_fallbacks_replace_the_configured_ones():
    plan = R.FallbackPlan("a", policy(fallbacks={"a": ["b"]}, content_policy_fallbacks={"a": ["c"]}), ["x", "y"])
    assert plan.next_model(E.ServerError("500")) == "x"
    assert plan.next_model(E.ContentFiltered("no")) == "c"     # only the generic list is replaced
    assert plan.next_model(E.ServerError("500")) == "y"
    none = R.FallbackPlan("a", policy(fallbacks={"a": ["b"]}), [])
    assert none.next_model(E.ServerError("500")) is None    # an empty list turns them off for the call


def test_one_retry_budget_adds_deployments_to_retries_instead_of_multiplying():
    budget = R.RequestRetries()
    budget.start(2)
    budget.start(5)                   # the first deployment's policy sets it
    assert budget.left == 2
    budget.charge(3)                  # 1 attempt + 2 retries on the primary
    assert budget.left == 0
    budget.charge(1)                  # a fallback's one attempt spends no retry
    assert budget.left == 0 and budget.spent == 2
    configured = R.RequestRetries(1)
    configured.start(9)
    assert configured.left == 1


# -- context windows ----------------------------------------------------------------------------

def test_context_windows_come_from_the_package_table_like_prices():
    family = {p: runner_class(p).family for p in ("openai", "anthropic", "openai_compatible")}
    assert R.context_window(family["openai"], "gpt-4o-mini-2024-07-18") == 128000
    assert R.context_window(family["anthropic"], "claude-sonnet-4-5-20250929") == 200000
    assert R.context_window(family["openai_compatible"], "mock-gpt") == 128000
    assert R.context_window(family["openai"], "some-model-nobody-knows") is None


# -- configuration ------------------------------------------------------------------------------

def config(routing=None, **dep):
    deps = [{"name": "east", "model": "gpt-4o", "provider": "openai", "endpoint": "http://127.0.0.1:9/v1", **dep},
            {"name": "claude", "model": "claude-sonnet", "provider": "anthropic", "endpoint": "http://127.0.0.1:9/v1"}]
    data = {"deployments": deps}
    if routing is not None:
        data["routing"] = routing
    return parse_config(data, "deploy.yaml", credentials=False)


def test_a_routing_section_is_read_with_its_overrides():
    cfg = config({"strategy": "least-busy", "models": {"claude-sonnet": {"strategy": "cost"}},
                  "fallbacks": {"gpt-4o": ["claude-sonnet"]}, "num_retries": 1}, weight=2, max_input_tokens=1000,
                 health_check={"interval_s": 10, "timeout_s": 2})
    assert cfg.routing.strategy_for("gpt-4o") == "least-busy" and cfg.routing.strategy_for("claude-sonnet") == "cost"
    assert cfg.routing.fallbacks == {"gpt-4o": ["claude-sonnet"]} and cfg.routing.num_retries == 1
    dep = cfg.deployments[0]
    assert dep.weight == 2.0 and dep.max_input_tokens == 1000 and dep.health_check == R.HealthCheck(10.0, 2.0)
    assert config().routing.strategy == "weighted"


@pytest.mark.parametrize("routing, field", [
    ({"strategy": "fastest"}, "routing.strategy"),
    ({"models": {"gpt-4o": {"strategy": "cheapest"}}}, "routing.models.gpt-4o.strategy"),
    ({"fallbacks": {"gpt-4o": ["claude-sonnet", "gemini-pro"]}}, "routing.fallbacks.gpt-4o[1]"),
    ({"context_window_fallbacks": {"gpt-4o-mini": ["gpt-4o"]}}, "routing.context_window_fallbacks.gpt-4o-mini"),
    ({"content_policy_fallbacks": {"gpt-4o": "claude-sonnet"}}, "routing.content_policy_fallbacks.gpt-4o"),
    ({"fallbacks": {"gpt-4o": ["gpt-4o"]}}, "routing.fallbacks.gpt-4o"),
    ({"models": {"nobody": {"strategy": "cost"}}}, "routing.models.nobody"),
    ({"retries": 3}, "routing.retries"),
])
def test_a_bad_routing_section_is_a_config_error_naming_the_field(routing, field):
    with pytest.raises(ConfigError) as info:
        config(routing)
    assert info.value.path == f"deploy.yaml: {field}", (info.value.path, info.value.message)


@pytest.mark.parametrize("dep, field", [
    ({"weight": -1}, "deployments[0].weight"),
    ({"max_input_tokens": 0}, "deployments[0].max_input_tokens"),
    ({"health_check": {"interval_s": 0}}, "deployments[0].health_check.interval_s"),
])
def test_bad_per_deployment_routing_fields_name_the_field(dep, field):
    with pytest.raises(ConfigError) as info:
        config(**dep)
    assert info.value.path == f"deploy.yaml: {field}", (info.value.path, info.value.message)


# -- the engine's side: the budget a request brings, the attempt list ---------------------------

def test_the_engine_retries_no_more_than_the_budget_the_request_brings():
    rig = Rig()
    rig.submit("r1", retry_budget=1)
    for _ in range(3):
        if rig.terminals("r1"):
            break
        rig.report("r1", error=E.ServerError("503", status=503), usage=UNKNOWN)
        rig.advance(1.0)
    assert len(rig.dispatches("r1")) == 2  # the policy allows 2 retries; the request had 1 left
    failed = rig.terminal("r1")
    assert isinstance(failed, Failed) and failed.attempts == 2


def test_a_spent_budget_means_one_attempt_and_none_means_the_policy():
    rig = Rig()
    rig.submit("r0", retry_budget=0)
    rig.report("r0", error=E.ServerError("503", status=503), usage=UNKNOWN)
    rig.advance(1.0)
    assert len(rig.dispatches("r0")) == 1 and isinstance(rig.terminal("r0"), Failed)
    rig.submit("rn")
    for _ in range(4):
        if rig.terminals("rn"):
            break
        rig.report("rn", error=E.ServerError("503", status=503), usage=UNKNOWN)
        rig.advance(1.0)
    assert len(rig.dispatches("rn")) == 3


def test_the_terminal_lists_every_attempt_with_kind_status_and_delay():
    rig = Rig()
    rig.submit("r1")
    rig.report("r1", error=E.RateLimited("429", status=429, retry_after_s=0.3), usage=UNKNOWN)
    rig.advance(0.5)
    rig.report("r1")
    done = rig.terminal("r1")
    assert isinstance(done, Completed) and done.attempts == 2
    first, last = done.attempt_log
    assert (first.deployment, first.error_kind, first.status, first.sent) == ("d1", "rate_limited", 429, True)
    assert first.delay_s == pytest.approx(0.3)
    assert (last.error_kind, last.status, last.sent) == ("", None, True)


def test_a_refusal_is_listed_as_not_sent():
    rig = Rig(workers=1, queue_capacity=0)
    rig.submit("busy")
    rig.submit("r2")
    (entry,) = rig.terminal("r2").attempt_log
    assert entry.error_kind == "queue_full" and not entry.sent


# -- the load an engine pushes ------------------------------------------------------------------

def test_decayed_latency_follows_recent_calls():
    mean = Decayed(half_life_s=10)
    mean.add(1.0, 0.0)
    mean.add(1.0, 1.0)
    assert mean.value == pytest.approx(1.0)
    mean.add(0.1, 100.0)  # ten half-lives later, the old samples weigh ~1/1000
    assert mean.value < 0.11


def record(**kw):
    base = dict(outcome="completed", error_kind="", streamed=False, latency_s=0.5, ttft_s=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_the_tracker_keeps_ttft_of_streams_and_latency_of_calls_from_records():
    now = [0.0]
    tracker = LoadTracker(clock=lambda: now[0], interval_s=0.15)
    tracker.observe([record(latency_s=0.4), record(streamed=True, latency_s=3.0, ttft_s=0.2),
                     record(outcome="failed", error_kind="ServerError", latency_s=9.0),
                     record(outcome="failed", error_kind="Timeout", latency_s=0.4)])
    state = tracker.state(queued=1, in_flight=2, circuit="closed", headroom=None, price_in=None, price_out=None,
                          at_unix=1.0)
    assert state.latency_s == pytest.approx(0.4) and state.ttft_s == pytest.approx(0.2)


def test_the_push_is_throttled_and_skipped_when_nothing_changed():
    now = [10.0]
    tracker = LoadTracker(clock=lambda: now[0], interval_s=0.15)

    def state(queued, at):
        return tracker.state(queued=queued, in_flight=0, circuit="closed", headroom=None, price_in=None,
                             price_out=None, at_unix=at)
    assert tracker.due(state(0, 1.0)) == 10.0
    tracker.mark_pushed(state(0, 1.0))
    assert tracker.due(state(0, 2.0)) is None            # only the time of reading differs
    now[0] = 10.05
    assert tracker.due(state(1, 2.0)) == pytest.approx(10.15)  # changed: pushed at the interval, not now
    now[0] = 10.2
    assert tracker.due(state(1, 2.0)) <= now[0]


def test_headroom_is_the_tighter_of_requests_and_tokens():
    assert headroom(WindowUsage(0, 0.0, 25, 10, 100, 1000)) == pytest.approx(0.75)
    assert headroom(WindowUsage(0, 0.0, 1, 900, 100, 1000)) == pytest.approx(0.1)
    assert headroom(WindowUsage(0, 0.0, 200, 0, 100, None)) == 0.0
    assert headroom(WindowUsage(0, 0.0, 5, 5, None, None)) is None


def test_the_pre_call_estimate_counts_text_only_and_errs_low():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 400_000}}
    messages = [{"role": "system", "content": "x" * 400},
                {"role": "user", "content": [{"type": "text", "text": "y" * 800}, image]}]
    assert R.input_estimate(messages) == 300   # a large image never makes a prompt look too long
    assert R.input_estimate([{"role": "assistant", "content": None, "tool_calls": []}]) == 0


def test_an_open_circuit_past_its_retry_time_is_tried_so_its_probe_can_close_it():
    open_until_20 = cand("a", refusal=E.CircuitOpen("open", retryable=True), refusal_until_unix=20.0)
    assert R.skip_reason(open_until_20, now_unix=19.9) == "circuit_open"
    assert R.skip_reason(open_until_20, now_unix=20.0) is None
    no_time = cand("a", refusal=E.CircuitOpen("open", retryable=True))
    assert R.skip_reason(no_time, now_unix=99.0) == "circuit_open"   # no retry time known


# -- one model group: the plan and where a failure leads (what GatewayClient._over_group runs) --

def test_a_group_plan_drops_what_would_refuse_and_orders_the_rest_by_the_strategy():
    circuit = E.CircuitOpen("circuit open for openai a", provider="openai", retryable=True)
    cands = [cand("a", refusal=circuit, refusal_until_unix=50.0), cand("b", in_flight=3), cand("c", in_flight=1),
             cand("small", max_input_tokens=10)]
    plan = R.plan_group("m", cands, strategy="least-busy", rand=seq(0.5), streamed=False, input_tokens=100,
                        output_tokens=10, now_unix=10.0)
    assert names(plan.ordered) == ["c", "b"]
    assert [(name, type(error)) for name, error in plan.refused] == [("a", E.CircuitOpen),
                                                                     ("small", E.ContextLengthExceeded)]
    assert plan.refusal is None   # something may be tried: no refusal for the group
    # The strategy sees the request: a stream orders by time to first token.
    timed = [cand("slow", latency_s=1.0, ttft_s=0.9), cand("fast", latency_s=2.0, ttft_s=0.1)]
    assert names(R.plan_group("m", timed, strategy="latency", rand=seq(0.5), streamed=True, input_tokens=0,
                              output_tokens=0, now_unix=0.0).ordered) == ["fast", "slow"]
    assert names(R.plan_group("m", timed, strategy="latency", rand=seq(0.5), streamed=False, input_tokens=0,
                              output_tokens=0, now_unix=0.0).ordered) == ["slow", "fast"]


def test_a_group_with_nothing_usable_is_refused_with_its_engines_own_error_one_per_deployment():
    later, sooner = (E.CircuitOpen("open", provider="openai", retryable=True) for _ in range(2))
    cands = [cand("a", refusal=later, refusal_until_unix=100.0), cand("a", refusal=sooner, refusal_until_unix=20.0),
             cand("b", refusal=E.BudgetExceeded("spent", limit="rpm"), refusal_until_unix=60.0)]
    plan = R.plan_group("m", cands, strategy="weighted", rand=seq(0.5), streamed=False, input_tokens=0,
                        output_tokens=0, now_unix=10.0)
    assert plan.ordered == [] and [name for name, _ in plan.refused] == ["a", "b"]
    assert plan.refused[0][1].retry_after_s == 90.0       # the first replica's refusal stands for its deployment
    refusal = plan.refusal
    assert isinstance(refusal, E.BudgetExceeded) and refusal.retry_after_s == 50.0   # the one that lifts first
    assert "a (circuit open), b (no budget)" in refusal.message
    empty = R.plan_group("m", [], strategy="weighted", rand=seq(0.5), streamed=False, input_tokens=0,
                         output_tokens=0, now_unix=0.0)
    assert empty.ordered == [] and empty.refusal is None   # no deployment at all: the caller says NotFound


@pytest.mark.parametrize("error, streamed, idempotent, sent, late, step", [
    (E.ServerError("500", status=500), False, True, True, False, "next"),      # the deployment's fault: the next one
    (E.ServerError("500", status=500), True, True, True, False, "end"),        # a token reached the caller
    (E.ServerError("500", status=500), False, False, True, False, "end"),      # may have run upstream
    (E.QueueFull("full"), False, False, False, False, "next"),                 # never sent: safe elsewhere
    (E.GatewayTimeout("no answer"), False, True, False, False, "end"),          # the deadline's grace is spent
    (E.ServerError("500", status=500), False, True, True, True, "fallback"),    # no time for the group's next
    (E.ContextLengthExceeded("long", status=400), False, True, True, False, "fallback"),   # its own kind of fallback
    (E.BadRequest("bad", status=400), False, True, True, False, "fallback"),    # no fallback takes it: the caller's
])
def test_after_a_failure_the_call_ends_moves_within_its_group_or_goes_to_its_fallbacks(
        error, streamed, idempotent, sent, late, step):
    assert R.after_failure(error, streamed=streamed, idempotent=idempotent, sent=sent, deadline_passed=late) == step


def test_an_engine_that_answered_circuit_open_is_held_until_its_retry_time_within_bounds():
    now = 1000.0
    assert R.held_until(E.CircuitOpen("open", retry_at_unix_ms=1_004_000), now) == 1004.0
    assert R.held_until(E.CircuitOpen("open"), now) == now + R.CIRCUIT_HOLD_S          # no retry time given
    assert R.held_until(E.CircuitOpen("open", retry_at_unix_ms=9_999_000_000), now) == now + R.MAX_CIRCUIT_HOLD_S
    assert R.held_until(E.CircuitOpen("open", retry_at_unix_ms=999_000), now) == now + 0.05   # already past
    answer = E.CircuitOpen("open", retry_at_unix_ms=1_004_000)
    assert R.held_refusal((1004.0, answer), now) == (answer, 1004.0)
    assert R.held_refusal((1001.0, E.CircuitOpen("open")), now)[1] == 1001.0   # no retry time: the hold's end
    assert R.held_refusal((1004.0, answer), 1004.0) is None                      # over


def test_the_output_estimate_is_the_calls_max_tokens_else_a_typical_answer():
    assert R.output_estimate(50) == 50
    assert R.output_estimate(None) == R.output_estimate(True) == R.output_estimate("50") == R.DEFAULT_OUTPUT_TOKENS


# -- edges the mutation run found unpinned (docs/architecture.md, "How the core is tested") ---------

def test_the_input_estimate_counts_text_parts_only_and_rounds_down():
    assert R.input_estimate([{"content": "abc"}]) == 0
    assert R.input_estimate([{"content": "abcd"}, {"content": "efgh"}]) == 2
    assert R.input_estimate([{"content": [{"type": "text", "text": "abcdefgh"}, {"type": "image_url"}]}]) == 2
    assert R.input_estimate(({"content": "a" * 400},)) == 0           # not a list: nothing to count
    assert R.input_estimate(["a" * 400, {"content": "abcd"}]) == 1      # not a message: skipped


def test_a_pushed_refusal_of_another_kind_is_skipped_under_its_own_name():
    full = E.QueueFull("queue of a is full", retry_after_s=1.0)
    assert R.skip_reason(cand("a", refusal=full, refusal_until_unix=None)) == "queue_full"


def test_a_model_without_fallbacks_has_none_and_retries_never_go_negative():
    plan = R.FallbackPlan("m", R.RoutingPolicy())
    assert plan.targets("fallbacks") == [] and plan.next_model(E.ServerError("x", status=500)) is None
    retries = R.RequestRetries()
    retries.start(-2)
    assert retries.retries == 0 and retries.left == 0


@pytest.mark.parametrize("value, ok", [(0.5, True), (1, True), (0, False), (-1, False), (float("inf"), False),
                                       (float("nan"), False), (True, False), ("5", False)])
def test_health_check_times_are_positive_finite_numbers(value, ok):
    if ok:
        assert R.HealthCheck(interval_s=value, timeout_s=value).timeout_s == value
    else:
        with pytest.raises(ValueError, match="must be > 0"):
            R.HealthCheck(timeout_s=value)


def test_a_decayed_mean_weighs_each_sample_by_its_age():
    mean = Decayed(half_life_s=10.0)
    mean.add(10.0, 0.0)
    mean.add(20.0, 0.0)
    assert mean.value == 15.0                    # same moment: equal weights
    mean.add(40.0, 10.0)                         # one half-life later: the first two weigh half
    assert mean.value == pytest.approx((0.5 * 30.0 + 40.0) / (0.5 * 2 + 1))
    mean.add(0.0, 5.0)                           # a sample from the past counts as now
    assert mean.at == 5.0


def test_a_held_refusal_whose_retry_time_is_now_repeats_the_holds_end():
    answer = E.CircuitOpen("open", retry_at_unix_ms=1_002_000)
    assert R.held_refusal((1004.0, answer), 1002.0) == (answer, 1004.0)
    assert R.held_refusal((1004.0, answer), 1001.9) == (answer, 1002.0)


def test_a_routing_entry_for_an_unserved_model_lists_the_models_that_are_served():
    with pytest.raises(ValueError) as info:
        R.check_models(R.RoutingPolicy(models={"nobody": R.ModelRouting()}), ["gpt-4o", "claude", "gpt-4o"])
    assert str(info.value) == "routing.models.nobody: no deployment serves model 'nobody' (models: claude, gpt-4o)"


def test_a_cost_plan_prices_the_calls_own_tokens_and_names_its_model():
    cheap_in = cand("cheap-in", price_in=1.0, price_out=30.0)
    cheap_out = cand("cheap-out", price_in=10.0, price_out=2.0)
    prompt_heavy = R.plan_group("gpt", [cheap_out, cheap_in], strategy="cost", rand=seq(0.5), streamed=False,
                                input_tokens=100_000, output_tokens=10, now_unix=0.0)
    answer_heavy = R.plan_group("gpt", [cheap_in, cheap_out], strategy="cost", rand=seq(0.5), streamed=False,
                                input_tokens=10, output_tokens=100_000, now_unix=0.0)
    assert names(prompt_heavy.ordered) == ["cheap-in", "cheap-out"] and prompt_heavy.model == "gpt"
    assert names(answer_heavy.ordered) == ["cheap-out", "cheap-in"]
    half_priced = cand("half", price_in=1.0)            # an unknown output price: tried after the priced ones
    assert names(R.order("cost", [half_priced, cheap_in], rand=seq(0.5), input_tokens=10, output_tokens=10)) == \
        ["cheap-in", "half"]


def test_weighted_order_follows_the_weights_to_the_boundary_and_keeps_zero_weights_in_config_order():
    a, b = cand("a", weight=0.5), cand("b", weight=0.5)
    assert names(R.order("weighted", [a, b], rand=seq(0.6, 0.0))) == ["b", "a"]
    assert names(R.order("weighted", [a, b], rand=seq(0.5, 0.0))) == ["b", "a"]     # 0.5 is past a's half
    assert names(R.order("weighted", [a, b], rand=seq(0.4, 0.0))) == ["a", "b"]
    zero = [cand("z1", weight=0.0), cand("z2", weight=0.0)]
    assert names(R.order("weighted", zero, rand=seq(0.9))) == ["z1", "z2"]


def test_usage_order_treats_an_unlimited_deployment_as_having_all_its_window_left():
    full, unlimited = cand("full", headroom=1.0), cand("unlimited")
    assert names(R.order("usage", [full, unlimited], rand=seq(0.5))) == ["full", "unlimited"]   # a tie: config order
    assert names(R.order("usage", [cand("half", headroom=0.5), unlimited], rand=seq(0.5))) == ["unlimited", "half"]


def test_an_unknown_strategy_names_the_known_ones():
    with pytest.raises(ValueError) as info:
        R.order("fastest", [cand("a")], rand=seq(0.5))
    assert str(info.value) == ("unknown routing strategy 'fastest'; expected one of weighted, least-busy, latency, "
                               "cost, usage")
