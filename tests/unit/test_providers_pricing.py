"""The price table: versioned names find their model, variants and unknown models stay
unknown (never 0), and a deployment's own ``pricing:`` wins."""

from __future__ import annotations

import pytest

from actors.core.pricing import Price
from actors.types import Usage
from actors.core.pricing import cost_usd, lookup_price, price_table
from actors.core.routing import context_windows
from actors.providers import PROVIDERS, RUNNERS, runner_class

from test_providers_wire import runner_for


@pytest.mark.parametrize("provider,model,entry", [
    ("openai", "gpt-4o-mini", ("openai", "gpt-4o-mini")),
    ("openai", "gpt-4o-mini-2024-07-18", ("openai", "gpt-4o-mini")),  # the longest name wins over gpt-4o
    ("openai", "gpt-4o-2024-08-06", ("openai", "gpt-4o")),
    ("openai", "gpt-4o-2024-05-13", ("openai", "gpt-4o-2024-05-13")),  # an exact dated entry wins over its prefix
    ("openai_responses", "o3-mini-2025-01-31", ("openai", "o3-mini")),
    ("azure_openai", "gpt-4.1-nano-2025-04-14", ("openai", "gpt-4.1-nano")),
    ("anthropic", "claude-3-5-haiku-20241022", ("anthropic", "claude-3-5-haiku")),
    ("anthropic", "claude-opus-4-1-20250805", ("anthropic", "claude-opus-4-1")),
    ("anthropic", "claude-3-7-sonnet-latest", ("anthropic", "claude-3-7-sonnet")),
    ("anthropic", "claude-3-5-haiku@20241022", ("anthropic", "claude-3-5-haiku")),  # Vertex spelling
    ("gemini", "gemini-2.5-flash-preview-05-20", ("gemini", "gemini-2.5-flash")),
    ("gemini", "gemini-2.5-flash-lite", ("gemini", "gemini-2.5-flash-lite")),
    ("gemini", "gemini-2.0-flash-001", ("gemini", "gemini-2.0-flash")),
    ("cohere", "command-r-08-2024", ("cohere", "command-r")),
    ("cohere", "command-r-plus-08-2024", ("cohere", "command-r-plus")),
    ("cohere", "command-r7b-12-2024", ("cohere", "command-r7b")),
    ("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", ("bedrock", "anthropic.claude-3-5-sonnet")),
    ("bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0", ("bedrock", "anthropic.claude-sonnet-4")),
    ("bedrock", "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.amazon.nova-lite-v1:0",
     ("bedrock", "amazon.nova-lite")),
    ("openai_compatible", "openai/gpt-4o-mini", ("openai", "gpt-4o-mini")),  # a gateway's provider/model name
    ("openai_compatible", "claude-3-5-haiku-20241022", ("anthropic", "claude-3-5-haiku")),
    ("cohere", "mock-command", ("mock", "mock-command")),
])
def test_versioned_names_find_their_entry(provider, model, entry):
    family, name = entry
    assert lookup_price(runner_class(provider).family, model) == price_table()[family][name]


@pytest.mark.parametrize("provider,model", [
    ("openai", "o1-pro"),                    # a variant, not a version of o1
    ("openai", "gpt-4o-audio-preview"),      # priced differently from gpt-4o
    ("gemini", "gemini-1.5-flash-8b"),       # "8b" names a smaller model
    ("openai", "my-fine-tune"),
    ("openai_compatible", "meta-llama/Llama-3.1-8B-Instruct"),
    ("bedrock", "cohere.command-r-v1:0"),    # not in the Bedrock table
    ("gemini", "gpt-4o"),                    # the provider decides the table
])
def test_unknown_models_have_no_price(provider, model):
    assert lookup_price(runner_class(provider).family, model) is None


