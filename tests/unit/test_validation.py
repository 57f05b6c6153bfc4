"""Bad input is refused before anything is sent, with the parameter and the value named."""

import math

import pytest

from actors.core.validation import validate_request
from actors.errors import BadRequest
from actors.types import InferenceRequest


def req(**params):
    return InferenceRequest(model="m", messages=[{"role": "user", "content": "hi"}], params=params)


@pytest.mark.parametrize("name,value", [
    ("temperature", "hot"), ("temperature", 2.5), ("temperature", -0.1), ("temperature", math.nan),
    ("temperature", True), ("top_p", "x"), ("top_p", 1.01), ("top_k", -1), ("top_k", 1.5),
    ("max_tokens", 0), ("max_tokens", True), ("max_tokens", "10"), ("max_completion_tokens", -3),
    ("n", 0), ("n", 129), ("logprobs", "yes"), ("top_logprobs", 21), ("seed", 1.5), ("seed", False), ("presence_penalty", 3), ("frequency_penalty", "low"),
    ("stop", 5), ("stop", ["ok", 3]), ("stop", [""]), ("stop", ["s"] * 17),
    ("tools", {"name": "f"}), ("tools", [{"type": "function", "function": {"description": "no name"}}]),
    ("tools", [{"type": "retrieval"}]), ("tools", [{"function": {"name": "f", "parameters": "x"}}]),
    ("tool_choice", "always"), ("tool_choice", {"function": {}}),
])
def test_a_bad_parameter_is_refused_naming_it_and_its_value(name, value):
    error = validate_request(req(**{name: value}))
    assert isinstance(error, BadRequest), (name, value)
    assert f"params.{name} must be" in error.message and repr(value)[:20] in error.message


@pytest.mark.parametrize("params", [
    {}, {"temperature": 0}, {"temperature": 2}, {"temperature": 0.7, "top_p": 1, "top_k": 40},
    {"max_tokens": 1}, {"n": 1}, {"seed": -5}, {"presence_penalty": -2, "frequency_penalty": 2.0},
    {"stop": "END"}, {"stop": ["a", "b"]}, {"temperature": None},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    {"tools": [{"name": "flat"}]}, {"tool_choice": "auto"}, {"tool_choice": {"type": "function", "function": {"name": "f"}}},
    {"response_format": {"type": "json_object"}},  # not one of the common parameters: passed on as is
])
def test_valid_parameters_pass(params):
    assert validate_request(req(**params)) is None


def test_the_value_shown_is_bounded_and_redacted():
    error = validate_request(req(temperature="sk-abcdefghijklmnopqrstuvwxyz" + "x" * 500))
    assert "sk-abc" not in error.message and len(error.message) < 200


@pytest.mark.parametrize("deadline", [math.nan, math.inf, -math.inf, "soon", True])
def test_a_deadline_that_can_never_pass_is_refused(deadline):
    r = req()
    r.deadline_unix = deadline
    error = validate_request(r)
    assert isinstance(error, BadRequest) and "deadline_unix must be a finite number" in error.message


@pytest.mark.parametrize("params", [
    {"tool_choice": "none"}, {"tool_choice": "required"}, {"tool_choice": {"name": "f"}},
    {"stop": ["s"] * 16}, {"top_p": 0}, {"top_p": 1.0},
])
def test_the_edges_of_what_is_valid_pass(params):
    assert validate_request(req(**params)) is None


@pytest.mark.parametrize("params", [{"tools": ["not a tool"]}, {"tool_choice": "NONE"}, {"top_p": -0.01}])
def test_just_past_the_edges_is_refused(params):
    assert isinstance(validate_request(req(**params)), BadRequest)


def test_a_long_value_is_cut_at_80_characters_with_an_ellipsis():
    exactly = "y" * 78   # its repr is 80 characters: shown whole
    assert validate_request(req(temperature=exactly)).message.endswith(f"got '{exactly}'")
    longer = "z" * 79    # 81: cut to 80, and said so
    assert validate_request(req(temperature=longer)).message.endswith("got '" + "z" * 79 + "…")


def test_a_tool_of_another_type_is_refused_even_when_it_looks_like_a_function():
    flat = {"name": "f", "parameters": {"type": "object"}}
    assert validate_request(req(tools=[flat])) is None
    assert isinstance(validate_request(req(tools=[{"type": "web_search", **flat}])), BadRequest)
