"""The real engine and worker actors on simpleSystemBase, against a scripted upstream (no socket)."""

from __future__ import annotations

import time

from actors import errors as E
from actors.core.ratelimit import RateLimits
from actors.runtime.protocol import Drain, Drained, EngineReady, EngineStatus, StatusRequest, StrictLimiterIs
from actors.testing.windows import fresh_window_s
from actors.types import Cancel, Completed, Failed
from harness import Answer, InProcessEngine, deployment, openai_completion, request, stream_answer

HELLO = [{"role": "user", "content": "hello"}]


def test_a_503_is_retried_and_the_200_completes(engine, upstream):
    upstream.then(Answer(503, {"error": {"message": "busy", "type": "server_error"}}),
                  Answer(200, openai_completion("fine", 4, 3)))
    e = engine()
    e.tell(request("r1"))
    _, done = e.collect("r1")
    assert isinstance(done, Completed) and done.text == "fine" and done.attempts == 2
    assert done.usage.total_tokens == 7 and done.charged_tokens == 7
    assert len(upstream.requests) == 2 and upstream.requests[1].at > upstream.requests[0].at
    assert e.drain_extra() == []
    assert any(isinstance(m, EngineReady) for m in e.registry_saw())


def test_a_stream_arrives_in_order_then_one_completed(engine, upstream):
    words = ["one ", "two ", "three ", "four"]
    upstream.then(stream_answer(words, pause_s=0.02))
    e = engine(coalesce_ms=0)
    e.tell(request("s1", stream=True))
    chunks, done = e.collect("s1")
    assert isinstance(done, Completed) and "".join(c.text for c in chunks) == "".join(words) == done.text
    assert [c.seq for c in chunks] == list(range(len(chunks))) and done.chunks == len(chunks) >= 2
    assert upstream.requests[0].json()["stream"] is True
    assert e.drain_extra() == []


def test_cancel_mid_stream_ends_the_request_once_and_frees_the_worker(engine, upstream):
    upstream.then(stream_answer(["a "] * 50, pause_s=0.05), Answer(200, openai_completion("next")))
    e = engine(workers=1, coalesce_ms=0)
    e.tell(request("s1", stream=True))
    first = e.listen(5)
    assert first is not None and first.request_id == "s1"
    e.tell(Cancel("s1"))
    _, done = e.collect("s1")
    assert isinstance(done, Failed) and isinstance(done.error, E.Cancelled)
    e.tell(request("r2"))
    _, after = e.collect("r2")
    assert isinstance(after, Completed) and after.text == "next"
    assert not [m for m in e.drain_extra() if getattr(m, "request_id", None) == "s1" and isinstance(m, (Completed, Failed))]


def test_a_stalled_stream_ends_at_its_deadline_and_the_worker_serves_again(engine, upstream):
    import threading
    never = threading.Event()
    stalled = stream_answer(["x "])
    stalled.parts.insert(1, never)  # one token, then nothing
    upstream.then(stalled, Answer(200, openai_completion("next")))
    e = engine(workers=1, coalesce_ms=0)
    started = time.monotonic()
    e.tell(request("s1", stream=True, deadline_unix=time.time() + 0.5))
    chunks, done = e.collect("s1")
    assert isinstance(done, Failed) and isinstance(done.error, E.DeadlineExceeded)
    assert len(chunks) == 1 and done.chunks in (1, None) and not done.error.retryable   # None: the engine's deadline came first
    assert time.monotonic() - started < 3.0  # the deadline, not the 5 s stall, ended it
    never.set()
    e.tell(request("r2"))
    _, after = e.collect("r2")
    assert isinstance(after, Completed)


def test_a_stream_that_breaks_after_tokens_is_not_retried(engine, upstream):
    broken = stream_answer(["a ", "b "])
    broken.parts.insert(2, ConnectionResetError(104, "Connection reset by peer"))
    upstream.then(broken)
    e = engine(coalesce_ms=0)
    e.tell(request("s1", stream=True))
    chunks, done = e.collect("s1")
    assert isinstance(done, Failed) and done.error.retryable is False and len(chunks) >= 1
    assert len(upstream.requests) == 1


def test_an_engine_before_its_init_answers_every_message():
    e = InProcessEngine(deployment(), init=False)
    try:
        e.tell(request("early"))
        _, failed = e.collect("early")
        assert isinstance(failed, Failed) and isinstance(failed.error, E.ShuttingDown)
        assert "not initialised" in failed.error.message
        assert isinstance(e.ask(StatusRequest(), EngineStatus), EngineStatus)
        assert isinstance(e.ask(Drain(), Drained), Drained)
        e.init()
    finally:
        e.close()


def test_what_the_node_says_of_the_cluster_before_engine_init_still_counts(engine, upstream):
    """Outside the cluster with a share of 1 rpm (2 rpm in two shares): one call goes, the next
    is refused at once. Dropped, the word would leave the engine waiting to be told, then
    refusing both; taken as "in the cluster", it would send both."""
    upstream.then(Answer(200, openai_completion("fine")), Answer(200, openai_completion("again")))
    e = engine(init=False, limits=RateLimits(rpm=2, window_s=fresh_window_s(), leader_unavailable="local_share"))
    e.tell(StrictLimiterIs(None, 2, False))
    e.init(told=None)
    e.tell(request("r1"))
    _, first = e.collect("r1")
    assert isinstance(first, Completed) and first.text == "fine"
    e.tell(request("r2", deadline_unix=time.time() + 5))
    _, second = e.collect("r2")
    assert isinstance(second, Failed) and isinstance(second.error, E.BudgetExceeded)
    assert "(1/1)" in second.error.message
    assert len(upstream.requests) == 1


def test_drain_reports_once_the_last_request_ends(engine, upstream):
    upstream.then(Answer(200, openai_completion("done")))
    e = engine()
    e.tell(request("r1"))
    assert isinstance(e.ask(StatusRequest(), EngineStatus), EngineStatus)
    _, done = e.collect("r1")
    assert isinstance(done, Completed)
    reply = e.ask(Drain(), Drained)
    assert isinstance(reply, Drained) and reply.in_flight == 0
    e.tell(request("late"))
    _, refused = e.collect("late")
    assert isinstance(refused.error, E.ShuttingDown)


def test_a_worker_that_dies_before_any_token_is_replaced_and_the_request_retried(engine, upstream):
    from harness import actor_instance
    from thespian.actors import ActorExitRequest
    slow = stream_answer(["late"])
    slow.parts.insert(0, 2.0)  # the upstream thinks before its first token
    upstream.then(slow, stream_answer(["retried"]))
    e = engine(workers=1)
    e.tell(request("r1", stream=True))
    deadline = time.monotonic() + 5
    while not upstream.requests and time.monotonic() < deadline:
        e.listen(0.01)
    worker = actor_instance(e.asys, e.engine).workers[0]
    e.asys.tell(worker, ActorExitRequest())
    _, done = e.collect("r1")
    assert isinstance(done, Completed) and done.text == "retried" and done.attempts == 2
    assert actor_instance(e.asys, e.engine).workers[0] != worker


def test_an_engine_that_cannot_start_says_why_to_every_caller(monkeypatch):
    import actors.runtime.engine as engine_module

    def broken(dep):
        raise ValueError("no such region")

    monkeypatch.setattr(engine_module, "make_runner", broken)
    e = InProcessEngine(deployment())
    try:
        e.tell(request("r1"))
        _, failed = e.collect("r1")
        assert isinstance(failed.error, E.InternalError) and "no such region" in failed.error.message
    finally:
        e.close()
