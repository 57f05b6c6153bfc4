import pickle

import pytest

from actors import errors as E
from actors.core.breaker import BreakerConfig, CircuitBreaker, CircuitState

from fakes import FakeClock

WALL0 = 1_700_000_000.0


def make(**cfg):
    clock = FakeClock(100.0)
    wall = FakeClock(WALL0)

    def tick(seconds):
        clock.advance(seconds)
        wall.advance(seconds)

    defaults = dict(consecutive_failures=3, failure_rate=0.5, min_calls=10, window_s=10, open_s=5,
                    open_multiplier=2, max_open_s=40, half_open_probes=2)
    defaults.update(cfg)
    breaker = CircuitBreaker("openai", "https://api.openai.com/v1", BreakerConfig(**defaults),
                             clock=clock, wall_clock=wall)
    transitions = []
    breaker.add_listener(lambda b, old, new: transitions.append((old, new)))
    return breaker, tick, transitions


def fail(b, n=1, err=None):
    for _ in range(n):
        with pytest.raises(E.InferenceError):
            b.run(lambda: (_ for _ in ()).throw(err or E.ServerError("boom", status=503)))


def ok(b, n=1):
    for _ in range(n):
        assert b.run(lambda: "fine") == "fine"


def test_opens_on_consecutive_failures_and_check_raises_circuit_open_with_times():
    b, tick, transitions = make()
    fail(b, 2)
    assert b.state is CircuitState.CLOSED
    fail(b)
    assert b.state is CircuitState.OPEN
    assert transitions == [(CircuitState.CLOSED, CircuitState.OPEN)]
    tick(1)
    with pytest.raises(E.CircuitOpen) as info:
        b.check()
    err = info.value
    assert err.provider == "openai" and err.endpoint == "https://api.openai.com/v1"
    assert err.opened_at_unix_ms == int(WALL0 * 1000)
    assert err.retry_at_unix_ms == int((WALL0 + 5) * 1000)
    assert err.retry_after_s == pytest.approx(4)
    assert pickle.loads(pickle.dumps(err)) == err


def test_success_resets_the_consecutive_streak():
    b, _, _ = make(min_calls=1000)
    for _ in range(5):
        fail(b, 2)
        ok(b)
    assert b.state is CircuitState.CLOSED


@pytest.mark.parametrize("err", [E.RateLimited(status=429), E.ContentFiltered(), E.BadRequest(status=400),
                                 E.AuthenticationError(status=401), E.NotFound(status=404),
                                 E.ContextLengthExceeded()])
def test_non_counted_errors_neither_count_nor_reset(err):
    b, _, _ = make()
    fail(b, 20, err)
    assert b.state is CircuitState.CLOSED
    assert b.snapshot().window_calls == 0
    fail(b, 2)
    fail(b, 1, err)  # does not reset the streak of 2 server errors...
    fail(b, 1)       # ...so the third counted failure trips
    assert b.state is CircuitState.OPEN


@pytest.mark.parametrize("err", [E.ServerError(status=500), E.Overloaded(status=529), E.Timeout(),
                                 E.NetworkError(), E.StreamError()])
def test_counted_errors(err):
    b, _, _ = make()
    fail(b, 3, err)
    assert b.state is CircuitState.OPEN


def test_failure_rate_over_window_with_minimum_calls():
    b, tick, _ = make(consecutive_failures=100, min_calls=10, failure_rate=0.5)
    for _ in range(4):  # 4 failures, 4 successes: rate 50% but only 8 calls
        fail(b)
        ok(b)
    assert b.state is CircuitState.CLOSED
    ok(b)
    fail(b)  # 10 calls, 5 failures -> 50%
    assert b.state is CircuitState.OPEN


def test_window_slides_so_old_failures_expire():
    b, tick, _ = make(consecutive_failures=100, min_calls=10, failure_rate=0.5, window_s=10)
    for _ in range(4):
        fail(b)
        ok(b)
    tick(11)
    ok(b, 5)
    fail(b, 4)  # within the window: 9 calls, 4 failures (older ones expired)
    assert b.state is CircuitState.CLOSED
    assert (b.snapshot().window_calls, b.snapshot().window_failures) == (9, 4)


