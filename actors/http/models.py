"""Model cards for ``/v1/models`` and ``/v1/models/{id}`` (both dialects), and Anthropic's
``/v1/messages/count_tokens``, which the gateway answers itself with its tokenizer."""

from __future__ import annotations

import datetime as dt
import functools
import time
from importlib import resources
from typing import Any

import yaml

from actors.core.pricing import _match, _names
from actors.core.tokens import TOKENIZER
from actors.http import anthropic_dialect
from actors.http.errors import FrontDoorError
from actors.http.keys import Caller
from actors.http.usage import prompt_tokens

__all__ = ["ModelCards", "count_tokens", "release_date"]


@functools.cache
def _dates() -> dict[str, dt.date]:
    raw = yaml.safe_load(resources.files("actors").joinpath("data/model_dates.yaml").read_text(encoding="utf-8"))
    return {str(k): v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v)) for k, v in raw.items()}


def release_date(model: str) -> dt.date | None:
    """When ``model`` (an upstream model id, in any of the forms pricing accepts) was released, if known."""
    for name in _names(model):
        found = _match(_dates(), name)
        if found is not None:
            return found
    return None


class ModelCards:
    """The gateway's models as each dialect lists them, with real creation dates where known."""

    def __init__(self, models: list[str], upstreams: dict[str, str], started_unix: float | None = None) -> None:
        self.models = models
        self.upstreams = upstreams
        self.started = int(started_unix if started_unix is not None else time.time())

    def created(self, model: str) -> int:
        date = release_date(self.upstreams.get(model, model)) or release_date(model)
        if date is None:
            return self.started   # unknown: when this listener began serving it, never 1970
        return int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.timezone.utc).timestamp())

    def _openai(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": self.created(model), "owned_by": "atomr"}

    def _anthropic(self, model: str) -> dict[str, Any]:
        at = dt.datetime.fromtimestamp(self.created(model), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"type": "model", "id": model, "display_name": model, "created_at": at, "lifecycle": "active"}

    def listing(self, caller: Caller, anthropic: bool) -> dict[str, Any]:
        allowed = [m for m in self.models if caller.may_use(m)]
        if anthropic:
            return {"data": [self._anthropic(m) for m in allowed], "has_more": False,
                    "first_id": allowed[0] if allowed else None, "last_id": allowed[-1] if allowed else None}
        return {"object": "list", "data": [self._openai(m) for m in allowed]}

    def card(self, model: str, caller: Caller, anthropic: bool) -> dict[str, Any]:
        if model not in self.models or not caller.may_use(model):
            # Outside the key's allow-list reads as absent: a key learns nothing about others' models.
            raise FrontDoorError(404, f"no model {model!r} here", kind="not_found_error", code="model_not_found",
                                 param="model")
        return self._anthropic(model) if anthropic else self._openai(model)


def count_tokens(doc: dict[str, Any], models: list[str], caller: Caller) -> dict[str, Any]:
    """``POST /v1/messages/count_tokens``: the prompt's tokens by the gateway's tokenizer.

    The request is a Messages request without ``max_tokens``; it is checked like one and
    counted as the gateway would send it (system, turns, tool definitions)."""
    call = anthropic_dialect.parse({**doc, "max_tokens": 1, "stream": False})
    if call.model not in models:
        raise FrontDoorError(404, f"no model {call.model!r} here", kind="not_found_error", code="model_not_found",
                             param="model")
    if not caller.may_use(call.model):
        raise FrontDoorError(403, f"key {caller.name!r} may not use model {call.model!r}", kind="permission_error",
                             code="model_not_allowed", param="model")
    return {"input_tokens": prompt_tokens(call.messages, call.params), "counted_by": f"gateway:{TOKENIZER}"}
