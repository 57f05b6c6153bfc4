"""Checks on a request before it is queued: a clear typed error instead of a bad upstream call."""

from __future__ import annotations

from typing import Any

from actors.core.priority_queue import Priority
from actors.errors import BadRequest, InferenceError
from actors.types import InferenceRequest


def validate_request(request: Any) -> InferenceError | None:
    """Why ``request`` cannot be served as given, or None. Checked before it is queued."""
    if not isinstance(request, InferenceRequest):
        return BadRequest(f"expected an InferenceRequest, got {type(request).__name__}")
    if not isinstance(request.request_id, str) or not request.request_id:
        return BadRequest("request_id must be a non-empty string")
    if not isinstance(request.messages, list) or not request.messages:
        return BadRequest("messages must be a non-empty list")
    for i, message in enumerate(request.messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return BadRequest(f"messages[{i}] must be a mapping with a string 'role'")
        if "content" not in message and not message.get("tool_calls"):
            return BadRequest(f"messages[{i}] has no content")
    if not isinstance(request.params, dict):
        return BadRequest("params must be a mapping")
    max_tokens = request.params.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        return BadRequest("params.max_tokens must be a positive integer")
    if not isinstance(request.stream, bool) or not isinstance(request.idempotent, bool):
        return BadRequest("stream and idempotent must be booleans")
    try:
        Priority.parse(request.priority)
    except (ValueError, TypeError) as exc:
        return BadRequest(str(exc))
    if request.deadline_unix is not None and (not isinstance(request.deadline_unix, (int, float))
                                              or isinstance(request.deadline_unix, bool)):
        return BadRequest("deadline_unix must be a number (unix seconds)")
    return None
