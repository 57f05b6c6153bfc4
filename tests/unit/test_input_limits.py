"""What the gateway refuses to take in, and what of an upstream's error it passes on (issue 21).

Pure parts only: request validation (nesting, absurd values), the configuration checks of the
HTTP listener (no keyless listener by accident, keys whose models nobody serves, the limits),
the rule for an upstream's error text, and the log that counts a flood instead of writing it.
The same behaviour over real sockets: tests/process/test_http_front_door.py.
"""

from __future__ import annotations

import pytest

from actors.core.classify import classify_http_status
from actors.core.log_limit import LineLimiter
from actors.core.upstream_text import for_log, strip_internals, trimmed
from actors.core.validation import MAX_NESTING, MAX_TOKENS_CEILING, param_problem, too_deep, validate_request
from actors.errors import ConfigError
from actors.runtime.protocol import Deploy, SessionInit
from actors.runtime.watchdog import WatchLauncher
from actors.settings.loader import config_warnings, http_section, parse_config
from actors.settings.schema import HttpConfig
from actors.types import InferenceRequest

HI = [{"role": "user", "content": "hi"}]
DEPLOYMENTS = [{"name": "gpt-east", "model": "gpt", "provider": "openai", "endpoint": "http://127.0.0.1:9/v1"}]


def nested(depth: int, leaf: object = "x") -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# --- validation -----------------------------------------------------------------------------

def test_nesting_is_measured_without_recursion():
    assert not too_deep(nested(MAX_NESTING)) and too_deep(nested(MAX_NESTING + 1))
    assert too_deep(nested(100_000))                     # no RecursionError on the way
    assert not too_deep({"a": [{"b": "c"}]}, 3) and too_deep({"a": [{"b": ["c"]}]}, 3)
    assert not too_deep("a string is no level") and not too_deep(42)


@pytest.mark.parametrize("params,name,says", [
    ({"max_tokens": 10**30}, "max_tokens", f"at most {MAX_TOKENS_CEILING}"),
    ({"max_tokens": MAX_TOKENS_CEILING + 1}, "max_tokens", "more than any model's limit"),
    ({"max_completion_tokens": 10**9}, "max_completion_tokens", f"at most {MAX_TOKENS_CEILING}"),
    ({"temperature": float("nan")}, "temperature", "in [0, 2]"),
    ({"response_format": nested(MAX_NESTING + 5)}, "response_format", f"deeper than {MAX_NESTING} levels"),
])
def test_an_absurd_or_pathological_parameter_is_named(params, name, says):
    problem = param_problem(params)
    assert problem is not None and problem[0] == name and says in problem[1] and problem[1].startswith(name)
    assert param_problem({"max_tokens": MAX_TOKENS_CEILING, "response_format": nested(MAX_NESTING)}) is None


def test_the_engine_refuses_them_before_anything_is_queued():
    error = validate_request(InferenceRequest(model="m", messages=HI, params={"max_tokens": 10**30}))
    assert error is not None and "params.max_tokens must be" in error.message
    deep = [{"role": "user", "content": nested(MAX_NESTING + 1)}]
    error = validate_request(InferenceRequest(model="m", messages=deep))
    assert error is not None and error.message == f"messages nest deeper than {MAX_NESTING} levels"
    assert validate_request(InferenceRequest(model="m", messages=[{"role": "user", "content": nested(60)}])) is None


# --- the listener's configuration -------------------------------------------------------------

def test_listening_without_keys_takes_an_explicit_auth_none_on_loopback():
    bare = parse_config({"deployments": DEPLOYMENTS}, "node.yaml")
    with pytest.raises(ConfigError) as err:
        http_section(bare, "127.0.0.1:4000")
    text = str(err.value)
    assert text.startswith("http: --http 127.0.0.1:4000 needs an http section with its callers' keys")
    assert "python launch.py key new" in text and "`http: {auth: none}`" in text
    keyless = parse_config({"deployments": DEPLOYMENTS, "http": {"auth": "none"}}, "node.yaml")
    assert http_section(keyless, "127.0.0.1:4000").auth == "none"
    with pytest.raises(ConfigError, match="--http: auth: 'none' is allowed on a loopback listener only"):
        http_section(keyless, "0.0.0.0:4000")
    with pytest.raises(ConfigError, match="needs an address"):
        http_section(keyless)
    with pytest.raises(ConfigError, match="no keys given, so every request would be refused"):
        parse_config({"deployments": DEPLOYMENTS, "http": {"listen": "127.0.0.1:4000"}}, "node.yaml")


