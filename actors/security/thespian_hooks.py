"""Every hook into Thespian 4.0.1's internals, in one file: the one to revisit on a Thespian upgrade.

- **The serializer.** ``thespian.system.transport.TCPTransport`` takes its serializer from one
  module-level name, ``serializer`` (``serializer.dumps`` for every frame it sends,
  ``serializer.loads`` for every frame and ACK it reads): :func:`install_serializer` puts ours there.
- **What the guards ask of this process's actor** (:data:`THIS_PROCESS`): a ``ChildActorExited`` from
  outside the node is only believed about a child this process had created on another node
  (``MultiProcReplicator.init_replicator`` is wrapped to remember this process's actor
  manager; its ``_children`` and ``_child_procs`` say which children are remote), and whether
  the process reading a frame is the admin: what the admins of a convention say to each other
  is only read from outside the node by an admin; and whether an actor is still waiting for
  news of a child it asked to be created (its address manager's ``_managed`` slot is still
  empty), the one time another node's admin answers it.
- **The peer of each frame.** Thespian deserializes in exactly two methods of ``TCPTransport``:
  ``_addedDataToIncoming(inc, ...)`` (``inc.data`` -> ``ReceiveBuffer.completed()``; every
  accepted connection, trailing data, and data read back on a send socket all pass here) and
  ``_check_XMIT_4_done(intent, ...)`` (``intent.ackbuf.completed()``: the reply read on a
  socket this process connected). Both know the socket, so a wrapper records its TCP peer in
  a thread-local that ``loads`` reads. Nothing else calls ``serializer.loads``.
- **The selector of each pass of the TCP transport's loop** (``TCPTransport.selectors``): one
  ``poll`` call a pass instead of epoll's call per socket (:class:`_TurnSelector`).
- **Thespian's own log lines** about frames we refused (:func:`quiet_thespian_log`).
- **Deferred refusal lines**: logged after the transport's critical section (:class:`DeferredLines`).
- **Children die with their parent actor** (:func:`die_with_parent`): every actor process Thespian
  forks (``multiprocCommon.startChild``, looked up by name at each ``mp.Process``) asks Linux for
  ``PR_SET_PDEATHSIG`` = SIGKILL first, so a killed engine takes its workers with it. Not the
  admin (it daemonizes on purpose: the launcher watchdog covers it, actors/runtime/watchdog.py).
- **An external endpoint that also wakes on a file descriptor** (:func:`listen_or_watch`): the
  TCP transport's ``set_watch`` (what ``ThespianWatch`` sets for an actor) on a private
  endpoint's own transport, for one receive, so a client thread blocked on its endpoint wakes
  when the stream channel has chunks for it (``actors/stream_receiver.py``).
- **A private endpoint of the in-process system** (:class:`InProcessEndpoint`): on
  ``simpleSystemBase``, ``private()`` neither runs the actors nor honours its timeout (its
  ``listen`` blocks for good); ours takes its own address from ``external_clone()`` and, while
  it waits, runs the system's pending sends and due wakeups (``_runSends``) in its thread. Its
  ``ask`` to an actor that exited returns None at once, as the TCP transport's does.

**The version** (:func:`check_version`): every process that installs the wire checks that the
installed Thespian is the one these hooks were written against, and refuses to start
otherwise. An error, not a warning: the hooks reach into private names, and on another
version the signed serializer could silently not be the one Thespian calls, which would make
every port accept unsigned pickles again. ``ATOMR_THESPIAN_UNTESTED=1`` lets an engineer
working through the upgrade checklist (docs/architecture.md, "The Thespian contract") run it
anyway, with a warning.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import selectors
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from datetime import timedelta
from importlib import metadata
from typing import Any, ClassVar

from actors.errors import ConfigError

__all__ = ["die_with_parent", "install_serializer", "THIS_PROCESS", "current_serializer", "frame_peer", "DeferredLines",
           "emit_after_this_step", "quiet_thespian_log", "listen_or_watch", "WATCHED", "THESPIAN_VERSION", "check_version",
           "InProcessEndpoint"]

THESPIAN_VERSION = "4.0.1"
UNTESTED_ENV = "ATOMR_THESPIAN_UNTESTED"


def check_version(installed: str | None = None, environ: Mapping[str, str] = os.environ) -> str | None:
    """Raise ConfigError unless the installed Thespian is :data:`THESPIAN_VERSION`; with
    ``ATOMR_THESPIAN_UNTESTED=1``, return the warning to log instead. None when it matches."""
    if installed is None:
        try:
            installed = metadata.version("thespian")
        except metadata.PackageNotFoundError:
            installed = "unknown"
    if installed == THESPIAN_VERSION:
        return None
    problem = (f"Thespian {installed} is installed; this gateway's hooks into Thespian's internals "
               f"(actors/security/thespian_hooks.py) are written and tested against {THESPIAN_VERSION}")
    if environ.get(UNTESTED_ENV) == "1":
        return (f"{problem}: running anyway ({UNTESTED_ENV}=1); work through docs/architecture.md, "
                f"'The Thespian contract', before trusting it")
    raise ConfigError(f"{problem}: install thespian=={THESPIAN_VERSION} (pyproject.toml pins it), or set "
                      f"{UNTESTED_ENV}=1 to try another version while checking docs/architecture.md, "
                      f"'The Thespian contract'", path="thespian")

_peer = threading.local()


def frame_peer() -> tuple[str, int] | None:
    """The TCP peer (host, port) of the frame this thread is deserializing, if known."""
    return getattr(_peer, "value", None)


# A socket's peer, read once while the connection is surely up (at accept, or at first use):
# after the other side has gone, getpeername() can fail while its last frame is still unread.
_peers: "weakref.WeakKeyDictionary[Any, tuple[str, int]]" = weakref.WeakKeyDictionary()


def _peer_of(sock: Any) -> tuple[str, int] | None:
    sock = getattr(sock, "socket", sock)
    try:
        return _peers[sock]
    except (KeyError, TypeError):
        pass
    try:
        name = sock.getpeername()
        peer = str(name[0]), int(name[1])
    except (OSError, AttributeError, TypeError, IndexError):
        return None
    try:
        _peers[sock] = peer
    except TypeError:
        pass
    return peer


def _target_of(intent: Any) -> tuple[str, int] | None:
    """The address a send socket was connected to: its peer, even once the peer has gone."""
    sockname = getattr(getattr(getattr(intent, "targetAddr", None), "addressDetails", None), "sockname", None)
    if isinstance(sockname, tuple) and len(sockname) >= 2 and sockname[0]:
        return str(sockname[0]), int(sockname[1])
    return None


def _with_peer(method: Any, sock_of: Any, fallback: Any = lambda holder: None) -> Any:
    if getattr(method, "_atomr_peer", False):
        return method

    def wrapper(self: Any, holder: Any, *args: Any, **kw: Any) -> Any:
        previous = getattr(_peer, "value", None)
        _peer.value = _peer_of(sock_of(holder)) or fallback(holder)
        try:
            return method(self, holder, *args, **kw)
        finally:
            _peer.value = previous

    wrapper._atomr_peer = True  # type: ignore[attr-defined]
    wrapper.__wrapped__ = method  # type: ignore[attr-defined]
    return wrapper


def _track_peers() -> None:
    from thespian.system.transport.TCPTransport import TCPIncoming_Common, TCPTransport

    TCPTransport._addedDataToIncoming = _with_peer(TCPTransport._addedDataToIncoming, lambda inc: inc.socket)
    TCPTransport._check_XMIT_4_done = _with_peer(TCPTransport._check_XMIT_4_done,
                                                 lambda intent: getattr(intent, "socket", None), _target_of)
    original_init = TCPIncoming_Common.__init__
    if not getattr(original_init, "_atomr_peer", False):
        def __init__(self: Any, rmtAddr: Any, baseSock: Any, *args: Any, **kw: Any) -> None:
            original_init(self, rmtAddr, baseSock, *args, **kw)
            _peer_of(baseSock)  # just accepted: remember who is on the other end

        __init__._atomr_peer = True  # type: ignore[attr-defined]
        TCPIncoming_Common.__init__ = __init__


PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    import ctypes
    import multiprocessing
    import os
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return  # not Linux: the launcher watchdog still stops the node
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)  # the parent died between the fork and prctl: the signal will never come


def die_with_parent() -> None:
    from thespian.system import multiprocCommon

    original = multiprocCommon.startChild
    if getattr(original, "_atomr_pdeathsig", False):
        return

    def startChild(*args: Any, **kw: Any) -> Any:
        _set_parent_death_signal()
        return original(*args, **kw)

    startChild._atomr_pdeathsig = True  # type: ignore[attr-defined]
    startChild.__wrapped__ = original  # type: ignore[attr-defined]
    multiprocCommon.startChild = startChild


_manager: Any = None   # (pid, weakref) of this process's actor manager (or admin), once it exists


def _this_manager() -> Any:
    # A process forked from another (the logger from its admin) inherits the pair: not its manager.
    if _manager is None or _manager[0] != os.getpid():
        return None
    return _manager[1]()


def _remember_manager() -> None:
    from thespian.system.multiprocCommon import MultiProcReplicator

    original = MultiProcReplicator.init_replicator
    if getattr(original, "_atomr_manager", False):
        return

    def init_replicator(self: Any, *args: Any, **kw: Any) -> Any:
        global _manager
        _manager = (os.getpid(), weakref.ref(self))
        return original(self, *args, **kw)

    init_replicator._atomr_manager = True  # type: ignore[attr-defined]
    init_replicator.__wrapped__ = original  # type: ignore[attr-defined]
    MultiProcReplicator.init_replicator = init_replicator


class _ThisProcess:
    """What the wire's guards ask of the actor (or admin) of the process reading a frame."""

    def is_admin(self) -> bool:
        from thespian.system.admin.adminCore import AdminCore

        return isinstance(_this_manager(), AdminCore)

    def placed_elsewhere(self, address: Any) -> bool:
        """Is ``address`` a child this process created on another node (not one it forked itself)?"""
        manager = _this_manager()
        if manager is None or address is None:
            return False
        try:
            forked = [getattr(c, "childRealAddr", c.childAddr) for c in getattr(manager, "_child_procs", [])]
            return address in list(getattr(manager, "_children", [])) and address not in forked
        except Exception:  # noqa: BLE001 - an address that does not compare: not one of ours
            return False

    def awaits_child(self, instance: Any) -> bool:
        """Is this process's actor still waiting to learn where its child number ``instance`` was created?"""
        managed = getattr(getattr(_this_manager(), "_addrManager", None), "_managed", None)
        return (isinstance(instance, int) and not isinstance(instance, bool) and isinstance(managed, list)
                and 0 <= instance < len(managed) and managed[instance] is None)


