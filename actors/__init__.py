"""atomr-infer-remote-core: shared infrastructure for calling remote LLM providers from a Thespian actor cluster.

The public API: ``from actors import GatewayClient``; the request and response types; the
errors (every failure of a call is an ``InferenceError``; ``ConfigError`` is not one).
Importing this package imports the client lazily, so ``actors.core`` stays free of Thespian.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors.errors import (AuthenticationError, BadRequest, BudgetExceeded, Cancelled, CircuitOpen, ConfigError,
                           Conflict, ContentFiltered, ContextLengthExceeded, CredentialUnavailable, DeadlineExceeded,
                           EngineCrashed, GatewayTimeout, GatewayUnavailable, InferenceError, InternalError,
                           LeaderUnavailable, NetworkError, NotFound, Overloaded, PermissionDenied, QueueFull,
                           RateLimited, ServerError, ShuttingDown, StreamError, Timeout, UpstreamRejected,
                           WorkerCrashed)
from actors.params import NOT_GIVEN, CallParams, MessageParam, NotGiven
from actors.types import (AttemptInfo, Cancel, Choice, Completed, EmbeddingResult, Failed, InferenceRequest, TokenChunk,
                          ToolCall, Usage)

if TYPE_CHECKING:   # what the lazy names below are, for type checkers
    from actors.client import GatewayClient, Stream
    from actors.node_link import InProcessLink, NodeLink, ThespianLink

__version__ = "0.1.0"

__all__ = [
    # the client, and the links it talks to its node through
    "GatewayClient", "Stream", "NodeLink", "ThespianLink", "InProcessLink",
    # what a call takes (actors.params has every message, tool and format type)
    "NOT_GIVEN", "NotGiven", "MessageParam", "CallParams",
    # what goes in and comes out
    "InferenceRequest", "TokenChunk", "Completed", "Failed", "Cancel", "Usage", "ToolCall", "AttemptInfo",
    "Choice", "EmbeddingResult",
    # errors: the base, then by who is at fault
    "InferenceError",
    "GatewayUnavailable", "GatewayTimeout", "EngineCrashed", "WorkerCrashed", "ShuttingDown", "InternalError",
    "RateLimited", "Overloaded", "ServerError", "Timeout", "NetworkError", "StreamError", "Conflict",
    "AuthenticationError", "CredentialUnavailable", "PermissionDenied", "NotFound", "BadRequest",
    "ContextLengthExceeded", "ContentFiltered", "UpstreamRejected",
    "CircuitOpen", "BudgetExceeded", "LeaderUnavailable", "QueueFull", "Cancelled", "DeadlineExceeded",
    "ConfigError",
    "__version__",
]

_LAZY = {"GatewayClient": "actors.client", "Stream": "actors.client", "NodeLink": "actors.node_link",
         "ThespianLink": "actors.node_link", "InProcessLink": "actors.node_link"}


def __getattr__(name: str) -> Any:
    # The client imports Thespian and the runtime; load it only when asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'actors' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
