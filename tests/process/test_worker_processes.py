"""Slots as threads of a few worker processes, on a real node: a SIGKILLed worker process ends
every request it held exactly once (retried when no token had left, else WorkerCrashed), the
other process's streams are untouched, and the engine starts a process for the lost slots."""

from __future__ import annotations

import os
import signal
import threading

from actors import errors as E
from actors.core.procstat import live_stat
from actors.types import Completed

from conftest import deployment, wait_for
from proctree import engines_and_workers

DRIP_WORDS = 60      # 6 s at 100 ms: none can end before the kill, even on a loaded machine
HELD_WORDS = 8


def _messages(key: str, held: bool = True) -> list[dict]:
    if key.startswith("drip"):
        return [{"role": "user", "content": f"[[mock drip_ms=100 words={DRIP_WORDS}]] {key}"}]
    # Held at the upstream before its first byte until after the kill: no token has left.
    hold = "hold=after-kill " if held else ""
    return [{"role": "user", "content": f"[[mock {hold}drip_ms=10 words={HELD_WORDS}]] {key}"}]


def _stream_into(client, messages: list[dict], record: dict) -> None:
    """One stream, recorded: its chunks (seq, text), its outcome (result or error), and how often it ended."""
    try:
        with client.stream("d1", messages, max_tokens=DRIP_WORDS, timeout_s=40) as stream:
            for chunk in stream:
                record["chunks"].append((chunk.seq, chunk.text))
            record["outcome"] = stream.result
    except E.InferenceError as exc:
        record["outcome"] = exc
    record["ends"] += 1


def test_a_sigkilled_worker_process_ends_each_request_it_held_once_and_is_replaced(gateway, mock):
    retry = {"max_retries": 2, "base_delay_s": 0.05, "max_delay_s": 0.2}
    node, client = gateway([deployment(mock.url, "d1", workers=8, worker_processes=2, coalesce_ms=0, retry=retry)])
    (engine_pid, procs), = engines_and_workers(node.admin_port, node.pgid).items()
    assert len(procs) == 2                         # eight slots, two processes
    keys = [f"drip{i}" for i in range(4)] + [f"held{i}" for i in range(4)]
    expected = {key: client.complete("d1", _messages(key, held=False), max_tokens=DRIP_WORDS, timeout_s=30).text
                for key in keys}
    records = {key: {"chunks": [], "ends": 0} for key in keys}

    threads = [threading.Thread(target=_stream_into, args=(client, _messages(key), records[key]), daemon=True)
               for key in keys]
    for thread in threads:
        thread.start()
    try:
        # Every slot busy: four streams in each process.
        wait_for(lambda: mock.stats()["in_flight"] == 8 and all(records[k]["chunks"] for k in keys[:4]),
                 timeout_s=30, message="eight calls in flight, the dripping ones past their first token")
        victim = procs[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: live_stat(victim) is None, message="the worker process to die")
    finally:
        mock.release("after-kill")
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a stream never ended"

    crashed, retried = [], []
    for key, record in records.items():
        outcome, chunks = record["outcome"], record["chunks"]
        text = "".join(t for _, t in chunks)
        full = expected[key]
        assert record["ends"] == 1
        assert [s for s, _ in chunks] == list(range(len(chunks))), f"{key}: a chunk repeated or out of order"
        if isinstance(outcome, Completed):
            assert text == outcome.text == full, key
            if outcome.attempts == 2:
                retried.append(key)
            else:
                assert outcome.attempts == 1, (key, outcome.attempts)
        else:
            assert isinstance(outcome, E.WorkerCrashed) and not outcome.retryable, (key, outcome)
            assert chunks and full.startswith(text), key          # what it had, never more
            crashed.append(key)
    # The dead process held four calls: the ones past their first token failed, the others were retried.
    assert len(crashed) + len(retried) == 4, (crashed, retried)
    assert all(k.startswith("drip") for k in crashed) and all(k.startswith("held") for k in retried)

    fresh = engines_and_workers(node.admin_port, node.pgid)[engine_pid]
    assert len(fresh) == 2 and victim not in fresh                # a new process took the lost slots
    status = client.status().engines[0]
    assert status.workers == 8 and status.in_flight == 0
    assert client.complete("d1", [{"role": "user", "content": "after"}], max_tokens=3).text


def test_a_first_token_its_engine_has_not_read_when_its_process_dies_is_never_retried(gateway, mock):
    # The first chunk leaves as soon as its FirstToken is in the kernel on the engine's link
    # (runtime/delivery.py), before the engine has read it. Here the engine is stopped through
    # the first token, the worker process killed, then the engine let go: whichever it handles
    # first, the process's exit or its link, the call must end as a crash the caller saw begin,
    # never a retry that would repeat what the caller has.
    retry = {"max_retries": 2, "base_delay_s": 0.05, "max_delay_s": 0.2}
    node, client = gateway([deployment(mock.url, "d1", workers=2, worker_processes=1, coalesce_ms=0, retry=retry)])
    (engine_pid, (victim,)), = engines_and_workers(node.admin_port, node.pgid).items()
    prompt = [{"role": "user", "content": f"[[mock hold=engine-stopped drip_ms=100 words={DRIP_WORDS}]] first"}]
    record: dict = {"chunks": [], "ends": 0}

    thread = threading.Thread(target=_stream_into, args=(client, prompt, record), daemon=True)
    thread.start()
    stopped = False
    try:
        wait_for(lambda: mock.stats()["in_flight"] == 1, timeout_s=30, message="the call held at the upstream")
        os.kill(engine_pid, signal.SIGSTOP)
        stopped = True
        mock.release("engine-stopped")
        wait_for(lambda: record["chunks"], timeout_s=15, message="the first chunk, while the engine is stopped")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: live_stat(victim) is None, message="the worker process to die")
    finally:
        mock.release("engine-stopped")
        if stopped:
            os.kill(engine_pid, signal.SIGCONT)
    thread.join(60)
    assert not thread.is_alive() and record["ends"] == 1
    chunks, outcome = record["chunks"], record["outcome"]
    assert [s for s, _ in chunks] == list(range(len(chunks)))
    assert isinstance(outcome, E.WorkerCrashed) and not outcome.retryable, outcome
    assert mock.stats()["total"] == 1                              # never sent again