THIS_PROCESS = _ThisProcess()


class _TurnSelector:
    """The selector ``TCPTransport`` makes for one pass of its loop (``_runWithExpiry``): it
    registers every socket, waits once and closes it, on every pass. ``selectors``' default
    (epoll) pays a system call to make it, one per socket and one to close, and a Python key
    object per socket; this one pays one ``poll`` call. It answers as ``selectors.PollSelector``
    does, and a closed descriptor raises EBADF as epoll's register would, which Thespian handles."""

    __slots__ = ("_events",)

    def __init__(self) -> None:
        self._events: dict[int, int] = {}   # fd -> selectors.EVENT_READ | EVENT_WRITE

    def register(self, fd: int, events: int) -> None:
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        self._events[fd] = self._events.get(fd, 0) | events

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        poller = select.poll()
        for fd, wanted in self._events.items():
            poller.register(fd, (select.POLLIN if wanted & selectors.EVENT_READ else 0)
                            | (select.POLLOUT if wanted & selectors.EVENT_WRITE else 0))
        wait = None if timeout is None else max(0, math.ceil(timeout * 1000))
        ready = []
        for fd, event in poller.poll(wait):
            if event & select.POLLNVAL:
                raise OSError(errno.EBADF, "a descriptor is not open")
            events = (selectors.EVENT_WRITE if event & ~select.POLLIN else 0) | (
                selectors.EVENT_READ if event & ~select.POLLOUT else 0)
            wanted = self._events[fd]
            ready.append((selectors.SelectorKey(fd, fd, wanted, None), events & wanted))
        return ready

    def close(self) -> None:
        self._events.clear()


