"""The worker's stream policy, pure: typed reader events, coalescing, size limits, and how a
runner's own failure is told.

The reader thread (``actors.runtime.upstream``) turns one HTTP attempt into a sequence of
events: body bytes travel as plain ``bytes`` (the hot path), everything else as one of the
small classes below, and the stream always ends with exactly one of :data:`END` (:class:`WholeBody` for a
non-streamed call), :class:`HttpStatus`, :class:`TransportFailed` or :class:`Overflow`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.core.transport import Phase
from actors.errors import EmptyResponse, InferenceError, InternalError, ResponseTooLarge, StreamError

__all__ = ["Accumulating", "Decoding", "Opened", "WholeBody", "HttpStatus", "TransportFailed", "Overflow", "END", "ReaderEvent",
           "flush_due", "too_large", "end_of_stream", "end_of_body", "Lag", "adaptive_window",
           "ADAPTIVE_MAX_S", "runner_failed"]


@dataclass(frozen=True, slots=True)
class Opened:
    """2xx headers arrived: the body follows."""


@dataclass(frozen=True, slots=True)
class WholeBody:
    """A non-streamed call's whole 2xx body (within ``max_body_bytes``): its only event."""

    data: bytes


@dataclass(frozen=True, slots=True)
class HttpStatus:
    """A non-2xx answer, with at most the error-body limit of its body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class TransportFailed:
    phase: Phase
    timed_out: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Overflow:
    """The body passed ``max_body_bytes``; reading stopped there."""

    limit_bytes: int


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = _End()
ReaderEvent = bytes | Opened | WholeBody | HttpStatus | TransportFailed | Overflow | _End


def flush_due(has_pending: bool, chunks_sent: int, last_flush: float, coalesce_s: float, now: float) -> bool:
    """Send what is pending now? The first token always goes at once; later ones every ``coalesce_s``."""
    return has_pending and (chunks_sent == 0 or now - last_flush >= coalesce_s)


# How far load may stretch the coalescing window: a token then waits at most this long for
# company; at 25 ms between tokens, two travel together once the window passes 25 ms.
ADAPTIVE_MAX_S = 0.05
ADAPTIVE_FACTOR = 4.0       # window = this many times the smoothed wake-up lag
ADAPTIVE_FLOOR_S = 0.002    # a lag below this is no load at all: the window stays as configured


class Lag:
    """The smoothed delay between an event reaching the queue and the actor handling it:
    the node's load as this worker feels it (its process waits for a core)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def observe(self, lag_s: float, weight: float = 0.2) -> float:
        self.value += weight * (max(0.0, lag_s) - self.value)
        return self.value


def adaptive_window(configured_s: float, lag_s: float) -> float:
    """The coalescing window under load: the configured one while actors wake on time, up to
    :data:`ADAPTIVE_MAX_S` as they fall behind (fewer, larger messages: each costs a send, an
    acknowledgement and wake-ups on both sides). The first token never waits (see flush_due)."""
    if lag_s < ADAPTIVE_FLOOR_S:
        return configured_s
    return max(configured_s, min(ADAPTIVE_MAX_S, ADAPTIVE_FACTOR * lag_s))


def too_large(limit: str, limit_bytes: int, provider: str = "") -> ResponseTooLarge:
    """The typed error for a response that passed ``limit`` (``max_line_bytes`` or ``max_body_bytes``)."""
    what = {"max_line_bytes": "an event-stream line or event", "max_body_bytes": "the response body"}.get(limit, limit)
    return ResponseTooLarge(f"{what} passed the deployment's {limit} ({limit_bytes} bytes); reading stopped",
                            provider=provider, limit=limit, limit_bytes=limit_bytes)


def describe(event: Any) -> str:
    """A short, secret-free name of a reader event, for logs."""
    return f"{len(event)} bytes" if isinstance(event, bytes) else repr(event)


def runner_failed(exc: BaseException, provider: str, doing: str, detail: bool = True) -> InternalError:
    """The one verdict on an exception that is not an :class:`InferenceError`, raised by a
    runner (building a request, decoding a stream, parsing a body) or by the worker itself.

    A runner turns every bad answer it recognises into a typed error (a body that is not
    JSON is a ``StreamError``); anything else it raises is a bug in this gateway, whichever
    thread or path met it: an :class:`InternalError`, never counted against the provider's
    circuit (``counts_for_breaker`` is False) and not retried (the same answer would meet the
    same bug). ``detail=False`` leaves the exception's text out (a request builder's may hold
    the credential it was given)."""
    what = f"{type(exc).__name__}: {str(exc)[:200]}" if detail else type(exc).__name__
    return InternalError(f"{doing} failed: {what}", provider=provider)  # never retryable (its class default)


class Accumulating(Protocol):
    """What the end of a call reads of its accumulator (``providers.base.StreamAccumulator``)."""

    error: InferenceError | None

    @property
    def complete(self) -> bool: ...

    def add(self, delta: Any) -> None: ...


class Decoding(Protocol):
    """A runner's stream decoder, as the end of a stream closes it."""

    def close(self) -> Iterable[Any]: ...


def end_of_stream(decoder: Decoding, acc: Accumulating, deltas: int, chunks_sent: int,
                  provider: str) -> InferenceError | None:
    """The stream's bytes ended: its terminal error, or None when the provider finished it.

    ``acc`` is the stream's accumulator, ``deltas`` how many deltas the decoder produced. A
    stream with no event at all is :class:`EmptyResponse`, not a broken stream (an over-long
    prompt that a server answers with an empty 200 must not count against the endpoint)."""
    try:
        for delta in decoder.close():
            acc.add(delta)
            deltas += 1
    except InferenceError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - see runner_failed
        return runner_failed(exc, provider, "decoding the end of the stream")
    if acc.error is not None:
        return acc.error
    if deltas == 0:
        return EmptyResponse("the stream ended without a single event", provider=provider)
    if not acc.complete:
        return StreamError("stream ended before the provider finished", provider=provider,
                           retryable=False if chunks_sent else None)
    return None


def end_of_body(parse: Callable[[bytes], Any], body: bytes, acc: Accumulating, provider: str) -> InferenceError | None:
    """A non-streamed body, read whole (within ``max_body_bytes``): parsed into ``acc``."""
    if not body.strip():
        return EmptyResponse("the provider answered with an empty body", provider=provider)
    try:
        acc.add(parse(body))
    except InferenceError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - see runner_failed
        return runner_failed(exc, provider, "parsing the response")
    return acc.error
