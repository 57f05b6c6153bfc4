"""Checks on a request before it is queued: a clear typed error instead of a bad upstream call.

Also bounds what no provider would take and what would hurt the gateway itself: a value
nested deeper than :data:`MAX_NESTING` levels (it would exhaust the recursion of the JSON
and pickle code on its way), and a ``max_tokens`` beyond any model's output
(:data:`MAX_TOKENS_CEILING`), which would otherwise reach budgets and estimates as a number
of tokens no call could ever use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from actors.core.classify import redact
from actors.core.priority_queue import Priority
from actors.errors import BadRequest, InferenceError
from actors.types import OPERATIONS, InferenceRequest

__all__ = ["MAX_NESTING", "MAX_TOKENS_CEILING", "too_deep", "param_problem", "validate_params", "validate_request"]

# Deeper than any request needs (a tool's JSON schema nests a few levels per object level),
# far below what Python's JSON and pickle code recurse through (about a thousand).
MAX_NESTING = 64
# Larger than any model's context window (the largest known is two million tokens): past it,
# max_tokens is a mistake, never a request, whatever the model.
MAX_TOKENS_CEILING = 2_097_152


def _shown(value: Any) -> str:
    text = repr(value)
    return redact(text if len(text) <= 80 else text[:80] + "…")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _within(low: float, high: float, v: Any) -> bool:
    return _is_number(v) and low <= v <= high


def _stop(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and len(value) <= 16 and all(isinstance(s, str) and s for s in value)


def _tool(tool: Any) -> bool:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        return False
    function = tool.get("function", tool)
    return (isinstance(function, dict) and isinstance(function.get("name"), str) and bool(function["name"])
            and isinstance(function.get("parameters", {}), dict))


def _tool_choice(value: Any) -> bool:
    if value in ("auto", "none", "required"):
        return True
    if not isinstance(value, dict):
        return False
    function = value.get("function", value)
    return isinstance(function, dict) and isinstance(function.get("name"), str) and bool(function["name"])


# Parameter -> (check, what a valid value is). Ranges are the widest any provider accepts,
# so a value valid for one provider is never refused here; anything else never leaves the node.
_PARAMS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (partial(_within, 0.0, 2.0), "a number in [0, 2]"),
    "top_p": (partial(_within, 0.0, 1.0), "a number in [0, 1]"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "max_tokens": (lambda v: _is_int(v) and 1 <= v <= MAX_TOKENS_CEILING,
                   f"a positive integer of at most {MAX_TOKENS_CEILING} (more than any model's limit)"),
    "max_completion_tokens": (lambda v: _is_int(v) and 1 <= v <= MAX_TOKENS_CEILING,
                              f"a positive integer of at most {MAX_TOKENS_CEILING} (more than any model's limit)"),
    "n": (lambda v: _is_int(v) and 1 <= v <= 128, "an integer in [1, 128]"),
    "logprobs": (lambda v: isinstance(v, bool), "a boolean"),
    "top_logprobs": (lambda v: _is_int(v) and 0 <= v <= 20, "an integer in [0, 20]"),
    "seed": (_is_int, "an integer"),
    "presence_penalty": (partial(_within, -2.0, 2.0), "a number in [-2, 2]"),
    "frequency_penalty": (partial(_within, -2.0, 2.0), "a number in [-2, 2]"),
    "stop": (_stop, "a string or a list of at most 16 non-empty strings"),
    "tools": (lambda v: isinstance(v, list) and all(_tool(t) for t in v),
              "a list of function tools, each with a non-empty function.name and a parameters mapping"),
    "tool_choice": (_tool_choice, "'auto', 'none', 'required' or {'function': {'name': ...}}"),
}


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Does ``value`` nest lists, tuples or mappings more than ``limit`` levels deep? (Iterative.)"""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def param_problem(params: dict[str, Any]) -> tuple[str, str] | None:
    """(the parameter, why) for the first common generation parameter that cannot be sent, or None."""
    for name, (check, expected) in _PARAMS.items():
        value = params.get(name)
        if value is not None and not check(value):
            return name, f"{name} must be {expected}, got {_shown(value)}"
    for name, value in params.items():
        if too_deep(value):
            return name, f"{name} nests deeper than {MAX_NESTING} levels"
    return None


def validate_params(params: dict[str, Any]) -> InferenceError | None:
    """Why the common generation parameters cannot be sent as given, or None (None values mean unset)."""
    problem = param_problem(params)
    return None if problem is None else BadRequest(f"params.{problem[1]}")


def validate_request(request: Any) -> InferenceError | None:
    """Why ``request`` cannot be served as given, or None. Checked before it is queued."""
    if not isinstance(request, InferenceRequest):
        return BadRequest(f"expected an InferenceRequest, got {type(request).__name__}")
    if not isinstance(request.request_id, str) or not request.request_id:
        return BadRequest("request_id must be a non-empty string")
    if not isinstance(request.messages, list) or not request.messages:
        return BadRequest("messages must be a non-empty list")
    if too_deep(request.messages, MAX_NESTING + 1):
        return BadRequest(f"messages nest deeper than {MAX_NESTING} levels")
    for i, message in enumerate(request.messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return BadRequest(f"messages[{i}] must be a mapping with a string 'role'")
        if "content" not in message and not message.get("tool_calls"):
            return BadRequest(f"messages[{i}] has no content")
    if not isinstance(request.params, dict):
        return BadRequest("params must be a mapping")
    if getattr(request, "operation", "chat") not in OPERATIONS:
        return BadRequest(f"operation must be one of {', '.join(OPERATIONS)}, got {_shown(request.operation)}")
    error = validate_params(request.params)
    if error is not None:
        return error
    if not isinstance(request.stream, bool) or not isinstance(request.idempotent, bool):
        return BadRequest("stream and idempotent must be booleans")
    try:
        Priority.parse(request.priority)
    except (ValueError, TypeError) as exc:
        return BadRequest(str(exc))
    if request.deadline_unix is not None and not _is_number(request.deadline_unix):
        # A NaN deadline compares false with every clock reading: it would never expire.
        return BadRequest(f"deadline_unix must be a finite number (unix seconds), got {_shown(request.deadline_unix)}")
    return None
