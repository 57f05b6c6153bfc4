"""The HTTP server's guards, decided apart from sockets; the disconnect watcher; the status terminal.

What needs a socket (waitress reading slow clients, the 429 written at accept, the 408 written
by the maintenance pass) is tests/process/test_http_front_door.py's; these are the decisions
the server's channel and accept loop carry out.
"""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import pytest
from rich.console import Console

from actors.http import terminal
from actors.http.server import ClientSlots, HttpServer, RequestClock, guarded_server, timeout_answer, waitress_options
from actors.http.watcher import Watcher
from actors.settings.schema import HttpConfig


def until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.005)


class Parsed:
    """A waitress request parser as the channel sees it: whether its headers are complete."""

    def __init__(self, headers_finished: bool = False) -> None:
        self.headers_finished = headers_finished


def response(raw: bytes) -> tuple[str, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return lines[0], headers, json.loads(body)


def test_the_header_deadline_runs_from_the_accept_then_from_each_requests_first_byte():
    clock = RequestClock(accepted_at=100.0)
    assert clock.overdue(110.0, header_s=10, body_s=60) is None
    assert clock.overdue(110.01, header_s=10, body_s=60) == "headers"      # nothing sent since the accept
    first = Parsed()
    clock.received(105.0, None, first)                                      # a header byte at 105
    assert clock.overdue(110.5, 10, 60) == "headers"                        # still timed from the accept
    first.headers_finished = True
    clock.received(109.0, first, first)
    assert clock.overdue(168.9, 10, 60) is None and clock.overdue(169.1, 10, 60) == "body"
    clock.received(170.0, first, None)                                      # the request is complete
    assert (clock.request_started, clock.headers_at) == (None, None)
    assert clock.overdue(10_000.0, 10, 60) is None                          # idle: read_timeout_s's business
    second = Parsed()
    clock.received(500.0, None, second)                                     # keep-alive: the next request
    assert clock.overdue(510.0, 10, 60) is None and clock.overdue(510.5, 10, 60) == "headers"
    third = Parsed(headers_finished=True)
    clock.received(600.0, second, third)                                    # one ended, the next began whole
    assert (clock.request_started, clock.headers_at) == (600.0, 600.0)


def test_a_clients_connections_are_counted_and_the_one_past_its_cap_is_a_429():
    slots = ClientSlots(limit=2)
    assert slots.refusal("10.0.0.1") is None
    slots.opened("10.0.0.1")
    slots.opened("10.0.0.1")
    slots.opened("10.0.0.2")
    note, payload = slots.refusal("10.0.0.1")
    assert note == ("refused a connection from 10.0.0.1: it has 2 open, http.max_connections_per_client is 2; "
                    "answered 429")
    status, headers, body = response(payload)
    assert status == "HTTP/1.1 429 Too Many Requests" and headers["Retry-After"] == "1"
    assert headers["Connection"] == "close"
    assert body["error"]["code"] == "too_many_connections" and body["error"]["type"] == "rate_limit_error"
    assert slots.refusal("10.0.0.2") is None                                # another client is not held up
    slots.closed("10.0.0.1")
    assert slots.refusal("10.0.0.1") is None and slots.per_client == {"10.0.0.1": 1, "10.0.0.2": 1}
    slots.closed("10.0.0.1")
    slots.closed("10.0.0.2")
    assert slots.per_client == {}                                           # no entry left per address gone


@pytest.mark.parametrize("what, field", [("headers", "header_timeout_s"), ("body", "body_timeout_s")])
def test_a_slow_request_is_answered_408_naming_the_setting(what, field):
    note, payload = timeout_answer(what, "10.0.0.9", 2.5)
    assert note == (f"closed a connection from 10.0.0.9: its request's {what} did not all arrive within "
                    f"http.{field} (2.5s); answered 408")
    status, headers, body = response(payload)
    assert status == "HTTP/1.1 408 Request Timeout" and headers["Connection"] == "close"
    assert body["error"] == {"message": f"the request's {what} did not all arrive within 2.5s",
                             "type": "timeout_error", "code": "request_timeout", "param": None}


def test_waitress_runs_with_the_configs_limits_and_an_address_is_required():
    config = HttpConfig(auth="none", listen="127.0.0.1:0", threads=8, connection_limit=50, max_connections_per_client=10,
                        max_body_bytes=4096, max_header_bytes=2048, read_timeout_s=7)
    options = waitress_options(config)
    assert (options["threads"], options["connection_limit"], options["max_request_header_size"],
            options["channel_timeout"]) == (8, 50, 2048, 7)
    assert options["max_request_body_size"] == 8192 and options["cleanup_interval"] == 1   # deadlines: each second
    assert options["expose_tracebacks"] is False and options["clear_untrusted_proxy_headers"] is True
    with pytest.raises(ValueError, match="the HTTP listener needs an address"):
        guarded_server(object(), HttpConfig(auth="none"))
    with pytest.raises(ValueError, match="the HTTP listener needs an address"):
        HttpServer(HttpConfig(auth="none"), 1900, ["m"])


# --- the disconnect watcher -------------------------------------------------------------------

class Call:
    """What the watcher holds of a call: something to cancel (a Stream's cancel is safe from any thread)."""

    def __init__(self) -> None:
        self.cancels = 0

    def cancel(self) -> None:
        self.cancels += 1


def test_the_watcher_cancels_each_call_whose_caller_left_once_and_all_on_drain():
    watcher = Watcher()
    try:
        left, stays, broken, unwatched = Call(), Call(), Call(), Call()
        gone = threading.Event()

        def closed_channel() -> bool:
            raise OSError("the channel is gone")

        watcher.add("r1", gone.is_set, left)
        watcher.add("r2", lambda: False, stays)
        watcher.add("r3", closed_channel, broken)   # a channel that cannot answer has gone too
        watcher.add("r4", None, unwatched)          # no way to tell (not waitress): not watched
        gone.set()
        until(lambda: watcher.cancelled == 2)
        polls = watcher.polls
        until(lambda: watcher.polls >= polls + 2)   # two more passes: nothing is cancelled twice
        assert (left.cancels, stays.cancels, broken.cancels, unwatched.cancels, watcher.cancelled) == (1, 0, 1, 0, 2)
        watcher.remove("r1")
        watcher.cancel_all()                        # the drain's timeout: every call still watched
        assert (left.cancels, stays.cancels, broken.cancels, unwatched.cancels) == (1, 1, 2, 0)
    finally:
        watcher.stop()
    assert not watcher._thread.is_alive()


# --- launch.py status --watch -------------------------------------------------------------------

def test_the_watch_redraws_until_ctrl_c_and_shows_a_failed_fetch(status_doc):
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)   # every redraw
    answers: list[Any] = [status_doc, RuntimeError("node gone"), status_doc, KeyboardInterrupt()]

    def fetch() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert terminal.watch(fetch, interval_s=0.0, console=console) == 0
    out = console.file.getvalue()
    assert answers == [] and "status unavailable (#2): node gone" in out and "(#3)" in out


