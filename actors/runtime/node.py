"""NodeRegistry: the one actor a node is known by (global name ``atomr-node`` on its admin).

It creates the node's actors from the deployments it is given (a limiter hub, one
breaker per provider and endpoint, one session per deployment with credentials, the
engines with their workers), supervises the engines (a dead one is restarted with
backoff and its address is reported dead to clients that ask), answers routing
lookups, assembles the node's status, and keeps the node in the cluster (node_cluster.py).
"""

from __future__ import annotations

import time
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, PoisonMessage

from actors.core.gather import Gathering
from actors.core.refusals import add_counts
from actors.core.routing import RoutingPolicy, context_window
from actors.core.supervision import Supervisor
from actors.providers import runner_class
from actors.runtime.breaker import CircuitBreakerActor
from actors.runtime.engine import RemoteEngineCoreActor
from actors.runtime.ledger import LedgerActor, engine_seed, spend_status
from actors.runtime.limiter import RateLimiterActor
from actors.runtime.logs import logger
from actors.runtime.node_cluster import ClusterMember
from actors.runtime.node_routes import CrossNodeRoutes
from actors.runtime.protocol import (LedgerFlush, LedgerState, SpendQuery, SpendReport, BreakerInit, BreakerQuery, BreakerState, Deploy, Deployed, Drain, Drained, EngineCheck, EngineInit, EngineLiveness, EngineLoad, EngineReady, EngineStatus, LimiterHubIs, LimiterHubRequest, LimiterInit, LimiterQuery, LimiterUsage, Locate, NodeStatus, Route, RouteEntry, Routes, RouterRefusals, SessionInit, StatusRequest)
from actors.runtime.session import RemoteSessionActor
from actors.settings.schema import ClusterConfig

log = logger("atomr.node")

NODE_GLOBAL_NAME = "atomr-node"
STATUS_TIMEOUT_S = 2.0
_DEAD_REMEMBERED = 256


