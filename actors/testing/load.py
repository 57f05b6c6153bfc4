"""Load generators for benchmarks and load tests (never imported by the runtime)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from actors.types import Completed, Failed, InferenceRequest

if TYPE_CHECKING:
    from actors.client import GatewayClient


def open_loop(client: GatewayClient, model: str, rate_per_s: float, seconds: float, results: list,
              deadline_s: float = 0.5, drain_s: float = 5.0, *,
              metadata: Callable[[int], dict[str, str]] | None = None, stop: threading.Event | None = None,
              prompt: Callable[[float], str] | None = None) -> int:
    """Offer ``rate_per_s`` one-token requests for ``seconds`` whatever comes back (open loop),
    appending every terminal to ``results``; for load tests and benchmarks. Returns how many were sent.

    ``metadata(n)`` is the n-th request's metadata; ``stop`` ends the loop early when set;
    ``prompt(deadline_unix)`` is a request's message (default ``hi``: a benchmark can carry the
    deadline to the mock provider, which records when each message arrived)."""
    endpoint = client._endpoint()
    engine = client.routes(model)[0].engine
    start, sent, pending = time.monotonic(), 0, set[str]()
    while time.monotonic() - start < seconds or (pending and time.monotonic() - start < seconds + drain_s):
        if stop is not None and stop.is_set():
            break
        elapsed = time.monotonic() - start
        if elapsed < seconds and sent < elapsed * rate_per_s:
            deadline = time.time() + deadline_s
            text = prompt(deadline) if prompt is not None else "hi"
            request = InferenceRequest(model=model, messages=[{"role": "user", "content": text}],
                                       params={"max_tokens": 1}, deadline_unix=deadline,
                                       metadata=metadata(sent) if metadata is not None else {})
            endpoint.tell(engine, request)
            pending.add(request.request_id)
            sent += 1
            continue
        reply = endpoint.listen(0.005)
        if isinstance(reply, (Completed, Failed)) and reply.request_id in pending:
            pending.discard(reply.request_id)
            results.append(reply)
    return sent
