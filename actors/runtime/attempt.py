"""One dispatch made into an attempt: its HTTP exchange and its delivery, ready for a slot.

The worker actor (``worker.py``) prepares each attempt on its own thread (the runner builds
the provider request with the session's credential) and hands the slot (``slot.py``) a
:class:`SlotAttempt` to run on the slot's thread. :class:`ToCaller` is what the actor sends
for the attempt: the chunks that go as Thespian messages, and the ``FirstToken`` it sends to
the engine with the first chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from actors.core import streaming
from actors.errors import InferenceError
from actors.providers.base import ModelRunner, StreamAccumulator
from actors.runtime import stream_sender
from actors.runtime.delivery import Delivery
from actors.runtime.logs import logger
from actors.runtime.protocol import Dispatch, FirstToken, WorkerResult
from actors.runtime.upstream import HttpExchange
from actors.settings.schema import DeploymentConfig
from actors.types import TokenChunk

__all__ = ["prepare", "worker_result", "SlotAttempt", "ToCaller", "monotonic_of"]

log = logger("atomr.worker")


def monotonic_of(unix: float) -> float:
    return time.monotonic() + (unix - time.time())


def prepare(dispatch: Dispatch, dep: DeploymentConfig, runner: ModelRunner, credential: Any,
            wake: Callable[[], None]) -> Delivery | InferenceError:
    """The dispatch's delivery (its exchange inside), or the typed error that ends it unsent."""
    request = dispatch.request
    try:
        runner = runner.for_request(request)   # the runner, or its embeddings call
        http = runner.build_request(request, credential)
    except InferenceError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - a runner bug must not kill the slot
        return streaming.runner_failed(exc, dep.provider, "building the request", detail=False)
    deadline = time.time() + dep.timeouts.total_s
    if request.deadline_unix is not None:
        deadline = min(deadline, request.deadline_unix)
    remaining = max(0.001, deadline - time.time())
    timeouts = min(dep.timeouts.connect_s, remaining), min(dep.timeouts.read_s, remaining)
    exchange = HttpExchange(http, timeouts, dep.response_limits.max_body_bytes, deadline, whole=not http.stream)
    channel = getattr(request, "channel", None) if http.stream else None
    out = stream_sender.sender() if channel is not None else None
    # A non-streamed call has no decoder: its body is parsed whole when it ends.
    return Delivery(dispatch, exchange, runner, deadline=deadline, total_s=dep.timeouts.total_s,
                    coalesce_s=dep.coalesce_ms / 1000, decoder=runner.stream_decoder() if http.stream else None,
                    channel=stream_sender.ChannelTo(out, channel) if out is not None else None, wake=wake)


def worker_result(dispatch: Dispatch, *, acc: StreamAccumulator | None = None, error: InferenceError | None = None,
                  sent: bool = True, chunks: int = 0, first_token_unix: float | None = None,
                  session_version: int = 0) -> WorkerResult:
    """The attempt's report to the engine: what it got, or why it ended, and whether the provider saw it."""
    acc = acc or StreamAccumulator()
    return WorkerResult(
        request_id=dispatch.request.request_id, attempt=dispatch.attempt, worker_index=dispatch.slot,
        error=error, text=acc.text, tool_calls=acc.tool_calls(), finish_reason=acc.finish_reason,
        raw_finish_reason=acc.raw_finish_reason, usage=acc.usage, chunks=chunks, logprobs=acc.logprobs,
        choices=acc.choices, embeddings=acc.embeddings, stop_sequence=acc.stop_sequence,
        first_token_unix=first_token_unix, session_version=session_version, sent=sent)


class SlotAttempt:
    """What a slot's thread runs for one dispatch (``slot.Attempt``)."""

    __slots__ = ("delivery",)

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery

    def run(self, http: Any) -> None:
        self.delivery.exchange.run(http, self.delivery.take)

    def crashed(self, exc: BaseException) -> None:
        self.delivery.crash(exc)


class ToCaller:
    """The :class:`~actors.runtime.delivery.Outlet` of one dispatch: what the actor sends for it."""

    def __init__(self, actor: Any, delivery: Delivery) -> None:
        self.actor, self.delivery = actor, delivery
        self.by_message = False     # a chunk went as a Thespian message (no stream channel, or it failed)

    def to_caller(self, chunk: TokenChunk) -> None:
        delivery = self.delivery
        if delivery.channel is not None and not self.by_message:
            log.info("stream channel unusable (%s): %s's chunks go as messages",
                     getattr(delivery.channel, "last_failure", ""), delivery.request_id)
        self.by_message = True
        self.actor.send(delivery.dispatch.reply_to, chunk)

    def first_token(self, at_unix: float) -> bool:
        dispatch = self.delivery.dispatch
        return bool(self.actor.send_written(self.actor.engine,
                                            FirstToken(dispatch.request.request_id, dispatch.attempt, at_unix)))
