"""GatewayClient: call a node from any process; Stream: one streamed call.

Every thread gets its own private Thespian endpoint wrapped in a Correlator, which files
each arriving message under its request id or lookup token: no call or lookup ever sees
another one's message (a late chunk of an abandoned stream, say). A call that is left
(``close()``, leaving the ``with`` block or the ``for`` loop, a client-side timeout, the
Stream garbage-collected) is cancelled upstream, never left running and billed.

A request silent for ``liveness_after_s`` makes the client ask the node whether the
engine it was sent to is still the live one; if that engine died, the request fails
with EngineCrashed, or is sent again to the restarted engine when no token had arrived
and it is idempotent.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import random
import secrets
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from thespian.actors import ActorSystem, InvalidActorAddress, PoisonMessage

from actors.core import refusals, routing
from actors.core.records import FALLBACK_METADATA
from actors.core.liveness import SharedChecks
from actors.core.retry import caller_may_retry
from actors.correlator import Correlator
from actors.stream_receiver import Inbox, StreamReceiver, shared_receiver
from actors.errors import (CircuitOpen, DeadlineExceeded, EngineCrashed, GatewayTimeout, GatewayUnavailable,
                           InferenceError, InternalError, NotFound)
from actors.ops.procs import port_is_listening
from actors.runtime.node import NODE_GLOBAL_NAME, NodeRegistry
from actors.runtime.protocol import (ClusterStatus, ClusterStatusRequest, EngineCheck, EngineLiveness, NodeStatus,
                                     Route, RouterRefusals, Routes, StatusRequest)
from actors.runtime.protocol.ledger import SpendQuery, SpendReport
from actors.security import wire
from actors.types import (AttemptInfo, Cancel, Completed, EmbeddingResult, Failed, InferenceRequest, TokenChunk,
                          Usage)

__all__ = ["GatewayClient", "Stream", "NOT_GIVEN"]

# How long a route lookup (engines, their pushed load, the routing policy) is reused. Short,
# so least-busy and latency see the engines' state within about a second; the client's own
# in-flight count per engine is always current (docs/routing.md).
ROUTE_TTL_S = 1.0
CIRCUIT_HOLD_S = 1.0       # an engine that answered CircuitOpen is skipped this long when it gave no retry time
REFUSALS_EVERY_S = 0.25    # router refusals are reported to the node at most this often (core/refusals.py)
STRAGGLER_WAIT_S = 2.0     # for streamed chunks that their terminal message overtook
TERMINAL_GRACE_S = 2.0     # the engine owes a terminal even at the deadline: wait a little past it
SEND_ATTEMPTS = 3
EARLY_NONE_S = 0.5         # an ask that returns nothing this fast was never delivered
LIVENESS_AFTER_S = 1.0
CRASH_RESENDS = 2
LOOKUP_TIMEOUT_S = 10.0


class _NotGiven:
    """``NOT_GIVEN``: a parameter left out (None may be a value the provider understands)."""

    _instance = None

    def __new__(cls) -> "_NotGiven":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __reduce__(self):
        return (_NotGiven, ())


NOT_GIVEN: Any = _NotGiven()


class _EngineGone(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _State:
    """What a Stream and its exchange share; holds no reference to the Stream, so a dropped
    Stream is collected at once and its finalizer can cancel the call."""

    def __init__(self) -> None:
        self.chunks: list[TokenChunk] = []
        self.result: Completed | None = None
        self.exchange: Iterator[TokenChunk] | None = None
        self.done = False
        self.failed: Failed | None = None   # the last Failed terminal (its attempts, for routing)
        self.deployment = ""                # the deployment the call went to last (the one serving it)
        self.fallback = False               # that deployment serves another model than the one asked for
        self.refused: InferenceError | None = None   # the router's own refusal of the last group tried


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

    A context manager: leaving the block (or calling ``close()``) cancels the call if it is
    still running. Leaving a ``for`` loop early cancels it too; so does dropping the Stream.
    """

    def __init__(self, client: "GatewayClient", request: InferenceRequest, timeout_s: float) -> None:
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
        return _consume(state, self)

    def text(self) -> str:
        """Consume the stream and return the whole text."""
        for _ in self:
            pass
        return self.result.text if self.result else ""

    def cancel(self) -> None:
        """Ask the engine to stop; the iteration then ends with Cancelled. Safe from any thread."""
        self._client.cancel(self.request_id)

    def close(self) -> None:
        """Stop the call now (cancelled upstream if it is still running) and stop iterating."""
        if not _drop(self._state):
            self.cancel()  # another thread is iterating: its iteration ends with Cancelled

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Stream({self.request_id}, {len(self.chunks)} chunks, {'done' if self.closed else 'open'})"


