"""Slots as threads of a few worker processes (runtime/slot.py, worker.py, engine_workers.py).

Real engine, worker and breaker actors on simpleSystemBase, the upstream and the stream
channel on the in-memory transport: which process holds which slot, a late slot catching up,
frames due together leaving in one write, and what ends (once) when a slot hangs or a whole
worker process dies.
"""

from __future__ import annotations

import threading
import time

import pytest

from actors import errors as E
from actors.core.frames import FrameCodec
from actors.core.slots import MAX_SLOTS_PER_PROCESS, SlotPlan
from actors.runtime.protocol import EngineStatus, StatusRequest
from actors.runtime.stream_sender import StreamSender
from actors.testing.mock_transport import MockResponse
from actors.types import Completed, Failed
from harness import TEST_KEYRING, actor_instance, openai_completion, openai_stream, request, stream_answer


def wait_until(condition, e=None, timeout_s: float = 5.0, what: str = "condition"):
    """Bounded; runs the in-process actor system meanwhile (its actors only run while we listen)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if e is not None:
            e.inbox.extend(m for m in [e.listen(0.01)] if m is not None)
        else:
            time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def processes(e) -> dict[int, object]:
    """The engine's worker process actors, by process number."""
    engine = actor_instance(e.asys, e.engine)
    return {number: actor_instance(e.asys, address) for number, address in engine.procs.items()}


def busy(e) -> dict[int, list[str]]:
    """The request each busy slot holds, by process number."""
    return {number: sorted(s.delivery.request_id for s in proc.slots.values() if s.delivery is not None)
            for number, proc in processes(e).items()}


def by_prompt(upstream, answers: dict[str, list[MockResponse]]):
    """Answer each request by the last word of its prompt (attempts take the answers in turn):
    slots run side by side, so the order requests reach the upstream is not the order sent."""
    def answer(req):
        key = req.json()["messages"][-1]["content"].split()[-1]
        queue = answers.get(key) or []
        if queue:
            return queue.pop(0)
        return stream_answer(["ok"]) if req.json().get("stream") else MockResponse(200, openai_completion("ok"))
    upstream.transport.handler = answer


def ask(key: str, **fields):
    return request(key, messages=[{"role": "user", "content": f"please {key}"}], **fields)


# -- the layout ---------------------------------------------------------------------------------


