"""Spend budgets: periods, the engine core's admission and settlement against them, seeds, strict mode."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from actors import errors as E
from actors.core import engine_events as ev
from actors.core.admission import Denied, Leader, Wait
from actors.core.retry import RetryPolicy
from actors.core.budget import NANO, UNKNOWN_PRICE, Budget, BudgetBook, BudgetSpec, SpendHold
from actors.core.leases import LeaseGrant
from actors.core.periods import parse_period
from actors.core.pricing import Price
from actors.errors import ConfigError
from actors.runtime.ledger_store import LedgerStore, seed_for
from actors.settings.loader import parse_config
from actors.types import Completed, Failed, Usage
from harness import Rig

PRICE = Price(input=1.0, output=2.0)   # USD per million tokens


def utc(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


# -- periods ----------------------------------------------------------------------------

def test_fixed_periods_are_aligned_on_unix_time():
    hour, day = parse_period("1h"), parse_period("1d")
    t = utc(2026, 12, 1, 17, 30)
    assert hour.start(hour.index(t)) == utc(2026, 12, 1, 17) and hour.end(hour.index(t)) == utc(2026, 12, 1, 18)
    assert day.start(day.index(t)) == utc(2026, 12, 1) and day.at(t)[1] == pytest.approx(17.5 / 24)
    thirty = parse_period("30d")
    assert thirty.end(thirty.index(t)) - thirty.start(thirty.index(t)) == 30 * 86400


def test_calendar_months_roll_over_the_year_and_have_their_own_lengths():
    month = parse_period("1mo")
    dec = month.index(utc(2026, 12, 31, 23, 59))
    assert month.start(dec) == utc(2026, 12, 1) and month.end(dec) == utc(2027, 1, 1)
    assert month.index(utc(2027, 1, 1)) == dec + 1
    feb = month.index(utc(2028, 2, 15))
    assert month.end(feb) - month.start(feb) == 29 * 86400  # a leap year
    quarter = parse_period("3mo")
    assert quarter.start(quarter.index(utc(2026, 5, 20))) == utc(2026, 4, 1)


@pytest.mark.parametrize("text", ["", "1", "0d", "5mo", "1w", "d1", "1.5h"])
def test_bad_periods_are_refused(text):
    with pytest.raises(ValueError, match="period"):
        parse_period(text)


# -- configuration ----------------------------------------------------------------------

DEP = {"name": "gpt4o-east", "model": "gpt-4o", "provider": "openai", "endpoint": "http://127.0.0.1:9/v1"}


def config(budgets, **extra):
    return parse_config({"deployments": [DEP], "budgets": budgets, **extra}, "spend.yaml", credentials=False)


def test_the_issue_s_budgets_load():
    cfg = config([{"team": "search", "usd": 200, "period": "1d"},
                  {"key": "team-search", "usd": 20, "period": "1h"},
                  {"deployment": "gpt4o-east", "usd": 1000, "period": "30d", "mode": "strict"}])
    assert [b.budget().id for b in cfg.budgets] == ["team=search/1d", "key=team-search/1h", "deployment=gpt4o-east/30d"]
    assert cfg.budgets[2].budget().mode == "strict" and cfg.budgets[0].usd == 200.0


@pytest.mark.parametrize("budget, message", [
    ({"usd": 5, "period": "1d"}, "budgets[0]: give exactly one of key, team, deployment, provider"),
    ({"team": "a", "key": "b", "usd": 5, "period": "1d"}, "exactly one"),
    ({"team": "a", "usd": 0, "period": "1d"}, "budgets[0].usd: must be > 0"),
    ({"team": "a", "usd": 5, "period": "1week"}, "budgets[0].period"),
    ({"team": "a", "usd": 5, "period": "1d", "mode": "exact"}, "budgets[0].mode"),
    ({"deployment": "nope", "usd": 5, "period": "1d"}, "budgets[0].deployment: no deployment is named 'nope'"),
    ({"provider": "gemini", "usd": 5, "period": "1d"}, "budgets[0].provider: no deployment uses provider"),
    ({"team": "a", "usd": 5, "period": "1d", "cap": 1}, "budgets[0].cap: unknown key"),
])
def test_bad_budgets_name_the_file_the_field_and_the_value(budget, message):
    with pytest.raises(ConfigError) as info:
        config([budget])
    assert "spend.yaml" in str(info.value) and message in str(info.value)


def test_a_period_longer_than_the_ledger_keeps_records_is_refused():
    with pytest.raises(ConfigError, match="longer than node.ledger_retention_days"):
        config([{"team": "a", "usd": 5, "period": "30d"}], node={"ledger": "/tmp/x.db", "ledger_retention_days": 7})


# -- the engine core against budgets ----------------------------------------------------

class BudgetRig(Rig):
    """The harness's Rig with spend budgets (and a price) in its engine core."""

    def __init__(self, budgets, seed=None, price=PRICE, wall_at=None, **overrides):
        super().__init__(up=False, **overrides)
        if wall_at is not None:
            self.wall_offset = wall_at - self.mono
        self.start(node="n1", price=price, budgets=budgets, budget_slot="n1@h:1/d1/0", budget_seed=seed)

    def call(self, rid, key="k1", usage=None, **kw):
        self.submit(rid, metadata={"http_key": key}, **kw)
        if self.dispatches(rid):
            self.report(rid, usage=usage or Usage(100, 50))
        return self.terminal(rid)


