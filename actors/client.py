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

from thespian.actors import ActorSystem, PoisonMessage

from .errors import CircuitOpen, InferenceError, InternalError, NotFound, QueueFull, Timeout
from .messages import (Cancel, Completed, Failed, InferenceRequest, NodeStatus, Route, Routes, StatusRequest,
                       TokenChunk)
from .node import NODE_GLOBAL_NAME, NodeRegistry
from .procs import port_is_listening

__all__ = ["GatewayClient", "Stream"]

ROUTE_TTL_S = 5.0
# How long to wait for streamed chunks that a terminal message overtook.
STRAGGLER_WAIT_S = 2.0
TERMINAL_GRACE_S = 2.0


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


class GatewayClient:
    def __init__(self, admin_port: int = 1900, *, host: str = "127.0.0.1", timeout_s: float = 60.0,
                 system_base: str = "multiprocTCPBase") -> None:
        # ActorSystem() silently starts a fresh admin when none listens on the port: check first.
        if not port_is_listening(admin_port, host):
            raise InternalError(f"no gateway node is listening on {host}:{admin_port}")
        self.admin_port = admin_port
        self.timeout_s = timeout_s
        self.asys = ActorSystem(system_base, {"Admin Port": admin_port}, transientUnique=True)
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
            reply = endpoint.ask(engine, request, max(0.01, deadline - time.monotonic()))
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
