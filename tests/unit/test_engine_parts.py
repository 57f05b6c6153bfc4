"""The engine core's collaborators through their own seams, without an EngineCore: each takes a
small host (what it emits, what it asks the engine to do) and is driven here with a recording one.

tests/unit/test_engine_core.py drives the same code through the whole core; these pin what each
part promises on its own (admission's order, the timer heap's bound, recovery's decisions, the
hearing's verdicts, the workers' attempts)."""

from __future__ import annotations

from dataclasses import replace

from typing import Any

import pytest

from actors import errors as E
from actors.core import engine_events as ev
from actors.core.admission import (PROBE_RETRY_S, TICK_S, Admission, Admit, BreakerGate, BudgetGate, Denied, Leader,
                                   NeedProbe, Refuse, Reserved, Wait)
from actors.core.breaker import BreakerSnapshot, BreakerView, CircuitState
from actors.core.leases import LeaseGrant
from actors.core.budget import Budget, BudgetBook, SpendGate, SpendHold
from actors.core.caller_fault import JUDGE_WAIT_S, Hearing
from actors.core.jobs import ABANDON_GRACE_S, Attempt, Job
from actors.core.periods import parse_period
from actors.core.priority_queue import Priority
from actors.core.ratelimit import RateLimits, WindowedLimiter
from actors.core.recovery import SESSION_WAIT_S, Recovery
from actors.core.retry import RetryEngine, RetryPolicy
from actors.core.settlement import Settle, Settlement
from actors.core.timer_heap import SLACK, TimerHeap
from actors.core.workers import Workers
from actors.runtime.protocol import WorkerResult
from actors.settings.schema import Timeouts
from actors.types import InferenceRequest, Usage

from fakes import FakeClock

WALL0 = 1_800_000_000.0


class Host:
    """Records what a part emits and asks of its engine (every host protocol at once)."""

    def __init__(self) -> None:
        self.effects: list[Any] = []
        self.pumps: list[float] = []
        self.failed: list[tuple[str, E.InferenceError]] = []
        self.requeued: list[str] = []
        self.given_up: list[tuple[str, E.InferenceError]] = []
        self.probes = 0

    def emit(self, effect: object) -> None:
        self.effects.append(effect)

    def pump_soon(self, when: float) -> None:
        self.pumps.append(when)

    def fail(self, job: Job, error: E.InferenceError) -> None:
        self.failed.append((job.request_id, error))

    def answer(self, request_id: str, error: E.InferenceError) -> None:
        self.failed.append((request_id, error))

    def requeue(self, job: Job) -> None:
        self.requeued.append(job.request_id)

    def give_up(self, job: Job, error: E.InferenceError, now: float) -> None:
        self.given_up.append((job.request_id, error))

    def probe(self) -> None:
        self.probes += 1

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.effects if isinstance(e, kind)]


def job(rid: str = "r1", *, estimate: int = 10, deadline: float | None = None, **fields: Any) -> Job:
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    request = InferenceRequest(model="m", request_id=rid, **fields)
    return Job(request, "caller", Priority.NORMAL, 0.0, WALL0, deadline, estimate, SpendHold(1, []))


def snapshot(state: CircuitState, generation: int, retry_at_unix: float) -> BreakerSnapshot:
    return BreakerSnapshot("openai", "e", state, generation, int(WALL0 * 1000), int(retry_at_unix * 1000), 1, 0, 0, 0)


# -- the timer heap ---------------------------------------------------------------------

def test_the_heap_answers_its_earliest_live_entry_or_the_queue_look_whichever_is_first():
    dead: set[str] = set()
    timers = TimerHeap(lambda kind, subject, when: subject.request_id not in dead, lambda: 100)
    a, b = job("a"), job("b")
    timers.at(5.0, "deadline", a)
    timers.at(7.0, "deadline", b)
    assert timers.next() == 5.0
    dead.add("a")
    assert timers.next() == 7.0        # a dead head is dropped
    timers.pump_soon(9.0)
    timers.pump_soon(6.0)
    assert timers.next() == 6.0        # the earliest look asked for
    timers.pump_due(5.9)
    assert timers.pump_at == 6.0
    timers.pump_due(6.0)
    assert timers.pump_at is None and timers.next() == 7.0


def test_the_heap_hands_out_due_entries_in_order_dead_or_alive():
    timers = TimerHeap(lambda kind, subject, when: False, lambda: 100)
    a, b = job("a"), job("b")
    timers.at(3.0, "retry", b)
    timers.at(2.0, "deadline", a)
    assert timers.pop(1.9) is None
    assert timers.pop(3.0) == ("deadline", a)    # the handler decides whether it still matters
    assert timers.pop(3.0) == ("retry", b) and timers.pop(10.0) is None


def test_ended_requests_timers_are_compacted_away():
    live: set[str] = set()
    timers = TimerHeap(lambda kind, subject, when: subject.request_id in live, lambda: 4)
    for i in range(1000):
        timers.at(600.0 + i, "deadline", job(f"r{i}"))   # every one ended before its deadline
    assert len(timers) <= SLACK + 4 + 1


# -- the breaker gate -----------------------------------------------------------------------