def key_budget(usd, period="1h", name="k1", mode="approximate"):
    return Budget("key", name, usd, parse_period(period), mode)


def cost_of(usage, price=PRICE):
    return (usage.input_tokens * price.input + usage.output_tokens * price.output) / 1e6


def test_calls_succeed_until_the_key_budget_is_spent_then_budget_exceeded_until_the_period_rolls():
    # Each call: 100 in + 50 out = $0.0002; the estimate (prompt + max_tokens 10) is smaller.
    budget = key_budget(0.001)
    rig = BudgetRig([budget], wall_at=utc(2026, 12, 1, 17, 0, 1))
    results = [rig.call(f"r{i}") for i in range(8)]
    done = [r for r in results if isinstance(r, Completed)]
    refused = [r for r in results if isinstance(r, Failed)]
    assert len(done) == 5 and len(refused) == 3  # $0.001 / $0.0002: five calls, then refused
    error = refused[0].error
    assert isinstance(error, E.BudgetExceeded) and not error.retryable and error.limit == "key=k1/1h"
    assert "budget key=k1/1h is spent" in error.message and "resets at 2026-12-01T18:00:00Z" in error.message
    assert error.retry_after_s == pytest.approx(3599, abs=1)
    assert len(rig.dispatches()) == 5  # nothing refused was sent
    # another key is not held back by k1's budget
    assert isinstance(rig.call("other", key="k2"), Completed)
    # the next hour: allowed again
    rig.wall_offset += 3600
    assert isinstance(rig.call("next-hour"), Completed)


def test_records_carry_what_the_budget_was_charged():
    rig = BudgetRig([key_budget(1.0)])
    rig.call("r1", usage=Usage(100, 50))
    (record,) = rig.core.take_records()
    assert record.cost_usd == pytest.approx(cost_of(Usage(100, 50)))
    assert record.charged_usd == pytest.approx(record.cost_usd) and record.key == "k1"


def test_unknown_usage_is_charged_the_estimate_never_zero():
    rig = BudgetRig([key_budget(1.0)])
    rig.call("r1", usage=Usage(reported=False), params={"max_tokens": 1000})
    (record,) = rig.core.take_records()
    assert record.cost_usd is None and not record.usage_reported
    assert record.charged_usd * NANO == BudgetBook.estimate([{"role": "user", "content": "hello"}], 1000, 256, PRICE)
    assert record.charged_usd >= 1000 * PRICE.output / 1e6


def test_an_unknown_price_is_recorded_unknown_and_charged_by_estimate():
    rig = BudgetRig([key_budget(1.0)], price=None)
    rig.call("r1", usage=Usage(100, 50))
    (record,) = rig.core.take_records()
    assert record.cost_usd is None
    assert record.charged_usd == pytest.approx(cost_of(Usage(100, 50), UNKNOWN_PRICE)) and record.charged_usd > 0


def test_an_attempt_that_never_reached_the_provider_costs_nothing():
    rig = BudgetRig([key_budget(1.0)])
    rig.submit("r1", metadata={"http_key": "k1"})
    rig.report("r1", error=E.NetworkError("connection refused"), sent=False, usage=Usage(reported=False))
    rig.advance(1.0)  # the retry goes out
    assert len(rig.dispatches("r1")) == 2
    rig.report("r1", usage=Usage(10, 10))
    (record,) = rig.core.take_records()
    assert record.attempts == 2 and record.charged_usd == pytest.approx(cost_of(Usage(10, 10)))


def test_a_restarted_engine_seeded_from_the_ledger_still_refuses_in_the_same_period(tmp_path):
    budget = key_budget(0.001)
    t0 = utc(2026, 12, 1, 17, 0, 1)
    rig = BudgetRig([budget], wall_at=t0)
    for i in range(5):
        assert isinstance(rig.call(f"r{i}"), Completed)
    store = LedgerStore(str(tmp_path / "ledger.db"))
    store.write(("n1@h:1/d1/0", r) for r in rig.core.take_records())
    store.close()
    seed = seed_for(str(tmp_path / "ledger.db"), "n1@h:1/d1/0", [budget], t0 + 60)
    assert seed == {budget.counter_key: 5 * round(cost_of(Usage(100, 50)) * NANO)}
    restarted = BudgetRig([budget], seed=seed, wall_at=t0 + 60)
    assert isinstance(restarted.call("after-restart").error, E.BudgetExceeded)
    # an hour later the ledger's rows are in the previous period: nothing to seed, calls pass
    assert seed_for(str(tmp_path / "ledger.db"), "n1@h:1/d1/0", [budget], t0 + 3600) == {}
    later = BudgetRig([budget], seed={}, wall_at=t0 + 3600)
    assert isinstance(later.call("next-period"), Completed)


