"""The engine's logic, driven through EngineCore with a fake clock: events in, effects out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from actors import errors as E
from actors.core import engine_events as ev
from actors.core.admission import STRICT_ASK_TIMEOUT_S
from actors.core.breaker import CircuitState
from actors.core.leases import REFRESH_S, LeaseGrant
from actors.core.engine_core import ABANDON_GRACE_S, SESSION_WAIT_S
from actors.core.retry import RetryPolicy
from actors.runtime.protocol import WorkerResult
from actors.types import Completed, InferenceRequest, Usage
from harness import Rig, limits

UNKNOWN = Usage(reported=False)


# -- admission ---------------------------------------------------------------------------

def test_a_request_goes_straight_to_an_idle_worker_and_completes_once():
    rig = Rig()
    effects = rig.submit("r1")
    (d,) = rig.dispatches("r1", effects)
    assert d.attempt == 1 and d.reply_to == "caller"
    rig.report("r1", usage=Usage(7, 5))
    done = rig.terminal("r1")
    assert isinstance(done, Completed) and done.attempts == 1 and done.usage.total_tokens == 12
    assert rig.core.status()["completed"] == 1 and not rig.core.jobs


def test_a_refusal_before_acceptance_is_a_terminal_with_no_attempt():
    rig = Rig()
    rig.feed(ev.Accept("not a request", "caller"))
    rig.submit("r1", params={"temperature": "hot"})
    junk, bad = rig.terminals()
    assert (junk.request_id, junk.attempts, junk.deployment) == ("", 0, "d1")
    assert (bad.request_id, bad.attempts, bad.attempt_log[0].sent) == ("r1", 0, False)


def test_a_full_queue_refuses_at_once_and_loses_nothing_queued():
    rig = Rig(workers=1, queue_capacity=1)
    rig.submit("busy")
    rig.submit("waiting")
    rig.submit("extra")
    assert isinstance(rig.terminal("extra").error, E.QueueFull)
    assert rig.terminals("waiting") == [] and rig.core.status()["queued"] == 1
    rig.report("busy")
    assert rig.dispatches("waiting") and rig.dispatches("extra") == []


def test_priority_order_between_levels_and_fifo_within_one():
    rig = Rig(workers=1, queue_capacity=8)
    rig.submit("blocker")
    for rid, priority in [("bg", "background"), ("n1", "normal"), ("hi", "high"), ("n2", "normal"), ("crit", "critical")]:
        rig.submit(rid, priority=priority)
    order = []
    for _ in range(5):
        rig.report(rig.dispatches()[-1].request.request_id)
        order.append(rig.dispatches()[-1].request.request_id)
    assert order == ["crit", "hi", "n1", "n2", "bg"]


def test_an_open_circuit_refuses_without_dispatching():
    rig = Rig()
    rig.breaker(CircuitState.OPEN, retry_in_s=30)
    rig.submit("r1")
    assert isinstance(rig.terminal("r1").error, E.CircuitOpen) and rig.dispatches() == []


def test_half_open_needs_a_granted_probe_and_reports_its_outcome_at_once():
    rig = Rig()
    rig.breaker(CircuitState.OPEN, retry_in_s=0)  # past retry_at: calls must be probes
    effects = rig.submit("r1")
    (ask,) = rig.of(ev.AskProbe, effects)
    assert rig.dispatches() == []
    rig.feed(ev.ProbeAdmitted("someone-else's token", 9))
    assert rig.dispatches() == [] and rig.outcomes()[-1][0] == 9  # a grant nobody asked for is given back
    assert isinstance(rig.outcomes()[-1][1], E.Cancelled)
    rig.feed(ev.ProbeAdmitted(ask.token, 7))
    assert rig.dispatches("r1")
    effects = rig.report("r1")
    assert (7, None) in [o for e in rig.of(ev.ReportOutcomes, effects) for o in e.outcomes]


def _probe_on_a_worker(rig: Rig, generation: int = 7) -> ev.DispatchTo:
    rig.breaker(CircuitState.OPEN, retry_in_s=0)
    (ask,) = rig.of(ev.AskProbe, rig.submit("r1"))
    rig.feed(ev.ProbeAdmitted(ask.token, generation))
    return rig.dispatch_of("r1")


def _reported(effects: list) -> list:
    return [o for e in effects if isinstance(e, ev.ReportOutcomes) for o in e.outcomes]


def test_a_probe_whose_worker_fails_on_it_frees_its_slot_and_is_no_success():
    rig = Rig()
    d = _probe_on_a_worker(rig)
    effects = rig.feed(ev.WorkerFailedOn(d.index, "r1", d.attempt))   # Thespian's PoisonMessage
    ((generation, outcome),) = _reported(effects)
    assert generation == 7 and isinstance(outcome, E.Cancelled) and not outcome.counts_for_breaker
    assert isinstance(rig.terminal("r1").error, E.InternalError)


def test_a_probe_whose_worker_dies_frees_its_slot_and_is_no_success():
    rig = Rig()
    d = _probe_on_a_worker(rig)
    effects = rig.feed(ev.WorkerGone(d.index))
    assert [(g, type(o)) for g, o in _reported(effects)] == [(7, E.Cancelled)]


def test_an_abandoned_probe_that_answers_later_reports_what_it_saw():
    rig = Rig()
    d = _probe_on_a_worker(rig)
    rig.feed(ev.CancelRequested("r1"))
    assert [(g, type(o)) for g, o in _reported(rig.log)] == []   # the caller left; the attempt is still out
    effects = rig.report("r1")
    assert _reported(effects) == [(7, None)] and d.index in rig.core.workers.idle


def test_a_refused_probe_is_asked_again_later():
    rig = Rig()
    rig.breaker(CircuitState.OPEN, retry_in_s=0)
    (first,) = rig.of(ev.AskProbe, rig.submit("r1"))
    rig.feed(ev.ProbeRefused(first.token))
    assert rig.of(ev.AskProbe, rig.advance(0.1)) == []
    again = rig.of(ev.AskProbe, rig.advance(0.3))
    assert len(again) == 1 and again[0].token != first.token


def test_budget_wait_then_dispatch_in_the_next_window():
    rig = Rig(workers=2, limits=limits(rpm=1, window_s=60))
    rig.submit("r1")
    rig.submit("r2")
    assert rig.dispatches("r2") == [] and rig.terminals("r2") == []
    assert rig.core.next_wakeup() is not None and rig.core.next_wakeup() <= rig.mono + 1.0
    rig.report("r1")
    rig.advance(30)
    assert rig.dispatches("r2") == []
    rig.advance(31)  # the next window
    assert rig.dispatches("r2") and rig.terminals("r2") == []


def test_budget_that_cannot_come_back_before_the_deadline_fails_at_once():
    rig = Rig(limits=limits(rpm=1, window_s=60))
    rig.submit("r1")
    rig.submit("r2", deadline_in=5)
    assert isinstance(rig.terminal("r2").error, E.BudgetExceeded)


def test_a_request_bigger_than_the_whole_budget_fails_at_once():
    rig = Rig(limits=limits(tpm=100, window_s=60))
    rig.submit("r1", params={"max_tokens": 500})
    err = rig.terminal("r1").error
    assert isinstance(err, E.BudgetExceeded) and not err.retryable and rig.dispatches() == []


# -- strict limits -----------------------------------------------------------------------

def strict_rig(**kw):
    rig = Rig(limits=limits(rpm=10, window_s=60, mode="strict", **kw))
    return rig


def asks(rig, effects=None):
    """The lease asks among ``effects`` (all so far: None)."""
    return [e.ask for e in rig.of(ev.AskLease, effects)]


def offer(rig, ask, requests, left=10, ttl_s=3.0):
    """The leader's answer to ``ask``: may have spent up to ``requests`` in the window."""
    return rig.feed(ev.LeaseOffered(rig.dep.limit_key, LeaseGrant(ask.client, ask.seq, ask.window, (requests, None), ttl_s,
                                               (left, None))))