@pytest.fixture
def status_doc() -> dict[str, Any]:
    now = time.time()
    return {"generated_unix": now, "leader": "n1", "unreachable": ["n3@10.0.0.3:1900"],
            "nodes": [{"node_id": "n1", "address": "10.0.0.1:1900", "leader": True, "membership": "leader",
                       "up_s": 4000.0, "heartbeat_age_s": None}],
            "deployments": [{"deployment": "d1", "provider": "openai", "state": "failing",
                             "failing_since_unix": now - 5, "queued": 2, "busy_workers": 1, "workers": 4,
                             "requests": 10, "error_rate": 0.2, "latency_p50_s": 0.4, "latency_p99_s": 3.0,
                             "ttft_p50_s": None, "ttft_p99_s": 0.0005, "tokens": {"input": 7, "output": 9},
                             "cost_usd": 0.25}],
            "breakers": [{"provider": "openai", "endpoint": "https://a", "node": "n1", "state": "open",
                          "opens": 3, "half_open_in_s": 12.0}],
            "budgets": [{"key": "k", "mode": "strict", "requests": 9, "rpm": 10, "tokens": 0, "tpm": None,
                         "window_end_unix": now + 30}],
            "spend": {"budgets": [{"budget": "team", "mode": "hard", "scope": "team", "name": "search",
                                   "period": "day", "spent_usd": 12.0, "usd": 10.0, "period_end_unix": now + 60}],
                      "ledgers": [{"node": "n1", "state": "failing", "written": 3, "dropped": 1, "queued": 0}]}}


def test_the_terminal_picture_shows_every_part_of_the_status(status_doc):
    console = Console(file=io.StringIO(), width=250, force_terminal=False, color_system=None)
    console.print(terminal.render(status_doc, refreshes=4))
    out = console.file.getvalue()
    for seen in ("led by n1", "(#4)", "n3@10.0.0.3:1900", "unreachable", "failing since", "1/4", "20%",
                 "400ms/3.0s", "-/0ms", "$0.2500", "open", "12.0s", "k (strict)", "9/10 (90%)", "0 (no limit)",
                 "team (hard)", "$12/$10 (120%)", "ledger of n1: failing · 3 written, 1 dropped, 0 queued",
                 "67min"):
        assert seen in out, seen
