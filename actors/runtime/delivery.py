"""One attempt's answer on its way to the caller: the worker's stream half, one design.

Two threads share a :class:`Delivery` under its lock, each with one job:

- **The reader thread** (the slot's, ``slot.py``, running ``upstream.HttpExchange``; for a
  streamed body on a real socket, the process's body poller, ``body_poller.py``, while the
  slot's thread waits) hands it every reader event (:meth:`Delivery.take`): it decodes the
  body's bytes into the accumulator, and decides the attempt's outcome when the body ends or
  fails. Decoding happens here only, in body order: one thread at a time reads a body.
- **The actor thread** (``worker.py``) runs :meth:`Delivery.pump` when it is woken: it sends
  the chunks only it may send (the first, and every chunk that goes as a Thespian message),
  arms the coalescing timer, and reports the outcome.

**The engine hears of the first token before any chunk leaves.** Whether a lost attempt may be
retried depends on it (never once the caller has a token), and a worker process may die at
any moment: so the actor sends ``FirstToken`` when the first text is ready. When that message
is in the kernel, whole, on the process's control link (``Outlet.first_token`` says so), the
engine reads it before it learns of any death of this process (it reads a dead process's link
to the end first: ``engine_workers.py``), so the first chunk leaves at once. Otherwise (no
link, a link that did not take it whole, an attempt past its own deadline, when the engine may
have given up on it) the first chunk is held back until the engine answers
(``FirstTokenHeard``, :meth:`heard`) and goes with whatever arrived meanwhile. An attempt
ended before either sends no text at all.

Chunks are cut by one rule (:meth:`_cut`, ``streaming.flush_due``): the first at once, then
at most one per coalescing window. Where a chunk goes is a mode of the request, not a path:

- **relay** (the request has a stream channel that works, and the first chunk is out): the
  reader cuts each due chunk itself and writes it to the channel as a signed frame, so a
  stream costs no actor wake-up per chunk; the actor is woken only for the coalescing timer
  (text held back within the window) and for the outcome.
- **messages** (no channel, or it failed): the reader wakes the actor, which cuts the chunk
  with the window stretched by its own lag (``streaming.adaptive_window``: fewer, larger
  messages under load) and sends it as a ``TokenChunk``. A chunk the reader cut but could
  not write is handed to the actor the same way (the outbox), and the rest follow it.

How the actor is woken is the system's: a self-pipe it watches on ``multiprocTCPBase``
(``wake.py``), a 1 ms poll on ``simpleSystemBase``, which has no watches; both run the same
:meth:`pump`. A delivery the actor ended (cancel, deadline, its outcome reported) takes
nothing more: the reader stops at its next event. The lock is held by the reader while it
writes a frame (at most the sender's timeouts, ~3 s: how long a cancel may then wait).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from actors.core import streaming, upstream_text
from actors.core.streaming import END, HttpStatus, Opened, Overflow, TransportFailed, WholeBody
from actors.core.transport import classify_transport, deadline_verdict
from actors.errors import InferenceError
from actors.providers.base import ModelRunner, StreamAccumulator
from actors.runtime.protocol import Dispatch
from actors.runtime.upstream import HttpExchange
from actors.types import TokenChunk

__all__ = ["Delivery", "Outlet", "Channel", "UNDECIDED"]


class _Undecided:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDECIDED"


UNDECIDED: Any = _Undecided()   # the outcome before the body ended (None is success)


class Outlet(Protocol):
    """What only the actor thread may send (Thespian messages)."""

    def to_caller(self, chunk: TokenChunk) -> None: ...

    def first_token(self, at_unix: float) -> bool:
        """Tell the engine; True when it will hear of it before anything this process sends next."""
        ...


class Channel(Protocol):
    """The request's stream channel (``stream_sender.py``), writable from either thread."""

    def send(self, chunk: TokenChunk) -> bool: ...