def test_strict_asks_for_a_lease_then_spends_it_with_no_round_trip_per_call():
    rig = strict_rig()
    rig.feed(ev.StrictLeader(True, 1))
    (ask,) = asks(rig, rig.submit("r1"))
    assert ask.window == int(rig.wall() // 60) and ask.spent == (0, 0) and ask.want[0] >= 1
    assert rig.dispatches() == []
    offer(rig, ask, 3)
    assert rig.dispatches("r1")
    rig.report("r1")
    for rid in ("r2", "r3"):
        effects = rig.submit(rid)
        assert rig.dispatches(rid, effects) and rig.of(ev.AskLease, effects) == []   # spent locally
        rig.report(rid)
    effects = rig.submit("r4")                      # the lease is spent: asks again soon, waits
    (again,) = asks(rig, effects + rig.advance(REFRESH_S / 8))
    assert rig.dispatches("r4") == [] and again.spent == (3, again.spent[1]) and again.holding == ask.seq
    offer(rig, again, 4)
    assert rig.dispatches("r4")


def test_a_lease_ask_reports_what_the_engine_spent_after_settlement():
    rig = strict_rig()
    rig.feed(ev.StrictLeader(True, 1))
    (ask,) = asks(rig, rig.submit("r1"))
    offer(rig, ask, 5)
    rig.submit("r2")
    rig.report("r1", usage=Usage(4, 4))                               # sent: stays spent, at its usage
    rig.report("r2", error=E.ServerError("503", status=503, retryable=False), usage=UNKNOWN, sent=False)
    (later,) = asks(rig, rig.advance(0.25))               # the refresh while active
    assert later.spent == (1, 8)                                      # r2 never reached the provider


def test_strict_with_the_leader_gone_fails_or_uses_the_local_share():
    rig = strict_rig()
    rig.feed(ev.StrictLeader(False, 2))
    rig.submit("r1")
    assert isinstance(rig.terminal("r1").error, E.LeaderUnavailable)
    shared = strict_rig(leader_unavailable="local_share")
    shared.feed(ev.StrictLeader(False, 2))
    effects = shared.submit("r1")
    assert shared.dispatches("r1", effects) and shared.of(ev.AskLease) == []
    shared.report("r1")
    # rpm 10 over two nodes: this node's share is 5 requests.
    for i in range(6):
        shared.submit(f"x{i}")
        if shared.dispatches(f"x{i}"):
            shared.report(f"x{i}")
    assert len(shared.dispatches()) == 5 and shared.terminals("x4") == []


def test_with_the_leader_lost_a_lease_is_spent_until_it_expires_then_strict_fails_closed():
    rig = strict_rig()
    rig.feed(ev.StrictLeader(True, 1))
    (ask,) = asks(rig, rig.submit("r1"))
    offer(rig, ask, 3)
    rig.feed(ev.StrictLeader(False, 2))                # the leader is gone
    rig.report("r1")
    rig.submit("r2")
    assert rig.dispatches("r2")                        # within the lease: served
    rig.report("r2")
    rig.submit("r3")
    assert rig.dispatches("r3")
    rig.report("r3")
    rig.submit("r4")                                   # beyond it: fails closed, typed, not sent
    error = rig.terminal("r4").error
    assert isinstance(error, E.LeaderUnavailable) and "lease is spent" in error.message
    assert error.retryable and rig.dispatches("r4") == []
    other = strict_rig()
    other.feed(ev.StrictLeader(True, 1))
    (ask,) = asks(other, other.submit("r1"))
    offer(other, ask, 5)
    other.feed(ev.StrictLeader(False, 2))
    other.advance(3.0)                                 # the lease's time is up
    other.submit("r2")
    error = other.terminal("r2").error
    assert isinstance(error, E.LeaderUnavailable) and "expired" in error.message and other.dispatches("r2") == []


def test_a_window_spent_across_the_cluster_is_refused_not_waited_on_past_the_deadline():
    rig = strict_rig()
    rig.feed(ev.StrictLeader(True, 1))
    (ask,) = asks(rig, rig.submit("r1", deadline_in=5.0))
    offer(rig, ask, 0, left=0)
    error = rig.terminal("r1").error
    assert isinstance(error, E.BudgetExceeded) and error.retryable and rig.dispatches() == []


def test_strict_while_the_leader_is_not_known_yet_waits_then_fails():
    rig = strict_rig()
    rig.submit("r1")
    assert rig.terminals("r1") == []
    rig.advance(5.1)
    assert isinstance(rig.terminal("r1").error, E.LeaderUnavailable)


def test_a_strict_leader_that_never_answers_does_not_hold_a_request_forever():
    rig = strict_rig()
    rig.feed(ev.StrictLeader(True, 1))
    rig.submit("r1")
    rig.advance(STRICT_ASK_TIMEOUT_S + 0.5)
    assert isinstance(rig.terminal("r1").error, E.LeaderUnavailable)


# -- retries -----------------------------------------------------------------------------

def test_a_retryable_error_is_retried_after_the_backoff_not_before():
    rig = Rig()
    rig.submit("r1")
    rig.report("r1", error=E.ServerError("503", status=503), usage=UNKNOWN)
    assert len(rig.dispatches("r1")) == 1
    rig.advance(0.09)
    assert len(rig.dispatches("r1")) == 1
    rig.advance(0.02)  # base_delay_s 0.1, no jitter
    assert [d.attempt for d in rig.dispatches("r1")] == [1, 2]
    rig.report("r1")
    assert rig.terminal("r1").attempts == 2


def test_retry_after_from_the_server_wins_over_the_backoff():
    rig = Rig()
    rig.submit("r1")
    rig.report("r1", error=E.RateLimited("429", status=429, retry_after_s=0.7), usage=UNKNOWN)
    rig.advance(0.6)
    assert len(rig.dispatches("r1")) == 1
    rig.advance(0.15)
    assert len(rig.dispatches("r1")) == 2


def test_a_non_retryable_error_ends_the_request_at_once():
    rig = Rig()
    rig.submit("r1")
    rig.report("r1", error=E.BadRequest("no", status=400), usage=UNKNOWN)
    assert isinstance(rig.terminal("r1").error, E.BadRequest) and len(rig.dispatches()) == 1


def test_retries_stop_at_max_retries():
    rig = Rig()
    rig.submit("r1")
    for _ in range(3):
        rig.report("r1", error=E.ServerError("503", status=503), usage=UNKNOWN)
        rig.advance(1.0)
    assert len(rig.dispatches("r1")) == 3 and isinstance(rig.terminal("r1").error, E.ServerError)


def test_an_error_after_tokens_is_not_retried_and_says_so():
    rig = Rig()
    rig.submit("r1", stream=True)
    rig.first_token("r1")
    rig.report("r1", error=E.StreamError("cut"), chunks=3, usage=UNKNOWN)
    failed = rig.terminal("r1")
    assert isinstance(failed.error, E.StreamError) and failed.error.retryable is False and failed.chunks == 3
    assert len(rig.dispatches("r1")) == 1


def test_a_401_refreshes_the_session_once_and_retries_with_the_new_version():
    rig = Rig(has_session=True)
    rig.submit("r1")
    effects = rig.report("r1", error=E.AuthenticationError("401", status=401), usage=UNKNOWN, session_version=1)
    assert rig.of(ev.RefreshSession, effects) == [ev.RefreshSession(1, "provider answered 401")]
    rig.feed(ev.SessionChanged(2))
    second = rig.dispatch_of("r1")
    assert second.attempt == 2 and second.min_session_version == 2
    rig.report("r1", error=E.AuthenticationError("401 again", status=401), usage=UNKNOWN, session_version=2)
    assert isinstance(rig.terminal("r1").error, E.AuthenticationError) and len(rig.of(ev.RefreshSession)) == 1


def test_a_request_waiting_for_a_credential_that_never_comes_ends():
    rig = Rig(has_session=True)
    rig.submit("r1")
    rig.report("r1", error=E.AuthenticationError("401", status=401), usage=UNKNOWN)
    rig.advance(SESSION_WAIT_S - 0.5)
    assert rig.terminals("r1") == []
    rig.advance(1.0)
    assert isinstance(rig.terminal("r1").error, E.AuthenticationError)


# -- crash retry -------------------------------------------------------------------------

def test_a_dead_workers_request_is_retried_after_a_backoff_on_a_new_worker():
    rig = Rig(workers=1)
    rig.submit("r1")
    effects = rig.feed(ev.WorkerGone(0))
    assert rig.of(ev.StartWorker, effects) == [ev.StartWorker(0)]
    rig.feed(ev.WorkerUp(0, pid=2000))
    assert len(rig.dispatches("r1")) == 1  # not at once: the backoff applies to crashes too
    rig.advance(0.11)
    assert [d.attempt for d in rig.dispatches("r1")] == [1, 2]
    rig.report("r1")
    assert isinstance(rig.terminal("r1"), Completed)


def test_crash_retries_spend_the_retry_budget():
    rig = Rig(workers=1, retry=RetryPolicy(max_retries=3, base_delay_s=0.01, max_delay_s=0.1, jitter="none",
                                           budget_ratio=0.0, budget_min_retries=0))
    rig.submit("r1")
    rig.feed(ev.WorkerGone(0))
    failed = rig.terminal("r1")
    assert isinstance(failed.error, E.WorkerCrashed) and failed.error.retryable
    assert len(rig.dispatches("r1")) == 1


def test_a_crash_after_tokens_ends_the_request_not_retryable():
    rig = Rig(workers=1)
    rig.submit("r1", stream=True)
    rig.first_token("r1")
    rig.feed(ev.WorkerGone(0))
    failed = rig.terminal("r1")
    # The engine heard of the first token only; how many the worker sent died with it: unknown,
    # never a wrong number (the raw protocol: README, "The raw protocol").
    assert isinstance(failed.error, E.WorkerCrashed) and not failed.error.retryable and failed.chunks is None


def test_a_crash_of_a_non_idempotent_request_is_not_retried():
    rig = Rig(workers=1)
    rig.submit("r1", idempotent=False)
    rig.feed(ev.WorkerGone(0))
    assert isinstance(rig.terminal("r1").error, E.WorkerCrashed)


def test_a_worker_failing_on_a_dispatch_ends_that_request_and_frees_the_slot():
    rig = Rig(workers=1)
    rig.submit("r1")
    rig.submit("r2")
    rig.feed(ev.WorkerFailedOn(0, "r1", 1))
    assert isinstance(rig.terminal("r1").error, E.InternalError) and rig.dispatches("r2")


def test_a_request_its_worker_failed_on_keeps_its_budget_charged_and_says_why():
    rig = Rig(workers=1, limits=limits(rpm=10, window_s=60))
    rig.submit("r1")
    rig.feed(ev.WorkerFailedOn(0, "r1", 1))
    error = rig.terminal("r1").error
    assert (type(error), error.message, error.provider) == (E.InternalError, "the worker failed on this request",
                                                           "openai")
    assert rig.core.limiter.usage().requests == 1   # it may have reached the provider: its estimate stays charged


# -- settlement --------------------------------------------------------------------------

def spent(rig):
    usage = rig.core.limiter.usage()
    return usage.requests, usage.tokens


def test_settlement_releases_what_never_reached_the_provider():
    rig = Rig(limits=limits(rpm=100, tpm=10_000))
    rig.submit("r1")
    assert spent(rig)[0] == 1
    rig.report("r1", error=E.NetworkError("refused"), sent=False, usage=UNKNOWN)
    assert spent(rig) == (0, 0)
    rig.advance(1.0)  # the retry took a new reservation; the first one was given back
    rig.report("r1")
    assert spent(rig) == (1, 5)


def test_settlement_reconciles_to_reported_usage():
    rig = Rig(limits=limits(rpm=100, tpm=10_000))
    rig.submit("r1")
    estimate = rig.core.jobs["r1"].estimate
    rig.report("r1", usage=Usage(30, 12))
    assert spent(rig) == (1, 42) and estimate != 42
    assert rig.terminal("r1").charged_tokens == 42


def test_settlement_keeps_the_estimate_when_usage_is_unknown():
    rig = Rig(limits=limits(rpm=100, tpm=10_000))
    rig.submit("r1", stream=True)
    estimate = rig.core.jobs["r1"].estimate
    rig.report("r1", usage=UNKNOWN, chunks=2)
    done = rig.terminal("r1")
    assert spent(rig) == (1, estimate) and done.charged_tokens == estimate and not done.usage.reported


def test_a_timeout_after_sending_keeps_the_budget_charged():
    rig = Rig(limits=limits(rpm=100, tpm=10_000), retry=RetryPolicy(max_retries=0))
    rig.submit("r1")
    estimate = rig.core.jobs["r1"].estimate
    rig.report("r1", error=E.Timeout("read timeout"), usage=UNKNOWN, sent=True)
    assert spent(rig) == (1, estimate)


def test_an_error_the_provider_answered_charges_the_request_but_no_tokens():
    rig = Rig(limits=limits(rpm=100, tpm=10_000), retry=RetryPolicy(max_retries=0))
    rig.submit("r1")
    # (a 502: a 500 would be judged by a known-good probe, which is charged as the call it is)
    rig.report("r1", error=E.ServerError("502", status=502), usage=UNKNOWN, sent=True)
    assert spent(rig) == (1, 0)


def test_a_crashed_attempt_keeps_its_strict_budget_spent():
    rig = strict_rig()
    rig.feed(ev.StrictLeader(True, 1))
    (ask,) = asks(rig, rig.submit("r1", idempotent=False))
    offer(rig, ask, 5)
    rig.feed(ev.WorkerGone(rig.dispatch_of("r1").index))
    window = int(rig.wall() // 60)
    assert rig.core.limiter.own(window)[0] == 1    # it may have reached the provider: reported spent


# -- cancel and drain --------------------------------------------------------------------

def test_cancel_of_a_queued_request_ends_it_and_it_never_runs():
    rig = Rig(workers=1)
    rig.submit("busy")
    rig.submit("r1")
    rig.feed(ev.CancelRequested("r1"))
    assert isinstance(rig.terminal("r1").error, E.Cancelled)
    rig.report("busy")
    assert rig.dispatches("r1") == []


def test_cancel_of_a_dispatched_request_tells_the_worker_and_answers_once():
    rig = Rig(workers=1)
    rig.submit("r1")
    effects = rig.feed(ev.CancelRequested("r1"))
    assert rig.of(ev.AbandonOnWorker, effects) == [ev.AbandonOnWorker(0, "r1")]
    failed = rig.terminal("r1")
    assert isinstance(failed.error, E.Cancelled) and failed.chunks is None
    rig.submit("r2")
    assert rig.dispatches("r2") == []  # the worker is still busy until it reports back
    rig.report("r1", error=E.Cancelled("stopped"), usage=UNKNOWN)
    assert len(rig.terminals("r1")) == 1 and rig.dispatches("r2")


def test_drain_refuses_new_requests_and_reports_when_the_last_one_ends():
    rig = Rig()
    rig.submit("r1")
    assert rig.of(ev.ReportDrained, rig.feed(ev.DrainRequested("launcher"))) == []
    rig.submit("r2")
    assert isinstance(rig.terminal("r2").error, E.ShuttingDown)
    effects = rig.report("r1")
    assert rig.of(ev.ReportDrained, effects) == [ev.ReportDrained("launcher", 0)]
    assert rig.core.status()["draining"]


def test_drain_with_nothing_in_flight_answers_at_once():
    rig = Rig()
    assert rig.of(ev.ReportDrained, rig.feed(ev.DrainRequested("launcher"))) == [ev.ReportDrained("launcher", 0)]


def test_stop_fails_everything_still_open_with_shutting_down():
    rig = Rig(workers=1)
    rig.submit("r1")
    rig.submit("r2")
    rig.feed(ev.Stop())
    assert all(isinstance(rig.terminal(r).error, E.ShuttingDown) for r in ("r1", "r2"))
    on_worker, queued = rig.terminal("r1"), rig.terminal("r2")
    assert on_worker.chunks is None and queued.chunks == 0   # a worker may have sent r1 chunks: unknown
    assert on_worker.error.message == "the engine stopped before the request finished"
    assert on_worker.error.provider == "openai"
    assert rig.feed(ev.WorkerGone(0)) == []


def test_stop_publishes_what_the_replica_has_not_yet():
    rig = Rig(has_hub=True, limits=limits(rpm=10, window_s=60))
    rig.submit("r1")
    rig.report("r1")
    published = rig.of(ev.PublishCounts, rig.feed(ev.Stop()))
    assert len(published) == 1 and published[0].sent_unix == rig.wall()


# -- deadlines at each stage -------------------------------------------------------------

def test_deadline_while_queued():
    rig = Rig(workers=1)
    rig.submit("busy")
    rig.submit("r1", deadline_in=2.0)
    rig.advance(1.9)
    assert rig.terminals("r1") == []
    rig.advance(0.2)
    failed = rig.terminal("r1")
    assert isinstance(failed.error, E.DeadlineExceeded) and failed.error.message == "the deadline passed while queued"
    rig.report("busy")
    assert rig.dispatches("r1") == []


def test_deadline_while_waiting_for_budget():
    rig = strict_rig()
    rig.feed(ev.StrictLeader(True, 1))
    (ask,) = asks(rig, rig.submit("r1", deadline_in=1.0))
    rig.advance(0.9)
    assert rig.terminals("r1") == []
    rig.advance(0.2)
    assert isinstance(rig.terminal("r1").error, E.DeadlineExceeded) and rig.dispatches() == []
    offer(rig, ask, 10)                     # a grant too late for its caller: nothing is sent
    assert rig.dispatches() == [] and rig.core.limiter.own(int(rig.wall() // 60)) == (0, 0)


def test_a_strict_request_its_lease_allows_is_sent_however_near_its_deadline():
    rig = strict_rig()
    rig.feed(ev.StrictLeader(True, 1))
    (ask,) = asks(rig, rig.submit("r1"))
    offer(rig, ask, 9)
    rig.advance(2.0)
    rig.report("r1")                               # calls take 2 s here
    near = rig.submit("near", deadline_in=0.05)    # far less than a call takes, but still ahead
    assert rig.dispatches("near", near) and rig.terminals("near") == []

def test_a_retry_that_would_outlive_the_deadline_is_not_waited_for():
    rig = Rig(retry=RetryPolicy(max_retries=2, base_delay_s=1.0, max_delay_s=1.0, jitter="none"))
    rig.submit("r1", deadline_in=0.5)
    rig.report("r1", error=E.ServerError("503", status=503), usage=UNKNOWN)
    assert isinstance(rig.terminal("r1").error, E.ServerError) and len(rig.dispatches("r1")) == 1


def test_deadline_while_waiting_for_a_credential():
    rig = Rig(has_session=True)
    rig.submit("r1", deadline_in=2.0)
    rig.report("r1", error=E.AuthenticationError("401", status=401), usage=UNKNOWN)
    rig.advance(2.1)
    failed = rig.terminal("r1")
    assert isinstance(failed.error, E.DeadlineExceeded)
    assert failed.error.message == "the deadline passed waiting for a credential"


def test_deadline_while_dispatched_ends_the_request_whatever_the_worker_does():
    rig = Rig(workers=1)
    rig.submit("r1", deadline_in=3.0)
    rig.advance(2.9)
    assert rig.terminals("r1") == []
    effects = rig.advance(0.2)
    failed = rig.terminal("r1")
    assert isinstance(failed.error, E.DeadlineExceeded) and not failed.error.counts_for_breaker
    assert rig.of(ev.AbandonOnWorker, effects) == [ev.AbandonOnWorker(0, "r1")]
    rig.report("r1", error=E.Timeout("late"), usage=UNKNOWN)  # the worker's own report, afterwards
    assert len(rig.terminals("r1")) == 1
    assert not [o for o in rig.outcomes() if o[1] is not None and o[1].counts_for_breaker]


def test_deadline_mid_stream_is_not_retryable_and_its_count_is_unknown():
    rig = Rig(workers=1)
    rig.submit("r1", deadline_in=3.0, stream=True)
    rig.first_token("r1")
    rig.advance(3.1)
    failed = rig.terminal("r1")
    # The worker may still have chunks in flight: the engine cannot know how many the caller got.
    assert isinstance(failed.error, E.DeadlineExceeded) and failed.chunks is None and not failed.error.retryable


def test_a_callers_short_deadline_is_not_a_breaker_failure():
    rig = Rig(retry=RetryPolicy(max_retries=0))
    rig.submit("short", deadline_in=1.0)  # shorter than read_s: the deadline bounds the call
    rig.report("short", error=E.Timeout("read timeout"), usage=UNKNOWN)
    assert not [o for o in rig.outcomes() if o[1] is not None and o[1].counts_for_breaker]
    rig.submit("long")
    rig.report("long", error=E.Timeout("read timeout"), usage=UNKNOWN)
    assert [type(o[1]) for o in rig.outcomes() if o[1] is not None and o[1].counts_for_breaker] == [E.Timeout]


def test_a_deadline_already_past_is_refused():
    rig = Rig()
    rig.submit("r1", deadline_in=-1)
    assert isinstance(rig.terminal("r1").error, E.DeadlineExceeded) and rig.dispatches() == []


def test_a_nan_deadline_is_a_bad_request():
    rig = Rig()
    rig.feed(ev.Accept(InferenceRequest(model="d1", messages=[{"role": "user", "content": "x"}], request_id="r1",
                                        deadline_unix=float("nan")), "c"))
    assert isinstance(rig.terminal("r1").error, E.BadRequest)


# -- frozen and dead workers -------------------------------------------------------------

def test_a_frozen_worker_is_killed_after_the_grace_and_replaced():
    rig = Rig(workers=1)
    rig.submit("r1", deadline_in=1.0)
    rig.advance(1.01)
    assert isinstance(rig.terminal("r1").error, E.DeadlineExceeded)
    effects = rig.advance(ABANDON_GRACE_S - 0.1)
    assert rig.of(ev.KillWorker, effects) == []
    effects = rig.advance(0.2)
    assert rig.of(ev.KillWorker, effects) == [ev.KillWorker(0, 1000)]
    assert rig.of(ev.StartWorker, effects) == [ev.StartWorker(0)]
    rig.feed(ev.WorkerUp(0, pid=3000))
    rig.submit("r2")
    assert rig.dispatches("r2") and len(rig.terminals("r1")) == 1


def test_a_worker_that_ignores_a_cancel_is_replaced():
    rig = Rig(workers=1)
    rig.submit("r1")
    rig.feed(ev.CancelRequested("r1"))
    effects = rig.advance(ABANDON_GRACE_S + 0.01)
    assert rig.of(ev.KillWorker, effects) == [ev.KillWorker(0, 1000)]


def test_without_a_deadline_a_silent_worker_still_has_a_scheduled_end():
    rig = Rig(workers=1, retry=RetryPolicy(max_retries=0))
    rig.submit("r1")
    rig.advance(rig.dep.timeouts.total_s)
    assert rig.terminals("r1") == []
    effects = rig.advance(ABANDON_GRACE_S + 0.01)
    assert rig.of(ev.KillWorker, effects) and isinstance(rig.terminal("r1").error, E.WorkerCrashed)


def test_a_replaced_workers_late_report_is_ignored():
    rig = Rig(workers=1)
    rig.submit("r1", deadline_in=1.0)
    rig.advance(1.0 + ABANDON_GRACE_S + 0.01)
    stale = rig.dispatch_of("r1")
    rig.feed(ev.WorkerUp(0, pid=3000))
    rig.submit("r2")
    rig.feed(ev.WorkerReported(WorkerResult("r1", stale.attempt, 0)))
    assert len(rig.terminals("r1")) == 1 and rig.terminals("r2") == []
    rig.report("r2")
    assert isinstance(rig.terminal("r2"), Completed)


def test_worker_ready_is_announced_once_all_are_up():
    rig = Rig(up=False)
    rig.feed(ev.WorkerUp(0, 1))
    assert rig.of(ev.AnnounceReady) == []
    rig.feed(ev.WorkerUp(1, 2))
    rig.feed(ev.WorkerUp(1, 2))
    assert len(rig.of(ev.AnnounceReady)) == 1


# -- the cluster budget view -------------------------------------------------------------

def test_counts_are_published_after_the_sync_interval_and_peer_counts_merge():
    rig = Rig(has_hub=True, limits=limits(rpm=2, window_s=60))
    rig.submit("r1")
    assert rig.of(ev.PublishCounts) == []
    published = rig.of(ev.PublishCounts, rig.advance(0.06))
    assert len(published) == 1
    window = int(rig.wall() // 60)
    rig.feed(ev.PeerCounts("d1", {window: {"requests": {"other": 5}}}, origin="other"))
    rig.submit("r2")  # within rpm 2 on its own, but another node spent the window
    assert rig.dispatches("r2") == [] and rig.terminals("r2") == []


# -- exactly one terminal, whatever happens ----------------------------------------------

OPS = st.lists(st.tuples(st.sampled_from(["submit", "ok", "fail", "stream_fail", "crash", "cancel", "tick",
                                          "token", "freeze", "auth", "session", "open", "half_open", "close",
                                          "probe", "rejected", "known_good", "drain"]),
                         st.integers(0, 5)), max_size=40)


@settings(max_examples=300)
@given(OPS, st.booleans(), st.sampled_from([0, 2]))
def test_every_accepted_request_ends_exactly_once(ops, limited, retries):
    rig = Rig(workers=2, queue_capacity=3, has_session=True,
              retry=RetryPolicy(max_retries=retries, base_delay_s=0.1, max_delay_s=1.0, jitter="none"),
              **({"limits": limits(rpm=4, window_s=10)} if limited else {}))
    submitted = []
    for op, n in ops:
        rid = f"r{n}"
        live = rig.core.jobs.get(rid)
        attempt = live.attempt if live else None
        if op == "submit":
            if rid not in rig.core.jobs:  # a resend of a live id is the same request
                submitted.append(rid)
            rig.submit(rid, deadline_in=5 + n)
        elif op in ("ok", "fail", "stream_fail", "rejected") and attempt is not None:
            error = {"ok": None, "fail": E.ServerError("503", status=503), "stream_fail": E.StreamError("cut"),
                     "rejected": E.ServerError("validation failed", status=500)}[op]   # a suspect: judged by probes
            rig.report(rid, error=error, chunks=1 if op == "stream_fail" else 0)
        elif op == "known_good":  # the engine's own probes answer as n says
            for probe in [j for j in rig.core.jobs.values() if j.known_good and j.attempt is not None]:
                rig.report(probe.request_id, error=None if n % 2 else E.ServerError("down", status=500))
        elif op == "drain" and n == 5 and not rig.core.draining:
            rig.feed(ev.DrainRequested("launcher"))
        elif op == "crash" and rig.core.workers.slots:
            rig.feed(ev.WorkerGone(n % 2))
            rig.feed(ev.WorkerUp(n % 2, pid=5000 + n))
        elif op == "cancel":
            rig.feed(ev.CancelRequested(rid))
        elif op == "token" and attempt is not None:
            rig.first_token(rid)
        elif op == "tick":
            rig.advance(0.3 * n)
        elif op == "freeze":
            rig.advance(3)
        elif op == "auth" and attempt is not None:
            rig.report(rid, error=E.AuthenticationError("401", status=401), usage=UNKNOWN, session_version=n)
        elif op == "session":
            rig.feed(ev.SessionChanged(n + 1, ok=n % 2 == 0, error=E.AuthenticationError("refresh failed")))
        elif op in ("open", "half_open", "close"):
            state = CircuitState.CLOSED if op == "close" else CircuitState.OPEN
            rig.breaker(state, retry_in_s=30 if op == "open" else 0, generation=len(rig.log))
        elif op == "probe" and rig.of(ev.AskProbe):
            rig.feed(ev.ProbeAdmitted(rig.of(ev.AskProbe)[-1].token, n))
    rig.breaker(CircuitState.CLOSED, generation=10 ** 6)
    for _ in range(4):
        rig.advance(60)  # every deadline, grace, retry and verdict is past; probes in flight answer
        for index, slot in rig.core.workers.slots.items():   # workers replaced at a deadline come up again
            if not slot.ready:
                rig.feed(ev.WorkerUp(index, pid=9000 + index))
        for probe in [j for j in rig.core.jobs.values() if j.known_good and j.attempt is not None]:
            rig.report(probe.request_id)
    for rid in set(submitted):
        accepted_and_ended = rig.terminals(rid)
        assert accepted_and_ended, f"{rid} never ended"
    # A resubmitted id after its terminal is a new request: count per acceptance.
    assert len(rig.terminals()) == len(submitted)
    assert not rig.core.jobs and not rig.core.queue and not rig.core.hearing.held
    assert len(rig.of(ev.ReportDrained)) <= 1


@pytest.mark.parametrize("error", [E.ServerError("503", status=503), E.Timeout("t"), E.StreamError("s")])
def test_errors_after_tokens_are_never_retryable_to_the_caller(error):
    rig = Rig()
    rig.submit("r1", stream=True)
    rig.first_token("r1")
    rig.report("r1", error=error, chunks=1, usage=UNKNOWN)
    assert rig.terminal("r1").error.retryable is False


def test_timers_of_ended_requests_do_not_pile_up():
    rig = Rig(workers=1, queue_capacity=4)
    for i in range(500):        # several timers each: without the heap's compaction, well over 500 left
        rig.submit(f"r{i}", deadline_in=600)
        rig.report(f"r{i}")
    assert len(rig.core.timers) < 200 and len(rig.terminals()) == 500


def test_a_first_token_counts_only_for_the_attempt_on_the_worker():
    rig = Rig()
    rig.submit("r1", stream=True)
    rig.feed(ev.TokenStarted("r1", 2, rig.wall()))           # not its attempt: ignored
    rig.feed(ev.TokenStarted("nobody", 1, rig.wall()))
    assert rig.core.jobs["r1"].chunks == 0 and rig.core.jobs["r1"].first_token_unix is None
    rig.advance(0.5)
    rig.first_token("r1")
    job = rig.core.jobs["r1"]
    assert job.chunks == 1 and job.first_token_unix == rig.wall()
    rig.report("r1", chunks=4)
    assert rig.terminal("r1").ttft_s == pytest.approx(0.5)


def test_a_refusal_before_acceptance_lists_one_unsent_attempt_at_this_deployment():
    from actors.types import AttemptInfo

    rig = Rig()
    rig.submit("r1", params={"temperature": "hot"})
    (bad,) = rig.terminals()
    assert bad.attempt_log == [AttemptInfo("d1", "bad_request", None, 0.0, False)]


def test_an_unanswered_probe_ask_wakes_the_engine_when_it_may_be_asked_again():
    from actors.core.admission import PROBE_RETRY_S

    rig = Rig()
    rig.breaker(CircuitState.OPEN, retry_in_s=0)
    assert len(rig.of(ev.AskProbe, rig.submit("r1"))) == 1
    assert rig.core.next_wakeup() == pytest.approx(rig.mono + PROBE_RETRY_S)


def test_a_request_sent_again_after_a_credential_refresh_keeps_its_priority():
    rig = Rig(workers=1, queue_capacity=8, has_session=True)
    rig.submit("bg", priority="background")
    rig.report("bg", error=E.AuthenticationError("401", status=401), usage=UNKNOWN, session_version=1)
    rig.submit("busy")                                  # the worker is taken while bg waits for a credential
    rig.submit("n1")
    rig.feed(ev.SessionChanged(2))                      # bg goes back to the head of its own level
    rig.report("busy")
    assert rig.dispatches()[-1].request.request_id == "n1"
    rig.report("n1")
    assert rig.dispatches()[-1].request.request_id == "bg"


@pytest.mark.parametrize("streamed", [False, True])
def test_a_deadline_during_the_call_says_where_it_passed_and_for_which_provider(streamed):
    rig = Rig()
    rig.submit("r1", deadline_in=2.0)
    if streamed:
        rig.feed(ev.TokenStarted("r1", 1, rig.wall()))
    rig.advance(2.1)
    failed = rig.terminal("r1")
    stage = "mid-stream" if streamed else "during the call"
    assert (type(failed.error), failed.error.message, failed.error.provider) == \
        (E.DeadlineExceeded, f"the deadline passed {stage}", "openai")


def test_a_cancelled_request_says_so_for_its_provider():
    rig = Rig()
    rig.submit("r1")
    rig.feed(ev.CancelRequested("r1"))
    failed = rig.terminal("r1")
    assert (type(failed.error), failed.error.message, failed.error.provider) == \
        (E.Cancelled, "cancelled by the caller", "openai")


def test_a_crash_says_which_worker_exited_during_which_attempt_for_which_provider():
    rig = Rig(workers=1)
    rig.submit("r1", idempotent=False)
    rig.feed(ev.WorkerGone(0))
    error = rig.terminal("r1").error
    assert (error.message, error.provider) == ("worker 0 exited during attempt 1", "openai")


def test_once_the_leader_is_back_strict_rate_admission_asks_it_instead_of_refusing():
    rig = strict_rig()
    rig.feed(ev.StrictLeader(True, 1))
    rig.submit("r1")
    rig.advance(2.5)                                    # no answer: presumed lost
    assert isinstance(rig.terminal("r1").error, E.LeaderUnavailable)
    rig.feed(ev.StrictLeader(False, 1))
    rig.feed(ev.StrictLeader(True, 1))
    (ask,) = asks(rig, rig.submit("r2"))
    assert rig.terminals("r2") == []
    offer(rig, ask, 2)
    assert rig.dispatches("r2")
