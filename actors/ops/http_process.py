"""Running a node's HTTP front door as its own process, beside the node.

A separate process keeps the listener's threads and the GIL away from the node's actors,
and lets it drain and stop on its own. The settings (keys included) go to the child on
stdin, never in argv, where any user of the host could read them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import IO, Any
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from actors.errors import ConfigError
from actors.settings.loader import http_section
from actors.settings.schema import GatewayConfig, HttpConfig

__all__ = ["HttpProcess", "start_http"]

READY_LINE = "http listening on "


@dataclass
class HttpProcess:
    """A running listener: ``url`` (e.g. ``http://127.0.0.1:4000``), ``stop()`` drains and ends it."""

    proc: subprocess.Popen
    url: str
    drain_timeout_s: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (drain: finish streams for up to drain_timeout_s), then SIGKILL if it is still there."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            wait = (self.drain_timeout_s if timeout_s is None else timeout_s) + 10
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


def _upstreams(config: Any) -> dict[str, str]:
    """Each model's upstream model (for real creation dates in /v1/models)."""
    return {d.model: d.provider_model for d in getattr(config, "deployments", None) or ()}


def _models(config: GatewayConfig) -> list[str]:
    return sorted({d.model for d in config.deployments})


def start_http(config: GatewayConfig | HttpConfig, admin_port: int, *, listen: str | None = None,
               models: list[str] | None = None, log_file: str | None = None, log_level: str = "INFO",
               start_timeout_s: float = 30.0, key_environment: dict[str, str] | None = None,
               log_format: str | None = None, upstreams: dict[str, str] | None = None) -> HttpProcess:
    """Start ``python -m actors.http`` for the node on ``admin_port`` and wait until it listens.

    ``config`` is the node's whole config (its ``http`` section, and its deployments' models
    for ``/v1/models``) or just an HttpConfig; ``listen`` overrides ``http.listen``
    (``settings.loader.http_section``). ``key_environment`` names the node's wire key for the listener
    (the launcher removes the secret variables from its own environment, so that no actor
    inherits them). The listener is a program of its own (``exec``): it holds the wire key, never
    the node's launch capability, so on the wire it is a local caller (docs/security.md).
    """
    http = http_section(config, listen)
    if isinstance(config, GatewayConfig):
        log_format = log_format or config.node.log_format
        models = models if models is not None else _models(config)
    cmd = [sys.executable, "-m", "actors.http", "--stdin", "--admin-port", str(admin_port), "--log-level", log_level,
           "--parent-pid", str(os.getpid()), "--log-format", log_format or "text"]
    if log_file:
        cmd += ["--log-file", log_file]
    doc = {"http": dataclasses.asdict(http), "models": list(models or []), "upstreams": upstreams if upstreams is not None else _upstreams(config)}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(key_environment or {})})
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None, "stdin=PIPE, stdout=PIPE"
    stdin.write(json.dumps(doc))
    stdin.close()
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pass_lines, args=(stdout, lines), daemon=True, name="http-stdout").start()
    deadline = time.monotonic() + start_timeout_s
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if line.startswith(READY_LINE):
            return HttpProcess(proc, line[len(READY_LINE):].strip(), http.drain_timeout_s)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=5)
    raise ConfigError(f"the HTTP listener did not start (exit {proc.returncode}); see its log"
                      + (f": {''.join(seen)[-500:]}" if seen else ""), path="http")


def _pass_lines(stream: IO[str], into: queue.Queue[str | None]) -> None:
    """The listener's stdout line by line, then None at its end."""
    for line in stream:
        into.put(line)
    into.put(None)
