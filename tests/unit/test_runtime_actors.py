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
from actors.core.ratelimit import RateLimits
from actors.runtime.protocol import (BreakerInit, BreakerOutcome, BreakerOutcomes, BreakerState, BreakerSubscribe,
                                     LimiterDelta, LimiterStateRequest, SessionInit, SessionRefresh, SessionSnapshot,
                                     SessionSubscribe, SessionVersion, StrictAcquire, StrictDenied, StrictGrant,
                                     StrictInit, StrictSettle)
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


# -- the strict limiter: seeds from the cluster, then admits exactly -------------------------

def test_the_strict_limiter_seeds_from_the_hub_then_never_grants_past_the_budget(asys, monkeypatch):
    from actors.runtime import strict_limiter
    from actors.runtime.strict_limiter import StrictRateLimiterActor

    monkeypatch.setattr(strict_limiter, "SETTLE_S", 0.0)
    hub = asys.createActor(Recorder)
    actor = asys.createActor(StrictRateLimiterActor)
    asys.tell(actor, StrictInit("n1", hub))
    limits = RateLimits(rpm=3, window_s=86400.0, mode="strict")
    asys.tell(actor, StrictAcquire("k", limits, "r1#1", 10))    # held until the limiter has the cluster's view
    (asked,) = messages(asys, hub, LimiterStateRequest)
    assert asked.key == "k"
    window = int(time.time() // 86400.0)
    # The cluster already spent 1 request of 3 in this window.
    asys.tell(actor, LimiterDelta("k", {window: {"requests": {"other": 1}, "tokens": {"other": 10}}}, "hub:n1", limits))
    first = asys.listen(2)
    assert isinstance(first, StrictGrant) and first.reservation_id == "r1#1"
    assert isinstance(asys.ask(actor, StrictAcquire("k", limits, "r2#1", 10), 2), StrictGrant)
    denied = asys.ask(actor, StrictAcquire("k", limits, "r3#1", 10), 2)
    assert isinstance(denied, StrictDenied) and isinstance(denied.error, E.BudgetExceeded)
    asys.tell(actor, StrictSettle("k", "r1#1", None, sent=False))   # never reached the provider: given back
    assert isinstance(asys.ask(actor, StrictAcquire("k", limits, "r4#1", 10), 2), StrictGrant)
    assert isinstance(asys.ask(actor, StrictAcquire("k", limits, "r5#1", 10), 2), StrictDenied)


def test_without_a_hub_the_strict_limiter_starts_from_zero(asys, monkeypatch):
    from actors.runtime import strict_limiter
    from actors.runtime.strict_limiter import StrictRateLimiterActor

    monkeypatch.setattr(strict_limiter, "SETTLE_S", 0.0)
    monkeypatch.setattr(strict_limiter, "EXPIRE_EVERY_S", 0.02)
    actor = asys.createActor(StrictRateLimiterActor)
    asys.tell(actor, StrictInit("n1", None))
    limits = RateLimits(rpm=1, window_s=86400.0, mode="strict")
    assert isinstance(asys.ask(actor, StrictAcquire("k", limits, "a#1", 1), 2), StrictGrant)
    asys.listen(0.1)                               # a few expiry sweeps: an open reservation stays charged
    assert isinstance(asys.ask(actor, StrictAcquire("k", limits, "b#1", 1), 2), StrictDenied)


def test_a_hub_that_never_answers_does_not_hold_admission_forever(asys, monkeypatch):
    from actors.runtime import strict_limiter
    from actors.runtime.strict_limiter import StrictRateLimiterActor

    monkeypatch.setattr(strict_limiter, "SETTLE_S", 0.01)
    monkeypatch.setattr(strict_limiter, "SEED_TIMEOUT_S", 0.05)
    silent = asys.createActor(Recorder)
    actor = asys.createActor(StrictRateLimiterActor)
    asys.tell(actor, StrictInit("n1", silent))
    limits = RateLimits(rpm=5, window_s=86400.0, mode="strict")
    assert isinstance(asys.ask(actor, StrictAcquire("k", limits, "a#1", 1), 3), StrictGrant)


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
