"""The public API type-checks as the openai SDK's does: ``mypy --strict`` on a caller's program.

A program using the client as the README shows passes; each line of a second program that
passes a wrong type, a misspelt keyword or a malformed message is reported, and no other.
The package is seen as a caller sees an installed one (its own modules are not checked here:
``.ci/run`` checks them with ``--strict``).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

GOOD = '''
from actors import NOT_GIVEN, Completed, GatewayClient, InferenceError, NotGiven, RateLimited, Stream
from actors.params import CallParams, MessageParam, ToolParam

WEATHER: ToolParam = {"type": "function", "function": {"name": "weather", "description": "The weather in a city",
                                                       "parameters": {"type": "object"}}}


def ask(gw: GatewayClient, question: str, limit: int | NotGiven = NOT_GIVEN) -> str:
    history: list[MessageParam] = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": question},
                                     {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    result: Completed = gw.complete("demo", history, max_tokens=limit, temperature=0.2, stop=["\\n\\n"],
                                    tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "weather"}},
                                    response_format={"type": "json_object"}, priority="high", timeout_s=30,
                                    metadata={"team": "search"}, fallbacks=["backup"], extra_body={"top_k": 3})
    return result.text + str(result.usage.total_tokens) + str(result.cost_usd)


def follow(gw: GatewayClient) -> str | None:
    options: CallParams = {"max_tokens": 50, "seed": 7}
    with gw.stream("demo", [{"role": "user", "content": "Tell me more"}], **options) as stream:
        for chunk in stream:
            print(chunk.text, end="")
    done = stream.result
    return done.finish_reason if done is not None else None


def main() -> None:
    with GatewayClient(1900, timeout_s=60) as gw:
        try:
            print(ask(gw, "Say hello", 50), follow(gw))
        except RateLimited as exc:
            print(exc.retry_after_s)
        except InferenceError as exc:
            print(exc.retryable, [a.deployment for a in exc.attempt_log], exc.request_id)
        vectors = gw.embed("embedder", ["one", "two"], dimensions=256).embeddings
        held: Stream = gw.stream("demo", [{"role": "developer", "content": "hi"}], tool_choice="auto")
        held.close()
        print(len(vectors), gw.request("demo", [{"role": "user", "content": "x"}], stream=True).request_id)
'''

BAD = '''
from actors import GatewayClient


def wrong(gw: GatewayClient) -> None:
    gw.complete("demo", [{"role": "user", "content": "hi"}], max_tokens="50")  # E: "max_tokens"
    gw.complete("demo", [{"role": "user", "content": "hi"}], max_tokenz=50)  # E: Unexpected keyword argument "max_tokenz"
    gw.stream("demo", [{"role": "user", "content": "hi"}], tool_choice="always")  # E: "tool_choice"
    gw.complete("demo", [{"role": "user", "content": "hi"}], priority="urgent")  # E: "priority"
    gw.complete("demo", [{"role": "user", "content": 42}])  # E: List item 0 has incompatible type
    gw.complete("demo", [{"role": "tool", "content": "sunny"}])  # E: List item 0 has incompatible type
    gw.complete("demo", [{"role": "user", "content": "hi"}], stream=True)  # E: Unexpected keyword argument "stream"
    text: int = gw.complete("demo", [{"role": "user", "content": "hi"}]).text  # E: Incompatible types in assignment
    gw.embed("embedder", ["one"], dimensions="256")  # E: "dimensions"
'''


# mypy's incremental cache, kept between runs (per tree and user): the package and its dependencies
# are analysed again only when they change (mypy checks each cached module against its source).
CACHE = Path(tempfile.gettempdir()) / f"atomr-mypy-{os.getuid()}-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"


def _mypy(tmp_path: Path, *programs: str) -> str:
    for name, source in zip(("good.py", "bad.py"), programs, strict=False):
        (tmp_path / name).write_text(textwrap.dedent(source))
    # As a caller's checker sees an installed package: this tree's, its own errors not reported.
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
                          "--cache-dir", str(CACHE), "--hide-error-context",
                          *[name for name in ("good.py", "bad.py")[:len(programs)]]],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode in (0, 1), out.stderr
    return out.stdout


def test_a_program_using_the_public_api_type_checks_strictly_and_each_wrong_call_is_reported(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    report = _mypy(tmp_path, GOOD, BAD)
    errors = [line for line in report.splitlines() if ": error:" in line]
    assert not [line for line in errors if line.startswith("good.py")], report
    expected = {}
    for number, line in enumerate(textwrap.dedent(BAD).splitlines(), start=1):
        if "# E: " in line:
            expected[number] = line.split("# E: ", 1)[1]
    reported: dict[int, list[str]] = {}
    for line in errors:
        match = re.match(r"bad\.py:(\d+): error: (.*)", line)
        assert match, f"an error outside the programs: {line}"
        reported.setdefault(int(match.group(1)), []).append(match.group(2))
    assert sorted(reported) == sorted(expected), report
    for number, fragment in expected.items():
        assert any(fragment in message for message in reported[number]), (number, fragment, reported[number])
