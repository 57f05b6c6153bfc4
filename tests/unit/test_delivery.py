"""The worker's stream half (runtime/delivery.py): who cuts, who sends, and the outcome.

Plain calls, no threads: the reader's events go to ``take`` as the reader thread would hand
them, the actor's turns are ``pump`` calls, and the channel and the actor's sends are
recorded. The real decoder of the OpenAI runner turns the bytes into deltas.
"""

from __future__ import annotations

import json
import time

from actors import errors as E
from actors.core import streaming
from actors.core.streaming import END, HttpStatus, Opened, TransportFailed, WholeBody
from actors.core.transport import Phase
from actors.runtime.delivery import UNDECIDED, Delivery
from actors.runtime.protocol import Dispatch
from actors.types import InferenceRequest

from test_providers_wire import runner_for


def sse(*words: str) -> bytes:
    return b"".join(b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": w}}]}).encode() + b"\n\n"
                    for w in words)


FINISH = (b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
          b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\ndata: [DONE]\n\n')


class FakeExchange:
    def __init__(self) -> None:
        self.phase = Phase.BODY
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


class Channel:
    def __init__(self, works: bool = True) -> None:
        self.works = works
        self.frames: list[tuple[int, str]] = []

    def send(self, chunk) -> bool:
        if self.works:
            self.frames.append((chunk.seq, chunk.text))
        return self.works


class Outlet:
    def __init__(self, written: bool = False) -> None:
        self.messages: list[tuple[int, str]] = []
        self.first_tokens: list[float] = []
        self.written = written      # FirstToken went out whole on the engine's link (linked_actor.send_written)

    def to_caller(self, chunk) -> None:
        self.messages.append((chunk.seq, chunk.text))

    def first_token(self, at_unix: float) -> bool:
        self.first_tokens.append(at_unix)
        return self.written


def delivery(channel=None, coalesce_s: float = 0.0, deadline_in: float = 60.0, runner=None):
    runner = runner or runner_for("openai")
    request = InferenceRequest(model="m", messages=[], stream=True, request_id="req_1")
    wakes: list[float] = []
    d = Delivery(Dispatch(request, "caller", 1), FakeExchange(), runner, deadline=time.time() + deadline_in,
                 total_s=30, coalesce_s=coalesce_s, decoder=runner.stream_decoder(), channel=channel,
                 wake=lambda: wakes.append(time.monotonic()))
    return d, wakes


def first_chunk(d, outlet, lag) -> None:
    """The actor's first pump with text: FirstToken to the engine, nothing out until it answers."""
    sent = len(outlet.messages)
    assert d.pump(outlet, lag) is None and d.chunks == 0 and len(outlet.messages) == sent
    assert len(outlet.first_tokens) == 1
    d.heard()                                                 # FirstTokenHeard: the actor pumps again
    d.pump(outlet, lag)


def test_the_first_chunk_waits_for_the_engine_to_hear_of_it_and_takes_what_came_meanwhile():
    channel, outlet, lag = Channel(), Outlet(), streaming.Lag()
    d, wakes = delivery(channel)
    d.take(sse("Hel"))
    assert d.pump(outlet, lag) is None and len(outlet.first_tokens) == 1 and channel.frames == []
    d.take(sse("lo"))
    d.pump(outlet, lag)                                       # still unheard: nothing, and FirstToken once
    assert len(outlet.first_tokens) == 1 and channel.frames == [] and d.chunks == 0
    d.take(FINISH)
    assert d.take(END) is False and d.outcome is None
    assert d.pump(outlet, lag) is None and not d.settled      # decided, but the text waits for the engine
    d.heard()
    assert d.pump(outlet, lag) is None and d.settled and channel.frames == [(0, "Hello")]


def test_the_first_chunk_leaves_at_once_when_its_first_token_is_written_to_the_engines_link():
    channel, outlet, lag = Channel(), Outlet(written=True), streaming.Lag()
    d, _ = delivery(channel)
    d.take(sse("Hel"))
    assert d.pump(outlet, lag) is None and len(outlet.first_tokens) == 1 and channel.frames == [(0, "Hel")]
    d.heard()                                                 # the engine's answer changes nothing now
    d.take(sse("lo"))                                         # relayed by the reader itself from here
    assert channel.frames == [(0, "Hel"), (1, "lo")] and len(outlet.first_tokens) == 1


def test_past_its_own_deadline_an_attempts_first_chunk_waits_for_the_engine_even_when_written():
    # The engine may be giving the attempt up (its backstop): only its answer lets the token go.
    channel, outlet, lag = Channel(), Outlet(written=True), streaming.Lag()
    d, _ = delivery(channel, deadline_in=-0.001)
    d.take(sse("Hel"))
    assert d.pump(outlet, lag) is None and len(outlet.first_tokens) == 1 and channel.frames == []
    d.heard()
    d.pump(outlet, lag)
    assert channel.frames == [(0, "Hel")]


def test_an_attempt_ended_before_the_engine_heard_of_its_token_sends_no_text():
    channel, outlet, lag = Channel(), Outlet(), streaming.Lag()
    d, _ = delivery(channel)
    d.take(sse("never"))
    d.pump(outlet, lag)
    assert isinstance(d.end(E.DeadlineExceeded("late"), outlet), E.DeadlineExceeded)
    assert channel.frames == [] and outlet.messages == [] and d.chunks == 0   # retryable as if it had none


def test_the_first_chunk_is_the_actors_then_the_reader_relays_on_the_channel():
    channel, outlet, lag = Channel(), Outlet(), streaming.Lag()
    d, wakes = delivery(channel)
    assert d.take(Opened()) and d.take(sse("Hello"))
    assert channel.frames == [] and len(wakes) == 1          # not the reader's to send: the actor is woken
    first_chunk(d, outlet, lag)
    assert channel.frames == [(0, "Hello")] and len(outlet.first_tokens) == 1 and outlet.messages == []
    assert d.take(sse(" world")) and d.take(sse(" again", " twice"))   # one piece of the body, one chunk
    assert channel.frames[1:] == [(1, " world"), (2, " again twice")] and len(wakes) == 1
    assert d.take(FINISH) and not d.take(END)                 # the end: the reader stops, the actor reports
    assert d.outcome is None and len(wakes) == 2
    assert d.pump(outlet, lag) is None and d.chunks == 3 and d.acc.text == "Hello world again twice"
    assert d.end(E.Cancelled("too late")) is None and d.exchange.stopped   # the reader's outcome stands


def test_without_a_channel_every_chunk_is_a_message_the_actor_cuts():
    outlet, lag = Outlet(), streaming.Lag()
    d, wakes = delivery(channel=None)
    for word in ("a", "b", "c"):
        assert d.take(sse(word))
    first_chunk(d, outlet, lag)
    assert outlet.messages == [(0, "abc")]                    # what arrived before the actor woke travels together
    d.take(sse("d"))
    d.pump(outlet, lag)
    assert outlet.messages == [(0, "abc"), (1, "d")] and len(outlet.first_tokens) == 1 and not d.relay


def test_a_channel_that_fails_hands_the_chunk_and_the_rest_to_the_actor():
    channel, outlet, lag = Channel(), Outlet(), streaming.Lag()
    d, wakes = delivery(channel)
    d.take(sse("one"))
    first_chunk(d, outlet, lag)
    channel.works = False
    assert d.take(sse(" two"))                                # the reader cannot write it ...
    assert d.outbox and channel.frames == [(0, "one")] and not d.relay
    d.pump(outlet, lag)                                       # ... so the actor sends it, with its seq
    assert outlet.messages == [(1, " two")] and not d.outbox
    d.take(sse(" three"))
    d.pump(outlet, lag)
    assert outlet.messages == [(1, " two"), (2, " three")] and not d.relay   # the rest as messages


def test_within_the_coalescing_window_text_waits_for_the_actors_timer():
    channel, outlet, lag = Channel(), Outlet(), streaming.Lag()
    d, wakes = delivery(channel, coalesce_s=60.0)
    d.take(sse("first"))
    first_chunk(d, outlet, lag)                               # the first token waits for no window
    woken = len(wakes)
    d.take(sse(" held"))
    assert channel.frames == [(0, "first")] and len(wakes) == woken + 1   # held back: the actor arms the timer
    due = d.pump(outlet, lag)
    assert due is not None and due > time.monotonic() + 50
    d.take(sse(" back"))
    assert len(wakes) == woken + 1                            # the timer is armed already: no wake-up per piece
    d.last_flush -= 61                                        # the window passed: the timer's pump cuts it
    assert d.pump(outlet, lag) is None and channel.frames[-1] == (1, " held back")


def test_under_load_the_actor_stretches_its_window_for_messages():
    outlet, lag = Outlet(), streaming.Lag()
    lag.value = 0.01                                          # the actor wakes 10 ms late: window 40 ms
    d, _ = delivery(channel=None)
    d.take(sse("a"))
    first_chunk(d, outlet, lag)
    d.take(sse("b"))
    assert d.pump(outlet, lag) is not None and outlet.messages == [(0, "a")]


def test_an_ended_delivery_takes_nothing_and_pending_text_goes_first_when_asked():
    outlet, lag = Outlet(), streaming.Lag()
    d, _ = delivery()
    d.take(sse("a"))
    first_chunk(d, outlet, lag)
    d.take(sse("b"))
    error = d.end(E.DeadlineExceeded("late"), outlet)
    assert isinstance(error, E.DeadlineExceeded) and outlet.messages == [(0, "a"), (1, "b")]
    assert d.take(sse("c")) is False and d.acc.text == "ab"


def test_a_decoder_bug_is_an_internal_error_never_the_providers_fault():
    class Broken:
        def feed(self, data):
            raise KeyError("choices")

        def close(self):
            raise KeyError("choices")

    runner = runner_for("openai")
    d, _ = delivery(runner=runner)
    d.decoder = Broken()
    assert d.take(sse("x")) is False
    assert type(d.outcome) is E.InternalError and "decoding the stream failed: KeyError" in d.outcome.message
    assert not d.outcome.counts_for_breaker and not d.outcome.retryable
    d2, _ = delivery()
    d2.decoder = Broken()
    assert d2.take(END) is False and type(d2.outcome) is E.InternalError   # the decoder's close() too


def test_a_provider_error_inside_the_stream_stays_typed():
    d, _ = delivery()
    assert d.take(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n') is False
    assert isinstance(d.outcome, E.InferenceError) and type(d.outcome) is not E.InternalError
    assert d.outcome.provider == "openai"


def test_the_outcome_of_each_ending_event():
    runner = runner_for("openai")
    d, _ = delivery()
    d.take(HttpStatus(429, {"retry-after": "2"}, b'{"error": {"message": "slow down"}}'))
    assert isinstance(d.outcome, E.RateLimited) and d.outcome.retry_after_s == 2

    d, _ = delivery()
    d.take(TransportFailed(Phase.BODY, timed_out=False, detail="ProtocolError"))
    assert isinstance(d.outcome, E.StreamError)

    d, _ = delivery(deadline_in=-1.0)                          # a timeout at the attempt's deadline
    d.take(TransportFailed(Phase.BODY, timed_out=True))
    assert isinstance(d.outcome, E.Timeout | E.DeadlineExceeded)

    d, _ = delivery()
    d.decoder = None
    d.take(WholeBody(json.dumps({"choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()))
    assert d.outcome is None and d.acc.text == "whole"

    class Confused:
        provider = "openai"

        def classify_error(self, status, headers, body):
            raise ValueError("no idea")

    d, _ = delivery(runner=runner)
    d.runner = Confused()
    d.take(HttpStatus(500, {}, b""))
    assert type(d.outcome) is E.InternalError and "classifying an HTTP 500" in d.outcome.message
    d, _ = delivery()
    d.take(object())
    assert type(d.outcome) is E.InternalError
    d, _ = delivery()
    assert d.outcome is UNDECIDED and d.end(None) is None


def test_an_outcome_decided_after_a_pump_is_settled_by_the_next_pump_with_the_text_left_pending():
    """The reader may decide between the actor's pump and its next look: the actor must not take
    the outcome then (it finishes on ``settled``), or the text held back would never be sent."""
    outlet, lag = Outlet(), streaming.Lag()
    lag.value = 0.01                                          # a window: the second piece is held back
    d, wakes = delivery(channel=None)
    d.take(sse("a"))
    first_chunk(d, outlet, lag)
    d.take(sse("b"))
    assert d.pump(outlet, lag) is not None and not d.settled  # held back, the outcome still open
    woken = len(wakes)
    assert d.take(FINISH) and not d.take(END) and d.outcome is None   # the reader decides right after
    assert not d.settled and len(wakes) == woken + 1          # not settled: the actor is woken for it
    assert d.pump(outlet, lag) is None and d.settled
    assert outlet.messages == [(0, "a"), (1, "b")]            # nothing lost
