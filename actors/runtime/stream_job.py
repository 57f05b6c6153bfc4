"""One streamed attempt as the worker's actor thread sees it, and how the worker steps it.

The reader thread's events (``actors.core.streaming``) are fed to a :class:`Job` one by one;
each either continues the attempt or is its terminal outcome, which the worker reports to
its engine. :class:`Stepping` is the worker's stream half: ``_pump`` when Thespian wakes it
on the reader's pipe, ``_step`` (1 ms wakeups) where the system base has no watches.

**Relayed by the reader.** Once the first chunk has gone out (from the actor thread, with
its FirstToken to the engine, as always) and the request has a working stream channel, the
reader thread decodes the rest of the body and writes each piece's chunk to the channel
itself (:meth:`Job.relay`): no actor wake-up per chunk, which was most of a worker's CPU.
The job's lock orders the two threads: the actor consumes under it, the reader relays only
when the actor has consumed everything queued before (so the decoder sees the bytes in
order), and a job the actor has finished (cancel, deadline, an error) relays nothing more.
The outcome (the end of the body, a failure) is still queued for the actor, which reports it.
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import timedelta
from typing import Any

from actors.core import streaming, upstream_text
from actors.core.streaming import END, HttpStatus, Opened, Overflow, TransportFailed, WholeBody
from actors.core.transport import classify_transport, deadline_verdict
from actors.errors import InferenceError, InternalError
from actors.providers.base import StreamAccumulator
from actors.runtime import stream_sender
from actors.runtime.logs import logger
from actors.runtime.protocol import Dispatch, FirstToken
from actors.runtime.upstream import Attempt
from actors.types import TokenChunk

__all__ = ["Job", "Stepping", "CONTINUE", "Relayed", "RelayFailed"]

log = logger("atomr.worker")

CONTINUE = object()
STEP = timedelta(milliseconds=1)
MAX_BLOCK_S = 0.02          # longest a polling step blocks on the reader, so Cancel stays prompt


class Relayed:
    """A chunk the reader could not write to the channel: the actor sends it as a message."""

    __slots__ = ("seq", "text", "tool_calls")

    def __init__(self, seq: int, text: str, tool_calls: list) -> None:
        self.seq, self.text, self.tool_calls = seq, text, tool_calls


class FlushSoon:
    """From a relaying reader: text is pending within the coalescing window; arm the flush timer."""

    __slots__ = ()


FLUSH_SOON = FlushSoon()


class RelayFailed:
    """The body's decoding failed on the reader thread: the attempt's outcome."""

    __slots__ = ("error",)

    def __init__(self, error: InferenceError) -> None:
        self.error = error


class Job:
    def __init__(self, dispatch: Dispatch, attempt: Attempt, deadline: float, decoder: Any,
                 total_s: float) -> None:
        self.dispatch = dispatch
        self.total_s = total_s          # the deployment's timeouts.total_s, named in a Timeout
        self.attempt = attempt
        self.deadline = deadline
        self.decoder = decoder          # None: a non-streamed call, whose body is parsed whole at the end
        self.acc = StreamAccumulator()
        self.deltas = 0
        self.chunks = 0
        self.last_flush = 0.0
        self.first_token_unix: float | None = None
        self.flush_armed = False        # a coalescing wakeup is on its way
        self.lock = threading.RLock()   # the actor thread and a relaying reader (see the module doc)
        self.finished = False           # the actor has ended the job: nothing more is relayed
        self.relaying = False           # the reader may relay (the first chunk is out, the channel works)
        self.relay_to: tuple[Any, Any, Any, str, float] | None = None   # (sender, channel, runner, provider, coalesce_s)
        self.fallback_logged = False

    def relay(self, data: bytes) -> bool | None:
        """Reader thread: decode ``data`` and write its chunk to the channel; None: queue it instead.

        It holds the lock while it writes (at most the sender's timeouts, ~3 s, which is then how
        long a cancel may wait) and while it queues, which never blocks: it only relays with the
        queue empty and queues one event at most.
        """
        with self.lock:
            if self.finished:
                return False
            if not self.relaying or not self.attempt.events.empty():
                return None
            sender, channel, runner, provider, coalesce_s = self.relay_to
            error = self.consume(data, runner, provider)
            if error is not CONTINUE:
                self.attempt.put(RelayFailed(error))
                return False
            if self.acc.has_pending and not streaming.flush_due(True, self.chunks, self.last_flush, coalesce_s,
                                                                   time.monotonic()):
                if not self.flush_armed:
                    self.flush_armed = True   # so that one FlushSoon is queued, and the next piece relays
                    self.attempt.put(FLUSH_SOON)
            elif self.acc.has_pending:
                text, tools = self.acc.take_pending()
                request_id = self.dispatch.request.request_id
                if not sender.send(channel, request_id, self.chunks, text, tools):
                    self.relaying = False   # the rest goes by the actor, as messages
                    self.attempt.put(Relayed(self.chunks, text, tools))
                self.chunks += 1
                self.last_flush = time.monotonic()
            return True

    def consume(self, item: Any, runner: Any, provider: str) -> Any:
        """Feed one reader event; the job's terminal error (None for success) or CONTINUE."""
        if isinstance(item, bytes):
            try:
                deltas = self.decoder.feed(item)
                for delta in deltas:
                    self.acc.add(delta)
            except InferenceError as exc:
                exc.provider = exc.provider or provider
                return exc
            self.deltas += len(deltas)
            return self.acc.error if self.acc.error is not None else CONTINUE
        if isinstance(item, Opened):
            return CONTINUE
        if isinstance(item, RelayFailed):
            return item.error
        if isinstance(item, FlushSoon):
            return CONTINUE
        if item is END:
            return streaming.end_of_stream(self.decoder, self.acc, self.deltas, self.chunks, provider)
        if isinstance(item, WholeBody):
            return streaming.end_of_body(runner.parse_response, item.data, self.acc, provider)
        if isinstance(item, HttpStatus):
            error = runner.classify_error(item.status, item.headers, item.body)
            if upstream_text.trimmed(item.body):  # the caller got the message without the rest: the log keeps it
                log.warning("%s answered HTTP %d; the caller was told %r; the whole body: %s", provider, item.status,
                            error.message, upstream_text.for_log(item.body))
            return error
        if isinstance(item, Overflow):
            return streaming.too_large("max_body_bytes", item.limit_bytes, provider)
        if isinstance(item, TransportFailed):
            if item.timed_out and time.time() >= self.deadline - 0.01:
                return self.deadline_error(provider)
            return classify_transport(item.phase, timed_out=item.timed_out, detail=item.detail,
                                      provider=provider, delivered=self.chunks > 0).error
        return InternalError(f"unexpected reader event {streaming.describe(item)}", provider=provider)

    def deadline_error(self, provider: str) -> InferenceError:
        request = self.dispatch.request
        caller = request.deadline_unix is not None and self.deadline >= request.deadline_unix
        return deadline_verdict(self.attempt.phase, caller_deadline=caller, total_s=self.total_s,
                                provider=provider, delivered=self.chunks > 0).error


