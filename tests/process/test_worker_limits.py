"""The worker end to end against the mock provider: a stall is a Timeout, total_s bounds the
whole call however slowly the upstream trickles, size limits end runaway responses without
reading them, an empty 200 is its own error, and a worker whose engine died exits."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from actors import errors as E
from actors.core.procstat import live_stat
from actors.ops.procs import parent_pid

from conftest import deployment, upstream_caller_pid, wait_for

MIB = 1024 * 1024


def msgs(text):
    return [{"role": "user", "content": text}]


def fails_with(client, model, text, stream, **params):
    try:
        if stream:
            with client.stream(model, msgs(text), **params) as stream:
                chunks = list(stream)
            raise AssertionError(f"expected an error, got {len(chunks)} chunks")
        result = client.complete(model, msgs(text), **params)
        raise AssertionError(f"expected an error, got {result!r}")
    except E.InferenceError as exc:
        return exc


def the_only_worker(client, mock) -> int:
    """The pid of a one-worker deployment's worker: the process holding the mock's connection."""
    done = threading.Event()

    def slow():
        with client.stream("d1", msgs("[[mock drip_ms=200 words=4]] find me"), timeout_s=20) as stream:
            list(stream)
        done.set()

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    pid = upstream_caller_pid(mock)
    assert done.wait(20) and pid != os.getpid()
    return pid


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def test_a_stall_after_the_first_token_is_a_timeout_not_a_stream_error(gateway, mock):
    _, client = gateway([deployment(mock.url, "d1", timeouts={"connect_s": 2, "read_s": 0.5, "total_s": 30})])
    got = []
    with pytest.raises(E.Timeout) as info, client.stream("d1", msgs("[[mock stall_after=3]] go"),
                                                          max_tokens=20) as stream:
        for chunk in stream:
            got.append(chunk)
    assert got, "tokens arrived before the stall"
    assert info.value.retryable is False, "tokens were delivered: not safe to replay"
    assert mock.stats()["total"] == 1


def test_total_s_ends_a_trickling_non_streamed_call(gateway, mock):
    """Every read is satisfied (a byte per 50 ms against read_s=2): only total_s can end it."""
    total_s = 1.0
    _, client = gateway([deployment(mock.url, "d1", retry={"max_retries": 0},
                                    timeouts={"connect_s": 2, "read_s": 2, "total_s": total_s})])
    started = time.monotonic()
    error = fails_with(client, "d1", "[[mock trickle_ms=50]] hi", stream=False)
    elapsed = time.monotonic() - started
    assert type(error) is E.Timeout and "total timeout" in error.message, error
    # The body is a few hundred bytes: trickled whole it would take over 10 s.
    assert elapsed < 10 * total_s


def test_a_50_mb_sse_line_ends_with_response_too_large_without_being_read(gateway, mock):
    _, client = gateway([deployment(mock.url, "d1", workers=1, response_limits={"max_line_bytes": MIB})])
    worker = the_only_worker(client, mock)
    before = peak_rss_kib(worker)
    error = fails_with(client, "d1", f"[[mock huge_line={50 * MIB}]] hi", stream=True)
    grown_mib = (peak_rss_kib(worker) - before) / 1024
    assert isinstance(error, E.ResponseTooLarge) and error.limit == "max_line_bytes", error
    assert not error.retryable and not error.counts_for_breaker
    # Reading stopped near the limit: what the mock wrote is the limit plus buffers, not 50 MB.
    wait_for(lambda: mock.stats()["last_bytes_sent"] > 0, message="the mock's count")
    time.sleep(0.2)  # the mock's writer notices the closed connection
    assert mock.stats()["last_bytes_sent"] < 20 * MIB
    assert grown_mib < 16, f"the worker's peak RSS grew by {grown_mib:.0f} MiB"


def test_a_50_mb_body_ends_with_response_too_large_without_being_read(gateway, mock):
    _, client = gateway([deployment(mock.url, "d1", workers=1, response_limits={"max_body_bytes": 2 * MIB})])
    worker = the_only_worker(client, mock)
    before = peak_rss_kib(worker)
    error = fails_with(client, "d1", f"[[mock huge_body={50 * MIB}]] hi", stream=False)
    grown_mib = (peak_rss_kib(worker) - before) / 1024
    assert isinstance(error, E.ResponseTooLarge) and error.limit == "max_body_bytes", error
    assert mock.stats()["last_bytes_sent"] < 20 * MIB
    assert grown_mib < 16, f"the worker's peak RSS grew by {grown_mib:.0f} MiB"


@pytest.mark.parametrize("stream", [True, False])
def test_an_empty_200_is_an_empty_response(gateway, mock, stream):
    _, client = gateway([deployment(mock.url, "d1")])
    error = fails_with(client, "d1", "[[mock empty=1]] hi", stream=stream)
    assert isinstance(error, E.EmptyResponse), error
    assert not error.counts_for_breaker
    # The deployment allows 2 retries; an empty answer gets one (EmptyResponse.max_retries).
    assert mock.stats()["total"] == 2


def test_a_worker_whose_engine_died_exits(gateway, mock):
    _, client = gateway([deployment(mock.url, "d1", workers=1)])
    stop = threading.Event()

    def consume():
        try:
            with client.stream("d1", msgs("[[mock drip_ms=300]] long"), max_tokens=200, timeout_s=20) as stream:
                for _ in stream:
                    if stop.is_set():
                        return
        except Exception:  # noqa: BLE001 - its engine is killed under it
            pass

    threading.Thread(target=consume, daemon=True).start()
    worker = upstream_caller_pid(mock)
    engine = parent_pid(worker)
    assert engine and engine not in (1, os.getpid())
    os.kill(engine, signal.SIGKILL)

    wait_for(lambda: live_stat(worker) is None, timeout_s=15, message="the orphaned worker to exit")
    stop.set()


def test_streamed_tool_calls_arrive_in_tool_calls_and_no_chunk_is_empty(gateway, mock):
    _, client = gateway([deployment(mock.url, "d1")])
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with client.stream("d1", msgs("[[tool]] weather in Paris?"), tools=tools) as stream:
        chunks = list(stream)
    assert chunks and all(c.text or c.tool_calls for c in chunks), chunks
    deltas = [tc for c in chunks for tc in c.tool_calls]
    assert any(tc.get("name") == "get_weather" for tc in deltas)
    arguments = "".join(tc.get("arguments") or "" for tc in deltas)
    assert '"city"' in arguments
