"""HTTP status, headers and error body -> a typed :class:`InferenceError`.

One classifier feeds retry, breaker and limiter decisions. Provider error bodies are
recognised by their shape, not by the provider name, so an OpenAI-compatible gateway
that relays an Anthropic or Gemini error is still classified correctly.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from actors.core.upstream_text import strip_internals
from actors.errors import (AuthenticationError, BadRequest, Conflict, ContentFiltered, ContextLengthExceeded, InferenceError, NotFound, Overloaded, PermissionDenied, RateLimited, ServerError, Timeout)

__all__ = [
    "classify_http_status",
    "classify_error_body",
    "parse_retry_after",
    "parse_should_retry",
    "header",
    "redact",
]

# Error messages are kept for operators, but bounded and scrubbed: a provider may echo
# part of a request, and secrets must never reach logs or other nodes.
MAX_MESSAGE_CHARS = 500
_SECRET_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|(?i:bearer)\s+[A-Za-z0-9._\-~+/=]{8,}"
    r"|AKIA[0-9A-Z]{16})"
)


def redact(text: str) -> str:
    """Bound ``text`` and mask anything shaped like an API key or bearer token; stack traces and
    file paths go (actors/core/upstream_text.py: the node's log keeps the whole body)."""
    text = _SECRET_PATTERNS.sub("[redacted]", strip_internals(text))
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "…"
    return text


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """Case-insensitive header lookup that works on any mapping."""
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        lname = name.lower()
        value = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == lname), None)
    return value if isinstance(value, str) else None


def _finite_non_negative(text: str, scale: float) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value * scale


