"""Configuration is validated once, at the edge, with one clear message naming file, field and expectation."""

from pathlib import Path

import pytest

from actors.settings.loader import load_config, parse_config
from actors.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def base(**dep):
    d = {"name": "d1", "model": "m", "provider": "openai", "endpoint": "https://api.openai.com/v1"}
    d.update(dep)
    return {"deployments": [d]}


def error_of(data, **kw):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "deploy.yaml", **kw)
    return str(info.value)


def test_a_valid_config_builds_typed_sections():
    cfg = parse_config(base(limits={"rpm": 100, "tpm": 5000, "burst": 0.2}, retry={"max_retries": 1},
                            breaker={"open_s": 2}, timeouts={"read_s": 5}, pricing={"input": 1, "output": 2}))
    dep = cfg.deployments[0]
    assert dep.limits.rpm == 100 and dep.limits.burst == 0.2 and dep.retry.max_retries == 1
    assert dep.breaker.open_s == 2.0 and dep.timeouts.read_s == 5.0 and dep.pricing.output == 2.0
    assert cfg.node.admin_port == 1900


@pytest.mark.parametrize("data,expected", [
    (base(wrokers=3), "deploy.yaml: deployments[0].wrokers: unknown key 'wrokers'"),
    (base(workers="four"), "deploy.yaml: deployments[0].workers: expected an integer, got a string"),
    (base(workers=True), "deploy.yaml: deployments[0].workers: expected an integer, got a boolean"),
    (base(workers=0), "deploy.yaml: deployments[0].workers: must be >= 1, got 0"),
    (base(worker_processes=0), "deploy.yaml: deployments[0].worker_processes: must be >= 1, got 0"),
    (base(worker_processes="two"), "deploy.yaml: deployments[0].worker_processes: expected an integer, got a string"),
    (base(replicas=-2), "deploy.yaml: deployments[0].replicas: must be >= 1, got -2"),
    (base(timeouts={"read_s": -1}), "deploy.yaml: deployments[0].timeouts.read_s: must be > 0, got -1"),
    (base(timeouts={"total_s": float("nan")}), "deploy.yaml: deployments[0].timeouts.total_s: must be > 0, got nan"),
    (base(response_limits={"max_body_bytes": 10}),
     "deploy.yaml: deployments[0].response_limits.max_body_bytes: must be >= 1024, got 10"),
    (base(provider="acme"), "deploy.yaml: deployments[0].provider: expected one of 'openai'"),
    (base(endpoint="ftp://x"), "deploy.yaml: deployments[0].endpoint: must be an http(s) URL"),
    (base(limits={"rpm": 0}), "deploy.yaml: deployments[0].limits: rpm must be >= 1"),
    (base(limits={"mode": "exact"}), "deploy.yaml: deployments[0].limits.mode: expected one of 'approximate', 'strict'"),
    (base(retry={"jitter": "random"}), "deployments[0].retry.jitter: expected one of 'full', 'equal', 'none'"),
    (base(breaker={"failure_rate": 2}), "deployments[0].breaker: failure_rate must be in (0, 1]"),
    (base(timeouts=[1, 2]), "deployments[0].timeouts: expected a mapping, got a list"),
    (base(credentials={"env": "A", "file": "/x"}), "deployments[0].credentials: give exactly one of"),
    (base(options={"colour": "red"}), "deployments[0].options.colour: unknown option 'colour' for provider openai"),
    (base(headers={"x": 1}), "deployments[0].headers.x: expected a string, got int"),
    ({"deployments": []}, "at least one deployment is needed"),
    ({"deployments": [{"name": "d1"}]}, "deployments[0].model: missing required field"),
    ({"deployments": "d1"}, "deployments: expected a list"),
    ({**base(), "node": {"admin_port": 70000}}, "deploy.yaml: node.admin_port: must be in 1..65535, got 70000"),
    ({**base(), "nodes": {}}, "deploy.yaml: nodes: unknown key 'nodes'"),
    ({"deployments": base()["deployments"] * 2},
     "deploy.yaml: deployments[1].name: deployment names must be unique, got 'd1' again (first at deployments[0].name)"),
    (base(endpoint="mock"), "endpoint 'mock' needs a mock_provider section"),
    ([1, 2], "deploy.yaml: expected a mapping, got a list"),
])
def test_each_kind_of_mistake_names_file_path_and_expectation(data, expected):
    assert expected in error_of(data)


