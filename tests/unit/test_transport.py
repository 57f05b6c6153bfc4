"""The phase table: each transport failure's error type, whether it was sent, whether it may be retried."""

import pytest

from actors import errors as E
from actors.core.transport import Phase, classify_transport, deadline_verdict

TABLE = [
    # phase, timed_out, error, sent
    (Phase.CONNECT, False, E.NetworkError, False),
    (Phase.CONNECT, True, E.Timeout, False),
    (Phase.SEND, False, E.NetworkError, False),
    (Phase.SEND, True, E.Timeout, False),
    (Phase.AWAIT_HEADERS, False, E.NetworkError, True),
    (Phase.AWAIT_HEADERS, True, E.Timeout, True),
    (Phase.BODY, False, E.StreamError, True),
    (Phase.BODY, True, E.Timeout, True),
]


@pytest.mark.parametrize("phase,timed_out,cls,sent", TABLE)
def test_the_phase_table(phase, timed_out, cls, sent):
    verdict = classify_transport(phase, timed_out=timed_out, detail="X", provider="openai")
    assert type(verdict.error) is cls and verdict.sent is sent
    assert verdict.error.retryable and verdict.error.counts_for_breaker
    assert verdict.error.provider == "openai" and "(X)" in verdict.error.message


@pytest.mark.parametrize("phase,timed_out,cls,sent", TABLE)
def test_after_tokens_were_delivered_nothing_invites_a_replay(phase, timed_out, cls, sent):
    assert classify_transport(phase, timed_out=timed_out, delivered=True).error.retryable is False


def test_only_a_failure_before_the_body_was_written_gives_the_budget_back():
    assert [p for p in Phase if not p.reached_provider] == [Phase.CONNECT, Phase.SEND]


@pytest.mark.parametrize("phase", list(Phase))
def test_the_callers_deadline_is_never_the_providers_fault(phase):
    verdict = deadline_verdict(phase, caller_deadline=True, total_s=10)
    assert type(verdict.error) is E.DeadlineExceeded and not verdict.error.counts_for_breaker
    assert not verdict.error.retryable and verdict.sent is phase.reached_provider


def test_total_s_is_a_timeout_retryable_only_before_tokens():
    before = deadline_verdict(Phase.BODY, caller_deadline=False, total_s=10)
    after = deadline_verdict(Phase.BODY, caller_deadline=False, total_s=10, delivered=True)
    assert type(before.error) is E.Timeout and "total timeout 10s" in before.error.message
    assert before.error.retryable and not after.error.retryable and before.sent


def test_the_transport_error_says_where_and_why_and_for_whom():
    verdict = classify_transport(Phase.CONNECT, timed_out=False, detail="refused", provider="openai")
    assert verdict.error.message == "connection failed connecting (refused)" and verdict.error.provider == "openai"
    bare = classify_transport(Phase.BODY, timed_out=False)
    assert bare.error.message == "connection broke reading the response body" and bare.error.provider == ""
    assert classify_transport(Phase.AWAIT_HEADERS, timed_out=True).error.message == (
        "timed out waiting for the response headers")


def test_a_whole_attempt_out_of_time_says_whose_time_it_was():
    caller = deadline_verdict(Phase.BODY, caller_deadline=True, total_s=30, provider="openai")
    assert (type(caller.error), caller.error.message, caller.error.provider) == (
        E.DeadlineExceeded, "the request's deadline passed reading the response body", "openai")
    ours = deadline_verdict(Phase.AWAIT_HEADERS, caller_deadline=False, total_s=30, provider="openai")
    assert (type(ours.error), ours.error.message, ours.error.provider, ours.error.retryable) == (
        E.Timeout, "total timeout 30s exceeded waiting for the response headers", "openai", True)
    late = deadline_verdict(Phase.BODY, caller_deadline=False, total_s=2.5, delivered=True)
    assert late.error.retryable is False and late.error.provider == "" and "2.5s" in late.error.message