def breaker_gate(wall: FakeClock) -> tuple[BreakerGate, Host]:
    host = Host()
    return BreakerGate(host, BreakerView("openai", "e"), slot="n1/d1/0", wall=wall), host


def test_the_breaker_gate_admits_refuses_or_asks_for_a_probe_from_the_pushed_view():
    wall = FakeClock(WALL0)
    gate, host = breaker_gate(wall)
    assert gate.admit(0.0) == Admit(0)                  # nothing pushed yet: closed
    gate.view.update(snapshot(CircuitState.OPEN, 3, WALL0 + 10))
    refused = gate.admit(0.0)
    assert isinstance(refused, Refuse) and isinstance(refused.error, E.CircuitOpen)
    wall.advance(10)
    assert gate.admit(0.0) == NeedProbe()
    assert host.effects == []   # deciding costs no message


def test_a_probe_is_asked_once_until_answered_or_overdue_and_an_unused_grant_is_given_back():
    gate, host = breaker_gate(FakeClock(WALL0))
    assert gate.take_probe(1.0) is None and gate.take_probe(1.1) is None
    (ask,) = host.of(ev.AskProbe)
    assert host.pumps[-1] == pytest.approx(1.0 + PROBE_RETRY_S)
    gate.take_probe(1.0 + PROBE_RETRY_S)
    assert len(host.of(ev.AskProbe)) == 2               # unanswered for PROBE_RETRY_S: asked again
    gate.probe_admitted(ask.token, 9)                   # the answer to the first ask: stale
    assert host.of(ev.ReportOutcomes)[-1].outcomes[0][0] == 9
    gate.probe_admitted(host.of(ev.AskProbe)[-1].token, 11)
    granted = gate.take_probe(2.0)
    assert granted == Admit(11, probe=True)
    gate.put_back(granted)                              # the budget said wait
    gate.end()
    ((generation, error),) = host.of(ev.ReportOutcomes)[-1].outcomes
    assert generation == 11 and isinstance(error, E.Cancelled) and not error.counts_for_breaker


def test_successes_are_batched_and_failures_go_at_once_with_them():
    gate, host = breaker_gate(FakeClock(WALL0))
    gate.succeeded(1, now=5.0)
    gate.succeeded(1, now=5.01)
    assert host.effects == [] and gate.flush_at == pytest.approx(5.0 + TICK_S)
    failure = E.ServerError("down", status=503)
    gate.report(1, failure)
    assert host.effects == [ev.ReportOutcomes([(1, None), (1, None), (1, failure)])] and gate.flush_at is None


# -- the budget gate and the spend gate ---------------------------------------------------

def leads_itself() -> Leader:
    """As the node of a single-node cluster tells its engine: in the cluster."""
    leader = Leader(0.0, 5.0)
    leader.update(False, 0, 0.0, in_cluster=True)
    return leader


def budget_gate(limits: RateLimits, leader: Leader | None = None) -> tuple[BudgetGate, Host, FakeClock]:
    host, mono, wall = Host(), FakeClock(0.0), FakeClock(WALL0)
    replica = WindowedLimiter("n1/d1/0", limits, wall_clock=wall, clock=mono)
    gate = BudgetGate(host, limits, replica, leader or leads_itself(), provider="openai", slot="n1/d1/0",
                      key="d1", clock=mono, wall=wall, sync_interval_s=0.05)
    return gate, host, mono


def test_the_budget_gate_reserves_in_its_replica_and_publishes_the_change():
    gate, host, _ = budget_gate(RateLimits(rpm=1))
    first, second = job("a"), job("b")
    assert isinstance(gate.admit(first, 0.0), Reserved) and first.held.limiter is gate.replica
    wait = gate.admit(second, 0.0)
    assert isinstance(wait, Wait) and second.held.reservation is None
    assert gate.sync_due() == pytest.approx(0.05)
    gate.publish(1.0)
    (published,) = host.of(ev.PublishCounts)
    assert gate.sync_due() is None and list(published.delta.values())[0]["requests"] == {"n1/d1/0": 1}


def test_a_blocked_strict_gate_asks_once_at_a_time_and_takes_only_the_answer_to_its_own_ask():
    leader = Leader(0.0, 5.0)
    leader.update(True, 1, 0.0)
    gate, host, _ = budget_gate(RateLimits(rpm=10, mode="strict"), leader)
    waiting = job("r1", estimate=7)
    assert isinstance(gate.admit(waiting, 0.0), Wait) and isinstance(gate.admit(waiting, 0.1), Wait)
    (ask,) = [e.ask for e in host.of(ev.AskLease)]                  # one in flight: not asked twice
    assert (ask.client, ask.holding, ask.spent) == ("n1/d1/0", 0, (0, 0))
    grant = LeaseGrant(ask.client, ask.seq, ask.window, (2, None), 3.0)
    assert not gate.offered("d1", LeaseGrant("n2/d1/0", ask.seq, ask.window, (9, None), 3.0), 0.1)   # someone else's
    assert not gate.offered("spend:key=k1/1h", grant, 0.1)                   # another budget's
    assert gate.offered("d1", grant, 0.1) and not gate.offered("d1", grant, 0.1)  # a duplicate is not taken twice
    assert gate.admit(waiting, 0.1) == Reserved(waiting.held.reservation)
    assert gate.replica.own(ask.window) == (1, 7)


