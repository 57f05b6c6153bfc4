"""The client's liveness checks: one question per engine at a time, its answer shared (core/liveness.py)."""

from actors.core.liveness import SharedChecks

from fakes import FakeClock


def test_one_asker_per_engine_while_the_others_use_the_last_answer_and_a_fresh_answer_serves_everyone():
    clock = FakeClock(100.0)
    checks = SharedChecks(fresh_s=1.0, clock=clock)
    assert checks.claim("e1") == (True, None)          # the first silent request asks
    assert [checks.claim("e1") for _ in range(255)] == [(False, None)] * 255  # the other 255 do not
    assert checks.claim("e2") == (True, None)          # another engine is another question
    clock.advance(0.4)
    checks.answered("e1", None)                         # alive (or the node did not say)
    clock.advance(0.9)
    assert checks.claim("e1") == (False, None)          # answered 0.9 s ago: still fresh
    clock.advance(0.2)
    assert checks.claim("e1") == (True, None)           # stale: one asks again
    checks.answered("e1", "engine d1/0 died; restarting")
    assert checks.claim("e1") == (False, "engine d1/0 died; restarting")  # the death is everyone's news


def test_a_flood_of_silent_requests_asks_at_most_once_per_engine_per_period():
    clock = FakeClock(0.0)
    checks = SharedChecks(fresh_s=1.0, clock=clock)
    asked = 0
    for _ in range(100):          # 256 requests wondering every 0.1 s, each answer taking 0.3 s: 13 s in all
        for _ in range(256):
            ask, _ = checks.claim("e1")
            if ask:
                asked += 1
                clock.advance(0.3)
                checks.answered("e1", None)
        clock.advance(0.1)
    assert asked == 10  # one per answer-and-freshness period (1.3-1.4 s), where one per request asked 25,600


def test_forgotten_engines_do_not_grow_the_table_past_its_limit_and_an_open_question_is_kept():
    clock = FakeClock(0.0)
    checks = SharedChecks(fresh_s=1.0, clock=clock, limit=8)
    assert checks.claim("asking") == (True, None)
    for n in range(100):
        clock.advance(0.01)
        checks.claim(f"e{n}")
        checks.answered(f"e{n}", None)
    assert len(checks._checks) <= 8
    assert checks.claim("asking") == (False, None)   # still being asked: nobody else asks meanwhile


def test_an_answer_is_fresh_for_exactly_its_period_and_may_come_unasked():
    clock = FakeClock(10.0)
    checks = SharedChecks(fresh_s=1.0, clock=clock)
    checks.answered("e9", "engine e9 died")            # an answer nobody here asked for is shared too
    assert checks.claim("e9") == (False, "engine e9 died")
    clock.advance(1.0)
    assert checks.claim("e9") == (True, None)           # exactly one period on: stale


def test_a_full_table_forgets_the_oldest_answers_not_the_first_names():
    clock = FakeClock(0.0)
    checks = SharedChecks(fresh_s=100.0, clock=clock, limit=4)
    for key in ("d", "c", "b", "a"):                    # answered in this order: d is the oldest
        checks.claim(key)
        checks.answered(key, key)
        clock.advance(1.0)
    checks.claim("e")                                   # full: a quarter (one) is forgotten
    assert checks.claim("a") == (False, "a") and checks.claim("d") == (True, None)


def test_the_table_holds_1024_engines_by_default():
    assert SharedChecks(fresh_s=1.0).limit == 1024
