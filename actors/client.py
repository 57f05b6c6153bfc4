"""GatewayClient: call a node from any process; Stream: one streamed call.

The client talks to its node through a link (``actors/node_link.py``): over TCP by default,
or any link handed to it (``GatewayClient(link=...)``). Every thread gets its own endpoint
wrapped in a Correlator, which files each arriving message under its request id or lookup
token: no call or lookup ever sees another one's message (a late chunk of an abandoned
stream, say). A call that is left (``close()``, leaving the ``with`` block or the ``for``
loop, a client-side timeout, the Stream garbage-collected) is cancelled upstream, never
left running and billed.

A request silent for ``liveness_after_s`` makes the client ask the node whether the
engine it was sent to is still the live one; if that engine died, the request fails
with EngineCrashed, or is sent again to the restarted engine when no token had arrived
and it is idempotent. Which deployment to try, in which order, and where a failure leads
are decided by ``core/routing.py``; this module carries the calls.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import random
import secrets
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar, Unpack, cast

from thespian.actors import PoisonMessage

from actors.core import refusals, routing
from actors.core.chunk_order import ChunkOrder
from actors.core.records import FALLBACK_METADATA
from actors.core.liveness import SharedChecks
from actors.core.retry import caller_may_retry
from actors.correlator import Correlator
from actors.errors import (CircuitOpen, DeadlineExceeded, EngineCrashed, GatewayTimeout, GatewayUnavailable,
                           InferenceError, InternalError, NotFound)
from actors.caller_links import CallerLinks
from actors.node_link import NodeLink, ThespianLink, address_of
from actors.params import (CALL_PARAMS, GENERATION_PARAMS, NOT_GIVEN, CallParams, MessageParam, NotGiven,
                           PriorityParam)
from actors.runtime.protocol import (ClusterStatus, ClusterStatusRequest, EngineCheck, EngineLiveness, ModelList,
                                     ModelsRequest, NodeStatus,
                                     Route, RouteEntry, RouterRefusals, Routes, StatusRequest)
from actors.runtime.protocol.ledger import SpendQuery, SpendReport
from actors.security import wire
from actors.stream_receiver import Inbox, Nudge, StreamReceiver
from actors.types import (AttemptInfo, Cancel, Completed, EmbeddingResult, Failed, InferenceRequest, TokenChunk,
                          Usage)

__all__ = ["GatewayClient", "Stream", "NOT_GIVEN", "NotGiven"]

# How long a route lookup (engines, their pushed load, the routing policy) is reused. Short,
# so least-busy and latency see the engines' state within about a second; the client's own
# in-flight count per engine is always current (docs/routing.md).
ROUTE_TTL_S = 1.0
REFUSALS_EVERY_S = 0.25    # router refusals are reported to the node at most this often (core/refusals.py)
STRAGGLER_WAIT_S = 2.0     # for streamed chunks that their terminal message overtook
TERMINAL_GRACE_S = 2.0     # the engine owes a terminal even at the deadline: wait a little past it
SEND_ATTEMPTS = 3
EARLY_NONE_S = 0.5         # an ask that returns nothing this fast was never delivered
LIVENESS_AFTER_S = 1.0
CRASH_RESENDS = 2
LOOKUP_TIMEOUT_S = 10.0

_Reply = TypeVar("_Reply")
Chunks = Generator[TokenChunk, None, None]


class _EngineGone(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _State:
    """What a Stream and its exchange share; holds no reference to the Stream, so a dropped
    Stream is collected at once and its finalizer can cancel the call."""

    def __init__(self) -> None:
        self.chunks: list[TokenChunk] = []   # those yielded (pushed ones are the consumer's: only counted)
        self.pushed = 0
        self.result: Completed | None = None
        self.exchange: Chunks | None = None
        self.done = False
        self.failed: Failed | None = None   # the last Failed terminal (its attempts, for routing)
        self.deployment = ""                # the deployment the call went to last (the one serving it)
        self.fallback = False               # that deployment serves another model than the one asked for
        self.refused: InferenceError | None = None   # the router's own refusal of the last group tried
        self.receiver: StreamReceiver | None = None  # the stream channel's, when the chunks come on it
        self.on_chunk: Callable[[TokenChunk], object] | None = None   # Stream.push_to's

    @property
    def streamed(self) -> bool:
        """A chunk reached the caller: the call is never tried again."""
        return bool(self.chunks) or self.pushed > 0


class _Push:
    """A stream's further chunks handed to its consumer from whichever thread has them (``Stream.push_to``).

    The stream channel's receiver thread puts what comes on the channel, the waiting thread what
    comes as messages; one lock keeps them in order and each once. The waiting thread is woken
    (a ``Nudge`` in its inbox) only when it has something to do: the consumer raised, or the
    last chunk its terminal counts has been handed over.
    """

    def __init__(self, order: ChunkOrder[TokenChunk], state: _State, on_chunk: Callable[[TokenChunk], object],
                 waiter: Inbox | None, request_id: str) -> None:
        self._lock = threading.Lock()
        self._order = order
        self._state = state
        self._on_chunk = on_chunk
        self._waiter = waiter
        self._nudge = Nudge(request_id)
        self._want: int | None = None
        self.error: BaseException | None = None
        self.open = True

    def put(self, chunk: TokenChunk) -> None:
        with self._lock:
            if not self.open or self.error is not None:
                return
            for due in self._order.add(chunk):
                self._state.pushed += 1
                try:
                    self._on_chunk(due)
                except BaseException as exc:  # noqa: BLE001 - the waiting thread raises it
                    self.error = exc
                    break
            wake = self.error is not None or (self._want is not None and self._order.next_seq >= self._want)
        if wake and self._waiter is not None:
            self._waiter.put(self._nudge)

    def expect(self, count: int | None) -> None:
        """The terminal says ``count`` chunks belong to the answer: wake the waiting thread once they are handed over."""
        with self._lock:
            self._want = count

    def close(self) -> None:
        """No chunk is handed over after this returns."""
        with self._lock:
            self.open = False


def _release_thread(link: NodeLink, endpoint: Any, inbox: Inbox | None) -> None:
    """A thread's correlator is gone: its endpoint's sockets and its inbox's pipe go with it."""
    link.release(endpoint)
    if inbox is not None:
        inbox.close()