def test_admission_asks_the_spend_gate_first_and_gives_a_probe_back_when_the_budget_says_wait():
    wall = FakeClock(WALL0)
    breaker, host = breaker_gate(wall)
    breaker.view.update(snapshot(CircuitState.HALF_OPEN, 4, WALL0))
    breaker.probe_grant = 4
    leader = Leader(0.0, 5.0)
    leader.update(True, 1, 0.0)
    budget = Budget("key", "k1", 1.0, parse_period("1h"), "strict")
    book = BudgetBook([budget], slot="s", deployment="d1", provider="openai", wall=wall, clock=FakeClock(0.0))
    limits = RateLimits(rpm=10)
    rates = BudgetGate(host, limits, WindowedLimiter("s", limits, wall_clock=wall), leader, provider="openai",
                       slot="s", key="d1", clock=FakeClock(0.0), wall=wall, sync_interval_s=0.05)
    admission = Admission(breaker, rates, SpendGate(book, host, leader, "openai"))
    asking = job("r1")
    asking.spend = SpendHold(1000, [budget])
    assert admission.admit(asking, 0.0, idle=False) is None        # no worker: nothing asked
    verdict = admission.admit(asking, 0.0, idle=True)
    assert isinstance(verdict, Wait) and [e.key for e in host.of(ev.AskLease)] == [budget.counter_key]
    assert rates.replica.usage().requests == 0                       # the rate limit was not asked yet
    assert breaker.probe_grant == 4                                  # the probe waits for the next look
    admission.end()
    assert breaker.probe_grant is None and host.of(ev.ReportOutcomes)


def test_outside_the_cluster_a_never_joined_node_waits_while_starting_then_refuses():
    leader = Leader(0.0, 5.0)
    leader.update(False, 0, 0.0, in_cluster=False)
    assert isinstance(leader.spend_outside(1.0, "openai"), Wait)
    refused = leader.spend_outside(5.0, "openai")
    assert isinstance(refused, Denied) and isinstance(refused.error, E.LeaderUnavailable)
    leader.update(False, 3, 6.0, in_cluster=False)   # it was in the cluster: its share is known
    assert leader.spend_outside(7.0, "openai") is None and not leader.starting(7.0)


# -- recovery between attempts ------------------------------------------------------------

def recovery(has_session: bool = True, **policy: Any) -> tuple[Recovery, Host, TimerHeap]:
    host = Host()
    timers = TimerHeap(lambda kind, subject, when: True, lambda: 100)
    engine = RetryEngine(RetryPolicy(**{"max_retries": 2, "base_delay_s": 0.5, "jitter": "none", **policy}),
                         clock=FakeClock(0.0), rand=lambda: 0.5)
    return Recovery(host, timers, engine, deployment="d1", idempotent=True, has_session=has_session), host, timers


def report(error: E.InferenceError, *, session_version: int = 0, sent: bool = True) -> WorkerResult:
    return WorkerResult("r1", 1, 0, error=error, usage=Usage(reported=False), session_version=session_version,
                        sent=sent)


def test_a_401_waits_once_for_a_newer_credential_and_goes_again_with_it():
    rec, host, timers = recovery()
    waiting = job("r1")
    waiting.attempts = 1
    unauthorized = E.AuthenticationError("401", status=401)
    rec.after_error(waiting, unauthorized, report(unauthorized, session_version=3), 10.0)
    assert host.of(ev.RefreshSession) == [ev.RefreshSession(3, "provider answered 401")]
    assert timers.next() == 10.0 + SESSION_WAIT_S and rec.stage(waiting) == "waiting for a credential"
    rec.session_changed(ev.SessionChanged(3))              # not newer: still waiting
    assert host.requeued == []
    rec.session_changed(ev.SessionChanged(4))
    assert host.requeued == ["r1"] and waiting.recovery.min_session_version == 4 and rec.waiting == {}
    rec.after_error(waiting, unauthorized, report(unauthorized, session_version=4), 11.0)
    assert len(host.of(ev.RefreshSession)) == 1             # one refresh per request: then the retry policy


def test_a_failed_refresh_ends_the_waiting_request_with_its_401():
    rec, host, _ = recovery()
    waiting = job("r1")
    unauthorized = E.AuthenticationError("401", status=401)
    rec.after_error(waiting, unauthorized, report(unauthorized), 0.0)
    rec.session_changed(ev.SessionChanged(0, ok=False, error=E.CredentialUnavailable("vault down")))
    assert host.failed == [("r1", unauthorized)]


def test_a_retry_waits_its_backoff_and_the_request_budget_ends_it_early():
    rec, host, timers = recovery()
    waiting = job("r1")
    waiting.attempts = 1
    error = E.ServerError("503", status=503)
    rec.after_error(waiting, error, report(error), 2.0)
    assert waiting.recovery.retry_at == pytest.approx(2.5) and timers.next() == pytest.approx(2.5)
    rec.due_retry(waiting, 2.4)
    assert host.requeued == []
    rec.due_retry(waiting, 2.5)
    assert host.requeued == ["r1"] and waiting.recovery.retry_at is None
    spent = job("r2", retry_budget=0)
    spent.attempts = 1
    rec.retry_or_fail(spent, error, 3.0)
    assert host.given_up == [("r2", error)]     # its one budget across deployments is used up