def test_the_plan_spreads_consecutive_slots_over_one_process_per_core_and_caps_a_process():
    plan = SlotPlan.of(6, None, cores=2)
    assert plan.processes == 2 and [plan.slots_of(p) for p in (0, 1)] == [[0, 2, 4], [1, 3, 5]]
    assert [plan.process_of(i) for i in range(6)] == [0, 1, 0, 1, 0, 1]
    assert SlotPlan.of(1, None, cores=8).processes == 1                     # never more processes than slots
    assert SlotPlan.of(1000, None, cores=2).processes == -(-1000 // MAX_SLOTS_PER_PROCESS)   # capped slots a process
    big = SlotPlan.of(1000, None, cores=2)
    assert max(len(big.slots_of(p)) for p in range(big.processes)) <= MAX_SLOTS_PER_PROCESS
    assert SlotPlan.of(10, 3, cores=2).processes == 3                       # the configured count
    assert sum(len(SlotPlan.of(10, 3, 2).slots_of(p)) for p in range(3)) == 10


def test_a_deployments_slots_are_threads_of_its_worker_processes_and_dispatches_alternate_them(
        engine, upstream, channel):
    gate = threading.Event()
    one, two = stream_answer(["a ", "b"]), stream_answer(["c ", "d"])
    for answer in (one, two):
        answer.parts.insert(1, gate)                  # both hold after their first token
    by_prompt(upstream, {"one": [one], "two": [two]})
    e = engine(workers=6, worker_processes=2, coalesce_ms=0)
    e.tell(ask("warm"))
    assert isinstance(e.collect("warm")[1], Completed)
    procs = processes(e)
    assert sorted(sorted(p.slots) for p in procs.values()) == [[0, 2, 4], [1, 3, 5]]
    assert all(slot.thread.is_alive() and slot.thread.name == f"slot-{index}"
               for p in procs.values() for index, slot in p.slots.items())
    e.tell(ask("one", stream=True, channel=channel.address))
    e.tell(ask("two", stream=True, channel=channel.address))
    wait_until(lambda: channel.chunks("one") and channel.chunks("two"), e, what="both streams' first chunks")
    assert sorted(map(len, busy(e).values())) == [1, 1]        # one stream in each process
    gate.set()
    for rid, text in (("one", "a b"), ("two", "c d")):
        _, done = e.collect(rid)
        assert isinstance(done, Completed) and "".join(c.text for c in channel.chunks(rid)) == text == done.text
    assert e.ask(StatusRequest(), EngineStatus).workers == 6


# -- reads that catch up, frames that leave together -----------------------------------------------


def test_a_slot_that_fell_behind_relays_everything_buffered_as_one_frame(engine, upstream, channel):
    events = openai_stream(["a ", "b ", "c ", "d ", "e"])
    gate = threading.Event()
    # The upstream wrote b, c and d while the slot was not reading: they arrive together.
    parts = [events[0], gate, tuple(events[1:4]), 0.02, *events[4:]]
    upstream.then(MockResponse(200, parts=parts, headers={"content-type": "text/event-stream"}))
    e = engine(coalesce_ms=0)
    e.tell(request("s1", stream=True, channel=channel.address))
    wait_until(lambda: channel.chunks("s1"), e, what="the first chunk")
    gate.set()
    _, done = e.collect("s1")
    assert isinstance(done, Completed) and done.text == "a b c d e"
    assert [c.text for c in channel.chunks("s1")] == ["a ", "b c d ", "e"]   # one frame per read, not per event


def test_frames_due_together_leave_in_one_write_and_each_sender_learns_its_own_outcome(upstream):
    listener = upstream.transport.listen(47002)
    sender = StreamSender(FrameCodec(TEST_KEYRING), upstream.transport)
    to = {"port": 47002, "token": "tok"}
    listener.hold = threading.Event()             # the consumer is slow to read: the first write waits
    results: dict[str, bool] = {}

    def send(rid: str) -> None:
        results[rid] = sender.send(to, rid, 0, f"text of {rid}", [])

    listener.hold.set()
    send("r0")                                    # connects (hello) and writes alone
    listener.hold.clear()
    first = threading.Thread(target=send, args=("r1",))
    first.start()
    wait_until(lambda: listener.holding == 1, what="the first write to block")
    rest = [threading.Thread(target=send, args=(f"r{i}",)) for i in range(2, 7)]
    for thread in rest:
        thread.start()
    wait_until(lambda: (link := sender.links.get((47002, "tok", 0))) and link.queued
               and len(link.queued.frames) == 5, what="five frames queued behind it")
    listener.hold.set()
    for thread in [first, *rest]:
        thread.join(5)
    assert results == {f"r{i}": True for i in range(7)}
    bodies = listener.frames(FrameCodec(TEST_KEYRING))
    assert bodies[0] == {"hello": "tok"} and sorted(b["r"] for b in bodies[1:]) == [f"r{i}" for i in range(7)]
    assert listener.writes == 4                   # hello, r0, r1, then r2..r6 in one write
    assert sender.frames == 7 and sender.writes == 3


def test_when_a_batch_cannot_be_written_every_frame_in_it_falls_back(upstream):
    listener = upstream.transport.listen(47003)
    sender = StreamSender(FrameCodec(TEST_KEYRING), upstream.transport)
    to = {"port": 47003, "token": "tok"}
    assert sender.send(to, "r0", 0, "x", [])
    listener.hold = threading.Event()
    results: dict[str, bool] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(f"r{i}", sender.send(to, f"r{i}", 1, "y", [])))
               for i in range(1, 4)]
    threads[0].start()
    wait_until(lambda: listener.holding == 1, what="the first write to block")
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: sender.links[(47003, "tok", 0)].queued and len(sender.links[(47003, "tok", 0)].queued.frames) == 2,
               what="two frames queued")
    listener.broken = True                        # the consumer went away
    listener.hold.set()
    for thread in threads:
        thread.join(5)
    assert results == {"r1": False, "r2": False, "r3": False}   # each goes as a message instead
    assert [b.get("r") for b in listener.frames(FrameCodec(TEST_KEYRING))] == [None, "r0"]


# -- a hung slot, a frozen process, a dead process ---------------------------------------------------


def short_abandon_grace(monkeypatch, seconds: float) -> None:
    """The grace a worker has to report an attempt it was told to abandon, where the core reads it."""
    from actors.core import jobs, workers

    monkeypatch.setattr(jobs, "ABANDON_GRACE_S", seconds)
    monkeypatch.setattr(workers, "ABANDON_GRACE_S", seconds)