def _drop(state: _State) -> bool:
    """Close the exchange (its finally cancels the call upstream); False when another thread runs it."""
    if not state.done and state.exchange is not None:
        try:
            state.exchange.close()
        except ValueError:
            return False  # running in another thread right now
    state.done = True
    return True


class Stream:
    """One call's chunks, in order: ``for chunk in stream``; ``result`` is the Completed once it ends.

    Made by ``GatewayClient.stream()`` or ``GatewayClient.start(request)``. A context manager: leaving the block (or calling ``close()``) cancels the call if it is
    still running. Leaving a ``for`` loop early cancels it too; so does dropping the Stream.
    """

    def __init__(self, client: GatewayClient, request: InferenceRequest, timeout_s: float) -> None:
        self._client = client
        self.request = request
        self.timeout_s = timeout_s
        self._state = _State()
        weakref.finalize(self, _drop, self._state).atexit = False

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def result(self) -> Completed | None:
        return self._state.result

    @property
    def chunks(self) -> list[TokenChunk]:
        """The chunks iterating has yielded so far (not those handed to ``push_to``'s callback)."""
        return self._state.chunks

    @property
    def closed(self) -> bool:
        return self._state.done

    @property
    def deployment(self) -> str:
        """The deployment serving the call (once a chunk or the result arrived), else the last one tried."""
        return self._state.deployment

    @property
    def fallback(self) -> bool:
        """True when the serving deployment is one of the model's fallbacks (docs/routing.md)."""
        return self._state.fallback

    def __iter__(self) -> Iterator[TokenChunk]:
        state = self._state
        if state.done:
            return iter(())
        if state.exchange is None:
            state.exchange = self._client._exchange(self.request, self.timeout_s, state)
        return _consume(state, state.exchange, self)

    def text(self) -> str:
        """Consume the stream and return the whole text."""
        for _ in self:
            pass
        return self.result.text if self.result else ""

    def push_to(self, on_chunk: Callable[[TokenChunk], object]) -> None:
        """Hand every further chunk to ``on_chunk`` as it arrives, instead of yielding it.

        Called while iterating (between two chunks) or before. ``on_chunk`` is called once per
        chunk, in order, from whichever thread received it (the stream channel's, or the iterating
        one), and must not block. Iterating then yields no more chunks: it returns when the call
        has ended and every chunk of it has been handed over, or raises the call's error, or what
        ``on_chunk`` raised (the call is then cancelled). No call is made once it has returned.
        """
        self._state.on_chunk = on_chunk

    def cancel(self) -> None:
        """Ask the engine to stop; the iteration then ends with Cancelled. Safe from any thread."""
        self._client.cancel(self.request_id)

    def close(self) -> None:
        """Stop the call now (cancelled upstream if it is still running) and stop iterating."""
        if not _drop(self._state):
            self.cancel()  # another thread is iterating: its iteration ends with Cancelled

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        count = len(self.chunks) + self._state.pushed
        return f"Stream({self.request_id}, {count} chunks, {'done' if self.closed else 'open'})"


def _consume(state: _State, exchange: Chunks, stream: Stream) -> Iterator[TokenChunk]:
    # A fresh generator per loop: when the loop is left early, CPython closes it at once.
    # It holds the Stream, so ``for chunk in client.stream(...)`` keeps its Stream alive.
    finished = False
    try:
        for chunk in exchange:
            yield chunk
        finished = True
    finally:
        if not finished:
            _drop(state)


def _timeout(timeout_s: object, default: float) -> float:
    if timeout_s is NOT_GIVEN or timeout_s is None:
        return default
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise TypeError(f"timeout_s must be a number of seconds, got {type(timeout_s).__name__}")
    if math.isnan(timeout_s) or math.isinf(timeout_s):
        raise ValueError(f"timeout_s must be finite, got {timeout_s}")
    return float(timeout_s)


def _message_list(messages: Iterable[MessageParam]) -> list[dict[str, Any]]:
    """The messages as the request carries them. Anything but a sequence of messages is passed
    as it is, so the engine's check names what is wrong (core/validation.py)."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
        return cast("list[dict[str, Any]]", messages)
    return cast("list[dict[str, Any]]", list(messages))


DEFAULT_EMBED_BATCH = 2048   # OpenAI's limit: the batch when no route names one


def embed_batch_of(entries: Sequence[Any]) -> int:
    """The most texts one embeddings call may carry to whichever of ``entries`` serves it: the
    smallest of their limits (a call may land on any of them), ignoring those with none."""
    sizes = [e.embed_batch for e in entries if getattr(e, "embed_batch", 0) > 0]
    return min(sizes) if sizes else DEFAULT_EMBED_BATCH


def embed_batches(texts: list[str], limit: int, request_id: str | None = None) -> list[tuple[str | None, list[str]]]:
    """``texts`` in order, cut into calls of at most ``limit``, each with its request id: the
    caller's own when one call holds them all, else that id suffixed ``-0``, ``-1``, ..."""
    if limit < 1:
        raise ValueError(f"an embeddings batch holds at least one text, got {limit}")
    parts = [texts[start:start + limit] for start in range(0, len(texts), limit)]
    if request_id is None or len(parts) == 1:
        return [(request_id, part) for part in parts]
    return [(f"{request_id}-{i}", part) for i, part in enumerate(parts)]


