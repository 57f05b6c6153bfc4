"""The reader thread's relay (runtime/stream_job.py Job.relay): when it may write chunks itself.

No sockets and no threads: a fake sender records the frames it was asked to write, and the
attempt's queue is the real one, so each rule is a plain call.
"""

from __future__ import annotations

import json
import queue
import time

from actors.errors import InferenceError
from actors.runtime.protocol import Dispatch
from actors.runtime.stream_job import CONTINUE, Job, Relayed, RelayFailed
from actors.types import InferenceRequest

from test_providers_wire import runner_for


def sse(*words: str) -> bytes:
    return b"".join(b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": w}}]}).encode() + b"\n\n"
                    for w in words)


class FakeAttempt:
    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()

    def put(self, item) -> bool:
        self.events.put(item)
        return True


class FakeSender:
    def __init__(self, works: bool = True) -> None:
        self.works = works
        self.frames: list[tuple[str, int, str]] = []

    def send(self, channel, request_id, seq, text, tools) -> bool:
        if self.works:
            self.frames.append((request_id, seq, text))
        return self.works


def job(sender: FakeSender) -> tuple[Job, FakeAttempt]:
    runner = runner_for("openai")
    request = InferenceRequest(model="m", messages=[], stream=True, request_id="req_1",
                               channel={"port": 4000, "token": "t"})
    attempt = FakeAttempt()
    j = Job(Dispatch(request, None, 1), attempt, deadline=1e12, decoder=runner.stream_decoder(), total_s=30)
    j.relay_to = (sender, request.channel, runner, "openai", 0.0)
    return j, attempt


def test_the_reader_relays_only_once_the_actor_handed_over_and_nothing_is_queued():
    sender = FakeSender()
    j, attempt = job(sender)
    assert j.relay(sse("Hello")) is None            # not handed over yet: queue it for the actor
    assert j.consume(sse("Hello"), runner_for("openai"), "openai") is CONTINUE   # the actor's first chunk ...
    j.acc.take_pending()
    j.chunks = 1
    j.relaying = True                                # ... and the hand-over
    attempt.put(sse(" queued"))
    assert j.relay(sse(" later")) is None            # something is still queued: keep the order
    attempt.events.get_nowait()
    assert j.relay(sse(" world")) is True
    assert j.relay(sse(" again", " twice")) is True  # one piece of the body, one chunk
    assert sender.frames == [("req_1", 1, " world"), ("req_1", 2, " again twice")]
    assert j.chunks == 3 and j.acc.text == "Hello world again twice"


def test_a_finished_job_relays_nothing_and_stops_the_reader():
    sender = FakeSender()
    j, _ = job(sender)
    j.chunks, j.relaying = 1, True
    j.finished = True                                # the actor ended it (cancel, deadline, an error)
    assert j.relay(sse("late")) is False
    assert sender.frames == [] and j.acc.text == ""


def test_a_channel_that_fails_hands_the_chunk_and_the_rest_back_to_the_actor():
    sender = FakeSender(works=False)
    j, attempt = job(sender)
    j.chunks, j.relaying = 1, True
    assert j.relay(sse("lost?")) is True
    handed = attempt.events.get_nowait()
    assert isinstance(handed, Relayed) and (handed.seq, handed.text) == (1, "lost?")
    assert not j.relaying and j.chunks == 2          # sent as a message by the actor, with its seq
    assert j.relay(sse(" next")) is None             # the rest is queued for the actor again


def test_a_body_that_fails_to_decode_becomes_the_attempts_outcome():
    j, attempt = job(FakeSender())
    j.chunks, j.relaying = 1, True
    assert j.relay(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n') is False
    outcome = attempt.events.get_nowait()
    assert isinstance(outcome, RelayFailed) and isinstance(outcome.error, InferenceError)
    assert j.consume(outcome, None, "openai") is outcome.error


def test_within_the_coalescing_window_the_reader_keeps_text_pending_and_asks_once_for_the_timer():
    from actors.runtime.stream_job import FlushSoon

    sender = FakeSender()
    j, attempt = job(sender)
    j.relay_to = j.relay_to[:4] + (60.0,)          # coalesce_ms: a minute, so nothing is due
    j.chunks, j.relaying = 1, True
    j.last_flush = time.monotonic()
    assert j.relay(sse("one")) is True
    assert isinstance(attempt.events.get_nowait(), FlushSoon) and j.flush_armed
    assert j.relay(sse(" two")) is True            # the timer is asked for already: nothing more queued
    assert attempt.events.empty() and sender.frames == []
    assert j.acc.take_pending()[0] == "one two"    # what the actor's timer will flush, as one chunk
