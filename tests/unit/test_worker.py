"""The worker on its transport seam: the production stream path (reader thread, relay on the
stream channel, messages as the fallback), phase tracking and what it decides, a runner's bug.

Real engine, worker and breaker actors on simpleSystemBase; the upstream and the stream
channel are the in-memory network of actors/testing/mock_transport.py, so requests, urllib3,
http.client, PhaseAdapter and the StreamSender all run, and no socket opens.
"""

from __future__ import annotations

import threading
import time

import pytest

from actors import errors as E
from actors.core.breaker import BreakerConfig, CircuitState
from actors.core.ratelimit import RateLimits
from actors.core.retry import RetryPolicy
from actors.runtime.protocol import BreakerQuery
from actors.testing.mock_transport import EOF, REFUSE, RESET_ON_SEND, MockResponse
from actors.types import Completed, Failed, TokenChunk
from harness import deployment, openai_completion, openai_stream, request, stream_answer

HELLO = [{"role": "user", "content": "hello"}]
WORDS = ["one ", "two ", "three ", "four ", "five"]


def everything(e, channel, rid):
    """What the caller got for ``rid``: message chunks, channel chunks (by seq), the terminal."""
    messages, done = e.collect(rid)
    framed = channel.chunks(rid) if channel is not None else []
    return messages, framed, done


def test_a_stream_with_a_channel_goes_as_frames_and_the_engine_hears_of_its_first_token(engine, upstream, channel):
    upstream.then(stream_answer(WORDS, pause_s=0.01))
    e = engine(coalesce_ms=0)
    e.tell(request("s1", stream=True, channel=channel.address))
    messages, framed, done = everything(e, channel, "s1")
    assert isinstance(done, Completed) and done.text == "".join(WORDS)
    assert messages == [] and [c.seq for c in framed] == list(range(len(framed))) and len(framed) >= 2
    assert "".join(c.text for c in framed) == done.text and done.chunks == len(framed)
    assert done.ttft_s is not None                     # FirstToken reached the engine
    assert channel.hello_tokens() == ["unit-token"] and channel.listener.connections == 1


def test_a_channel_that_breaks_mid_stream_hands_the_rest_to_messages_in_order(engine, upstream, channel):
    gate = threading.Event()
    answer = stream_answer(WORDS, pause_s=0.01)
    answer.parts.insert(4, gate)                       # two words, then the upstream waits for the test
    upstream.then(answer)
    e = engine(coalesce_ms=0)
    e.tell(request("s1", stream=True, channel=channel.address))
    deadline = time.monotonic() + 5
    while len(channel.chunks("s1")) < 2 and time.monotonic() < deadline:
        e.listen(0.01)
    channel.listener.broken = True                     # the caller's end goes away
    gate.set()
    messages, framed, done = everything(e, channel, "s1")
    assert isinstance(done, Completed) and len(framed) == 2 and messages
    seqs = sorted([c.seq for c in framed] + [m.seq for m in messages])
    assert seqs == list(range(done.chunks))            # every chunk once, whichever way it went
    text = "".join(c.text for c in sorted(framed + messages, key=lambda c: c.seq))
    assert text == done.text == "".join(WORDS)


def test_a_refused_channel_means_messages_from_the_first_chunk(engine, upstream, channel):
    channel.listener.refuse = True
    upstream.then(stream_answer(WORDS))
    e = engine(coalesce_ms=0)
    e.tell(request("s1", stream=True, channel=channel.address))
    messages, framed, done = everything(e, channel, "s1")
    assert isinstance(done, Completed) and framed == [] and "".join(m.text for m in messages) == done.text


def test_coalescing_holds_text_back_within_the_window_and_flushes_it_on_the_timer(engine, upstream, channel):
    # A word, then four at once, then a pause longer than the window before the stream ends:
    # the first word goes at once, the next four travel together when the window closes.
    parts = openai_stream(WORDS)
    parts.insert(len(WORDS), 0.3)
    parts.insert(1, 0.02)                             # so the first word is read on its own
    upstream.then(MockResponse(200, parts=parts, headers={"content-type": "text/event-stream"}))
    e = engine(coalesce_ms=100)
    e.tell(request("s1", stream=True, channel=channel.address))
    messages, framed, done = everything(e, channel, "s1")
    chunks = sorted(framed + messages, key=lambda c: c.seq)
    assert isinstance(done, Completed) and [c.text for c in chunks] == ["one ", "two three four five"]