def test_a_key_that_may_use_only_models_nobody_serves_is_a_configuration_error():
    key = {"name": "team-x", "key": {"value": "k" * 40}}
    # Other nodes of the cluster may serve them (routing.cross_node: prefer_local, the default, or
    # any; docs/routing.md): not an error then. Only a node that keeps its calls can tell.
    elsewhere = parse_config({"deployments": DEPLOYMENTS, "http": {"listen": "127.0.0.1:4000", "keys": [
        {**key, "models": ["gpt-5"]}]}}, "node.yaml")
    assert elsewhere.http.keys[0].models == ["gpt-5"]
    with pytest.raises(ConfigError) as err:
        parse_config({"deployments": DEPLOYMENTS, "routing": {"cross_node": "local_only"},
                      "http": {"listen": "127.0.0.1:4000", "keys": [
                          {**key, "models": ["gpt-5", "claude-9"]}]}}, "node.yaml")
    assert str(err.value) == ("node.yaml: http.keys[0].models: key 'team-x' may use only models no deployment of "
                              "this node serves ('gpt-5', 'claude-9'); served here: gpt")
    for served in (["gpt"], ["gpt-east"], ["gpt", "typo"]):   # a model, or a deployment's name
        config = parse_config({"deployments": DEPLOYMENTS, "routing": {"cross_node": "local_only"},
                               "http": {"listen": "127.0.0.1:4000", "keys": [
            {**key, "models": served}]}}, "node.yaml")
        warned = [w for w in config_warnings(config) if "http.keys[0]" in w]
        assert warned == ([] if "typo" not in served else
                          ["http.keys[0] (team-x): no deployment of this node serves 'typo'; calls to it will be 404"])


@pytest.mark.parametrize("field,value,says", [
    ("header_timeout_s", 0, "header_timeout_s"), ("body_timeout_s", -1, "body_timeout_s"),
    ("max_connections_per_client", 0, "max_connections_per_client"),
    ("max_connections_per_client", 2000, r"must be at most connection_limit \(1000\), got 2000"),
])
def test_the_front_doors_limits_are_checked_at_load(field, value, says):
    with pytest.raises(ConfigError, match=says):
        parse_config({"deployments": DEPLOYMENTS, "http": {"auth": "none", field: value}}, "node.yaml")
    defaults = HttpConfig()
    assert (defaults.header_timeout_s, defaults.body_timeout_s, defaults.max_connections_per_client) == (10.0, 60.0, 100)


# --- an upstream's error text -----------------------------------------------------------------

PY_TRACE = ('Traceback (most recent call last):\n'
            '  File "/srv/app/server.py", line 12, in handle\n'
            '    model.generate(prompt)\n'
            '  File "/usr/lib/python3/site-packages/vllm/engine.py", line 88, in generate\n'
            '    raise ValueError(msg)\n'
            'ValueError: could not load /srv/models/llama/config.json\n')


@pytest.mark.parametrize("body,kept,gone", [
    (PY_TRACE, "ValueError: could not load [path] (stack trace removed)", ["Traceback", "/srv", "server.py"]),
    ("java.lang.IllegalStateException: pool exhausted\n\tat com.acme.Pool.take(Pool.java:41)\n\t... 12 more",
     "java.lang.IllegalStateException: pool exhausted (stack trace removed)", ["Pool.java", "12 more"]),
    ("TypeError: x is undefined\n    at handler (/app/index.js:10:5)\n    at process (node:internal/x:1:1)",
     "TypeError: x is undefined (stack trace removed)", ["/app/index.js"]),
    ("panic: runtime error\n\ngoroutine 1 [running]:\nmain.serve()\n\t/home/ci/src/main.go:12 +0x1d",
     "panic: runtime error (stack trace removed)", ["goroutine", "main.go"]),
    ("Invalid URL (POST /v1/chat/completions)", "Invalid URL (POST /v1/chat/completions)", []),
    ("max_tokens is too large: 100000. This model supports at most 4096", "supports at most 4096", []),
])
def test_the_caller_gets_the_providers_message_without_traces_or_paths(body, kept, gone):
    out = strip_internals(body)
    assert kept in out
    for text in gone:
        assert text not in out


def test_an_http_error_body_is_classified_with_its_message_only_and_the_log_keeps_it_whole():
    error = classify_http_status(500, {}, PY_TRACE.encode(), provider="openai_compatible")
    assert error.message == "ValueError: could not load [path] (stack trace removed)" and error.status == 500
    json_trace = '{"detail": ' + __import__("json").dumps(PY_TRACE + "key sk-abcdefghijklmnopqrstuv") + "}"
    error = classify_http_status(500, {}, json_trace.encode(), provider="x")
    assert "Traceback" not in error.message and "[redacted]" in error.message
    assert trimmed(PY_TRACE.encode()) and not trimmed(b'{"error": {"message": "rate limited"}}')
    assert trimmed(b"x" * 600)                               # cut to length: the log has the rest
    logged = for_log(json_trace.encode())
    assert "/srv/app/server.py" in logged and "sk-abcdefghijklmnopqrstuv" not in logged and "\n" not in logged
    assert for_log(b"y" * 20_000).endswith("…") and len(for_log(b"y" * 20_000)) == 16 * 1024 + 1


