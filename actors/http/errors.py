"""Typed errors -> the HTTP status and the error body each SDK expects (docs/http.md has the table).

The openai SDK raises by status (400 BadRequestError, 401 AuthenticationError, 403
PermissionDeniedError, 404 NotFoundError, 409, 413, 422, 429 RateLimitError, >= 500
InternalServerError) and retries 408/409/429/5xx after ``retry-after``; the anthropic SDK
does the same and adds 529 OverloadedError. ``x-should-retry`` tells both SDKs whether a
repeat can help and duplicates nothing the gateway already sent upstream (the client sets
``retryable`` so: ``core/retry.py: caller_may_retry``), so with the SDKs' default settings
the upstream sees at most the deployment's ``max_retries + 1`` requests per SDK call.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import actors.errors as e

__all__ = ["HttpError", "FrontDoorError", "http_error", "openai_body", "anthropic_body", "status_line"]


class FrontDoorError(Exception):
    """A refusal by the front door itself (before any call): bad key, bad JSON, too large, ..."""

    def __init__(self, status: int, message: str, *, kind: str, code: str | None = None,
                 param: str | None = None, retry_after_s: float | None = None,
                 retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind      # one of the Anthropic error types below (the OpenAI type is derived)
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s
        self.retryable = retryable  # None: a 429 or 503 is worth retrying, nothing else


@dataclass(frozen=True)
class HttpError:
    status: int
    anthropic_type: str
    openai_type: str
    code: str | None
    message: str
    param: str | None = None
    retry_after_s: float | None = None
    retryable: bool | None = None

    def headers(self) -> list[tuple[str, str]]:
        out = []
        if self.retry_after_s is not None:
            out.append(("retry-after", str(max(1, math.ceil(self.retry_after_s)))))
            out.append(("retry-after-ms", str(max(1, int(self.retry_after_s * 1000)))))
        if self.retryable is not None:
            out.append(("x-should-retry", "true" if self.retryable else "false"))
        return out


# Anthropic error type -> the OpenAI type of the same meaning.
_OPENAI_TYPE = {"invalid_request_error": "invalid_request_error", "authentication_error": "invalid_request_error",
                "permission_error": "invalid_request_error", "not_found_error": "invalid_request_error",
                "request_too_large": "invalid_request_error", "rate_limit_error": "rate_limit_error",
                "api_error": "server_error", "overloaded_error": "server_error", "timeout_error": "server_error"}

# (class, status, anthropic type, code, default retry-after): the most specific class first.
_TABLE: list[tuple[type, int, str, str | None, float | None]] = [
    (e.ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded", None),
    (e.ContentFiltered, 400, "invalid_request_error", "content_filter", None),
    (e.UpstreamRejected, 400, "invalid_request_error", "upstream_rejected_request", None),
    (e.BadRequest, 400, "invalid_request_error", None, None),
    (e.CredentialUnavailable, 502, "api_error", "upstream_credential_unavailable", None),
    (e.AuthenticationError, 502, "api_error", "upstream_authentication_failed", None),
    (e.PermissionDenied, 403, "permission_error", "upstream_permission_denied", None),
    (e.NotFound, 404, "not_found_error", "model_not_found", None),
    (e.Conflict, 409, "api_error", "conflict", None),
    (e.RateLimited, 429, "rate_limit_error", "rate_limit_exceeded", 1.0),
    (e.BudgetExceeded, 429, "rate_limit_error", "budget_exceeded", 1.0),
    (e.QueueFull, 429, "rate_limit_error", "queue_full", 1.0),
    (e.Overloaded, 529, "overloaded_error", "overloaded", 1.0),
    (e.CircuitOpen, 503, "overloaded_error", "circuit_open", 1.0),
    (e.LeaderUnavailable, 503, "api_error", "leader_unavailable", 1.0),
    (e.ShuttingDown, 503, "api_error", "shutting_down", 1.0),
    (e.EngineCrashed, 503, "api_error", "engine_crashed", 1.0),
    (e.GatewayUnavailable, 503, "api_error", "gateway_unavailable", 1.0),
    (e.DeadlineExceeded, 504, "timeout_error", "deadline_exceeded", None),
    (e.Timeout, 504, "timeout_error", "upstream_timeout", None),  # GatewayTimeout included
    (e.ServerError, 502, "api_error", "upstream_error", None),
    (e.NetworkError, 502, "api_error", "upstream_unreachable", None),
    (e.StreamError, 502, "api_error", "upstream_stream_broken", None),
    (e.EmptyResponse, 502, "api_error", "upstream_empty_response", None),
    (e.ResponseTooLarge, 502, "api_error", "upstream_response_too_large", None),
    (e.WorkerCrashed, 502, "api_error", "worker_crashed", None),
    (e.Cancelled, 499, "api_error", "cancelled", None),
]


def _retry_after(error: e.InferenceError, default: float | None) -> float | None:
    if isinstance(error, e.CircuitOpen) and error.retry_at_unix_ms:
        return max(1.0, error.retry_at_unix_ms / 1000 - time.time())
    if error.retry_after_s is not None and error.retry_after_s >= 0:
        return error.retry_after_s
    return default


def http_error(error: BaseException) -> HttpError:
    """The HTTP form of any error: front-door refusals, typed InferenceErrors, and bugs (500)."""
    if isinstance(error, FrontDoorError):
        retryable = error.retryable if error.retryable is not None else (error.status in (429, 503) or None)
        return HttpError(error.status, error.kind, _OPENAI_TYPE.get(error.kind, "invalid_request_error"),
                         error.code, error.message, error.param, error.retry_after_s, retryable)
    if isinstance(error, e.InferenceError):
        for cls, status, kind, code, default_after in _TABLE:
            if isinstance(error, cls):
                after = _retry_after(error, default_after) if status in (429, 503, 529) else None
                # The SDKs retry 408/409/429/5xx unless told otherwise: say what the gateway knows, always.
                return HttpError(status, kind, _OPENAI_TYPE[kind], code, error.message or error.kind,
                                 retry_after_s=after, retryable=bool(error.retryable))
        return HttpError(500, "api_error", "server_error", error.kind, error.message or error.kind,
                         retryable=bool(error.retryable))
    return HttpError(500, "api_error", "server_error", "internal_error",
                     "internal error in the gateway's HTTP front door", retryable=False)


def openai_body(err: HttpError) -> dict:
    return {"error": {"message": err.message, "type": err.openai_type, "code": err.code, "param": err.param}}


def anthropic_body(err: HttpError) -> dict:
    return {"type": "error", "error": {"type": err.anthropic_type, "message": err.message}}


def encode(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 415: "Unsupported Media Type",
            429: "Too Many Requests", 499: "Client Closed Request", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout", 529: "Overloaded"}


def status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, 'Error')}"