def test_without_a_channel_the_stream_goes_as_messages(engine, upstream):
    upstream.then(stream_answer(WORDS, pause_s=0.01))
    e = engine(coalesce_ms=0)
    e.tell(request("s1", stream=True))
    messages, done = e.collect("s1")
    assert isinstance(done, Completed) and "".join(m.text for m in messages) == done.text
    assert [m.seq for m in messages] == list(range(done.chunks))


@pytest.mark.parametrize("streamed", [True, False])
def test_a_decoder_bug_fails_the_request_once_and_never_counts_for_the_circuit(engine, upstream, channel, streamed):
    """One classification of a runner's own exception (core/streaming.runner_failed), on every path."""
    if streamed:
        bad = MockResponse(200, parts=[openai_stream(["fine "])[0], b'data: {"choices": [null]}\n\n'],
                           headers={"content-type": "text/event-stream"})
    else:
        bad = MockResponse(200, {"choices": [None]})
    upstream.then(bad, MockResponse(200, openai_completion("after")))
    e = engine(breaker=BreakerConfig(consecutive_failures=1), coalesce_ms=0)
    e.tell(request("r1", stream=streamed, channel=channel.address))
    _, _, failed = everything(e, channel, "r1")
    assert isinstance(failed, Failed) and type(failed.error) is E.InternalError, failed
    assert "AttributeError" in failed.error.message and failed.attempts == 1 and not failed.error.retryable
    e.tell(request("r2"))
    _, after = e.collect("r2")
    assert isinstance(after, Completed) and after.text == "after"   # one counted failure would have tripped it
    snapshot = e.asys.ask(e.breaker, BreakerQuery(), 2).snapshot
    assert snapshot.state is CircuitState.CLOSED and snapshot.window_failures == 0


def test_a_counted_failure_does_trip_that_breaker(engine, upstream):
    """The contrast to the test above: a stream the provider breaks is the provider's fault."""
    cut = stream_answer(["a "])
    cut.parts.insert(1, ConnectionResetError(104, "Connection reset by peer"))
    upstream.then(cut)
    e = engine(breaker=BreakerConfig(consecutive_failures=1), coalesce_ms=0, retry=RetryPolicy(max_retries=0))
    e.tell(request("r1", stream=True))
    _, failed = e.collect("r1")
    assert isinstance(failed.error, E.StreamError)
    deadline = time.monotonic() + 5
    state = None
    while time.monotonic() < deadline and state is not CircuitState.OPEN:
        e.listen(0.05)
        state = e.asys.ask(e.breaker, BreakerQuery(), 2).snapshot.state
    assert state is CircuitState.OPEN


def test_where_an_attempt_failed_decides_whether_its_budget_is_refunded(engine, upstream):
    """PhaseAdapter on the seam: refused before connecting is refunded; hung up on after the
    request was written keeps its estimate (the provider may have run it)."""
    from harness import actor_instance

    e = engine(workers=1, limits=RateLimits(tpm=1_000_000))
    limiter = actor_instance(e.asys, e.engine).core.limiter
    upstream.transport.fail_next(REFUSE)
    upstream.then(MockResponse(200, openai_completion("ok", 3, 2)))
    e.tell(request("refused"))
    _, done = e.collect("refused")
    assert isinstance(done, Completed) and done.attempts == 2 and done.attempt_log[0].error_kind == "network_error"
    assert limiter.usage().tokens == 5                 # only what the served attempt used

    upstream.then(MockResponse.hang_up(), MockResponse(200, openai_completion("ok", 3, 2)))
    e.tell(request("hung-up"))
    _, done = e.collect("hung-up")
    assert isinstance(done, Completed) and done.attempts == 2
    assert limiter.usage().tokens > 5 + 5              # the hung-up attempt keeps its estimate


