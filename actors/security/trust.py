"""Who sent a frame: this node, another process of this host, or another host.

A frame whose TCP peer is an address of this host (loopback, or one a socket can bind to
here) is LOCAL; anything else comes from a PEER, and is only read at all when a cluster
secret was configured on purpose. A LOCAL frame is from the **node** itself when it also
carries the node tag: a MAC keyed from this start's launch capability, which the launcher
makes before it forks the node's admin, so only the launcher and its forks hold it (in
memory: it is never sent, written or put in an environment, and a program the node
``exec``s, the HTTP listener or a credential command, does not have it).

What each may send is decided in :mod:`actors.security.permissions`.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import threading
from collections.abc import Callable

from actors.security.keys import WireKey, node_key

__all__ = ["NODE", "LOCAL", "PEER", "LocalAddresses", "new_capability", "set_capability", "capability",
           "current_node_key", "in_node_process"]

NODE = "node"      # one of this node's own processes
LOCAL = "local"    # another process of this host holding the wire key
PEER = "peer"      # another host holding the cluster secret


def _can_bind(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))  # EADDRNOTAVAIL: not an address of this host
        return True
    except OSError:
        return False


class LocalAddresses:
    """Is a peer host one of this host's addresses? Cached per host string (bounded)."""

    def __init__(self, can_bind: Callable[[str], bool] = _can_bind, limit: int = 4096) -> None:
        self._can_bind = can_bind
        self._cache: dict[str, bool] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def is_local(self, host: str | None) -> bool:
        if not host:
            return False
        cached = self._cache.get(host)
        if cached is not None:
            return cached
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        local = address.is_loopback or (not address.is_unspecified and not address.is_multicast
                                        and self._can_bind(str(address)))
        with self._lock:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[host] = local
        return local

    def trust_of(self, peer: tuple[str, int] | None) -> str:
        return LOCAL if peer is not None and self.is_local(peer[0]) else PEER


# --- the launch capability and the node tag ----------------------------------------------

_capability: str | None = None
_node_key: WireKey | None = None
_node_process = False      # a fork of the launcher (its admin, logger or an actor): enforces the table
_fork_hook = False


def _forked() -> None:
    global _node_process
    _node_process = _node_key is not None


def new_capability() -> str:
    """Made by the launcher before its ActorSystem exists, so every process of the node inherits it."""
    global _fork_hook
    value = secrets.token_hex(32)
    set_capability(value)
    if not _fork_hook:
        _fork_hook = True
        os.register_at_fork(after_in_child=_forked)
    return value


def set_capability(value: str | None) -> None:
    global _capability, _node_key
    _capability = value
    _node_key = node_key(value) if value else None


def capability() -> str | None:
    return _capability


def current_node_key() -> WireKey | None:
    """The key of the node tag this process signs with and accepts, if it is (or launched) a node."""
    return _node_key


def in_node_process() -> bool:
    """True in the node's admin, logger and actors: the processes forked from a launcher."""
    return _node_process