def test_a_failure_after_tokens_ends_the_request_with_what_it_used():
    rec, host, _ = recovery()
    streaming = job("r1")
    streaming.chunks = 2
    cut = E.StreamError("cut")
    rec.after_error(streaming, cut, WorkerResult("r1", 1, 0, error=cut, usage=Usage(5, 3)), 0.0)
    assert host.failed == [("r1", cut)] and cut.partial_usage["output_tokens"] == 3


# -- the hearing ----------------------------------------------------------------------------

def attempt_of(j: Job, seq: int, generation: int = 1, probe: bool = False) -> Attempt:
    j.attempts += 1
    return Attempt(j, j.attempts, 0, generation, probe, j.held, False, 100.0, seq)


def test_a_suspect_500_waits_for_evidence_and_a_later_success_makes_it_the_callers():
    gate, host = breaker_gate(FakeClock(WALL0))
    timers = TimerHeap(lambda kind, subject, when: True, lambda: 100)
    hearing = Hearing(host, gate, timers, slot="s", provider="openai")
    bad = job("bad")
    rejected = E.ServerError("cannot compile the schema", status=500)
    hearing.heard(attempt_of(bad, seq=1), rejected, 0.0)
    assert host.of(ev.ReportOutcomes) == [] and bad.fault.suspect is not None   # not counted on arrival
    assert hearing.hold(bad, rejected, 0.0) and timers.next() == JUDGE_WAIT_S and host.probes == 1
    assert hearing.next_probe("m", lambda rid: False) is not None and hearing.next_probe("m", lambda rid: False) is None
    hearing.heard(attempt_of(job("other"), seq=2), None, 0.1)   # sent after it, served
    ((rid, answer),) = host.failed
    assert rid == "bad" and isinstance(answer, E.UpstreamRejected) and answer.status == 500
    gate.flush()
    assert [o for e in host.of(ev.ReportOutcomes) for o in e.outcomes] == [(1, None)]   # the 500 never counted
    assert hearing.judge.pending == {} and hearing.held == {}


# -- the workers ----------------------------------------------------------------------------

def workers(count: int = 2) -> tuple[Workers, Host, TimerHeap]:
    host = Host()
    timers = TimerHeap(lambda kind, subject, when: True, lambda: 100)
    pool = Workers(host, timers, Timeouts(connect_s=2, read_s=10, total_s=30))
    pool.start(count)
    for index in range(count):
        assert pool.up(index, 100 + index)
    return pool, host, timers


def test_attempts_are_numbered_in_dispatch_order_and_have_a_backstop():
    pool, host, timers = workers()
    first, second = job("a"), job("b", deadline=12.0)
    first.attempts = second.attempts = 1
    a = pool.dispatch(first, Admit(3), now=10.0)
    b = pool.dispatch(second, Admit(3, probe=True), now=10.0)
    assert (a.seq, b.seq) == (1, 2) and b.probe and not a.probe
    assert a.backstop == 10.0 + 30 + ABANDON_GRACE_S and b.backstop == 12.0 + ABANDON_GRACE_S
    assert b.deadline_capped and not a.deadline_capped   # 2 s left: less than a read timeout
    assert [d.index for d in host.of(ev.DispatchTo)] == [a.worker, b.worker] and pool.idle == []
    assert pool.reported(a.worker, "b", 1) is None     # not this worker's request
    assert pool.reported(a.worker, "a", 1) is a and pool.idle == [a.worker]
    assert pool.reported(a.worker, "a", 1) is None     # a duplicate report


def test_a_worker_that_misses_its_grace_is_killed_and_replaced_with_its_attempt_handed_back():
    pool, host, _ = workers(1)
    running = job("a")
    running.attempts = 1
    attempt = pool.dispatch(running, Admit(1), now=0.0)
    pool.abandon(attempt, now=5.0)
    assert host.of(ev.AbandonOnWorker) == [ev.AbandonOnWorker(0, "a")] and running.attempt is None
    assert pool.overdue(attempt, 5.0 + ABANDON_GRACE_S - 0.01) is None
    assert "did not report within" in (pool.overdue(attempt, 5.0 + ABANDON_GRACE_S) or "")
    assert pool.replace(0, kill=True) is attempt
    assert host.effects[-2:] == [ev.KillWorker(0, 100), ev.StartWorker(0)]
    assert pool.running(0) is None and not pool.slots[0].ready and pool.idle == []


