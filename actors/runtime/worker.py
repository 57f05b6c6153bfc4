"""RemoteWorkerActor: one concurrent HTTP slot, in its own process.

It makes one attempt per :class:`Dispatch` and reports a :class:`WorkerResult` to its
engine, which owns retries and the terminal message. Streamed output goes straight to
the caller as coalesced :class:`TokenChunk` messages.

Thespian only transmits an actor's sends after ``receiveMessage`` returns, so a stream
cannot be read in one long handler. A reader thread does nothing but the blocking HTTP
reads into a queue; the actor thread takes from that queue in short steps (blocking on
the queue, so the first token leaves at once), sends, returns, and schedules the next
step with a 1 ms wakeup, which also lets it see a Cancel between steps. The thread never
touches Thespian: sends from other threads are lost.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from datetime import timedelta
from typing import Any

import requests
from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from actors.runtime.logs import logger
from actors.settings.schema import DeploymentConfig
from actors.errors import (AuthenticationError, Cancelled, DeadlineExceeded, InferenceError, InternalError, NetworkError, StreamError, Timeout)
from actors.types import Cancel, TokenChunk
from actors.runtime.protocol import (Dispatch, FirstToken, SessionSnapshot, SessionSubscribe, WorkerInit, WorkerReady, WorkerResult)
from actors.providers import make_runner
from actors.providers.base import HttpRequest, ModelRunner, StreamAccumulator

log = logger("atomr.worker")

STEP = timedelta(milliseconds=1)
MAX_BLOCK_S = 0.02          # longest the actor thread blocks on the reader, so Cancel stays prompt
MAX_ERROR_BODY = 64 * 1024
SESSION_WAIT_S = 10.0
_EOF = object()


def transport_error(exc: BaseException, provider: str, after_response: bool) -> InferenceError:
    """A ``requests`` exception as a typed error."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Timeout(f"connect timeout: {type(exc).__name__}", provider=provider)
    if isinstance(exc, requests.exceptions.Timeout):
        return Timeout(f"read timeout: {type(exc).__name__}", provider=provider)
    if after_response or isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return StreamError(f"connection broke mid-response: {type(exc).__name__}", provider=provider)
    return NetworkError(f"{type(exc).__name__}", provider=provider)


class _StreamJob:
    """One streaming attempt: the reader thread's side and the actor's side."""

    def __init__(self, dispatch: Dispatch, http: HttpRequest, deadline: float, decoder: Any) -> None:
        self.dispatch = dispatch
        self.http = http
        self.deadline = deadline
        self.decoder = decoder
        self.queue: queue.Queue = queue.Queue()
        self.response: requests.Response | None = None
        self.cancelled = threading.Event()
        self.acc = StreamAccumulator()
        self.chunks = 0
        self.last_flush = 0.0
        self.first_token_unix: float | None = None
        self.thread: threading.Thread | None = None

    def read(self, session: requests.Session, timeouts: tuple[float, float]) -> None:
        """Reader thread: blocking HTTP only; every outcome goes into the queue."""
        try:
            resp = session.request(self.http.method, self.http.url, data=self.http.body,
                                   headers=self.http.headers, stream=True, timeout=timeouts)
            self.response = resp
            if self.cancelled.is_set():
                resp.close()
                return
            if resp.status_code >= 300:
                body = resp.raw.read(MAX_ERROR_BODY, decode_content=True) or b""
                self.queue.put(("status", resp.status_code, dict(resp.headers), body))
                resp.close()
                return
            self.queue.put(("open", None, None, None))
            for data in resp.iter_content(chunk_size=None):
                if self.cancelled.is_set():
                    break
                self.queue.put(data)
            self.queue.put(_EOF)
        except BaseException as exc:  # noqa: BLE001 - handed to the actor thread as a typed error
            if not self.cancelled.is_set():
                self.queue.put(("exc", exc, self.response is not None, None))
        finally:
            if self.response is not None:
                self.response.close()

    def stop(self) -> None:
        self.cancelled.set()
        if self.response is not None:
            try:
                self.response.close()  # unblocks the reader's socket read
            except Exception:  # noqa: BLE001
                pass


class RemoteWorkerActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.deployment: DeploymentConfig | None = None
        self.runner: ModelRunner | None = None
        self.engine = None
        self.index = -1
        self.http = requests.Session()
        self.snapshot: SessionSnapshot | None = None
        self.waiting: tuple[Dispatch, float] | None = None
        self.job: _StreamJob | None = None

    # -- set-up --------------------------------------------------------------------

    def receiveMsg_WorkerInit(self, msg: WorkerInit, sender: Any) -> None:
        self.deployment = msg.deployment
        self.runner = make_runner(msg.deployment)
        self.engine = msg.engine
        self.index = msg.worker_index
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        # requests re-reads proxy variables and ~/.netrc on every call (milliseconds each here):
        # resolve the proxy for this endpoint once, honouring HTTPS_PROXY and NO_PROXY.
        self.http.proxies = requests.utils.get_environ_proxies(msg.deployment.endpoint)
        self.http.trust_env = False
        if msg.session is not None:
            self.send(msg.session, SessionSubscribe(self.myAddress, wants_secret=True))
        else:
            self.snapshot = SessionSnapshot(version=0, credential=None)
        self.send(self.engine, WorkerReady(self.index, os.getpid()))

    def receiveMsg_SessionSnapshot(self, msg: SessionSnapshot, sender: Any) -> None:
        if self.snapshot is None or msg.version >= self.snapshot.version:
            self.snapshot = msg
        if self.waiting and self.snapshot.version >= self.waiting[0].min_session_version:
            dispatch, _ = self.waiting
            self.waiting = None
            self._start(dispatch)

    # -- one attempt ----------------------------------------------------------------

    def receiveMsg_Dispatch(self, msg: Dispatch, sender: Any) -> None:
        if self.snapshot is None or self.snapshot.version < msg.min_session_version:
            # The fresh credential is on its way from the session actor.
            self.waiting = (msg, time.monotonic() + SESSION_WAIT_S)
            self.wakeupAfter(timedelta(seconds=SESSION_WAIT_S), payload="session")
            return
        self._start(msg)

    def _start(self, dispatch: Dispatch) -> None:
        try:
            self._attempt(dispatch)
        except Exception as exc:  # noqa: BLE001 - a bug here must still end the request, once
            log.exception("worker %d failed on %s", self.index, dispatch.request.request_id)
            if self.job is not None and self.job.dispatch is dispatch:
                self.job.stop()
                self.job = None
            self._report(dispatch, error=InternalError(f"worker failed: {type(exc).__name__}: {exc}",
                                                       provider=self.deployment.provider))

    def _attempt(self, dispatch: Dispatch) -> None:
        dep = self.deployment
        request = dispatch.request
        try:
            http = self.runner.build_request(request, self.snapshot.credential)
        except InferenceError as exc:
            return self._report(dispatch, error=exc, sent=False)
        except Exception as exc:  # noqa: BLE001 - a bad request shape must not kill the slot
            return self._report(dispatch, error=InternalError(f"building the request failed: {type(exc).__name__}: {exc}",
                                                              provider=dep.provider), sent=False)
        deadline = time.time() + dep.timeouts.total_s
        if request.deadline_unix is not None:
            deadline = min(deadline, request.deadline_unix)
        if not http.stream:
            return self._call(dispatch, http, deadline)
        job = self.job = _StreamJob(dispatch, http, deadline, self.runner.stream_decoder())
        job.thread = threading.Thread(target=job.read, args=(self.http, self._timeouts(deadline)),
                                      name=f"reader-{request.request_id}", daemon=True)
        job.thread.start()
        self._step()

    def _timeouts(self, deadline: float) -> tuple[float, float]:
        t = self.deployment.timeouts
        remaining = max(0.001, deadline - time.time())
        return min(t.connect_s, remaining), min(t.read_s, remaining)

    def _call(self, dispatch: Dispatch, http: HttpRequest, deadline: float) -> None:
        """Non-streaming: one blocking request, in this handler (nothing to deliver before it ends)."""
        provider = self.deployment.provider
        try:
            resp = self.http.request(http.method, http.url, data=http.body, headers=http.headers,
                                     timeout=self._timeouts(deadline))
        except requests.RequestException as exc:
            # A refused or timed-out connection never reached the provider: its budget is given back.
            sent = not isinstance(exc, requests.exceptions.ConnectionError)
            return self._report(dispatch, error=self._transport_error(dispatch, exc, False), sent=sent)
        if resp.status_code >= 300:
            return self._report(dispatch, error=self.runner.classify_error(resp.status_code, resp.headers,
                                                                           resp.content[:MAX_ERROR_BODY]))
        acc = StreamAccumulator()
        try:
            acc.add(self.runner.parse_response(resp.content))
        except InferenceError as exc:
            return self._report(dispatch, error=exc)
        except Exception as exc:  # noqa: BLE001
            return self._report(dispatch, error=StreamError(f"unparseable response: {type(exc).__name__}",
                                                            provider=provider))
        self._report(dispatch, acc=acc, error=acc.error)

    # -- streaming steps -----------------------------------------------------------------

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if msg.payload == "step" and self.job is not None:
            job = self.job
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - as in _start: the request must still end
                log.exception("worker %d failed streaming %s", self.index, job.dispatch.request.request_id)
                self._finish(job, InternalError(f"worker failed: {type(exc).__name__}: {exc}",
                                                provider=self.deployment.provider))
        elif msg.payload == "session" and self.waiting:
            remaining = self.waiting[1] - time.monotonic()
            if remaining > 0:  # timers and the monotonic clock disagree by a hair
                self.wakeupAfter(timedelta(seconds=remaining), payload="session")
                return
            dispatch, _ = self.waiting
            self.waiting = None
            self._report(dispatch, error=AuthenticationError("no credential arrived from the session actor",
                                                             provider=self.deployment.provider), sent=False)

    def _step(self) -> None:
        job = self.job
        coalesce_s = self.deployment.coalesce_ms / 1000
        started = time.monotonic()
        while True:
            now = time.monotonic()
            if time.time() >= job.deadline:
                job.stop()
                return self._finish(job, self._deadline_error(job))
            if job.acc.has_pending and job.chunks:
                block = max(0.0, job.last_flush + coalesce_s - now)
            else:
                block = MAX_BLOCK_S
            try:
                item = job.queue.get(timeout=min(block, MAX_BLOCK_S, max(0.0, job.deadline - time.time())))
            except queue.Empty:
                item = None
            if item is not None and (error := self._consume(job, item)) is not _CONTINUE:
                if job.acc.has_pending:
                    self._flush(job)
                return self._finish(job, error)
            now = time.monotonic()
            if job.acc.has_pending and (job.chunks == 0 or now - job.last_flush >= coalesce_s):
                self._flush(job)
                break  # return so Thespian transmits what was just sent
            if now - started >= MAX_BLOCK_S:
                break
        self.wakeupAfter(STEP, payload="step")

    def _consume(self, job: _StreamJob, item: Any) -> Any:
        """Feed one reader item; the job's terminal error (None for success) or _CONTINUE."""
        provider = self.deployment.provider
        if item is _EOF:
            try:
                for delta in job.decoder.close():
                    job.acc.add(delta)
            except InferenceError as exc:
                return exc
            if job.acc.error is not None:
                return job.acc.error
            if not job.acc.complete:
                return StreamError("stream ended before the provider finished", provider=provider)
            return None
        if isinstance(item, bytes):
            try:
                for delta in job.decoder.feed(item):
                    job.acc.add(delta)
            except InferenceError as exc:
                job.stop()
                return exc
            if job.acc.error is not None:
                job.stop()
                return job.acc.error
            return _CONTINUE
        kind, a, b, c = item
        if kind == "open":
            return _CONTINUE
        if kind == "status":
            return self.runner.classify_error(a, b, c)
        return self._transport_error(job.dispatch, a, after_response=b)

    def _flush(self, job: _StreamJob) -> None:
        text, tools = job.acc.take_pending()
        request_id = job.dispatch.request.request_id
        self.send(job.dispatch.reply_to, TokenChunk(request_id, job.chunks, text, tools))
        if job.chunks == 0:
            job.first_token_unix = time.time()
            self.send(self.engine, FirstToken(request_id, job.dispatch.attempt, job.first_token_unix))
        job.chunks += 1
        job.last_flush = time.monotonic()

    def _transport_error(self, dispatch: Dispatch, exc: BaseException, after_response: bool) -> InferenceError:
        deadline = dispatch.request.deadline_unix
        if isinstance(exc, requests.exceptions.Timeout) and deadline is not None and time.time() >= deadline - 0.01:
            # The caller's deadline cut the call short: not a sign of an unhealthy provider.
            return DeadlineExceeded("the request's deadline passed during the call", provider=self.deployment.provider)
        return transport_error(exc, self.deployment.provider, after_response)

    def _deadline_error(self, job: _StreamJob) -> InferenceError:
        request = job.dispatch.request
        if request.deadline_unix is not None and job.deadline >= request.deadline_unix:
            return DeadlineExceeded("the request's deadline passed mid-stream", provider=self.deployment.provider)
        return Timeout(f"total timeout {self.deployment.timeouts.total_s:g}s exceeded",
                       provider=self.deployment.provider)

    def _finish(self, job: _StreamJob, error: InferenceError | None) -> None:
        self.job = None
        job.stop()
        self._report(job.dispatch, acc=job.acc, error=error, chunks=job.chunks,
                     first_token_unix=job.first_token_unix, sent=job.response is not None)

    # -- control -----------------------------------------------------------------------

    def receiveMsg_Cancel(self, msg: Cancel, sender: Any) -> None:
        job = self.job
        if job is not None and job.dispatch.request.request_id == msg.request_id:
            self._finish(job, Cancelled("cancelled by the caller", provider=self.deployment.provider))
        elif self.waiting and self.waiting[0].request.request_id == msg.request_id:
            dispatch, _ = self.waiting
            self.waiting = None
            self._report(dispatch, error=Cancelled("cancelled by the caller"), sent=False)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self.job is not None:
            self.job.stop()
        self.http.close()

    def _report(self, dispatch: Dispatch, *, acc: StreamAccumulator | None = None,
                error: InferenceError | None = None, sent: bool = True, chunks: int = 0,
                first_token_unix: float | None = None) -> None:
        acc = acc or StreamAccumulator()
        self.send(self.engine, WorkerResult(
            request_id=dispatch.request.request_id, attempt=dispatch.attempt, worker_index=self.index,
            error=error, text=acc.text, tool_calls=acc.tool_calls(), finish_reason=acc.finish_reason,
            raw_finish_reason=acc.raw_finish_reason, usage=acc.usage, chunks=chunks,
            first_token_unix=first_token_unix, session_version=self.snapshot.version if self.snapshot else 0,
            sent=sent))


_CONTINUE = object()
