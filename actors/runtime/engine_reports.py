"""What an engine reports besides its terminals: load to its node's router, records to the
ledger and the request log, and the active health probes that keep an idle deployment's
circuit honest. Mixed into RemoteEngineCoreActor (which provides core, init, timers and send).
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from actors.core import engine_events as ev
from actors.core.caller_fault import PROBE_PREFIX, probe_request
from actors.core.load import headroom
from actors.runtime.logs import logger, request_fields
from actors.runtime.protocol import EngineInit, EngineLoad, LedgerRecords
from actors.runtime.timers import Timers

if TYPE_CHECKING:
    from actors.core.engine_core import EngineCore
    from actors.core.load import LoadTracker
    from actors.core.records import TerminalRecord

__all__ = ["Reporting", "PROBE_PREFIX"]

log = logger("atomr.engine")
request_log = logger("atomr.requests")
REQUEST_LOG_S = 1.0     # terminals are logged in one record per this long: a log record is a message

LEDGER_BATCH = 64        # records sent to the ledger at once at most ...
LEDGER_FLUSH_S = 0.25    # ... and at the latest this long after a terminal



class Reporting:
    # Provided by RemoteEngineCoreActor (engine.py); declared, not assigned, so nothing here shadows it.
    core: EngineCore | None
    init: EngineInit | None
    load: LoadTracker | None
    timers: Timers
    last_activity: float
    unrecorded: list[TerminalRecord]
    request_lines: list[dict[str, Any]]
    myAddress: Any                      # a Thespian ActorAddress

    if TYPE_CHECKING:
        def send(self, target: Any, message: Any) -> None: ...
        def _feed(self, event: Any) -> None: ...

    def _reported(self, records: list[TerminalRecord]) -> None:
        """One step's terminal records: the router's latency view, then statistics, ledger, log."""
        self.last_activity = time.monotonic()
        assert self.load is not None, "records come from the core, and the load tracker is made with it"
        self.load.observe(records)
        self._recorded([r for r in records if not r.request_id.startswith(PROBE_PREFIX)])

    # -- active health probes: a one-token call while idle; its outcome feeds the breaker

    def timer_health(self, _: Any) -> None:
        init, core = self.init, self.core
        if init is None or core is None:
            return   # (the timer is set once both are: EngineInit)
        check = init.deployment.health_check
        now = time.monotonic()
        if check is None or core.draining:
            return
        if not core.jobs and now - self.last_activity >= check.interval_s * 0.9:
            self.last_activity = now
            probe = probe_request(init.deployment.model, PROBE_PREFIX + secrets.token_hex(8),
                                  deadline_unix=time.time() + check.timeout_s)
            self._feed(ev.Accept(probe, self.myAddress, known_good=True))
        self.timers.at("health", max(now, self.last_activity) + check.interval_s)

    def receiveMsg_Completed(self, msg: Any, sender: Any) -> None:
        log.debug("%s: health probe answered", self.init.deployment.name if self.init else "engine")

    def receiveMsg_Failed(self, msg: Any, sender: Any) -> None:
        if self.init is not None and str(msg.request_id).startswith(PROBE_PREFIX):
            log.warning("%s: health probe failed: %s", self.init.deployment.name, msg.error)

    def timer_load(self, _: Any) -> None:
        self._push_load()

    def _push_load(self) -> None:
        """The router's view of this engine, to the node when it changed, at most every ~150 ms."""
        core, init = self.core, self.init
        if core is None or init is None or self.load is None or init.registry is None:
            return
        if self.timers.due("load") is not None:
            return  # a push is scheduled: it reads the state when it fires (this runs after every message)
        pushed_at = self.load.pushed_at
        if pushed_at is not None and self.load.clock() < pushed_at + self.load.interval_s:
            # Pushed lately: the state is read once the interval is up, not after each message of a burst.
            self.timers.at("load", pushed_at + self.load.interval_s)
            return
        # In flight: every request this engine holds that is not queued (on a worker, waiting
        # for a retry or for a fresh credential).
        queued = len(core.queue)
        price = core.price
        refusal, until = core.refusal() or (None, None)
        state = self.load.state(queued=queued, in_flight=max(0, len(core.jobs) - queued), circuit=core.view.state.value,
                                headroom=headroom(core.limiter.usage()) if core.limiter is not None else None,
                                price_in=getattr(price, "input", None), price_out=getattr(price, "output", None),
                                at_unix=time.time(), retry_at_unix=_retry_at(core.view.snapshot),
                                budget_spent=tuple(core.book.spent()) if core.book is not None else (),
                                refusal=refusal, refusal_until_unix=until)
        due = self.load.due(state)
        if due is None:
            return
        if due <= time.monotonic():
            self.load.mark_pushed(state)
            self.send(init.registry, EngineLoad(init.deployment.name, init.replica, state))
        else:
            self.timers.at("load", due)

    def _recorded(self, records: list[TerminalRecord]) -> None:
        """Terminal records of this step: counted into the statistics, sent to the ledger."""
        if self.init is not None and getattr(self.init, "ledger", None) is not None:
            self._to_ledger(records)
        # (The core counted them into its DeploymentStats already.) Logged in batches, one per second.
        self.timers.after("request_log", REQUEST_LOG_S)
        self.request_lines.extend(request_fields(r) for r in records)
        if len(self.request_lines) >= 1000:
            self._flush_request_log()

    def timer_request_log(self, _: Any) -> None:
        self._flush_request_log()

    def timer_ledger(self, _: Any) -> None:
        self._flush_records()

    def _flush_request_log(self) -> None:
        lines, self.request_lines = self.request_lines, []
        if lines:
            request_log.info("%d request(s) ended", len(lines), extra={"requests": lines})

    def _to_ledger(self, records: list[TerminalRecord]) -> None:
        # Batched: a message costs about a millisecond of CPU, so never one per request.
        self.unrecorded.extend(records)
        if len(self.unrecorded) >= LEDGER_BATCH:
            self._flush_records()
        else:
            self.timers.after("ledger", LEDGER_FLUSH_S)

    def _flush_records(self) -> None:
        init, core = self.init, self.core
        if self.unrecorded and init is not None and getattr(init, "ledger", None) is not None:
            assert core is not None, "records come from the core"
            batch, self.unrecorded = self.unrecorded, []
            self.send(init.ledger, LedgerRecords(getattr(init, "budget_slot", "") or core.slot, batch))


def _retry_at(snapshot: Any) -> float | None:
    """When an open circuit starts admitting a probe (unix seconds), or None when it is not open."""
    if snapshot is None or snapshot.state.value != "open":
        return None
    return snapshot.retry_at_unix_ms / 1000


