"""Starting and stopping one gateway node: its Thespian admin, its actors and (for demos) the mock provider.

Used by ``launch.py`` and by the tests, so both exercise the same bring-up and the same
shutdown, including the forced clean-up of anything Thespian leaves behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorSystem, PoisonMessage

from actors.security import wire
from actors.runtime import control_link, stream_sender
from actors.runtime.cluster import LEADER_CAPABILITY
from actors.runtime.logs import formatter_definition
from actors.settings.schema import MOCK_ENDPOINT, GatewayConfig
from actors.errors import ConfigError, InternalError
from actors.runtime.protocol import ClusterStatus, ClusterStatusRequest, Deploy, Deployed, Drain, Drained, NodeStatus, StatusRequest
from actors.runtime.node import NODE_GLOBAL_NAME, NodeRegistry
from actors.runtime.watchdog import LauncherWatchdog, WatchLauncher, Watching
from actors.ops.launcher_descriptors import not_inherited
from actors.ops.spend import spend_ledger
from actors.settings.budgets import budgets_of
from actors.ops.procs import (admin_process, group_is_ours, kill_group, listening_pids, pids_in_group,
                              port_is_listening, process_start_ticks, wait_until)

log = logging.getLogger("atomr.system")

# Where each provider's API lives under the mock server's root.
MOCK_PATHS = {"gemini": "/v1beta", "cohere": "/v2", "bedrock": ""}


def mock_endpoint(mock_url: str, provider: str) -> str:
    return mock_url + MOCK_PATHS.get(provider, "/v1")


def resolve_mock_endpoints(config: GatewayConfig, mock_url: str) -> GatewayConfig:
    deployments = [d.with_endpoint(mock_endpoint(mock_url, d.provider)) if d.endpoint == MOCK_ENDPOINT else d
                   for d in config.deployments]
    return dataclasses.replace(config, deployments=deployments)


def thespian_environment(advertise: str | None, log_dir: str, reregistration_s: int) -> None:
    """Thespian reads these when its admin module is first imported, so set them before any system starts."""
    if advertise:
        os.environ["THESPIAN_BASE_IPADDR"] = advertise
    else:
        os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    minutes, seconds = divmod(int(reregistration_s), 60)
    os.environ.setdefault("CONVENTION_REREGISTRATION_PERIOD", f"{minutes}:{seconds:02d}")
    os.environ.setdefault("CONVENTION_RESTART_PERIOD", f"{minutes}:{seconds:02d}")
    os.environ.setdefault("THESPLOG_FILE", os.path.join(log_dir, "thespian-internal.log"))
    os.environ.setdefault("THESPLOG_THRESHOLD", "WARNING")


class ShutdownNoiseFilter(logging.Filter):
    """Drops Thespian's report of stale pending creations failing at shutdown.

    A member's admin never clears its record of an actor it asked the leader to create
    (our LeaderLocator; see cluster.py), so at shutdown Thespian fails each such record
    with ERROR "Pending Actor create ... failed (3585)" (0xe01: shutting down). Nothing
    is wrong then, and an ERROR line per node stop would page someone for nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Pending Actor create for") and "failed (3585)" in message)


def log_definitions(log_file: str | None, level: str, console: bool = True, log_format: str = "text") -> dict[str, Any]:
    handlers: dict[str, Any] = {}
    if console:
        handlers["console"] = {"class": "logging.StreamHandler", "formatter": "plain", "level": level,
                               "filters": ["shutdown-noise"]}
    if log_file:
        handlers["file"] = {"class": "logging.FileHandler", "filename": log_file, "formatter": "plain",
                            "level": level, "filters": ["shutdown-noise"]}
    return {
        "version": 1,
        "formatters": {"plain": formatter_definition(log_format)},
        "filters": {"shutdown-noise": {"()": "actors.ops.system.ShutdownNoiseFilter"}},
        "handlers": handlers,
        "loggers": {"atomr": {"level": level, "handlers": list(handlers), "propagate": False},
                    "urllib3": {"level": "WARNING"}},
        "root": {"level": "WARNING", "handlers": list(handlers)},
    }