class Stepping:
    """Mixed into RemoteWorkerActor (which provides deployment, runner, engine, lag, job,
    send, wakeupAfter, _finish and _finish_at_deadline)."""

    def _step(self) -> None:
        job = self.job
        coalesce_s = self.deployment.coalesce_ms / 1000
        started = time.monotonic()
        while True:
            if time.time() >= job.deadline:
                return self._finish_at_deadline(job)
            acc = job.acc
            block = streaming.block_for(acc.has_pending, job.chunks, job.last_flush, coalesce_s, time.monotonic(),
                                        MAX_BLOCK_S, job.deadline - time.time())
            try:
                item = job.attempt.events.get(timeout=block)
            except queue.Empty:
                item = None
            if item is not None and (error := job.consume(item, self.runner, self.deployment.provider)) is not CONTINUE:
                if acc.has_pending:
                    self._flush(job)
                return self._finish(job, error)
            now = time.monotonic()
            if streaming.flush_due(acc.has_pending, job.chunks, job.last_flush, coalesce_s, now):
                self._flush(job)
                break  # return so Thespian transmits what was just sent
            if now - started >= MAX_BLOCK_S:
                break
        self.wakeupAfter(STEP, payload="step")

    def _pump(self) -> None:
        """Event mode: take whatever the reader queued, without blocking, and send it as one chunk."""
        with self.job.lock:
            self._pump_locked(self.job)

    def _pump_locked(self, job: Job) -> None:
        if time.time() >= job.deadline:
            return self._finish_at_deadline(job)
        acc, attempt = job.acc, job.attempt
        queued_at, attempt.queued_at = attempt.queued_at, None
        if queued_at is not None:
            self.lag.observe(time.monotonic() - queued_at)
        while True:
            try:
                item = attempt.events.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Relayed):
                _log_fallback(job)
                job.relay_to = None   # the channel failed: the rest goes as messages, from this thread
                self.send(job.dispatch.reply_to, TokenChunk(job.dispatch.request.request_id, item.seq, item.text,
                                                            item.tool_calls))
                continue
            if (error := job.consume(item, self.runner, self.deployment.provider)) is not CONTINUE:
                if acc.has_pending:
                    self._flush(job)
                return self._finish(job, error)
        if acc.has_pending:
            coalesce_s = streaming.adaptive_window(self.deployment.coalesce_ms / 1000, self.lag.value)
            now = time.monotonic()
            if streaming.flush_due(True, job.chunks, job.last_flush, coalesce_s, now):
                self._flush(job)
            elif not job.flush_armed or job.relaying:
                # (A relaying reader set flush_armed when it queued FlushSoon: the timer is armed here.)
                job.flush_armed = True
                self.wakeupAfter(timedelta(seconds=job.last_flush + coalesce_s - now), payload=("flush", job))
        if job.relay_to is not None and job.chunks > 0:
            job.relaying = True   # all that was queued is consumed, the first chunk is out: the reader takes over

    def _flush(self, job: Job) -> None:
        # Only text or tool-call deltas are pending: a chunk is never empty. Tool-call deltas
        # travel in ``tool_calls`` (with text ""), as OpenAI's own stream carries them.
        text, tools = job.acc.take_pending()
        request = job.dispatch.request
        request_id = request.request_id
        channel = getattr(request, "channel", None)
        out = stream_sender.sender() if channel is not None else None
        if out is None or not out.send(channel, request_id, job.chunks, text, tools):
            if out is not None:
                _log_fallback(job)
            job.relay_to = None   # no working channel: the reader never relays this job
            self.send(job.dispatch.reply_to, TokenChunk(request_id, job.chunks, text, tools))
        if job.chunks == 0:
            job.first_token_unix = time.time()
            self.send(self.engine, FirstToken(request_id, job.dispatch.attempt, job.first_token_unix))
        job.chunks += 1
        job.last_flush = time.monotonic()
        job.flush_armed = False



def _log_fallback(job: Job) -> None:
    if not job.fallback_logged:
        job.fallback_logged = True
        out = stream_sender.sender()
        log.info("stream channel unusable (%s): %s's chunks go as messages",
                 out.last_failure if out is not None else "no sender", job.dispatch.request.request_id)
