"""Stream transcripts (tests/fixtures/<provider>/*.sse, *.bin) through each runner's real
decoder, whole and in every kind of chunk split: the same deltas, the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import errors as E
from actors.types import Usage
from actors.providers.base import StreamAccumulator

from test_providers_wire import runner_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def usage(input_tokens, output_tokens, cached=0, reasoning=0):
    return Usage(input_tokens, output_tokens, cached, reasoning)


# (provider, transcript) -> what the caller must get. Tools are (id, name, parsed arguments).
CASES = {
    ("openai", "text.sse"): dict(text="Bonjour à tous — 日本語も 🙂", finish=("stop", "stop"),
                                 usage=usage(2006, 300, cached=1920)),
    ("openai", "tool_calls.sse"): dict(
        tools=[("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", {"location": "Paris, France"}),
               ("call_Bogota2", "get_weather", {"location": "Bogotá"})],
        finish=("tool_calls", "tool_calls"), usage=usage(83, 215, reasoning=192)),
    ("openai", "content_filter.sse"): dict(text="I can", finish=("content_filter", "content_filter"),
                                           usage=usage(12, 2)),
    ("openai", "error_midstream.sse"): dict(text="Once upon", error=E.ServerError),
    ("openai_responses", "text.sse"): dict(text="Hello, Zoë! ✨", finish=("stop", "completed"),
                                           usage=usage(1540, 139, cached=1408, reasoning=128)),
    ("openai_responses", "function_call.sse"): dict(
        tools=[("call_12345xyz", "get_weather", {"location": "Paris, France"}),
               ("call_67890abc", "get_time", {"tz": "Europe/Paris"})],
        finish=("tool_calls", "completed"), usage=usage(291, 38)),
    ("openai_responses", "incomplete_max_tokens.sse"): dict(text="The history of", usage=usage(20, 3),
                                                            finish=("length", "max_output_tokens")),
    ("openai_responses", "incomplete_content_filter.sse"): dict(text="Sure, here", usage=usage(31, 2),
                                                                finish=("content_filter", "content_filter")),
    ("openai_responses", "failed.sse"): dict(text="Partial", error=E.ServerError, usage=usage(12, 1)),
    ("openai_responses", "error_event.sse"): dict(error=E.RateLimited),
    ("anthropic", "text.sse"): dict(text="Hello! Grüße aus Köln 🌍", finish=("stop", "end_turn"),
                                    usage=usage(25 + 2048, 15, cached=2048)),
    ("anthropic", "tool_use.sse"): dict(
        text="Let me check.", tools=[("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", {"location": "San Francisco, CA"})],
        finish=("tool_calls", "tool_use"), usage=usage(472, 89)),
    ("anthropic", "overloaded.sse"): dict(text="Well", error=E.Overloaded, usage=usage(10, 1)),
    ("anthropic", "refusal.sse"): dict(text="I can't", finish=("content_filter", "refusal"), usage=usage(40, 3)),
    ("gemini", "text.sse"): dict(text="Hola, ¿qué tal? 👋", finish=("stop", "STOP"),
                                 usage=usage(1200, 7 + 38, cached=1024, reasoning=38)),
    ("gemini", "function_call.sse"): dict(
        tools=[("call_0_get_weather", "get_weather", {"location": "Paris, France", "unit": "celsius"}),
               ("call_1_get_time", "get_time", {"tz": "Europe/Paris"})],
        finish=("tool_calls", "STOP"), usage=usage(74, 22)),
    ("gemini", "safety.sse"): dict(text="Here is how", finish=("content_filter", "SAFETY"), usage=usage(15, 3)),
    ("gemini", "max_tokens.sse"): dict(text="Lorem ipsum dolor sit", finish=("length", "MAX_TOKENS"),
                                       usage=usage(5, 4)),
    ("gemini", "prompt_blocked.sse"): dict(error=E.ContentFiltered, usage=usage(9, 0)),
    ("gemini", "error_midstream.sse"): dict(text="The answer", error=E.ServerError, usage=usage(5, 2)),
    ("cohere", "text.sse"): dict(text="Coca-Cola is a soft drink — très connu.", finish=("stop", "COMPLETE"),
                                 usage=usage(77, 9)),
    ("cohere", "tool_call.sse"): dict(
        tools=[("get_weather_nsz5zm3w56q3", "get_weather", {"location": "Madrid"}),
               ("get_weather_0ggmn2wdwvf9", "get_weather", {"location": "Toronto"})],
        finish=("tool_calls", "TOOL_CALL"), usage=usage(912, 71)),
    ("cohere", "max_tokens.sse"): dict(text="Once upon a time", finish=("length", "MAX_TOKENS"), usage=usage(6, 4)),
    ("cohere", "error_midstream.sse"): dict(text="The first", error=E.ServerError),
    ("bedrock", "text.bin"): dict(text="Bonjour le monde — ça va ? 😀", finish=("stop", "end_turn"),
                                  usage=usage(19 + 2048, 12, cached=2048)),
    ("bedrock", "tool_use.bin"): dict(
        text="I'll check.", tools=[("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "get_weather", {"location": "Seattle, WA"})],
        finish=("tool_calls", "tool_use"), usage=usage(412, 96)),
    ("bedrock", "throttling.bin"): dict(text="Partial", error=E.RateLimited),
    ("bedrock", "guardrail.bin"): dict(text="Sorry, the model cannot answer this question.", usage=usage(30, 9),
                                       finish=("content_filter", "guardrail_intervened")),
    ("bedrock", "validation.bin"): dict(error=E.ContextLengthExceeded),
}
SPLITS = (1, 2, 3, 5, 7, 13, 64, 257)


def transcript(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / name).read_bytes()


def decode(provider: str, data: bytes, cuts: list[int]) -> list:
    """All deltas of ``data`` fed to a fresh decoder in the pieces that ``cuts`` mark."""
    decoder = runner_for(provider).stream_decoder()
    deltas, start = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        deltas += decoder.feed(data[start:cut])
        start = cut
    return deltas + decoder.close()


def test_every_transcript_has_expectations():
    found = {(p.parent.name, p.name) for p in FIXTURES.glob("*/*") if p.suffix in (".sse", ".bin")}
    assert found == set(CASES)


@pytest.mark.parametrize("provider,name", sorted(CASES))
def test_transcript_gives_the_expected_result_in_any_split(provider, name):
    data, expected = transcript(provider, name), CASES[(provider, name)]
    whole = decode(provider, data, [])
    for size in SPLITS:
        assert decode(provider, data, list(range(size, len(data), size))) == whole, f"split every {size} bytes"
    acc = StreamAccumulator()
    for delta in whole:
        acc.add(delta)
    assert acc.text == expected.get("text", "")
    calls = [(c.id, c.name, json.loads(c.arguments)) for c in acc.tool_calls()]
    assert calls == expected.get("tools", [])
    if "error" in expected:
        assert type(acc.error) is expected["error"] and acc.error.provider == provider, acc.error
    else:
        assert acc.error is None and acc.complete
        assert (acc.finish_reason, acc.raw_finish_reason) == expected["finish"]
    if "usage" in expected:
        assert acc.usage == expected["usage"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(sorted(CASES)), data=st.data())
def test_random_splits_give_the_same_deltas(case, data):
    raw = transcript(*case)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=40))
    assert decode(case[0], raw, cuts) == decode(case[0], raw, [])


def test_bedrock_binaries_hold_exactly_the_frames_documented_beside_them():
    from actors.providers.aws import EventStreamDecoder

    documented = json.loads((FIXTURES / "bedrock" / "frames.json").read_text(encoding="utf-8"))
    for name, frames in documented.items():
        decoded = EventStreamDecoder().feed(transcript("bedrock", f"{name}.bin"))
        assert [(headers, json.loads(payload)) for headers, payload in decoded] == [tuple(f) for f in frames], name


@pytest.mark.parametrize("provider,name", [("gemini", "text.sse"), ("openai", "text.sse"), ("cohere", "text.sse")])
def test_a_stream_cut_mid_event_is_not_complete(provider, name):
    data = transcript(provider, name)
    acc = StreamAccumulator()
    for delta in decode(provider, data[: len(data) * 2 // 3], []):
        acc.add(delta)
    assert acc.text and not acc.complete  # the worker turns this into a StreamError


def test_a_bedrock_stream_cut_mid_frame_is_a_stream_error():
    data = transcript("bedrock", "text.bin")
    decoder = runner_for("bedrock").stream_decoder()
    assert decoder.feed(data[:-10])
    with pytest.raises(E.StreamError, match="bytes into a message"):
        decoder.close()
