"""How a GatewayClient reaches its node: the client's one seam, as httpx's transport is its client's.

A :class:`NodeLink` gives the client the node's registry and endpoints to talk through, one
per thread (and the stream channel's receiver, when the link has one). ``GatewayClient(port)``
builds a :class:`ThespianLink` joined to the node's admin over TCP; a process that already
runs a Thespian system hands it ``GatewayClient(link=ThespianLink(system))``; a test hands it
``GatewayClient(link=InProcessLink(system))`` over Thespian's in-process ``simpleSystemBase``,
where a real node and its actors run in the test's own thread with no socket.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from typing import Any, Protocol

from thespian.actors import ActorSystem, InvalidActorAddress

from actors.caller_links import CallerLinks
from actors.correlator import Endpoint
from actors.errors import GatewayUnavailable
from actors.ops.procs import port_is_listening
from actors.runtime.node import NODE_GLOBAL_NAME, NodeRegistry
from actors.security import wire
from actors.security.thespian_hooks import InProcessEndpoint
from actors.stream_receiver import StreamReceiver, shared_receiver

__all__ = ["Endpoint", "NodeLink", "ThespianLink", "InProcessLink", "address_of"]


class NodeLink(Protocol):
    """What a GatewayClient needs of its way to the node; any object with these will do."""

    @property
    def registry(self) -> Any:
        """The node's registry (``NodeRegistry``): routes, liveness, status."""

    @property
    def where(self) -> str:
        """The node as error messages name it ("the node on 127.0.0.1:1900")."""

    def endpoint(self) -> Endpoint:
        """A new endpoint for the calling thread; valid until :meth:`release` or :meth:`close`."""

    def release(self, endpoint: Endpoint) -> None:
        """``endpoint`` is no longer used (its thread ended): free what it holds now, not at :meth:`close`."""

    def stream_receiver(self) -> StreamReceiver | None:
        """Where workers write streamed chunks for this process, or None: chunks come to the endpoints."""

    def caller_links(self) -> CallerLinks | None:
        """This process's links to the node's engines (``actors/caller_links.py``), or None: calls go by Thespian."""

    def close(self) -> None:
        """Release every endpoint; the node and its system keep running."""


def address_of(endpoint: Any) -> Any:
    """A private endpoint's own address (what its messages' replies are sent to), or None."""
    transport = getattr(getattr(endpoint, "_systemBase", None), "transport", None)
    return getattr(transport, "myAddress", None)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_links: tuple[int, CallerLinks] | None = None
_links_lock = threading.Lock()


def _shared_links(receiver: StreamReceiver) -> CallerLinks | None:
    """This process's caller links (made on first use; a forked child makes its own)."""
    global _links
    serializer = wire.current()
    if serializer is None:
        return None
    with _links_lock:
        if _links is None or _links[0] != os.getpid() or _links[1].receiver is not receiver:
            _links = (os.getpid(), CallerLinks(serializer, receiver))
        return _links[1]


def _key_hint() -> str:
    serializer = wire.current()
    if serializer is None or serializer.keyring is None:
        return f"this client has no cluster secret; set {wire.ENV_SECRET} to the nodes' key"
    return (f"this client signs with key id {serializer.keyring.signing.key_id}; {wire.ENV_SECRET} must hold "
            f"a key the node accepts (the node's log names the refused frames)")


