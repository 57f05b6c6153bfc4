"""The base of every gateway actor: it survives any message it does not expect.

Thespian hands an actor whatever arrives at its address. A message of an unknown type
(a stray from a newer or older peer, a probe) is logged once per type and dropped; it
must never take the actor, and with it every request the actor owns, down.
"""

from __future__ import annotations

from typing import Any

from thespian.actors import ActorSystemMessage, ActorTypeDispatcher

from actors.runtime.logs import logger

__all__ = ["GatewayActor"]

_MAX_REMEMBERED = 64
log = logger("atomr.actor")


class GatewayActor(ActorTypeDispatcher):
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
