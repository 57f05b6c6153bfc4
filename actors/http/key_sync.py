"""Trading the key budgets' counts with the node's limiter hub, from the HTTP process.

One thread with its own endpoint of the client's link to the node (``NodeLink.endpoint()``,
like each thread of the GatewayClient). It asks the node's registry where the limiter hub is, registers each
limited key's budget there (a lease, renewed every ``refresh_s``: the hub stops sending
to a front door that went away), publishes this front door's deltas every sync interval
and merges what the hub pushes: the deltas of the other front doors serving the key, on
this node and, through the hubs, on every other node of the cluster. With every renewal
it also sends its whole state, so a lost delta is made good within ``refresh_s``.

Until the hub answers (the node still deploying, or restarting), admission goes on with
this front door's own counts: the budget is enforced per listener meanwhile.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

from actors.http.key_limits import KeyLimits

log = logging.getLogger("atomr.http")

__all__ = ["KeySync", "REFRESH_S"]

REFRESH_S = 2.0


class KeySync:
    """``KeySync(link, limits)``: ``link`` is the front door's way to the node (``GatewayClient.link``)."""

    def __init__(self, link: Any, limits: KeyLimits, *, refresh_s: float = REFRESH_S) -> None:
        self.link = link
        self.limits = limits
        self.refresh_s = refresh_s
        self.interval_s = 0.05      # until the node says its cluster.sync_interval_ms
        self.hub: Any = None
        self.P: Any = None          # actors.runtime.protocol, once the thread runs
        self.node = ""
        self.published = 0
        self.merged = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-key-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # The node's messages are the client layer's (client.py imports them the same way): this
        # thread is a client of the node, so they are imported here rather than by the HTTP layer.
        from actors.runtime import protocol

        self.P = protocol
        while not self._stop.is_set():
            try:
                # One endpoint per start (the link releases them all when it closes).
                self._loop(self.link.endpoint(), self.link.registry)
                return
            except Exception:  # noqa: BLE001 - the budgets must keep syncing: log, wait, start over
                log.exception("key budget sync failed; starting over")
                self.hub = None
                self._stop.wait(1.0)

    def _loop(self, endpoint: Any, registry: Any) -> None:
        next_ask = next_publish = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_ask:
                endpoint.tell(registry, self.P.LimiterHubRequest("kl_" + secrets.token_hex(6)))
                next_ask = now + self.refresh_s
            if now >= next_publish:
                if self.hub is not None:
                    self._publish(endpoint)
                next_publish = now + self.interval_s
            message = endpoint.listen(max(0.001, min(next_ask, next_publish) - time.monotonic()))
            if isinstance(message, self.P.LimiterDelta):
                if self.limits.merge(message.key, message.delta, message.sent_unix):
                    self.merged += 1
            elif isinstance(message, self.P.LimiterHubIs):
                self._hub_is(endpoint, message)

    def _hub_is(self, endpoint: Any, message: Any) -> None:
        self.limits.set_cluster(message.in_cluster, message.shares)
        if message.hub is None:
            return  # not deployed yet: asked again at the next renewal
        if message.hub != self.hub:
            log.info("key budgets %s sync through the limiter hub of node %s",
                     ", ".join(b for b, _ in self.limits.budgets()), message.node)
        self.hub, self.node = message.hub, message.node
        if message.sync_interval_s and message.sync_interval_s != self.interval_s:
            self.interval_s = message.sync_interval_s
            self.limits.set_sync_interval(message.sync_interval_s)
        states = self.limits.states()
        for budget, limits in self.limits.budgets():
            endpoint.tell(self.hub, self.P.LimiterRegister(None, budget, limits))
            if states.get(budget):
                endpoint.tell(self.hub, self.P.LimiterDelta(budget, states[budget], self.limits.slot, limits))

    def _publish(self, endpoint: Any) -> None:
        limits = dict(self.limits.budgets())
        for budget, delta, sent_unix in self.limits.take_deltas():
            endpoint.tell(self.hub, self.P.LimiterDelta(budget, delta, self.limits.slot, limits[budget], sent_unix))
            self.published += 1
