"""Loggers for code that runs inside actors.

Thespian replaces the logging manager in every actor process after forking it, so that
records reach the node's logger process. A ``logging.getLogger`` result kept from import
time (before the fork) still points at the parent's handlers: its records would go to
the launcher's stderr, or nowhere. :func:`logger` looks the real one up at each use.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.core.log_format import (LOG_FIELDS, JsonFormatter, TextFormatter, formatter_definition,  # noqa: F401
                                    request_fields)

__all__ = ["logger", "JsonFormatter", "TextFormatter", "request_fields", "formatter_definition", "LOG_FIELDS"]


class _ActorLogger:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(logging.getLogger(self.name), attribute)


def logger(name: str) -> Any:
    return _ActorLogger(name)

