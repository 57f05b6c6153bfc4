"""RemoteSessionActor: one deployment's credential on this node, resolved and refreshed here.

Workers subscribe for snapshots carrying the secret; engines subscribe for the version
number only. Only the node's own processes may send any session message (the wire's table,
docs/security.md), and each subscribes itself. A refresh happens ahead of expiry, on the configured schedule, and when a
worker's call was answered 401 (then at most once per credential version).
"""

from __future__ import annotations

import time
from typing import Any

from actors.runtime.logs import logger
from actors.core.credentials import CredentialSource
from actors.core.credentials import ResolvedCredential, next_refresh_at, resolve
from actors.errors import AuthenticationError, ConfigError, CredentialUnavailable, InferenceError
from actors.runtime.base import GatewayActor
from actors.runtime.protocol import SessionInit, SessionRefresh, SessionSnapshot, SessionSubscribe, SessionVersion

log = logger("atomr.session")
RETRY_FAILED_REFRESH_S = 5.0


class RemoteSessionActor(GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.source: CredentialSource | None = None
        self.current: ResolvedCredential | None = None
        self.version = 0
        self.error: InferenceError | None = None
        self.workers: list[Any] = []
        self.engines: list[Any] = []

    def receiveMsg_SessionInit(self, msg: SessionInit, sender: Any) -> None:
        self.name = msg.deployment
        self.source = msg.source
        self._refresh("start")

    def _refresh(self, reason: str) -> bool:
        """Resolve again; True when the credential changed (a new version was published)."""
        source = self.source
        assert source is not None, "SessionInit comes first (the timer is set here; SessionRefresh checks)"
        try:
            try:
                resolved = resolve(source)
            except ConfigError as exc:
                # A variable unset or a file gone at run time: the calls fail with a typed error
                # (ConfigError is not one, and does not cross the wire).
                raise CredentialUnavailable(f"credential for {self.name} unavailable: {exc}") from None
        except InferenceError as exc:
            self.error = exc
            # The message names the source (env var, file, command), never the value.
            log.error("credential for %s could not be resolved (%s): %s", self.name, reason, exc.message)
            self._schedule(time.time() + RETRY_FAILED_REFRESH_S)
            return False
        self.error = None
        changed = self.current is None or resolved.secret != self.current.secret
        self.current = resolved
        if changed:
            self.version += 1
            log.info("credential for %s resolved (%s): version %d%s", self.name, reason, self.version,
                     f", expires in {resolved.expires_unix - time.time():.0f}s" if resolved.expires_unix else "")
            for worker in self.workers:
                self.send(worker, self._snapshot())
        self._schedule(next_refresh_at(source, resolved, time.time()))
        return changed

    def _snapshot(self) -> SessionSnapshot:
        return SessionSnapshot(self.version, self.current.secret if self.current else None,
                               self.current.expires_unix if self.current else None)

    def _schedule(self, at_unix: float | None) -> None:
        if at_unix is not None:
            self.timers.after("refresh", max(0.0, at_unix - time.time()))

    def timer_refresh(self, _: Any) -> None:
        if self._refresh("scheduled"):
            self._announce()

    def receiveMsg_SessionSubscribe(self, msg: SessionSubscribe, sender: Any) -> None:
        if msg.subscriber != sender:
            # Only the node's processes may send this at all (actors/security/permissions.py); and
            # each subscribes itself, so the credential only ever goes to whoever asked for it.
            log.warning("session %s: refused a subscription for %s sent by %s (one subscribes itself)",
                        self.name, msg.subscriber, sender)
            return
        group = self.workers if msg.wants_secret else self.engines
        if msg.subscriber not in group:
            group.append(msg.subscriber)
        if msg.wants_secret:
            if self.current is not None:
                self.send(msg.subscriber, self._snapshot())
        else:
            self.send(msg.subscriber, SessionVersion(self.version, ok=self.error is None, error=self.error))

    def receiveMsg_SessionRefresh(self, msg: SessionRefresh, sender: Any) -> None:
        if self.source is None:
            # Before SessionInit there is nothing to refresh: say so rather than fail on None.
            self.send(sender, SessionVersion(self.version, ok=False, error=CredentialUnavailable(
                "the session has not been initialised yet")))
            return
        if self.version <= msg.seen_version:
            self._refresh(msg.reason or "requested")
        if self.version > msg.seen_version:
            self._announce()
        else:
            # Same credential after a 401: retrying with it cannot help.
            error = self.error or AuthenticationError(
                f"credential for {self.name} was rejected and refreshing it did not change it")
            self.send(sender, SessionVersion(self.version, ok=False, error=error))

    def _announce(self) -> None:
        for engine in self.engines:
            self.send(engine, SessionVersion(self.version))
