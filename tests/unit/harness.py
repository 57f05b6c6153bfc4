"""A driver for the pure EngineCore: a fake clock, workers brought up, effects recorded.

Every test of the core talks to it through events and reads effects, as the actor does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from actors.core import engine_events as ev
from actors.core.breaker import BreakerSnapshot, CircuitState
from actors.core.engine_core import EngineCore
from actors.core.ratelimit import RateLimits
from actors.core.retry import RetryPolicy
from actors.runtime.protocol import WorkerResult
from actors.settings.schema import DeploymentConfig, Timeouts
from actors.types import Completed, Failed, InferenceRequest, Usage

WALL0 = 1_800_000_000.0  # a window boundary for 60 s windows: window arithmetic stays readable


def deployment(**overrides: Any) -> DeploymentConfig:
    base = dict(name="d1", model="d1", provider="openai", endpoint="http://upstream.invalid/v1", workers=2,
                queue_capacity=4, retry=RetryPolicy(max_retries=2, base_delay_s=0.1, max_delay_s=1.0, jitter="none"),
                timeouts=Timeouts(connect_s=2, read_s=10, total_s=30))
    base.update(overrides)
    return DeploymentConfig(**base)


# What a node that leads its own cluster tells a new engine (``StrictLimiterIs``): in the cluster,
# its strict limiter not located yet. An engine admits against a budget only once told.
LEADS_ITSELF = ev.StrictLeader(False, 0, True)


class Rig:
    def __init__(self, *, has_session: bool = False, has_hub: bool = False, up: bool = True,
                 told: ev.StrictLeader | None = LEADS_ITSELF, **overrides: Any) -> None:
        self.mono = 100.0
        self.wall_offset = WALL0 - self.mono
        self.dep = deployment(**overrides)
        self.log: list[Any] = []
        self.start(has_session=has_session, has_hub=has_hub, told=told, up=up)

    def start(self, *, told: ev.StrictLeader | None = LEADS_ITSELF, up: bool = True, **core: Any) -> None:
        """A fresh engine core (``core``: EngineCore's own arguments), told what its node tells it."""
        self.core = EngineCore(self.dep, slot="n1/d1/0/abc", **{
            "clock": lambda: self.mono, "wall": lambda: self.mono + self.wall_offset, "rand": lambda: 0.5,
            "failure_timeout_s": 5.0, **core})
        self.log = []
        self._record(self.core.start())
        if told is not None:
            self.feed(told)
        if up:
            for index in range(self.dep.workers):
                self.feed(ev.WorkerUp(index, pid=1000 + index))

    # -- driving ---------------------------------------------------------------------

    def _record(self, effects: list[Any]) -> list[Any]:
        self.log.extend(effects)
        return effects

    def feed(self, event: Any) -> list[Any]:
        return self._record(self.core.handle(event))

    def submit(self, rid: str = "r1", *, deadline_in: float | None = None, reply_to: str = "caller",
               **fields: Any) -> list[Any]:
        fields.setdefault("messages", [{"role": "user", "content": "hello"}])
        fields.setdefault("params", {"max_tokens": 10})
        deadline = None if deadline_in is None else self.wall() + deadline_in
        request = InferenceRequest(model="d1", request_id=rid, deadline_unix=deadline, **fields)
        return self.feed(ev.Accept(request, reply_to))

    def wall(self) -> float:
        return self.mono + self.wall_offset

    def advance(self, seconds: float) -> list[Any]:
        """Let time pass as the actor would: a Tick at every wakeup the core asked for, then at the end."""
        end = self.mono + seconds
        out: list[Any] = []
        while (due := self.core.next_wakeup()) is not None and due <= end:
            self.mono = max(self.mono, due)
            out += self.feed(ev.Tick())
        self.mono = end
        out += self.feed(ev.Tick())
        return out

    def report(self, rid: str = "r1", *, error: Any = None, usage: Usage | None = None, chunks: int = 0,
               sent: bool = True, text: str = "ok", session_version: int = 0) -> list[Any]:
        d = self.dispatch_of(rid)
        return self.feed(ev.WorkerReported(WorkerResult(
            request_id=rid, attempt=d.attempt, worker_index=d.index, error=error, text=text,
            finish_reason=None if error else "stop", usage=usage or Usage(3, 2), chunks=chunks, sent=sent,
            session_version=session_version)))

    def first_token(self, rid: str = "r1") -> list[Any]:
        d = self.dispatch_of(rid)
        return self.feed(ev.TokenStarted(rid, d.attempt, self.wall()))

    def breaker(self, state: CircuitState, retry_in_s: float = 0.0, generation: int = 5) -> list[Any]:
        now_ms = int(self.wall() * 1000)
        return self.feed(ev.BreakerChanged(BreakerSnapshot("openai", self.dep.endpoint, state, generation,
                                                           now_ms, now_ms + int(retry_in_s * 1000), 1, 0, 0, 0)))

    # -- reading effects -------------------------------------------------------------

    def of(self, kind: type, effects: list[Any] | None = None) -> list[Any]:
        return [e for e in (self.log if effects is None else effects) if isinstance(e, kind)]

    def dispatches(self, rid: str | None = None, effects: list[Any] | None = None) -> list[ev.DispatchTo]:
        return [d for d in self.of(ev.DispatchTo, effects) if rid is None or d.request.request_id == rid]

    def dispatch_of(self, rid: str) -> ev.DispatchTo:
        found = self.dispatches(rid)
        assert found, f"{rid} was never dispatched"
        return found[-1]

    def terminals(self, rid: str | None = None) -> list[Completed | Failed]:
        return [r.message for r in self.of(ev.Reply)
                if isinstance(r.message, (Completed, Failed)) and (rid is None or r.message.request_id == rid)]

    def terminal(self, rid: str = "r1") -> Completed | Failed:
        found = self.terminals(rid)
        assert len(found) == 1, f"{rid}: expected exactly one terminal, got {found}"
        return found[0]

    def outcomes(self) -> list[tuple[int, Any]]:
        return [o for e in self.of(ev.ReportOutcomes) for o in e.outcomes]


def limits(**kw: Any) -> RateLimits:
    return RateLimits(**kw)


def replace(config: Any, **kw: Any) -> Any:
    return dataclasses.replace(config, **kw)


# ======================================================================================
# Actors on Thespian's in-process simpleSystemBase, with a scripted upstream and no socket
# ======================================================================================

import json  # noqa: E402
import time  # noqa: E402
from collections import deque  # noqa: E402

from thespian.actors import Actor, ActorExitRequest, ActorSystem  # noqa: E402

from actors.core.breaker import BreakerConfig  # noqa: E402
from actors.core.frames import FrameCodec, chunk_fields  # noqa: E402
from actors.runtime.protocol import BreakerInit, EngineInit, StrictLimiterIs  # noqa: E402
from actors.security.keys import KeyRing, WireKey  # noqa: E402
from actors.testing.mock_transport import MockListener, MockResponse, MockTransport  # noqa: E402
from actors.types import TERMINAL, TokenChunk  # noqa: E402

Answer = MockResponse   # one scripted upstream answer (actors/testing/mock_transport.py)


class FakeUpstream:
    """Scripted answers through the worker's transport seam: the real worker, HTTP client and
    phase tracking run against an in-memory network (``MockTransport``); no socket opens.

    Install it with the ``upstream`` fixture (tests/unit/conftest.py) before the engine starts
    its workers. Answers are taken in order; once the script is empty, ``default`` answers."""

    def __init__(self) -> None:
        self.script: deque[MockResponse] = deque()
        self.default = MockResponse(200, openai_completion("ok"))
        self.transport = MockTransport(self._answer)

    def then(self, *answers: MockResponse) -> "FakeUpstream":
        self.script.extend(answers)
        return self

    def _answer(self, request: Any) -> MockResponse:
        return self.script.popleft() if self.script else self.default

    @property
    def requests(self) -> list[Any]:
        """Every request that reached the upstream (MockRequest: method, url, headers, body, at)."""
        return self.transport.requests


TEST_KEYRING = KeyRing([WireKey("unit", "a-unit-test-secret-of-enough-length-0123456789")], "unit tests")
CHANNEL_PORT = 47001


class ChannelEnd:
    """The caller's end of a stream channel in the mock network: the frames the workers wrote."""

    def __init__(self, listener: MockListener) -> None:
        self.listener = listener
        self.codec = FrameCodec(TEST_KEYRING)
        self.address = {"port": listener.port, "token": "unit-token"}

    def chunks(self, request_id: str) -> list[TokenChunk]:
        found = []
        for body in self.listener.frames(self.codec):
            fields = chunk_fields(body)
            if fields is not None and fields[0] == request_id:
                found.append(TokenChunk(*fields))
        return found

    def hello_tokens(self) -> list[str]:
        return [body["hello"] for body in self.listener.frames(self.codec) if "hello" in body]


def openai_completion(text: str, prompt_tokens: int = 3, completion_tokens: int = 2) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def openai_stream(words: list[str], usage: tuple[int, int] | None = (3, 2), pause_s: float = 0.0) -> list[Any]:
    """SSE chunks of an OpenAI chat stream, one event per word, with an optional pause between."""
    def event(payload: Any) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"
    out: list[Any] = []
    for word in words:
        out.append(event({"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}))
        if pause_s:
            out.append(pause_s)
    out.append(event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if usage is not None:
        out.append(event({"choices": [], "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                                   "total_tokens": sum(usage)}}))
    out.append(b"data: [DONE]\n\n")
    return out


def stream_answer(words: list[str], **kw: Any) -> Answer:
    return Answer(200, parts=openai_stream(words, **kw), headers={"content-type": "text/event-stream"})


@dataclass(frozen=True)
class SendAs:
    """Asks a :class:`Recorder` to send ``message`` to ``to`` itself."""

    to: Any
    message: Any


class Recorder(Actor):
    """Stands in for the registry: keeps what it is sent, hands it over when asked."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if msg == "seen?":
            self.send(sender, list(self.seen))
        elif isinstance(msg, SendAs):
            self.send(msg.to, msg.message)   # as itself: e.g. a session takes subscriptions from the subscriber only
        elif not isinstance(msg, ActorExitRequest):
            self.seen.append(msg)


class InProcessEngine:
    """A real engine, its real workers and a real breaker actor on simpleSystemBase."""

    def __init__(self, deployment_config: Any, *, init: bool = True, breaker: BreakerConfig | None = None) -> None:
        from actors.runtime.breaker import CircuitBreakerActor
        from actors.runtime.engine import RemoteEngineCoreActor
        self.dep = deployment_config
        self.asys = in_process_system()
        self.registry = self.asys.createActor(Recorder)
        self.breaker = self.asys.createActor(CircuitBreakerActor)
        self.asys.tell(self.breaker, BreakerInit(self.dep.provider, self.dep.endpoint, breaker or BreakerConfig()))
        self.engine = self.asys.createActor(RemoteEngineCoreActor)
        self.inbox: deque[Any] = deque()
        if init:
            self.init()

    def init(self, told: StrictLimiterIs | None = StrictLimiterIs(None, 0, True)) -> None:
        """EngineInit, then what the node tells a new engine (by default: it leads itself)."""
        self.asys.tell(self.engine, EngineInit(self.dep, 0, "n1", self.registry, None, self.breaker, None))
        if told is not None:
            self.asys.tell(self.engine, told)

    def tell(self, message: Any) -> None:
        self.asys.tell(self.engine, message)

    def listen(self, timeout_s: float) -> Any:
        # simpleSystemBase's listen() sleeps until the next wakeup even when a reply is already
        # waiting; a zero-timeout listen hands over what is there first.
        return self.asys.listen(0) or self.asys.listen(max(0.001, timeout_s))

    def _next(self, timeout_s: float) -> Any:
        """The next message for the caller: stashed ones first (ask() returns whatever comes next)."""
        if self.inbox:
            return self.inbox.popleft()
        return self.listen(timeout_s)

    def ask(self, message: Any, kind: type, timeout_s: float = 5.0) -> Any:
        """Send and wait for the first answer of ``kind``; anything else is kept for collect()."""
        self.tell(message)
        end = time.monotonic() + timeout_s
        stash = []
        try:
            while time.monotonic() < end:
                reply = self.listen(end - time.monotonic())
                if isinstance(reply, kind):
                    return reply
                if reply is not None:
                    stash.append(reply)
            raise AssertionError(f"no {kind.__name__} within {timeout_s}s")
        finally:
            self.inbox.extend(stash)

    def collect(self, request_id: str, timeout_s: float = 10.0) -> tuple[list[TokenChunk], Any]:
        """The TokenChunk messages the caller gets for one request, up to its terminal (bounded)."""
        chunks: list[TokenChunk] = []
        end = time.monotonic() + timeout_s
        skipped = []
        try:
            while time.monotonic() < end:
                message = self._next(end - time.monotonic())
                if isinstance(message, TokenChunk) and message.request_id == request_id:
                    chunks.append(message)
                elif isinstance(message, TERMINAL) and message.request_id == request_id:
                    return chunks, message
                elif message is not None:
                    skipped.append(message)
            raise AssertionError(f"no terminal for {request_id} within {timeout_s}s (chunks: {len(chunks)})")
        finally:
            self.inbox.extend(skipped)

    def drain_extra(self, wait_s: float = 0.2) -> list[Any]:
        """Whatever else arrives at the caller within ``wait_s``: a second terminal would show here."""
        out = list(self.inbox)
        self.inbox.clear()
        end = time.monotonic() + wait_s
        while (remaining := end - time.monotonic()) > 0:
            message = self.listen(remaining)
            if message is not None:
                out.append(message)
        return out

    def registry_saw(self) -> list[Any]:
        return self.asys.ask(self.registry, "seen?", 5)

    def close(self) -> None:
        self.asys.shutdown()


def request(rid: str, **fields: Any) -> InferenceRequest:
    """A small call to deployment "d1" (max_tokens 5 unless said otherwise)."""
    fields.setdefault("params", {"max_tokens": 5})
    fields.setdefault("messages", [{"role": "user", "content": "hello"}])
    return InferenceRequest(model="d1", request_id=rid, **fields)


def actor_instance(asys: Any, address: Any) -> Any:
    """The live object behind an address on simpleSystemBase (to reach an engine's workers)."""
    return asys._systemBase.actorRegistry[address.actorAddressString].instance


def ask(asys: Any, target: Any, message: Any, kind: type, timeout_s: float = 5.0) -> Any:
    """Tell ``target`` and wait for the first reply of type ``kind`` (others are skipped)."""
    end = time.monotonic() + timeout_s
    asys.tell(target, message)
    while time.monotonic() < end:
        reply = asys.listen(0) or asys.listen(0.05)
        if isinstance(reply, kind):
            return reply
    raise AssertionError(f"no {kind.__name__} within {timeout_s}s")


def in_process_system() -> Any:
    """An in-process Thespian system (simpleSystemBase): every actor in this thread, no sockets."""
    return ActorSystem("simpleSystemBase", logDefs=False, transientUnique=True)
