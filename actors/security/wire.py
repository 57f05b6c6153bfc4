"""The wire: signed, allow-listed, trust-checked frames for every Thespian TCP socket of a node and its clients.

Thespian 4.0.1's TCP transport binds every socket (the admin's and each actor's) to all
interfaces, has no authentication and unpickles whatever arrives. :func:`install` makes this
process (and everything it forks afterwards) speak the gateway's wire instead:

- :mod:`actors.security.keys`: where keys come from (a cluster secret, or this host's key);
- :mod:`actors.security.allow_list`: which classes may be unpickled at all;
- :mod:`actors.security.trust`: who sent a frame (the node itself, this host, another host; the
  launch capability and the node tag);
- :mod:`actors.security.permissions`: what each of them may send (the one table);
- :mod:`actors.security.serializer`: the signed frame format and the checks, in order;
- :mod:`actors.security.thespian_hooks`: every hook into Thespian's internals.

This module is the facade the rest of the package imports. See docs/security.md.
"""

from __future__ import annotations

import threading

from actors.errors import ConfigError
from actors.security.allow_list import (STDLIB_ALLOWED, THESPIAN_ALLOWED, WIRE_EXTRAS, WIRE_MODULES, AllowList,
                                        Refused, default_allow_list)
from actors.security.keys import (CLUSTER, ENV_HOST_KEY_DIR, ENV_SECRET, ENV_SECRET_FILE, ENV_SECRET_PREVIOUS,
                                  FROM_ENVIRONMENT, HOST, KeyRing, WireKey, describe, generate_key_line,
                                  host_key_path, host_keyring, is_loopback, load_keyring, parse_keys,
                                  require_secret, resolve_keyring)
from actors.security.permissions import PEER_ALLOWED, TABLE
from actors.security.serializer import (LOG_INTERVAL_S, MAC_LEN, MAGIC_NODE, MAGIC_SIGNED, PROTOCOL, RefusalLog,
                                        WireSerializer)
from actors.security.trust import LOCAL, NODE, PEER, capability, new_capability

__all__ = [
    "ENV_SECRET", "ENV_SECRET_PREVIOUS", "ENV_SECRET_FILE", "ENV_HOST_KEY_DIR", "CLUSTER", "HOST", "WireKey",
    "KeyRing", "AllowList", "default_allow_list", "WireSerializer", "Refused", "RefusalLog", "FROM_ENVIRONMENT",
    "parse_keys", "load_keyring", "resolve_keyring", "host_key_path", "host_keyring", "generate_key_line",
    "install", "current", "is_loopback", "require_secret", "describe", "NODE", "LOCAL", "PEER", "PEER_ALLOWED",
    "TABLE", "new_capability", "capability", "MAGIC_SIGNED", "MAGIC_NODE", "MAC_LEN", "PROTOCOL", "LOG_INTERVAL_S",
    "THESPIAN_ALLOWED", "STDLIB_ALLOWED", "WIRE_MODULES", "WIRE_EXTRAS",
]

_INSTALLED: WireSerializer | None = None
_install_lock = threading.Lock()


def install(keyring: KeyRing | None) -> WireSerializer:
    """Make this process (and every process it forks from now on) speak the gateway's wire.

    One key per process: asking again for the same keys returns the installed serializer;
    asking for different keys raises ConfigError (a process that forked nodes or opened
    clients with one key would otherwise silently talk another).
    """
    global _INSTALLED
    from actors.security import thespian_hooks

    if keyring is None:
        raise ConfigError(f"no key for the wire: no cluster secret is set ({ENV_SECRET}, {ENV_SECRET_FILE} or "
                          f"cluster.secret_file) and this host has no host key yet at {host_key_path()} (a node "
                          f"started on this host makes it)", path="cluster.secret_file")
    with _install_lock:
        if _INSTALLED is not None:
            if _INSTALLED.keyring == keyring:
                if thespian_hooks.current_serializer() is not _INSTALLED:
                    thespian_hooks.install_serializer(_INSTALLED)
                return _INSTALLED
            raise ConfigError(
                f"this process already uses the wire key {_INSTALLED.keyring.signing.key_id!r} "
                f"({_INSTALLED.keyring.source}); it cannot switch to {keyring.signing.key_id!r} ({keyring.source}): "
                f"the cluster key is set once per process (start another process for another key)",
                path="cluster.secret_file")
        serializer = WireSerializer(keyring)
        thespian_hooks.install_serializer(serializer)
        _INSTALLED = serializer
        return serializer


def current() -> WireSerializer | None:
    from actors.security import thespian_hooks

    serializer = thespian_hooks.current_serializer()
    return serializer if isinstance(serializer, WireSerializer) else None


def installed_keyring() -> KeyRing | None:
    return _INSTALLED.keyring if _INSTALLED is not None else None


__all__ += ["installed_keyring"]
