"""CrossNodeRoutes: the part of a node's registry that knows other nodes' engines (docs/routing.md,
"Across a cluster").

Every heartbeat the registry pushes its engines (with the load and refusal state they pushed
it) to every other member's registry (``PeerRoutes``); what it heard from the others, while
they are members and within the failure timeout, joins its own ``Route`` answers with
``via`` naming this node's relay (``runtime/relay.py``), which alone may reach them. The
relay is told which engines it may forward to (``RelayTargets``), and a caller silent on
another node's engine is answered from the same pushes (``EngineCheck.via``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from actors.core.routing import reaches_other_nodes
from actors.runtime.logs import logger
from actors.runtime.protocol import ModelList, ModelsRequest, PeerRoutes, RelayTargets, RelayTargetsTaken, RouteEntry
from actors.runtime.relay import CrossNodeRelay

log = logger("atomr.node")


def _realized(address: Any) -> bool:
    """Whether a child's address may be handed out: a fresh child's is local to this process (Thespian's
    ActorLocalAddress) until the child has reported in, and is no use to anyone else until then."""
    details = getattr(address, "addressDetails", None)
    if details is None or type(details).__name__ != "ActorLocalAddress":
        return True
    try:
        return bool(details.addressManager.exportAddr(details))
    except Exception:  # noqa: BLE001 - not realized yet
        return False


class CrossNodeRoutes:
    """Mixed into NodeRegistry (it reads ``members``, ``node_id``, ``cluster`` and ``_own_entries``)."""

    members: list[Any]
    node_id: str
    node: str
    cluster: Any
    stopping: bool
    specs: dict[tuple[str, int], tuple[Any, Any, Any]]
    routing: Any   # core.routing.RoutingPolicy

    if TYPE_CHECKING:   # GatewayActor's (Thespian's), through NodeRegistry
        def send(self, target: Any, message: Any) -> None: ...
        def createActor(self, actorClass: Any) -> Any: ...

    def __init__(self) -> None:
        super().__init__()
        # node id -> (monotonic time it came, entries): other nodes' engines as each last pushed them.
        self.peer_routes: dict[str, tuple[float, list[RouteEntry]]] = {}
        self.relay: Any = None
        self.relay_told: list[Any] | None = None
        # The relay forwards to these (it said so): only they are handed to callers, so a call
        # never reaches the relay before the list that lets it through (messages from two
        # senders may arrive in either order).
        self.relay_taken: list[Any] = []
        self._relay_lists: dict[int, list[Any]] = {}   # version -> engines, sent and not yet taken
        self._relay_version = 0

    def _own_entries(self) -> list[RouteEntry]:
        raise NotImplementedError

    def relay_exited(self, child: Any) -> bool:
        if self.relay is None or child != self.relay:
            return False
        # Its calls end at their callers' deadlines, or sooner: EngineCheck says the relay is gone.
        self.relay, self.relay_told, self.relay_taken, self._relay_lists = None, None, [], {}
        if not self.stopping:
            log.error("node %s: the cross-node relay died; a new one is made at the next heartbeat", self.node)
        return True

    def _peers(self) -> list[Any]:
        return [m for m in self.members if m.node_id != self.node_id and m.registry is not None]

    def peer_rows(self) -> list[dict[str, Any]]:
        """The other members this node knows of (its status' ``peers``)."""
        return [{"node": m.node, "node_id": m.node_id} for m in self._peers()]

    def share_routes(self) -> None:
        """Once per heartbeat: this node's engines, their load and refusals, to every other member."""
        peers = self._peers()
        if not peers:
            return
        if self.relay is None and not self.stopping:
            self.relay, self.relay_told = self.createActor(CrossNodeRelay), None
        self._tell_relay()   # a relay made just now, or one that missed a change
        update = PeerRoutes(self.node_id, self._own_entries())
        for member in peers:
            self.send(member.registry, update)

    def receiveMsg_PeerRoutes(self, msg: PeerRoutes, sender: Any) -> None:
        member = next((m for m in self._peers() if m.node_id == msg.node_id), None)
        if member is None or member.registry != sender:
            return   # only a member's own registry speaks for its engines
        self.peer_routes[msg.node_id] = (time.monotonic(), list(msg.entries))
        self._tell_relay()

    def receiveMsg_ModelsRequest(self, msg: ModelsRequest, sender: Any) -> None:
        models = {dep.model for dep, _, _ in self.specs.values()}   # a restarting engine's model too
        models |= {e.model for e in self._peer_entries() if reaches_other_nodes(self.routing.cross_node_for(e.model))}
        self.send(sender, ModelList(sorted(models), token=msg.token))

    def _fresh_peer_routes(self) -> list[tuple[float, list[RouteEntry]]]:
        """The pushed entries of the members still in the membership and heard from within the failure timeout."""
        members = {m.node_id for m in self._peers()}
        now = time.monotonic()
        for node_id in [n for n, (at, _) in self.peer_routes.items()
                        if n not in members or now - at > self.cluster.failure_timeout_s]:
            del self.peer_routes[node_id]
        return [(now - at, entries) for at, entries in self.peer_routes.values()]

    def _relay_ready(self) -> bool:
        return self.relay is not None and _realized(self.relay)

    def _peer_entries(self) -> list[RouteEntry]:
        if not self._relay_ready():
            return []
        out = []
        for age, entries in self._fresh_peer_routes():
            for entry in entries:
                if entry.engine not in self.relay_taken:
                    continue
                load_age = None if entry.load_age_s is None else entry.load_age_s + age
                out.append(replace(entry, via=self.relay, load_age_s=load_age))
        return out

    def _tell_relay(self) -> None:
        if not self._relay_ready():
            return
        engines = [e.engine for _, entries in self._fresh_peer_routes() for e in entries]
        if engines != self.relay_told:
            self.relay_told = engines
            self._relay_version += 1
            self._relay_lists[self._relay_version] = engines
            self.send(self.relay, RelayTargets(engines, self._relay_version))

    def receiveMsg_RelayTargetsTaken(self, msg: RelayTargetsTaken, sender: Any) -> None:
        engines = self._relay_lists.get(msg.version)
        if sender != self.relay or engines is None:
            return
        self.relay_taken = engines
        for version in [v for v in self._relay_lists if v <= msg.version]:
            del self._relay_lists[version]

    def _peer_engine_alive(self, engine: Any, via: Any) -> tuple[bool, str]:
        if via != self.relay:
            return False, "this node's cross-node relay restarted"
        for _, entries in self._fresh_peer_routes():
            if any(e.engine == engine for e in entries):
                return True, ""
        return False, "the engine is no longer listed by its node (it restarted, or its node left the cluster)"
