"""One HTTP exchange (runtime/upstream.py) on the in-memory transport: the phase each failure
reaches, and so whether the provider has the request (``sent``), through the worker's own
session and PhaseAdapter. tests/process/test_transport_phases.py does the same on real sockets."""

from __future__ import annotations

import threading
import time

import pytest

from actors import errors as E
from actors.core.streaming import END, HttpStatus, Opened, Overflow, TransportFailed, WholeBody
from actors.core.transport import Phase, classify_transport
from actors.providers.base import HttpRequest
from actors.runtime.upstream import MAX_ERROR_BODY, HttpExchange
from actors.runtime.worker import _session
from actors.testing.mock_transport import (CONNECT_TIMEOUT, EOF, REFUSE, RESET_ON_SEND, STALL_ON_SEND, MockResponse,
                                           MockTransport)

URL = "https://api.example.invalid/v1/chat/completions"


def exchange(network: MockTransport, *, whole: bool = False, timeouts=(1.0, 0.3), deadline_s: float = 10.0,
             max_body: int = 1 << 20) -> tuple[list, HttpExchange]:
    session = _session(URL, network)
    run = HttpExchange(HttpRequest("POST", URL, {"content-type": "application/json"}, b'{"q": 1}', not whole),
                       timeouts, max_body, time.time() + deadline_s, whole=whole)
    events: list = []
    run.run(session, lambda event: events.append(event) or True)
    session.close()
    return events, run


def answering(*answers: MockResponse) -> MockTransport:
    queue = list(answers)
    return MockTransport(lambda request: queue.pop(0))


@pytest.mark.parametrize("fault,phase,timed_out,sent,error", [
    (REFUSE, Phase.CONNECT, False, False, E.NetworkError),
    (CONNECT_TIMEOUT, Phase.CONNECT, True, False, E.Timeout),
    (RESET_ON_SEND, Phase.SEND, False, False, E.NetworkError),
    (STALL_ON_SEND, Phase.SEND, True, False, E.Timeout),
])
def test_failures_before_the_request_is_written_are_not_sent(fault, phase, timed_out, sent, error):
    network = answering(MockResponse(200)).fail_next(fault)
    events, run = exchange(network, timeouts=(0.2, 0.2))
    (failed,) = events
    assert isinstance(failed, TransportFailed) and (failed.phase, failed.timed_out) == (phase, timed_out), failed
    verdict = classify_transport(failed.phase, timed_out=failed.timed_out)
    assert verdict.sent is sent and isinstance(verdict.error, error) and not run.phase.reached_provider
    assert network.requests == []                    # the upstream never had it


@pytest.mark.parametrize("answer,timed_out,error", [
    (MockResponse.hang_up(), False, E.NetworkError),
    (MockResponse.silent(), True, E.Timeout),
])
def test_failures_after_the_request_was_written_are_sent(answer, timed_out, error):
    network = answering(answer)
    events, run = exchange(network)
    (failed,) = events
    assert failed.phase is Phase.AWAIT_HEADERS and failed.timed_out is timed_out, failed
    verdict = classify_transport(failed.phase, timed_out=failed.timed_out)
    assert verdict.sent and isinstance(verdict.error, error) and run.phase.reached_provider
    assert len(network.requests) == 1


@pytest.mark.parametrize("cut", [EOF, ConnectionResetError(104, "Connection reset by peer")])
def test_a_body_cut_mid_way_is_a_body_failure(cut):
    events, _ = exchange(answering(MockResponse(200, parts=[b"data: {}\n\n", cut])))
    assert events[0] == Opened() and events[1] == b"data: {}\n\n"
    assert isinstance(events[-1], TransportFailed) and events[-1].phase is Phase.BODY
    assert isinstance(classify_transport(Phase.BODY, timed_out=False).error, E.StreamError)


def test_a_stream_arrives_piece_by_piece_and_ends_once():
    events, run = exchange(answering(MockResponse(200, parts=[b"a", 0.02, b"b", 0.02, b"c"])))
    assert events == [Opened(), b"a", b"b", b"c", END] and run.phase is Phase.BODY


def test_a_trickle_that_satisfies_every_read_still_ends_at_the_deadline():
    trickle = MockResponse(200, parts=[part for _ in range(100) for part in (b" ", 0.05)])
    started = time.monotonic()
    events, _ = exchange(answering(trickle), whole=True, timeouts=(1.0, 1.0), deadline_s=0.4)
    assert isinstance(events[-1], TransportFailed) and events[-1].timed_out and events[-1].phase is Phase.BODY
    assert time.monotonic() - started < 3.0          # the deadline, not 100 pieces, ended it


def test_bodies_are_bounded_and_error_bodies_are_read_only_so_far():
    events, _ = exchange(answering(MockResponse(200, body=b"x" * 2000)), whole=True, max_body=1000)
    assert events == [Overflow(1000)]
    events, _ = exchange(answering(MockResponse(200, body=b'{"ok": true}')), whole=True)
    assert events == [WholeBody(b'{"ok": true}')]
    events, _ = exchange(answering(MockResponse(500, body=b"e" * (MAX_ERROR_BODY + 5000))))
    (status,) = events
    assert isinstance(status, HttpStatus) and status.status == 500 and len(status.body) == MAX_ERROR_BODY


def test_a_kept_alive_connection_carries_the_next_request_and_a_dropped_one_is_replaced():
    network = answering(MockResponse(200, body=b"1"), MockResponse(200, body=b"2", close=True), MockResponse(200, body=b"3"))
    session = _session(URL, network)
    for expected in (b"1", b"2", b"3"):
        run = HttpExchange(HttpRequest("POST", URL, {}, b"{}", False), (1.0, 1.0), 1 << 20, time.time() + 5, whole=True)
        events: list = []
        run.run(session, lambda event: events.append(event) or True)
        assert events == [WholeBody(expected)]
    session.close()
    assert network.connects == 2                      # the second answer closed its connection


def test_stop_ends_a_blocked_read_at_once():
    gate = threading.Event()
    network = answering(MockResponse(200, parts=[b"first", gate], hold_s=30))
    session = _session(URL, network)
    run = HttpExchange(HttpRequest("POST", URL, {}, b"{}", True), (1.0, 30.0), 1 << 20, time.time() + 60)
    events: list = []
    run.start(session, lambda event: events.append(event) or True, "test-reader")
    deadline = time.monotonic() + 5
    while b"first" not in events and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped_at = time.monotonic()
    run.stop()
    run.thread.join(5)
    assert not run.thread.is_alive() and time.monotonic() - stopped_at < 2.0
    assert events == [Opened(), b"first"]             # a stopped exchange reports nothing more
    gate.set()
    session.close()
