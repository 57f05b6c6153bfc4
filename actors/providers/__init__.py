"""Provider runners, one module each, and the one registry of provider names.

Each runner class carries its provider name (``provider``, the ``provider:`` of a
deployment) and the family of models it serves (``family``, the table its prices and
context windows are looked up in, ``actors/data/pricing.yaml`` and ``context_windows.yaml``;
None for a gateway that may serve any model). Nothing else lists providers: adding a
runner here is what makes a provider name valid in a config.
"""

from __future__ import annotations

from actors.errors import ConfigError
from actors.providers.anthropic import AnthropicRunner
from actors.providers.base import ModelRunner
from actors.providers.bedrock import BedrockRunner
from actors.providers.cohere import CohereRunner
from actors.providers.gemini import GeminiRunner
from actors.providers.openai import AzureOpenAIRunner, OpenAIChatRunner, OpenAICompatibleRunner
from actors.providers.openai_responses import OpenAIResponsesRunner
from actors.settings.schema import DeploymentConfig

__all__ = ["make_runner", "runner_class", "RUNNERS", "PROVIDERS"]

RUNNERS: tuple[type[ModelRunner], ...] = (OpenAIChatRunner, OpenAIResponsesRunner, AzureOpenAIRunner,
                                          OpenAICompatibleRunner, AnthropicRunner, GeminiRunner, CohereRunner,
                                          BedrockRunner)
_BY_NAME: dict[str, type[ModelRunner]] = {cls.provider: cls for cls in RUNNERS}
PROVIDERS: tuple[str, ...] = tuple(_BY_NAME)


def runner_class(provider: str) -> type[ModelRunner]:
    try:
        return _BY_NAME[provider]
    except (KeyError, TypeError):
        raise ConfigError(f"expected one of {', '.join(repr(p) for p in PROVIDERS)}, got {provider!r}",
                          path="provider") from None


def make_runner(deployment: DeploymentConfig) -> ModelRunner:
    return runner_class(deployment.provider)(deployment)