class ThespianLink:
    """A link through a Thespian system that has private endpoints (``multiprocTCPBase``).

    The system must be joined to the node's admin (its ``Admin Port``), with the wire installed
    before it was made (``actors.security.wire.install``) when the nodes sign their messages;
    :meth:`connect` does both. The stream channel is this process's shared receiver.
    """

    def __init__(self, system: Any, *, registry: Any = None, stream_channel: bool = True,
                 where: str = "the node", host: str | None = None) -> None:
        self.system = system
        self._where = where
        # The node's host: its engines' control ports are on its loopback, so only a caller on the
        # same host links to them (None: not known, no links).
        self.host = host
        self._registry = registry if registry is not None else system.createActor(NodeRegistry,
                                                                                  globalName=NODE_GLOBAL_NAME)
        self.stream_channel = stream_channel
        self._lock = threading.Lock()
        # id(endpoint) -> (endpoint, its private() context): each holds a listening socket and connections.
        self._managers: dict[int, tuple[Endpoint, Any]] = {}

    @classmethod
    def connect(cls, admin_port: int = 1900, *, host: str = "127.0.0.1", system_base: str = "multiprocTCPBase",
                keyring: Any = wire.FROM_ENVIRONMENT, stream_channel: bool = True) -> ThespianLink:
        """Join this process to the node whose admin listens on ``host:admin_port``, signing with ``keyring``."""
        # ActorSystem() silently starts a fresh admin when none listens on the port: check first.
        if not port_is_listening(admin_port, host):
            raise GatewayUnavailable(f"no gateway node is listening on {host}:{admin_port}")
        # Sign and allow-list this process's messages like the nodes' (before its ActorSystem).
        wire.install(wire.resolve_keyring(keyring))
        where = f"the node on {host}:{admin_port}"
        try:
            system = ActorSystem(system_base, {"Admin Port": admin_port}, transientUnique=True)
        except InvalidActorAddress:
            # Something listens there but never answered: with the wire installed, almost
            # always a node that refuses this client's key (its log says which it accepts).
            raise GatewayUnavailable(f"{where} did not accept this client's messages: {_key_hint()}") from None
        return cls(system, stream_channel=stream_channel, where=where, host=host)

    @property
    def registry(self) -> Any:
        return self._registry

    @property
    def where(self) -> str:
        return self._where

    def endpoint(self) -> Endpoint:
        manager = self.system.private()
        endpoint: Endpoint = manager.__enter__()
        with self._lock:
            self._managers[id(endpoint)] = (endpoint, manager)
        return endpoint

    def release(self, endpoint: Endpoint) -> None:
        with self._lock:
            held = self._managers.pop(id(endpoint), None)
        if held is not None:
            _exit(held[1])

    def stream_receiver(self) -> StreamReceiver | None:
        if not self.stream_channel:
            return None
        serializer = wire.current()
        return shared_receiver(serializer.keyring if serializer is not None else None)

    def caller_links(self) -> CallerLinks | None:
        receiver = self.stream_receiver() if _is_loopback(self.host) else None
        return _shared_links(receiver) if receiver is not None else None

    def close(self) -> None:
        with self._lock:
            managers, self._managers = self._managers, {}
        for _, manager in managers.values():
            _exit(manager)


def _exit(manager: Any) -> None:
    try:
        manager.__exit__(None, None, None)
    except Exception:  # noqa: BLE001 - the endpoint is gone either way
        pass


class InProcessLink:
    """A link into Thespian's in-process ``simpleSystemBase``: the node's actors run in the thread
    that waits on an endpoint, one thread at a time; no socket, no stream channel.

    ``registry`` defaults to the system's ``NodeRegistry`` (made when there is none yet); deploy
    it (``Deploy``) before the first call. For tests and tools, not for serving: one thread at a
    time runs the whole node.
    """

    def __init__(self, system: Any, *, registry: Any = None) -> None:
        self.system = system
        self._registry = registry if registry is not None else system.createActor(NodeRegistry,
                                                                                  globalName=NODE_GLOBAL_NAME)
        self._lock = threading.Lock()
        self._endpoints: list[InProcessEndpoint] = []

    @property
    def registry(self) -> Any:
        return self._registry

    @property
    def where(self) -> str:
        return "the in-process node"

    def endpoint(self) -> Endpoint:
        endpoint = InProcessEndpoint(self.system)
        with self._lock:
            self._endpoints.append(endpoint)
        return endpoint

    def release(self, endpoint: Endpoint) -> None:
        with self._lock:
            held = next((e for e in self._endpoints if e is endpoint), None)
            self._endpoints = [e for e in self._endpoints if e is not endpoint]
        if held is not None:
            held.close()

    def stream_receiver(self) -> StreamReceiver | None:
        return None

    def caller_links(self) -> CallerLinks | None:
        return None

    def close(self) -> None:
        with self._lock:
            endpoints, self._endpoints = self._endpoints, []
        for endpoint in endpoints:
            endpoint.close()