def test_unknown_price_or_usage_is_an_unknown_cost_never_zero():
    usage = Usage(1000, 100)
    assert cost_usd(usage, None) is None
    assert cost_usd(Usage(reported=False), Price(1, 2)) is None
    assert cost_usd(Usage(0, 0), Price(1, 2)) == 0.0  # a reported zero is a real zero


def test_cost_bills_cached_input_at_its_own_price_when_there_is_one():
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000, cached_input_tokens=400_000)
    assert cost_usd(usage, Price(input=2.0, output=8.0, cached_input=0.5)) == pytest.approx(
        0.6 * 2.0 + 0.4 * 0.5 + 0.5 * 8.0)
    assert cost_usd(usage, Price(input=2.0, output=8.0)) == pytest.approx(2.0 + 4.0)


def test_every_table_entry_is_a_valid_price_with_a_version():
    for family, models in price_table().items():
        for name, price in models.items():
            assert price.input >= 0 and price.output >= 0 and price.version, (family, name)


def test_a_deployment_pricing_section_overrides_the_table():
    override = {"input": 9.0, "output": 99.0, "cached_input": 0.9, "version": "contract 2025"}
    runner = runner_for("openai", pricing=override)
    assert runner.price() == Price(**override)
    assert runner_for("openai").price() == price_table()["openai"]["gpt-4o-mini"]
    assert runner_for("openai", upstream_model="my-fine-tune").price() is None
    assert runner_for("openai", upstream_model="my-fine-tune", pricing=override).price() == Price(**override)


def test_one_registry_each_runner_names_its_provider_and_its_tables():
    assert PROVIDERS == tuple(cls.provider for cls in RUNNERS) and len(set(PROVIDERS)) == len(PROVIDERS)
    for cls in RUNNERS:
        assert runner_class(cls.provider) is cls
        if cls.family is not None:   # a gateway (None) looks in every table
            assert cls.family in price_table() and cls.family in context_windows(), cls


@pytest.mark.parametrize("prices", [dict(input=-1, output=1), dict(input=1, output=-0.01),
                                    dict(input=1, output=1, cached_input=-1)])
def test_a_negative_price_is_refused_whichever_it_is(prices):
    with pytest.raises(ValueError, match="^prices must be >= 0$"):
        Price(**prices)


def test_zero_prices_are_prices():
    assert Price(input=0, output=0, cached_input=0).cached_input == 0


def test_only_a_geography_prefix_is_dropped_and_any_gateway_path():
    claude = lookup_price("anthropic", "claude-3-5-sonnet-20241022")
    assert claude is not None and lookup_price("anthropic", "us.claude-3-5-sonnet-20241022") == claude
    # a dotted prefix that is not a geography names another model: unknown, not priced as this one
    assert lookup_price("anthropic", "mycorp.claude-3-5-sonnet-20241022") is None
    gpt = lookup_price("openai", "gpt-4o")
    assert gpt is not None and lookup_price("openai", "openrouter/openai/gpt-4o") == gpt


def test_a_family_without_a_table_falls_back_to_mock_only():
    assert lookup_price("no-such-family", "gpt-4o") is None


def test_the_longest_versioned_entry_wins():
    from actors.core.pricing import _match
    table = {"m": 1, "m-1": 2, "m-1-2": 3}
    assert _match(table, "m-1-2-20250101") == 3 and _match(table, "m-1-20250101") == 2 and _match(table, "m-x") is None


def test_a_price_without_a_cached_rate_bills_cached_tokens_at_the_input_rate():
    usage = Usage(1_000_000, 0, cached_input_tokens=400_000)
    assert cost_usd(usage, Price(input=2.0, output=8.0)) == 2.0
    assert cost_usd(usage, Price(input=2.0, output=8.0, cached_input=0.5)) == 0.6 * 2.0 + 0.4 * 0.5
    # more cached tokens than input tokens (a provider's rounding) never bills negative input
    assert cost_usd(Usage(10, 0, cached_input_tokens=50), Price(input=1.0, output=1.0, cached_input=0.0)) == 0.0
