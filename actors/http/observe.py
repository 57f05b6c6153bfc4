"""The operator's routes of the front door: GET /metrics, GET /v1/status and GET /ui.

Who may read them: a caller presenting a key with ``admin: true`` (as a Bearer token,
``x-api-key``, or the password of HTTP Basic auth, which is what a browser can send for a
page), from anywhere; or, when no key of the listener is an admin key, any caller on the
loopback interface (an operator on the host, or through an ssh tunnel). The pages hold
names and counts, never a key, a credential or a prompt.

Status is gathered from the node by message (see metrics.py for why), at most once per
``STATUS_CACHE_S`` whatever the number of dashboards and scrapers polling.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from actors.errors import InferenceError
from actors.http import metrics
from actors.http.errors import FrontDoorError, status_line
from actors.http.keys import KeyRing, presented_key
from actors.http.status_view import cluster_document, node_document, public

__all__ = ["Observatory", "PATHS", "may_observe"]

PATHS = ("/metrics", "/v1/status", "/ui", "/ui/")
STATUS_CACHE_S = 0.5
_ASSETS = {"/ui": ("index.html", "text/html; charset=utf-8"), "/ui/": ("index.html", "text/html; charset=utf-8"),
           "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/ui/style.css": ("style.css", "text/css; charset=utf-8")}
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _basic_password(headers: dict[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def may_observe(keys: KeyRing, headers: dict[str, str], remote_addr: str) -> tuple[bool, int, str]:
    """(allowed, status if not, why): the access rule of the operator's routes."""
    presented = _basic_password(headers) or presented_key(headers)
    caller = keys.check(presented) if presented is not None else None
    if caller is not None and caller.admin:
        return True, 200, ""
    if presented is None and not keys.has_admin and remote_addr.startswith(LOOPBACK):
        return True, 200, ""
    if presented is None or caller is None:
        why = "an admin key is needed" if keys.has_admin else "loopback only (or give a key with admin: true)"
        return False, 401, f"{'no' if presented is None else 'invalid'} API key: {why}"
    return False, 403, f"key {caller.name!r} is not an admin key (admin: true)"


class Observatory:
    def __init__(self, client: Any, keys: KeyRing) -> None:
        self.client = client
        self.keys = keys
        self.overhead = metrics.Overhead()
        self._lock = threading.Lock()
        self._cluster: tuple[float, dict[str, Any]] | None = None
        self._node: tuple[float, dict[str, Any]] | None = None

    @staticmethod
    def handles(path: str) -> bool:
        return path in PATHS or path in _ASSETS

    def serve(self, method: str, path: str, headers: dict[str, str], environ: dict[str, Any], request_id: str,
              start_response: Callable, done: Callable[[int, str | None], None]) -> list[bytes]:
        if method not in ("GET", "HEAD"):
            raise FrontDoorError(405, f"{path} takes GET, not {method}", kind="invalid_request_error",
                                 code="method_not_allowed")
        allowed, status, why = may_observe(self.keys, headers, str(environ.get("REMOTE_ADDR", "")))
        if not allowed:
            if path.startswith("/ui") and status == 401:
                # A browser can only send a key for a page as Basic auth: ask for it (the key is the password).
                body = f"{why}\n".encode()
                done(401, "-")
                start_response(status_line(401), [("Content-Type", "text/plain; charset=utf-8"),
                                                  ("Content-Length", str(len(body))),
                                                  ("WWW-Authenticate", 'Basic realm="atomr gateway", charset="UTF-8"')])
                return [body]
            raise FrontDoorError(status, why, kind="authentication_error" if status == 401 else "permission_error",
                                 code="admin_required")
        if path == "/metrics":
            body, ctype = metrics.render(self._metrics_source), metrics.CONTENT_TYPE
        elif path == "/v1/status":
            body, ctype = json.dumps(public(self.cluster()), separators=(",", ":")).encode(), "application/json"
        else:
            name, ctype = _ASSETS[path]
            body = resources.files("actors.http").joinpath("ui", name).read_bytes()
        done(200, "admin")
        start_response(status_line(200), [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                          ("Cache-Control", "no-store"), ("X-Request-Id", request_id)])
        return [b"" if method == "HEAD" else body]

    # -- the pictures ----------------------------------------------------------------

    def cluster(self) -> dict[str, Any]:
        """The whole cluster, from any node (the leader's registrar gathers every node)."""
        with self._lock:
            if self._cluster is not None and time.monotonic() - self._cluster[0] < STATUS_CACHE_S:
                return self._cluster[1]
        doc = cluster_document(self._ask(lambda: self.client.cluster_status(timeout_s=5)))
        with self._lock:
            self._cluster = (time.monotonic(), doc)
        return doc

    def node(self) -> dict[str, Any]:
        """This node only (what its /metrics exposes), with the cluster's membership for heartbeats."""
        with self._lock:
            if self._node is not None and time.monotonic() - self._node[0] < STATUS_CACHE_S:
                return self._node[1]
        status = self._ask(lambda: self.client.status(timeout_s=5))
        members = self._ask(lambda: self.client.cluster_status(timeout_s=5, members_only=True))
        doc = node_document(status, members.members, members.leader)
        with self._lock:
            self._node = (time.monotonic(), doc)
        return doc

    def _metrics_source(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.node(), self.overhead.snapshot()

    @staticmethod
    def _ask(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except InferenceError as exc:
            raise FrontDoorError(503, f"the node did not answer a status request: {exc.message}",
                                 kind="api_error", code="status_unavailable", retry_after_s=1.0) from None
