"""Credentials: resolution and refresh (pure); a key pasted where a reference belongs is refused and never repeated."""

import json
import pickle
import subprocess
from datetime import datetime, timezone

import pytest

from actors import errors as E
from actors.core.credentials import CredentialSource, ResolvedCredential, Secret, looks_secret, next_refresh_at, resolve


@pytest.mark.parametrize("text", ["sk-proj-abcdefghijklmnop", "AKIAABCDEFGHIJKLMNOP", "AIza" + "x" * 35,
                                  "Bearer abcdefghijklmnop", "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg=="])
def test_keys_look_secret(text):
    assert looks_secret(text)


@pytest.mark.parametrize("text", ["OPENAI_API_KEY", "/run/secrets/openai", "~/keys/anthropic.txt", "aws", "gcloud",
                                  "/usr/local/bin/fetch-token-for-the-llm-gateway-production"])
def test_names_and_paths_do_not(text):
    assert not looks_secret(text)


@pytest.mark.parametrize("env", ["sk-proj-abcdefghijklmnop", "AKIAABCDEFGHIJKLMNOP", "MY KEY", "1ABC", "a-b"])
def test_env_must_be_a_variable_name_and_the_value_is_not_shown(env):
    with pytest.raises(ValueError) as info:
        CredentialSource(env=env)
    assert str(info.value).startswith("env: must be the name of an environment variable")
    assert env not in str(info.value)


def test_a_variable_name_is_fine():
    assert CredentialSource(env="OPENAI_API_KEY").env == "OPENAI_API_KEY"


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


def test_a_source_shows_where_it_reads_never_a_literal_value():
    assert repr(CredentialSource(env="OPENAI_API_KEY")) == "CredentialSource({'env': 'OPENAI_API_KEY'})"
    assert repr(CredentialSource(command=["vault", "read"], ttl_s=60)) == \
        "CredentialSource({'command': ['vault', 'read']})"
    assert repr(CredentialSource(value="sk-live-secret")) == "CredentialSource({'value': '***'})"


def test_only_text_can_look_secret():
    assert not looks_secret(12345678901234567890) and not looks_secret(None)


def test_equal_secrets_hash_alike_and_never_by_value():
    assert hash(Secret("a")) == hash(Secret("b")) and Secret("a") == Secret("a") and Secret("a") != Secret("b")


def test_a_mapping_secret_is_a_copy_of_what_it_was_given():
    given = {"access_key_id": "AKIA", "secret_access_key": "s"}
    secret = Secret(given)
    given["secret_access_key"] = "changed later"
    assert secret.reveal() == {"access_key_id": "AKIA", "secret_access_key": "s"}
