import pytest

from actors import errors as E
from actors.core import retry as R
from actors.core.retry import RetryEngine, RetryPolicy

from fakes import FakeClock, FixedRandom


def engine(rand=0.5, **policy):
    clock = FakeClock()
    policy.setdefault("budget_min_retries", 1000)
    return RetryEngine(RetryPolicy(**policy), clock=clock, rand=FixedRandom(rand)), clock


def test_full_jitter_exponential_and_capped():
    eng, _ = engine(rand=0.5, base_delay_s=1, max_delay_s=5, multiplier=2, max_retries=10)
    delays = [eng.decide(E.ServerError(), n).delay_s for n in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 2.5, 2.5]  # 0.5 * min(5, 1, 2, 4, 8, 16)


def test_jitter_kinds():
    assert RetryPolicy(jitter="none", base_delay_s=1).backoff(2, 0.3) == 2
    assert RetryPolicy(jitter="equal", base_delay_s=1).backoff(2, 0.0) == 1
    assert RetryPolicy(jitter="equal", base_delay_s=1).backoff(2, 0.999) == pytest.approx(1.999)
    assert RetryPolicy(jitter="full", base_delay_s=1).backoff(1, 0.0) == 0
    # the random source really is used: different draws, different delays
    eng = RetryEngine(RetryPolicy(), rand=FixedRandom(0.1, 0.9), clock=FakeClock())
    assert eng.decide(E.Timeout(), 1).delay_s != eng.decide(E.Timeout(), 1).delay_s


def test_gives_up_after_max_retries():
    eng, _ = engine(max_retries=2)
    assert eng.decide(E.ServerError(), 1).retry
    assert eng.decide(E.ServerError(), 2).retry
    decision = eng.decide(E.ServerError(), 3)
    assert not decision.retry and "3 attempts" in decision.reason


@pytest.mark.parametrize("err", [E.BadRequest(), E.ContentFiltered(), E.AuthenticationError(),
                                 E.ContextLengthExceeded(), E.CircuitOpen(), E.RateLimited(retryable=False)])
def test_non_retryable_errors(err):
    eng, _ = engine()
    decision = eng.decide(err, 1)
    assert not decision.retry and "not retryable" in decision.reason


def test_not_idempotent():
    eng, _ = engine()
    assert not eng.decide(E.ServerError(), 1, idempotent=False).retry


def test_retry_after_overrides_backoff():
    eng, _ = engine(base_delay_s=0.1, max_delay_s=0.2)
    decision = eng.decide(E.RateLimited(retry_after_s=5.0), 1)
    assert decision.retry and decision.delay_s == 5.0 and "retry-after" in decision.reason
    assert eng.decide(E.RateLimited(retry_after_s=0.0), 1).delay_s == 0.0


def test_retry_after_ignored_when_not_respected():
    eng, _ = engine(rand=0.5, base_delay_s=1, respect_retry_after=False)
    assert eng.decide(E.RateLimited(retry_after_s=30.0), 1).delay_s == 0.5


def test_retry_after_beyond_cap_gives_up():
    eng, _ = engine(max_retry_after_s=60)
    decision = eng.decide(E.RateLimited(retry_after_s=3600), 1)
    assert not decision.retry and "exceeds" in decision.reason


def test_never_sleeps_past_deadline():
    eng, clock = engine(rand=0.999, base_delay_s=2, max_delay_s=2)
    assert eng.decide(E.ServerError(), 1, deadline=clock.now + 3).retry
    assert not eng.decide(E.ServerError(), 1, deadline=clock.now + 1.5).retry
    no = eng.decide(E.RateLimited(retry_after_s=10), 1, deadline=clock.now + 9)
    assert not no.retry and "deadline" in no.reason


def test_retry_budget_caps_retries_to_a_fraction_of_calls():
    clock = FakeClock()
    eng = RetryEngine(RetryPolicy(budget_ratio=0.2, budget_min_retries=2, budget_window_s=10,
                                  max_retries=5), clock=clock, rand=FixedRandom(0.0))
    for _ in range(50):
        eng.record_call()
    granted = sum(eng.decide(E.ServerError(), 1).retry for _ in range(100))
    assert granted == 2 + 10  # floor + 20% of 50 calls
    last = eng.decide(E.ServerError(), 1)
    assert not last.retry and "budget" in last.reason
    # the window slides: old calls and retries age out, the floor comes back
    clock.advance(10.5)
    assert sum(eng.decide(E.ServerError(), 1).retry for _ in range(10)) == 2


def test_budget_refused_decision_does_not_spend():
    clock = FakeClock()
    eng = RetryEngine(RetryPolicy(budget_min_retries=1), clock=clock, rand=FixedRandom(0.0))
    assert not eng.decide(E.BadRequest(), 1).retry   # refused before the budget
    assert eng.decide(E.ServerError(), 1).retry      # so the single retry is still there
    assert not eng.decide(E.ServerError(), 1).retry


@pytest.mark.parametrize("kwargs", [dict(max_retries=-1), dict(base_delay_s=5, max_delay_s=1),
                                    dict(multiplier=0.5), dict(jitter="random"), dict(budget_window_s=0)])
def test_policy_validation(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_policy_is_immutable():
    with pytest.raises(Exception):
        RetryPolicy().max_retries = 9


def test_an_error_class_may_allow_fewer_retries_than_the_policy():
    eng, _ = engine(max_retries=3)
    assert eng.decide(E.EmptyResponse(), 1).retry
    decision = eng.decide(E.EmptyResponse(), 2)
    assert not decision.retry and "2 attempts" in decision.reason
    assert eng.decide(E.ServerError(), 2).retry  # the policy's limit for everything else


def test_a_call_that_is_not_retried_says_why_with_no_delay():
    eng, _ = engine(max_retries=1)
    assert eng.decide(E.BadRequest("bad"), 1) == R.RetryDecision(False, 0.0, "bad_request is not retryable")
    busy = E.ServerError("busy", status=503, retryable=True)
    assert eng.decide(busy, 1, idempotent=False, sent=True) == \
        R.RetryDecision(False, 0.0, "request is not idempotent and the provider saw it")
    assert eng.decide(busy, 2) == R.RetryDecision(False, 0.0, "gave up after 2 attempts")


def test_a_retry_says_what_it_waits_for_and_a_deadline_reached_exactly_ends_it():
    eng, clock = engine(max_retries=2, jitter="none", base_delay_s=1.0)
    busy = E.ServerError("busy", status=503, retryable=True)
    assert eng.decide(busy, 1).reason == "backoff after server_error (retry 1 of 2)"
    told = E.RateLimited("slow down", retry_after_s=3.0)
    assert eng.decide(told, 1).reason == "server retry-after after rate_limited (retry 1 of 2)"
    delay = eng.decide(busy, 1).delay_s
    assert eng.decide(busy, 1, deadline=clock() + delay) == R.RetryDecision(False, 0.0,
                                                                            "deadline would pass before the retry")
    assert eng.decide(busy, 1, deadline=clock() + delay + 0.001).retry


def test_a_spent_retry_budget_says_so_with_no_delay():
    eng = RetryEngine(RetryPolicy(max_retries=3, budget_ratio=0.0, budget_min_retries=0), clock=FakeClock(),
                      rand=FixedRandom(0.5))
    busy = E.ServerError("busy", status=503, retryable=True)
    assert eng.decide(busy, 1) == R.RetryDecision(False, 0.0, "retry budget exhausted")
