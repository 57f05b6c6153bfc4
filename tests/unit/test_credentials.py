"""A key pasted where a reference belongs is refused and never repeated."""

import pytest

from actors.core.credentials import CredentialSource, looks_secret


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
