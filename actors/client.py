"""GatewayClient: call a node from any process with ``ActorSystem().ask``.

Thespian's ``ask`` returns whatever message reaches the endpoint next, so every thread
gets its own private endpoint and every message is matched on ``request_id``; late
chunks of an earlier request are dropped. Every wait has a timeout. An actor exception
arrives as a PoisonMessage and becomes a typed error.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

from thespian.actors import ActorSystem, InvalidActorAddress, PoisonMessage

from actors.security import wire
from actors.errors import CircuitOpen, InferenceError, InternalError, NotFound, QueueFull, Timeout
from actors.types import Cancel, Completed, Failed, InferenceRequest, TokenChunk
from actors.runtime.protocol import ClusterStatus, ClusterStatusRequest, NodeStatus, Route, Routes, StatusRequest
from actors.runtime.node import NODE_GLOBAL_NAME, NodeRegistry
from actors.ops.procs import port_is_listening

__all__ = ["GatewayClient", "Stream"]

ROUTE_TTL_S = 5.0
# How long to wait for streamed chunks that a terminal message overtook.
STRAGGLER_WAIT_S = 2.0
TERMINAL_GRACE_S = 2.0
SEND_ATTEMPTS = 3
EARLY_NONE_S = 0.5   # an ask that returns nothing this fast was never delivered


class Stream:
    """Iterate for TokenChunks in order; ``result`` is the Completed once iteration ends."""

    def __init__(self, client: "GatewayClient", request: InferenceRequest, timeout_s: float) -> None:
        self._client = client
        self.request = request
        self.timeout_s = timeout_s
        self.result: Completed | None = None
        self.chunks: list[TokenChunk] = []
        self._iterator: Iterator[TokenChunk] | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def __iter__(self) -> Iterator[TokenChunk]:
        # One exchange per stream: a loop that breaks early can be resumed by the next loop.
        if self._iterator is None:
            self._iterator = self._client._exchange(self.request, self.timeout_s, self)
        return self._iterator

    def text(self) -> str:
        """Consume the stream and return the whole text."""
        for _ in self:
            pass
        return self.result.text if self.result else ""

    def cancel(self) -> None:
        self._client.cancel(self.request_id)


def _key_hint() -> str:
    serializer = wire.current()
    if serializer is None or serializer.keyring is None:
        return f"this client has no cluster secret; set {wire.ENV_SECRET} to the nodes' key"
    return (f"this client signs with key id {serializer.keyring.signing.key_id}; {wire.ENV_SECRET} must hold "
            f"a key the node accepts (the node's log names the refused frames)")


class GatewayClient:
    def __init__(self, admin_port: int = 1900, *, host: str = "127.0.0.1", timeout_s: float = 60.0,
                 system_base: str = "multiprocTCPBase", keyring: Any = wire.FROM_ENVIRONMENT) -> None:
        # ActorSystem() silently starts a fresh admin when none listens on the port: check first.
        if not port_is_listening(admin_port, host):
            raise InternalError(f"no gateway node is listening on {host}:{admin_port}")
        # Sign and allow-list this process's messages like the nodes' (before its ActorSystem).
        wire.install(wire.resolve_keyring(keyring))
        self.admin_port = admin_port
        self.timeout_s = timeout_s
        try:
            self.asys = ActorSystem(system_base, {"Admin Port": admin_port}, transientUnique=True)
        except InvalidActorAddress:
            # Something listens there but never answered: with the wire installed, almost
            # always a node that refuses this client's key (its log says which it accepts).
            raise InternalError(f"the node on {host}:{admin_port} did not accept this client's messages: "
                                f"{_key_hint()}") from None
        self._local = threading.local()
        self._routes: dict[str, tuple[float, list[Any]]] = {}
        self._rr = itertools.count()
        self._registry = self.asys.createActor(NodeRegistry, globalName=NODE_GLOBAL_NAME)
        self._contexts: list[Any] = []
        self._lock = threading.Lock()
        self._sent_to: dict[str, Any] = {}

    # -- endpoints -----------------------------------------------------------------------

    def _endpoint(self) -> Any:
        context = getattr(self._local, "context", None)
        if context is None:
            manager = self.asys.private()
            context = manager.__enter__()
            self._local.context = context
            with self._lock:
                self._contexts.append((manager, context))
        return context

    def close(self) -> None:
        with self._lock:
            contexts, self._contexts = self._contexts, []
        for manager, _ in contexts:
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

    # -- routing -------------------------------------------------------------------------

    def routes(self, model: str, refresh: bool = False) -> list[Any]:
        cached = self._routes.get(model)
        if cached and not refresh and time.monotonic() - cached[0] < ROUTE_TTL_S:
            return cached[1]
        reply = self._endpoint().ask(self._registry, Route(model), 10)
        if not isinstance(reply, Routes):
            raise InternalError(f"the node did not answer a route lookup (got {type(reply).__name__})")
        self._routes[model] = (time.monotonic(), reply.entries)
        return reply.entries

    def cluster_status(self, timeout_s: float = 10.0, members_only: bool = False) -> ClusterStatus:
        """Every node of the cluster, gathered by the leader's registrar (or just who is in it)."""
        reply = self._endpoint().ask(self._registry, ClusterStatusRequest(members_only=members_only), timeout_s)
        if not isinstance(reply, ClusterStatus):
            raise InternalError(f"no cluster status (got {type(reply).__name__})")
        return reply

    def status(self, timeout_s: float = 10.0) -> NodeStatus:
        reply = self._endpoint().ask(self._registry, StatusRequest(), timeout_s)
        if not isinstance(reply, NodeStatus):
            raise InternalError(f"no status from the node (got {type(reply).__name__})")
        return reply

    # -- calls ---------------------------------------------------------------------------

    def request(self, model: str, messages: list[dict[str, Any]], *, stream: bool = False,
                priority: int | str = "normal", timeout_s: float | None = None, idempotent: bool = True,
                request_id: str | None = None, **params: Any) -> InferenceRequest:
        timeout = timeout_s or self.timeout_s
        request = InferenceRequest(model=model, messages=messages, params=params, stream=stream, priority=priority,
                                   deadline_unix=time.time() + timeout, idempotent=idempotent)
        if request_id:
            request.request_id = request_id
        return request

    def complete(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> Completed:
        """One whole completion; raises the typed InferenceError on failure."""
        return self.send(self.request(model, messages, stream=False, **kw))

    def stream(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> Stream:
        """Chunks as they arrive: ``for chunk in client.stream(...)``; raises on failure."""
        request = self.request(model, messages, stream=True, **kw)
        return Stream(self, request, request.deadline_unix - time.time())

    def send(self, request: InferenceRequest, timeout_s: float | None = None) -> Completed:
        """Send a prepared request and wait for its terminal message."""
        if timeout_s is None:
            timeout_s = request.deadline_unix - time.time() if request.deadline_unix else self.timeout_s
        holder = Stream(self, request, timeout_s)
        for _ in holder:
            pass
        return holder.result

    def cancel(self, request_id: str) -> None:
        engine = self._sent_to.get(request_id)
        targets = [engine] if engine is not None else [e.engine for _, es in self._routes.values() for e in es]
        for target in targets:
            self.asys.tell(target, Cancel(request_id))

    def _exchange(self, request: InferenceRequest, timeout_s: float, stream: Stream) -> Iterator[TokenChunk]:
        """Send to a route (falling back to the next one when refused outright) and follow the reply."""
        entries = self.routes(request.model)
        if not entries:
            raise NotFound(f"no deployment serves model {request.model!r}")
        start = next(self._rr)
        error: InferenceError | None = None
        for attempt in range(len(entries)):
            entry = entries[(start + attempt) % len(entries)]
            try:
                yield from self._follow(entry.engine, request, timeout_s, stream)
                return
            except (CircuitOpen, QueueFull) as exc:
                if stream.chunks:
                    raise
                error = exc  # nothing was sent anywhere: another deployment may take it
        raise error

    @staticmethod
    def _send_request(endpoint: Any, engine: Any, request: InferenceRequest, deadline: float) -> Any:
        """``ask`` the engine; resend when Thespian reports the transmit itself failed.

        ``ask`` returns None at once (not at the timeout) when the message could not be
        delivered. A resend is safe: the engine ignores a request_id it already holds from
        the same caller, and answers that one.
        """
        for attempt in range(SEND_ATTEMPTS):
            sent_at = time.monotonic()
            reply = endpoint.ask(engine, request, max(0.01, deadline - sent_at))
            if reply is not None or time.monotonic() - sent_at > EARLY_NONE_S or time.monotonic() >= deadline:
                return reply
            time.sleep(0.05 * (attempt + 1))
        return None

    def _follow(self, engine: Any, request: InferenceRequest, timeout_s: float,
                stream: Stream) -> Iterator[TokenChunk]:
        endpoint = self._endpoint()
        # The engine owes us a terminal message even at the deadline (DeadlineExceeded):
        # wait a little past it before concluding that the node is gone.
        deadline = time.monotonic() + timeout_s + TERMINAL_GRACE_S
        self._sent_to[request.request_id] = engine
        received: dict[int, TokenChunk] = {}
        next_seq = 0
        terminal: Completed | Failed | None = None
        try:
            reply = self._send_request(endpoint, engine, request, deadline)
            while True:
                if reply is None:
                    if terminal is not None:
                        break  # stragglers never came: the terminal message is authoritative
                    raise Timeout(f"no answer for {request.request_id} within {timeout_s:g}s "
                                  f"(+{TERMINAL_GRACE_S:g}s grace)")
                if isinstance(reply, PoisonMessage):
                    raise InternalError(f"the gateway failed on a message: {str(reply.details)[:300]}")
                if getattr(reply, "request_id", None) == request.request_id:
                    if isinstance(reply, TokenChunk):
                        received[reply.seq] = reply
                        while next_seq in received:
                            chunk = received.pop(next_seq)
                            next_seq += 1
                            stream.chunks.append(chunk)
                            yield chunk
                    elif isinstance(reply, (Completed, Failed)):
                        terminal = reply
                if terminal is not None and (terminal.chunks is None or next_seq >= terminal.chunks):
                    break
                wait = STRAGGLER_WAIT_S if terminal is not None else deadline - time.monotonic()
                reply = endpoint.listen(max(0.01, wait))
        finally:
            if terminal is None and self.asys is not None:
                # Timed out, or the caller stopped iterating: do not leave the call running.
                try:
                    endpoint.tell(engine, Cancel(request.request_id))
                except Exception:  # noqa: BLE001 - best effort; the engine's deadline still applies
                    pass
            self._sent_to.pop(request.request_id, None)
        if isinstance(terminal, Failed):
            raise terminal.error
        stream.result = terminal
