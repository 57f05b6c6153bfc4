"""TerminalRecord: what one request's terminal says about it, for metrics, routing and the ledger.

The engine core builds one per terminal (exactly one per accepted request) and hands it to
whatever keeps count: the deployment's statistics, the node's ledger. It carries no prompt
and no completion text, only names, counts and times.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.errors import InferenceError
from actors.types import Completed, Failed, Usage

__all__ = ["TerminalRecord", "terminal_record", "KEY_METADATA", "TEAM_METADATA", "FALLBACK_METADATA"]

# Request metadata the front door sets from the authenticated key (callers cannot choose them there).
KEY_METADATA = "http_key"
TEAM_METADATA = "http_team"
# Set by the client on a request it re-sends to a fallback model (docs/routing.md): the model
# the caller asked for. Only the client knows a call is a fallback; the engine only counts it.
FALLBACK_METADATA = "fallback_from"


@dataclass(frozen=True)
class TerminalRecord:
    at_unix: float
    request_id: str
    node: str
    deployment: str
    model: str
    provider: str
    key: str                  # the front door's key name; "" for a Python client
    team: str
    outcome: str              # "completed" | "failed"
    error_kind: str           # "" or the error class name (bounded: one per class)
    status: int | None        # the upstream's HTTP status of the last attempt, when it answered
    attempts: int
    streamed: bool
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    usage_reported: bool      # False: the provider said nothing; the counts are 0 or partial
    charged_tokens: int       # what the rate limiter was charged (the estimate when usage is unknown)
    cost_usd: float | None    # None: the price is unknown
    latency_s: float
    ttft_s: float | None
    charged_usd: float | None = None  # what the spend budgets were charged (the estimate when unknown)
    fallback_from: str = ""   # the model the caller asked for, when this deployment served it as a fallback

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


def terminal_record(message: Completed | Failed, *, at_unix: float, node: str, model: str, provider: str,
                    metadata: dict[str, str], streamed: bool, latency_s: float, ttft_s: float | None,
                    charged_tokens: int, cost_usd: float | None, charged_usd: float | None = None) -> TerminalRecord:
    if isinstance(message, Completed):
        usage, error = message.usage, None
    else:
        error = message.error
        partial = getattr(error, "partial_usage", None)
        usage = Usage.from_fields(partial) if partial else Usage(reported=False)
    return TerminalRecord(
        at_unix=at_unix, request_id=message.request_id, node=node, deployment=message.deployment, model=model,
        provider=provider, key=str(metadata.get(KEY_METADATA, "")), team=str(metadata.get(TEAM_METADATA, "")),
        outcome="failed" if error is not None else "completed",
        error_kind=type(error).__name__ if isinstance(error, InferenceError) else "",
        status=getattr(error, "status", None), attempts=message.attempts, streamed=streamed,
        input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens, reasoning_tokens=usage.reasoning_tokens,
        usage_reported=usage.reported, charged_tokens=charged_tokens, cost_usd=cost_usd,
        latency_s=latency_s, ttft_s=ttft_s, charged_usd=charged_usd,
        fallback_from=str(metadata.get(FALLBACK_METADATA, "") or ""))
