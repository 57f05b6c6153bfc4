"""The public contract: what a caller sends (InferenceRequest, Cancel) and gets back
(TokenChunk, then exactly one Completed or Failed), and the value types they carry.

These classes cross hosts, so their module path is part of the wire format.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from actors.errors import InferenceError

# --- value types ---------------------------------------------------------------------

USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")


@dataclass(frozen=True)
class Usage:
    """Token counts of one call. ``reported`` is False when the provider said nothing."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    reported: bool = True

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_fields(cls, fields: dict[str, int]) -> "Usage":
        if not fields:
            return cls(reported=False)
        counts = {name: int(fields.get(name) or 0) for name in USAGE_FIELDS}
        return cls(input_tokens=counts["input_tokens"], output_tokens=counts["output_tokens"],
                   cached_input_tokens=counts["cached_input_tokens"], reasoning_tokens=counts["reasoning_tokens"])

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in USAGE_FIELDS}


@dataclass(frozen=True)
class ToolCall:
    """A complete tool call, assembled from its streamed deltas."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class AttemptInfo:
    """One line of a terminal's attempt list: where an attempt went and how it ended."""

    deployment: str
    error_kind: str = ""          # "" for the attempt that served; else the error's kind
    status: int | None = None     # the upstream's HTTP status, when it answered
    delay_s: float = 0.0          # waited before the next attempt
    sent: bool = True             # False: refused before anything went upstream (circuit, queue, budget)
    node: str = ""                # the node of that deployment (set by the caller's router)


@dataclass(frozen=True)
class Choice:
    """One more answer of a call made with ``n`` > 1 (``Completed`` itself is choice 0)."""

    index: int
    text: str
    finish_reason: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None


# What a request asks the provider for: a chat completion, or embeddings of its messages' texts.
Operation = Literal["chat", "embed"]
OPERATIONS: tuple[str, ...] = ("chat", "embed")


# --- the public contract -------------------------------------------------------------

def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


@dataclass
class InferenceRequest:
    """One call. ``model`` names a model (any deployment serving it) or a deployment.

    ``params`` are generation parameters in OpenAI vocabulary (max_tokens, temperature,
    top_p, stop, tools, tool_choice, ...); runners translate them per provider.
    ``deadline_unix`` is absolute wall-clock time, so it survives crossing hosts.
    """

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    priority: int | str = "normal"
    deadline_unix: float | None = None
    idempotent: bool = True
    request_id: str = field(default_factory=new_request_id)
    metadata: dict[str, str] = field(default_factory=dict)
    # Where the worker may write this request's chunks instead of sending them as messages:
    # {"port": <loopback port>, "token": <the caller process's channel token>}; set by the client.
    channel: dict[str, Any] | None = None
    # Routing (docs/routing.md): models to fall back to, replacing routing.fallbacks for this
    # call; and the retries this request may still make here (None: the deployment's policy),
    # so retries are one budget across every deployment and fallback the call visits.
    fallbacks: list[str] | None = None
    retry_budget: int | None = None
    # "embed": one user turn per text to embed (so validation, estimates and routing treat
    # them like a prompt); never streamed.
    operation: Operation = "chat"
    # To this node's relay only: the engine of another node to forward the call to (docs/routing.md,
    # "Across a cluster"). The relay clears it, and ``channel``, before the request leaves the node.
    relay_to: Any = None


@dataclass
class TokenChunk:
    """Streamed output since the previous chunk of the same request (coalesced)."""

    request_id: str
    seq: int
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    # Per-token log probabilities of this chunk's text (OpenAI's ``logprobs.content`` items),
    # when the request asked for them and the provider gave them.
    logprobs: list[dict[str, Any]] | None = field(default=None, repr=False)


@dataclass
class Completed:
    """Terminal: the call succeeded."""

    request_id: str
    text: str
    finish_reason: str
    usage: Usage
    raw_finish_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    cost_usd: float | None = None
    attempts: int = 1
    latency_s: float = 0.0
    ttft_s: float | None = None
    deployment: str = ""
    provider_model: str = ""
    chunks: int = 0
    # Tokens the rate limiter was charged: the reported usage, or the estimate when the
    # provider reported none (usage.reported is False), never zero for a call that ran.
    charged_tokens: int = 0
    attempt_log: list[AttemptInfo] = field(default_factory=list)   # every attempt, the serving one last
    # Bulky payloads stay out of the repr: Thespian formats every message it sends and receives
    # (str(), for a debug line it may not even write), and 32 vectors of 1536 floats took ~10 ms a time.
    logprobs: list[dict[str, Any]] | None = field(default=None, repr=False)   # logprobs.content items, when asked
    choices: list[Choice] = field(default_factory=list)   # choices 1..n-1 of a call with n > 1
    embeddings: list[list[float]] | None = field(default=None, repr=False)   # "embed": one vector per input, in order
    stop_sequence: str | None = None                  # which stop sequence ended the answer, when the provider said


@dataclass
class EmbeddingResult:
    """What ``GatewayClient.embed`` returns: one vector per input, in order, over its batches."""

    embeddings: list[list[float]]
    usage: Usage                       # summed over the batches; reported only if every batch's was
    cost_usd: float | None             # None when any batch's cost is unknown
    calls: list[Completed] = field(default_factory=list)   # one per batch sent, in order

    @property
    def deployment(self) -> str:
        return self.calls[-1].deployment if self.calls else ""


@dataclass
class Failed:
    """Terminal: the call failed. ``chunks`` TokenChunks were streamed before it did; None when
    the gateway cannot know (the attempt was cut off on its worker: a cancel, the deadline, the
    worker's death). What a raw caller then does with late chunks: README, "The raw protocol"."""

    request_id: str
    error: InferenceError
    attempts: int = 0
    deployment: str = ""
    chunks: int | None = 0
    attempt_log: list[AttemptInfo] = field(default_factory=list)


@dataclass
class Cancel:
    request_id: str


TERMINAL = (Completed, Failed)
