"""RemoteEngineCoreActor: the actor shell around one deployment replica's :class:`EngineCore`.

The core decides (queue, admission, retries, deadlines, settlement, the one terminal per
request); this actor turns messages into core events and carries out the effects the
core returns. It holds every address: its worker processes, the breaker, the limiter hub,
the strict limiter and the session.
The core's workers are slots, threads of a few worker processes: ``engine_workers.py``
translates between the two.
"""

from __future__ import annotations

import gc
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from thespian.actors import ActorExitRequest, PoisonMessage

from actors.core import engine_events as ev
from actors.core.budget import PublishSpend
from actors.core.engine_core import EngineCore
from actors.core.leases import LeaseGrant
from actors.core.load import LoadTracker
from actors.core.slots import SlotPlan
from actors.errors import InternalError, ShuttingDown
from actors.providers import make_runner
from actors.runtime.base import GatewayActor
from actors.runtime.engine_reports import Reporting
from actors.runtime.engine_workers import WorkerProcesses
from actors.runtime.logs import logger
from actors.runtime.protocol import (BreakerAdmitted, BreakerCheck, BreakerOutcome, BreakerOutcomes, BreakerRefused,
                                     BreakerState, BreakerSubscribe, Dispatch, Drained, EngineInit,
                                     EngineReady, EngineStatus, FirstToken, FirstTokenHeard, LimiterDelta,
                                     LimiterRegister, SessionRefresh,
                                     SessionSubscribe, SessionVersion, LeaseOffer, LeaseRefresh, WorkerResult)
from actors.types import Cancel, Failed

log = logger("atomr.engine")
# Messages that carry nothing but an event for the core (no address to keep, no reply).
_EVENTS: dict[type, Callable[[Any], Any]] = {
    WorkerResult: ev.WorkerReported,
    BreakerState: lambda m: ev.BreakerChanged(m.snapshot),
    BreakerAdmitted: lambda m: ev.ProbeAdmitted(m.token, m.generation),
    BreakerRefused: lambda m: ev.ProbeRefused(m.token),
    LeaseOffer: lambda m: ev.LeaseOffered(m.key, LeaseGrant(m.client, m.seq, m.window, tuple(m.lease), m.ttl_s,
                                                            tuple(m.left))),
    LimiterDelta: lambda m: ev.PeerCounts(m.key, m.delta, m.origin, m.sent_unix),
    SessionVersion: lambda m: ev.SessionChanged(m.version, m.ok, m.error),
    Cancel: lambda m: ev.CancelRequested(m.request_id),
}


