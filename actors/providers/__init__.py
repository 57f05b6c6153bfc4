"""Provider runners, one module each, registered by provider name."""

from __future__ import annotations

import importlib

from actors.settings.schema import DeploymentConfig
from actors.errors import ConfigError
from actors.providers.base import ModelRunner

__all__ = ["make_runner", "runner_class"]

_RUNNERS = {
    "openai": ("openai", "OpenAIChatRunner"),
    "openai_compatible": ("openai", "OpenAICompatibleRunner"),
    "azure_openai": ("openai", "AzureOpenAIRunner"),
    "openai_responses": ("openai_responses", "OpenAIResponsesRunner"),
    "anthropic": ("anthropic", "AnthropicRunner"),
    "gemini": ("gemini", "GeminiRunner"),
    "cohere": ("cohere", "CohereRunner"),
    "bedrock": ("bedrock", "BedrockRunner"),
}


def runner_class(provider: str) -> type[ModelRunner]:
    try:
        module, name = _RUNNERS[provider]
    except KeyError:
        raise ConfigError(f"provider {provider!r} has no runner; known: {', '.join(sorted(_RUNNERS))}",
                          path="provider") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def make_runner(deployment: DeploymentConfig) -> ModelRunner:
    return runner_class(deployment.provider)(deployment)