def test_team_deployment_and_provider_budgets_apply_to_the_callers_they_name():
    team = Budget("team", "search", 0.0002, parse_period("1d"))
    rig = BudgetRig([team])
    rig.submit("t1", metadata={"http_key": "a", "http_team": "search"})
    rig.report("t1", usage=Usage(100, 50))
    rig.submit("t2", metadata={"http_key": "b", "http_team": "search"})
    assert isinstance(rig.terminal("t2").error, E.BudgetExceeded)
    assert isinstance(rig.call("python-client", key=""), Completed)  # no team: not this budget's
    dep = Budget("deployment", "d1", 0.0002, parse_period("1d"))
    rig = BudgetRig([dep, Budget("deployment", "other", 0.0000001, parse_period("1d"))])
    assert isinstance(rig.call("d1", key=""), Completed)  # "other" is not this engine's
    assert rig.core.status()["budget_spent"] == ["deployment=d1/1d"]  # what routing reads to skip it
    assert isinstance(rig.call("d2", key="").error, E.BudgetExceeded)


def test_a_request_whose_estimate_exceeds_the_whole_budget_is_refused_without_sending():
    rig = BudgetRig([key_budget(0.000001)])
    result = rig.call("big", params={"max_tokens": 5000})
    assert isinstance(result.error, E.BudgetExceeded) and rig.dispatches() == []


def test_budget_deltas_are_published_to_the_hub_and_peers_counts_are_merged():
    budget = key_budget(0.001)
    rig = BudgetRig([budget], has_hub=True)
    rig.core.has_hub = True
    rig.call("r1")
    published = [e for e in rig.advance(0.2) if type(e).__name__ == "PublishSpend"]
    assert published and published[-1].key == budget.counter_key
    window = budget.period.index(rig.wall())
    # another node spent the rest: this engine refuses from then on
    rig.feed(ev.PeerCounts(budget.counter_key, {window: {"tokens": {"n2@h:2/d1/0": 10 ** 6},
                                                           "requests": {"n2@h:2/d1/0": 5}}}, "n2@h:2/d1/0"))
    assert isinstance(rig.call("r2").error, E.BudgetExceeded)


# -- strict budgets: spent locally under a lease of the period (core/leases.py) ----------

def strict_rig(*budgets, **kw):
    rig = BudgetRig(list(budgets) or [key_budget(1.0, mode="strict")], **kw)
    rig.feed(ev.StrictLeader(True, 1))
    return rig


def spend_asks(budget, effects):
    """The lease asks of ``budget`` among ``effects``."""
    return [e.ask for e in effects if isinstance(e, ev.AskLease) and e.key == budget.counter_key]


def spend_offer(rig, budget, ask, nano, left=None, ttl_s=3.0):
    """The leader's answer to ``ask``: may have spent up to ``nano`` of the period; ``left`` across the cluster."""
    return rig.feed(ev.LeaseOffered(budget.counter_key, LeaseGrant(
        ask.client, ask.seq, ask.window, (None, nano), ttl_s, (None, budget.nano if left is None else left))))


def estimate_of(rig, rid):
    return rig.core.jobs[rid].spend.estimate_nano


def test_a_strict_spend_budget_admits_within_its_lease_with_no_round_trip_per_request():
    budget = key_budget(1.0, mode="strict")
    rig = strict_rig(budget)
    effects = rig.submit("r1", metadata={"http_key": "k1"})
    estimate = estimate_of(rig, "r1")
    (ask,) = spend_asks(budget, effects)
    assert ask.window == budget.period.index(rig.wall()) and ask.spent == (0, 0) and ask.want[1] >= estimate
    assert ask.held == (None, None) and ask.holding == 0 and rig.dispatches() == []   # nothing without a lease
    spend_offer(rig, budget, ask, 3 * estimate)
    assert rig.dispatches("r1")
    for rid in ("r2", "r3"):
        effects = rig.submit(rid, metadata={"http_key": "k1"})
        assert rig.dispatches(rid, effects) and rig.of(ev.AskLease, effects) == []    # spent locally
        rig.report(rid, usage=Usage(reported=False))
    assert rig.core.book.limiters[budget.counter_key].own(ask.window) == (3, 3 * estimate)


