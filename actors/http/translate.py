"""What both dialects share: one parsed call in the project's normalized vocabulary
(InferenceRequest messages and params are OpenAI's), and strict checks of the caller's JSON."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from actors.http.errors import FrontDoorError

__all__ = ["Call", "Served", "bad", "need", "known_only", "parse_json", "fallbacks_of"]


@dataclass
class Call:
    """A caller's request, normalized: ready for ``GatewayClient.complete``/``stream``."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False      # OpenAI's stream_options.include_usage
    timeout_s: float | None = None
    fallbacks: list[str] | None = None   # the extra body field `fallbacks` (docs/routing.md)
    logprobs: bool = False               # the caller asked for log probabilities (rendered in its place)
    echo: dict[str, Any] = field(default_factory=dict)   # request fields a dialect repeats in its answer


@dataclass(frozen=True)
class Served:
    """Which deployment served a call, and whether it was a fallback (another model than the one asked for)."""

    deployment: str = ""
    fallback: bool = False

    def fingerprint(self) -> str:
        """OpenAI's ``system_fingerprint`` (a string): names the serving configuration, here the deployment."""
        return "fp_" + hashlib.sha256(self.deployment.encode()).hexdigest()[:10]

    def headers(self) -> list[tuple[str, str]]:
        if not self.deployment:
            return []
        return [("x-atomr-deployment", self.deployment), ("x-atomr-fallback", "true" if self.fallback else "false")]


def fallbacks_of(doc: dict) -> list[str] | None:
    """The request's own fallback models: an array of model names, or a 400 naming the field."""
    models = need(doc, "fallbacks", list)
    if models is None:
        return None
    for i, model in enumerate(models):
        if not isinstance(model, str) or not model.strip():
            raise bad(f"fallbacks[{i}]: must be a model name, got {_type_name(model)}", param=f"fallbacks[{i}]",
                      code="invalid_type")
    return list(models)


def bad(message: str, param: str | None = None, code: str | None = None) -> FrontDoorError:
    return FrontDoorError(400, message, kind="invalid_request_error", param=param, code=code)


_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
          dict: "an object"}


def known_only(doc: dict, known: set[str] | frozenset[str]) -> None:
    """A 400 naming the first field (alphabetically) that ``known`` does not hold."""
    unknown = sorted(set(doc) - known)
    if unknown:
        raise bad(f"{unknown[0]}: unsupported parameter", param=unknown[0], code="unsupported_parameter")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", int: "an integer", float: "a number", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def need(doc: dict, name: str, kind: type | tuple[type, ...], *, required: bool = False, where: str = "") -> Any:
    """``doc[name]`` if it has the JSON type ``kind``; a 400 naming the field otherwise."""
    path = f"{where}{name}"
    if name not in doc or doc[name] is None:
        if required:
            raise bad(f"{path}: required", param=path, code="missing_required_parameter")
        return None
    value = doc[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = any(isinstance(value, k) and not (isinstance(value, bool) and k in (int, float)) for k in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        expected = " or ".join(_KINDS.get(k, k.__name__) for k in kinds)
        raise bad(f"{path}: must be {expected}, got {_type_name(value)}", param=path, code="invalid_type")
    return value


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"the request body is not valid JSON: {str(exc)[:200]}", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise bad(f"the request body must be a JSON object, got {_type_name(doc)}", code="invalid_json")
    return doc
