"""Between an engine and its workers: one attempt per Dispatch, one WorkerResult back."""

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


@dataclass
class FirstToken:
    request_id: str
    attempt: int
    at_unix: float


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
    worker_index: int
    pid: int = 0            # so the engine can replace a worker that stopped answering