def merged_embeddings(calls: list[Completed]) -> EmbeddingResult:
    """One result from the calls of one ``embed``: vectors in order, usage summed (reported only
    when every call's was), cost unknown when any call's is."""
    vectors = [v for call in calls for v in (call.embeddings or [])]
    usage = Usage(sum(c.usage.input_tokens for c in calls), 0, reported=all(c.usage.reported for c in calls))
    costs = [c.cost_usd for c in calls if c.cost_usd is not None]
    return EmbeddingResult(vectors, usage, round(sum(costs), 10) if len(costs) == len(calls) else None, calls)


def _target(entry: RouteEntry) -> Any:
    """Where a call to ``entry`` is sent: its engine, or for another node's, this node's relay."""
    return entry.via if entry.via is not None else entry.engine


def _on(entry: RouteEntry, attempts: list[AttemptInfo]) -> list[AttemptInfo]:
    """``attempts`` made at ``entry``, each naming its node."""
    return [attempt if attempt.node else dataclasses.replace(attempt, node=entry.node) for attempt in attempts]


def _skipped(skipped: Sequence[tuple[routing.Candidate, InferenceError]]) -> list[AttemptInfo]:
    """One line per deployment (per node) the plan refused: nothing was sent there."""
    seen: set[str] = set()
    out = []
    for candidate, refused in sorted(skipped, key=lambda item: item[0].label):
        if candidate.label not in seen:
            seen.add(candidate.label)
            out.append(AttemptInfo(candidate.deployment, refused.kind, None, 0.0, False, node=candidate.node))
    return out