class RemoteEngineCoreActor(WorkerProcesses, Reporting, GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.core: EngineCore | None = None
        self.init: EngineInit | None = None
        self.plan: SlotPlan | None = None
        self._init_processes()
        self.strict_address: Any = None
        self.cluster_news: ev.StrictLeader | None = None   # the node's last word on the cluster
        self.broken: InternalError | None = None  # why EngineInit failed, told to every caller
        self.unrecorded: list[Any] = []   # terminal records not yet sent to the ledger
        self.request_lines: list[dict[str, Any]] = []
        self.load: LoadTracker | None = None       # what the node's router reads (core/load.py)
        self.last_activity = time.monotonic()

    def receiveMsg_EngineInit(self, msg: EngineInit, sender: Any) -> None:
        if self.init is not None:
            return log.warning("engine %s ignored a second EngineInit", self.init.deployment.name)
        dep = msg.deployment
        # A fresh slot id per incarnation: a restarted engine must not resume counting
        # from a lower value than the cluster already merged for its predecessor.
        slot = f"{msg.node}/{dep.name}/{msg.replica}/{secrets.token_hex(3)}"
        self.init = msg
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.plan = SlotPlan.of(dep.workers, dep.worker_processes, cores)
        self._open_control()
        try:
            price = make_runner(dep).price()
        except Exception as exc:  # noqa: BLE001 - answered to every request below, not retried by Thespian
            log.exception("engine %s cannot start", dep.name)
            self.broken = InternalError(f"the engine of {dep.name} could not start: {type(exc).__name__}: {exc}")
            return
        self.core = EngineCore(dep, slot=slot, node=msg.node, price=price, sync_interval_s=msg.sync_interval_s,
                               failure_timeout_s=msg.failure_timeout_s, has_session=msg.session is not None,
                               has_hub=msg.limiter is not None, budgets=getattr(msg, "budgets", None) or (),
                               budget_slot=getattr(msg, "budget_slot", "") or slot,
                               budget_seed=getattr(msg, "budget_seed", None))
        self.load = LoadTracker(clock=time.monotonic)
        if dep.health_check is not None:
            self.timers.after("health", dep.health_check.interval_s)
        self.send(msg.breaker, BreakerSubscribe(self.myAddress))
        if msg.session is not None:
            self.send(msg.session, SessionSubscribe(self.myAddress, wants_secret=False))
        if self.core.limiter is not None and msg.limiter is not None:
            self.send(msg.limiter, LimiterRegister(self.myAddress, dep.limit_key, dep.limits))
        if self.core.book is not None and msg.limiter is not None:
            for key, budget in self.core.book.budgets.items():
                self.send(msg.limiter, LimiterRegister(self.myAddress, key, budget.limits))
        if self.cluster_news is not None:
            self._feed(self.cluster_news)
        self._run(self.core.start())
        gc.freeze()   # what start-up made lives as long as the engine (and its forked workers share it)

    # -- messages in: each becomes one core event ----------------------------------------

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        translate = _EVENTS.get(type(msg))
        if translate is None:
            super().receiveMessage(msg, sender)
        else:
            try:
                event = translate(msg)
            except (AttributeError, TypeError):  # a malformed message: logged, never fatal
                event = None
                self.receiveUnrecognizedMessage(msg, sender)
            if event is not None:
                self._feed(event)
        if self.delivering:
            return None           # handed over from a link: the handler Thespian called does the rest, once
        if self.starting:
            self._start_slots()   # once per message: a process's slots start together
        self.flush_links()
        return self._watch()

    def _made(self) -> tuple[EngineInit, EngineCore]:
        """Effects come from the core, which EngineInit made: from then on both are set."""
        assert self.init is not None and self.core is not None
        return self.init, self.core

    def _feed(self, event: Any) -> None:
        if self.core is None:
            return
        init, core = self._made()
        try:
            effects = core.handle(event)
        except Exception as exc:  # noqa: BLE001 - a core bug must not take every request down with it
            log.exception("engine %s failed on %s", init.deployment.name, type(event).__name__)
            request = getattr(event, "request", None)
            if request is not None and getattr(request, "request_id", None) not in core.jobs:
                self._reply(event.reply_to, Failed(str(getattr(request, "request_id", "")),
                                                 InternalError(f"engine failed: {type(exc).__name__}"), 0,
                                                 init.deployment.name))
            return
        self._run(effects)

    def receiveMsg_InferenceRequest(self, msg: Any, sender: Any) -> None:
        if self.core is None:
            error = self.broken or ShuttingDown("the engine is not initialised yet", retryable=True)
            return self._reply(sender, Failed(str(getattr(msg, "request_id", "")), error, 0, ""))
        self.last_activity = time.monotonic()
        self._feed(ev.Accept(msg, sender))

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        """A worker failed twice on a Dispatch: the request still gets its one terminal."""
        dispatch = msg.poisonMessage
        log.error("engine: %s failed on %s: %s", sender, type(dispatch).__name__, str(msg.details)[-300:])
        if isinstance(dispatch, Dispatch) and self._address_of(dispatch.slot) == sender:
            self._feed(ev.WorkerFailedOn(dispatch.slot, dispatch.request.request_id, dispatch.attempt))

    def receiveMsg_FirstToken(self, msg: FirstToken, sender: Any) -> None:
        """Heard before the token can reach its caller: a lost attempt is retried only if it had none."""
        self._feed(ev.TokenStarted(msg.request_id, msg.attempt, msg.at_unix))
        self.send(sender, FirstTokenHeard(msg.request_id, msg.attempt))

    def receiveMsg_StrictLimiterIs(self, msg: Any, sender: Any) -> None:
        self.strict_address = msg.address
        self.cluster_news = ev.StrictLeader(msg.address is not None, msg.shares, msg.in_cluster)
        self._feed(self.cluster_news)   # before EngineInit, kept for the core EngineInit makes

    def receiveMsg_Drain(self, msg: Any, sender: Any) -> None:
        if self.core is None:
            return self.send(sender, Drained("", 0))
        self._feed(ev.DrainRequested(sender))

    def timer_core(self, _: Any) -> None:
        self._feed(ev.Tick())

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self._feed(ev.Stop())
        self._flush_records()
        self._flush_request_log()

    def receiveMsg_StatusRequest(self, msg: Any, sender: Any) -> None:
        if self.core is None:
            return self.send(sender, EngineStatus("", 0, "", 0, 0, 0, 0, 0, 0, 0, {}, "unknown"))
        init, core = self._made()
        self.send(sender, EngineStatus(deployment=init.deployment.name, replica=init.replica, node=init.node,
                                       control=self._control_status(), **core.status()))

    # -- effects out: each becomes a send, a spawn, a signal or a wakeup --------------------

    def _run(self, effects: list[Any]) -> None:
        for effect in effects:
            getattr(self, "_do_" + type(effect).__name__)(effect)
        records = self._made()[1].take_records()
        if records:
            self._reported(records)
        self._push_load()

    def _do_PublishSpend(self, e: PublishSpend) -> None:
        init, core = self._made()
        assert core.book is not None   # spend is published by the book of budgets that spends it
        self.send(init.limiter, LimiterDelta(e.key, e.delta, core.book.slot, e.limits, sent_unix=e.sent_unix))

    def _do_DispatchTo(self, e: ev.DispatchTo) -> None:
        self.send(self._address_of(e.index), Dispatch(e.request, e.reply_to, e.attempt, e.min_session_version, e.index))

    def _do_AbandonOnWorker(self, e: ev.AbandonOnWorker) -> None:
        self.send(self._address_of(e.index), Cancel(e.request_id))

    def _do_Reply(self, e: ev.Reply) -> None:
        self._reply(e.to, e.message)

    def _do_ReportOutcomes(self, e: ev.ReportOutcomes) -> None:
        self.send(self._made()[0].breaker, BreakerOutcomes([BreakerOutcome(g, err) for g, err in e.outcomes]))

    def _do_AskProbe(self, e: ev.AskProbe) -> None:
        self.send(self._made()[0].breaker, BreakerCheck(e.token))

    def _do_AskLease(self, e: ev.AskLease) -> None:
        a = e.ask
        if self.strict_address is not None:
            self.send(self.strict_address, LeaseRefresh(e.key, e.limits, a.client, a.seq, a.window, a.holding, a.held,
                                                        a.spent, a.want, a.need))

    def _do_PublishCounts(self, e: ev.PublishCounts) -> None:
        init, core = self._made()
        self.send(init.limiter, LimiterDelta(init.deployment.limit_key, e.delta, core.slot, sent_unix=e.sent_unix))

    def _do_RefreshSession(self, e: ev.RefreshSession) -> None:
        self.send(self._made()[0].session, SessionRefresh(e.seen_version, e.reason))

    def _do_AnnounceReady(self, e: ev.AnnounceReady) -> None:
        init = self._made()[0]
        self.send(init.registry, EngineReady(init.deployment.name, init.replica,
                                             self.control.port if self.control is not None else None))

    def _do_ReportDrained(self, e: ev.ReportDrained) -> None:
        self._flush_records()  # before the node is told: its ledger flushes on drain
        self.send(e.to, Drained(self._made()[0].node, e.in_flight))

    def _do_WakeAt(self, e: ev.WakeAt) -> None:
        self.timers.at("core", e.at)