class Delivery:
    def __init__(self, dispatch: Dispatch, exchange: HttpExchange, runner: ModelRunner, *, deadline: float,
                 total_s: float, coalesce_s: float, decoder: Any = None, channel: Channel | None = None,
                 wake: Callable[[], None] | None = None) -> None:
        self.dispatch = dispatch
        self.request_id: str = dispatch.request.request_id
        self.exchange = exchange
        self.runner = runner
        self.provider = runner.provider
        self.deadline = deadline            # unix time: the attempt's own end (total_s or the caller's deadline)
        self.total_s = total_s              # the deployment's timeouts.total_s, named in a Timeout
        self.coalesce_s = coalesce_s
        self.decoder = decoder              # None: a non-streamed call, whose body is parsed whole at the end
        self.channel = channel
        self._wake_actor = wake             # None: the actor polls (simpleSystemBase)
        self.lock = threading.Lock()
        self.acc = StreamAccumulator()
        self.deltas = 0
        self.chunks = 0                     # chunks cut so far: the next one's seq
        self.last_flush = 0.0               # monotonic time of the last cut
        self.first_token_unix: float | None = None   # when the first text was ready (FirstToken sent)
        self.cleared = False                # the engine hears of the first token first: chunks may leave
        self.outcome: Any = UNDECIDED       # the attempt's terminal error, None for success
        self.finished = False               # the actor ended the delivery: the reader takes nothing more
        self.relay = False                  # the reader may cut and write chunks itself
        self.outbox: list[TokenChunk] = []  # chunks the reader cut but could not write
        self.woken_at: float | None = None  # monotonic time the reader first asked for the actor since its last pump
        self.flush_at: float | None = None  # the coalescing timer the actor armed (monotonic), until the next cut
        self.channel_failed = False
        # The actor's pump saw the outcome and cut the text pending with it. The actor finishes on
        # this, never on ``outcome`` alone: the reader may decide between a pump and the actor's
        # next look, and the text it left pending would then never be sent.
        self.settled = False
        # (status, what the caller was told, the whole body for the log) when the caller got less
        # than the upstream said; logged by the actor (the reader never logs: a record is a message).
        self.upstream_body: tuple[int, str, str] | None = None

    # -- the reader thread ---------------------------------------------------------------

    def take(self, event: Any) -> bool:
        """One reader event; False once the reader should stop (the outcome is decided, or the
        actor ended the delivery)."""
        with self.lock:
            if self.finished:
                return False
            if isinstance(event, bytes):
                error = self._decode(event)
                if error is None:
                    self._after_data()
                    return True
                self.outcome = error
            elif isinstance(event, Opened):
                return True
            else:
                self.outcome = self._verdict(event)
            self._wake()
        return False

    def _decode(self, data: bytes) -> InferenceError | None:
        try:
            deltas = self.decoder.feed(data)
            for delta in deltas:
                self.acc.add(delta)
        except InferenceError as exc:
            exc.provider = exc.provider or self.provider
            return exc
        except Exception as exc:  # noqa: BLE001 - a decoder bug: streaming.runner_failed says what it is
            return streaming.runner_failed(exc, self.provider, "decoding the stream")
        self.deltas += len(deltas)
        return self.acc.error

    def _after_data(self) -> None:
        if not self.acc.has_pending:
            return
        if not self.relay:
            self._wake()          # the actor cuts: the first chunk, or chunks as messages
        elif streaming.flush_due(True, self.chunks, self.last_flush, self.coalesce_s, time.monotonic()):
            self._cut(None)
        elif self.flush_at is None:
            self._wake()          # text held back within the window: the actor arms the timer

    def crash(self, exc: BaseException) -> None:
        """The slot's thread failed outside the exchange's own guard (a bug): that is the outcome."""
        with self.lock:
            if self.finished or self.outcome is not UNDECIDED:
                return
            self.outcome = streaming.runner_failed(exc, self.provider, "the slot")
            self._wake()

    def _verdict(self, event: Any) -> InferenceError | None:
        """The attempt's outcome from the event that ended it."""
        provider = self.provider
        if event is END:
            return streaming.end_of_stream(self.decoder, self.acc, self.deltas, self.chunks, provider)
        if isinstance(event, WholeBody):
            return streaming.end_of_body(self.runner.parse_response, event.data, self.acc, provider)
        if isinstance(event, HttpStatus):
            try:
                error = self.runner.classify_error(event.status, event.headers, event.body)
            except Exception as exc:  # noqa: BLE001 - see streaming.runner_failed
                return streaming.runner_failed(exc, provider, f"classifying an HTTP {event.status}")
            if upstream_text.trimmed(event.body):   # the caller got the message without the rest: the log keeps it
                self.upstream_body = (event.status, error.message, upstream_text.for_log(event.body))
            return error
        if isinstance(event, Overflow):
            return streaming.too_large("max_body_bytes", event.limit_bytes, provider)
        if isinstance(event, TransportFailed):
            if event.timed_out and time.time() >= self.deadline - 0.01:
                return self.deadline_error()
            return classify_transport(event.phase, timed_out=event.timed_out, detail=event.detail,
                                      provider=provider, delivered=self.chunks > 0).error
        return streaming.runner_failed(TypeError(f"unexpected reader event {streaming.describe(event)}"),
                                       provider, "reading the response")

    def _wake(self) -> None:
        if self.woken_at is None:
            self.woken_at = time.monotonic()
            if self._wake_actor is not None:
                self._wake_actor()

    # -- either thread, under the lock ---------------------------------------------------

    def _cut(self, outlet: Outlet | None) -> None:
        """Send what is pending as the next chunk: a frame on the channel if it works, else a
        message. ``outlet`` is the actor's; None on the reader thread, which hands a chunk it
        cannot write to the actor through the outbox (it never cuts the first: see ``relay``)."""
        text, tools = self.acc.take_pending()
        # Frames carry no log probabilities (the client asks for no channel when it wants them).
        logprobs = self.acc.take_pending_logprobs()
        chunk = TokenChunk(self.request_id, self.chunks, text, tools, logprobs=logprobs)
        self.chunks += 1
        self.last_flush = time.monotonic()
        self.flush_at = None
        if self.channel is None or self.channel_failed or logprobs is not None or not self.channel.send(chunk):
            if self.channel is not None:
                self.channel_failed = True
            self.relay = False
            if outlet is None:
                self.outbox.append(chunk)
                self._wake()
            else:
                outlet.to_caller(chunk)

    # -- the actor thread ------------------------------------------------------------------

    def pump(self, outlet: Outlet, lag: streaming.Lag) -> float | None:
        """Send what is due; returns when the actor must pump again (the coalescing timer,
        monotonic), or None. The outcome, once decided, is in ``outcome``."""
        with self.lock:
            now = time.monotonic()
            if self.woken_at is not None:
                lag.observe(now - self.woken_at)
                self.woken_at = None
            for chunk in self.outbox:
                outlet.to_caller(chunk)
            self.outbox.clear()
            if self.acc.has_pending and not self.cleared:
                if self.first_token_unix is None:
                    self.first_token_unix = time.time()
                    # Past its own deadline the engine may be giving up on the attempt: it waits.
                    self.cleared = outlet.first_token(self.first_token_unix) and time.time() < self.deadline
                if not self.cleared:
                    return None           # until the engine has heard (heard() pumps again)
            if self.outcome is not UNDECIDED:
                if self.acc.has_pending:
                    self._cut(outlet)      # the last text goes before the outcome is reported
                self.settled = True
                return None
            due = None
            if self.acc.has_pending:
                window = self.coalesce_s if self.relay else streaming.adaptive_window(self.coalesce_s, lag.value)
                if streaming.flush_due(True, self.chunks, self.last_flush, window, now):
                    self._cut(outlet)
                else:
                    due = self.flush_at = self.last_flush + window
            self.relay = self.chunks > 0 and self.channel is not None and not self.channel_failed
            return due

    def heard(self) -> None:
        """The engine heard of the first token (the actor thread, then pumps)."""
        with self.lock:
            self.cleared = True

    def end(self, outcome: InferenceError | None, outlet: Outlet | None = None) -> InferenceError | None:
        """The actor ends the delivery (cancel, deadline, or after its outcome): the reader stops
        at its next event. With ``outlet``, pending text goes out first (if the engine has heard
        of the first token). Returns the outcome: the one the reader decided, if it did, else ``outcome``."""
        with self.lock:
            self.finished = True
            if outlet is not None and self.acc.has_pending and self.cleared:
                self._cut(outlet)
            if self.outcome is UNDECIDED:
                self.outcome = outcome
            decided = self.outcome
        self.exchange.stop()
        return decided

    def deadline_error(self) -> InferenceError:
        request = self.dispatch.request
        caller = request.deadline_unix is not None and self.deadline >= request.deadline_unix
        return deadline_verdict(self.exchange.phase, caller_deadline=caller, total_s=self.total_s,
                                provider=self.provider, delivered=self.chunks > 0).error