class NodeRegistry(CrossNodeRoutes, ClusterMember):
    def __init__(self) -> None:
        super().__init__()
        self.started = time.time()
        self.deployments: list[Any] = []
        self.engines: list[tuple[Any, Any, int]] = []   # (deployment, address, replica): the live ones
        self.specs: dict[tuple[str, int], tuple[Any, Any, Any]] = {}  # (name, replica) -> (deployment, session, breaker)
        # (address, what happened) of dead engines: a list, as addresses are unhashable and their
        # str() may still be the local form they were created with.
        self.dead: list[tuple[Any, str]] = []
        self.supervisor = Supervisor()
        self.breakers: dict[tuple[str, str], Any] = {}
        self.limiter = None
        self.capability = ""
        self.pending_ready: set[tuple[str, int]] = set()
        # Restarted engines not ready yet: kept out of routes (a fresh child's address is
        # local to this process until the child has reported in).
        self.warming: set[tuple[str, int]] = set()
        self.deploy_waiter = None
        self.gathering: Gathering | None = None
        self.drain_waiter, self.drain_left = None, 0
        self.draining = False   # once drained, a node never restarts an engine: it is stopping
        self.budgets: list[Any] = []    # core.budget.Budget, from the Deploy
        self.ledger, self.ledger_path = None, None   # the LedgerActor and its file, when node.ledger is set
        self.routing = RoutingPolicy()
        # (deployment, replica) -> (LoadState, monotonic time it arrived): what routes carry.
        self.loads: dict[tuple[str, int], tuple[Any, float]] = {}
        self.control_ports: dict[tuple[str, int], int | None] = {}   # each engine's, from its EngineReady
        self.refusals: dict[str, dict[str, int]] = {}   # the router's, reported by this node's clients

    # -- deployment --------------------------------------------------------------------

    def receiveMsg_Deploy(self, msg: Deploy, sender: Any) -> None:
        self._set_identity(msg)
        self.cluster = msg.cluster or ClusterConfig()
        self.capability = msg.capability
        self.routing = msg.routing or RoutingPolicy()
        if self.limiter is None:
            self.limiter = self.createActor(RateLimiterActor)
            self.send(self.limiter, LimiterInit(self.node_id, self.cluster.sync_interval_ms / 1000))
        self.deploy_waiter = sender
        self.budgets = list(getattr(msg, "budgets", None) or [])
        ledger = getattr(msg, "ledger", None)
        if ledger is not None and self.ledger is None:
            self.ledger, self.ledger_path = self.createActor(LedgerActor), ledger.path
            ledger.node = self.node_id
            self.send(self.ledger, ledger)
        for dep in msg.deployments:
            self.deployments.append(dep)
            key = (dep.provider, dep.endpoint)
            if key not in self.breakers:
                breaker = self.breakers[key] = self.createActor(CircuitBreakerActor)
                self.send(breaker, BreakerInit(dep.provider, dep.endpoint_label, dep.breaker))
            session = None
            if dep.credentials is not None:
                session = self.createActor(RemoteSessionActor)
                self.send(session, SessionInit(dep.name, dep.provider, dep.credentials, capability=msg.capability))
            for replica in range(dep.replicas):
                self.specs[(dep.name, replica)] = (dep, session, self.breakers[key])
                self.pending_ready.add((dep.name, replica))
                self._start_engine(dep.name, replica)
        self._maybe_deployed()
        self.notifyOnSystemRegistrationChanges(True)
        self._cluster_tick()

    def _start_engine(self, name: str, replica: int) -> Any:
        dep, session, breaker = self.specs[(name, replica)]
        self.loads.pop((name, replica), None)  # a new engine starts with no history
        engine = self.createActor(RemoteEngineCoreActor)
        self.engines.append((dep, engine, replica))
        slot = f"{self.node_id}/{dep.name}/{replica}"  # stable: a restart resumes its count (docs/spend.md)
        self.send(engine, EngineInit(dep, replica, self.node, self.myAddress, session, breaker, self.limiter,
                                     self.cluster.sync_interval_ms / 1000, self.cluster.failure_timeout_s,
                                     budgets=self.budgets, budget_slot=slot, ledger=self.ledger,
                                     budget_seed=engine_seed(self.ledger_path, slot, self.budgets, time.time())))
        if self.budgeted(dep):
            self.send(engine, self.cluster_news(dep))
        return engine

    def receiveMsg_EngineReady(self, msg: EngineReady, sender: Any) -> None:
        self.control_ports[(msg.deployment, msg.replica)] = msg.control_port
        self.pending_ready.discard((msg.deployment, msg.replica))
        self.warming.discard((msg.deployment, msg.replica))
        self._maybe_deployed()

    def _maybe_deployed(self) -> None:
        if self.deploy_waiter is not None and not self.pending_ready:
            names = [d.name for d in self.deployments]
            log.info("node %s (%s) ready: %s", self.node, self.node_id, ", ".join(names))
            self.send(self.deploy_waiter, Deployed(self.node, names, len(self.engines)))
            self.deploy_waiter = None

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        if isinstance(msg.poisonMessage, Locate):
            # No leader to place the locator on (it is down or we are not in the convention yet).
            log.info("node %s: the leader cannot be located yet", self.node)
            return
        # An actor failed on one of our messages: during bring-up that means the deploy failed.
        log.error("node %s: %s failed on %s: %s", self.node, sender, type(msg.poisonMessage).__name__,
                  str(msg.details)[-500:])
        if self.deploy_waiter is not None:
            self.send(self.deploy_waiter, msg)
            self.deploy_waiter = None

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self.stopping = True

    # -- supervision ---------------------------------------------------------------------

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        if self.relay_exited(msg.childAddress):
            return
        found = [(i, e) for i, e in enumerate(self.engines) if e[1] == msg.childAddress]
        if not found:
            return  # a locator finishing, or a child of ours that is not an engine
        index, (dep, address, replica) = found[0]
        del self.engines[index]
        del self.dead[:-_DEAD_REMEMBERED + 1]
        if self.stopping or self.draining:
            self.dead.append((address, f"engine {dep.name}/{replica} stopped with the node"))
            if self.drain_waiter is not None:
                self.receiveMsg_Drained(Drained(self.node, 0), address)
            return
        delay = self.supervisor.exited((dep.name, replica))
        self.dead.append((address, f"engine {dep.name}/{replica} died; restarting"))
        log.error("node %s: engine %s replica %d died (its requests end with EngineCrashed); restarting in %.1fs",
                  self.node, dep.name, replica, delay)
        self.timers.after("restart", delay, key=(dep.name, replica))

    def timer_restart(self, key: tuple[str, int]) -> None:
        name, replica = key
        if self.stopping or self.draining or (name, replica) not in self.specs:
            return
        self.warming.add((name, replica))
        self._start_engine(name, replica)
        count = self.supervisor.restarted((name, replica))
        log.warning("node %s: engine %s replica %d restarted (restart #%d)", self.node, name, replica, count)

    def receiveMsg_EngineCheck(self, msg: EngineCheck, sender: Any) -> None:
        if msg.via is not None:
            return self.send(sender, EngineLiveness(msg.token, msg.engine, *self._peer_engine_alive(msg.engine, msg.via)))
        alive = any(engine == msg.engine for _, engine, _ in self.engines)
        reason = "" if alive else next((why for address, why in reversed(self.dead) if address == msg.engine),
                                       "not an engine of this node")
        self.send(sender, EngineLiveness(msg.token, msg.engine, alive, reason))

    # -- routing -------------------------------------------------------------------------

    def receiveMsg_EngineLoad(self, msg: EngineLoad, sender: Any) -> None:
        if (msg.deployment, msg.replica) in self.specs:
            self.loads[(msg.deployment, msg.replica)] = (msg.state, time.monotonic())

    def _route_entry(self, dep: Any, engine: Any, replica: int) -> RouteEntry:
        entry = RouteEntry(dep.name, dep.model, engine, self.node, weight=dep.weight,
                           max_input_tokens=dep.max_input_tokens or context_window(runner_class(dep.provider).family, dep.provider_model),
                           max_retries=dep.retry.max_retries, embed_batch=_embed_batch(dep), provider=dep.provider,
                           control_port=self.control_ports.get((dep.name, replica)))
        load = self.loads.get((dep.name, replica))
        if load is not None:
            state, at = load
            entry.queue_depth, entry.in_flight, entry.circuit = state.queued, state.in_flight, state.circuit
            entry.latency_s, entry.ttft_s, entry.headroom = state.latency_s, state.ttft_s, state.headroom
            entry.price_in, entry.price_out = state.price_in, state.price_out
            entry.load_age_s = time.monotonic() - at
            entry.retry_at_unix = state.retry_at_unix
            entry.budget_spent = tuple(getattr(state, "budget_spent", ()) or ())
            entry.refusal, entry.refusal_until_unix = state.refusal, state.refusal_until_unix
        return entry

    def receiveMsg_RouterRefusals(self, msg: RouterRefusals, sender: Any) -> None:
        add_counts(self.refusals, msg.counts)

    def _own_entries(self) -> list[RouteEntry]:
        return [self._route_entry(dep, engine, replica) for dep, engine, replica in self.engines
                if (dep.name, replica) not in self.warming]

    def receiveMsg_Route(self, msg: Route, sender: Any) -> None:
        entries = [e for e in self._own_entries() if msg.model in (e.model, e.deployment)]
        entries += [e for e in self._peer_entries() if msg.model in (e.model, e.deployment)]
        restarting = sorted({name for (name, replica), (dep, _, _) in self.specs.items()
                             if msg.model in (dep.model, dep.name) and
                             (self.supervisor.restarting((name, replica)) or (name, replica) in self.warming)})
        self.send(sender, Routes(msg.model, entries, token=msg.token, restarting=restarting, policy=self.routing))

    def receiveMsg_LimiterHubRequest(self, msg: LimiterHubRequest, sender: Any) -> None:
        # The HTTP front door's key budgets go through this node's hub (actors/http/key_sync.py).
        self.send(sender, LimiterHubIs(self.limiter, self.node_id, self.cluster.sync_interval_ms / 1000, msg.token,
                                       self.standing.in_cluster, len(self.members)))

    # -- status: one gathering over engines, breakers and the limiter --------------------

    def receiveMsg_StatusRequest(self, msg: StatusRequest, sender: Any) -> None:
        self._gather_status((sender, msg.token))

    def _gather_status(self, waiter: tuple[Any, str]) -> None:
        if self.gathering is not None:
            self.gathering.waiters.append(waiter)  # a collection is under way; this caller gets its result too
            return
        queries: list[tuple[Any, StatusRequest | BreakerQuery | LimiterQuery]] = [
            (engine, StatusRequest()) for _, engine, _ in self.engines]
        queries += [(breaker, BreakerQuery()) for breaker in self.breakers.values()]
        queries += [(self.limiter, LimiterQuery())] if self.limiter is not None else []
        queries += [(self.ledger, StatusRequest())] if self.ledger is not None else []
        self.gathering = Gathering([address for address, _ in queries], [waiter])
        for address, query in queries:
            self.send(address, query)
        self.timers.after("status", STATUS_TIMEOUT_S)
        if self.gathering.done:
            self._answer_status()

    def receiveMsg_EngineStatus(self, msg: EngineStatus, sender: Any) -> None:
        self._status_part(sender, msg)

    def receiveMsg_BreakerState(self, msg: BreakerState, sender: Any) -> None:
        self._status_part(sender, msg.snapshot)

    def receiveMsg_LimiterUsage(self, msg: LimiterUsage, sender: Any) -> None:
        self._status_part(sender, msg.usage)

    def _status_part(self, sender: Any, part: Any) -> None:
        if self.gathering is not None and self.gathering.add(sender, part):
            self._answer_status()

    def _answer_status(self) -> None:
        gathering, self.gathering = self.gathering, None
        self.timers.cancel("status")   # a new collection's timeout starts afresh
        if gathering is None:
            return
        parts = gathering.parts
        engines = sorted((p for p in parts if isinstance(p, EngineStatus)), key=lambda e: (e.deployment, e.replica))
        limits, spend = spend_status([u for p in parts if isinstance(p, list) for u in p],
                                     next((p for p in parts if isinstance(p, LedgerState)), None))
        breakers = [p for p in parts if not isinstance(p, (EngineStatus, list, LedgerState))]
        supervision = []
        for line in self.supervisor.lines():
            name, replica = line.pop("child")
            supervision.append({"deployment": name, "replica": replica, **line})
        for waiter, token in gathering.waiters:
            self.send(waiter, NodeStatus(self.node, self.started, engines, breakers, limits, token=token,
                                         node_id=self.node_id, address=self.address, supervision=supervision,
                                         membership=self.membership_state(), spend=spend, peers=self.peer_rows(),
                                         in_cluster=self.standing.in_cluster,
                                         membership_note=self.standing.note(),
                                         refusals={m: dict(r) for m, r in self.refusals.items()}))

    def timer_status(self, _: Any) -> None:
        self._answer_status()  # with whatever arrived

    # -- drain ---------------------------------------------------------------------------

    def receiveMsg_Drain(self, msg: Drain, sender: Any) -> None:
        self.drain_waiter = sender
        self.draining = True
        self.drain_left = len(self.engines)
        for _, engine, _ in self.engines:
            self.send(engine, msg)
        if not self.engines:
            self.drain_left = 1
            self.receiveMsg_Drained(Drained(self.node, 0), self.myAddress)

    def receiveMsg_Drained(self, msg: Drained, sender: Any) -> None:
        self.drain_left -= 1
        if self.drain_left == 0 and self.drain_waiter is not None:
            if self.ledger is not None:
                return self.send(self.ledger, LedgerFlush("drain"))  # answered once the ledger is on disk
            self.send(self.drain_waiter, Drained(self.node, 0))
            self.drain_waiter = None

    def receiveMsg_LedgerState(self, msg: LedgerState, sender: Any) -> None:
        if msg.token == "drain" and self.drain_waiter is not None:
            self.send(self.drain_waiter, Drained(self.node, 0))
            self.drain_waiter = None
        else:
            self._status_part(sender, msg)

    def receiveMsg_SpendQuery(self, msg: SpendQuery, sender: Any) -> None:
        if self.ledger is None:
            return self.send(sender, SpendReport(self.node_id, [], error="this node keeps no ledger (node.ledger "
                                                 "is not set)", token=msg.token))
        msg.reply_to = sender
        self.send(self.ledger, msg)


def _embed_batch(dep: Any) -> int:
    """How many texts one embeddings call to ``dep`` takes (0: none), for GatewayClient.embed's batches."""
    from actors.providers import make_runner

    try:
        return make_runner(dep).embed_batch_for()
    except Exception:  # noqa: BLE001 - a deployment the node cannot describe still routes chat
        return 0