def test_half_open_admits_bounded_probes_and_closes_after_they_succeed():
    b, tick, transitions = make(half_open_probes=2)
    fail(b, 3)
    tick(5)
    assert b.state is CircuitState.HALF_OPEN
    g1 = b.check()
    g2 = b.check()
    with pytest.raises(E.CircuitOpen):
        b.check()  # only two probes may be in flight
    b.record_success(g1)
    assert b.state is CircuitState.HALF_OPEN
    with pytest.raises(E.CircuitOpen):
        b.check()  # one probe succeeded, one in flight: both slots still used
    b.record_success(g2)
    assert b.state is CircuitState.CLOSED
    assert transitions == [(CircuitState.CLOSED, CircuitState.OPEN), (CircuitState.OPEN, CircuitState.HALF_OPEN),
                           (CircuitState.HALF_OPEN, CircuitState.CLOSED)]
    b.check()


def test_failed_probe_reopens_for_longer_and_durations_are_capped():
    b, tick, _ = make(open_s=5, open_multiplier=2, max_open_s=12)
    fail(b, 3)
    durations = []
    for _ in range(4):
        snap = b.snapshot()
        durations.append((snap.retry_at_unix_ms - snap.opened_at_unix_ms) / 1000)
        tick(durations[-1])
        assert b.state is CircuitState.HALF_OPEN
        fail(b)
        assert b.state is CircuitState.OPEN
    assert durations == [5, 10, 12, 12]


def test_non_counted_probe_outcome_frees_its_slot():
    b, tick, _ = make(half_open_probes=1)
    fail(b, 3)
    tick(5)
    fail(b, 1, E.RateLimited())
    assert b.state is CircuitState.HALF_OPEN
    ok(b)
    assert b.state is CircuitState.CLOSED


def test_lost_probe_slot_is_freed_after_probe_timeout():
    b, tick, _ = make(half_open_probes=1, probe_timeout_s=30)
    fail(b, 3)
    tick(5)
    b.check()  # the probe's worker dies: no outcome ever arrives
    with pytest.raises(E.CircuitOpen):
        b.check()
    tick(31)
    g = b.check()
    b.record_success(g)
    assert b.state is CircuitState.CLOSED


def test_stale_outcomes_from_older_generations_are_ignored():
    b, tick, _ = make(half_open_probes=1)
    old = b.check()  # a slow call admitted while closed
    fail(b, 3)
    tick(5)
    assert b.state is CircuitState.HALF_OPEN
    b.record_success(old)  # arrives late: must not close the circuit
    assert b.state is CircuitState.HALF_OPEN
    b.record_failure(old)  # nor re-open it
    assert b.state is CircuitState.HALF_OPEN


def test_outcomes_while_open_are_ignored():
    b, tick, _ = make()
    fail(b, 3)
    opened = b.snapshot()
    b.record_failure()
    b.record_success()
    assert b.snapshot().retry_at_unix_ms == opened.retry_at_unix_ms
    assert b.state is CircuitState.OPEN


def test_trip_count_decays_after_a_healthy_period():
    b, tick, _ = make(open_s=5, max_open_s=40, half_open_probes=1)
    fail(b, 3)
    tick(5)
    ok(b)
    fail(b, 3)
    assert b.snapshot().trips == 2  # came back quickly: escalated
    tick(10)
    ok(b)
    tick(41)
    fail(b, 3)
    snap = b.snapshot()
    assert snap.trips == 1 and snap.retry_at_unix_ms - snap.opened_at_unix_ms == 5000


def test_provider_retry_after_lengthens_open_time():
    b, _, _ = make(open_s=5, max_open_s=40)
    fail(b, 2)
    fail(b, 1, E.ServerError(status=503, retry_after_s=30))
    snap = b.snapshot()
    assert snap.retry_at_unix_ms - snap.opened_at_unix_ms == 30000


def test_force_open_and_reset():
    b, tick, transitions = make()
    b.force_open(60)
    with pytest.raises(E.CircuitOpen):
        b.check()
    b.reset()
    assert b.state is CircuitState.CLOSED
    b.check()


def test_unexpected_exceptions_propagate_without_counting():
    b, _, _ = make()
    for _ in range(5):
        with pytest.raises(KeyError):
            b.run(lambda: {}["x"])
    assert b.state is CircuitState.CLOSED and b.snapshot().window_calls == 0


