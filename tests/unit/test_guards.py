"""Behaviours a mutation run of the core found unguarded: each test fails on the mutant it names."""

from __future__ import annotations

import os

import pytest

from actors import errors as E
from actors.core.breaker import BreakerConfig, CircuitBreaker, CircuitState
from actors.core.classify import redact
from actors.core.pricing import Price, cost_usd
from actors.core.retry import RetryEngine, RetryPolicy
from actors.core.validation import validate_request
from actors.providers.aws import AwsCredentials
from actors.types import InferenceRequest, Usage

from fakes import FakeClock, FixedRandom


def test_an_unknown_finish_reason_normalises_to_stop_and_keeps_the_raw_value():
    from actors.providers import make_runner
    from actors.settings.loader import parse_config

    config = parse_config({"deployments": [{"name": "d", "model": "m", "provider": "anthropic",
                                            "endpoint": "https://api.anthropic.com/v1",
                                            "credentials": {"value": "k"}}]}, credentials=False)
    runner = make_runner(config.deployments[0])
    assert runner.finish("end_turn") == ("stop", "end_turn")
    assert runner.finish("max_tokens") == ("length", "max_tokens")
    assert runner.finish("a_reason_from_next_year") == ("stop", "a_reason_from_next_year")
    assert runner.finish(None) == (None, None)


@pytest.mark.parametrize("value", [True, False, 0, -1, 1.5, "10"])
def test_max_tokens_must_be_a_positive_integer_not_a_boolean(value):
    request = InferenceRequest("m", [{"role": "user", "content": "hi"}], {"max_tokens": value})
    error = validate_request(request)
    assert isinstance(error, E.BadRequest) and "max_tokens" in str(error)


def test_aws_secret_keys_are_redacted_from_text_and_reprs():
    assert "AKIAABCDEFGHIJKLMNOP" not in redact("denied for AKIAABCDEFGHIJKLMNOP in us-east-1")
    creds = AwsCredentials("AKIAABCDEFGHIJKLMNOP", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "tok-123456789")
    shown = repr(creds)
    assert "wJalrXUtnFEMI" not in shown and "tok-123456789" not in shown


def test_a_group_readable_secret_file_is_refused(tmp_path):
    from actors.security import wire

    path = tmp_path / "cluster.key"
    path.write_text("k1:" + "s" * 40 + "\n")
    os.chmod(path, 0o640)
    with pytest.raises(E.ConfigError) as info:
        wire.load_keyring(environ={wire.ENV_SECRET_FILE: str(path)})
    assert "chmod 600" in str(info.value) and "s" * 40 not in str(info.value)
    os.chmod(path, 0o600)
    assert wire.load_keyring(environ={wire.ENV_SECRET_FILE: str(path)}) is not None


def test_failures_just_outside_the_breaker_window_no_longer_count():
    clock = FakeClock(1000.0)
    breaker = CircuitBreaker("p", "e", BreakerConfig(consecutive_failures=100, failure_rate=0.5, min_calls=4,
                                                       window_s=10), clock=clock, wall_clock=clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(11)  # the three failures fall out of the window
    breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED
    for _ in range(3):
        breaker.record_failure()  # four failures inside one window: over the rate with min_calls met
    assert breaker.state is CircuitState.OPEN


def test_a_negative_retry_after_never_means_retry_in_the_past():
    clock = FakeClock()
    engine = RetryEngine(RetryPolicy(max_retries=3, base_delay_s=0.5, max_delay_s=8), clock=clock,
                         rand=FixedRandom(0.5))
    decision = engine.decide(E.RateLimited("slow down", retry_after_s=-5.0), attempts=1)
    assert decision.retry and decision.delay_s >= 0


def test_cached_tokens_above_input_tokens_are_capped_in_the_cost():
    price = Price(input=1.0, output=2.0, cached_input=0.5)
    sane = cost_usd(Usage(input_tokens=1000, output_tokens=0, cached_input_tokens=1000), price)
    assert sane == pytest.approx(1000 * 0.5 / 1e6)
    # A provider that reports more cached than input tokens must not earn a negative or larger-than-input discount.
    odd = cost_usd(Usage(input_tokens=1000, output_tokens=0, cached_input_tokens=5000), price)
    assert odd == sane
    assert cost_usd(Usage(input_tokens=1000, output_tokens=10, cached_input_tokens=0), price) == \
        pytest.approx((1000 * 1.0 + 10 * 2.0) / 1e6)