class GatewayClient:
    """Calls to a gateway node: ``complete()``, ``stream()``, ``embed()``, and its status.

    ``GatewayClient(admin_port, host=..., keyring=...)`` joins this process to the node over TCP
    (``ThespianLink.connect``). ``GatewayClient(link=...)`` talks through the link given instead
    (``actors/node_link.py``): a Thespian system this process already runs, or the in-process
    system of a test. Safe to share between threads; close it (or use ``with``) when done.
    """

    def __init__(self, admin_port: int = 1900, *, host: str = "127.0.0.1", timeout_s: float = 60.0,
                 system_base: str = "multiprocTCPBase", keyring: Any = wire.FROM_ENVIRONMENT,
                 route_ttl_s: float = ROUTE_TTL_S, liveness_after_s: float = LIVENESS_AFTER_S,
                 stream_channel: bool = True, link: NodeLink | None = None,
                 straggler_wait_s: float = STRAGGLER_WAIT_S, terminal_grace_s: float = TERMINAL_GRACE_S) -> None:
        if link is None:
            link = ThespianLink.connect(admin_port, host=host, system_base=system_base, keyring=keyring,
                                        stream_channel=stream_channel)
        elif (admin_port, host, system_base, stream_channel) != (1900, "127.0.0.1", "multiprocTCPBase", True) \
                or keyring is not wire.FROM_ENVIRONMENT:
            raise TypeError("admin_port, host, system_base, keyring and stream_channel describe the link the "
                            "client makes; with link=..., they are the link's own")
        self.link = link
        self.admin_port = admin_port
        # The Thespian system of a ThespianLink or InProcessLink (for tools that send raw messages).
        self.asys: Any = getattr(link, "system", None)
        self.timeout_s = timeout_s
        self.route_ttl_s = route_ttl_s
        self.liveness_after_s = liveness_after_s
        self.straggler_wait_s = straggler_wait_s
        self.terminal_grace_s = terminal_grace_s
        self._closed = False
        self._local = threading.local()
        self._routes: dict[str, tuple[float, list[RouteEntry]]] = {}
        self._registry = link.registry
        self._lock = threading.Lock()
        self._sent_to: dict[str, Any] = {}
        self._linked: dict[str, RouteEntry] = {}        # calls sent on a caller link: their cancels follow them
        self._links: CallerLinks | None | bool = False  # link.caller_links(), once asked (False: not yet)
        self._route_locks: dict[str, threading.Lock] = {}
        self._policy = routing.RoutingPolicy()          # the node's, as its last Routes said
        self._busy: dict[str, int] = {}                 # this client's calls in flight, per engine
        # Engines that answered CircuitOpen: until when (unix), and that answer, which the router repeats.
        self._held: dict[str, tuple[float, CircuitOpen]] = {}
        self._tally = refusals.Tally(REFUSALS_EVERY_S)  # router refusals not yet reported to the node
        self._liveness = SharedChecks[str](liveness_after_s)  # one engine check at a time, its answer shared
        self._tally_timer: threading.Timer | None = None
        self._rand = random.Random()
        # Cancels may come from any thread (close(), a finalizer): one endpoint for them, under a lock.
        self._cancel_lock = threading.Lock()
        self._cancel_endpoint = link.endpoint()
        self._cancels_pending: list[tuple[Any, Any]] = []   # (engine, message) sends that wait for the lock

    # -- endpoints -----------------------------------------------------------------------

    def _correlator(self) -> Correlator:
        correlator: Correlator | None = getattr(self._local, "correlator", None)
        if correlator is None:
            inbox = Inbox() if self.link.stream_receiver() is not None else None
            correlator = self._local.correlator = Correlator(self.link.endpoint(), inbox)
            # A thread's endpoint holds sockets: freed once its thread ended and no stream it began is
            # still read (a server with a thread per request would otherwise hold one per request served).
            weakref.finalize(correlator, _release_thread, self.link, correlator.endpoint, inbox).atexit = False
        return correlator

    def _endpoint(self) -> Any:
        """This thread's endpoint, for raw asks (messages nobody waits for are dropped by the correlator)."""
        return self._correlator().endpoint

    def close(self) -> None:
        self._report_refusals()
        with self._lock:
            timer, self._tally_timer = self._tally_timer, None
        if timer is not None:
            timer.cancel()
        self._closed = True
        # Detaches this process only: the node keeps running.
        self.link.close()
        self.asys = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups -------------------------------------------------------------------------

    def _lookup(self, message: Any, expected: type[_Reply], timeout_s: float, what: str,
                target: Any = None) -> _Reply:
        token = message.token = "q_" + secrets.token_hex(8)
        reply = self._correlator().request(self._registry if target is None else target, message, token, timeout_s)
        if not isinstance(reply, expected):
            got = "nothing" if reply is None else type(reply).__name__
            raise GatewayUnavailable(f"{self.link.where} did not answer {what} (got {got})")
        return reply

    def routes(self, model: str, refresh: bool = False) -> list[RouteEntry]:
        return self._route_lookup(model, refresh).entries

    def _route_lookup(self, model: str, refresh: bool = False) -> Routes:
        cached = self._routes.get(model)
        if cached and not refresh and time.monotonic() - cached[0] < self.route_ttl_s:
            return Routes(model, cached[1])
        # One lookup per model at a time: hundreds of threads whose cached route expired
        # together would otherwise all ask the registry at once, and time out behind each other.
        with self._lock:
            lock = self._route_locks.setdefault(model, threading.Lock())
        if cached and not refresh:
            if not lock.acquire(blocking=False):
                return Routes(model, cached[1])  # another thread is refreshing it: the last answer serves meanwhile
        elif not lock.acquire(timeout=LOOKUP_TIMEOUT_S):
            raise GatewayUnavailable(f"the route lookup for {model!r} on {self.link.where} did not finish")
        try:
            cached = self._routes.get(model)
            if cached and not refresh and time.monotonic() - cached[0] < self.route_ttl_s:
                return Routes(model, cached[1])  # looked up by another thread while this one waited
            reply = self._lookup(Route(model), Routes, LOOKUP_TIMEOUT_S, "a route lookup")
            if reply.policy is not None:
                self._policy = reply.policy
            if reply.entries:
                self._routes[model] = (time.monotonic(), reply.entries)
            else:
                self._routes.pop(model, None)
            return reply
        finally:
            lock.release()

    def models(self, timeout_s: float = 10.0) -> list[str]:
        """The models a call through this node can reach: its own, and other nodes' where routing lets calls go."""
        return self._lookup(ModelsRequest(), ModelList, timeout_s, "a models request").models

    def cluster_status(self, timeout_s: float = 10.0, members_only: bool = False) -> ClusterStatus:
        """Every node of the cluster, gathered by the leader's registrar (or just who is in it)."""
        return self._lookup(ClusterStatusRequest(members_only=members_only), ClusterStatus, timeout_s,
                            "a cluster status request")

    def status(self, timeout_s: float = 10.0) -> NodeStatus:
        return self._lookup(StatusRequest(), NodeStatus, timeout_s, "a status request")

    def spend(self, since_unix: float, by: str = "key", timeout_s: float = 10.0,
              cluster: bool = False) -> list[SpendReport]:
        """Spend since ``since_unix`` grouped by ``by``, from this node's ledger, or each node's (``cluster``)."""
        if not cluster:
            return [self._lookup(SpendQuery(since_unix, by), SpendReport, timeout_s, "a spend query")]
        reports = []
        for member in self.cluster_status(timeout_s, members_only=True).members:
            try:
                reports.append(self._lookup(SpendQuery(since_unix, by), SpendReport, timeout_s, "a spend query",
                                            target=member.registry))
            except GatewayUnavailable:
                reports.append(SpendReport(member.node_id or member.node, [], error="did not answer"))
        return reports

    # -- calls ---------------------------------------------------------------------------

    def request(self, model: str, messages: Iterable[MessageParam], *, stream: bool = False,
                **params: Unpack[CallParams]) -> InferenceRequest:
        """Build a request. Parameters left out are not sent; ``extra_body`` carries any other
        provider parameter as is. ``timeout_s`` <= 0 raises DeadlineExceeded at once.
        ``fallbacks`` replaces ``routing.fallbacks`` of the model for this call."""
        return self._build("request", model, messages, stream, params)

    def complete(self, model: str, messages: Iterable[MessageParam], **params: Unpack[CallParams]) -> Completed:
        """One whole completion; raises the typed InferenceError on failure."""
        return self.send(self._build("complete", model, messages, False, params))

    def stream(self, model: str, messages: Iterable[MessageParam], **params: Unpack[CallParams]) -> Stream:
        """Chunks as they arrive: ``with client.stream(...) as s: for chunk in s: ...``; raises on failure."""
        return self.start(self._build("stream", model, messages, True, params))

    def start(self, request: InferenceRequest, timeout_s: float | None = None) -> Stream:
        """Follow a prepared request (``request()``) as a Stream, whether it streams or not: a call
        with ``stream=False`` yields no chunks, then sets ``result``. Nothing is sent until the
        Stream is iterated; ``timeout_s`` defaults to what is left of the request's deadline."""
        return Stream(self, request, self._time_left(request) if timeout_s is None else timeout_s)

    def _build(self, method: str, model: str, messages: Iterable[MessageParam], stream: bool,
               params: CallParams) -> InferenceRequest:
        unknown = sorted(set(params) - CALL_PARAMS)
        if unknown:
            raise TypeError(f"{method}() got an unexpected keyword argument {unknown[0]!r}")
        given: Mapping[str, object] = params
        sent = {name: given[name] for name in GENERATION_PARAMS if given.get(name, NOT_GIVEN) is not NOT_GIVEN}
        extra_body = params.get("extra_body")
        if extra_body is not None:
            if not isinstance(extra_body, Mapping):
                raise TypeError(f"extra_body must be a dict, got {type(extra_body).__name__}")
            clash = sorted(set(extra_body) & set(sent))
            if clash:
                raise TypeError(f"{', '.join(clash)} given both as a parameter and in extra_body")
            sent.update(extra_body)
        timeout = _timeout(params.get("timeout_s", NOT_GIVEN), self.timeout_s)
        request = InferenceRequest(model=model, messages=_message_list(messages), params=sent, stream=stream,
                                   priority=params.get("priority", "normal"), deadline_unix=time.time() + timeout,
                                   idempotent=params.get("idempotent", True),
                                   metadata=dict(params.get("metadata") or {}))
        fallbacks = params.get("fallbacks")
        if fallbacks is not None:
            if not isinstance(fallbacks, (list, tuple)) or not all(isinstance(m, str) and m for m in fallbacks):
                raise TypeError(f"fallbacks must be a list of model names, got {fallbacks!r}")
            request.fallbacks = list(fallbacks)
        request_id = params.get("request_id")
        if request_id:
            request.request_id = request_id
        if timeout <= 0:
            # A spent budget (e.g. a parent's deadline handed down) is the deadline already passed.
            raise DeadlineExceeded(f"timeout_s={timeout:g}: the deadline passed before the call was sent",
                                   request_id=request.request_id)
        return request

    def _time_left(self, request: InferenceRequest) -> float:
        return request.deadline_unix - time.time() if request.deadline_unix is not None else self.timeout_s

    def embed(self, model: str, input: str | Sequence[str], *, dimensions: int | NotGiven = NOT_GIVEN,
              user: str | NotGiven = NOT_GIVEN, metadata: Mapping[str, str] | None = None,
              priority: PriorityParam = "normal", timeout_s: float | None | NotGiven = NOT_GIVEN,
              request_id: str | None = None, extra_body: Mapping[str, object] | None = None,
              fallbacks: list[str] | tuple[str, ...] | None = None, batch_size: int | None = None) -> EmbeddingResult:
        """Embeddings of ``input`` (one text or a list), one vector per text, in order.

        More texts than the deployments take in one call (``RouteEntry.embed_batch``: 2048 for
        OpenAI, 96 for Cohere, 1 for Bedrock Titan, ...) are sent as several calls, one after
        the other, each through admission, budgets and the ledger like any call; ``timeout_s``
        bounds the whole. ``extra_body`` carries provider options (``input_type``, ``task_type``).
        """
        texts = [input] if isinstance(input, str) else list(input) if isinstance(input, (list, tuple)) else None
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("input must be a string or a non-empty list of strings")
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                       or batch_size < 1):
            raise TypeError(f"batch_size must be a positive integer, got {batch_size!r}")
        try:
            entries = self._route_lookup(model).entries
        except InferenceError:
            entries = []   # no route yet: the send below says why
        deadline = time.time() + _timeout(timeout_s, self.timeout_s)
        calls: list[Completed] = []
        for rid, part in embed_batches(texts, batch_size or embed_batch_of(entries), request_id):
            request = self.request(model, [{"role": "user", "content": t} for t in part], stream=False,
                                   user=user, metadata=metadata, priority=priority, timeout_s=deadline - time.time(),
                                   request_id=rid, extra_body=extra_body, fallbacks=fallbacks)
            if dimensions is not NOT_GIVEN:
                request.params["dimensions"] = dimensions
            request.operation = "embed"
            calls.append(self.send(request))
        return merged_embeddings(calls)

    def send(self, request: InferenceRequest, timeout_s: float | None = None) -> Completed:
        """Send a prepared request and wait for its terminal message."""
        with self.start(request, timeout_s) as holder:
            for _ in holder:
                pass
        if holder.result is None:   # never: an exchange that ends without raising has set its result
            raise InternalError(f"{request.request_id} ended without its terminal message",
                                request_id=request.request_id)
        return holder.result

    def cancel(self, request_id: str) -> None:
        """Cancel a call of this client; safe from any thread."""
        engine = self._sent_to.get(request_id)
        targets = [engine] if engine is not None else [_target(e) for _, es in list(self._routes.values()) for e in es]
        for target in targets:
            self._tell_cancel(target, request_id)

    def _tell_cancel(self, engine: Any, request_id: str) -> None:
        entry = self._linked.get(request_id)
        links = self._caller_links()
        if entry is not None and links is not None:
            # Behind its call on the same link (by Thespian it could overtake it, and be ignored).
            # Not blocking: a finalizer may run in a thread that is writing on that link.
            if links.send(entry.engine, entry.control_port, address_of(self._cancel_endpoint), Cancel(request_id),
                          blocking=False):
                return
        self._tell_any_thread(engine, Cancel(request_id))

    def _caller_links(self) -> CallerLinks | None:
        if self._links is False:
            self._links = self.link.caller_links()
        return self._links if isinstance(self._links, CallerLinks) else None

    def _send_on_link(self, correlator: Correlator, entry: RouteEntry, request: InferenceRequest) -> bool:
        """The call on this process's link to its engine, when there is one (actors/caller_links.py)."""
        links = self._caller_links()
        if links is None or entry.via is not None or entry.control_port is None:
            return False
        sender = address_of(correlator.endpoint)
        if sender is None:
            return False
        correlator.open(request.request_id)
        if not links.send(entry.engine, entry.control_port, sender, request):
            return False
        self._linked[request.request_id] = entry
        return True

    def _tell_any_thread(self, target: Any, message: Any) -> None:
        """A one-way send from any thread (a finalizer, a timer), on the shared endpoint under its lock."""
        if self._closed:
            return
        if not self._cancel_lock.acquire(blocking=False):
            # Held by this thread further up (a finalizer ran mid-cancel) or by another:
            # sent with the next one.
            self._cancels_pending.append((target, message))
            return
        try:
            pending, self._cancels_pending = self._cancels_pending + [(target, message)], []
            for to, what in pending:
                try:
                    self._cancel_endpoint.tell(to, what)
                except Exception:  # noqa: BLE001 - best effort; the engine's deadline still applies
                    pass
        finally:
            self._cancel_lock.release()

    # -- router refusals: counted here, kept by the node (its status, /metrics) ---------------

    def _refused(self, model: str, error: InferenceError) -> None:
        timer = None
        with self._lock:
            now_due = self._tally.add(model, type(error).__name__, time.monotonic())
            if not now_due and self._tally_timer is None:
                due = self._tally.due() or time.monotonic()
                timer = self._tally_timer = threading.Timer(max(0.0, due - time.monotonic()), self._report_refusals)
                timer.daemon = True
        if now_due:
            self._report_refusals()
        elif timer is not None:
            timer.start()

    def _report_refusals(self) -> None:
        with self._lock:
            counts = self._tally.take(time.monotonic())
            self._tally_timer = None
        if counts:
            self._tell_any_thread(self._registry, RouterRefusals(counts))

    # -- one call --------------------------------------------------------------------------

    def _exchange(self, request: InferenceRequest, timeout_s: float, state: _State) -> Chunks:
        """Route, send, follow; on an engine crash resend (idempotent, nothing streamed yet) or fail."""
        correlator = self._correlator()
        rid = request.request_id
        deadline = time.monotonic() + timeout_s
        correlator.open(rid)
        receiver = None
        if isinstance(correlator.inbox, Inbox):
            # The inbox takes what the receiver's thread reads for this call: its chunks on the
            # channel, and its terminal when the call goes on a caller link.
            receiver = state.receiver = self.link.stream_receiver()
            if receiver is not None:
                receiver.route(rid, correlator.inbox)
                # Chunks with log probabilities travel as messages (the channel's frames carry text and tool calls).
                if request.stream and not request.params.get("logprobs"):
                    request.channel = receiver.spec
        try:
            for resend in itertools.count():
                try:
                    yield from self._over_routes(correlator, request, deadline, state)
                    return
                except _EngineGone as gone:
                    self._routes.pop(request.model, None)
                    if state.streamed or not request.idempotent or resend >= CRASH_RESENDS \
                            or time.monotonic() >= deadline:
                        # An idempotent call was re-sent already (a repeat would add to the gateway's
                        # tries); one that is not was never re-sent: its caller decides.
                        raise EngineCrashed(f"{gone.reason} while it held {rid}", request_id=rid,
                                            retryable=not state.streamed and not request.idempotent) from None
        except InferenceError as error:
            # The caller's verdict: repeat only what can help and duplicates no attempt (core/retry.py).
            error.retryable = caller_may_retry(error, error.attempt_log)
            error.request_id = error.request_id or rid
            raise
        finally:
            state.done = True
            if receiver is not None:
                receiver.unroute(rid)
            correlator.close(rid)

    def _over_routes(self, correlator: Correlator, request: InferenceRequest, deadline: float,
                     state: _State) -> Chunks:
        """Route over the model's group, then its fallbacks (docs/routing.md), until one serves.

        Only before the first chunk reached the caller; every deployment tried gets one
        attempt and retries anywhere share one budget, so a chain cannot multiply them.
        """
        entries = self._wait_for_routes(request.model, deadline)
        policy = self._policy
        plan = routing.FallbackPlan(request.model, policy, request.fallbacks)
        budget = routing.RequestRetries(policy.num_retries)
        log: list[AttemptInfo] = []
        model = request.model
        error = yield from self._over_group(correlator, request, model, entries, policy, budget, log, deadline, state)
        while error is not None and not state.streamed and time.monotonic() < deadline:
            next_model = plan.next_model(error)
            if next_model is None:
                break
            model = next_model
            try:
                entries = self._wait_for_routes(model, deadline)
            except (NotFound, EngineCrashed) as exc:
                log.append(AttemptInfo(model, exc.kind, None, 0.0, False))
                continue  # that fallback has no live deployment here: the next one, for the same error
            # Marked, so the serving engine counts it as a fallback (records.FALLBACK_METADATA).
            fallback = dataclasses.replace(request, metadata={**request.metadata, FALLBACK_METADATA: request.model})
            error = yield from self._over_group(correlator, fallback, model, entries, policy, budget, log,
                                                deadline, state)
        if error is None:
            return
        error.attempt_log = log
        if error is state.refused:
            self._refused(model, error)
        raise error

    def _candidates(self, entries: list[RouteEntry]) -> list[routing.Candidate]:
        replicas = Counter(entry.deployment for entry in entries)
        now = time.time()
        out = []
        for entry in entries:
            key = str(entry.engine)
            held = self._held.get(key)
            holding = routing.held_refusal(held, now) if held is not None else None
            refusal: InferenceError | None = entry.refusal
            until = entry.refusal_until_unix
            if holding is not None:   # its own answer, as it said (its retry-after from its probe time)
                refusal, until = holding
            # The engine's pushed load counts every caller's calls as of its last push; this
            # client's own count is current. The larger of the two is the better estimate.
            busy = max(entry.queue_depth + entry.in_flight, self._busy.get(key, 0))
            out.append(routing.Candidate(
                entry.deployment, key=entry, weight=entry.weight / replicas[entry.deployment], in_flight=busy,
                circuit=entry.circuit, latency_s=entry.latency_s, ttft_s=entry.ttft_s, headroom=entry.headroom,
                price_in=entry.price_in, price_out=entry.price_out, max_input_tokens=entry.max_input_tokens,
                retry_at_unix=entry.retry_at_unix, budget_spent=tuple(entry.budget_spent or ()),
                provider=entry.provider, refusal=refusal, refusal_until_unix=until,
                remote=entry.via is not None, node=entry.node))
        return out

    def _over_group(self, correlator: Correlator, request: InferenceRequest, model: str, entries: list[RouteEntry],
                    policy: routing.RoutingPolicy, budget: routing.RequestRetries, log: list[AttemptInfo],
                    deadline: float, state: _State) -> Generator[TokenChunk, None, InferenceError | None]:
        """Try the group's deployments in the plan's order; None when one served, else the error for the fallbacks."""
        plan = routing.plan_group(model, self._candidates(entries), strategy=policy.strategy_for(model),
                                  rand=self._rand.random, streamed=request.stream,
                                  input_tokens=routing.input_estimate(request.messages),
                                  output_tokens=routing.output_estimate(request.params.get("max_tokens")),
                                  now_unix=time.time(), cross_node=policy.cross_node_for(model))
        state.refused = plan.refusal
        if not plan.ordered:
            log.extend(_skipped(plan.skipped))
            # Refused as the engine refuses the same condition: its own error (core/refusals.py).
            return state.refused or NotFound(f"no deployment serves model {model!r}")
        error: InferenceError | None = None
        left_node = False
        for candidate in plan.ordered:
            entry: RouteEntry = candidate.key
            if candidate.remote and not left_node:
                # The call leaves this node: the attempt list says which of its deployments it passed over, and why.
                left_node = True
                log.extend(_skipped([(c, e) for c, e in plan.skipped if not c.remote]))
            budget.start(entry.max_retries)
            # Another node's engine is reached through this node's relay (RouteEntry.via), which forwards to it.
            attempt = dataclasses.replace(request, retry_budget=budget.left,
                                          relay_to=entry.engine if entry.via is not None else None)
            state.failed = None
            state.deployment, state.fallback = entry.deployment, model != request.model
            try:
                with self._in_flight(str(entry.engine)):
                    result = yield from self._follow(correlator, entry, attempt, deadline, state)
            except InferenceError as exc:
                failed = state.failed
                budget.charge(failed.attempts if failed is not None else 1)
                log.extend(_on(entry, failed.attempt_log if failed is not None and failed.attempt_log
                               else [AttemptInfo(entry.deployment, exc.kind, exc.status, 0.0, failed is None)]))
                if isinstance(exc, CircuitOpen):
                    self._held[str(entry.engine)] = (routing.held_until(exc, time.time()), copy.copy(exc))
                step = routing.after_failure(exc, streamed=state.streamed, idempotent=request.idempotent,
                                             sent=failed is None or any(a.sent for a in failed.attempt_log),
                                             deadline_passed=time.monotonic() >= deadline)
                if step == "end":
                    exc.attempt_log = log
                    raise
                error = exc
                if step == "fallback":
                    break
                continue
            earlier = sum(1 for a in log if a.sent)
            log.extend(_on(entry, result.attempt_log or [AttemptInfo(entry.deployment)]))
            result.attempt_log = log
            result.attempts += earlier
            return None
        return error

    @contextlib.contextmanager
    def _in_flight(self, key: str) -> Iterator[None]:
        """Count this client's call on an engine while it runs there (least-busy reads it)."""
        with self._lock:
            self._busy[key] = self._busy.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._busy.get(key, 1) - 1
                if left > 0:
                    self._busy[key] = left
                else:
                    self._busy.pop(key, None)

    def _wait_for_routes(self, model: str, deadline: float) -> list[RouteEntry]:
        while True:
            routes = self._route_lookup(model)
            if routes.entries:
                return routes.entries
            if not routes.restarting:
                raise NotFound(f"no deployment serves model {model!r}")
            if time.monotonic() >= deadline:
                raise EngineCrashed(f"the engine of {', '.join(routes.restarting)} is restarting", retryable=True)
            time.sleep(0.1)

    def _send_request(self, correlator: Correlator, entry: RouteEntry, request: InferenceRequest,
                      deadline: float) -> Any:
        """On the caller link to the engine, or else ``ask`` it; resend when Thespian reports the
        transmit itself failed.

        ``ask`` returns None at once (not at the timeout) when the message could not be
        delivered. A resend is safe: the engine ignores a request_id it already holds from
        the same caller, and answers that one.
        """
        engine = _target(entry)
        if self._send_on_link(correlator, entry, request):
            wait = max(0.01, min(max(self.liveness_after_s, 2 * EARLY_NONE_S), deadline - time.monotonic()))
            return correlator.wait(request.request_id, wait)
        for attempt in range(SEND_ATTEMPTS):
            sent_at = time.monotonic()
            wait = max(0.01, min(max(self.liveness_after_s, 2 * EARLY_NONE_S), deadline - sent_at))
            reply = correlator.ask(engine, request, request.request_id, wait)
            if reply is not None or time.monotonic() - sent_at > EARLY_NONE_S or time.monotonic() >= deadline:
                return reply
            time.sleep(0.05 * (attempt + 1))
        return None

    def _engine_gone(self, correlator: Correlator, entry: RouteEntry) -> str | None:
        """Why the engine is no longer the live one, or None (alive, or the node did not say).

        One check per engine at a time for the whole client, its answer shared by every request
        silent on that engine for ``liveness_after_s`` (core/liveness.py says why)."""
        key = str(entry.engine)
        with self._lock:
            ask, answer = self._liveness.claim(key)
        if not ask:
            return answer
        answer = None
        try:
            token = "q_" + secrets.token_hex(8)
            reply = correlator.request(self._registry, EngineCheck(entry.engine, token, entry.via), token,
                                       self.liveness_after_s)
            if isinstance(reply, EngineLiveness) and not reply.alive:
                answer = reply.reason or "the engine is gone"
        finally:
            with self._lock:
                self._liveness.answered(key, answer)
        return answer

    def _follow(self, correlator: Correlator, entry: RouteEntry, request: InferenceRequest, deadline: float,
                state: _State) -> Generator[TokenChunk, None, Completed]:
        """One attempt at one engine: its chunks as they come, then its result (or its error, raised)."""
        rid = request.request_id
        engine = self._sent_to[rid] = _target(entry)
        try:
            terminal = yield from self._receive(correlator, entry, request, deadline, state)
        except _EngineGone:
            raise   # nothing left there to cancel
        except BaseException:
            # Timed out, left early, or dropped: do not leave the call running upstream.
            self._tell_cancel(engine, rid)
            raise
        finally:
            self._sent_to.pop(rid, None)
            self._linked.pop(rid, None)
        if isinstance(terminal, Failed):
            state.failed = terminal
            raise terminal.error
        state.result = terminal
        return terminal

    def _receive(self, correlator: Correlator, entry: RouteEntry, request: InferenceRequest, deadline: float,
                 state: _State) -> Generator[TokenChunk, None, Completed | Failed]:
        """Send, then yield the chunks in ``seq`` order (or push them: ``Stream.push_to``) and return the terminal.

        Chunks come from the worker and the terminal from the engine, so they may cross: the
        terminal's ``chunks`` says how many belong to the answer (README, "The raw protocol").
        While the request is silent, the node is asked whether its engine is still alive.
        """
        rid = request.request_id
        grace = deadline + self.terminal_grace_s
        order: ChunkOrder[TokenChunk] = ChunkOrder()
        push: _Push | None = None
        heard = 0        # chunks due when the last wait began: none since, and nothing came, is silence
        terminal: Completed | Failed | None = None
        reply = self._send_request(correlator, entry, request, grace)
        try:
            while True:
                if push is None and state.on_chunk is not None:
                    inbox = correlator.inbox if isinstance(correlator.inbox, Inbox) else None
                    push = _Push(order, state, state.on_chunk, inbox, rid)
                    if terminal is not None:
                        push.expect(terminal.chunks)
                    if state.receiver is not None:
                        state.receiver.push(rid, push)   # what came before is in this thread's inbox
                if reply is None:
                    if terminal is not None:
                        return terminal  # stragglers never came: the terminal message is authoritative
                    if time.monotonic() >= grace:
                        raise GatewayTimeout(f"no answer for {rid} within its deadline (+{self.terminal_grace_s:g}s "
                                             f"grace)", request_id=rid)
                    if order.next_seq == heard:   # nor were chunks pushed meanwhile
                        reason = self._engine_gone(correlator, entry)
                        if reason is not None:
                            raise _EngineGone(reason)
                elif isinstance(reply, PoisonMessage):
                    raise InternalError(f"the gateway failed on a message: {str(reply.details)[:300]}")
                elif isinstance(reply, TokenChunk):
                    if push is not None:
                        push.put(reply)
                    else:
                        for chunk in order.add(reply):
                            state.chunks.append(chunk)
                            yield chunk
                elif isinstance(reply, (Completed, Failed)):
                    terminal = reply
                    if push is not None:
                        push.expect(terminal.chunks)
                if push is not None and push.error is not None:
                    raise push.error
                if terminal is not None and (terminal.chunks is None or order.next_seq >= terminal.chunks):
                    return terminal
                wait = self.straggler_wait_s if terminal is not None else min(self.liveness_after_s,
                                                                              grace - time.monotonic())
                heard = order.next_seq
                reply = correlator.wait(rid, max(0.01, wait))
        finally:
            if push is not None:
                push.close()
