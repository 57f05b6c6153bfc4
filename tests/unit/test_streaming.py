"""The worker's stream policy: coalescing, end of stream, end of body."""

import pytest

from actors import errors as E
from actors.core import streaming
from actors.providers.base import Delta, StreamAccumulator


def test_the_first_token_goes_at_once_and_later_ones_every_coalesce_interval():
    assert streaming.flush_due(True, 0, 0.0, 0.015, now=100.0)
    assert not streaming.flush_due(True, 3, 100.0, 0.015, now=100.010)
    assert streaming.flush_due(True, 3, 100.0, 0.015, now=100.015)
    assert not streaming.flush_due(False, 0, 0.0, 0.015, now=100.0), "nothing pending, nothing sent"


def test_the_coalescing_window_stays_as_configured_until_the_actor_wakes_late():
    assert streaming.adaptive_window(0.0, 0.0) == 0.0
    assert streaming.adaptive_window(0.015, 0.001) == 0.015, "on time: as configured"
    assert streaming.adaptive_window(0.0, 0.005) == 0.02, "late: the window grows with the lag"
    assert streaming.adaptive_window(0.0, 1.0) == streaming.ADAPTIVE_MAX_S, "but never past the cap"
    assert streaming.adaptive_window(0.08, 0.01) == 0.08, "a configured window larger than the cap is kept"
    # The first token still goes at once, whatever the window.
    assert streaming.flush_due(True, 0, 0.0, streaming.adaptive_window(0.0, 1.0), now=100.0)


def test_the_lag_is_smoothed_and_never_negative():
    lag = streaming.Lag()
    assert lag.observe(0.010) == 0.002
    for _ in range(50):
        lag.observe(0.010)
    assert abs(lag.value - 0.010) < 1e-4
    lag.observe(-5.0)
    assert 0 < lag.value < 0.010


class Decoder:
    def __init__(self, tail=()):
        self.tail = list(tail)

    def close(self):
        return self.tail


def test_a_stream_with_no_event_is_an_empty_response():
    error = streaming.end_of_stream(Decoder(), StreamAccumulator(), 0, 0, "openai")
    assert type(error) is E.EmptyResponse and error.retryable and not error.counts_for_breaker
    assert E.EmptyResponse.max_retries == 1


def test_a_stream_cut_before_the_finish_is_a_stream_error_not_retryable_after_tokens():
    acc = StreamAccumulator()
    acc.add(Delta(text="hi"))
    before = streaming.end_of_stream(Decoder(), acc, 1, 0, "openai")
    after = streaming.end_of_stream(Decoder(), acc, 1, 2, "openai")
    assert type(before) is E.StreamError and before.retryable and not after.retryable


def test_a_finished_stream_ends_cleanly():
    acc = StreamAccumulator()
    assert streaming.end_of_stream(Decoder([Delta(text="x", finish_reason="stop")]), acc, 0, 0, "p") is None
    assert acc.text == "x"


def test_end_of_body():
    acc = StreamAccumulator()
    assert type(streaming.end_of_body(lambda b: Delta(), b"  \n", acc, "p")) is E.EmptyResponse
    assert streaming.end_of_body(lambda b: Delta(text=b.decode(), done=True), b"ok", acc, "p") is None
    assert acc.text == "ok"
    broken = streaming.end_of_body(lambda b: {}["missing"], b"{}", StreamAccumulator(), "p")
    # A runner's own exception is a bug here, not the provider's fault: never counted for its circuit.
    assert type(broken) is E.InternalError and "KeyError" in broken.message
    assert not broken.counts_for_breaker and not broken.retryable


def test_too_large_names_the_limit():
    error = streaming.too_large("max_body_bytes", 1024, "openai")
    assert error.limit == "max_body_bytes" and error.limit_bytes == 1024 and not error.retryable
    assert error.provider == "openai"
    assert error.message == "the response body passed the deployment's max_body_bytes (1024 bytes); reading stopped"
    line = streaming.too_large("max_line_bytes", 64)
    assert line.message.startswith("an event-stream line or event passed the deployment's max_line_bytes (64 ")
    assert line.provider == ""
    assert streaming.too_large("max_frame_bytes", 8).message.startswith("max_frame_bytes passed")


