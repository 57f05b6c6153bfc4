import pickle

import pytest

from actors import errors
from actors.errors import ALL_ERROR_CLASSES, CircuitOpen, ContextLengthExceeded, InferenceError


def _sample(cls):
    extra = {}
    if cls is CircuitOpen:
        extra = dict(endpoint="https://api.example/v1", opened_at_unix_ms=1_700_000_000_000,
                     retry_at_unix_ms=1_700_000_005_000)
    elif cls is ContextLengthExceeded:
        extra = dict(tokens=9000, max_tokens=8192)
    elif cls is errors.ContentFiltered:
        extra = dict(reason="content_filter")
    elif cls is errors.BudgetExceeded:
        extra = dict(limit="tpm")
    return cls("something happened", provider="openai", status=503, retry_after_s=1.5,
               request_id="req_123", retryable=not cls.default_retryable,
               partial_usage={"input_tokens": 3, "output_tokens": 7}, **extra)


def test_the_hierarchy_has_every_named_error():
    names = {cls.__name__ for cls in ALL_ERROR_CLASSES}
    for required in ("RateLimited", "Overloaded", "ServerError", "Timeout", "NetworkError",
                     "AuthenticationError", "PermissionDenied", "NotFound", "BadRequest",
                     "ContextLengthExceeded", "ContentFiltered", "StreamError", "CircuitOpen",
                     "QueueFull", "Cancelled", "DeadlineExceeded", "EngineCrashed", "GatewayUnavailable",
                     "GatewayTimeout"):
        assert required in names
    assert all(issubclass(cls, InferenceError) for cls in ALL_ERROR_CLASSES)
    assert len({cls.kind for cls in ALL_ERROR_CLASSES}) == len(ALL_ERROR_CLASSES)


@pytest.mark.parametrize("cls", ALL_ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_survives_pickle_with_all_fields(cls):
    original = _sample(cls)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        restored = pickle.loads(pickle.dumps(original, protocol=protocol))
        assert type(restored) is cls
        assert restored.fields() == original.fields()
        assert restored == original
        assert str(restored) == str(original)
        # The instance override of the class default survives too.
        assert restored.retryable is (not cls.default_retryable)


def test_circuit_open_carries_its_times():
    err = _sample(CircuitOpen)
    restored = pickle.loads(pickle.dumps(err))
    assert (restored.provider, restored.endpoint) == ("openai", "https://api.example/v1")
    assert restored.retry_at_unix_ms - restored.opened_at_unix_ms == 5000


def test_breaker_and_retry_sets():
    counted = {cls.__name__ for cls in ALL_ERROR_CLASSES if cls.counts_for_breaker}
    assert counted == {"ServerError", "Overloaded", "Timeout", "NetworkError", "StreamError"}
    assert errors.RateLimited().retryable and not errors.RateLimited.counts_for_breaker
    assert not errors.ContentFiltered().retryable and not errors.ContentFiltered.counts_for_breaker
    assert not errors.BadRequest().retryable


def test_repr_and_str_are_informative():
    err = errors.RateLimited("slow down", provider="anthropic", status=429, retry_after_s=2)
    assert "RateLimited(" in repr(err) and "retry_after_s=2" in repr(err)
    assert str(err).startswith("rate_limited provider=anthropic status=429 retry_after=2s")


def test_config_error_is_not_an_inference_error_and_pickles():
    # ``except InferenceError`` around a call must not swallow a broken configuration.
    assert not issubclass(errors.ConfigError, InferenceError)
    assert errors.ConfigError not in ALL_ERROR_CLASSES
    err = errors.ConfigError("expected an integer, got a string", path="deploy.yaml: deployments[0].workers")
    restored = pickle.loads(pickle.dumps(err))
    assert restored == err and str(restored) == "deploy.yaml: deployments[0].workers: expected an integer, got a string"


def test_client_side_errors_are_distinct_and_do_not_trip_breakers():
    assert issubclass(errors.GatewayUnavailable, InferenceError) and errors.GatewayUnavailable().retryable
    assert not issubclass(errors.GatewayUnavailable, errors.InternalError)
    assert issubclass(errors.GatewayTimeout, errors.Timeout) and not errors.GatewayTimeout.counts_for_breaker
    assert errors.EngineCrashed().retryable and not errors.EngineCrashed(retryable=False).retryable


def test_an_internal_error_is_never_retryable_unless_told():
    from actors.errors import InternalError

    assert InternalError("bug").retryable is False