def parse_retry_after(headers: Mapping[str, str] | None,
                      now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asks us to wait, or None when it did not say (or said nonsense).

    ``retry-after-ms`` (OpenAI/Anthropic) wins over ``retry-after``, which may be
    delta-seconds or an HTTP-date. A date in the past means "now" (0.0).
    """
    ms = header(headers, "retry-after-ms")
    if ms is not None:
        value = _finite_non_negative(ms, 0.001)
        if value is not None:
            return value
    raw = header(headers, "retry-after")
    if raw is None:
        return None
    value = _finite_non_negative(raw, 1.0)
    if value is not None:
        return value
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now())


def parse_should_retry(headers: Mapping[str, str] | None) -> bool | None:
    """``x-should-retry: true|false`` overrides our own retryability, anything else is ignored."""
    raw = header(headers, "x-should-retry")
    if raw is None:
        return None
    raw = raw.strip().lower()
    return True if raw == "true" else False if raw == "false" else None


def _request_id(headers: Mapping[str, str] | None, body: Any) -> str:
    for name in ("x-request-id", "request-id", "x-amzn-requestid", "x-goog-request-id", "apim-request-id"):
        value = header(headers, name)
        if value:
            return value[:128]
    request_id = body.get("request_id") if isinstance(body, dict) else None
    return request_id[:128] if isinstance(request_id, str) else ""


def _parse_body(body: Any) -> Any:
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", "replace")
    if isinstance(body, str):
        text = body.strip()
        if not text or text[0] not in "{[":
            return body
        try:
            return json.loads(text)
        except ValueError:
            return body
    return body


_CONTEXT_PHRASES = (
    "context length", "context_length", "maximum context", "context window",
    "too many tokens", "prompt is too long", "input is too long", "exceeds the maximum number of tokens",
    "input token count", "too long",
)
_FILTER_PHRASES = ("safety", "content filter", "content_filter", "content management policy",
                   "responsible ai", "prohibited content", "blocked")
_NUMBERS = re.compile(r"\d[\d,]*")


_LIMIT_WORDS = ("maximum", "exceed", "limit", "up to")


def _token_counts(message: str) -> tuple[int | None, int | None]:
    """Best effort: (tokens used, maximum) from a provider's context-length message."""
    lowered = message.lower()
    found = list(_NUMBERS.finditer(message))
    if len(found) < 2:
        return None, None
    numbers = [int(match.group().replace(",", "")) for match in found]
    # The limit comes first when a limit word precedes the first number: OpenAI's "maximum
    # context length is M ... resulted in N", Cohere's "cannot exceed M - received N".
    # Anthropic ("N tokens > M maximum") and Gemini ("count (N) exceeds ... (M)") say it last.
    first_at = lowered.find(found[0].group())
    if any(0 <= lowered.find(word) < first_at for word in _LIMIT_WORDS):
        return numbers[1], numbers[0]
    return numbers[0], numbers[1]


def _mentions(message: str, phrases: tuple[str, ...]) -> bool:
    lowered = message.lower()
    return any(p in lowered for p in phrases)


def classify_error_body(body: Any, status: int | None = None, provider: str = "",
                        **kw: Any) -> InferenceError | None:
    """Typed error from a provider's error object (HTTP body or a mid-stream error event).

    Returns None when the body has no recognisable error shape; callers then fall back
    to the status code alone.
    """
    body = _parse_body(body)
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # Gemini without alt=sse wraps errors in an array
    if not isinstance(body, dict):
        return None
    # Most providers nest the error object; OpenAI's Responses API `error` event is flat.
    err = body.get("error", body if body.get("type") == "error" else None)
    if isinstance(err, str):
        err = {"message": err}
    if not isinstance(err, dict):
        return None
    etype = str(err.get("type") or "")
    code = str(err.get("code") or "")
    gstatus = str(err.get("status") or "")  # Gemini / Google RPC status name
    message = redact(str(err.get("message") or etype or code or gstatus or "error"))
    inner = err.get("innererror")
    inner = inner if isinstance(inner, dict) else {}
    kw = dict(kw, provider=provider, status=status)
    if status is None and isinstance(err.get("code"), int):
        kw["status"] = err["code"]

    if code == "context_length_exceeded" or code == "string_above_max_length" or (
            etype in ("invalid_request_error", "") and gstatus in ("", "INVALID_ARGUMENT")
            and _mentions(message, _CONTEXT_PHRASES) and status in (None, 400, 413)):
        tokens, max_tokens = _token_counts(message)
        return ContextLengthExceeded(message, tokens=tokens, max_tokens=max_tokens, **kw)
    if (code == "content_filter" or etype in ("content_filter", "content_filter_results_violation")
            or inner.get("code") == "ResponsibleAIPolicyViolation"
            or (gstatus in ("INVALID_ARGUMENT", "FAILED_PRECONDITION") and _mentions(message, _FILTER_PHRASES))):
        return ContentFiltered(message, reason=code or etype or gstatus or "content_filter", **kw)
    if etype == "overloaded_error" or (gstatus == "UNAVAILABLE" and status in (None, 503, 529)):
        return Overloaded(message, **kw)
    if etype == "rate_limit_error" or gstatus == "RESOURCE_EXHAUSTED" or code in ("rate_limit_exceeded", "insufficient_quota"):
        # A spent quota does not come back by retrying (OpenAI insufficient_quota,
        # Anthropic enforced_spend_limit_reached): surface it instead of hammering.
        details = err.get("details")
        details = details if isinstance(details, dict) else {}
        spent = code == "insufficient_quota" or details.get("error_code") == "enforced_spend_limit_reached"
        return RateLimited(message, retryable=False if spent else None, **kw)
    if "api key not valid" in message.lower() or code == "invalid_api_key":
        return AuthenticationError(message, **kw)  # Gemini answers a bad key with 400
    by_type = _BODY_TYPES.get(etype) or _BODY_TYPES.get(gstatus)
    if by_type is not None and (status is None or not 200 <= status < 300):
        return by_type(message, **kw)
    return None


_BODY_TYPES: dict[str, type[InferenceError]] = {
    # Anthropic error.type
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDenied,
    "not_found_error": NotFound,
    "invalid_request_error": BadRequest,
    "request_too_large": BadRequest,
    "api_error": ServerError,
    "timeout_error": Timeout,
    # OpenAI error.type (chat completions streams end with these on a server fault)
    "server_error": ServerError,
    # Google RPC status names
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": PermissionDenied,
    "NOT_FOUND": NotFound,
    "INVALID_ARGUMENT": BadRequest,
    "FAILED_PRECONDITION": BadRequest,
    "DEADLINE_EXCEEDED": Timeout,
    "INTERNAL": ServerError,
    "UNAVAILABLE": ServerError,
    "ABORTED": Conflict,
}

def _body_message(body: Any) -> str | None:
    """The message of an error-shaped body whose type was not recognised, bounded and redacted."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        return None
    err = body.get("error", body)
    if isinstance(err, str) and err.strip():
        return redact(err.strip())
    if not isinstance(err, dict):
        return None
    for key in ("message", "detail", "Message"):
        value = err.get(key)
        if isinstance(value, str) and value.strip():
            return redact(value.strip())
    detail = body.get("detail")  # FastAPI-style servers: {"detail": "..."}
    if isinstance(detail, list):  # pydantic's validation errors: where, and what (never the input echoed)
        said = "; ".join(f"{'.'.join(str(p) for p in d.get('loc') or ())}: {d.get('msg')}".lstrip(": ")
                         for d in detail[:5] if isinstance(d, dict) and isinstance(d.get("msg"), str))
        return redact(said) if said else None
    return redact(detail.strip()) if isinstance(detail, str) and detail.strip() else None


_BY_STATUS: dict[int, type[InferenceError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    408: Timeout,
    409: Conflict,
    413: BadRequest,
    422: BadRequest,
    429: RateLimited,
    529: Overloaded,
}


def classify_http_status(status: int, headers: Mapping[str, str] | None = None, body: Any = None,
                         provider: str = "", now: Callable[[], float] = time.time) -> InferenceError | None:
    """Typed error for a non-2xx response, or None for 2xx.

    1xx/3xx reaching us mean a transport we cannot follow, so they are server errors.
    Malformed headers are ignored, never raised.
    """
    if 200 <= status < 300:
        return None
    parsed = _parse_body(body)
    retry_after_s, request_id = parse_retry_after(headers, now), _request_id(headers, parsed)
    error = classify_error_body(parsed, status, provider, retry_after_s=retry_after_s, request_id=request_id)
    if error is None:
        cls = _BY_STATUS.get(status)
        if cls is None:
            cls = BadRequest if 400 <= status < 500 else ServerError
        if isinstance(parsed, str) and parsed.strip():
            message = redact(parsed.strip())
        else:
            # The usual shape with a type we do not know (an OpenAI-compatible server's
            # internal_server_error, a Gemini-shaped body with a made-up status): the type
            # comes from the status, the provider's explanation is kept.
            message = _body_message(parsed) or f"HTTP {status}"
        error = cls(message, provider=provider, status=status, retry_after_s=retry_after_s, request_id=request_id)
    should_retry = parse_should_retry(headers)
    if should_retry is not None:
        error.retryable = should_retry
    return error
