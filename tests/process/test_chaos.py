"""Chaos on one node: a few hundred mixed requests while workers die, a worker freezes and an engine dies.

Every request must end exactly once (the call returns or raises once), within its deadline
plus a small bound, with no duplicated or missing token: a completed stream's chunks are
numbered 0..n-1 and spell the same text the upstream sends for that prompt, and a stream
cut by a crash delivered a prefix of it. Afterwards every deployment serves again, and the
frozen worker has been found and replaced (a worker frozen while idle is found when a request
is dispatched to it).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time


from actors import errors as E
from actors.core.procstat import live_stat
from actors.types import Completed

from conftest import deployment, wait_for
from proctree import engines_and_workers

DEADLINE_S = 6.0
BOUND_S = 4.0           # how late past its deadline a terminal may come (scheduling on 2 busy cores)
THREADS = 12
PER_THREAD = 25         # 300 requests
PROMPTS = ["alpha beta gamma delta", "one two three four", "red green blue cyan"]
# Failures a crash or a freeze may legitimately cause; anything else is a bug.
CHAOS_ERRORS = (E.WorkerCrashed, E.EngineCrashed, E.DeadlineExceeded, E.StreamError)


def _messages(prompt: str, stream: bool) -> list[dict]:
    directive = " [[mock drip_ms=15 words=10]]" if stream else " [[mock words=6]]"
    return [{"role": "user", "content": prompt + directive}]


def _reference(client, model: str, prompt: str, stream: bool) -> str:
    return client.complete(model, _messages(prompt, stream), max_tokens=16, timeout_s=20).text


def test_every_request_ends_once_on_time_through_worker_kills_a_freeze_and_an_engine_crash(gateway, mock):
    retry = {"max_retries": 2, "base_delay_s": 0.05, "max_delay_s": 0.2, "budget_ratio": 1.0}
    # Slots are threads of worker processes: a kill or a freeze takes every slot of the process.
    node, client = gateway([
        deployment(mock.url, "a", workers=4, worker_processes=2, retry=retry),
        deployment(mock.url, "b", provider="anthropic", workers=3, worker_processes=2, retry=retry),
        deployment(mock.url, "c", workers=3, worker_processes=2, retry=retry),
    ])
    models = ["a", "b", "c"]
    expected = {(m, p, s): _reference(client, m, p, s) for m in models for p in PROMPTS for s in (False, True)}
    tree = engines_and_workers(node.admin_port, node.pgid)
    # Engines are created in deployment order, so their pids sort that way.
    engines = dict(zip(models, sorted(tree)))
    assert [len(tree[engines[m]]) for m in models] == [2, 2, 2]

    records: list[dict] = []
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def run(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(PER_THREAD):
            model, prompt, streamed = rng.choice(models), rng.choice(PROMPTS), rng.random() < 0.6
            record = {"model": model, "prompt": prompt, "stream": streamed, "chunks": [], "ends": 0}
            record["start"] = time.monotonic()
            try:
                if streamed:
                    with client.stream(model, _messages(prompt, True), max_tokens=16, timeout_s=DEADLINE_S) as s:
                        for chunk in s:
                            record["chunks"].append((chunk.seq, chunk.text))
                        record["outcome"] = s.result
                else:
                    record["outcome"] = client.complete(model, _messages(prompt, False), max_tokens=16,
                                                        timeout_s=DEADLINE_S)
            except E.InferenceError as exc:
                record["outcome"] = exc
            record["ends"] += 1
            record["end"] = time.monotonic()
            with lock:
                records.append(record)
            done.release()

    def finished() -> int:
        with lock:
            return len(records)

    frozen: list[int] = []
    killed: list[int] = []

    def chaos() -> None:
        rng = random.Random(7)
        wait_for(lambda: finished() >= 30, timeout_s=120, message="30 requests done")
        for model in ("a", "c"):
            victim = rng.choice(tree[engines[model]])
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        wait_for(lambda: finished() >= 60, timeout_s=120, message="60 requests done")
        frozen.append(rng.choice([p for p in tree[engines["a"]] if p not in killed]))
        os.kill(frozen[0], signal.SIGSTOP)
        wait_for(lambda: finished() >= 100, timeout_s=120, message="100 requests done")
        os.kill(engines["b"], signal.SIGKILL)
        killed.append(engines["b"])
        wait_for(lambda: finished() >= 160, timeout_s=120, message="160 requests done")
        fresh = engines_and_workers(node.admin_port, node.pgid)
        for workers in fresh.values():
            alive = [p for p in workers if p not in frozen]
            if alive:
                os.kill(rng.choice(alive), signal.SIGKILL)

    threads = [threading.Thread(target=run, args=(seed,), daemon=True) for seed in range(THREADS)]
    agent = threading.Thread(target=chaos, daemon=True)
    try:
        for thread in threads:
            thread.start()
        agent.start()
        for thread in threads:
            thread.join(timeout=PER_THREAD * (DEADLINE_S + BOUND_S) + 60)
        agent.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "a caller never got an answer"
        _check_records_and_recovery(client, node, models, expected, records, killed, frozen)
    finally:
        for pid in frozen:  # never leave a stopped process behind, whatever failed
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass


def _check_records_and_recovery(client, node, models, expected, records, killed, frozen) -> None:
    assert len(records) == THREADS * PER_THREAD
    assert len(killed) == 3 and len(frozen) == 1
    outcomes: dict[str, int] = {}
    for r in records:
        outcome = r["outcome"]
        outcomes[type(outcome).__name__] = outcomes.get(type(outcome).__name__, 0) + 1
        assert r["ends"] == 1
        assert r["end"] - r["start"] <= DEADLINE_S + BOUND_S, (r["model"], type(outcome).__name__, outcome)
        seqs = [seq for seq, _ in r["chunks"]]
        assert seqs == list(range(len(seqs))), f"chunks out of order or duplicated: {seqs}"
        text = "".join(t for _, t in r["chunks"])
        reference = expected[(r["model"], r["prompt"], r["stream"])]
        if isinstance(outcome, Completed):
            assert outcome.text == reference, (r, outcome)
            if r["stream"]:
                assert text == reference and outcome.chunks == len(seqs), (r, outcome)
        else:
            assert isinstance(outcome, CHAOS_ERRORS), f"{type(outcome).__name__}: {outcome}"
            assert reference.startswith(text), "a cut stream must have delivered a prefix, nothing else"
            if r["chunks"]:
                assert not outcome.retryable
    assert outcomes.get("Completed", 0) >= len(records) // 2, outcomes

    def all_serve() -> bool:
        try:
            return all(client.complete(m, _messages("after", False), max_tokens=4, timeout_s=5).text for m in models)
        except E.InferenceError:
            return False
    wait_for(all_serve, timeout_s=30, interval_s=0.5, message="every deployment serving again")
    # The frozen worker may have been idle since it froze: slow calls as wide as the deployment
    # take every worker, so the engine dispatches to it, meets the deadline and replaces it.
    burst = [threading.Thread(target=_slow_call, args=(client, "a"), daemon=True) for _ in range(12)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(timeout=30)
    wait_for(lambda: all(_gone(pid) for pid in frozen), timeout_s=20, message="the frozen worker replaced")
    print(f"chaos outcomes: {outcomes}")


def _slow_call(client, model: str) -> None:
    try:
        client.complete(model, [{"role": "user", "content": "slow [[mock delay_ms=1500 words=3]]"}], max_tokens=4,
                        timeout_s=3)
    except E.InferenceError:
        pass


def _gone(pid: int) -> bool:
    return live_stat(pid) is None