def test_missing_credentials_stop_the_launch():
    message = error_of(base(credentials={"env": "ATOMR_TEST_NO_SUCH_VAR"}), environ={})
    assert "deployments[0].credentials.env: environment variable ATOMR_TEST_NO_SUCH_VAR is not set" in message
    assert "deployments[0].credentials.file: credential file /nonexistent/key is not readable" in error_of(
        base(credentials={"file": "/nonexistent/key"}))
    assert "not found on PATH" in error_of(base(credentials={"command": ["atomr-no-such-binary"]}))
    # the same config passes when the variable is there
    parse_config(base(credentials={"env": "K"}), environ={"K": "sk-x"})


def test_literal_credentials_never_show_in_reprs():
    cfg = parse_config(base(credentials={"value": "sk-very-secret-123"}))
    assert "sk-very-secret" not in repr(cfg) and "***" in repr(cfg.deployments[0].credentials)


def test_yaml_syntax_errors_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: not valid YAML at line")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read config" in str(info.value)


def test_shipped_configs_are_valid():
    for path in sorted((ROOT / "config").glob("*.yaml")):
        load_config(path, credentials=False)


def test_a_key_pasted_into_a_reference_field_is_never_echoed():
    key = "sk-proj-abcdefghijklmnop1234567890"
    for creds, field in (({"env": key}, "credentials.env"), ({"file": key}, "credentials.file"),
                         ({"command": [key]}, "credentials.command")):
        message = error_of(base(credentials=creds), environ={})
        assert f"deployments[0].{field}:" in message and "not shown" in message, message
        assert "abcdefghijklmnop" not in message


def test_a_password_in_the_endpoint_is_never_shown():
    cfg = parse_config(base(endpoint="https://user:hunter2secret@llm.example:8443/v1?key=AIzaXXXX"))
    dep = cfg.deployments[0]
    assert dep.endpoint_label == "https://llm.example:8443/v1"
    message = error_of(base(endpoint="ftp://user:hunter2secret@llm.example/v1"))
    assert "hunter2" not in message and "ftp://llm.example/v1" in message
    assert "hunter2" not in " ".join(__import__("actors.settings.loader", fromlist=["x"]).config_warnings(
        parse_config(base(endpoint="https://user:hunter2secret@llm.example/v1")))), "warnings show the label only"


def test_duplicate_yaml_keys_are_refused_with_their_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("deployments:\n  - name: d1\n    model: m\n    provider: openai\n"
                    "    endpoint: https://api.openai.com/v1\n    workers: 2\n    workers: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, credentials=False)
    message = str(info.value)
    assert "duplicate key 'workers' (first at line 6)" in message and "line 7" in message


def test_config_warnings_for_openai_provider_elsewhere_and_without_credentials():
    from actors.settings.loader import config_warnings

    official = parse_config(base(credentials={"env": "K"}), environ={"K": "sk-x"})
    assert config_warnings(official) == []
    local = parse_config(base(endpoint="http://127.0.0.1:8080/v1"))
    warnings = config_warnings(local)
    assert len(warnings) == 2
    assert "max_completion_tokens" in warnings[0] and "openai_compatible" in warnings[0]
    assert "deployments[0] (d1)" in warnings[1] and "no credentials" in warnings[1]
    compatible = parse_config(base(provider="openai_compatible", endpoint="http://127.0.0.1:8080/v1"))
    assert config_warnings(compatible) == []