class _TurnSelectors:
    """What ``TCPTransport`` finds under the name ``selectors``."""

    DefaultSelector = _TurnSelector
    EVENT_READ = selectors.EVENT_READ
    EVENT_WRITE = selectors.EVENT_WRITE


def install_serializer(serializer: Any) -> None:
    from thespian.system.transport import TCPTransport

    warning = check_version()
    if warning is not None:
        logging.getLogger("atomr.security").warning("%s", warning)
    _track_peers()
    die_with_parent()
    _remember_manager()
    serializer.peer_of_frame = frame_peer
    serializer.receiver = THIS_PROCESS
    serializer.refusals.emit = emit_after_this_step
    TCPTransport.serializer = serializer
    TCPTransport.selectors = _TurnSelectors
    quiet_thespian_log()


def current_serializer() -> Any:
    from thespian.system.transport import TCPTransport

    return TCPTransport.serializer


class DeferredLines:
    """Log lines held until Thespian's loop leaves its critical section.

    A frame is refused inside the transport's exclusive section, where a log record (itself
    a message to the node's logger process) is only queued, and a quiet admin would not
    send it before its next unrelated transmit. Thespian completes finished transmits just
    after that section (``_finished_intents``, outside it), so the lines ride along as one
    pseudo intent whose completion logs them.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.scheduled = False

    def add(self, line: str) -> bool:
        from thespian.system import logdirector

        transport = getattr(logdirector, "logTransport", None)
        finished = getattr(transport, "_finished_intents", None)
        if not isinstance(finished, list) or not getattr(transport, "_aTB_processing", False):
            return False  # not inside the loop's critical section (or not an actor): log now
        self.lines.append(line)
        if not self.scheduled:
            self.scheduled = True
            finished.append((self, None))
        return True

    def tx_done(self, _status: Any) -> None:
        lines, self.lines, self.scheduled = self.lines, [], False
        for line in lines:
            logging.getLogger("atomr.wire").warning("%s", line)


_deferred = DeferredLines()


def emit_after_this_step(line: str) -> None:
    if not _deferred.add(line):
        logging.getLogger("atomr.wire").warning("%s", line)


def _wrap_thesplog(module: Any, hook: Any) -> None:
    """Put ``hook(msg, args)`` in front of Thespian's internal log in ``module``; True drops the line."""
    original = module.thesplog
    if getattr(original, "_atomr_wire", False):
        return

    def thesplog(msg: str, *args: Any, **kw: Any) -> Any:
        try:
            if hook(msg, args):
                return None
        except Exception:  # noqa: BLE001 - never let our hook break Thespian's logging
            pass
        return original(msg, *args, **kw)

    thesplog._atomr_wire = True  # type: ignore[attr-defined]
    module.thesplog = thesplog


