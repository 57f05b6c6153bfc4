"""Cost of a call from its reported usage and a price table (USD per million tokens)."""

from __future__ import annotations

import functools
from importlib import resources

import yaml

from .config import Price
from .messages import Usage

__all__ = ["lookup_price", "cost_usd", "price_table"]

# Which table a provider's model names live in; gateways may serve anything.
_FAMILY = {"openai": ("openai",), "openai_responses": ("openai",), "azure_openai": ("openai",),
           "anthropic": ("anthropic",), "gemini": ("gemini",), "cohere": ("cohere",), "bedrock": ("bedrock",)}
_VERSION_SEPARATORS = "-@:."


@functools.cache
def price_table() -> dict[str, dict[str, Price]]:
    raw = yaml.safe_load(resources.files("actors").joinpath("data/pricing.yaml").read_text(encoding="utf-8"))
    return {family: {model: Price(**entry) for model, entry in models.items()} for family, models in raw.items()}


def _match(models: dict[str, Price], name: str) -> Price | None:
    if name in models:
        return models[name]
    best = None
    for model, price in models.items():
        if name.startswith(model) and name[len(model)] in _VERSION_SEPARATORS:
            if best is None or len(model) > len(best[0]):
                best = (model, price)
    return best[1] if best else None


def lookup_price(provider: str, model: str) -> Price | None:
    table = price_table()
    # Bedrock ids may carry a region prefix ("us.anthropic..."), gateways a provider prefix ("openai/gpt-4o").
    names = [model, model.rsplit("/", 1)[-1], model.split(".", 1)[-1] if model[:3] in ("us.", "eu.") else model]
    families = _FAMILY.get(provider, tuple(table)) + ("mock",)
    for name in dict.fromkeys(names):
        for family in families:
            price = _match(table.get(family, {}), name)
            if price is not None:
                return price
    return None


def cost_usd(usage: Usage, price: Price | None) -> float | None:
    """None when the price or the usage is unknown: an unknown cost is never reported as 0."""
    if price is None or not usage.reported:
        return None
    cached = min(usage.cached_input_tokens, usage.input_tokens) if price.cached_input is not None else 0
    cached_price = price.cached_input if price.cached_input is not None else price.input
    total = ((usage.input_tokens - cached) * price.input + cached * cached_price
             + usage.output_tokens * price.output)
    return round(total / 1_000_000, 10)
