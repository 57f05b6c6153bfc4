"""Log formats for node.log_format: text (the default) or json, one JSON object per line.

Used by the node's logger process (through the logging dictConfig the launcher gives
Thespian) and by the HTTP listener's process.
"""

from __future__ import annotations

import json as _json
import logging
import time as _time
from typing import Any

__all__ = ["LOG_FIELDS", "JsonFormatter", "TextFormatter", "request_fields", "formatter_definition"]


# -- formats (node.log_format) -------------------------------------------------------------
#
# A record may carry ``requests``: a list of per-request dicts (the engine logs its terminals
# in batches, one log message per second at most, since every log record of an actor is a
# message to the node's logger process). Each formatter writes one line per request.

# The only record attributes a JSON line may carry besides the message: names, counts, times.
# Never a prompt, a completion, a key or a credential (none is ever put on a record).
LOG_FIELDS = ("request_id", "deployment", "model", "provider", "node", "key", "outcome", "error_kind", "status",
              "attempts", "streamed", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
              "cost_usd", "latency_s", "ttft_s", "method", "path", "http_status")


def request_fields(record: Any) -> dict[str, Any]:
    """A TerminalRecord as the fields of its log line."""
    return {name: getattr(record, name) for name in LOG_FIELDS if hasattr(record, name)}


def _stamp(record: logging.LogRecord) -> str:
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, and the allowed fields set on the record."""

    def format(self, record: logging.LogRecord) -> str:
        base = {"ts": _stamp(record), "level": record.levelname, "logger": record.name}
        batch = getattr(record, "requests", None)
        if isinstance(batch, list):
            return "\n".join(_json.dumps({**base, "event": "request", **{k: r[k] for k in LOG_FIELDS if k in r}},
                                         default=str) for r in batch if isinstance(r, dict))
        line = {**base, "message": record.getMessage()}
        line.update({k: getattr(record, k) for k in LOG_FIELDS if hasattr(record, k)})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return _json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The plain format; a batch of requests is one ``request k=v ...`` line each."""

    def __init__(self, fmt: str | None = "%(asctime)s %(levelname)-7s %(name)s: %(message)s", **kw: Any) -> None:
        super().__init__(fmt, **kw)

    def format(self, record: logging.LogRecord) -> str:
        batch = getattr(record, "requests", None)
        if not isinstance(batch, list):
            return super().format(record)
        head = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: request"
        return "\n".join(head + "".join(f" {k}={r[k]}" for k in LOG_FIELDS if k in r and r[k] not in (None, ""))
                         for r in batch if isinstance(r, dict))


def formatter_definition(log_format: str) -> dict[str, Any]:
    """The ``formatters`` entry of a logging dictConfig for ``node.log_format``."""
    return {"()": f"actors.core.log_format.{'JsonFormatter' if log_format == 'json' else 'TextFormatter'}"}