def test_a_request_the_lease_does_not_cover_waits_and_its_estimate_is_asked_for_at_once():
    budget = key_budget(1.0, mode="strict")
    rig = strict_rig(budget)
    (ask,) = spend_asks(budget, rig.submit("r1", metadata={"http_key": "k1"}))
    estimate = estimate_of(rig, "r1")
    spend_offer(rig, budget, ask, estimate + estimate // 2)     # room for one and a half
    assert rig.dispatches("r1")
    effects = rig.submit("r2", metadata={"http_key": "k1"})
    assert rig.dispatches("r2") == []
    (again,) = spend_asks(budget, effects + rig.advance(0.2 / 8))   # blocked: asked within an eighth of REFRESH_S
    assert again.holding == ask.seq and again.held == (None, estimate + estimate // 2)
    assert again.spent == (1, estimate) and again.want[1] >= estimate   # r1 held at its estimate; r2 waits for it
    assert rig.dispatches("r2") == []
    spend_offer(rig, budget, again, 2 * estimate)
    assert rig.dispatches("r2")


def test_settled_to_the_actual_cost_and_reported_at_the_next_ask():
    budget = key_budget(1.0, mode="strict")
    rig = strict_rig(budget)
    (ask,) = spend_asks(budget, rig.submit("r1", metadata={"http_key": "k1"}))
    spend_offer(rig, budget, ask, 10 ** 8)
    rig.submit("r2", metadata={"http_key": "k1"})
    rig.report("r1", usage=Usage(100, 50))                                       # charged what it cost
    rig.report("r2", error=E.ServerError("503", status=503, retryable=False), usage=Usage(reported=False),
               sent=False)                                                       # never reached the provider
    rig.submit("r3", metadata={"http_key": "k1"}, params={"max_tokens": 1000})
    estimate3 = estimate_of(rig, "r3")
    rig.report("r3", usage=Usage(reported=False))                                # usage unknown: the estimate
    (later,) = spend_asks(budget, rig.advance(0.25))                             # the next refresh
    assert later.spent == (2, round(cost_of(Usage(100, 50)) * NANO) + estimate3)
    assert later.holding == ask.seq


def test_a_spent_strict_budget_refuses_naming_the_budget_and_when_it_resets():
    budget = key_budget(0.001, mode="strict")
    rig = strict_rig(budget, wall_at=utc(2026, 12, 1, 17, 0, 1))
    (ask,) = spend_asks(budget, rig.submit("r1", metadata={"http_key": "k1"}))
    estimate = estimate_of(rig, "r1")
    spend_offer(rig, budget, ask, estimate, left=estimate)       # the rest of the period, all this engine's
    rig.report("r1", usage=Usage(reported=False))
    rig.submit("r2", metadata={"http_key": "k1"})
    (again,) = spend_asks(budget, rig.advance(0.2 / 8))
    spend_offer(rig, budget, again, estimate, left=0)             # nothing is left anywhere in the cluster
    error = rig.terminal("r2").error
    assert isinstance(error, E.BudgetExceeded) and not error.retryable and error.limit == "key=k1/1h"
    assert "budget key=k1/1h is spent: $0.001000 of $0.001" in error.message
    assert "resets at 2026-12-01T18:00:00Z" in error.message and error.retry_after_s == pytest.approx(3599, abs=1)
    assert len(rig.dispatches()) == 1


def test_a_request_dearer_than_the_whole_strict_budget_is_refused_without_asking():
    budget = key_budget(0.000001, mode="strict")
    rig = strict_rig(budget)
    effects = rig.submit("r1", metadata={"http_key": "k1"}, params={"max_tokens": 1000})
    assert isinstance(rig.terminal("r1").error, E.BudgetExceeded) and spend_asks(budget, effects) == []


def test_a_lease_that_arrives_after_the_callers_deadline_is_never_used():
    budget = key_budget(1.0, mode="strict")
    rig = strict_rig(budget)
    (ask,) = spend_asks(budget, rig.submit("r1", deadline_in=0.5, metadata={"http_key": "k1"}))
    rig.mono += 0.6                                          # the leader was slow: the answer comes too late
    effects = spend_offer(rig, budget, ask, 10 ** 6)
    assert rig.dispatches() == [] and isinstance(rig.terminal("r1").error, E.DeadlineExceeded)
    assert rig.core.book.limiters[budget.counter_key].own(ask.window) == (0, 0)   # nothing spent for it
    assert not rig.of(ev.DispatchTo, effects)


def test_with_the_leader_lost_a_strict_spend_lease_is_spent_then_fails_closed():
    budget = key_budget(1.0, mode="strict")
    rig = strict_rig(budget)
    (ask,) = spend_asks(budget, rig.submit("r1", metadata={"http_key": "k1"}))
    estimate = estimate_of(rig, "r1")
    spend_offer(rig, budget, ask, 2 * estimate)
    rig.report("r1", usage=Usage(reported=False))             # charged its estimate
    rig.feed(ev.StrictLeader(False, 3))                       # the leader is gone
    effects = rig.submit("r2", metadata={"http_key": "k1"})
    assert rig.dispatches("r2", effects) and spend_asks(budget, effects) == []   # what it holds is spent
    rig.report("r2", usage=Usage(reported=False))
    rig.submit("r3", metadata={"http_key": "k1"})
    error = rig.terminal("r3").error
    assert isinstance(error, E.LeaderUnavailable) and "its lease is spent" in error.message
    # A lease not spent is good only until it expires (3 s after its ask went).
    rig = strict_rig(budget)
    (ask,) = spend_asks(budget, rig.submit("r1", metadata={"http_key": "k1"}))
    spend_offer(rig, budget, ask, 10 ** 6)
    rig.feed(ev.StrictLeader(False, 3))
    rig.advance(3.0)
    rig.submit("late", metadata={"http_key": "k1"})
    error = rig.terminal("late").error
    assert isinstance(error, E.LeaderUnavailable) and "its lease has expired" in error.message


def test_a_strict_budget_without_a_leader_fails_closed():
    rig = BudgetRig([key_budget(1.0, mode="strict")])
    rig.feed(ev.StrictLeader(False, 1))
    rig.submit("r1", metadata={"http_key": "k1"})
    rig.advance(0.1)
    assert isinstance(rig.terminal("r1").error, E.LeaderUnavailable)


def test_a_silent_leader_is_presumed_lost_once_an_ask_goes_unanswered_for_the_ask_timeout():
    budget = key_budget(1.0, mode="strict")
    rig = strict_rig(budget)
    rig.submit("r1", metadata={"http_key": "k1"})
    rig.advance(1.9)
    assert rig.terminals("r1") == []                            # still waiting for an answer
    rig.advance(0.2)
    assert isinstance(rig.terminal("r1").error, E.LeaderUnavailable)


def test_a_request_under_two_strict_budgets_waits_for_both_leases_and_holds_nothing_meanwhile():
    key, team = key_budget(1.0, mode="strict"), Budget("team", "t", 1.0, parse_period("1h"), "strict")
    approx = Budget("deployment", "d1", 1.0, parse_period("1h"))
    rig = strict_rig(key, team, approx)
    effects = rig.submit("r1", metadata={"http_key": "k1", "http_team": "t"})
    (key_ask,), (team_ask,) = spend_asks(key, effects), spend_asks(team, effects)
    estimate = estimate_of(rig, "r1")
    spend_offer(rig, key, key_ask, estimate)
    assert rig.dispatches() == []
    book = rig.core.book
    assert [book.limiters[b.counter_key].own(key_ask.window) for b in (key, team, approx)] == [(0, 0)] * 3
    spend_offer(rig, team, team_ask, estimate)
    assert rig.dispatches("r1")
    assert [book.limiters[b.counter_key].own(key_ask.window) for b in (key, team, approx)] == [(1, estimate)] * 3


def test_a_retry_needs_no_second_spend_admission():
    budget = key_budget(1.0, mode="strict")
    rig = strict_rig(budget, retry=RetryPolicy(max_retries=1, base_delay_s=0.1, jitter="none"))
    (ask,) = spend_asks(budget, rig.submit("r1", metadata={"http_key": "k1"}))
    estimate = estimate_of(rig, "r1")
    spend_offer(rig, budget, ask, estimate)                   # room for this request once
    rig.report("r1", error=E.ServerError("503", status=503), usage=Usage(reported=False))
    rig.advance(0.2)
    assert len(rig.dispatches("r1")) == 2


def test_an_engine_without_spend_budgets_ignores_a_stray_spend_lease():
    rig = Rig()
    grant = LeaseGrant("n1@h:1/d1/0", 7, 0, (None, 500), 3.0, (None, 500))
    assert [e for e in rig.feed(ev.LeaseOffered("spend:key=k1/1h", grant)) if not isinstance(e, ev.WakeAt)] == []


def test_budget_spec_refuses_a_bool_for_usd():
    with pytest.raises(ValueError, match="usd"):
        BudgetSpec(usd=True, period="1d", team="a")


# -- no reservation leaks, whatever happens ---------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from test_engine_core import OPS  # noqa: E402


@settings(max_examples=150)
@given(OPS, st.sampled_from([0.00001, 0.0005, 1.0]))
def test_what_the_budget_counts_is_exactly_what_the_requests_were_charged(ops, usd):
    """Through retries, crashes, cancels, deadlines and refusals, once every request has ended the
    budget's counter holds the sum of the charges in the ledger records: nothing leaks or is lost."""
    budget = key_budget(usd, period="1d")
    rig = BudgetRig([budget], workers=2, queue_capacity=3, wall_at=utc(2026, 12, 1, 1))
    for op, n in ops:
        rid = f"r{n}"
        live = rig.core.jobs.get(rid)
        attempt = live.attempt if live else None
        if op == "submit":
            rig.submit(rid, deadline_in=5 + n, metadata={"http_key": "k1"})
        elif op in ("ok", "fail", "stream_fail") and attempt is not None:
            error = {"ok": None, "fail": E.ServerError("503", status=503), "stream_fail": E.StreamError("cut")}[op]
            usage = Usage(10 * n, n) if op == "ok" or n % 2 else Usage(reported=False)
            rig.report(rid, error=error, chunks=1 if op == "stream_fail" else 0, usage=usage)
        elif op == "crash" and rig.core.workers.slots:
            rig.feed(ev.WorkerGone(n % 2))
            rig.feed(ev.WorkerUp(n % 2, pid=5000 + n))
        elif op == "cancel":
            rig.feed(ev.CancelRequested(rid))
        elif op == "tick":
            rig.advance(0.3 * n)
        elif op == "freeze":
            rig.advance(3)
    rig.advance(60)
    assert not rig.core.jobs
    charged = sum(round(r.charged_usd * NANO) for r in rig.core.take_records())
    limiter = rig.core.book.limiters[budget.counter_key]
    assert limiter.usage().tokens == charged
    assert charged <= budget.limits.tpm + 20 * BudgetBook.estimate([{"role": "user", "content": "hello"}], 10, 256,
                                                                   PRICE) * 10


def joined():
    """A leader the registry says is there."""
    leader = Leader(0.0, 5.0)
    leader.update(True, 1, 0.0)
    return leader


# -- the book alone ---------------------------------------------------------------------

def book_of(*budgets, seed=None, wall=None):
    from fakes import FakeClock

    wall = wall or FakeClock(utc(2027, 1, 15, 8, 0, 30))
    return BudgetBook(budgets, slot="n1@h:1/d1/0", deployment="d1", provider="openai", wall=wall,
                      clock=FakeClock(0.0), seed=seed), wall


def test_only_deployment_and_provider_budgets_make_the_engine_refuse_for_everyone():
    per_key = key_budget(1.0)
    mine = Budget("deployment", "d1", 1.0, parse_period("1h"))
    book, _ = book_of(per_key, mine, seed={per_key.counter_key: NANO, mine.counter_key: NANO - 1})
    assert book.refusal() is None and book.spent() == []      # one nano-USD is left for the next request
    book, _ = book_of(per_key, mine, seed={per_key.counter_key: NANO, mine.counter_key: NANO})
    error, resets = book.refusal()
    assert book.spent() == ["deployment=d1/1h"] and error.limit == "deployment=d1/1h"
    assert resets == utc(2027, 1, 15, 9) and "would need" not in error.message   # nothing is left at all


def test_a_spent_budgets_refusal_says_what_a_typical_request_would_need_while_some_is_left():
    mine = Budget("provider", "openai", 1.0, parse_period("1h"))
    book, _ = book_of(mine, seed={mine.counter_key: NANO - 1000})
    hold = SpendHold(5000, [mine])
    assert isinstance(book.admit(hold, 0.0, joined()), Denied)
    error, _ = book.refusal()
    assert "this request would need about $0.000005" in error.message


def test_the_book_publishes_each_budgets_changes_with_when_they_began_and_merges_only_its_own():
    budget = key_budget(1.0)
    book, wall = book_of(budget)
    hold = SpendHold(100, [budget])
    began = wall()
    assert book.admit(hold, 0.0, joined()) is None
    wall.advance(0.03)
    (published,) = book.publish(1.0)
    assert (published.key, published.sent_unix, published.limits) == (budget.counter_key, began, budget.limits)
    assert list(published.delta.values())[0]["tokens"] == {"n1@h:1/d1/0": 100} and book.sync_due() is None
    assert not book.merge("spend:team=nobody/1h", published.delta, None)
    window = budget.period.index(wall())
    assert book.merge(budget.counter_key, {window: {"tokens": {"n2": 7}}}, wall() - 2.0)
    limiter = book.limiters[budget.counter_key]
    assert limiter.usage().tokens == 107 and limiter.staleness_s > 4.0   # the 2 s lag it saw is remembered


def test_a_budget_entry_says_exactly_what_is_wrong_with_it():
    with pytest.raises(ValueError) as none:
        BudgetSpec(usd=1, period="1d")
    assert str(none.value) == "give exactly one of key, team, deployment, provider"
    with pytest.raises(ValueError) as two:
        BudgetSpec(usd=1, period="1d", key="k", team="t")
    assert str(two.value) == "give exactly one of key, team, deployment, provider (got key, team)"
    with pytest.raises(ValueError, match="^team: must not be empty, got ''$"):
        BudgetSpec(usd=1, period="1d", team="  ")
    for usd in (0, -1, float("inf"), float("nan"), "5"):
        with pytest.raises(ValueError, match="^usd: must be > 0"):
            BudgetSpec(usd=usd, period="1d", team="t")


def test_an_engine_keeps_every_key_and_team_budget_and_only_its_own_deployment_and_provider_budgets():
    from fakes import FakeClock

    budgets = [key_budget(1.0), Budget("team", "t", 1.0, parse_period("1h")),
               Budget("deployment", "d1", 1.0, parse_period("1h")), Budget("deployment", "d2", 1.0, parse_period("1h")),
               Budget("provider", "openai", 1.0, parse_period("1h")), Budget("provider", "anthropic", 1.0,
                                                                             parse_period("1h"))]
    book = BudgetBook(budgets, slot="s", deployment="d1", provider="openai", wall=FakeClock(0.0), clock=FakeClock(0.0))
    assert book.keys == ["spend:key=k1/1h", "spend:team=t/1h", "spend:deployment=d1/1h", "spend:provider=openai/1h"]
    applying = book.applicable({"http_key": "k1", "http_team": "t"}, "d1", "openai")
    assert [b.id for b in applying] == ["key=k1/1h", "team=t/1h", "deployment=d1/1h", "provider=openai/1h"]
    assert [b.id for b in book.applicable({}, "d1", "openai")] == ["deployment=d1/1h", "provider=openai/1h"]
    assert [b.id for b in book.applicable({"http_key": None}, "d1", "anthropic")] == ["deployment=d1/1h"]


def test_a_seed_is_this_slots_spend_before_a_restart_and_is_published():
    budget = key_budget(1.0)
    book, _ = book_of(budget, seed={budget.counter_key: 1234, "spend:key=gone/1h": 5})
    limiter = book.limiters[budget.counter_key]
    assert (limiter.usage().tokens, limiter.usage().requests) == (1234, 1) and book.sync_due() is not None
    empty, _ = book_of(budget, seed={budget.counter_key: 0})
    assert empty.limiters[budget.counter_key].usage().requests == 0
    fresh, _ = book_of(budget)
    assert fresh.sync_due() is None and fresh.typical_nano == 0


@pytest.mark.parametrize("sync_interval_s, wait", [(0.001, 0.005), (0.05, 0.05), (3.0, 1.0)])
def test_a_spend_budget_held_to_its_share_is_looked_at_again_after_a_sync_bounded(sync_interval_s, wait):
    from fakes import FakeClock

    budget = key_budget(1.0)
    wall = FakeClock(utc(2027, 1, 15, 8, 0, 30))
    book = BudgetBook([budget], slot="n1", deployment="d1", provider="openai", wall=wall, clock=FakeClock(0.0),
                      sync_interval_s=sync_interval_s, rand=lambda: 0.99)
    period = budget.period.index(wall())
    book.merge(budget.counter_key, {period: {"tokens": {"n2": NANO // 5}, "requests": {"n2": 1}}}, None)
    verdict = book.admit(SpendHold(NANO // 2, [budget]), 10.0, joined())
    assert verdict == Wait(10.0 + wait)
    assert book.limiters[budget.counter_key].usage().tokens == NANO // 5   # nothing kept while it waits


def test_a_spent_budget_is_refused_naming_it_what_is_spent_and_when_it_resets():
    budget = key_budget(1.0)
    book, wall = book_of(budget, seed={budget.counter_key: NANO - 5000})
    denied = book.admit(SpendHold(10_000, [budget]), 0.0, joined())
    assert isinstance(denied, Denied) and not denied.error.retryable and denied.error.limit == "key=k1/1h"
    assert denied.error.message == ("budget key=k1/1h is spent: $0.999995 of $1 in this 1h period; this request "
                                    "would need about $0.000010; it resets at 2027-01-15T09:00:00Z")
    assert denied.error.retry_after_s == pytest.approx(utc(2027, 1, 15, 9) - wall())
    assert book.limiters[budget.counter_key].usage().requests == 1   # the seed's; this request kept nothing


def test_calendar_periods_are_utc_whatever_the_hosts_zone(monkeypatch):
    import time as _time

    monkeypatch.setenv("TZ", "America/New_York")
    _time.tzset()
    try:
        month = parse_period("1mo")
        jan_31_late = utc(2027, 1, 31, 23, 30)   # February 1st 00:30 UTC is still January in New York
        assert month.start(month.index(jan_31_late)) == utc(2027, 1, 1)
        assert month.end(month.index(jan_31_late)) == utc(2027, 2, 1)
        assert month.index(utc(2027, 2, 1, 0, 30)) == month.index(jan_31_late) + 1
        assert parse_period(" 2mo ").text == "2mo"
    finally:
        monkeypatch.delenv("TZ")
        _time.tzset()


def test_a_spent_provider_budget_is_skipped_by_routing_too():
    mine = Budget("provider", "openai", 1.0, parse_period("1h"))
    book, _ = book_of(mine, seed={mine.counter_key: NANO})
    assert book.spent() == [mine.id] and mine.id.startswith("provider=openai")


def lease_for(book, budget, nano, left, now=0.0):
    """Answer the book's due ask of ``budget`` with a lease of ``nano``, ``left`` across the cluster."""
    (ask,) = [e.ask for e in book.asks(now, lambda key: (1, nano)) if e.key == budget.counter_key]
    assert book.offered(budget.counter_key, LeaseGrant(ask.client, ask.seq, ask.window, (None, nano), 3.0,
                                                       (None, left)), now)


def test_a_strict_refusal_says_what_is_spent_across_the_cluster_and_when_the_budget_resets():
    strict = key_budget(1.0, mode="strict")
    book, wall = book_of(strict)
    hold = SpendHold(5000, [strict])
    assert isinstance(book.admit(hold, 0.0, joined()), Wait)
    lease_for(book, strict, 0, left=1000)                 # others spent all but 1000 nano-USD
    denied = book.admit(hold, 0.01, joined())
    assert isinstance(denied, Denied) and not denied.error.retryable and denied.error.limit == "key=k1/1h"
    assert denied.error.message == ("budget key=k1/1h is spent: $0.999999 of $1 in this 1h period; this request "
                                    "would need about $0.000005; it resets at 2027-01-15T09:00:00Z")
    assert denied.error.retry_after_s == utc(2027, 1, 15, 9) - wall()
    assert book.limiters[strict.counter_key].usage().requests == 0    # it kept nothing


def test_what_a_request_would_need_is_said_only_while_some_is_left_and_a_cost_is_known():
    from actors.core.budget import budget_exceeded

    b = Budget("key", "k1", 1.0, parse_period("1h"))
    now = utc(2027, 1, 15, 8, 0, 30)
    exact = budget_exceeded(b, NANO, now, 500)                 # spent in full: nothing is left
    assert exact.message == ("budget key=k1/1h is spent: $1.000000 of $1 in this 1h period; "
                             "it resets at 2027-01-15T09:00:00Z")
    assert exact.retry_after_s == utc(2027, 1, 15, 9) - now
    assert budget_exceeded(b, NANO - 1000, now, None).message == exact.message.replace("$1.000000 of", "$0.999999 of")
    assert "would need about $0.000500" in budget_exceeded(b, NANO - 1000, now, 500_000).message


def test_a_strict_budget_waits_for_the_leader_while_the_node_starts_then_refuses():
    from fakes import FakeClock

    strict = key_budget(1.0, mode="strict")
    book = BudgetBook([strict], slot="s", deployment="d1", provider="openai", wall=FakeClock(utc(2027, 1, 15, 8)),
                      clock=FakeClock(100.0))
    starting = Leader(100.0, 5.0)                 # the registry has not said where the leader is yet
    assert book.admit(SpendHold(10, [strict]), 104.99, starting) == Wait(104.99 + 0.05)
    refused = book.admit(SpendHold(10, [strict]), 105.0, starting)
    assert isinstance(refused, Denied) and refused.error.retry_after_s == 5.0
    assert refused.error.message == ("a strict spend budget needs the convention leader, which is unreachable, "
                                     "and its lease has expired")
    lost = Leader(100.0, 5.0)
    lost.update(False, 1, 101.0)
    assert isinstance(book.admit(SpendHold(10, [strict]), 101.0, lost), Denied)   # lost: no wait


@pytest.mark.parametrize("value", [3600, None, ["1h"]])
def test_a_period_that_is_not_text_is_refused_naming_it(value):
    with pytest.raises(ValueError, match=r"period: expected a count and a unit .* got " + re.escape(repr(value))):
        parse_period(value)


def test_a_seed_of_one_nano_is_spend_of_one_request():
    budget = key_budget(1.0)
    book, _ = book_of(budget, seed={budget.counter_key: 1})
    usage = book.limiters[budget.counter_key].usage()
    assert (usage.requests, usage.tokens) == (1, 1)


def test_a_book_ignores_its_own_counts_echoed_back():
    from actors.core.admission import Leader
    from actors.core.budget import SpendGate

    budget = key_budget(1.0)
    book, wall = book_of(budget)
    gate = SpendGate(book, None, Leader(0.0, 5.0), "openai")
    window = budget.period.index(wall())
    assert book.slot == "n1@h:1/d1/0"
    assert not gate.merge(ev.PeerCounts(budget.counter_key, {window: {"tokens": {book.slot: 7}}},
                                        origin="n1@h:1/d1/0"))
    assert book.limiters[budget.counter_key].usage().tokens == 0


def test_a_budget_that_resets_in_half_a_second_says_so():
    from actors.core.budget import budget_exceeded

    b = Budget("key", "k1", 1.0, parse_period("1h"))
    assert budget_exceeded(b, NANO, utc(2027, 1, 15, 9) - 0.5).retry_after_s == 0.5


def test_a_calendar_budgets_usage_starts_at_its_period_start():
    monthly = Budget("key", "k1", 1.0, parse_period("1mo"))
    book, _ = book_of(monthly)
    usage = book.limiters[monthly.counter_key].usage()
    assert usage.window_start_unix == utc(2027, 1, 1) and usage.window == monthly.period.index(utc(2027, 1, 15, 8, 0, 30))


def test_a_strict_budget_is_looked_at_first_and_then_every_budget_is_reserved():
    strict, first, second = key_budget(1.0, mode="strict"), Budget("team", "t", 1.0, parse_period("1h")), \
        Budget("provider", "openai", 1.0, parse_period("1h"))
    book, _ = book_of(strict, first, second)
    hold = SpendHold(700, [strict, first, second])
    assert isinstance(book.admit(hold, 0.0, joined()), Wait)      # the strict one's lease is asked for
    assert hold.reserved == [] and all(book.limiters[b.counter_key].usage().tokens == 0 for b in (first, second))
    lease_for(book, strict, 700, left=NANO)
    assert book.admit(hold, 0.01, joined()) is None and hold.admitted
    assert [b for b, _ in hold.reserved] == [first, second, strict]
    assert all(book.limiters[b.counter_key].usage().tokens == 700 for b in (strict, first, second))


def test_a_lease_no_request_waits_for_any_more_is_not_asked_for_at_once_again():
    budget = key_budget(1.0, mode="strict")
    rig = strict_rig(budget)
    (ask,) = spend_asks(budget, rig.submit("r1", deadline_in=0.3, metadata={"http_key": "k1"}))
    spend_offer(rig, budget, ask, 0)                          # nothing for it yet: it waits, and asks again
    rig.advance(0.5)                                          # then its deadline passes
    assert isinstance(rig.terminal("r1").error, E.DeadlineExceeded)
    assert not rig.core.book.leases[budget.counter_key].holder.blocked
    # Nothing waits now: asked on the interval while the demand it saw decays, then not at all.
    asked = spend_asks(budget, rig.advance(10.0))
    assert len(asked) <= 10.0 / 0.2 + 1
    assert spend_asks(budget, rig.advance(30.0)) == []


def test_once_a_leader_is_back_a_strict_spend_request_asks_it_instead_of_being_refused():
    budget = key_budget(1.0, mode="strict")
    rig = strict_rig(budget)
    rig.submit("r1", metadata={"http_key": "k1"})
    rig.advance(2.5)                                     # the leader never answers: presumed lost
    assert isinstance(rig.terminal("r1").error, E.LeaderUnavailable)
    rig.feed(ev.StrictLeader(False, 3))
    rig.feed(ev.StrictLeader(True, 3))                   # a new leader: the asks to the old one are forgotten
    (ask,) = spend_asks(budget, rig.submit("r2", metadata={"http_key": "k1"}))
    assert rig.terminals("r2") == [] and ask.holding == 0
    spend_offer(rig, budget, ask, 10 ** 8)
    assert rig.dispatches("r2")
    rig.feed(ev.StrictLeader(True, 3))                   # told again: an ask in flight is still awaited
    effects = rig.submit("r3", metadata={"http_key": "k1"}, params={"max_tokens": 100_000})   # more than it holds
    (pending,) = spend_asks(budget, effects + rig.advance(0.2 / 8))
    rig.feed(ev.StrictLeader(True, 3))
    spend_offer(rig, budget, pending, 10 ** 9)
    assert rig.dispatches("r3")
