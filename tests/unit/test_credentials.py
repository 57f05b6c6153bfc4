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


# Pins found by the mutation run (docs/architecture.md, "How the core is tested").

def test_a_secret_shows_exactly_three_stars():
    assert repr(Secret("sk-abc")) == str(Secret({"k": "v"})) == "Secret('***')"


@pytest.mark.parametrize("expiry,expected", [
    (1_900_000_000, 1_900_000_000.0),
    ("2027-01-15T10:00:00+02:00", datetime(2027, 1, 15, 8, tzinfo=timezone.utc).timestamp()),
    ("2027-01-15T08:00:00Z", datetime(2027, 1, 15, 8, tzinfo=timezone.utc).timestamp()),
])
def test_aws_expirations_as_numbers_or_iso_times(expiry, expected):
    aws = json.dumps({"AccessKeyId": "AKIAEXAMPLE", "SecretAccessKey": "s", "Expiration": expiry})
    creds = resolve(CredentialSource(command=["x"], ttl_s=5), now=lambda: NOW, run=fake_run(aws))
    assert creds.expires_unix == expected
    # no session token: none is invented
    assert creds.secret.reveal() == {"access_key_id": "AKIAEXAMPLE", "secret_access_key": "s"}


@pytest.mark.parametrize("expiry", [True, "next tuesday", [1]])
def test_an_expiry_that_is_not_a_time_is_unusable_output(expiry):
    doc = json.dumps({"token": "tok", "expires_at": expiry})
    with pytest.raises(E.AuthenticationError, match="printed unusable output: ValueError"):
        resolve(CredentialSource(command=["helper"]), now=lambda: NOW, run=fake_run(doc))


def test_a_plain_token_without_ttl_never_expires_and_a_ttl_fills_a_json_gap():
    assert resolve(CredentialSource(command=["x"]), now=lambda: NOW, run=fake_run("tok")).expires_unix is None
    doc = json.dumps({"token": "tok-2"})
    got = resolve(CredentialSource(command=["x"], ttl_s=90), now=lambda: NOW, run=fake_run(doc))
    assert got.secret.reveal() == "tok-2" and got.expires_unix == NOW + 90
    # the document's own expiry wins over the configured ttl
    doc = json.dumps({"token": "tok-3", "expires_at": NOW + 7, "expires_in": 1000})
    assert resolve(CredentialSource(command=["x"], ttl_s=90), now=lambda: NOW,
                   run=fake_run(doc)).expires_unix == NOW + 7
    doc = json.dumps({"token": "tok-4", "expires_in": 30})
    assert resolve(CredentialSource(command=["x"], ttl_s=90), now=lambda: NOW,
                   run=fake_run(doc)).expires_unix == NOW + 30


@pytest.mark.parametrize("token", ["", 42, None])
def test_json_output_needs_a_text_token(token):
    with pytest.raises(E.AuthenticationError, match="printed unusable output: ValueError"):
        resolve(CredentialSource(command=["helper"]), run=fake_run(json.dumps({"token": token})))


def test_env_and_file_credentials_expire_after_their_ttl(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-from-file\n")
    assert resolve(CredentialSource(file=str(key), ttl_s=60), now=lambda: NOW).expires_unix == NOW + 60
    assert resolve(CredentialSource(env="K", ttl_s=60), environ={"K": "v"}, now=lambda: NOW).expires_unix == NOW + 60
    assert resolve(CredentialSource(env="K"), environ={"K": "v"}, now=lambda: NOW).expires_unix is None
    literal = resolve(CredentialSource(value="lit", ttl_s=60), now=lambda: NOW)
    assert literal.secret == Secret("lit") and literal.expires_unix is None


def test_file_errors_name_the_field_and_the_reason(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(E.ConfigError) as info:
        resolve(CredentialSource(file=str(missing)))
    assert info.value.message == f"cannot read credential file {missing}: No such file or directory"
    assert info.value.path == "credentials.file"
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(E.ConfigError) as info:
        resolve(CredentialSource(file=str(tmp_path / "empty")))
    assert info.value.path == "credentials.file"
    with pytest.raises(E.ConfigError) as info:
        resolve(CredentialSource(env="K"), environ={})
    assert info.value.path == "credentials.env"


def test_the_command_runs_with_its_timeout_captured_as_text_and_unchecked():
    calls = []

    def run(cmd, **kw):
        calls.append((cmd, kw))
        return subprocess.CompletedProcess(cmd, 0, stdout="tok", stderr="")
    resolve(CredentialSource(command=["helper", "--json"], command_timeout_s=7), run=run)
    assert calls == [(["helper", "--json"], {"capture_output": True, "text": True, "timeout": 7, "check": False})]


@pytest.mark.parametrize("exc", [OSError(2, "no such program"), subprocess.TimeoutExpired(["helper"], 7)])
def test_a_command_that_cannot_run_names_the_program_and_the_error_type(exc):
    def run(cmd, **kw):
        raise exc
    with pytest.raises(E.AuthenticationError) as info:
        resolve(CredentialSource(command=["helper", "arg"]), run=run)
    assert info.value.message == f"credential command 'helper' failed: {type(exc).__name__}"


def test_unusable_output_names_the_error_type():
    with pytest.raises(E.AuthenticationError) as info:
        resolve(CredentialSource(command=["helper"]), run=fake_run("{broken"))
    assert info.value.message == "credential command 'helper' printed unusable output: JSONDecodeError"


@pytest.mark.parametrize("kwargs,message", [
    ({}, "give exactly one of env, file, value, command"),
    ({"env": "A", "value": "v"}, "give exactly one of env, file, value, command (got env, value)"),
    ({"command": []}, "command: must not be empty, got []"),
    ({"value": "v", "ttl_s": 0}, "ttl_s must be > 0"),
    ({"value": "v", "refresh_s": 0}, "refresh_s must be > 0"),
    ({"value": "v", "refresh_margin_s": -1}, "refresh_margin_s must be >= 0 and command_timeout_s > 0"),
    ({"value": "v", "command_timeout_s": 0}, "refresh_margin_s must be >= 0 and command_timeout_s > 0"),
])
def test_source_errors_are_exact(kwargs, message):
    with pytest.raises(ValueError) as info:
        CredentialSource(**kwargs)
    assert str(info.value) == message


def test_source_boundaries_that_are_allowed():
    CredentialSource(value="v", refresh_margin_s=0, command_timeout_s=0.5, ttl_s=0.5, refresh_s=0.5)


def test_an_env_name_error_says_what_is_expected():
    with pytest.raises(ValueError) as info:
        CredentialSource(env="sk-proj-abcdefghijklmnop")
    assert str(info.value) == ("env: must be the name of an environment variable (letters, digits, _), "
                               "got a value that is not one (not shown: it may be a key)")


def test_an_expired_token_refreshes_now():
    src = CredentialSource(command=["x"], refresh_margin_s=60)
    assert next_refresh_at(src, ResolvedCredential(Secret("t"), NOW - 10), NOW) == NOW - 10
    assert next_refresh_at(src, ResolvedCredential(Secret("t"), NOW + 1), NOW) == NOW + 0.5