def test_a_reset_while_the_request_is_written_was_not_sent_and_gives_its_budget_back(engine, upstream):
    from harness import actor_instance

    e = engine(workers=1, limits=RateLimits(tpm=1_000_000))
    upstream.transport.fail_next(RESET_ON_SEND)
    upstream.then(MockResponse(200, openai_completion("ok", 3, 2)))
    e.tell(request("r1"))
    _, done = e.collect("r1")
    assert isinstance(done, Completed) and done.attempts == 2 and len(upstream.requests) == 1
    assert "sending the request" in repr(done.attempt_log[0]) or done.attempt_log[0].error_kind == "network_error"
    assert actor_instance(e.asys, e.engine).core.limiter.usage().tokens == 5


def test_a_stream_cut_mid_body_after_tokens_ends_with_what_was_sent(engine, upstream, channel):
    cut = stream_answer(["a ", "b ", "c "], pause_s=0.01)
    cut.parts.insert(4, EOF)
    upstream.then(cut)
    e = engine(coalesce_ms=0)
    e.tell(request("s1", stream=True, channel=channel.address))
    messages, framed, failed = everything(e, channel, "s1")
    assert isinstance(failed, Failed) and isinstance(failed.error, E.StreamError) and not failed.error.retryable
    assert failed.chunks == len(framed) + len(messages) >= 1 and len(upstream.requests) == 1


def test_cancel_mid_stream_stops_the_relay(engine, upstream, channel):
    upstream.then(stream_answer(["w "] * 200, pause_s=0.01))
    e = engine(workers=1, coalesce_ms=0)
    e.tell(request("s1", stream=True, channel=channel.address))
    deadline = time.monotonic() + 5
    while not channel.chunks("s1") and time.monotonic() < deadline:
        e.listen(0.01)
    from actors.types import Cancel
    e.tell(Cancel("s1"))
    _, done = e.collect("s1")
    assert isinstance(done, Failed) and isinstance(done.error, E.Cancelled)
    e.drain_extra(0.2)
    count = len(channel.chunks("s1"))
    time.sleep(0.1)                                    # the reader thread, if it were still relaying
    e.drain_extra(0.1)
    assert len(channel.chunks("s1")) == count < 200


class LoneWorker:
    """A worker on its own: its engine and its session are recorders."""

    def __init__(self, asys, dep) -> None:
        from harness import Recorder

        from actors.runtime.protocol import WorkerInit
        from actors.runtime.worker import RemoteWorkerActor

        self.asys = asys
        self.engine, self.session = asys.createActor(Recorder), asys.createActor(Recorder)
        self.worker = asys.createActor(RemoteWorkerActor)
        asys.tell(self.worker, WorkerInit(dep, self.engine, self.session, [0]))

    def results(self, count: int = 1, timeout_s: float = 5.0) -> list:
        from actors.runtime.protocol import WorkerResult

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [m for m in self.asys.ask(self.engine, "seen?", 1) if isinstance(m, WorkerResult)]
            if len(found) >= count:
                return found
            self.asys.listen(0.02)
        raise AssertionError(f"fewer than {count} WorkerResult(s) within {timeout_s}s")


def test_a_dispatch_waits_for_its_credential_and_goes_once_it_arrives(asys, upstream):
    from actors.core.credentials import Secret
    from actors.runtime.protocol import Dispatch, SessionSnapshot, SessionSubscribe

    lone = LoneWorker(asys, deployment())
    asys.tell(lone.worker, Dispatch(request("r1"), lone.engine, 1, min_session_version=2))
    assert any(isinstance(m, SessionSubscribe) and m.wants_secret for m in asys.ask(lone.session, "seen?", 1))
    assert upstream.requests == []                     # nothing goes upstream without the credential
    asys.tell(lone.worker, SessionSnapshot(1, Secret("sk-old")))    # not fresh enough
    asys.listen(0.05)
    assert upstream.requests == []
    asys.tell(lone.worker, SessionSnapshot(2, Secret("sk-new")))
    (result,) = lone.results()
    assert result.error is None and result.session_version == 2
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-new"


def test_a_dispatch_whose_credential_never_comes_fails_typed_and_unsent(asys, upstream, monkeypatch):
    from actors.runtime import worker as worker_module
    from actors.runtime.protocol import Dispatch

    monkeypatch.setattr(worker_module, "CREDENTIAL_WAIT_S", 0.05)
    lone = LoneWorker(asys, deployment())
    asys.tell(lone.worker, Dispatch(request("r1"), lone.engine, 1, min_session_version=5))
    (result,) = lone.results()
    assert isinstance(result.error, E.AuthenticationError) and result.sent is False and upstream.requests == []


