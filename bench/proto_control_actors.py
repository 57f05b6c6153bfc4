"""Actors for bench/proto_control.py (imported by the node's processes; bench/ is on their path).

Two shapes of the control path, each with a stand-in engine that decides the terminal and a
worker that makes the call (or answers at once):

- ``MsgEngine`` / ``MsgWorker``: today's: InferenceRequest, Dispatch, WorkerResult and
  Completed as Thespian messages on the node's signed wire (4 per non-streamed call).
- ``ChannelEngine`` / ``ChannelWorker``: the same conversation as signed frames on
  persistent loopback sockets: the caller's connection to the engine, the engine's to each
  worker; both actors are woken by Thespian only when a socket they watch is readable
  (``ThespianWatch``), so Thespian's loop runs once per wake-up, not per message sent.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from thespian.actors import Actor, ThespianWatch, WatchMessage

from actors.core.frames import FrameCodec, FrameDecoder
from actors.runtime.protocol.work import Dispatch, WorkerResult
from actors.security.keys import KeyRing, WireKey
from actors.types import Completed, InferenceRequest, Usage

SECRET = "proto-control-secret-0123456789abcdef"


def _codec() -> FrameCodec:
    return FrameCodec(KeyRing([WireKey("proto", SECRET)], "proto"))


class _Caller:
    """The worker's one HTTP call (non-streamed) to the mock, or none."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.session = None
        if url:
            import requests

            self.session = requests.Session()
            self.session.trust_env = False

    def call(self, messages: Any, max_tokens: int) -> tuple[str, int, int]:
        if self.session is None:
            return "w0 w1 ", 8, 2
        r = self.session.post(self.url + "/v1/chat/completions",
                              json={"model": "mock-gpt", "messages": messages, "max_tokens": max_tokens}, timeout=30)
        doc = r.json()
        return doc["choices"][0]["message"]["content"], doc["usage"]["prompt_tokens"], doc["usage"]["completion_tokens"]


class MsgWorker(Actor):
    caller: _Caller | None = None

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, tuple) and msg[0] == "init":
            self.caller = _Caller(msg[1])
            self.send(sender, ("pid", os.getpid()))
        elif isinstance(msg, Dispatch):
            req = msg.request
            text, tin, tout = self.caller.call(req.messages, req.params.get("max_tokens", 8))
            self.send(sender, WorkerResult(req.request_id, msg.attempt, 0, text=text, finish_reason="stop",
                                           usage=Usage(tin, tout)))


class MsgEngine(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.workers: list[Any] = []
        self.next = 0
        self.waiting: dict[str, Any] = {}

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, tuple) and msg[0] == "init":
            _, url, n = msg
            self.workers = [self.createActor(MsgWorker) for _ in range(n)]
            self.pending_init = (sender, n, [])
            for w in self.workers:
                self.send(w, ("init", url))
        elif isinstance(msg, tuple) and msg[0] == "pid":
            reply_to, n, pids = self.pending_init
            pids.append(msg[1])
            if len(pids) == n:
                self.send(reply_to, ("ready", os.getpid(), pids))
        elif isinstance(msg, InferenceRequest):
            self.waiting[msg.request_id] = sender
            self.next = (self.next + 1) % len(self.workers)
            self.send(self.workers[self.next], Dispatch(msg, sender, 1))
        elif isinstance(msg, WorkerResult):
            reply_to = self.waiting.pop(msg.request_id, None)
            if reply_to is not None:
                self.send(reply_to, Completed(msg.request_id, msg.text, msg.finish_reason or "stop", msg.usage))


class _Conn:
    __slots__ = ("decoder", "kind", "sock")

    def __init__(self, sock: socket.socket, decoder: FrameDecoder) -> None:
        self.sock, self.decoder, self.kind = sock, decoder, "?"