def test_the_ends_of_a_stream_say_what_happened_and_for_whom():
    empty = streaming.end_of_stream(Decoder(), StreamAccumulator(), 0, 0, "openai")
    assert (empty.message, empty.provider) == ("the stream ended without a single event", "openai")
    acc = StreamAccumulator()
    acc.add(Delta(text="hi"))
    cut = streaming.end_of_stream(Decoder(), acc, 1, 0, "openai")
    assert (cut.message, cut.provider) == ("stream ended before the provider finished", "openai")
    # The deltas the close yields count: one is enough not to be empty, whatever came before.
    late = StreamAccumulator()
    assert streaming.end_of_stream(Decoder([Delta(text="x")]), late, 0, 0, "p").kind == "stream_error"
    assert streaming.end_of_stream(Decoder([Delta(text="x")]), StreamAccumulator(), 1, 0, "p").kind == "stream_error"


def test_a_runners_bug_is_named_by_what_it_was_doing_and_its_exception():
    err = streaming.runner_failed(KeyError("choices"), "openai", "decoding the stream")
    assert (err.message, err.provider, err.retryable) == ("decoding the stream failed: KeyError: 'choices'", "openai",
                                                          False)
    assert streaming.runner_failed(ValueError("x" * 500), "p", "d").message == "d failed: ValueError: " + "x" * 200
    hidden = streaming.runner_failed(ValueError("sk-secret"), "p", "building the request", detail=False)
    assert hidden.message == "building the request failed: ValueError"


def test_the_end_of_a_whole_body_says_what_happened():
    empty = streaming.end_of_body(lambda body: [], b"  ", StreamAccumulator(), "openai")
    assert (empty.message, empty.provider) == ("the provider answered with an empty body", "openai")

    def broken(body):
        raise KeyError("usage")
    err = streaming.end_of_body(broken, b"{}", StreamAccumulator(), "openai")
    assert (err.message, err.provider) == ("parsing the response failed: KeyError: 'usage'", "openai")


def test_a_chunk_is_due_exactly_one_window_after_the_last_and_light_lag_changes_nothing():
    assert streaming.flush_due(True, 3, last_flush=1.0, coalesce_s=0.25, now=1.25)
    assert not streaming.flush_due(True, 3, last_flush=1.0, coalesce_s=0.25, now=1.24)
    assert streaming.adaptive_window(0.001, 0.0019) == 0.001
    assert streaming.adaptive_window(0.001, 0.002) == pytest.approx(0.008)


class BrokenClose:
    def close(self):
        raise ValueError("half a frame")


class FailingClose:
    def close(self):
        raise E.StreamError("truncated", provider="p")


def test_a_decoder_that_breaks_at_the_end_is_a_runners_bug_named_for_it():
    err = streaming.end_of_stream(BrokenClose(), StreamAccumulator(), 3, 1, "anthropic")
    assert type(err) is E.InternalError and err.provider == "anthropic" and err.retryable is False
    assert err.message == "decoding the end of the stream failed: ValueError: half a frame"
    typed = streaming.end_of_stream(FailingClose(), StreamAccumulator(), 3, 1, "anthropic")
    assert type(typed) is E.StreamError and typed.message == "truncated"


def test_a_runners_bug_is_never_retried():
    assert streaming.runner_failed(KeyError("x"), "p", "d").retryable is False


def test_reader_events_are_described_without_their_bytes():
    assert streaming.describe(b"sk-secret") == "9 bytes"
    assert streaming.describe(("eof", 3)) == "('eof', 3)"


def test_the_end_of_a_reader_is_described_as_end():
    assert streaming.describe(streaming.END) == "END"
