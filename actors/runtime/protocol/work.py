"""Between an engine and its worker processes: one attempt per Dispatch, one WorkerResult back.

A worker process holds several slots (threads, ``runtime/slot.py``); messages about one
attempt name its slot, the engine core's worker index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.errors import InferenceError
from actors.types import Choice, InferenceRequest, ToolCall, Usage


@dataclass
class Dispatch:
    request: InferenceRequest
    reply_to: Any
    attempt: int
    min_session_version: int = 0
    slot: int = 0           # which of the worker process's slots makes the attempt


@dataclass
class FirstToken:
    """The attempt has its first text; it is held back until the engine answers (FirstTokenHeard)."""

    request_id: str
    attempt: int
    at_unix: float


@dataclass
class FirstTokenHeard:
    """The engine knows the attempt has a token (it will not be retried): it may go to the caller."""

    request_id: str
    attempt: int


@dataclass
class WorkerResult:
    request_id: str
    attempt: int
    worker_index: int
    error: InferenceError | None = None
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    raw_finish_reason: str | None = None
    usage: Usage = field(default_factory=lambda: Usage(reported=False))
    chunks: int = 0
    first_token_unix: float | None = None
    session_version: int = 0
    # False when the attempt never reached the provider (e.g. connection refused).
    sent: bool = True
    # Out of the repr, as in Completed (actors/types.py): Thespian formats each message it moves.
    logprobs: list[dict[str, Any]] | None = field(default=None, repr=False)
    choices: list[Choice] = field(default_factory=list)
    embeddings: list[list[float]] | None = field(default=None, repr=False)
    stop_sequence: str | None = None


@dataclass
class WorkerReady:
    slots: list[int]        # slots of the sending process ready for a Dispatch
    pid: int = 0            # so the engine can kill a worker process that stopped answering


@dataclass
class LinkHello:
    """An engine's first frame on each control connection it accepts: the address of the engine the
    connection reached (a caller checks it is the one its route named before it sends a call)."""

    engine: Any


@dataclass
class RestartSlot:
    """The engine gave up on the slot's attempt (it did not report in time): end it without a
    report (its exchange stopped), and start the slot afresh. Answered by a WorkerReady."""

    slot: int
