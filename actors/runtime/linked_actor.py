"""The actor half of the control links (``runtime/control_link.py``): what the engine and its
worker processes send to each other goes on their link while it is up, and what arrives on it
is handled as a Thespian delivery."""

from __future__ import annotations

import os
import traceback
from typing import TYPE_CHECKING, Any

from thespian.actors import ActorSystemMessage, PoisonMessage

from actors.runtime.control_link import ControlLink, address_key, connect, wire_codec
from actors.runtime.logs import logger

if TYPE_CHECKING:
    from actors.runtime.timers import Timers

__all__ = ["LinkedActor", "address_key"]

log = logger("atomr.control")
FLUSH_S = 0.002     # how soon an outbox the socket did not take is tried again
MAX_READS_TO_END = 64   # reads of a dead peer's link (each up to control_link's READS_PER_WAKE x READ_BYTES)


class LinkedActor:
    """Mixed into the engine and the worker process (before ``GatewayActor``): a message to an
    address with a link goes on it; what arrives on a link is handled as a Thespian delivery."""

    timers: Timers
    myAddress: Any

    if TYPE_CHECKING:
        def receiveMessage(self, message: Any, sender: Any) -> Any: ...

    def __init__(self) -> None:
        super().__init__()
        self.links: dict[Any, tuple[Any, ControlLink]] = {}   # address_key(peer) -> (peer, its link)
        # Inside a message handed over from a link: the handler Thespian called flushes and watches once.
        self.delivering = False

    def linked(self, target: Any) -> bool:
        return address_key(target) in self.links

    def _link(self, target: Any, link: ControlLink) -> None:
        self.links[address_key(target)] = (target, link)

    def _connect_link(self, target: Any, port: int | None) -> None:
        """A worker process's link to its engine (``port``: the engine's listener, from WorkerInit)."""
        wire = wire_codec()
        if port is None or wire is None:
            return
        try:
            self._link(target, connect(port, wire))
        except OSError as exc:
            log.warning("%s %d: no control link (%s): Thespian only", type(self).__name__, os.getpid(), exc)

    def send(self, target: Any, message: Any) -> None:
        held = self.links.get(address_key(target))
        # Thespian's own messages (an exit request, a poison message) mean something to Thespian
        # itself at the other end, not to the actor's handlers: they go by Thespian.
        if held is not None and not isinstance(message, ActorSystemMessage):
            link = held[1]
            # Queued: written when the handler returns (flush_links), with whatever else it sent there.
            taken = link.send(self.myAddress, message, flush=False)
            if link.closed:
                self._unlink(target, resend=True)   # what it could not write whole, this one included
                if taken:
                    return
            elif taken:
                return
        super().send(target, message)  # type: ignore[misc]

    def send_written(self, target: Any, message: Any) -> bool:
        """``send``, written at once; True only when it is in the kernel whole on ``target``'s link,
        behind whatever was queued there: it reaches ``target`` before anything this process sends
        afterwards, even should this process die at once (its peer reads a link to its end)."""
        held = self.links.get(address_key(target))
        if held is None or isinstance(message, ActorSystemMessage):
            self.send(target, message)
            return False
        link = held[1]
        taken = link.send(self.myAddress, message, flush=True)
        if link.closed:
            self._unlink(target, resend=True)   # what it could not write whole (this one, if taken)
        if not taken:
            super().send(target, message)  # type: ignore[misc]
        return taken and not link.closed and not link.pending

    def send_by_thespian(self, target: Any, message: Any) -> None:
        """Not on the link: a stream's result after chunks that went to its caller by Thespian (its
        channel failed) stays in line behind them, as it was before links, so its terminal does
        not overtake them by seconds."""
        super().send(target, message)  # type: ignore[misc]

    def _unlink(self, target: Any, resend: bool) -> None:
        held = self.links.pop(address_key(target), None)
        if held is None:
            return
        link = held[1]
        link.close("dropped")
        stranded = link.stranded()
        if link.why not in ("dropped", "closed by its peer") or stranded:
            log.warning("%s: the control link to %s closed (%s); %d message(s) go by Thespian instead",
                        type(self).__name__, target, link.why, len(stranded) if resend else 0)
        if resend:
            for _, message in stranded:
                super().send(target, message)  # type: ignore[misc]

    def flush_links(self) -> None:
        """Write what the handler queued on each link, one write per link rather than one per message;
        called as each handler Thespian called returns. What a socket does not take is tried again on a
        short timer."""
        if self.delivering:
            return
        if self._flush_links():
            self.timers.after("control_flush", FLUSH_S)

    def _flush_links(self) -> bool:
        """Flush every link; True while one still holds something it could not write."""
        for target, link in list(self.links.values()):
            if link.pending:
                link.flush()
                if link.closed:
                    self._unlink(target, resend=True)
        return any(link.pending for _, link in self.links.values())

    def timer_control_flush(self, _: Any) -> None:
        self.flush_links()

    def _link_fds(self) -> list[int]:
        return [link.fileno() for _, link in self.links.values()]

    def _read_links(self, ready: Any) -> None:
        for target, link in list(self.links.values()):
            if link.fileno() in ready:
                self._take(target, link, link.receive())

    def read_to_end(self, target: Any) -> None:
        """Hand over what ``target`` wrote on its link up to now, to its close if it has closed (a dead
        process's link holds everything it wrote, then its end)."""
        for _ in range(MAX_READS_TO_END):
            held = self.links.get(address_key(target))
            if held is None:
                return
            # What the handlers send it meanwhile is for a dead process: dropped with the link.
            self._take(target, held[1], held[1].receive(), resend=False)

    def _take(self, target: Any, link: ControlLink, envelopes: list[tuple[Any, Any]], resend: bool = True) -> None:
        """Hand what arrived on ``target``'s link to the handlers, in order; a closed link is dropped
        (what it had not written goes by Thespian, if ``resend``)."""
        for sender, message in envelopes:
            if sender != target:
                link.close(f"a message claiming to be from {sender}")
                break
            self._deliver(sender, message)
        if link.closed:
            self._unlink(target, resend=resend)

    def receiveMsg_LinkHello(self, message: Any, sender: Any) -> None:
        """The engine's greeting on a worker process's link: the process knows its engine already."""

    def _deliver(self, sender: Any, message: Any) -> None:
        """As Thespian delivers: a handler that raises answers its sender with a PoisonMessage."""
        outer, self.delivering = self.delivering, True
        try:
            self.receiveMessage(message, sender)
        except Exception:
            log.exception("%s failed on a %s from its control link", type(self).__name__, type(message).__name__)
            self.send(sender, PoisonMessage(message, traceback.format_exc()[-2000:]))
        finally:
            self.delivering = outer
