"""The ``http`` section: checked at load time, errors naming file, field and value (never a key)."""

from __future__ import annotations

import pytest

from actors.errors import ConfigError
from actors.settings.loader import parse_config
from actors.settings.schema import HttpConfig, parse_listen

DEPLOYMENTS = [{"name": "d", "model": "m", "provider": "openai_compatible", "endpoint": "http://127.0.0.1:9/v1"}]
DIGEST = "ab" * 32


def load(http, environ=None):
    return parse_config({"deployments": DEPLOYMENTS, "http": http}, "gw.yaml", environ=environ or {})


def test_a_full_section_loads():
    config = load({"listen": "127.0.0.1:4000", "keys": [{"name": "t", "key": {"sha256": DIGEST}, "models": ["m"]}]})
    assert config.http.address == ("127.0.0.1", 4000) and config.http.keys[0].models == ["m"]
    assert config.http.with_listen("0.0.0.0:5000").address == ("0.0.0.0", 5000)
    assert parse_config({"deployments": DEPLOYMENTS}).http is None


@pytest.mark.parametrize("http, path, words", [
    ({"listen": "127.0.0.1:4000"}, "http.keys", "every request would be refused"),
    ({"listen": "0.0.0.0:4000", "auth": "none"}, "http.auth", "loopback"),
    ({"listen": "4000"}, "http.listen", "HOST:PORT"),
    ({"listen": "127.0.0.1:4000", "auth": "maybe"}, "http.auth", "one of"),
    ({"keys": [{"name": "t", "key": {"sha256": "xyz"}}]}, "http.keys[0].key.sha256", "64 hex"),
    ({"keys": [{"name": "t", "key": {}}]}, "http.keys[0].key", "exactly one"),
    ({"keys": [{"name": "t", "key": {"sha256": DIGEST}}, {"name": "t", "key": {"sha256": DIGEST}}]},
     "http.keys[1].name", "unique"),
    ({"listen": "127.0.0.1:4000", "keys": [{"name": "t", "key": {"env": "NOT_SET_HERE"}}]}, "http.keys[0].key.env",
     "NOT_SET_HERE is not set"),
    ({"max_body_bytes": 10}, "http.max_body_bytes", ">= 1024"),
    ({"limits": {"rpm": 5}}, "http.limits", "unknown key"),
])
def test_bad_sections_name_the_field(http, path, words):
    with pytest.raises(ConfigError) as caught:
        load(http)
    assert caught.value.path == f"gw.yaml: {path}" and words in caught.value.message


def test_a_key_pasted_into_env_is_not_repeated():
    secret = "sk-" + "Q" * 40
    with pytest.raises(ConfigError) as caught:
        load({"keys": [{"name": "t", "key": {"env": secret}}]})
    assert secret not in str(caught.value)


def test_parse_listen_ipv6():
    assert parse_listen("[::1]:4000") == ("::1", 4000)
    assert HttpConfig(listen="[::1]:4000", auth="none").address == ("::1", 4000)