@dataclass
class Node:
    """A running node, owned by the process that started it."""

    asys: Any
    admin_port: int
    registry: Any
    config: GatewayConfig
    name: str
    pgid: int | None
    mock: Any = None        # a MockProvider (actors.testing), only when the config asks for one
    killed: bool = False
    wire: str = ""          # how this node's messages are protected (wire.describe)
    admin_pid: int | None = None
    admin_ticks: int | None = None  # the admin's /proc start time: pid + this name our admin, for every signal

    def admin_alive(self) -> bool:
        """Is our admin still running (not dead, not a reused pid)?"""
        return self.admin_pid is not None and process_start_ticks(self.admin_pid) == self.admin_ticks

    def owns_port(self) -> bool:
        """Does our admin still hold the admin port (and not another node started on it later)?
        True when its identity could not be read at start (no /proc): the old, unchecked way."""
        if self.admin_pid is None:
            return True
        return self.admin_alive() and self.admin_pid in listening_pids(self.admin_port)

    def _our_group(self) -> int | None:
        """The node's process group while it is still ours (not a reused number), else None."""
        pgid = self.pgid
        return pgid if pgid is not None and group_is_ours(pgid, self.admin_pid, self.admin_ticks) else None

    def kill(self) -> None:
        """SIGKILL every process of the node at once, as a crash would (for failure tests)."""
        self.killed = True
        pgid = self._our_group()
        if pgid is not None:
            kill_group(pgid)
            wait_until(lambda: not pids_in_group(pgid), 5)

    def standing(self, wait_s: float) -> str:
        """One line for the launcher: the cluster this node is in, waiting up to ``wait_s`` for it."""
        deadline = time.monotonic() + wait_s
        while True:
            view = self.asys.ask(self.registry, ClusterStatusRequest(members_only=True), 5)
            if isinstance(view, ClusterStatus) and view.leader:
                return f"in the cluster led by {view.leader}: {len(view.members)} node(s)"
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        status = self.asys.ask(self.registry, StatusRequest(), 5)
        why = status.membership if isinstance(status, NodeStatus) else "no answer"
        return (f"NOT in the cluster yet ({why}): it keeps trying to join and logs a WARNING while it is "
                f"outside; its budgets follow limits.leader_unavailable meanwhile (docs/cluster.md)")

    def drain(self, timeout_s: float) -> bool:
        reply = self.asys.ask(self.registry, Drain(timeout_s), timeout_s + 1)
        return isinstance(reply, Drained)

    def stop(self, drain_timeout_s: float = 0.0, kill_after_s: float = 15.0) -> None:
        """Drain (optionally), shut the actor system down, and make sure no process is left."""
        if self.killed:
            if self.mock is not None:
                self.mock.stop()
            return
        # asys talks to whatever admin listens on our port now: only if that is still ours.
        if self.asys is not None and self.owns_port():
            try:
                if drain_timeout_s > 0:
                    self.drain(drain_timeout_s)
            except Exception as exc:  # noqa: BLE001 - stopping must go on whatever the drain did
                log.warning("drain failed: %s", exc)
            try:
                self.asys.shutdown()
            except Exception as exc:  # noqa: BLE001
                log.warning("actor system shutdown failed: %s", exc)
        elif self.asys is not None:
            log.warning("node %s: its admin (pid %s) is gone; not signalling whatever holds port %d now",
                        self.name, self.admin_pid, self.admin_port)
        pgid = self._our_group()
        if pgid is not None:
            if not wait_until(lambda: not pids_in_group(pgid), kill_after_s) and self._our_group() is not None:
                log.warning("actor system %d did not exit in %.0fs; killing its process group", self.admin_port,
                            kill_after_s)
                kill_group(pgid)
                wait_until(lambda: not pids_in_group(pgid), 5)
        if self.mock is not None:
            self.mock.stop()