def test_away_from_the_cluster_this_node_admits_within_its_exclusive_share():
    leader = Leader(0.0, 5.0)
    gate, _, _ = budget_gate(RateLimits(rpm=10, tpm=1000, burst=0.5, leader_unavailable="local_share"), leader)
    gate.leader_changed(False, 3, 1.0, in_cluster=False)    # lost, and the budget splits in three
    assert isinstance(gate.admit(job("a", estimate=100), 1.0), Reserved)
    share = gate.fallback
    assert share is not None and share.node == "n1/d1/0/fallback" and share.exclusive
    assert share.limits == RateLimits(rpm=3, tpm=333, burst=0.5, window_s=60.0)
    assert share.usage().window == int(WALL0 // 60) and share.usage().tokens == 100   # on the engine's clocks
    gate.leader_changed(True, 3, 2.0, in_cluster=True)
    assert gate.fallback is None                            # back: the share is dropped


def test_a_share_smaller_than_one_is_one():
    leader = Leader(0.0, 5.0)
    gate, _, _ = budget_gate(RateLimits(rpm=2, tpm=2, leader_unavailable="local_share"), leader)
    gate.leader_changed(False, 3, 1.0, in_cluster=False)
    gate.admit(job("a", estimate=1), 1.0)
    assert gate.fallback.limits.rpm == 1 and gate.fallback.limits.tpm == 1


def test_the_budget_gate_merges_only_its_own_key_from_other_slots_and_learns_their_lag():
    gate, _, _ = budget_gate(RateLimits(rpm=100))
    window = int(WALL0 // 60)
    delta = {window: {"requests": {"n2/d1/0": 4}}}
    gate.merge(ev.PeerCounts("other-deployment", delta, origin="n2/d1/0"))
    gate.merge(ev.PeerCounts("d1", {window: {"requests": {"n1/d1/0": 9}}}, origin="n1/d1/0"))   # its own echo
    assert gate.replica.usage().requests == 0
    gate.merge(ev.PeerCounts("d1", delta, origin="n2/d1/0", sent_unix=WALL0 - 3.0))
    assert gate.replica.usage().requests == 4 and gate.replica.staleness_s > 6.0


def test_a_probe_refusal_holds_off_the_next_ask_from_when_it_came():
    gate, host = breaker_gate(FakeClock(WALL0))
    gate.take_probe(1.0)
    (ask,) = host.of(ev.AskProbe)
    gate.probe_refused("a stale token", 1.2)
    assert gate.view.probe_requested and gate.probe_refused_at is None and host.pumps == [1.0 + PROBE_RETRY_S]
    gate.probe_refused(ask.token, 1.2)
    assert not gate.view.probe_requested and host.pumps[-1] == pytest.approx(1.2 + PROBE_RETRY_S)
    gate.take_probe(1.3)
    assert len(host.of(ev.AskProbe)) == 1                   # not before PROBE_RETRY_S after the refusal
    gate.take_probe(1.2 + PROBE_RETRY_S)
    assert len(host.of(ev.AskProbe)) == 2


def test_a_granted_probe_is_no_longer_being_asked_for():
    gate, host = breaker_gate(FakeClock(WALL0))
    gate.take_probe(1.0)
    gate.probe_admitted(host.of(ev.AskProbe)[0].token, 5)
    assert not gate.view.probe_requested and gate.probe_grant == 5


def test_a_refused_probe_is_asked_for_again_a_full_interval_after_the_refusal():
    from harness import Rig

    rig = Rig()
    rig.breaker(CircuitState.OPEN, retry_in_s=0)
    (first,) = rig.of(ev.AskProbe, rig.submit("r1"))
    rig.advance(0.2)
    rig.feed(ev.ProbeRefused(first.token))
    assert rig.of(ev.AskProbe, rig.advance(0.1)) == []      # an unanswered ask would go again at 0.25
    assert len(rig.of(ev.AskProbe, rig.advance(0.2))) == 1


def test_where_the_cluster_is_starts_unknown_and_follows_the_registry():
    leader = Leader(10.0, 5.0)
    assert leader.starting(14.9) and not leader.starting(15.0)       # unknown for failure_timeout_s at most
    leader.update(False, 0, 11.0)                                    # never in the cluster yet: still unknown
    assert not leader.lost and leader.down_since == 10.0 and leader.in_cluster
    leader.update(True, 2, 12.0)
    assert leader.available and leader.down_since is None and not leader.lost
    leader.update(False, 2, 13.0, in_cluster=False)                  # it had a share: a loss, since now
    assert leader.lost and leader.down_since == 13.0 and not leader.in_cluster and not leader.starting(13.0)
    refused = leader.no_share("openai")
    assert (refused.error.provider, refused.error.retry_after_s, refused.error.retryable) == ("openai", 5.0, True)
    assert refused.error.message.startswith("this node has not been in the cluster since it started")


def test_outside_the_cluster_an_approximate_budget_waits_while_starting_then_follows_leader_unavailable():
    leader = Leader(0.0, 5.0)
    fail, _, _ = budget_gate(RateLimits(rpm=10, leader_unavailable="fail"), leader)
    fail.leader_changed(False, 0, 0.0, in_cluster=False)
    assert fail.admit(job("a"), 1.0) == Wait(1.0 + 0.05)              # starting: looked at again shortly
    refused = fail.admit(job("a"), 5.0)
    assert isinstance(refused, Denied) and (refused.error.provider, refused.error.retry_after_s) == ("openai", 5.0)
    assert refused.error.message == ("this node is not in the cluster (its leader is unreachable) and the budget "
                                     "is limits.leader_unavailable: fail")
    share, _, _ = budget_gate(RateLimits(rpm=10, leader_unavailable="local_share"), Leader(0.0, 5.0))
    share.leader_changed(False, 0, 0.0, in_cluster=False)
    assert share.admit(job("a"), 6.0) == share.leader.no_share("openai")   # no share known: refused
    share.leader_changed(False, 1, 6.0, in_cluster=False)
    assert isinstance(share.admit(job("b"), 6.0), Reserved)          # a share of one: the whole budget, exclusively


def test_a_share_refused_by_the_replica_is_given_back_to_the_share():
    gate, _, _ = budget_gate(RateLimits(rpm=2, leader_unavailable="local_share"), Leader(0.0, 5.0))
    gate.replica.record(0, requests=2)                               # the cluster spent the window already
    gate.leader_changed(False, 1, 1.0, in_cluster=False)
    assert isinstance(gate.admit(job("a"), 1.0), Wait)
    assert gate.fallback.usage().requests == 0                       # not kept by the share either


def test_strict_admission_waits_for_the_leader_then_fails_closed_or_falls_back_to_a_share():
    leader = Leader(0.0, 5.0)
    closed, _, _ = budget_gate(RateLimits(rpm=10, mode="strict"), leader)
    assert closed.admit(job("a"), 1.0) == Wait(1.0 + 0.05)           # the registry has not said yet
    refused = closed.admit(job("a"), 5.0)
    assert isinstance(refused, Denied) and refused.error.provider == "openai" and refused.error.retry_after_s == 5.0
    assert refused.error.message == ("strict rate limiting needs the convention leader, which is unreachable, "
                                     "and its lease has expired")
    shared = Leader(0.0, 5.0)
    gate, _, _ = budget_gate(RateLimits(rpm=10, mode="strict", leader_unavailable="local_share"), shared)
    gate.leader_changed(False, 2, 1.0, in_cluster=True)
    assert isinstance(gate.admit(job("a"), 1.0), Reserved) and gate.fallback.limits.rpm == 5


def test_a_lease_ask_unanswered_for_the_ask_timeout_is_taken_for_a_lost_leader():
    leader = Leader(0.0, 5.0)
    leader.update(True, 1, 0.0)
    gate, host, _ = budget_gate(RateLimits(rpm=10, mode="strict"), leader)
    waiting = job("r1")
    assert isinstance(gate.admit(waiting, 0.0), Wait)
    assert isinstance(gate.admit(waiting, 1.9), Wait) and len(host.of(ev.AskLease)) == 2   # asked again after REFRESH_S
    refused = gate.admit(waiting, 2.0)                               # STRICT_ASK_TIMEOUT_S since the first
    assert isinstance(refused, Denied) and isinstance(refused.error, E.LeaderUnavailable)


def test_a_replica_publishes_from_when_its_oldest_unpublished_admission_happened():
    gate, host, _ = budget_gate(RateLimits(rpm=100))
    first_job = job("a")
    gate.admit(first_job, 0.0)
    first = gate.wall()
    gate.wall.advance(0.04)
    gate.admit(job("b"), 0.04)
    gate.publish(0.05)
    (published,) = host.of(ev.PublishCounts)
    assert published.sent_unix == first
    gate.wall.advance(1.0)
    gate.settle(first_job.held, Settlement(Settle.RELEASE))   # a refund only: nothing admitted since, so "now"
    gate.publish(1.1)
    assert host.of(ev.PublishCounts)[-1].sent_unix == gate.wall() == first + 1.04


def test_a_window_reports_its_start_and_limits():
    from actors.core.periods import parse_period

    lim = WindowedLimiter("n1", RateLimits(rpm=5, tpm=50), wall_clock=FakeClock(WALL0 + 75))
    usage = lim.usage()
    assert (usage.window_start_unix, usage.rpm, usage.tpm) == (WALL0 + 60, 5, 50)
    period = parse_period("1d")
    spend = WindowedLimiter("n1", RateLimits(tpm=9, period=period, window_s=period.nominal_s),
                            wall_clock=FakeClock(WALL0 + 75))
    assert spend.usage().window_start_unix == period.start(period.index(WALL0 + 75))


def test_a_parked_request_fails_at_its_wait_end_and_not_before_nor_after_it_went_again():
    rec, host, _ = recovery()
    waiting = job("r1")
    unauthorized = E.AuthenticationError("401", status=401)
    rec.after_error(waiting, unauthorized, report(unauthorized), 10.0)
    rec.due_parked(waiting, 10.0 + SESSION_WAIT_S - 0.01)
    assert host.failed == []
    rec.due_parked(waiting, 10.0 + SESSION_WAIT_S)
    assert host.failed == [("r1", unauthorized)]
    again, host2, _ = recovery()
    other = job("r1")
    again.after_error(other, unauthorized, report(unauthorized), 10.0)
    again.session_changed(ev.SessionChanged(1))            # a newer credential: it went again
    again.due_parked(other, 10.0 + SESSION_WAIT_S)
    assert host2.failed == [] and host2.requeued == ["r1"]


def test_the_share_keeps_the_budgets_window_and_what_it_does_not_limit():
    leader = Leader(0.0, 5.0)
    gate, _, _ = budget_gate(RateLimits(tpm=900, window_s=10.0, leader_unavailable="local_share"), leader)
    gate.leader_changed(False, 3, 1.0, in_cluster=False)
    assert isinstance(gate.admit(job("a", estimate=100), 1.0), Reserved)
    assert gate.fallback.limits == RateLimits(rpm=None, tpm=300, window_s=10.0)


@pytest.mark.parametrize("mode,kept_while", [("strict", "in the cluster, leader unreachable"),
                                            ("approximate", "leader reachable, outside the cluster")])
def test_the_share_is_dropped_only_when_what_the_budget_depends_on_is_back(mode, kept_while):
    gate, _, _ = budget_gate(RateLimits(rpm=10, mode=mode, leader_unavailable="local_share"), Leader(0.0, 5.0))
    gate.leader_changed(False, 3, 1.0, in_cluster=False)
    gate.fallback = share = gate._fallback()
    available, in_cluster = (False, True) if mode == "strict" else (True, False)
    gate.leader_changed(available, 3, 2.0, in_cluster=in_cluster)
    assert gate.fallback is share, kept_while
    gate.leader_changed(mode == "strict", 3, 3.0, in_cluster=mode != "strict")
    assert gate.fallback is None


def spend_gate(*budgets: Budget, leader: Leader) -> tuple[SpendGate, Host, BudgetBook]:
    host, wall = Host(), FakeClock(WALL0)
    book = BudgetBook(budgets, slot="s", deployment="d1", provider="openai", wall=wall, clock=FakeClock(0.0))
    return SpendGate(book, host, leader, "openai"), host, book


def test_the_spend_gate_waits_for_a_strict_answer_from_now_and_names_its_provider_when_outside():
    joined = Leader(0.0, 5.0)
    joined.update(True, 1, 0.0)
    strict = Budget("key", "k1", 1.0, parse_period("1h"), "strict")
    gate, host, _ = spend_gate(strict, leader=joined)
    gate.backlog = lambda key: (1, 1000) if key == strict.counter_key else (0, 0)
    wait = gate.admit(SpendHold(1000, [strict]), 10.0)
    (ask,) = host.of(ev.AskLease)
    assert wait == Wait(10.0 + 0.05) and (ask.key, ask.limits) == (strict.counter_key, strict.limits)
    assert ask.ask.want == (1, 1000) and ask.ask.window == strict.period.index(WALL0)
    never_joined = Leader(0.0, 5.0)
    never_joined.update(False, 0, 0.0, in_cluster=False)
    approx = Budget("key", "k1", 1.0, parse_period("1h"))
    gate, _, _ = spend_gate(approx, leader=never_joined)
    refused = gate.admit(SpendHold(1000, [approx]), 60.0)
    assert isinstance(refused, Denied) and refused.error.provider == "openai"
    # a strict-only hold is not an approximate budget spent outside the cluster: it asks the leader's limiter
    gate, _, _ = spend_gate(strict, leader=never_joined)
    strict_refused = gate.admit(SpendHold(1000, [strict]), 60.0)
    assert isinstance(strict_refused, Denied) and strict_refused.error.provider == "openai"
    assert strict_refused.error.message.startswith("a strict spend budget needs the convention leader")


def offer_lease(gate, host, budget, nano, now=0.0):
    """The leader's answer to the gate's last ask of ``budget``: a lease of ``nano``."""
    ask = [e.ask for e in host.of(ev.AskLease) if e.key == budget.counter_key][-1]
    return gate.offered(budget.counter_key, LeaseGrant(ask.client, ask.seq, ask.window, (None, nano), 3.0,
                                                       (None, budget.nano)), now)


def test_a_request_that_sent_nothing_gives_its_spend_back_in_full():
    leader = Leader(0.0, 5.0)
    leader.update(True, 1, 0.0)
    approx, strict = Budget("key", "k1", 1.0, parse_period("1h")), Budget("team", "t", 1.0, parse_period("1h"),
                                                                          "strict")
    gate, host, book = spend_gate(approx, strict, leader=leader)
    hold = SpendHold(1000, [approx, strict])
    assert isinstance(gate.admit(hold, 0.0), Wait)
    assert offer_lease(gate, host, strict, 1000)
    assert gate.admit(hold, 0.01) is None
    assert book.limiters[approx.counter_key].usage().tokens == 1000
    assert book.limiters[strict.counter_key].usage().requests == 1
    hold.sent = False
    gate.settle(hold)
    for key in (approx.counter_key, strict.counter_key):
        assert (book.limiters[key].usage().requests, book.limiters[key].usage().tokens) == (0, 0)


def test_a_node_that_was_in_the_cluster_spends_on_against_what_its_replica_holds():
    lost = Leader(0.0, 5.0)
    lost.update(False, 1, 10.0, in_cluster=False)          # one share known: it was in the cluster
    assert lost.spend_outside(60.0, "openai") is None


def test_the_spend_gate_takes_only_the_answer_to_its_own_ask_of_its_own_budget():
    leader = Leader(0.0, 5.0)
    leader.update(True, 1, 0.0)
    strict = Budget("key", "k1", 1.0, parse_period("1h"), "strict")
    gate, host, book = spend_gate(strict, leader=leader)
    hold = SpendHold(1000, [strict])
    gate.admit(hold, 0.0)
    (ask,) = [e.ask for e in host.of(ev.AskLease)]
    grant = LeaseGrant(ask.client, ask.seq, ask.window, (None, 1000), 3.0, (None, strict.nano))
    assert not gate.offered("spend:team=t/1h", grant, 0.0)                       # not one of its budgets
    assert not gate.offered(strict.counter_key, replace(grant, seq=ask.seq + 1), 0.0)   # never asked
    assert not gate.offered(strict.counter_key, replace(grant, client="other"), 0.0)
    assert gate.admit(hold, 0.01) is not None and not hold.admitted
    assert gate.offered(strict.counter_key, grant, 0.0)
    assert gate.admit(hold, 0.02) is None and hold.admitted
    assert book.limiters[strict.counter_key].usage().tokens == 1000


def test_the_spend_gate_learns_how_late_other_slots_counts_arrive():
    leader = Leader(0.0, 5.0)
    leader.update(True, 1, 0.0)
    approx = Budget("key", "k1", 1.0, parse_period("1h"))
    gate, _, book = spend_gate(approx, leader=leader)
    window = approx.period.index(WALL0)
    assert gate.merge(ev.PeerCounts(approx.counter_key, {window: {"tokens": {"n2": 5}}}, origin="n2",
                                    sent_unix=WALL0 - 3.0))
    assert book.limiters[approx.counter_key].usage().tokens == 5
    assert book.limiters[approx.counter_key].staleness_s > 6.0


def test_a_budget_mode_must_be_one_of_two():
    from actors.core.budget import BudgetSpec

    with pytest.raises(ValueError) as info:
        BudgetSpec(usd=1.0, period="1h", key="k", mode="lenient")
    assert str(info.value) == "mode: must be approximate or strict, got 'lenient'"


def test_the_budget_gate_waits_as_long_as_the_limiter_says_unless_the_deadline_comes_first():
    gate, _, _ = budget_gate(RateLimits(rpm=600, burst=0.1))
    admitted = job("a")
    first = gate.admit(admitted, 0.0)
    assert isinstance(first, Reserved) and first.reservation is admitted.held.reservation is not None
    for i in range(59):
        assert isinstance(gate.admit(job(f"b{i}"), 0.0), Reserved)
    wait = gate.admit(job("w"), 0.0)
    assert isinstance(wait, Wait) and wait.until == pytest.approx(0.1)       # a tenth of a second: said as it is
    assert isinstance(gate.admit(job("d", deadline=wait.until), 0.0), Denied)  # the wait would reach the deadline
    assert isinstance(gate.admit(job("e", deadline=wait.until + 0.01), 0.0), Wait)


def test_a_new_credential_sends_every_parked_request_again_past_those_waiting_for_a_retry():
    rec, host, _ = recovery()
    retrying, parked = job("r0"), job("r1")
    retrying.attempts = 1
    rec.retry_or_fail(retrying, E.ServerError("busy", status=503, retryable=True), 0.0)
    unauthorized = E.AuthenticationError("401", status=401)
    rec.after_error(parked, unauthorized, report(unauthorized), 0.0)
    rec.session_changed(ev.SessionChanged(1))
    assert host.requeued == ["r1"] and list(rec.waiting) == ["r0"]
    assert rec.stage(parked) is None and parked.recovery.parked is None


def test_the_heap_keeps_the_earliest_look_asked_for_whatever_the_order():
    timers = TimerHeap(lambda kind, subject, when: True, lambda: 100)
    timers.pump_soon(6.0)
    timers.pump_soon(9.0)
    assert timers.pump_at == 6.0


def test_a_request_that_ends_with_another_error_than_its_suspect_500_is_answered_at_once():
    gate, host = breaker_gate(FakeClock(WALL0))
    timers = TimerHeap(lambda kind, subject, when: True, lambda: 100)
    hearing = Hearing(host, gate, timers, slot="s", provider="openai")
    bad = job("bad")
    hearing.heard(attempt_of(bad, seq=1), E.ServerError("cannot compile the schema", status=500), 0.0)
    later = E.DeadlineExceeded("the deadline passed")
    assert not hearing.hold(bad, later, 0.0) and hearing.held == {} and host.probes == 0


def test_a_parked_request_logs_its_401_and_its_timer_is_live_only_while_it_waits():
    from actors.types import AttemptInfo

    rec, _, _ = recovery()
    waiting = job("r1")
    unauthorized = E.AuthenticationError("401", status=401)
    rec.after_error(waiting, unauthorized, report(unauthorized), 10.0)
    assert waiting.log == [AttemptInfo("d1", "authentication_error", 401)]
    until = 10.0 + SESSION_WAIT_S
    assert rec.live("parked", waiting, until) and not rec.live("parked", waiting, until + 1)
    assert not rec.live("parked", job("r1"), until)          # another job of the same id is not the one waiting
    rec.session_changed(ev.SessionChanged(1))
    assert not rec.live("parked", waiting, until)