class ChannelEngine(Actor):
    """Requests arrive as frames on callers' connections; the engine dispatches them as frames to
    its workers' connections and writes each terminal frame itself."""

    def __init__(self) -> None:
        super().__init__()
        self.codec = _codec()
        self.listener: socket.socket | None = None
        self.conns: dict[int, _Conn] = {}
        self.workers: list[_Conn] = []
        self.next = 0
        self.waiting: dict[str, _Conn] = {}
        self.pending_init: Any = None
        self.wakeups = 0

    def _watch(self) -> Any:
        fds = [c.sock.fileno() for c in self.conns.values()]
        if self.listener is not None:
            fds.append(self.listener.fileno())
        return ThespianWatch(fds)

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        if isinstance(msg, tuple) and msg[0] == "init":
            _, url, n = msg
            self.listener = socket.socket()
            self.listener.bind(("127.0.0.1", 0))
            self.listener.listen(64)
            self.listener.setblocking(False)
            port = self.listener.getsockname()[1]
            self.pending_init = (sender, n, [])
            for _ in range(n):
                self.send(self.createActor(ChannelWorker), ("init", url, port))
        elif isinstance(msg, tuple) and msg[0] == "pid":
            reply_to, n, pids = self.pending_init
            pids.append(msg[1])
            if len(pids) == n:
                self.send(reply_to, ("ready", os.getpid(), pids, self.listener.getsockname()[1]))
        elif isinstance(msg, tuple) and msg[0] == "wakeups":
            self.send(sender, ("wakeups", self.wakeups))
        elif isinstance(msg, WatchMessage):
            self.wakeups += 1
            for fd in msg.ready:
                if self.listener is not None and fd == self.listener.fileno():
                    self._accept()
                elif fd in self.conns:
                    self._read(self.conns[fd])
        return self._watch()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[sock.fileno()] = _Conn(sock, FrameDecoder(self.codec))

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.conns.pop(conn.sock.fileno(), None)
            conn.sock.close()
            return
        out: dict[_Conn, list[bytes]] = {}
        for body in conn.decoder.feed(data):
            if "hello" in body:
                conn.kind = body["hello"]
                if conn.kind == "worker":
                    self.workers.append(conn)
            elif "q" in body:        # a request: the engine's decision (here: the next worker)
                self.waiting[body["q"]] = conn
                self.next = (self.next + 1) % len(self.workers)
                worker = self.workers[self.next]
                out.setdefault(worker, []).append(self.codec.encode({"d": body["q"], "m": body["m"], "n": body["n"]}))
            elif "res" in body:      # an attempt's result: the engine writes the one terminal
                caller = self.waiting.pop(body["res"], None)
                if caller is not None:
                    out.setdefault(caller, []).append(self.codec.encode(
                        {"t": body["res"], "text": body["text"], "finish": "stop", "usage": body["usage"]}))
        for target, frames in out.items():
            target.sock.setblocking(True)
            target.sock.sendall(b"".join(frames))
            target.sock.setblocking(False)


class ChannelWorker(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.codec = _codec()
        self.sock: socket.socket | None = None
        self.decoder = FrameDecoder(self.codec)
        self.caller: _Caller | None = None

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        if isinstance(msg, tuple) and msg[0] == "init":
            _, url, port = msg
            self.caller = _Caller(url)
            self.sock = socket.create_connection(("127.0.0.1", port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(self.codec.encode({"hello": "worker"}))
            self.send(sender, ("pid", os.getpid()))
        elif isinstance(msg, WatchMessage) and self.sock is not None:
            data = self.sock.recv(1 << 16)
            if not data:
                self.sock.close()
                self.sock = None
                return None
            frames = []
            for body in self.decoder.feed(data):
                text, tin, tout = self.caller.call(body["m"], body["n"])
                frames.append(self.codec.encode({"res": body["d"], "text": text, "usage": [tin, tout]}))
            if frames:
                self.sock.sendall(b"".join(frames))
        return ThespianWatch([self.sock.fileno()]) if self.sock is not None else None
