"""End to end on one node: real Thespian multiproc actor systems, real HTTP to the mock provider."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from actors import errors as E
from actors.types import Completed, Failed, InferenceRequest, TokenChunk
from actors.ops.procs import pids_in_group, port_is_listening

from conftest import deployment, upstream_caller_pid, wait_for

HELLO = [{"role": "user", "content": "Say hello"}]


def msgs(text):
    return [{"role": "user", "content": text}]


def test_complete_and_stream_end_to_end(gateway, mock):
    node, client = gateway([deployment(mock.url, "chat"), deployment(mock.url, "claude", provider="anthropic")])
    for model in ("chat", "claude"):
        whole = client.complete(model, HELLO, max_tokens=12)
        assert isinstance(whole, Completed) and whole.deployment == model
        assert whole.text.startswith("You said: Say hello") and whole.finish_reason == "stop"
        assert whole.usage.output_tokens == 12 and whole.usage.input_tokens > 0
        assert whole.cost_usd is not None and whole.cost_usd > 0 and whole.attempts == 1
        stream = client.stream(model, HELLO, max_tokens=12)
        chunks = list(stream)
        assert [c.seq for c in chunks] == list(range(len(chunks))) and chunks
        assert "".join(c.text for c in chunks) == stream.result.text == whole.text
        assert stream.result.usage == whole.usage and stream.result.cost_usd == whole.cost_usd
        assert stream.result.chunks == len(chunks)
    assert mock.stats()["total"] == 4


def test_streaming_is_progressive(gateway, mock):
    node, client = gateway([deployment(mock.url, "chat")])
    stream = client.stream("chat", msgs("[[mock drip_ms=100]] go"), max_tokens=10)
    started = time.monotonic()
    arrivals = []
    for chunk in stream:
        arrivals.append(time.monotonic() - started)
    total = time.monotonic() - started
    assert total >= 0.9  # nine 100 ms gaps upstream
    # The first token reached us while the upstream was still sending, not at the end.
    assert arrivals[0] < 0.4 and arrivals[0] < total - 0.5
    assert len(arrivals) >= 5 and arrivals == sorted(arrivals)
    assert stream.result.ttft_s is not None and stream.result.ttft_s < 0.4


def test_chunks_are_coalesced(gateway, mock):
    node, client = gateway([deployment(mock.url, "chat", coalesce_ms=200)])
    stream = client.stream("chat", msgs("[[mock drip_ms=10]] go"), max_tokens=60)
    chunks = list(stream)
    assert len(stream.result.text.split()) == 60
    assert 2 <= len(chunks) <= 10  # ~600 ms of tokens in 200 ms batches, first one alone


def _slow_blocker(client, model, ms, results, key="blocker"):
    def run():
        try:
            results[key] = client.complete(model, msgs(f"[[mock delay_ms={ms}]] block"), max_tokens=2)
        except E.InferenceError as exc:
            results[key] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _engine(client, name="d1"):
    return next(e for e in client.status().engines if e.deployment == name)


def test_priorities_and_fifo_within_a_level(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=1)])
    results = {}
    threads = [_slow_blocker(client, "d1", 700, results)]
    wait_for(lambda: _engine(client).busy_workers == 1, message="the worker to be busy")
    finished = []
    lock = threading.Lock()

    def call(label, priority):
        r = client.complete("d1", msgs(f"[[mock delay_ms=30]] {label}"), max_tokens=2, priority=priority)
        with lock:
            finished.append(label)
        results[label] = r

    order = [("bg", "background"), ("n1", "normal"), ("hi", "high"), ("n2", "normal"), ("crit", "critical"),
             ("low", "low")]
    for i, (label, priority) in enumerate(order):
        threads.append(threading.Thread(target=call, args=(label, priority)))
        threads[-1].start()
        wait_for(lambda: _engine(client).queued == i + 1, message=f"{label} to be queued")
    for t in threads:
        t.join(30)
    assert finished == ["crit", "hi", "n1", "n2", "low", "bg"]
    assert all(isinstance(r, Completed) for r in results.values())


def test_full_queue_answers_queue_full_at_once(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=1, queue_capacity=1)])
    results = {}
    threads = [_slow_blocker(client, "d1", 1500, results, "a")]
    wait_for(lambda: _engine(client).busy_workers == 1, message="busy worker")
    threads.append(_slow_blocker(client, "d1", 10, results, "b"))
    wait_for(lambda: _engine(client).queued == 1, message="one queued")
    with pytest.raises(E.QueueFull):
        client.complete("d1", HELLO)
    assert "a" not in results  # answered while the queue was still full, not after it drained
    for t in threads:
        t.join(30)
    assert isinstance(results["a"], Completed) and isinstance(results["b"], Completed)


def test_expired_request_fails_without_being_sent(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=1)])
    results = {}
    t = _slow_blocker(client, "d1", 1500, results)
    wait_for(lambda: _engine(client).busy_workers == 1, message="busy worker")
    with pytest.raises(E.DeadlineExceeded):
        client.complete("d1", msgs("never sent"), timeout_s=0.3)
    assert "blocker" not in results  # ended at its own deadline, not when the worker came free
    t.join(30)
    assert mock.stats()["total"] == 1  # only the blocker reached the provider


def test_cancel_queued_and_in_flight(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=1)])
    results = {}
    stream = client.stream("d1", msgs("[[mock drip_ms=200]] long"), max_tokens=50)
    got = []

    def consume():
        try:
            for chunk in stream:
                got.append(chunk)
        except E.InferenceError as exc:
            results["stream"] = exc

    consumer = threading.Thread(target=consume)
    consumer.start()
    wait_for(lambda: got, message="the first chunk")
    queued = client.request("d1", msgs("queued then cancelled"), max_tokens=2)
    waiter = threading.Thread(target=lambda: results.setdefault("queued", _send(client, queued)))
    waiter.start()
    wait_for(lambda: _engine(client).queued == 1, message="queued")
    client.cancel(queued.request_id)
    waiter.join(10)
    assert isinstance(results["queued"], E.Cancelled)
    stream.cancel()
    consumer.join(10)
    assert isinstance(results["stream"], E.Cancelled)
    assert len(got) < 50
    # The worker is free again and the queued request never reached the provider.
    assert client.complete("d1", HELLO, max_tokens=3).text
    assert mock.stats()["total"] == 2


def _send(client, request):
    try:
        return client.send(request)
    except E.InferenceError as exc:
        return exc


def test_retry_after_429_honours_retry_after(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1")])
    started = time.monotonic()
    result = client.complete("d1", msgs("[[mock status=429 retry_after=1 fail_times=1 key=r429]] hi"), max_tokens=3)
    elapsed = time.monotonic() - started
    assert result.attempts == 2 and elapsed >= 1.0
    assert mock.stats()["total"] == 2


def test_non_retryable_error_is_not_retried(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1")])
    with pytest.raises(E.BadRequest) as info:
        client.complete("d1", msgs("[[mock status=400]] bad"))
    assert info.value.status == 400 and info.value.provider == "openai"
    assert mock.stats()["total"] == 1


def _trip_breaker(client, mock, failures, status):
    mock.script([{"status": status}] * failures)
    for _ in range(failures):
        with pytest.raises(E.ServerError):
            client.complete("d1", HELLO)
    wait_for(lambda: _engine(client).circuit == "open", message="the circuit to open")


def test_breaker_opens_on_5xx_storm_and_closes_after_half_open_probe(gateway, mock, tmp_path):
    dep = deployment(mock.url, "d1", retry={"max_retries": 0},
                     breaker={"consecutive_failures": 3, "open_s": 1.0, "half_open_probes": 1})
    node, client = gateway([dep])
    _trip_breaker(client, mock, 3, 503)
    with pytest.raises(E.CircuitOpen) as info:
        client.complete("d1", HELLO)
    assert info.value.retry_at_unix_ms > info.value.opened_at_unix_ms
    assert mock.stats()["total"] == 3  # refused locally, nothing sent
    wait_for(lambda: time.time() * 1000 >= info.value.retry_at_unix_ms, timeout_s=5, message="open period")
    result = client.complete("d1", HELLO, max_tokens=3)  # the half-open probe
    assert isinstance(result, Completed)
    wait_for(lambda: _engine(client).circuit == "closed", message="the circuit to close")
    breaker = client.status().breakers[0]
    assert breaker.state.value == "closed" and breaker.trips == 1
    # Transitions are logged by the breaker actor, into the node's log.
    log = tmp_path / "n1.log"
    wait_for(lambda: "half_open -> closed" in log.read_text(), message="the transitions in the node log")
    assert "WARNING atomr.breaker: circuit openai" in log.read_text() and "closed -> open" in log.read_text()


def test_failed_probe_reopens_the_circuit(gateway, mock):
    dep = deployment(mock.url, "d1", retry={"max_retries": 0},
                     breaker={"consecutive_failures": 2, "open_s": 0.5, "max_open_s": 10})
    node, client = gateway([dep])
    _trip_breaker(client, mock, 2, 503)   # (a 500 alone would be judged the caller's by a known-good probe)
    mock.script([{"status": 503}])  # for the probe
    first = client.status().breakers[0]
    wait_for(lambda: time.time() * 1000 >= first.retry_at_unix_ms, timeout_s=5, message="open period")
    with pytest.raises(E.ServerError):
        client.complete("d1", HELLO)  # the probe fails
    wait_for(lambda: client.status().breakers[0].trips == 2, message="re-open")
    again = client.status().breakers[0]
    assert again.state.value == "open"
    assert again.retry_at_unix_ms - again.opened_at_unix_ms == pytest.approx(1000, abs=50)  # escalated


def test_worker_killed_mid_stream_ends_in_exactly_one_terminal(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=1)])
    endpoint = client._endpoint()
    engine = client.routes("d1")[0].engine
    request = InferenceRequest(model="d1", messages=msgs("[[mock drip_ms=100]] go"), params={"max_tokens": 40},
                               stream=True, deadline_unix=time.time() + 30)
    first = endpoint.ask(engine, request, 10)
    assert isinstance(first, TokenChunk)
    pid = upstream_caller_pid(mock)
    assert pid in pids_in_group(node.pgid)
    os.kill(pid, signal.SIGKILL)
    terminals = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not terminals:
        message = endpoint.listen(1)
        if isinstance(message, (Completed, Failed)) and message.request_id == request.request_id:
            terminals.append(message)
    assert len(terminals) == 1 and isinstance(terminals[0].error, E.WorkerCrashed)
    # Nothing else arrives for that request: exactly one terminal.
    straggler = endpoint.listen(1.0)
    assert not (isinstance(straggler, (Completed, Failed)) and straggler.request_id == request.request_id)
    # A new worker took the slot.
    assert client.complete("d1", HELLO, max_tokens=3).text


def test_worker_killed_before_any_token_is_retried_on_a_new_worker(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=1)])
    results = {}
    t = threading.Thread(target=lambda: results.setdefault(
        "r", _send(client, client.request("d1", msgs("[[mock delay_ms=1500 fail_times=1 key=kill]] x"), max_tokens=3))))
    t.start()
    pid = upstream_caller_pid(mock)
    os.kill(pid, signal.SIGKILL)
    t.join(30)
    assert isinstance(results["r"], Completed) and results["r"].attempts == 2


def test_bad_requests_get_typed_errors(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1")])
    endpoint = client._endpoint()
    engine = client.routes("d1")[0].engine
    for bad in (InferenceRequest(model="d1", messages=[]),
                InferenceRequest(model="d1", messages=HELLO, priority="urgent"),
                InferenceRequest(model="d1", messages=HELLO, params={"max_tokens": -3})):
        reply = endpoint.ask(engine, bad, 10)
        assert isinstance(reply, Failed) and isinstance(reply.error, E.BadRequest)
        assert reply.request_id == bad.request_id
    with pytest.raises(E.NotFound):
        client.complete("no-such-model", HELLO)
    assert mock.stats()["total"] == 0


def test_clean_shutdown_leaves_no_process_or_port_and_says_so_at_info(gateway, mock, tmp_path):
    node, client = gateway([deployment(mock.url, "d1", workers=3)])
    assert client.complete("d1", HELLO, max_tokens=2).text
    pgid, port = node.pgid, node.admin_port
    assert len(pids_in_group(pgid)) >= 1 + 1 + 3  # admin, logger, workers...
    client.close()
    node.stop(drain_timeout_s=5)   # as launch.py stops a node
    assert pids_in_group(pgid) == []
    assert not port_is_listening(port)
    # A clean stop is the plan, not news: no line above INFO (a worker's exit, when its line
    # reaches the log before the logger stops, says why at INFO).
    lines = (tmp_path / "n1.log").read_text().splitlines()
    assert [line for line in lines if " WARNING " in line or " ERROR " in line] == []
    assert all("(the engine is stopping)" in line for line in lines if " exited" in line)


def test_a_model_served_by_two_deployments_falls_back_past_an_open_circuit(gateway, mock):
    flaky = deployment(mock.url, "east", retry={"max_retries": 0}, breaker={"consecutive_failures": 1, "open_s": 30})
    # Another endpoint (breakers are per provider and endpoint): the same server by another name.
    steady = deployment(mock.url.replace("127.0.0.1", "localhost"), "west")
    flaky["model"] = steady["model"] = "shared-model"
    node, client = gateway([flaky, steady])
    assert {r.deployment for r in client.routes("shared-model")} == {"east", "west"}
    mock.script([{"status": 503}])
    with pytest.raises(E.ServerError):
        client.complete("east", HELLO, max_tokens=1)
    wait_for(lambda: _engine(client, "east").circuit == "open", message="east's circuit to open")
    served = {client.complete("shared-model", HELLO, max_tokens=2).deployment for _ in range(6)}
    assert served == {"west"}  # east refused at once (CircuitOpen, nothing sent): west answered


def test_drain_finishes_in_flight_work_and_refuses_new_work(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=1)])
    results = {}
    t = _slow_blocker(client, "d1", 800, results)
    wait_for(lambda: _engine(client).busy_workers == 1, message="a request in flight")
    drained = {}
    drainer = threading.Thread(target=lambda: drained.setdefault("ok", node.drain(10)))
    drainer.start()
    wait_for(lambda: _engine(client).draining, message="the engine to drain")
    with pytest.raises(E.ShuttingDown):
        client.complete("d1", HELLO)
    drainer.join(15)
    t.join(15)
    assert drained["ok"] is True and isinstance(results["blocker"], Completed)  # finished, then drained


def test_a_frozen_worker_does_not_hold_a_request_past_its_deadline_and_is_replaced(gateway, mock):
    """SIGSTOP a worker mid-call: the engine ends the request at its deadline, then kills and replaces it."""
    node, client = gateway([deployment(mock.url, "d1", workers=1)])
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("r", _send(
        client, client.request("d1", msgs("[[mock delay_ms=20000]] stuck"), max_tokens=2, timeout_s=1.5))))
    thread.start()
    pid = upstream_caller_pid(mock)
    os.kill(pid, signal.SIGSTOP)
    try:
        thread.join(15)
        assert isinstance(results.get("r"), E.DeadlineExceeded), results
        # Within the grace period the engine kills the frozen process by pid and starts another.
        wait_for(lambda: pid not in pids_in_group(node.pgid), timeout_s=15, message="the frozen worker to be killed")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert client.complete("d1", HELLO, max_tokens=3).text
    assert _engine(client).workers == 1
