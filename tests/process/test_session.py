"""Credentials: resolution and refresh (pure), and the session actor end to end."""

import json
import pickle
import stat
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from actors import errors as E
from actors.core.credentials import CredentialSource
from actors.core.credentials import ResolvedCredential, Secret, next_refresh_at, resolve

from conftest import deployment, wait_for

NOW = 1_800_000_000.0


def fake_run(stdout, returncode=0):
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, returncode, stdout=stdout, stderr="sk-leaked-in-stderr")
    return run


def test_secret_never_shows_but_pickles():
    s = Secret("sk-abcdef123456")
    assert "sk-" not in repr(s) and "sk-" not in str(s) and "sk-" not in f"{s}" and "sk-" not in repr([s])
    assert pickle.loads(pickle.dumps(s)).reveal() == "sk-abcdef123456"


def test_env_file_and_literal(tmp_path):
    assert resolve(CredentialSource(env="K"), environ={"K": " sk-1 \n"}).secret.reveal() == "sk-1"
    with pytest.raises(E.ConfigError, match="environment variable K is not set"):
        resolve(CredentialSource(env="K"), environ={})
    key = tmp_path / "key"
    key.write_text("sk-from-file\n")
    assert resolve(CredentialSource(file=str(key))).secret.reveal() == "sk-from-file"
    key.write_text("")
    with pytest.raises(E.ConfigError, match="is empty"):
        resolve(CredentialSource(file=str(key)))
    assert resolve(CredentialSource(value="lit")).expires_unix is None


def test_command_outputs():
    now = lambda: NOW  # noqa: E731
    plain = resolve(CredentialSource(command=["x"], ttl_s=300), now=now, run=fake_run("tok-1\n"))
    assert plain.secret.reveal() == "tok-1" and plain.expires_unix == NOW + 300
    doc = json.dumps({"token": "tok-2", "expires_in": 120})
    assert resolve(CredentialSource(command=["x"]), now=now, run=fake_run(doc)).expires_unix == NOW + 120
    iso = json.dumps({"access_token": "tok-3", "expires_at": "2027-01-15T08:00:00Z"})
    expected = datetime(2027, 1, 15, 8, tzinfo=timezone.utc).timestamp()
    assert resolve(CredentialSource(command=["x"]), now=now, run=fake_run(iso)).expires_unix == expected
    aws = json.dumps({"Version": 1, "AccessKeyId": "AKIAEXAMPLE", "SecretAccessKey": "s3cr3t",
                      "SessionToken": "tok", "Expiration": "2027-01-15T08:00:00+00:00"})
    creds = resolve(CredentialSource(command=["x"]), now=now, run=fake_run(aws))
    assert creds.secret.reveal() == {"access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3cr3t",
                                     "session_token": "tok"}


@pytest.mark.parametrize("stdout,code", [("", 0), ("{\"nothing\": 1}", 0), ("{broken", 0), ("tok", 3)])
def test_command_failures_are_typed_and_never_echo_output(stdout, code):
    with pytest.raises(E.AuthenticationError) as info:
        resolve(CredentialSource(command=["helper"]), run=fake_run(stdout, code))
    assert "helper" in str(info.value) and "leaked" not in str(info.value) and "tok" not in str(info.value)


def test_refresh_schedule():
    src = CredentialSource(command=["x"], refresh_margin_s=60)
    assert next_refresh_at(src, ResolvedCredential(Secret("t"), NOW + 3600), NOW) == NOW + 3540
    # a token shorter-lived than twice the margin refreshes at half-life
    assert next_refresh_at(src, ResolvedCredential(Secret("t"), NOW + 20), NOW) == NOW + 10
    periodic = CredentialSource(file="/k", refresh_s=30)
    assert next_refresh_at(periodic, ResolvedCredential(Secret("t"), None), NOW) == NOW + 30
    assert next_refresh_at(CredentialSource(value="v"), ResolvedCredential(Secret("t"), None), NOW) is None


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
