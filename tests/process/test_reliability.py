"""What a read timeout after the request was sent costs, counted at the upstream.

A request whose body reached the provider may be billed there, so its budget stays spent:
a strict cap holds under read timeouts (the mock counts what really arrived), and a
caller's own short deadline never counts against the provider's circuit.
"""

from __future__ import annotations


import pytest

from actors import errors as E

from conftest import deployment, fresh_window_s

CAP = 6


@pytest.mark.parametrize("phase", ["before headers", "after headers"])
@pytest.mark.parametrize("mode", ["strict", "approximate"])
def test_a_budget_cap_holds_under_read_timeouts(gateway, mock, mode, phase):
    limits = {"rpm": CAP, "window_s": fresh_window_s(), "mode": mode}
    node, client = gateway([deployment(mock.url, "capped", limits=limits,
                                       retry={"max_retries": 2, "base_delay_s": 0.01, "max_delay_s": 0.02},
                                       timeouts={"connect_s": 2, "read_s": 0.2, "total_s": 5},
                                       breaker={"consecutive_failures": 1000, "min_calls": 1000})])
    outcomes = []
    for _ in range(3 * CAP):
        try:
            if phase == "before headers":
                client.complete("capped", [{"role": "user", "content": "hello [[mock delay_ms=700]]"}],
                                max_tokens=2, timeout_s=5)
            else:  # the headers and nothing more: a stall mid-body, before the first token
                with client.stream("capped", [{"role": "user", "content": "hello [[mock stall_after=0]]"}],
                                   max_tokens=2, timeout_s=5) as stream:
                    list(stream)
            outcomes.append("completed")
        except E.InferenceError as exc:   # a GatewayTimeout (the client's own, a loaded node late) is a Timeout
            outcomes.append("Timeout" if isinstance(exc, E.Timeout) else type(exc).__name__)
    # Every attempt that timed out waiting for headers reached the upstream, and was kept charged.
    assert mock.stats()["total"] <= CAP, (mock.stats()["total"], outcomes)
    assert mock.stats()["total"] >= 1
    assert "BudgetExceeded" in outcomes and "Timeout" in outcomes, outcomes
    assert set(outcomes) <= {"Timeout", "BudgetExceeded"}, outcomes


def test_callers_short_deadlines_never_open_the_circuit_of_a_slow_healthy_upstream(gateway, mock):
    breaker = {"consecutive_failures": 3, "open_s": 30}
    impatient = deployment(mock.url, "impatient", breaker=breaker, retry={"max_retries": 0})
    patient = deployment(mock.url, "patient", breaker=breaker)  # same provider and endpoint: same circuit
    node, client = gateway([impatient, patient])
    slow = [{"role": "user", "content": "hello [[mock delay_ms=600]]"}]
    for _ in range(6):
        with pytest.raises(E.DeadlineExceeded):
            client.complete("impatient", slow, max_tokens=2, timeout_s=0.25)
    assert client.complete("patient", [{"role": "user", "content": "still there?"}], max_tokens=3).text
    circuits = {b.endpoint: b.state.value for b in client.status().breakers}
    assert set(circuits.values()) == {"closed"}, circuits
