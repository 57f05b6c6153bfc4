"""The allow-list: which globals the wire's unpickler may use (everything else is refused).

An allow-listed class is a plain value: building one runs no code of the sender's choosing.
That alone does not make a message harmless (a ``Deploy`` is a value that makes a node run
its credential command): what each sender may *send* is decided in :mod:`actors.security.trust`.
"""

from __future__ import annotations

import dataclasses
import enum
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["THESPIAN_ALLOWED", "STDLIB_ALLOWED", "WIRE_MODULES", "WIRE_EXTRAS", "Refused", "AllowList",
           "default_allow_list", "unpickler_for", "printable"]


# Thespian's classes that really cross the wire between a node's processes, its clients and
# other nodes (observed by running the whole test suite with a recording unpickler), plus
# PoisonMessage (an actor failure, returned to the sender), WakeupMessage and the status
# messages (operators' diagnostics). Left out on purpose: source loading (ValidateSource,
# ValidatedSource, LoadedSource, UnloadedSource, RegisterSourceAuthority,
# SourceHashTransferRequest/Reply: code from the network), HandleDeadLetters (another
# system taking this one's dead letters), ConventionInvite, SetLogging, ForwardMessage
# (Admin Routing, unused), and every exception class.
THESPIAN_ALLOWED: dict[str, tuple[str, ...]] = {
    "thespian.actors": ("ActorAddress", "ActorSystemConventionUpdate", "ActorExitRequest", "ChildActorExited",
                        "PoisonMessage", "WakeupMessage", "DeadEnvelope"),
    "thespian.system.messages.admin": ("QueryExists", "QueryAck", "SystemShutdown", "SystemShutdownCompleted",
                                       "PendingActor", "PendingActorResponse", "CapabilityUpdate",
                                       "NewCapabilities", "NotifyOnSourceAvailability"),
    "thespian.system.messages.convention": ("ConventionRegister", "ConventionDeRegister",
                                            "NotifyOnSystemRegistration"),
    "thespian.system.messages.multiproc": ("EndpointConnected", "LoggerConnected"),
    "thespian.system.messages.status": ("Thespian_StatusReq", "Thespian_SystemStatus", "Thespian_ActorStatus"),
    "thespian.system.logdirector": ("LogAggregator", "LoggerExitRequest"),
    "thespian.system.transport.IPBase": ("TCPv4ActorAddress", "TCPv6ActorAddress", "RoutedTCPv4ActorAddress",
                                         "TXOnlyAdminTCPv4ActorAddress"),
}

# Inert value types: constructing one runs no code of the sender's choosing.
STDLIB_ALLOWED: dict[str, tuple[str, ...]] = {
    "logging": ("LogRecord",),                       # members forward WARNING+ records to the leader's logger
    "socket": ("AddressFamily", "SocketKind"),       # enums inside Thespian's TCP addresses
    "datetime": ("timedelta",),                      # WakeupMessage.delayPeriod
    "builtins": ("set", "frozenset", "bytearray", "complex"),  # value constructors older protocols use
}

# The project's modules whose value classes travel: every dataclass, Enum and InferenceError
# defined there (never a function, an actor, or a class that does work when built), and the
# few explicit extras below.
WIRE_MODULES = ("actors.types", "actors.errors",
                "actors.runtime.protocol.breaker", "actors.runtime.protocol.bringup", "actors.runtime.protocol.budget",
                "actors.runtime.protocol.cluster", "actors.runtime.protocol.routing", "actors.runtime.protocol.session",
                "actors.runtime.protocol.work", "actors.runtime.watchdog",
                "actors.settings.schema", "actors.core.breaker", "actors.core.ratelimit", "actors.core.retry",
                "actors.core.credentials", "actors.core.gcounter", "actors.core.priority_queue", "actors.core.pricing",
                "actors.core.periods", "actors.core.budget", "actors.core.records", "actors.runtime.protocol.ledger",
                "actors.core.routing", "actors.core.load")
WIRE_EXTRAS = {("actors.core.credentials", "Secret"), ("actors.core.gcounter", "GCounter")}


class Refused(Exception):
    """A frame this process will not unpickle; ``reason`` is fit for a log line (no contents)."""

    def __init__(self, reason: str, kind: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # What the log's rate limit counts by: never text a sender chooses.
        self.kind = kind or reason.split(":", 1)[0][:40]


def _restore_error(cls: Any, fields: Any) -> Any:
    """``actors.errors._restore`` as the wire may call it: only to rebuild an InferenceError."""
    from actors.errors import InferenceError, _restore

    if not (isinstance(cls, type) and issubclass(cls, InferenceError) and isinstance(fields, dict)):
        raise Refused("actors.errors._restore called with something other than an InferenceError")
    return _restore(cls, fields)


class AllowList:
    """(module, name) -> the object the unpickler may use; built once, eagerly."""

    def __init__(self, thespian: Mapping[str, Iterable[str]] = THESPIAN_ALLOWED,
                 stdlib: Mapping[str, Iterable[str]] = STDLIB_ALLOWED,
                 wire_modules: Iterable[str] = WIRE_MODULES) -> None:
        import importlib

        from thespian.actors import Actor

        from actors.errors import InferenceError

        allowed: dict[tuple[str, str], Any] = {}
        for table in (thespian, stdlib):
            for module_name, names in table.items():
                module = importlib.import_module(module_name)
                for name in names:
                    allowed[(module_name, name)] = getattr(module, name)
        for module_name in wire_modules:
            module = importlib.import_module(module_name)
            for name, obj in vars(module).items():
                if not isinstance(obj, type) or obj.__module__ != module_name or issubclass(obj, Actor):
                    continue
                if (dataclasses.is_dataclass(obj) or issubclass(obj, (enum.Enum, InferenceError))
                        or (module_name, name) in WIRE_EXTRAS):
                    allowed[(module_name, name)] = obj
        allowed[("actors.errors", "_restore")] = _restore_error
        self._allowed = allowed

    def lookup(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise Refused(f"class not allowed: {printable(module)}.{printable(name)}") from None

    def names(self) -> list[str]:
        return sorted(f"{m}.{n}" for m, n in self._allowed)

    def __contains__(self, item: tuple[str, str]) -> bool:
        return item in self._allowed


def printable(text: Any, limit: int = 80) -> str:
    text = str(text)
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def unpickler_for(allow: AllowList) -> type[pickle.Unpickler]:
    """An Unpickler class whose every global goes through ``allow`` (built once per allow-list)."""

    class AllowListUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return allow.lookup(module, name)

    return AllowListUnpickler



_ALLOW: AllowList | None = None


def default_allow_list() -> AllowList:
    global _ALLOW
    if _ALLOW is None:
        _ALLOW = AllowList()
    return _ALLOW