# --- a flood logs a count, not itself ----------------------------------------------------------

def test_one_line_per_source_and_kind_per_interval():
    now = [0.0]
    lines: list[str] = []
    log = LineLimiter(lines.append, interval_s=10, clock=lambda: now[0])
    assert log.note("10.0.0.1:5000", "header timeout", "closed one")
    assert not any(log.note(f"10.0.0.1:{port}", "header timeout", "closed one") for port in range(5001, 5100))
    assert log.note("10.0.0.1", "connections per client", "refused one")    # another kind
    assert log.note("[::1]:80", "header timeout", "closed one")             # another source
    now[0] = 11.0
    assert log.note("10.0.0.1:6000", "header timeout", "closed one")
    assert lines[-1] == "closed one (+99 more like it in the last 10s)" and log.total == 103


def test_the_launch_capability_is_in_no_repr():
    cap = "c0ffee" * 10
    for message in (Deploy("n", [], capability=cap), SessionInit("d", "openai", None, capability=cap),
                    WatchLauncher(1, 1, cap)):
        assert cap not in repr(message) and cap not in str(message) and message.capability == cap


def test_the_log_line_of_a_body_masks_keys_keeps_short_bodies_whole_and_marks_a_cut():
    assert for_log(b"bad key sk-abcdefghijklmnopqrstuv\nline two") == "bad key [redacted]\\nline two"
    assert for_log(b"short") == "short" and for_log(None) == ""
    exactly = "y" * (16 * 1024)
    assert for_log(exactly.encode()) == exactly and for_log(exactly + "z") == exactly + "…"


def _flooded(others: int) -> tuple[LineLimiter, list[str], list[float]]:
    """Host a said twice at t=1000; at t=1010 (one interval on) ``others`` other hosts say it once."""
    now = [1000.0]
    lines: list[str] = []
    log = LineLimiter(lines.append, interval_s=10, clock=lambda: now[0])
    assert log.note("a:1", "bad frame", "refused") and not log.note("a:2", "bad frame", "refused")
    assert lines == ["refused"]                                  # the first line carries no count
    now[0] = 1009.99
    assert not log.note("a:3", "bad frame", "refused")           # still within the interval
    now[0] = 1010.0
    for i in range(others):
        log.note(f"h{i}:1", "bad frame", "refused")
    return log, lines, now


def test_a_line_goes_again_exactly_one_interval_after_the_last_with_the_count_held():
    log, lines, _ = _flooded(1022)                              # 1023 sources: none forgotten
    assert log.note("a:4", "bad frame", "refused") and lines[-1] == "refused (+2 more like it in the last 10s)"


def test_past_1024_sources_the_quiet_ones_are_forgotten_the_new_ones_kept():
    kept, lines, _ = _flooded(1023)                              # 1024 sources: still none forgotten
    assert kept.note("a:4", "bad frame", "refused") and lines[-1] == "refused (+2 more like it in the last 10s)"
    pruned, lines, _ = _flooded(1024)                            # 1025: a, quiet for an interval, is forgotten
    assert not pruned.note("h1023:9", "bad frame", "refused")    # the newest ones are kept
    assert pruned.note("a:4", "bad frame", "refused") and lines[-1] == "refused"


def test_bytes_that_are_not_utf8_are_shown_replaced_and_a_cut_is_past_500_characters():
    assert for_log(b"\xff ok") == "\ufffd ok" and for_log("text") == "text"
    assert not trimmed("x" * 500) and trimmed("x" * 501)


@pytest.mark.parametrize("body,out", [
    (PY_TRACE, "ValueError: could not load [path] (stack trace removed)"),
    ('Traceback (most recent call last):\n  File "a.py", line 1, in f\n    g()\n',
     "the upstream answered with a stack trace (removed)"),
    ('  File "a.py", line 1, in f\n\tx = compute + 1\n  note: an indented detail\nValueError: x',
     "note: an indented detail\nValueError: x (stack trace removed)"),
    ("Error: x\n  an indented detail", "Error: x\n  an indented detail"),
    ("  indented first line\nnext", "indented first line\nnext"),
    ("a\n\n\n\nb", "a\n\nb"),
    ("", ""),
])
def test_what_the_caller_is_shown_of_an_upstream_text_exactly(body, out):
    assert strip_internals(body) == out


def test_only_text_is_stripped():
    assert strip_internals(None) is None and strip_internals(42) == 42
