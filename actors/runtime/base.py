"""The base of every gateway actor: it survives any message it does not expect, and it has
the one timer idiom.

Thespian hands an actor whatever arrives at its address. A message of an unknown type
(a stray from a newer or older peer, a probe) is logged once per type and dropped; it
must never take the actor, and with it every request the actor owns, down.

Timers (``actors.runtime.timers``): ``self.timers.after("sweep", 1.0)`` (or ``at``, with a
``key`` when several run side by side) makes the base call ``self.timer_sweep(key)`` when it
is due; superseded and cancelled wakeups are dropped here, so no handler sees them.
"""

from __future__ import annotations

from typing import Any

from thespian.actors import ActorSystemMessage, ActorTypeDispatcher, WakeupMessage

from actors.runtime.logs import logger
from actors.runtime.timers import Timers

__all__ = ["GatewayActor"]

_MAX_REMEMBERED = 64
log = logger("atomr.actor")


class GatewayActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.timers = Timers(self)

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        wakes = self.timers.fired(message.payload)
        for done, wake in enumerate(wakes, 1):
            if self.timers.current(wake):
                try:
                    getattr(self, "timer_" + wake.name)(wake.key)
                except BaseException:
                    self.timers.unhandled(wakes[done:])   # not lost with this one
                    raise

    def receiveUnrecognizedMessage(self, message: Any, sender: Any) -> None:
        if isinstance(message, ActorSystemMessage):
            return  # Thespian's own (ActorExitRequest, ChildActorExited, ...): handled by Thespian
        seen = self.__dict__.setdefault("_unexpected_types", set())
        name = type(message).__name__
        if name in seen:
            return
        if len(seen) < _MAX_REMEMBERED:
            seen.add(name)
        log.warning("%s ignored an unexpected %s message from %s", type(self).__name__, name[:80], sender)
