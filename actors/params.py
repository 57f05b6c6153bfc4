"""The types of what a caller passes to ``GatewayClient``: messages, tools, the call's parameters.

Typed as the openai SDK types its own (``ChatCompletionMessageParam``, ``NotGiven``, ...), so a
program that type-checks against the SDK type-checks here, and mypy reports a misspelt
parameter or a value of the wrong type before the call is made. The keys of
:class:`CallParams` are the keywords of ``complete()``, ``stream()`` and ``request()``;
a parameter left out is not sent. Only ``typing`` here: nothing runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, Required, Self, TypeAlias, TypedDict

__all__ = [
    "NotGiven", "NOT_GIVEN",
    "TextPart", "ImageURL", "ImagePart", "ContentPart",
    "SystemMessage", "DeveloperMessage", "UserMessage", "AssistantMessage", "ToolMessage", "MessageParam",
    "FunctionCallParam", "ToolCallParam", "FunctionDefinition", "ToolParam", "NamedToolChoice", "ToolChoiceParam",
    "JSONSchema", "ResponseFormatText", "ResponseFormatJSONObject", "ResponseFormatJSONSchema", "ResponseFormatParam",
    "PriorityParam", "CallParams", "CALL_PARAMS", "GENERATION_PARAMS",
]


class NotGiven:
    """The type of ``NOT_GIVEN``: a parameter left out, where None is a value the provider understands.

    ``complete(..., max_tokens=NOT_GIVEN)`` is ``complete(...)``: useful to forward an optional value.
    """

    _instance: NotGiven | None = None

    def __new__(cls) -> Self:
        if not isinstance(cls._instance, cls):
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __reduce__(self) -> tuple[type[NotGiven], tuple[()]]:
        return (NotGiven, ())   # one instance per process, also after crossing one


NOT_GIVEN: Final = NotGiven()


# --- messages ----------------------------------------------------------------------------

class TextPart(TypedDict):
    type: Literal["text"]
    text: str


class ImageURL(TypedDict, total=False):
    url: Required[str]                       # an https URL or a data: URL
    detail: Literal["auto", "low", "high"]


class ImagePart(TypedDict):
    """Passed to the providers that take images; the others answer with their own error."""

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart: TypeAlias = TextPart | ImagePart


class SystemMessage(TypedDict, total=False):
    role: Required[Literal["system"]]
    content: Required[str | list[TextPart]]
    name: str


class DeveloperMessage(TypedDict, total=False):
    """OpenAI's newer name for a system message; the gateway treats both alike."""

    role: Required[Literal["developer"]]
    content: Required[str | list[TextPart]]
    name: str


class UserMessage(TypedDict, total=False):
    role: Required[Literal["user"]]
    content: Required[str | list[ContentPart]]
    name: str


class FunctionCallParam(TypedDict):
    name: str
    arguments: str   # the JSON text of the arguments, as the model produced it


class ToolCallParam(TypedDict):
    """A tool call the assistant made earlier in the conversation (``Completed.tool_calls``, as sent back)."""

    id: str
    type: Literal["function"]
    function: FunctionCallParam


class AssistantMessage(TypedDict, total=False):
    role: Required[Literal["assistant"]]
    content: str | list[TextPart] | None     # may be left out (or None) when it made tool calls
    tool_calls: list[ToolCallParam]
    name: str


class ToolMessage(TypedDict):
    """A tool's answer to the call ``tool_call_id`` of the assistant's previous message."""

    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


MessageParam: TypeAlias = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


# --- tools -------------------------------------------------------------------------------

class FunctionDefinition(TypedDict, total=False):
    name: Required[str]
    description: str
    parameters: Mapping[str, object]    # a JSON Schema object; left out: no parameters
    strict: bool | None


class ToolParam(TypedDict):
    type: Literal["function"]
    function: FunctionDefinition


class _ToolName(TypedDict):
    name: str


class NamedToolChoice(TypedDict):
    """Make the model call this function."""

    type: Literal["function"]
    function: _ToolName


ToolChoiceParam: TypeAlias = Literal["none", "auto", "required"] | NamedToolChoice


# --- response format ---------------------------------------------------------------------

class ResponseFormatText(TypedDict):
    type: Literal["text"]


class ResponseFormatJSONObject(TypedDict):
    type: Literal["json_object"]


class JSONSchema(TypedDict, total=False):
    name: Required[str]
    description: str
    schema: Mapping[str, object]
    strict: bool | None


class ResponseFormatJSONSchema(TypedDict):
    type: Literal["json_schema"]
    json_schema: JSONSchema


ResponseFormatParam: TypeAlias = ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema

# A level's name, or its number (0 background .. 4 critical; ``core.priority_queue.Priority`` is one).
PriorityParam: TypeAlias = Literal["background", "low", "normal", "high", "critical"] | int


# --- the call's parameters ---------------------------------------------------------------

class CallParams(TypedDict, total=False):
    """The keywords of ``GatewayClient.complete()``, ``stream()`` and ``request()``; every one optional.

    Generation parameters are OpenAI's (each runner translates them for its provider); None is
    sent as None, ``NOT_GIVEN`` or leaving it out sends nothing. ``extra_body`` carries any other
    provider parameter as is. The rest describe the call itself.
    """

    # generation (sent to the provider)
    max_tokens: int | None | NotGiven
    temperature: float | None | NotGiven
    top_p: float | None | NotGiven
    stop: str | list[str] | None | NotGiven
    tools: list[ToolParam] | None | NotGiven
    tool_choice: ToolChoiceParam | None | NotGiven
    seed: int | None | NotGiven
    n: int | None | NotGiven
    presence_penalty: float | None | NotGiven
    frequency_penalty: float | None | NotGiven
    response_format: ResponseFormatParam | None | NotGiven
    user: str | None | NotGiven
    extra_body: Mapping[str, object] | None
    # the call
    metadata: Mapping[str, str] | None          # kept with the call: the ledger, the logs
    priority: PriorityParam
    timeout_s: float | None | NotGiven          # the whole call's deadline; None or left out: the client's
    idempotent: bool                            # may it be sent to another deployment after it was sent once
    request_id: str | None
    fallbacks: list[str] | tuple[str, ...] | None   # replaces routing.fallbacks of the model for this call


CALL_PARAMS: Final = frozenset(CallParams.__optional_keys__)
GENERATION_PARAMS: Final = ("max_tokens", "temperature", "top_p", "stop", "tools", "tool_choice", "seed", "n",
                            "presence_penalty", "frequency_penalty", "response_format", "user")
