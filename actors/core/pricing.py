"""Cost of a call from its reported usage and a price table (USD per million tokens)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Mapping, TypeVar

import yaml

from actors.types import Usage

__all__ = ["lookup_price", "cost_usd", "price_table", "families"]

# What may follow a table name in a priced model id: dates, version numbers and tags
# ("-2024-07-18", "-20240620-v1:0", "@20241022", "-latest", "-preview-05-20"). A word such as
# "-mini" or "-8b" names another model, whose cost is then unknown rather than wrong.
_VERSION = re.compile(r"(?:[-@.:](?:\d+|v\d+|latest|preview|exp))+")
# Bedrock cross-region inference profiles prefix the model id with a geography.
_GEOGRAPHIES = ("us", "eu", "apac", "global", "us-gov", "jp", "au", "ca")


@functools.cache
def price_table() -> dict[str, dict[str, Price]]:
    raw = yaml.safe_load(resources.files("actors").joinpath("data/pricing.yaml").read_text(encoding="utf-8"))
    return {family: {model: Price(**entry) for model, entry in models.items()} for family, models in raw.items()}


T = TypeVar("T")


def _match(models: Mapping[str, T], name: str) -> T | None:
    """The exact entry, else the longest entry that ``name`` is a versioned form of."""
    if name in models:
        return models[name]
    versioned = [m for m in models if name.startswith(m) and _VERSION.fullmatch(name, len(m))]
    # Every candidate is a prefix of ``name``, so the greatest is the longest.
    return models[max(versioned)] if versioned else None


def _names(model: str) -> list[str]:
    """``model`` and the forms it is priced under: gateways prefix a provider ("openai/gpt-4o"),
    Bedrock ARNs a path, inference profiles a geography ("us.anthropic.claude-...")."""
    name = model.split("/")[-1]
    geography, _, rest = name.partition(".")
    return list(dict.fromkeys([model, name] + ([rest] if geography in _GEOGRAPHIES and rest else [])))


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None
    version: str = ""

    def __post_init__(self) -> None:
        if any(p < 0 for p in (self.input, self.output, self.cached_input) if p is not None):
            raise ValueError("prices must be >= 0")


def families(family: str | None, tables: Mapping[str, object]) -> tuple[str, ...]:
    """The tables a model of ``family`` is looked up in (a runner's ``family``; None: all of them)."""
    return ((family,) if family is not None else tuple(tables)) + ("mock",)


def lookup_price(family: str | None, model: str) -> Price | None:
    table = price_table()
    for name in _names(model):
        for name_of_table in families(family, table):
            price = _match(table.get(name_of_table, {}), name)
            if price is not None:
                return price
    return None


def cost_usd(usage: Usage, price: Price | None) -> float | None:
    """None when the price or the usage is unknown: an unknown cost is never reported as 0."""
    if price is None or not usage.reported:
        return None
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    total = ((usage.input_tokens - cached) * price.input + cached * cached_price
             + usage.output_tokens * price.output)
    return round(total / 1_000_000, 10)
