"""CrossNodeRelay: this node's way to other nodes' engines (docs/routing.md, "Across a cluster").

A caller of this node sends a request meant for another node's engine here
(``InferenceRequest.relay_to``, set by the router from ``RouteEntry.via``); the relay, a
process of this node holding the cluster secret, forwards it with neither ``relay_to`` nor
the caller's stream channel (a loopback port and token of this host), so the chunks come
back as signed messages, and passes each chunk and the terminal to the caller as they
arrive: the caller orders them by ``seq`` as it does any engine's. Cancels follow the call.
What it may forward to, and to whom answers go: ``core/relay.py``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from thespian.actors import PoisonMessage

from actors.core.relay import RelayBook
from actors.errors import InternalError, NotFound
from actors.runtime.base import GatewayActor
from actors.runtime.logs import logger
from actors.runtime.protocol import RelayTargets, RelayTargetsTaken
from actors.types import Cancel, Completed, Failed, InferenceRequest, TokenChunk

log = logger("atomr.relay")

SWEEP_S = 1.0


class CrossNodeRelay(GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.book = RelayBook()

    def receiveMsg_RelayTargets(self, msg: RelayTargets, sender: Any) -> None:
        self.book.targets = list(msg.engines)
        self.send(sender, RelayTargetsTaken(msg.version))

    def receiveMsg_InferenceRequest(self, msg: InferenceRequest, sender: Any) -> None:
        refused = self.book.open(msg.request_id, sender, msg.relay_to, msg.deadline_unix, time.time())
        if refused is not None:
            return self.send(sender, Failed(msg.request_id, NotFound(f"cannot relay {msg.request_id}: {refused}",
                                                                     retryable=True), 0, ""))
        self.send(msg.relay_to, dataclasses.replace(msg, relay_to=None, channel=None))
        if self.timers.due("sweep") is None:
            self.timers.after("sweep", SWEEP_S)

    def receiveMsg_Cancel(self, msg: Cancel, sender: Any) -> None:
        engine = self.book.cancel(msg.request_id)
        if engine is not None:
            self.send(engine, Cancel(msg.request_id))

    def _pass(self, msg: Any, terminal: bool) -> None:
        caller = self.book.answer(str(msg.request_id), terminal, time.time())
        if caller is not None:
            self.send(caller, msg)

    def receiveMsg_TokenChunk(self, msg: TokenChunk, sender: Any) -> None:
        self._pass(msg, False)

    def receiveMsg_Completed(self, msg: Completed, sender: Any) -> None:
        self._pass(msg, True)

    def receiveMsg_Failed(self, msg: Failed, sender: Any) -> None:
        self._pass(msg, True)

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        """The other node's engine failed on a request: its caller still gets its one terminal."""
        request = msg.poisonMessage
        if isinstance(request, InferenceRequest):
            log.error("relay: %s failed on %s: %s", sender, request.request_id, str(msg.details)[-300:])
            self._pass(Failed(request.request_id, InternalError("the other node's engine failed on the request"),
                              0, ""), True)

    def timer_sweep(self, _: Any) -> None:
        self.book.sweep(time.time())
        if self.book.calls:
            self.timers.after("sweep", SWEEP_S)
