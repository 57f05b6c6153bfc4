"""The engine's end of its callers' links: calls and cancels on a socket, and their terminals back on it.

A caller on this host (the front door, a ``GatewayClient``) sends each call to the engine as a
Thespian message from its thread's own endpoint, and gets its terminal back the same way:
two transmits per call through Thespian's one-at-a-time transport, which a burst of calls
waits on (docs/performance.md, round 7). A caller that has the engine's control port (its
route says it) links to it instead (``actors/caller_links.py``), one connection per caller
process, with the frames and checks of the worker processes' links (``control_link.py``):

- the link carries **calls and cancels only** (``InferenceRequest``, ``Cancel``), read with a
  local caller's permissions (the frames are signed, not tagged by the node); anything else
  closes it;
- **a call's terminal goes back on the link it came on**, to the sender it named, and only
  that call's: the link is no address of its own, so a caller cannot have another actor's
  messages sent to it;
- a closed link loses nothing owed: a terminal that cannot go on it goes by Thespian to the
  same sender, as it would have without the link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors.runtime.control_link import ControlLink
from actors.runtime.linked_actor import LinkedActor, address_key
from actors.runtime.logs import logger
from actors.types import Cancel, InferenceRequest

if TYPE_CHECKING:
    from actors.runtime.timers import Timers

__all__ = ["CALLS", "MAX_CALLER_LINKS", "CallerLinks"]

log = logger("atomr.control")
CALLS = (InferenceRequest, Cancel)   # what a caller's link may carry
MAX_CALLER_LINKS = 256               # per engine; past it a caller sends by Thespian, as without links


class CallerLinks(LinkedActor):
    """Mixed into the engine (``engine_workers.py`` places each new link)."""

    timers: Timers
    myAddress: Any

    def __init__(self) -> None:
        super().__init__()
        self.callers: list[ControlLink] = []
        self.replies_on: dict[str, tuple[Any, ControlLink]] = {}   # request id -> (its sender's key, its link)
        self.unsent: dict[int, dict[str, Any]] = {}   # id(link) -> request id -> its sender, while not all written
        self.caller_refused = 0

    def _caller_linked(self, link: ControlLink, envelopes: list[tuple[Any, Any]]) -> bool:
        """Place a new connection whose first frame is a call or a cancel; False when it is refused."""
        if len(self.callers) >= MAX_CALLER_LINKS:
            return False
        self.callers.append(link)
        self._take_calls(link, envelopes)
        return True

    def _caller_fds(self) -> list[int]:
        return [link.fileno() for link in self.callers]

    def _read_callers(self, ready: set[int]) -> None:
        for link in list(self.callers):
            if link.fileno() in ready:
                self._take_calls(link, link.receive())

    def _take_calls(self, link: ControlLink, envelopes: list[tuple[Any, Any]]) -> None:
        for sender, message in envelopes:
            if not isinstance(message, CALLS):
                self.caller_refused += 1
                link.close(f"a caller's link carried a {type(message).__name__}")
                break
            if isinstance(message, InferenceRequest):
                self.replies_on[message.request_id] = (address_key(sender), link)
            self._deliver(sender, message)
        if link.closed:
            self._drop_caller(link)

    def _reply(self, to: Any, message: Any) -> None:
        """A call's terminal: on the link the call came on, when it is still up; else by Thespian."""
        request_id = getattr(message, "request_id", "")
        held = self.replies_on.pop(request_id, None)
        if held is not None and held[0] == address_key(to) and not held[1].closed:
            link = held[1]
            unsent = self.unsent.setdefault(id(link), {})
            unsent[request_id] = to
            if link.send(self.myAddress, message, flush=False):   # written as the handler returns
                return
            unsent.pop(request_id, None)
        self.send(to, message)

    def _drop_caller(self, link: ControlLink) -> None:
        if link in self.callers:
            self.callers.remove(link)
        unsent = self.unsent.pop(id(link), {})
        for _, message in link.stranded():
            to = unsent.get(getattr(message, "request_id", ""))
            if to is not None:
                self.send(to, message)

    def _flush_links(self) -> bool:
        behind = super()._flush_links()
        for link in list(self.callers):
            if link.pending:
                link.flush()
                if link.closed:
                    self._drop_caller(link)   # what it did not write whole goes by Thespian
                    continue
            if not link.pending:
                self.unsent.pop(id(link), None)
        return behind or any(link.pending for link in self.callers)

    def _callers_status(self) -> dict[str, int]:
        return {"callers": len(self.callers), "caller_refused": self.caller_refused}