def test_a_hung_slot_is_ended_by_stopping_its_exchange_and_its_neighbour_streams_on(engine, upstream, monkeypatch):
    from actors.runtime.worker import RemoteWorkerActor
    from actors.settings.schema import Timeouts
    from actors.types import Cancel

    short_abandon_grace(monkeypatch, 0.2)
    # The worker loses track of the attempt (a bug): the engine's cancel does not reach it.
    monkeypatch.setattr(RemoteWorkerActor, "receiveMsg_Cancel", lambda self, msg, sender: None)
    never = threading.Event()
    stalled = stream_answer(["x "])
    stalled.parts.insert(1, never)
    stalled.hold_s = 60
    words = [f"w{i} " for i in range(40)]
    by_prompt(upstream, {"hung": [stalled], "neighbour": [stream_answer(words, pause_s=0.03)]})
    e = engine(workers=2, worker_processes=1, coalesce_ms=0, timeouts=Timeouts(connect_s=2, read_s=60, total_s=120))
    e.tell(ask("neighbour", stream=True))
    e.tell(ask("hung", stream=True))
    (proc,) = processes(e).values()
    hung_slot = wait_until(lambda: next((s for s in proc.slots.values() if s.delivery is not None
                                         and s.delivery.request_id == "hung" and s.delivery.chunks), None),
                           e, what="the hung attempt's first chunk")
    e.tell(Cancel("hung"))
    _, failed = e.collect("hung")
    assert isinstance(failed.error, E.Cancelled) and failed.chunks is None
    assert hung_slot.thread.is_alive()                         # blocked in a read that would last a minute
    wait_until(lambda: proc.slots[hung_slot.index] is not hung_slot, e, what="the slot to be restarted")
    hung_slot.thread.join(5)
    assert not hung_slot.thread.is_alive()                     # its exchange was stopped: the read returned
    chunks, done = e.collect("neighbour")
    assert isinstance(done, Completed) and [c.seq for c in chunks] == list(range(len(chunks)))
    assert "".join(c.text for c in chunks) == "".join(words) == done.text   # never interrupted
    assert processes(e) == {0: proc}                           # the process was not replaced
    e.tell(ask("after", stream=True))
    assert isinstance(e.collect("after")[1], Completed)
    never.set()


def test_a_frozen_worker_process_is_killed_after_the_grace_and_replaced(engine, upstream, monkeypatch):
    from actors.runtime import engine_workers
    from actors.runtime.worker import RemoteWorkerActor

    short_abandon_grace(monkeypatch, 0.2)
    monkeypatch.setattr(engine_workers, "SLOT_RESTART_GRACE_S", 0.2)
    frozen: set[int] = set()
    original = RemoteWorkerActor.receiveMessage
    monkeypatch.setattr(RemoteWorkerActor, "receiveMessage",
                        lambda self, msg, sender: None if id(self) in frozen else original(self, msg, sender))
    never = threading.Event()
    stalled = stream_answer(["x "])
    stalled.parts.insert(1, never)
    by_prompt(upstream, {"s1": [stalled], "r2": [MockResponse(200, openai_completion("after"))]})
    e = engine(workers=1, coalesce_ms=0)
    e.tell(ask("s1", stream=True, deadline_unix=time.time() + 0.4))
    first = e.listen(5)
    assert first is not None and first.request_id == "s1"
    (old,) = processes(e).values()
    frozen.add(id(old))                                        # its actor thread does nothing at all
    _, done = e.collect("s1")
    assert isinstance(done.error, E.DeadlineExceeded) and done.chunks is None   # the frozen count is unknown
    e.tell(ask("r2"))
    _, after = e.collect("r2")
    never.set()
    assert isinstance(after, Completed) and after.text == "after"
    assert list(processes(e).values()) != [old]                # killed, the last resort, and replaced
    status = e.ask(StatusRequest(), EngineStatus)
    assert status.workers == 1 and status.completed == 1 and status.failed == 1


