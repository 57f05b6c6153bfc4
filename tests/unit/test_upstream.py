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
from actors.runtime.upstream_session import http_session
from actors.testing.mock_transport import (CONNECT_TIMEOUT, EOF, REFUSE, RESET_ON_SEND, STALL_ON_SEND, MockResponse,
                                           MockTransport)

URL = "https://api.example.invalid/v1/chat/completions"


def exchange(network: MockTransport, *, whole: bool = False, timeouts=(1.0, 0.3), deadline_s: float = 10.0,
             max_body: int = 1 << 20) -> tuple[list, HttpExchange]:
    session = http_session(URL, network)
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
    session = http_session(URL, network)
    for expected in (b"1", b"2", b"3"):
        run = HttpExchange(HttpRequest("POST", URL, {}, b"{}", False), (1.0, 1.0), 1 << 20, time.time() + 5, whole=True)
        events: list = []
        run.run(session, lambda event: events.append(event) or True)
        assert events == [WholeBody(expected)]
    session.close()
    assert network.connects == 2                      # the second answer closed its connection


def _whole(session, url: str = URL, headers: dict | None = None) -> list:
    run = HttpExchange(HttpRequest("POST", url, headers or {}, b'{"q": 1}', False), (1.0, 1.0), 1 << 20,
                       time.time() + 5, whole=True)
    events: list = []
    run.run(session, lambda event: events.append(event) or True)
    return events


def test_a_cookie_an_upstream_sets_never_goes_out_on_the_slots_next_call():
    # A slot's next call is another caller's: what one answer set must not travel with it.
    network = answering(MockResponse(200, body=b"1", headers={"set-cookie": "__cf_bm=caller-a; Path=/"}),
                        MockResponse(200, body=b"2"))
    session = http_session(URL, network)
    assert _whole(session) == [WholeBody(b"1")] and _whole(session) == [WholeBody(b"2")]
    session.close()
    first, second = network.requests
    assert "cookie" not in first.headers and "cookie" not in second.headers
    # What the session adds to every request still goes out, under the request's own headers.
    assert second.headers["user-agent"].startswith("python-requests/") and second.headers["accept"] == "*/*"


def test_the_requests_own_headers_win_over_the_sessions_defaults():
    network = answering(MockResponse(200, body=b"1"))
    session = http_session(URL, network)
    _whole(session, headers={"User-Agent": "atomr-test/1", "x-api-key": "k"})
    session.close()
    (request,) = network.requests
    assert request.headers["user-agent"] == "atomr-test/1" and request.headers["x-api-key"] == "k"
    assert request.headers["content-length"] == str(len(b'{"q": 1}'))


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_the_upstreams_answer_and_is_not_followed(status):
    # Following it would send the body (and to the same host the key) wherever the 3xx points.
    network = answering(MockResponse(status, body=b"moved", headers={"location": "https://elsewhere.invalid/steal"}),
                        MockResponse(200, body=b"followed"))
    session = http_session(URL, network)
    (answer,) = _whole(session)
    session.close()
    assert isinstance(answer, HttpStatus) and answer.status == status and answer.body == b"moved"
    assert [r.url for r in network.requests] == [URL]


def test_stop_ends_a_blocked_read_at_once():
    gate = threading.Event()
    network = answering(MockResponse(200, parts=[b"first", gate], hold_s=30))
    session = http_session(URL, network)
    run = HttpExchange(HttpRequest("POST", URL, {}, b"{}", True), (1.0, 30.0), 1 << 20, time.time() + 60)
    events: list = []
    reader = threading.Thread(target=run.run, args=(session, lambda event: events.append(event) or True))
    reader.start()
    deadline = time.monotonic() + 5
    while b"first" not in events and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped_at = time.monotonic()
    run.stop()
    reader.join(5)
    assert not reader.is_alive() and time.monotonic() - stopped_at < 2.0
    assert events == [Opened(), b"first"]             # a stopped exchange reports nothing more
    gate.set()
    session.close()


