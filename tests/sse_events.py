"""Reading what the front door streams: an SSE body as (event name, data) pairs."""

from __future__ import annotations

import json


def sse_events(body: bytes | str) -> list[tuple[str | None, dict | str]]:
    """Each frame's ``event:`` name (None without one) and its ``data:`` as JSON; ``[DONE]`` stays a string."""
    text = body.decode() if isinstance(body, bytes) else body
    out: list[tuple[str | None, dict | str]] = []
    for frame in text.split("\n\n"):
        name, data = None, None
        for line in frame.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out
