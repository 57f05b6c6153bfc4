"""One harmless instance of every message class of the wire's table, for tests that send them all.

"Harmless" within what the class is: a Drain drains and a SystemShutdown stops, so the
tests that send them from a principal allowed to do so send them last. Dataclass messages
get placeholder values for their fields; Thespian's messages their constructors' arguments.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Any

from thespian.actors import ActorAddress
from thespian.system.transport.IPBase import TCPv4ActorAddress

from actors.security.permissions import TABLE

# Sent last by the tests, and only once: they stop what they reach.
DESTRUCTIVE = {("actors.runtime.protocol.routing", "Drain"), ("thespian.system.messages.admin", "SystemShutdown"),
               ("thespian.actors", "ActorExitRequest"), ("thespian.system.logdirector", "LoggerExitRequest")}


def address(host: str = "127.0.0.1", port: int = 1) -> ActorAddress:
    return ActorAddress(TCPv4ActorAddress(host, port, external=True))


def _placeholder(field: dataclasses.Field) -> Any:
    text = str(field.type)
    if "list" in text:
        return []
    if "dict" in text:
        return {}
    if "bool" in text:
        return False
    if "float" in text:
        return 0.0
    if "int" in text:
        return 0
    if "str" in text:
        return ""
    return None


def samples(me: ActorAddress, capability: str = "", model: str = "d1") -> dict[tuple[str, str], Any]:
    """(module, class) -> an instance, for every row of the table. ``me`` is named wherever a
    message carries a reply-to or subscriber address, so whatever is sent back comes to the sender."""
    from thespian.actors import (ActorExitRequest, ActorSystemConventionUpdate, ChildActorExited, DeadEnvelope,
                                 PoisonMessage, WakeupMessage)
    from thespian.system.logdirector import LogAggregator, LoggerExitRequest
    from thespian.system.messages.admin import (CapabilityUpdate, NewCapabilities, NotifyOnSourceAvailability,
                                                PendingActor, PendingActorResponse, QueryAck, QueryExists,
                                                SystemShutdown, SystemShutdownCompleted)
    from thespian.system.messages.convention import (ConventionDeRegister, ConventionRegister,
                                                     NotifyOnSystemRegistration)
    from thespian.system.messages.multiproc import EndpointConnected, LoggerConnected
    from thespian.system.messages.status import Thespian_ActorStatus, Thespian_StatusReq, Thespian_SystemStatus

    from actors.runtime.protocol.routing import StatusRequest
    from actors.types import InferenceRequest

    from datetime import timedelta

    record = logging.LogRecord("atomr.test", logging.WARNING, __file__, 1, "a record from a table test", None, None)
    out: dict[tuple[str, str], Any] = {
        ("thespian.actors", "ActorExitRequest"): ActorExitRequest(),
        ("thespian.actors", "ChildActorExited"): ChildActorExited(address("127.0.0.1", 2)),
        ("thespian.actors", "PoisonMessage"): PoisonMessage(StatusRequest(token="poison")),
        ("thespian.actors", "WakeupMessage"): WakeupMessage(timedelta(seconds=1), payload="table-test"),
        ("thespian.actors", "DeadEnvelope"): DeadEnvelope(address("127.0.0.1", 2), StatusRequest()),
        ("thespian.actors", "ActorSystemConventionUpdate"): ActorSystemConventionUpdate(me, {}, False),
        ("thespian.system.messages.admin", "QueryExists"): QueryExists(),
        ("thespian.system.messages.admin", "QueryAck"): QueryAck("table-test", "0", False),
        ("thespian.system.messages.admin", "SystemShutdown"): SystemShutdown(),
        ("thespian.system.messages.admin", "SystemShutdownCompleted"): SystemShutdownCompleted(),
        ("thespian.system.messages.admin", "PendingActor"):
            PendingActor("actors.runtime.cluster.LeaderLocator", me, 1, None, None),
        ("thespian.system.messages.admin", "PendingActorResponse"): PendingActorResponse(me, 1, None, errorCode=1),
        ("thespian.system.messages.admin", "CapabilityUpdate"): CapabilityUpdate("atomr-table-test", "1"),
        ("thespian.system.messages.admin", "NewCapabilities"): NewCapabilities({}, me),
        ("thespian.system.messages.admin", "NotifyOnSourceAvailability"): NotifyOnSourceAvailability(me, False),
        ("thespian.system.messages.convention", "ConventionRegister"): ConventionRegister(me, {}, False),
        ("thespian.system.messages.convention", "ConventionDeRegister"): ConventionDeRegister(me),
        ("thespian.system.messages.convention", "NotifyOnSystemRegistration"): NotifyOnSystemRegistration(me, False),
        ("thespian.system.messages.multiproc", "EndpointConnected"): EndpointConnected(999_999),
        ("thespian.system.messages.multiproc", "LoggerConnected"): LoggerConnected(),
        ("thespian.system.messages.status", "Thespian_StatusReq"): Thespian_StatusReq(),
        ("thespian.system.messages.status", "Thespian_SystemStatus"): Thespian_SystemStatus(me),
        ("thespian.system.messages.status", "Thespian_ActorStatus"): Thespian_ActorStatus(me, "x", me),
        ("thespian.system.logdirector", "LogAggregator"): LogAggregator(),
        ("thespian.system.logdirector", "LoggerExitRequest"): LoggerExitRequest(),
        ("logging", "LogRecord"): record,
        ("actors.types", "InferenceRequest"): InferenceRequest(model=model, messages=[{"role": "user", "content": "hi"}],
                                                               params={"max_tokens": 2}),
    }
    for (module_name, name), _ in TABLE.items():
        if (module_name, name) in out:
            continue
        cls = getattr(importlib.import_module(module_name), name)
        values = {}
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING:
                continue
            values[field.name] = _placeholder(field)
        for name_of_address in ("subscriber", "reply_to", "engine"):
            if name_of_address in values or any(f.name == name_of_address for f in dataclasses.fields(cls)):
                values[name_of_address] = me
        if "capability" in {f.name for f in dataclasses.fields(cls)}:
            values["capability"] = capability
        message = cls(**values)
        out[(module_name, name)] = message
    # What would do the most harm if a principal outside the column got it through.
    out[("actors.runtime.protocol.session", "SessionSubscribe")].wants_secret = True
    out[("actors.runtime.protocol.routing", "Drain")].timeout_s = 0.1
    out[("actors.runtime.protocol.breaker", "BreakerForce")].open_s = None   # close and reset: no outage
    return out