def _ours() -> Any:
    from actors.security.serializer import WireSerializer

    serializer = current_serializer()
    return serializer if isinstance(serializer, WireSerializer) else None


def _quiet_refusals(msg: Any, args: tuple) -> bool:
    """Drop Thespian's "OUCH! Error deserializing" report of a frame we refused.

    We have logged that refusal already (rate-limited, without contents); Thespian's line
    holds a traceback and whatever bytes followed the frame, for every frame.
    """
    serializer = _ours()
    return (isinstance(msg, str) and msg.startswith("OUCH!") and serializer is not None
            and len(args) > 1 and args[1] == serializer.refused_packet and serializer.take_refused_flag())


def _explain_refused_registration(msg: Any, args: tuple) -> bool:
    """A member whose registration the leader refuses says so in its own log, not only Thespian's."""
    from thespian.system.transport import SendStatus

    if isinstance(msg, str) and msg.startswith("Admin cannot register with convention") and len(args) >= 3 \
            and args[2] is SendStatus.BadPacket:
        serializer = _ours()
        if serializer is not None:
            mine = f"signs with key id {serializer.keyring.signing.key_id}"
            if not serializer.keyring.admits_peers:
                mine += " (this host's own key: set a cluster secret)"
            serializer.refusals.refused(str(args[0]), "registration refused", "", line=(
                f"the convention leader at {args[0]} refused this node's registration: it does not accept this "
                f"node's cluster key (this node {mine}); the leader's log says why"))
    return False


def quiet_thespian_log() -> None:
    from thespian.system.admin import convention
    from thespian.system.transport import TCPTransport

    _wrap_thesplog(TCPTransport, _quiet_refusals)
    _wrap_thesplog(convention, _explain_refused_registration)


WATCHED = object()   # listen_or_watch: one of the watched descriptors is readable