def _consume(state: _State, stream: Stream) -> Iterator[TokenChunk]:
    # A fresh generator per loop: when the loop is left early, CPython closes it at once.
    # It holds the Stream, so ``for chunk in client.stream(...)`` keeps its Stream alive.
    finished = False
    try:
        for chunk in state.exchange:
            yield chunk
        finished = True
    finally:
        if not finished:
            _drop(state)


def _key_hint() -> str:
    serializer = wire.current()
    if serializer is None or serializer.keyring is None:
        return f"this client has no cluster secret; set {wire.ENV_SECRET} to the nodes' key"
    return (f"this client signs with key id {serializer.keyring.signing.key_id}; {wire.ENV_SECRET} must hold "
            f"a key the node accepts (the node's log names the refused frames)")


def _timeout(timeout_s: Any, default: float) -> float:
    if timeout_s is NOT_GIVEN or timeout_s is None:
        return default
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise TypeError(f"timeout_s must be a number of seconds, got {type(timeout_s).__name__}")
    if math.isnan(timeout_s) or math.isinf(timeout_s):
        raise ValueError(f"timeout_s must be finite, got {timeout_s}")
    return float(timeout_s)


DEFAULT_EMBED_BATCH = 2048   # OpenAI's limit: the batch when no route names one


def embed_batch_of(entries: list[Any]) -> int:
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