@pytest.mark.parametrize("kwargs", [dict(consecutive_failures=0), dict(failure_rate=0), dict(failure_rate=1.5),
                                    dict(open_s=0), dict(open_s=10, max_open_s=5), dict(half_open_probes=0)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        BreakerConfig(**kwargs)


def test_breaker_view_admits_locally_and_asks_for_probes():
    from actors.core.breaker import BreakerView

    b, tick, _ = make()
    view = BreakerView()
    assert view.admit(0) == (BreakerView.ADMIT, 0)  # nothing pushed yet: closed
    view.update(b.snapshot())
    assert view.admit(WALL0 * 1000) == (BreakerView.ADMIT, b.generation)
    fail(b, 3)
    view.update(b.snapshot())
    verdict, err = view.admit(WALL0 * 1000 + 1000)
    assert verdict == BreakerView.REFUSE and isinstance(err, E.CircuitOpen)
    assert view.admit(WALL0 * 1000 + 5000)[0] == BreakerView.NEED_PROBE  # open time over
    old = b.snapshot()
    tick(5)
    view.update(b.snapshot())
    view.update(old)  # an older push arriving late is ignored
    assert view.state is CircuitState.HALF_OPEN


def test_the_failure_rate_trips_on_its_own_at_its_threshold():
    b, _, _ = make(consecutive_failures=100, min_calls=4, failure_rate=0.5)
    ok(b)
    fail(b)
    ok(b)      # 3 calls: under min_calls, whatever the rate
    assert b.state is CircuitState.CLOSED
    fail(b)    # 4 calls, 2 failures, never two in a row: exactly the rate
    assert b.state is CircuitState.OPEN and b.snapshot().consecutive_failures == 1


def test_a_failure_rate_under_the_threshold_does_not_trip():
    b, _, _ = make(consecutive_failures=100, min_calls=4, failure_rate=0.75)
    for _ in range(3):
        ok(b)
        fail(b)
    assert b.state is CircuitState.CLOSED  # 3 of 6 failed: 50% < 75%


def test_closing_forgets_the_failures_that_opened_the_circuit():
    b, tick, _ = make(consecutive_failures=3, min_calls=4, failure_rate=0.5, half_open_probes=1)
    ok(b)
    fail(b)
    ok(b)
    fail(b)    # tripped on the rate
    tick(5)
    ok(b)      # the probe closes it
    snap = b.snapshot()
    assert snap.state is CircuitState.CLOSED and (snap.window_calls, snap.window_failures) == (0, 0)
    fail(b, 2)  # a fresh window under min_calls, and a fresh streak under consecutive_failures
    assert b.state is CircuitState.CLOSED
    fail(b)
    assert b.state is CircuitState.OPEN  # the third in a row


def test_closing_forgets_the_streak_that_opened_the_circuit():
    b, tick, _ = make(consecutive_failures=3, min_calls=100, half_open_probes=1)
    fail(b, 3)
    tick(5)
    ok(b)
    fail(b, 2)
    assert b.state is CircuitState.CLOSED and b.snapshot().consecutive_failures == 2


def _trip_and_half_open_while_running(b, tick):
    """A call's fn during which the circuit opens (another caller's failures) and turns half-open."""
    def during():
        b.record_failure()
        tick(5)
        assert b.state is CircuitState.HALF_OPEN
    return during


def test_run_reports_a_success_under_the_generation_it_was_admitted_in():
    b, tick, _ = make(consecutive_failures=1, half_open_probes=1)
    during = _trip_and_half_open_while_running(b, tick)
    b.run(lambda: during())   # admitted while closed, ends after the circuit reopened half-open
    assert b.state is CircuitState.HALF_OPEN   # a late success must not close it


def test_run_reports_a_failure_under_the_generation_it_was_admitted_in():
    b, tick, _ = make(consecutive_failures=1, half_open_probes=1)
    during = _trip_and_half_open_while_running(b, tick)

    def fn():
        during()
        raise E.ServerError("late", status=500)
    with pytest.raises(E.ServerError):
        b.run(fn)
    assert b.state is CircuitState.HALF_OPEN   # a late failure must not re-open it


def test_run_frees_only_its_own_probe_slot_on_an_unexpected_exception():
    b, tick, _ = make(consecutive_failures=1, half_open_probes=1)
    b.record_failure()
    tick(5)

    def fn():  # admitted as the half-open probe; meanwhile the circuit re-opens and a new probe goes
        b.record_failure(b.generation)
        tick(10)
        b.check()
        raise KeyError("x")
    with pytest.raises(KeyError):
        b.run(fn)
    with pytest.raises(E.CircuitOpen):
        b.check()   # the new probe still holds the one slot


def test_run_frees_its_probe_slot_on_an_unexpected_exception():
    b, tick, _ = make(consecutive_failures=1, half_open_probes=1)
    b.record_failure()
    tick(5)
    with pytest.raises(KeyError):
        b.run(lambda: {}["x"])
    b.record_success(b.check())   # the slot is free again
    assert b.state is CircuitState.CLOSED


def test_reset_forgets_the_escalation_too():
    b, tick, _ = make(open_s=5, max_open_s=40, half_open_probes=1)
    fail(b, 3)
    tick(5)
    fail(b)                   # the probe failed: 10 s now
    assert b.snapshot().trips == 2
    b.reset()
    fail(b, 3)
    snap = b.snapshot()
    assert snap.trips == 1 and snap.retry_at_unix_ms - snap.opened_at_unix_ms == 5000


def test_each_transition_is_one_generation_and_only_transitions_are():
    b, tick, transitions = make(half_open_probes=1)
    b.reset()                                   # already closed: nothing happens
    assert b.generation == 0 and transitions == []
    fail(b, 3)
    tick(5)
    assert b.state is CircuitState.HALF_OPEN and b.generation == 2
    ok(b)
    assert b.generation == 3
    b.force_open(60)
    b.force_open(90)                            # opened again while open: a new open period, a new generation
    assert b.generation == 5 and transitions[-2:] == [(CircuitState.CLOSED, CircuitState.OPEN),
                                                     (CircuitState.OPEN, CircuitState.OPEN)]
    snap = b.snapshot()
    assert snap.retry_at_unix_ms - snap.opened_at_unix_ms == 90_000


def test_a_probe_slot_is_free_again_exactly_at_its_timeout():
    b, tick, _ = make(half_open_probes=1, probe_timeout_s=30)
    fail(b, 3)
    tick(5)
    b.check()
    tick(30)
    b.check()


def test_a_failed_probe_with_a_retry_after_reopens_for_that_long():
    b, tick, _ = make(open_s=5, max_open_s=40, half_open_probes=1)
    fail(b, 3)
    tick(5)
    fail(b, 1, E.ServerError("busy", status=503, retry_after_s=25))
    snap = b.snapshot()
    assert snap.state is CircuitState.OPEN and snap.retry_at_unix_ms - snap.opened_at_unix_ms == 25_000


def test_a_stale_uncounted_outcome_does_not_free_the_current_probes_slot():
    b, tick, _ = make(half_open_probes=1)
    old = b.check()
    fail(b, 3)
    tick(5)
    b.check()                                   # the current probe
    b.record_error(E.RateLimited("429", status=429), old)
    with pytest.raises(E.CircuitOpen):
        b.check()


def test_the_escalation_is_forgotten_after_exactly_max_open_s_closed():
    b, tick, _ = make(open_s=5, max_open_s=40, half_open_probes=1)
    fail(b, 3)
    tick(5)
    ok(b)
    tick(40)
    fail(b, 3)
    assert b.snapshot().trips == 1


def test_the_refusal_while_open_names_the_circuit_and_counts_down_to_the_probe():
    b, tick, _ = make(open_s=5)
    fail(b, 3)
    tick(2)
    err = b.snapshot().circuit_open_error((WALL0 + 2) * 1000)
    assert err.message == "circuit open for openai https://api.openai.com/v1" and err.retry_after_s == 3.0
    assert b.snapshot().circuit_open_error((WALL0 + 9) * 1000).retry_after_s == 0.0   # the probe is due


def test_the_window_keeps_one_bucket_per_second_however_many_calls():
    b, tick, _ = make(consecutive_failures=1000, min_calls=1000)
    ok(b, 50)
    fail(b, 50)
    tick(1)
    ok(b)
    assert len(b._buckets) == 2 and b.snapshot().window_calls == 101


def test_record_passes_the_generation_on_so_stale_outcomes_are_ignored_there_too():
    b, tick, _ = make(half_open_probes=1)
    old = b.check()
    fail(b, 3)
    tick(5)
    assert b.state is CircuitState.HALF_OPEN
    b.record(None, old)
    b.record(E.ServerError("late", status=500), old)
    assert b.state is CircuitState.HALF_OPEN
