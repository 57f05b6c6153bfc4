"""Credentials: the session actor end to end (resolution and refresh alone: tests/unit/test_credentials.py)."""

import stat
import sys

import pytest

from actors import errors as E

from conftest import deployment, wait_for


def test_401_refreshes_the_credential_once_and_retries(gateway, mock, tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-old-key-0001")
    node, client = gateway([deployment(mock.url, "d1", credentials={"file": str(key)})])
    assert client.complete("d1", [{"role": "user", "content": "hi"}], max_tokens=2).attempts == 1
    # The provider rotates: only the new key works, and the file now holds it.
    mock.accept_keys(["sk-new-key-0002"])
    key.write_text("sk-new-key-0002")
    result = client.complete("d1", [{"role": "user", "content": "hi"}], max_tokens=2)
    assert result.attempts == 2
    seen = mock.stats()["keys_seen"]
    assert seen["Bearer sk-old-key-0001"] == 2 and seen["Bearer sk-new-key-0002"] == 1
    # A key that is rejected and unchanged by refreshing fails once, without a retry storm.
    mock.accept_keys(["sk-something-else"])
    with pytest.raises(E.AuthenticationError):
        client.complete("d1", [{"role": "user", "content": "hi"}], max_tokens=2)
    assert mock.stats()["keys_seen"]["Bearer sk-new-key-0002"] == 2
    log = (tmp_path / "n1.log").read_text()
    assert "sk-old-key" not in log and "sk-new-key" not in log


def test_command_credential_is_refreshed_before_it_expires(gateway, mock, tmp_path):
    counter = tmp_path / "n"
    counter.write_text("0")
    helper = tmp_path / "token-helper"
    helper.write_text(f"#!{sys.executable}\n"
                      "import json, pathlib\n"
                      f"p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) + 1\n"
                      "t = p.with_suffix('.tmp'); t.write_text(str(n)); t.replace(p)  # atomic for the test\n"
                      "print(json.dumps({'token': f'tok-{n:04d}-abcdefgh', 'expires_in': 1.0}))\n")
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    node, client = gateway([deployment(mock.url, "d1", credentials={"command": [str(helper)],
                                                                     "refresh_margin_s": 0.5})])
    first = client.complete("d1", [{"role": "user", "content": "hi"}], max_tokens=2)
    first_key = mock.stats()["last_headers"]["authorization"]
    resolved = int(counter.read_text())
    wait_for(lambda: int(counter.read_text()) >= resolved + 2, timeout_s=10, message="two scheduled refreshes")
    client.complete("d1", [{"role": "user", "content": "hi"}], max_tokens=2)
    second_key = mock.stats()["last_headers"]["authorization"]
    # Each call used the token current at the time: the later one is a later token.
    assert first.attempts == 1 and first_key.startswith("Bearer tok-") and second_key > first_key