def listen_or_watch(endpoint: Any, fds: list[int], timeout_s: float) -> Any:
    """``endpoint.listen(timeout_s)`` that returns WATCHED once one of ``fds`` is readable.

    ``endpoint`` is a private endpoint (``ActorSystem.private()``); its transport is its own,
    so the watch never affects another thread. Without watch support: a plain listen.
    """
    if isinstance(endpoint, InProcessEndpoint):
        return endpoint.listen(timeout_s, fds)
    base = getattr(endpoint, "_systemBase", None)
    transport = getattr(base, "transport", None)
    if base is None or transport is None or not hasattr(transport, "set_watch") or not hasattr(base, "_run_transport"):
        return endpoint.listen(timeout_s)
    deadline = time.monotonic() + timeout_s
    quiet = _idle_fds(transport)
    if quiet is not None and fds:
        # Nothing in the endpoint's own transport to do: wait on its sockets and ``fds`` with one
        # poll, and enter Thespian's loop (which builds a selector per pass) only for what it
        # must read. A streamed chunk then wakes its thread without a pass of that loop
        # (docs/performance.md, round 6: a quarter less CPU in the calling process).
        ready = _poll([*fds, *quiet], timeout_s)
        if ready and not ready & set(quiet):
            return WATCHED
        if not ready:
            return None
    # Imported here, past the poll above that serves a streamed chunk: not once per chunk.
    from thespian.actors import WatchMessage
    from thespian.system import isInternalActorSystemMessage
    from thespian.system.transport import ReceiveEnvelope

    transport.set_watch(list(fds))
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            response = base._run_transport(timedelta(seconds=remaining))
            if not isinstance(response, ReceiveEnvelope):
                return None
            if isinstance(response.message, WatchMessage):
                return WATCHED
            if not isInternalActorSystemMessage(response.message):
                return response.message
    finally:
        transport.set_watch([])


def _idle_fds(transport: Any) -> list[int] | None:
    """The descriptors a private endpoint's TCP transport waits on, when it has nothing else to do
    (no transmit in progress or queued, no envelope or wakeup pending); None otherwise."""
    try:
        if (transport._transmitIntents or transport._waitingTransmits or transport._incomingEnvelopes
                or transport._finished_intents or transport._aTB_queuedPendingTransmits
                or transport._pendingWakeups or transport._activeWakeups):
            return None
        fds = [transport.socket.fileno(), *(fd for fd in transport._incomingSockets if fd)]
        fds += [idle.socket.fileno() for idle in getattr(transport, "_openSockets", {}).values()]
    except (AttributeError, OSError):
        return None   # another Thespian: its own loop, as before
    return fds


def _poll(fds: list[int], timeout_s: float) -> set[int]:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    try:
        return {fd for fd, _ in poller.poll(max(0.0, timeout_s) * 1000.0)}
    except InterruptedError:
        return set()


class InProcessEndpoint:
    """One thread's endpoint of an in-process ``simpleSystemBase`` system, as a private endpoint of
    ``multiprocTCPBase`` behaves: its own address (replies to what it sends reach it alone), and a
    ``listen`` that waits up to its timeout. That system runs every actor in whichever thread
    calls it, so this endpoint runs the pending sends and due wakeups while it waits, under
    a lock of that system's (one thread runs its actors at a time)."""

    STEP_S = 0.002   # how often a waiting endpoint looks for due wakeups and sends from other threads
    _locks: ClassVar[weakref.WeakKeyDictionary[Any, threading.Lock]] = weakref.WeakKeyDictionary()
    _locks_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, system: Any) -> None:
        self._base = system._systemBase
        with self._locks_lock:
            self._lock = self._locks.setdefault(self._base, threading.Lock())
        with self._lock:
            self._private = self._base.external_clone()
        self._queue = self._private.my_instance.rcvq

    def tell(self, target: Any, message: Any) -> None:
        with self._lock:
            self._private.tell(target, message)
            self._base._runSends()

    def ask(self, target: Any, message: Any, timeout: float) -> Any:
        if not self._deliverable(target):
            return None   # at once, as multiprocTCPBase's ask when the transmit fails (an actor that exited)
        self.tell(target, message)
        return self.listen(timeout)

    def close(self) -> None:
        with self._lock:
            self._private.exit_context()   # its address no longer takes messages

    def _deliverable(self, target: Any) -> bool:
        with self._lock:
            known = self._base.actorRegistry.get(getattr(target, "actorAddressString", None))
        return known is not None and known.instance is not None

    def listen(self, timeout: float, fds: Sequence[int] = ()) -> Any:
        """The next message within ``timeout``, or None; WATCHED once one of ``fds`` is readable."""
        import queue

        from thespian.system import isInternalActorSystemMessage

        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            started = time.monotonic()
            with self._lock:
                self._base._runSends(max(0.0, min(self.STEP_S, deadline - started)) or None)
                try:
                    message = self._queue.get_nowait()
                except queue.Empty:
                    message = None
            if message is not None and not isInternalActorSystemMessage(message):
                return message
            now = time.monotonic()
            if fds and _poll(list(fds), 0.0):
                return WATCHED
            if now >= deadline:
                return None
            if message is None:
                pause = max(0.0, min(self.STEP_S - (now - started), deadline - now))
                if fds and _poll(list(fds), pause):
                    return WATCHED
                if not fds:
                    time.sleep(pause)
