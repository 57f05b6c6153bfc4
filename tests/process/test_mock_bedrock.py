"""The mock provider's Bedrock endpoint checks SigV4 like the real one (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import sys
from pathlib import Path

import requests

from actors import errors as E
from actors.core.credentials import Secret
from actors.testing.mock_provider import MockProvider

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))


def test_mock_bedrock_checks_the_sigv4_structure_and_accepts_keys_by_access_key_id():
    from test_providers_wire import runner_for
    from actors.types import InferenceRequest

    with MockProvider() as mock:
        runner = runner_for("bedrock", endpoint=mock.url, upstream_model="mock-nova")

        def call(secret, headers=None):
            http = runner.build_request(InferenceRequest("m", [{"role": "user", "content": "hi"}], {"max_tokens": 3}),
                                        Secret(secret))
            return requests.post(http.url, data=http.body, headers={**http.headers, **(headers or {})}, timeout=5)

        assert call("AKIDGOOD:secret").status_code == 200
        mock.server.accepted_keys = {"AKIDGOOD"}
        assert call("AKIDGOOD:secret").json()["stopReason"] == "end_turn"
        refused = call("AKIDOTHER:secret")
        assert refused.status_code == 401 and refused.headers["x-amzn-errortype"].startswith("UnrecognizedClient")
        mock.server.accepted_keys = None
        assert call("AKIDGOOD:secret", {"authorization": "Bearer nope"}).status_code == 401
        assert call("AKIDGOOD:secret", {"x-amz-date": "20000101T000000Z"}).status_code == 401
        error = runner.classify_error(refused.status_code, refused.headers, refused.content)
        assert isinstance(error, E.AuthenticationError)