class GatewayClient:
    def __init__(self, admin_port: int = 1900, *, host: str = "127.0.0.1", timeout_s: float = 60.0,
                 system_base: str = "multiprocTCPBase", keyring: Any = wire.FROM_ENVIRONMENT,
                 route_ttl_s: float = ROUTE_TTL_S, liveness_after_s: float = LIVENESS_AFTER_S,
                 stream_channel: bool = True) -> None:
        # ActorSystem() silently starts a fresh admin when none listens on the port: check first.
        if not port_is_listening(admin_port, host):
            raise GatewayUnavailable(f"no gateway node is listening on {host}:{admin_port}")
        # Sign and allow-list this process's messages like the nodes' (before its ActorSystem).
        wire.install(wire.resolve_keyring(keyring))
        self.admin_port = admin_port
        self.timeout_s = timeout_s
        self.route_ttl_s = route_ttl_s
        self.liveness_after_s = liveness_after_s
        # Streamed chunks on a signed loopback socket instead of one Thespian message each.
        self.stream_channel = stream_channel
        try:
            self.asys = ActorSystem(system_base, {"Admin Port": admin_port}, transientUnique=True)
        except InvalidActorAddress:
            # Something listens there but never answered: with the wire installed, almost
            # always a node that refuses this client's key (its log says which it accepts).
            raise GatewayUnavailable(f"the node on {host}:{admin_port} did not accept this client's messages: "
                                     f"{_key_hint()}") from None
        self._local = threading.local()
        self._routes: dict[str, tuple[float, list[Any]]] = {}
        self._registry = self.asys.createActor(NodeRegistry, globalName=NODE_GLOBAL_NAME)
        self._contexts: list[Any] = []
        self._lock = threading.Lock()
        self._sent_to: dict[str, Any] = {}
        self._route_locks: dict[str, threading.Lock] = {}
        self._policy = routing.RoutingPolicy()          # the node's, as its last Routes said
        self._busy: dict[str, int] = {}                 # this client's calls in flight, per engine
        # Engines that answered CircuitOpen: until when (unix), and that answer, which the router repeats.
        self._held: dict[str, tuple[float, InferenceError]] = {}
        self._tally = refusals.Tally(REFUSALS_EVERY_S)  # router refusals not yet reported to the node
        self._liveness = SharedChecks(liveness_after_s)  # one engine check at a time, its answer shared
        self._tally_timer: threading.Timer | None = None
        self._rand = random.Random()
        # Cancels may come from any thread (close(), a finalizer): one endpoint for them, under a lock.
        self._cancel_lock = threading.Lock()
        self._cancel_manager = self.asys.private()
        self._cancel_endpoint = self._cancel_manager.__enter__()
        self._cancels_pending: list[tuple[Any, Any]] = []   # (engine, message) sends that wait for the lock

    # -- endpoints -----------------------------------------------------------------------

    def _correlator(self) -> Correlator:
        correlator = getattr(self._local, "correlator", None)
        if correlator is None:
            manager = self.asys.private()
            receiver = self._stream_receiver()
            inbox = Inbox() if receiver is not None else None
            correlator = self._local.correlator = Correlator(manager.__enter__(), inbox)
            with self._lock:
                self._contexts.append(manager)
        return correlator

    def _stream_receiver(self) -> StreamReceiver | None:
        if not self.stream_channel:
            return None
        serializer = wire.current()
        return shared_receiver(serializer.keyring if serializer is not None else None)

    def _endpoint(self) -> Any:
        """This thread's endpoint, for raw asks (messages nobody waits for are dropped by the correlator)."""
        return self._correlator().endpoint

    def close(self) -> None:
        self._report_refusals()
        with self._lock:
            managers, self._contexts = self._contexts + [self._cancel_manager], []
        for manager in managers:
            try:
                manager.__exit__(None, None, None)
            except Exception:  # noqa: BLE001
                pass
        # Detaches this process only: the node's admin keeps running.
        self.asys = None

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- lookups -------------------------------------------------------------------------

    def _lookup(self, message: Any, expected: type, timeout_s: float, what: str) -> Any:
        token = message.token = "q_" + secrets.token_hex(8)
        reply = self._correlator().request(self._registry, message, token, timeout_s)
        if not isinstance(reply, expected):
            got = "nothing" if reply is None else type(reply).__name__
            raise GatewayUnavailable(f"the node on port {self.admin_port} did not answer {what} (got {got})")
        return reply

    def routes(self, model: str, refresh: bool = False) -> list[Any]:
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
            raise GatewayUnavailable(f"the route lookup for {model!r} on port {self.admin_port} did not finish")
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
            token = "q_" + secrets.token_hex(8)
            reply = self._correlator().request(member.registry, SpendQuery(since_unix, by, token=token), token,
                                               timeout_s)
            reports.append(reply if isinstance(reply, SpendReport) else
                           SpendReport(member.node_id or member.node, [], error="did not answer"))
        return reports

    # -- calls ---------------------------------------------------------------------------

    def request(self, model: str, messages: list[dict[str, Any]], *, stream: bool = False,
                max_tokens: Any = NOT_GIVEN, temperature: Any = NOT_GIVEN, top_p: Any = NOT_GIVEN,
                stop: Any = NOT_GIVEN, tools: Any = NOT_GIVEN, tool_choice: Any = NOT_GIVEN, seed: Any = NOT_GIVEN,
                n: Any = NOT_GIVEN, presence_penalty: Any = NOT_GIVEN, frequency_penalty: Any = NOT_GIVEN,
                response_format: Any = NOT_GIVEN, user: Any = NOT_GIVEN, metadata: dict[str, str] | None = None,
                priority: int | str = "normal", timeout_s: Any = NOT_GIVEN, idempotent: bool = True,
                request_id: str | None = None, extra_body: dict[str, Any] | None = None,
                fallbacks: list[str] | None = None) -> InferenceRequest:
        """Build a request. Parameters left out are not sent; ``extra_body`` carries any other
        provider parameter as is. ``timeout_s`` <= 0 raises DeadlineExceeded at once.
        ``fallbacks`` replaces ``routing.fallbacks`` of the model for this call."""
        given = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop,
                 "tools": tools, "tool_choice": tool_choice, "seed": seed, "n": n,
                 "presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty,
                 "response_format": response_format, "user": user}
        params = {k: v for k, v in given.items() if v is not NOT_GIVEN}
        if extra_body is not None:
            if not isinstance(extra_body, dict):
                raise TypeError(f"extra_body must be a dict, got {type(extra_body).__name__}")
            clash = sorted(set(extra_body) & set(params))
            if clash:
                raise TypeError(f"{', '.join(clash)} given both as a parameter and in extra_body")
            params.update(extra_body)
        timeout = _timeout(timeout_s, self.timeout_s)
        request = InferenceRequest(model=model, messages=messages, params=params, stream=stream, priority=priority,
                                   deadline_unix=time.time() + timeout, idempotent=idempotent,
                                   metadata=dict(metadata or {}))
        if fallbacks is not None:
            if not isinstance(fallbacks, (list, tuple)) or not all(isinstance(m, str) and m for m in fallbacks):
                raise TypeError(f"fallbacks must be a list of model names, got {fallbacks!r}")
            request.fallbacks = list(fallbacks)
        if request_id:
            request.request_id = request_id
        if timeout <= 0:
            # A spent budget (e.g. a parent's deadline handed down) is the deadline already passed.
            raise DeadlineExceeded(f"timeout_s={timeout_s:g}: the deadline passed before the call was sent",
                                   request_id=request.request_id)
        return request

    def complete(self, model: str, messages: list[dict[str, Any]], *, max_tokens: Any = NOT_GIVEN,
                 temperature: Any = NOT_GIVEN, top_p: Any = NOT_GIVEN, stop: Any = NOT_GIVEN, tools: Any = NOT_GIVEN,
                 tool_choice: Any = NOT_GIVEN, seed: Any = NOT_GIVEN, n: Any = NOT_GIVEN,
                 presence_penalty: Any = NOT_GIVEN, frequency_penalty: Any = NOT_GIVEN,
                 response_format: Any = NOT_GIVEN, user: Any = NOT_GIVEN, metadata: dict[str, str] | None = None,
                 priority: int | str = "normal", timeout_s: Any = NOT_GIVEN, idempotent: bool = True,
                 request_id: str | None = None, extra_body: dict[str, Any] | None = None,
                 fallbacks: list[str] | None = None) -> Completed:
        """One whole completion; raises the typed InferenceError on failure."""
        kw = dict(locals())
        del kw["self"], kw["model"], kw["messages"]
        return self.send(self.request(model, messages, stream=False, **kw))

    def stream(self, model: str, messages: list[dict[str, Any]], *, max_tokens: Any = NOT_GIVEN,
               temperature: Any = NOT_GIVEN, top_p: Any = NOT_GIVEN, stop: Any = NOT_GIVEN, tools: Any = NOT_GIVEN,
               tool_choice: Any = NOT_GIVEN, seed: Any = NOT_GIVEN, n: Any = NOT_GIVEN,
               presence_penalty: Any = NOT_GIVEN, frequency_penalty: Any = NOT_GIVEN,
               response_format: Any = NOT_GIVEN, user: Any = NOT_GIVEN, metadata: dict[str, str] | None = None,
               priority: int | str = "normal", timeout_s: Any = NOT_GIVEN, idempotent: bool = True,
               request_id: str | None = None, extra_body: dict[str, Any] | None = None,
               fallbacks: list[str] | None = None) -> Stream:
        """Chunks as they arrive: ``with client.stream(...) as s: for chunk in s: ...``; raises on failure."""
        kw = dict(locals())
        del kw["self"], kw["model"], kw["messages"]
        request = self.request(model, messages, stream=True, **kw)
        return Stream(self, request, request.deadline_unix - time.time())

    def embed(self, model: str, input: str | list[str], *, dimensions: Any = NOT_GIVEN, user: Any = NOT_GIVEN,
              metadata: dict[str, str] | None = None, priority: int | str = "normal", timeout_s: Any = NOT_GIVEN,
              request_id: str | None = None, extra_body: dict[str, Any] | None = None,
              fallbacks: list[str] | None = None, batch_size: int | None = None) -> EmbeddingResult:
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
        timeout = _timeout(timeout_s, self.timeout_s)
        deadline = time.time() + timeout
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
        if timeout_s is None:
            timeout_s = request.deadline_unix - time.time() if request.deadline_unix else self.timeout_s
        with Stream(self, request, timeout_s) as holder:
            for _ in holder:
                pass
            return holder.result

    def cancel(self, request_id: str) -> None:
        """Cancel a call of this client; safe from any thread."""
        engine = self._sent_to.get(request_id)
        targets = [engine] if engine is not None else [e.engine for _, es in list(self._routes.values()) for e in es]
        for target in targets:
            self._tell_cancel(target, request_id)

    def _tell_cancel(self, engine: Any, request_id: str) -> None:
        self._tell_any_thread(engine, Cancel(request_id))

    def _tell_any_thread(self, target: Any, message: Any) -> None:
        """A one-way send from any thread (a finalizer, a timer), on the shared endpoint under its lock."""
        if self.asys is None:
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
        with self._lock:
            now_due = self._tally.add(model, type(error).__name__, time.monotonic())
            later = not now_due and self._tally_timer is None
            if later:
                self._tally_timer = threading.Timer(max(0.0, self._tally.due() - time.monotonic()),
                                                    self._report_refusals)
                self._tally_timer.daemon = True
        if now_due:
            self._report_refusals()
        elif later:
            self._tally_timer.start()

    def _report_refusals(self) -> None:
        with self._lock:
            counts = self._tally.take(time.monotonic())
            self._tally_timer = None
        if counts:
            self._tell_any_thread(self._registry, RouterRefusals(counts))

    # -- one call --------------------------------------------------------------------------

    def _exchange(self, request: InferenceRequest, timeout_s: float, state: _State) -> Iterator[TokenChunk]:
        """Route, send, follow; on an engine crash resend (idempotent, nothing streamed yet) or fail."""
        correlator = self._correlator()
        rid = request.request_id
        deadline = time.monotonic() + timeout_s
        correlator.open(rid)
        # Chunks with log probabilities travel as messages (the channel's frames carry text and tool calls).
        receiver = (self._stream_receiver() if request.stream and correlator.inbox is not None
                    and not request.params.get("logprobs") else None)
        if receiver is not None:
            request.channel = receiver.spec
            receiver.route(rid, correlator.inbox)
        try:
            for resend in itertools.count():
                try:
                    yield from self._over_routes(correlator, request, deadline, state)
                    return
                except _EngineGone as gone:
                    self._routes.pop(request.model, None)
                    if state.chunks or not request.idempotent or resend >= CRASH_RESENDS \
                            or time.monotonic() >= deadline:
                        # An idempotent call was re-sent already (a repeat would add to the gateway's
                        # tries); one that is not was never re-sent: its caller decides.
                        raise EngineCrashed(f"{gone.reason} while it held {rid}", request_id=rid,
                                            retryable=not state.chunks and not request.idempotent) from None
        except InferenceError as error:
            # The caller's verdict: repeat only what can help and duplicates no attempt (core/retry.py).
            error.retryable = caller_may_retry(error, getattr(error, "attempt_log", None) or ())
            raise
        finally:
            state.done = True
            if receiver is not None:
                receiver.unroute(rid)
            correlator.close(rid)

    def _over_routes(self, correlator: Correlator, request: InferenceRequest, deadline: float,
                     state: _State) -> Iterator[TokenChunk]:
        """Route over the model's group, then its fallbacks (docs/routing.md), until one serves.

        Only before the first chunk reached the caller; every deployment tried gets one
        attempt and retries anywhere share one budget, so a chain cannot multiply them.
        """
        entries = self._wait_for_routes(request.model, deadline)
        policy = self._policy
        plan = routing.FallbackPlan(request.model, policy, request.fallbacks)
        budget = routing.RequestRetries(policy.num_retries)
        log: list[AttemptInfo] = []
        model: str | None = request.model
        error = yield from self._over_group(correlator, request, model, entries, policy, budget, log, deadline, state)
        while error is not None and not state.chunks and time.monotonic() < deadline:
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
            self._refused(model or request.model, error)
        raise error

    def _candidates(self, entries: list[Any]) -> list[routing.Candidate]:
        replicas: dict[str, int] = {}
        for entry in entries:
            replicas[entry.deployment] = replicas.get(entry.deployment, 0) + 1
        now = time.time()
        out = []
        for entry in entries:
            key = str(entry.engine)
            own = self._busy.get(key, 0)
            held = self._held.get(key)
            if held is not None and held[0] > now:   # its own answer, as it said (its retry-after from its probe time)
                retry_at = getattr(held[1], "retry_at_unix_ms", 0) / 1000
                refusal, until = held[1], retry_at if retry_at > now else held[0]
            else:
                refusal, until = getattr(entry, "refusal", None), getattr(entry, "refusal_until_unix", None)
            # The engine's pushed load counts every caller's calls as of its last push; this
            # client's own count is current. The larger of the two is the better estimate.
            busy = max(entry.queue_depth + getattr(entry, "in_flight", 0), own)
            out.append(routing.Candidate(
                entry.deployment, key=entry, weight=getattr(entry, "weight", 1.0) / replicas[entry.deployment],
                in_flight=busy, circuit=getattr(entry, "circuit", "closed"), latency_s=getattr(entry, "latency_s", None),
                ttft_s=getattr(entry, "ttft_s", None), headroom=getattr(entry, "headroom", None),
                price_in=getattr(entry, "price_in", None), price_out=getattr(entry, "price_out", None),
                max_input_tokens=getattr(entry, "max_input_tokens", None),
                retry_at_unix=getattr(entry, "retry_at_unix", None),
                budget_spent=tuple(getattr(entry, "budget_spent", ()) or ()), provider=getattr(entry, "provider", ""),
                refusal=refusal, refusal_until_unix=until))
        return out

    def _over_group(self, correlator: Correlator, request: InferenceRequest, model: str, entries: list[Any],
                    policy: routing.RoutingPolicy, budget: routing.RequestRetries, log: list[AttemptInfo],
                    deadline: float, state: _State) -> Iterator[TokenChunk]:
        """Try the group's deployments in the strategy's order; None when one served, else the last error."""
        input_tokens = routing.input_estimate(request.messages)
        max_tokens = request.params.get("max_tokens")
        output_tokens = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else 256
        usable, skipped = [], {}
        now_unix = time.time()
        for candidate in self._candidates(entries):
            refused = routing.refusal_of(candidate, input_tokens, now_unix)
            if refused is None:
                usable.append(candidate)
            else:
                skipped.setdefault(candidate.deployment, refused)
        if not usable:
            for name, refused in sorted(skipped.items()):
                log.append(AttemptInfo(name, refused.kind, None, 0.0, False))
            # Refused as the engine refuses the same condition: its own error (core/refusals.py).
            state.refused = refusals.for_group(model, sorted(skipped.items())) if skipped else None
            return state.refused or NotFound(f"no deployment serves model {model!r}")
        ordered = routing.order(policy.strategy_for(model), usable, rand=self._rand.random, streamed=request.stream,
                                input_tokens=input_tokens, output_tokens=output_tokens)
        error: InferenceError | None = None
        for candidate in ordered:
            entry = candidate.key
            budget.start(getattr(entry, "max_retries", 0))
            if error is not None and (time.monotonic() >= deadline or not routing.moves_within_group(error)):
                break
            attempt = dataclasses.replace(request, retry_budget=budget.left)
            key = str(entry.engine)
            with self._lock:
                self._busy[key] = self._busy.get(key, 0) + 1
            state.failed = None
            state.deployment, state.fallback = entry.deployment, model != request.model
            try:
                yield from self._follow(correlator, entry.engine, attempt, deadline, state)
            except InferenceError as exc:
                failed = state.failed
                budget.charge(failed.attempts if failed is not None else 1)
                log.extend(failed.attempt_log if failed is not None and failed.attempt_log
                           else [AttemptInfo(entry.deployment, exc.kind, exc.status, 0.0, failed is None)])
                if isinstance(exc, CircuitOpen):
                    hold = (exc.retry_at_unix_ms / 1000 - time.time()) if exc.retry_at_unix_ms else CIRCUIT_HOLD_S
                    self._held[key] = (time.time() + max(0.05, min(hold, 30.0)), copy.copy(exc))
                if state.chunks or isinstance(exc, GatewayTimeout):
                    exc.attempt_log = log
                    raise  # a token reached the caller (or the deadline is spent): no other deployment
                sent = failed is None or any(a.sent for a in failed.attempt_log)
                if not request.idempotent and sent:
                    exc.attempt_log = log
                    raise  # it may have run upstream: only an idempotent call goes elsewhere
                error = exc
                continue
            finally:
                with self._lock:
                    left = self._busy.get(key, 1) - 1
                    if left > 0:
                        self._busy[key] = left
                    else:
                        self._busy.pop(key, None)
            result = state.result
            earlier = sum(1 for a in log if a.sent)
            log.extend(result.attempt_log or [AttemptInfo(entry.deployment)])
            result.attempt_log = log
            result.attempts += earlier
            return None
        return error

    def _wait_for_routes(self, model: str, deadline: float) -> list[Any]:
        while True:
            routes = self._route_lookup(model)
            if routes.entries:
                return routes.entries
            if not routes.restarting:
                raise NotFound(f"no deployment serves model {model!r}")
            if time.monotonic() >= deadline:
                raise EngineCrashed(f"the engine of {', '.join(routes.restarting)} is restarting", retryable=True)
            time.sleep(0.1)

    def _send_request(self, correlator: Correlator, engine: Any, request: InferenceRequest, deadline: float) -> Any:
        """``ask`` the engine; resend when Thespian reports the transmit itself failed.

        ``ask`` returns None at once (not at the timeout) when the message could not be
        delivered. A resend is safe: the engine ignores a request_id it already holds from
        the same caller, and answers that one.
        """
        for attempt in range(SEND_ATTEMPTS):
            sent_at = time.monotonic()
            wait = max(0.01, min(max(self.liveness_after_s, 2 * EARLY_NONE_S), deadline - sent_at))
            reply = correlator.ask(engine, request, request.request_id, wait)
            if reply is not None or time.monotonic() - sent_at > EARLY_NONE_S or time.monotonic() >= deadline:
                return reply
            time.sleep(0.05 * (attempt + 1))
        return None

    def _engine_gone(self, correlator: Correlator, engine: Any) -> str | None:
        """Why the engine is no longer the live one, or None (alive, or the node did not say).

        One check per engine at a time for the whole client, its answer shared by every request
        silent on that engine for ``liveness_after_s`` (core/liveness.py says why)."""
        key = str(engine)
        with self._lock:
            ask, answer = self._liveness.claim(key)
        if not ask:
            return answer
        answer = None
        try:
            token = "q_" + secrets.token_hex(8)
            reply = correlator.request(self._registry, EngineCheck(engine, token), token, self.liveness_after_s)
            if isinstance(reply, EngineLiveness) and not reply.alive:
                answer = reply.reason or "the engine is gone"
        finally:
            with self._lock:
                self._liveness.answered(key, answer)
        return answer

    def _follow(self, correlator: Correlator, engine: Any, request: InferenceRequest, deadline: float,
                state: _State) -> Iterator[TokenChunk]:
        rid = request.request_id
        grace = deadline + TERMINAL_GRACE_S
        self._sent_to[rid] = engine
        received: dict[int, TokenChunk] = {}
        next_seq = 0
        terminal: Completed | Failed | None = None
        gone = False
        try:
            reply = self._send_request(correlator, engine, request, grace)
            while True:
                if reply is None:
                    if terminal is not None:
                        break  # stragglers never came: the terminal message is authoritative
                    if time.monotonic() >= grace:
                        raise GatewayTimeout(f"no answer for {rid} within its deadline (+{TERMINAL_GRACE_S:g}s grace)",
                                             request_id=rid)
                    reason = self._engine_gone(correlator, engine)
                    if reason is not None:
                        gone = True
                        raise _EngineGone(reason)
                elif isinstance(reply, PoisonMessage):
                    raise InternalError(f"the gateway failed on a message: {str(reply.details)[:300]}")
                elif isinstance(reply, TokenChunk):
                    received[reply.seq] = reply
                    while next_seq in received:
                        chunk = received.pop(next_seq)
                        next_seq += 1
                        state.chunks.append(chunk)
                        yield chunk
                elif isinstance(reply, (Completed, Failed)):
                    terminal = reply
                if terminal is not None and (terminal.chunks is None or next_seq >= terminal.chunks):
                    break
                now = time.monotonic()
                wait = STRAGGLER_WAIT_S if terminal is not None else min(self.liveness_after_s, grace - now)
                reply = correlator.wait(rid, max(0.01, wait))
        finally:
            if terminal is None and not gone:
                # Timed out, left early, or dropped: do not leave the call running upstream.
                self._tell_cancel(engine, rid)
            self._sent_to.pop(rid, None)
        if isinstance(terminal, Failed):
            state.failed = terminal
            raise terminal.error
        state.result = terminal