@pytest.mark.parametrize("tokens_out", [True, False], ids=["mid-stream", "before-the-first-token"])
def test_a_worker_process_that_dies_ends_each_request_it_held_exactly_once(engine, upstream, channel, tokens_out):
    """Mid-stream, each of its requests fails once (WorkerCrashed, a prefix delivered); before any
    token, each is retried on the replacement process and completes. The other process's
    requests are untouched."""
    from thespian.actors import ActorExitRequest

    gate = threading.Event()
    words = {f"k{i}": [f"k{i}w{j} " for j in range(6)] for i in range(4)}

    def held(key: str) -> MockResponse:
        answer = stream_answer(words[key], pause_s=0.01)
        answer.parts.insert(2 if tokens_out else 0, gate)   # after the first token, or before any
        return answer
    by_prompt(upstream, {key: [held(key), stream_answer(words[key])] for key in words})
    e = engine(workers=4, worker_processes=2, coalesce_ms=0)
    for key in words:
        e.tell(ask(key, stream=True, channel=channel.address))
    wait_until(lambda: sum(map(len, busy(e).values())) == 4, e, what="four requests on four slots")
    if tokens_out:
        wait_until(lambda: all(channel.chunks(key) for key in words), e, what="a token of each")
    victim, holds = next((n, rids) for n, rids in busy(e).items() if n == 0)
    assert len(holds) == 2
    e.asys.tell(actor_instance(e.asys, e.engine).procs[victim], ActorExitRequest())
    gate.set()
    for key in words:
        extra, done = e.collect(key)
        framed = channel.chunks(key)
        text = "".join(c.text for c in sorted(framed + extra, key=lambda c: c.seq))
        if key in holds and tokens_out:
            assert isinstance(done, Failed) and isinstance(done.error, E.WorkerCrashed), done
            assert not done.error.retryable and done.chunks is None
            assert text and "".join(words[key]).startswith(text)     # a prefix, never a repeat
        else:
            assert isinstance(done, Completed) and done.text == "".join(words[key]), done
            assert done.attempts == (2 if key in holds else 1)
            if key not in holds:
                assert text == done.text
    leftovers = e.drain_extra(0.3)
    assert [m for m in leftovers if isinstance(m, (Completed, Failed))] == []   # one terminal each
    assert victim in processes(e) and e.ask(StatusRequest(), EngineStatus).workers == 4


def test_a_slot_that_asks_again_while_it_is_pumped_is_pumped_again(asys, upstream, monkeypatch):
    """A slot asks for the actor once per pump: an ask that comes during its pump must not be
    folded into the one being served, or the slot waits forever (no second ask comes)."""
    from harness import Recorder, deployment

    from actors.runtime.protocol import WorkerInit
    from actors.runtime.worker import RemoteWorkerActor

    address = asys.createActor(RemoteWorkerActor)
    asys.tell(address, WorkerInit(deployment(workers=2), asys.createActor(Recorder), None, [0, 1]))
    worker = actor_instance(asys, address)
    pumped: list[int] = []

    def pump(slot) -> None:
        pumped.append(slot.index)
        if len(pumped) == 1:
            worker.asked.append(slot.index)   # its thread asks again meanwhile (and writes the pipe)

    monkeypatch.setattr(worker, "_pump", pump)
    worker.slots[0].delivery = "an attempt"
    try:
        worker.asked.append(0)
        worker._pump_asked()                  # the first wake-up
        worker._pump_asked()                  # the one the second ask wrote
    finally:
        worker.slots[0].delivery = None
    assert pumped == [0, 0]


def test_no_chunk_leaves_a_slot_before_the_engine_has_heard_of_the_first_token(engine, upstream, channel, monkeypatch):
    """So a process that dies at any moment cannot have given a caller tokens of an attempt the
    engine would retry: the engine's answer (FirstTokenHeard) releases the first chunk."""
    from actors.core import engine_events as ev
    from actors.runtime.engine import RemoteEngineCoreActor
    from actors.runtime.protocol import FirstTokenHeard

    unanswered: list = []
    monkeypatch.setattr(RemoteEngineCoreActor, "receiveMsg_FirstToken",
                        lambda self, msg, sender: (self._feed(ev.TokenStarted(msg.request_id, msg.attempt,
                                                                               msg.at_unix)),
                                                   unanswered.append((sender, msg))))
    upstream.then(stream_answer(["a ", "b ", "c"], pause_s=0.01))
    e = engine(workers=1, coalesce_ms=0)
    e.tell(request("s1", stream=True, channel=channel.address))
    (proc,) = processes(e).values()
    wait_until(lambda: unanswered and proc.slots[0].delivery.outcome is None, e, what="the whole answer read")
    assert channel.chunks("s1") == [] and [m for m in e.inbox if getattr(m, "request_id", "") == "s1"] == []
    sender, told = unanswered[0]
    e.asys.tell(sender, FirstTokenHeard(told.request_id, told.attempt))
    chunks, done = e.collect("s1")
    assert isinstance(done, Completed) and done.text == "a b c" and done.ttft_s is not None
    assert [c.text for c in channel.chunks("s1")] == ["a b c"]      # what came meanwhile went as the first chunk