def test_a_late_reader_gets_every_event_already_buffered_in_one_read():
    """Events the upstream wrote while the reader was busy (one transfer chunk each, arrived
    together) come out of one read: http.client's read1 would hand them over one by one."""
    burst = (b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n")
    events, _ = exchange(answering(MockResponse(200, parts=[b"data: 0\n\n", 0.02, burst, 0.02, b"data: 4\n\n"])))
    assert events == [Opened(), b"data: 0\n\n", b"".join(burst), b"data: 4\n\n", END]


def test_a_stream_read_from_the_buffer_leaves_its_connection_fit_for_the_next_request():
    network = answering(MockResponse(200, parts=[(b"a", b"b"), b"c"]), MockResponse(200, parts=[b"d"]))
    session = http_session(URL, network)
    for expected in ([b"ab", b"c"], [b"d"]):
        run = HttpExchange(HttpRequest("POST", URL, {}, b"{}", True), (1.0, 1.0), 1 << 20, time.time() + 5)
        events: list = []
        run.run(session, lambda event: events.append(event) or True)
        assert events == [Opened(), *expected, END]
    session.close()
    assert network.connects == 1 and len(network.requests) == 2


def test_bytes_after_a_streamed_body_close_its_connection():
    class Trailing(MockResponse):
        def wire(self):
            yield self._head()
            yield b"1\r\na\r\n0\r\n\r\ngarbage after the body"

    network = answering(Trailing(200, parts=[]), MockResponse(200, parts=[b"b"]))
    session = http_session(URL, network)
    for expected in (b"a", b"b"):
        run = HttpExchange(HttpRequest("POST", URL, {}, b"{}", True), (1.0, 1.0), 1 << 20, time.time() + 5)
        events: list = []
        run.run(session, lambda event: events.append(event) or True)
        assert events == [Opened(), expected, END]
    session.close()
    assert network.connects == 2                      # the first connection was not trusted again


def test_malformed_chunked_coding_is_a_body_failure():
    class Broken(MockResponse):
        def wire(self):
            yield self._head()
            yield b"3\r\nabc\r\nnot-a-size\r\n"

    events, _ = exchange(answering(Broken(200, parts=[])))
    assert events[:2] == [Opened(), b"abc"]
    assert isinstance(events[-1], TransportFailed) and events[-1].phase is Phase.BODY and not events[-1].timed_out


def test_every_slot_session_of_a_process_verifies_tls_with_one_shared_context():
    import requests

    from actors.runtime.upstream_session import tls_context

    contexts, bundles = set(), set()
    for _ in range(3):   # three slots
        session = http_session(URL, answering())
        adapter = session.get_adapter(URL)
        prepared = requests.Request("POST", URL, data=b"{}").prepare()
        pool = adapter.get_connection_with_tls_context(prepared, True)
        adapter.cert_verify(pool, URL, True, None)
        contexts.add(id(pool.conn_kw["ssl_context"]))
        bundles.add(pool.ca_certs)
        session.close()
    assert contexts == {id(tls_context())} and bundles == {None}   # no bundle loaded again per connection
    assert tls_context().verify_mode.name == "CERT_REQUIRED" and tls_context().get_ca_certs()


def test_an_exchange_stopped_before_its_slot_runs_it_sends_nothing_and_says_so():
    # A deadline or cancel ends the attempt while its slot's thread is still busy (or not scheduled):
    # the attempt is reported unsent and its budget given back, so it must never go out afterwards.
    network = answering(MockResponse(200))
    session = http_session(URL, network)
    run = HttpExchange(HttpRequest("POST", URL, {}, b'{"q": 1}', False), (1.0, 1.0), 1 << 20, time.time() + 10)
    run.stop()
    events: list = []
    run.run(session, lambda event: events.append(event) or True)
    session.close()
    assert events == [] and network.requests == [] and not run.phase.reached_provider


def test_an_exchange_stopped_while_its_request_is_being_written_counts_as_sent():
    # The bytes may be in the kernel already: reported unsent, the budget would be given back for a
    # request the provider may run (a refund the upstream's count contradicts).
    network = answering(MockResponse(200)).fail_next(STALL_ON_SEND)
    session = http_session(URL, network)
    run = HttpExchange(HttpRequest("POST", URL, {}, b'{"q": 1}', False), (5.0, 5.0), 1 << 20, time.time() + 10)
    events: list = []
    reader = threading.Thread(target=run.run, args=(session, lambda event: events.append(event) or True))
    reader.start()
    try:
        deadline = time.monotonic() + 5
        while not run.tracker.writing and time.monotonic() < deadline:
            time.sleep(0.005)
        assert run.tracker.writing and not run.phase.reached_provider
        run.stop()
        assert run.phase.reached_provider
    finally:
        run.stop()
        reader.join(5)
        session.close()
    assert not reader.is_alive() and events == []   # a stopped exchange reports nothing more


def test_an_exchange_whose_deadline_passed_before_its_request_went_out_never_sends_it():
    # The engine dispatched it in time, but its slot's thread ran it late (niced, a loaded machine):
    # its caller already has a DeadlineExceeded, so nothing goes out and nothing is paid for.
    network = answering(MockResponse(200))
    session = http_session(URL, network)
    run = HttpExchange(HttpRequest("POST", URL, {}, b'{"q": 1}', False), (1.0, 1.0), 1 << 20, time.time() - 0.001)
    events: list = []
    run.run(session, lambda event: events.append(event) or True)
    session.close()
    assert network.requests == [] and not run.phase.reached_provider
    (failed,) = events
    assert isinstance(failed, TransportFailed) and failed.timed_out and not failed.phase.reached_provider
