"""The relay's book: calls this node forwards to other nodes' engines, and whom their answers go to.

A caller on this host holds the host key only, so it cannot reach another node's engine; the
node's relay (``runtime/relay.py``), which holds the cluster secret, forwards its request and
passes every chunk and the terminal back (docs/routing.md, "Across a cluster"). The book is
the relay's state, pure: which engines it may forward to (other nodes' engines its registry
learned), which caller each request id belongs to, and when it forgets a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["GRACE_S", "LINGER_S", "RelayBook", "Relayed"]

# After its terminal, a call's chunks still pass this long: chunks and the terminal travel
# separately (the worker sends one, the engine the other) and may cross on the way.
LINGER_S = 10.0
# A call whose terminal never came (its node died) is forgotten this long after its deadline;
# its caller's own deadline has ended it by then (client.TERMINAL_GRACE_S).
GRACE_S = 30.0
NO_DEADLINE_S = 3600.0


@dataclass
class Relayed:
    caller: Any
    engine: Any
    forget_unix: float                 # forgotten after this, terminal or not
    ended: bool = False                # its terminal passed; stragglers still do until forget_unix


class RelayBook:
    def __init__(self, linger_s: float = LINGER_S, grace_s: float = GRACE_S) -> None:
        self.linger_s = linger_s
        self.grace_s = grace_s
        self.targets: list[Any] = []       # addresses are compared with ==, not hashed
        self.calls: dict[str, Relayed] = {}

    def open(self, request_id: str, caller: Any, engine: Any, deadline_unix: float | None,
             now_unix: float) -> str | None:
        """File a call to forward; the reason it may not be forwarded, or None.

        Only to an engine of another node the registry named (the relay is no open proxy: a local
        key holder may make it send a request to nothing else), and a request id stays its
        caller's: a resend from the same caller is forwarded again (the engine answers once).
        """
        if engine is None or engine not in self.targets:
            return "not an engine of another node that this node routes to"
        held = self.calls.get(request_id)
        if held is not None and not held.ended and held.caller != caller:
            return f"request id {request_id!r} is in use by another caller"
        deadline = deadline_unix if deadline_unix is not None else now_unix + NO_DEADLINE_S
        self.calls[request_id] = Relayed(caller, engine, deadline + self.grace_s)
        return None

    def cancel(self, request_id: str) -> Any:
        """The engine to pass a Cancel to (None: no such call here, or over). By request id, as an
        engine takes it: a client cancels from whichever of its endpoints is free, not the caller's."""
        held = self.calls.get(request_id)
        return held.engine if held is not None and not held.ended else None

    def answer(self, request_id: str, terminal: bool, now_unix: float) -> Any:
        """The caller a chunk or terminal of ``request_id`` goes to (None: no such call here)."""
        held = self.calls.get(request_id)
        if held is None or (held.ended and terminal):
            return None     # a second terminal never passes: one terminal per request
        if terminal:
            held.ended = True
            held.forget_unix = min(held.forget_unix, now_unix + self.linger_s)
        return held.caller

    def sweep(self, now_unix: float) -> int:
        """Forget the calls that are over; how many were forgotten."""
        over = [rid for rid, held in self.calls.items() if held.forget_unix <= now_unix]
        for rid in over:
            del self.calls[rid]
        return len(over)