def start_node(config: GatewayConfig, *, admin_port: int | None = None, name: str | None = None,
               leader: str | None = None, advertise: str | None = None, log_file: str | None = None,
               console_log: bool = True, deploy_timeout_s: float = 60.0,
               keyring: wire.KeyRing | None = wire.FROM_ENVIRONMENT) -> Node:
    """Start an admin on ``admin_port`` with this config's deployments, and wait until they serve.

    Every message of the node is signed and checked with ``keyring`` (by default the cluster
    secret from the environment or ``cluster.secret_file``, else this host's key, made if
    need be; see actors/security/). With the host key the node runs on loopback only and
    refuses every frame from another host. A per-start launch capability is made here,
    before the ActorSystem is forked, and put in the Deploy: the wire layer refuses any
    Deploy (or SessionInit) without it, so deployments only ever come from this config.
    """
    node_cfg = config.node
    port = admin_port or node_cfg.admin_port
    name = name or node_cfg.name or f"node-{port}"
    advertise = advertise or node_cfg.advertise
    keyring = wire.resolve_keyring(keyring, config.cluster.secret_file, create_host_key=True)
    wire.require_secret(keyring, f"node {name}" + (" joining a convention" if leader else " leading a convention"),
                        {"advertised address": advertise or os.environ.get("THESPIAN_BASE_IPADDR"),
                         "leader": leader.rpartition(":")[0] if leader else None})
    if port_is_listening(port) or listening_pids(port):
        raise ConfigError(f"admin port {port} is already in use (another node running?)", path="node.admin_port")
    ledger = spend_ledger(config)  # a corrupted or unwritable ledger stops the start here, saying so
    # First: Thespian reads its convention timers when its convention module is imported, and
    # installing the wire imports it (thespian_hooks). Set after that, a member whose first
    # registration found no leader listening would retry only after Thespian's 7m22s default.
    log_dir = os.path.dirname(log_file) if log_file else tempfile.gettempdir()
    thespian_environment(advertise, log_dir, config.cluster.reregistration_s)
    # Before the ActorSystem exists: its admin, logger and every actor are forked from here.
    serializer = wire.install(keyring)
    stream_sender.use_keyring(serializer.keyring)  # workers sign stream-channel frames with the same keys
    control_link.use_wire(serializer)  # an engine and its worker processes talk on links, in the same frames
    capability = wire.new_capability()  # inherited in memory by the admin and every actor; never sent off-host
    described = wire.describe(serializer)
    log.info("node %s: %s", name, described)
    for warning in _config_warnings(config):
        log.warning("node %s: %s", name, warning)
    mock = None
    if config.mock_provider is not None:
        # Bound now (its URL goes into the deployments), served once the admin has forked:
        # forking a process that already runs threads risks copying a held lock.
        from actors.testing.mock_provider import MockProvider  # only nodes that ask for the demo mock import it

        mock = MockProvider(config.mock_provider.host, config.mock_provider.port,
                            config.mock_provider.words_per_second)
        config = resolve_mock_endpoints(config, mock.url)
    capabilities: dict[str, Any] = {"Admin Port": port, "atomr-node": name}
    if leader:
        capabilities["Convention Address.IPv4"] = leader
    else:
        capabilities[LEADER_CAPABILITY] = True
        if advertise:
            # Naming itself as the convention address makes the leader advertise that IP.
            capabilities["Convention Address.IPv4"] = f"{advertise}:{port}"
    asys = None
    pgid = admin_pid = admin_ticks = None
    try:
        with not_inherited():   # the admin and its logger are forked in here (ops/launcher_descriptors.py)
            asys = ActorSystem("multiprocTCPBase", capabilities,
                               logDefs=log_definitions(log_file or node_cfg.log_file, node_cfg.log_level, console_log,
                                                       node_cfg.log_format),
                               transientUnique=True)
        admin_pid, admin_ticks, pgid = admin_process(port) or (None, None, None)
        if mock is not None:
            mock.start()
        watchdog = asys.createActor(LauncherWatchdog)
        watching = asys.ask(watchdog, WatchLauncher(os.getpid(), process_start_ticks(os.getpid()) or 0,
                                                    capability), 10)
        if not isinstance(watching, Watching):
            raise InternalError(f"node {name}: the launcher watchdog did not start (got {type(watching).__name__})")
        registry = asys.createActor(NodeRegistry, globalName=NODE_GLOBAL_NAME)
        host = os.environ.get("THESPIAN_BASE_IPADDR", "")
        reply = asys.ask(registry, Deploy(name, config.deployments, config.cluster, leader=not leader, host=host,
                                          capability=capability, launcher_pid=os.getpid(),
                                          budgets=budgets_of(config), ledger=ledger, routing=config.routing),
                     deploy_timeout_s)
        if isinstance(reply, PoisonMessage):
            raise InternalError(f"node {name} failed to start: {str(reply.details)[-800:]}")
        if not isinstance(reply, Deployed):
            raise InternalError(f"node {name} did not come up within {deploy_timeout_s:g}s")
    except BaseException:
        node = Node(asys, port, None, config, name, pgid, mock, admin_pid=admin_pid, admin_ticks=admin_ticks)
        if asys is None:
            if mock is not None:
                mock.stop()
        else:
            node.stop(kill_after_s=5)
        raise
    return Node(asys, port, registry, config, name, pgid, mock, wire=described, admin_pid=admin_pid,
                admin_ticks=admin_ticks)


def _config_warnings(config: GatewayConfig) -> list[str]:
    from actors.settings import loader

    warnings = getattr(loader, "config_warnings", None)
    return list(warnings(config)) if warnings is not None else []
