"""The small actors of a node, in process: the session, the strict limiter, the breaker and its
handle, the launcher watchdog, and the base every actor shares (no sockets, real actors)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from actors import errors as E
from actors.core.breaker import BreakerConfig, CircuitState
from actors.core.credentials import CredentialSource
from actors.runtime.protocol import (BreakerInit, BreakerOutcome, BreakerOutcomes, BreakerState, BreakerSubscribe,
                                     LeaseOffer, LeaseRefresh, LimiterDelta, LimiterStateRequest, SessionInit,
                                     SessionRefresh, SessionSnapshot, SessionSubscribe, SessionVersion, StrictInit)
from harness import Recorder, SendAs


def messages(asys, recorder, kind: type, count: int = 1, timeout_s: float = 5.0) -> list[Any]:
    """The first ``count`` messages of ``kind`` the recorder got, waiting for them (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [m for m in asys.ask(recorder, "seen?", 1) if isinstance(m, kind)]
        if len(found) >= count:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{len(found)} {kind.__name__}(s) within {timeout_s}s, wanted {count}")
        asys.listen(0.02)


# -- the session: resolves, publishes, refreshes ---------------------------------------------

@pytest.fixture
def session(asys, tmp_path):
    from actors.runtime.session import RemoteSessionActor

    key = tmp_path / "key"
    key.write_text("sk-one\n")
    worker, engine = asys.createActor(Recorder), asys.createActor(Recorder)
    actor = asys.createActor(RemoteSessionActor)
    return actor, worker, engine, key


def test_a_session_gives_workers_the_secret_and_engines_only_the_version(asys, session):
    actor, worker, engine, key = session
    asys.tell(actor, SessionInit("d1", "openai", CredentialSource(file=str(key))))
    asys.tell(worker, SendAs(actor, SessionSubscribe(worker, wants_secret=True)))
    asys.tell(engine, SendAs(actor, SessionSubscribe(engine, wants_secret=False)))
    (snapshot,) = messages(asys, worker, SessionSnapshot)
    assert snapshot.version == 1 and snapshot.credential.reveal() == "sk-one"
    (version,) = messages(asys, engine, SessionVersion)
    assert version.version == 1 and version.ok and not hasattr(version, "credential")


def test_after_a_401_a_changed_credential_is_published_to_workers_and_engines(asys, session):
    actor, worker, engine, key = session
    asys.tell(actor, SessionInit("d1", "openai", CredentialSource(file=str(key))))
    asys.tell(worker, SendAs(actor, SessionSubscribe(worker, wants_secret=True)))
    asys.tell(engine, SendAs(actor, SessionSubscribe(engine, wants_secret=False)))
    messages(asys, engine, SessionVersion)
    key.write_text("sk-two\n")
    asys.tell(actor, SessionRefresh(1, "401"))
    snapshots = messages(asys, worker, SessionSnapshot, 2)
    assert snapshots[-1].version == 2 and snapshots[-1].credential.reveal() == "sk-two"
    assert messages(asys, engine, SessionVersion, 2)[-1].version == 2
    asys.tell(actor, SessionRefresh(1, "another 401 of the old one"))   # already newer: just announced
    assert messages(asys, engine, SessionVersion, 3)[-1].version == 2


def test_an_unchanged_credential_after_a_401_is_an_authentication_error_for_the_asker(asys, session):
    actor, _, _, key = session
    asys.tell(actor, SessionInit("d1", "openai", CredentialSource(file=str(key))))
    reply = asys.ask(actor, SessionRefresh(1, "401"), 2)
    assert isinstance(reply, SessionVersion) and not reply.ok and isinstance(reply.error, E.AuthenticationError)
    assert "sk-one" not in str(reply.error)


def test_a_credential_that_cannot_be_read_is_a_typed_error_and_is_retried_on_schedule(asys, session, monkeypatch):
    from actors.runtime import session as session_module

    monkeypatch.setattr(session_module, "RETRY_FAILED_REFRESH_S", 0.05)
    actor, worker, engine, key = session
    key.unlink()
    asys.tell(actor, SessionInit("d1", "openai", CredentialSource(file=str(key))))
    asys.tell(engine, SendAs(actor, SessionSubscribe(engine, wants_secret=False)))
    (version,) = messages(asys, engine, SessionVersion)
    assert not version.ok and isinstance(version.error, E.CredentialUnavailable)
    asys.tell(worker, SendAs(actor, SessionSubscribe(worker, wants_secret=True)))
    key.write_text("sk-late\n")                   # the retry timer finds it
    (snapshot,) = messages(asys, worker, SessionSnapshot)
    assert snapshot.version == 1 and snapshot.credential.reveal() == "sk-late"
    assert any(v.ok and v.version == 1 for v in messages(asys, engine, SessionVersion, 2))


def test_a_scheduled_refresh_publishes_a_rotated_credential(asys, session):
    actor, worker, _, key = session
    asys.tell(actor, SessionInit("d1", "openai", CredentialSource(file=str(key), refresh_s=0.05)))
    asys.tell(worker, SendAs(actor, SessionSubscribe(worker, wants_secret=True)))
    messages(asys, worker, SessionSnapshot)
    key.write_text("sk-rotated\n")
    snapshots = messages(asys, worker, SessionSnapshot, 2)
    assert snapshots[-1].credential.reveal() == "sk-rotated" and snapshots[-1].version == 2


def test_a_session_asked_before_its_init_answers_instead_of_failing(asys):
    from actors.runtime.session import RemoteSessionActor

    actor = asys.createActor(RemoteSessionActor)
    reply = asys.ask(actor, SessionRefresh(0, "401"), 2)
    assert isinstance(reply, SessionVersion) and not reply.ok and isinstance(reply.error, E.CredentialUnavailable)


# -- the strict limiter: learns, seeds from the cluster, then leases within the cap -----------

def spend_budget(usd=0.001):
    from actors.core.budget import Budget
    from actors.core.periods import parse_period

    return Budget("key", "k1", usd, parse_period("2d"), "strict")


def lease_ask(budget, client, seq, want_nano, spent_nano=0, holding=0, held=(None, None)):
    window = budget.period.index(time.time())
    return LeaseRefresh(budget.counter_key, budget.limits, client, seq, window, holding, held, (0, spent_nano),
                        (0, want_nano))


def test_the_strict_limiter_leases_a_spend_budget_from_the_hubs_view_and_never_past_its_cap(asys, monkeypatch):
    from actors.runtime import strict_limiter
    from actors.runtime.strict_limiter import StrictRateLimiterActor

    monkeypatch.setattr(strict_limiter, "SETTLE_S", 0.0)
    hub = asys.createActor(Recorder)
    actor = asys.createActor(StrictRateLimiterActor)
    asys.tell(actor, StrictInit("n1", hub))
    budget = spend_budget(0.001)                    # 1,000,000 nano-USD over a two-day period
    learning = asys.ask(actor, lease_ask(budget, "a", 1, 10 ** 6), 2)
    assert isinstance(learning, LeaseOffer) and learning.lease == (None, 0)   # learning: only what it holds
    (asked,) = messages(asys, hub, LimiterStateRequest)
    assert asked.key == budget.counter_key
    window = budget.period.index(time.time())
    # The cluster already spent 400,000 of it (a slot that never asked this leader).
    seen = {window: {"requests": {"other": 1}, "tokens": {"other": 400_000}}}
    asys.tell(actor, LimiterDelta(budget.counter_key, seen, "hub:n1", budget.limits))
    a = asys.ask(actor, lease_ask(budget, "a", 2, 10 ** 6), 2)
    b = asys.ask(actor, lease_ask(budget, "b", 1, 10 ** 6), 2)
    assert isinstance(a, LeaseOffer) and isinstance(b, LeaseOffer)
    assert (a.key, a.client, a.seq, a.window) == (budget.counter_key, "a", 2, window)
    assert a.lease[0] is None and a.lease[1] + b.lease[1] + 400_000 <= budget.nano and a.lease[1] > 0
    assert a.left == (None, 600_000)
    # a spent its lease and says so: nothing is left for anyone
    spent = asys.ask(actor, lease_ask(budget, "a", 3, 10 ** 6, spent_nano=a.lease[1], holding=2, held=a.lease), 2)
    again = asys.ask(actor, lease_ask(budget, "b", 2, 10 ** 6, holding=1, held=b.lease), 2)
    assert spent.lease[1] + again.lease[1] + 400_000 <= budget.nano
    assert again.left[1] == budget.nano - 400_000 - a.lease[1]


def test_without_a_hub_the_strict_limiter_leases_from_zero(asys, monkeypatch):
    from actors.runtime import strict_limiter
    from actors.runtime.strict_limiter import StrictRateLimiterActor

    monkeypatch.setattr(strict_limiter, "SETTLE_S", 0.0)
    actor = asys.createActor(StrictRateLimiterActor)
    asys.tell(actor, StrictInit("n1", None))
    budget = spend_budget(0.001)
    asys.ask(actor, lease_ask(budget, "a", 1, 5000), 2)      # the first ask starts the (empty) seed
    asys.listen(0.05)
    offer = asys.ask(actor, lease_ask(budget, "a", 2, 5000), 2)
    assert isinstance(offer, LeaseOffer) and offer.lease == (None, 5000) and offer.left == (None, budget.nano)


def test_a_hub_that_never_answers_does_not_hold_leases_back_forever(asys, monkeypatch):
    from actors.runtime import strict_limiter
    from actors.runtime.strict_limiter import StrictRateLimiterActor

    monkeypatch.setattr(strict_limiter, "SETTLE_S", 0.01)
    monkeypatch.setattr(strict_limiter, "SEED_TIMEOUT_S", 0.05)
    silent = asys.createActor(Recorder)
    actor = asys.createActor(StrictRateLimiterActor)
    asys.tell(actor, StrictInit("n1", silent))
    budget = spend_budget(0.001)
    assert asys.ask(actor, lease_ask(budget, "a", 1, 5000), 2).lease == (None, 0)
    messages(asys, silent, LimiterStateRequest)
    deadline = time.monotonic() + 5.0
    seq = 2
    while (offer := asys.ask(actor, lease_ask(budget, "a", seq, 5000), 2)).lease != (None, 5000):
        assert time.monotonic() < deadline, f"still learning: {offer}"
        asys.listen(0.02)
        seq += 1


# -- the breaker actor and its handle --------------------------------------------------------

def test_the_breaker_pushes_each_transition_and_wakes_itself_into_half_open(asys):
    from actors.runtime.breaker import CircuitBreakerActor, CircuitBreakerHandle

    actor = asys.createActor(CircuitBreakerActor)
    engine = asys.createActor(Recorder)
    asys.tell(actor, BreakerSubscribe(engine))     # before the init: told once it has one
    asys.tell(actor, BreakerInit("openai", "https://api.openai.com/v1",
                                 BreakerConfig(consecutive_failures=2, open_s=0.2, max_open_s=0.2)))
    handle = CircuitBreakerHandle(asys, actor, timeout_s=2)
    assert handle.state().state is CircuitState.CLOSED
    generation = handle.check()
    asys.tell(actor, BreakerOutcomes([BreakerOutcome(generation, E.ServerError("500", status=500))] * 2))
    assert handle.state().state is CircuitState.OPEN
    with pytest.raises(E.CircuitOpen):
        handle.check()
    states = [m.snapshot.state for m in messages(asys, engine, BreakerState, 3)]
    assert states[:3] == [CircuitState.CLOSED, CircuitState.CLOSED, CircuitState.OPEN] or CircuitState.OPEN in states
    # Nobody asks: the actor's own timer pushes half-open when the open period ends.
    deadline = time.monotonic() + 5
    while CircuitState.HALF_OPEN not in [m.snapshot.state for m in asys.ask(engine, "seen?", 1)
                                         if isinstance(m, BreakerState)] and time.monotonic() < deadline:
        asys.listen(0.05)
    assert CircuitState.HALF_OPEN in [m.snapshot.state for m in asys.ask(engine, "seen?", 1) if isinstance(m, BreakerState)]
    assert handle.run(lambda: "probe ok") == "probe ok"       # the probe's success closes it
    assert handle.state().state is CircuitState.CLOSED


def test_the_breaker_handle_records_a_callers_bug_without_counting_it_and_operators_force_it(asys):
    from actors.runtime.breaker import CircuitBreakerActor, CircuitBreakerHandle

    actor = asys.createActor(CircuitBreakerActor)
    asys.tell(actor, BreakerInit("openai", "e", BreakerConfig(consecutive_failures=1)))
    handle = CircuitBreakerHandle(asys, actor, timeout_s=2)
    with pytest.raises(KeyError):
        handle.run(lambda: {}["bug"])
    assert handle.state().state is CircuitState.CLOSED         # not the provider's fault
    with pytest.raises(E.ServerError):
        handle.run(lambda: (_ for _ in ()).throw(E.ServerError("503", status=503)))
    assert handle.state().state is CircuitState.OPEN
    assert handle.reset().state is CircuitState.CLOSED
    assert handle.force_open(60).state is CircuitState.OPEN
    handle.record(None, handle.state().generation)


def test_a_handle_that_gets_no_answer_says_so(asys):
    from actors.runtime.breaker import CircuitBreakerHandle

    silent = asys.createActor(Recorder)
    with pytest.raises(E.InternalError):
        CircuitBreakerHandle(asys, silent, timeout_s=0.1).state()


# -- the launcher watchdog -------------------------------------------------------------------

def test_the_watchdog_watches_while_the_launcher_lives_and_stops_the_node_when_it_is_gone(asys, monkeypatch):
    from actors.core.procstat import live_stat
    from actors.runtime.watchdog import LauncherWatchdog, Watching, WatchLauncher

    killed = []
    monkeypatch.setattr(LauncherWatchdog, "_kill_group", staticmethod(lambda: killed.append(True)))
    watchdog = asys.createActor(LauncherWatchdog)
    me = live_stat(os.getpid())
    watching = asys.ask(watchdog, WatchLauncher(os.getpid(), me.start_ticks, interval_s=0.02), 2)
    assert isinstance(watching, Watching) and watching.pid == os.getpid() and watching.pgid == os.getpgid(0)
    asys.listen(0.15)                              # several checks: the launcher (this process) lives
    assert killed == []
    # A launcher whose pid now belongs to another process (another start time) is gone.
    asys.tell(watchdog, WatchLauncher(os.getpid(), me.start_ticks + 1, interval_s=0.02))
    deadline = time.monotonic() + 5
    while not killed and time.monotonic() < deadline:
        asys.listen(0.05)
    assert killed == [True]


# -- the base of every actor -----------------------------------------------------------------

class Stray:
    pass


def test_an_unexpected_message_is_logged_once_per_type_and_the_actor_keeps_serving(asys, caplog):
    import logging

    from actors.runtime.breaker import CircuitBreakerActor, CircuitBreakerHandle

    actor = asys.createActor(CircuitBreakerActor)
    asys.tell(actor, BreakerInit("openai", "e", BreakerConfig()))
    with caplog.at_level(logging.WARNING, logger="atomr.actor"):
        for _ in range(3):
            asys.tell(actor, Stray())
        assert CircuitBreakerHandle(asys, actor, timeout_s=2).state().state is CircuitState.CLOSED
    lines = [r for r in caplog.records if "unexpected Stray" in r.getMessage()]
    assert len(lines) == 1