def test_a_cancel_while_waiting_for_the_credential_ends_the_dispatch(asys, upstream):
    from actors.runtime.protocol import Dispatch
    from actors.types import Cancel

    lone = LoneWorker(asys, deployment())
    asys.tell(lone.worker, Dispatch(request("r1"), lone.engine, 1, min_session_version=5))
    asys.tell(lone.worker, Cancel("r1"))
    (result,) = lone.results()
    assert isinstance(result.error, E.Cancelled) and result.sent is False


def test_a_runner_that_cannot_build_the_request_fails_it_unsent_without_its_text(asys, upstream, monkeypatch):
    from actors.providers.openai import OpenAIChatRunner
    from actors.runtime.protocol import Dispatch, SessionSnapshot

    def broken(self, request, credential):
        raise ValueError(f"cannot use {credential.reveal() if hasattr(credential, 'reveal') else credential}")

    monkeypatch.setattr(OpenAIChatRunner, "build_request", broken)
    lone = LoneWorker(asys, deployment())
    from actors.core.credentials import Secret
    asys.tell(lone.worker, SessionSnapshot(1, Secret("sk-very-secret")))
    asys.tell(lone.worker, Dispatch(request("r1"), lone.engine, 1))
    (result,) = lone.results()
    assert type(result.error) is E.InternalError and result.sent is False
    assert "ValueError" in result.error.message and "sk-very-secret" not in result.error.message


def test_chunks_messages_carry_the_request_id_and_nothing_follows_the_terminal(engine, upstream):
    upstream.then(stream_answer(WORDS))
    e = engine(coalesce_ms=0)
    e.tell(request("s1", stream=True))
    messages, done = e.collect("s1")
    assert all(isinstance(m, TokenChunk) and m.request_id == "s1" for m in messages)
    assert [m for m in e.drain_extra(0.2) if getattr(m, "request_id", None) == "s1"] == []


def test_a_worker_killed_mid_stream_ends_the_request_with_an_unknown_count_and_nothing_after(engine, upstream):
    """The raw protocol's rule (README): a terminal whose ``chunks`` is None means the answer is
    what arrived before it; the dead worker sends nothing after it."""
    from harness import actor_instance
    from thespian.actors import ActorExitRequest
    gate = threading.Event()
    answer = stream_answer(["a ", "b ", "c "], pause_s=0.01)
    answer.parts.insert(4, gate)
    upstream.then(answer)
    e = engine(workers=1, coalesce_ms=0)
    e.tell(request("s1", stream=True))
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        message = e.listen(0.05)
        if isinstance(message, TokenChunk):
            got.append(message)
    e.asys.tell(actor_instance(e.asys, e.engine).workers[0], ActorExitRequest())
    gate.set()
    rest, done = e.collect("s1")
    assert isinstance(done, Failed) and isinstance(done.error, E.WorkerCrashed) and not done.error.retryable
    assert done.chunks is None and len(got) == 2
    assert [m for m in e.drain_extra(0.3) if getattr(m, "request_id", None) == "s1"] == []



def test_a_dispatch_the_worker_fails_on_twice_still_gets_its_one_terminal_and_the_worker_serves_on(
        engine, upstream, monkeypatch):
    """Thespian returns a message its handler failed on twice to the sender as a PoisonMessage:
    the engine turns that into the request's terminal (tests/unit/test_thespian_contract.py)."""
    from actors.runtime.worker import RemoteWorkerActor

    original = RemoteWorkerActor.receiveMsg_Dispatch

    def poisoned(self, msg, sender):
        if msg.request.request_id == "poison":
            raise RuntimeError("a bug outside the worker's own guard")
        return original(self, msg, sender)

    monkeypatch.setattr(RemoteWorkerActor, "receiveMsg_Dispatch", poisoned)
    e = engine(workers=1)
    e.tell(request("poison"))
    _, failed = e.collect("poison")
    assert isinstance(failed, Failed) and type(failed.error) is E.InternalError
    e.tell(request("next"))
    _, done = e.collect("next")
    assert isinstance(done, Completed) and upstream.requests and len(upstream.requests) == 1
    assert [m for m in e.drain_extra(0.2) if getattr(m, "request_id", None) == "poison"] == []
