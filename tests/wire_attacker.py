"""A process that holds the wire key but is not the node: it sends frames raw, the way an attacker would.

``python tests/wire_attacker.py SPEC`` (SPEC is JSON: ``host``, ``ports``, ``my_ip``, ``rows``: which
rows of the table to send, or "all", ``skip``: rows not to send, ``model``, ``sentinel_port``: a
registry to ask for its status once all is sent; ``main(spec)`` from a node's launcher with
``as_node`` signs as that node) sends
one sample of each row (tests/protocol_samples.py), signed with this process's wire key, to
every port, and listens on its own address, named as the sender and as every reply-to and
subscriber, for whatever the node sends back. It prints JSON: ``replies`` ("port module.Class" ->
"ACK", "ACK+DATAERR" or "closed"), ``received`` (the classes that came back) and ``secrets`` (how
many ``Secret`` values came back: what must always be 0), ``senders`` (class -> the ports it came from).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.core.credentials import Secret  # noqa: E402
from actors.security import trust, wire  # noqa: E402
from protocol_samples import address, samples  # noqa: E402


class Recorder:
    """A TCP listener that reads Thespian frames (``<length>>body``), acks them, and keeps what they were."""

    def __init__(self, host: str, serializer: wire.WireSerializer) -> None:
        self.serializer = serializer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.received: list[str] = []
        self.senders: dict[str, list[int]] = {}   # class -> the ports of the actors that sent one
        self.secrets = 0
        self.lock = threading.Lock()
        self.sentinel = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn, peer), daemon=True).start()

    def _read(self, conn: socket.socket, peer) -> None:
        from thespian.system.transport.streamBuffer import ackPacket

        buf = b""
        conn.settimeout(30)
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b">" in buf:
                    head, _, rest = buf.partition(b">")
                    size = int(head)
                    if len(rest) < size:
                        break
                    body, buf = rest[:size], rest[size:]
                    self._keep(body, peer)
                    ack = pickle.dumps(ackPacket)
                    conn.sendall(b"%d>" % len(ack) + ack)
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def _keep(self, body: bytes, peer) -> None:
        # Counting Secrets as the unpickler meets them: wherever one is nested, it is found.
        found = []
        original = Secret.__init__

        def counting(self_, value):
            found.append(1)
            original(self_, value)

        Secret.__init__ = counting
        try:
            envelope = self.serializer.loads(body, peer=peer)
        finally:
            Secret.__init__ = original
        name = "refused" if not isinstance(envelope, tuple) else \
            f"{type(envelope[1]).__module__}.{type(envelope[1]).__qualname__}"
        sockname = getattr(getattr(envelope[0], "addressDetails", None), "sockname", None) \
            if isinstance(envelope, tuple) else None
        with self.lock:
            self.received.append(name)
            if isinstance(sockname, tuple):
                self.senders.setdefault(name, []).append(sockname[1])
            self.secrets += len(found) + (1 if "SessionSnapshot" in name else 0)
        if getattr(envelope[1] if isinstance(envelope, tuple) else None, "token", None) == "sentinel":
            self.sentinel.set()


def send(host: str, port: int, body: bytes, timeout_s: float = 5.0) -> str:
    reply = b""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"%d>" % len(body) + body)
            while b"ACK" not in reply:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return "closed"
    return "ACK+DATAERR" if b"ACK+DATAERR" in reply else "ACK" if b"ACK" in reply else "closed"


def main(spec: dict) -> dict:
    """``spec["as_node"]``: sign as the node this process launched (its tag); else as a mere key holder."""
    keys = wire.installed_keyring() or wire.load_keyring()
    if spec.get("as_node"):
        signer = wire.WireSerializer(keys, enforce_table=lambda: False)   # tags with this process's node key
        spec = {**spec, "capability": trust.capability()}
    else:
        trust.set_capability(None)  # whatever this process inherited: it is not the node
        signer = wire.WireSerializer(keys, node_key=lambda: None, enforce_table=lambda: False)
    recorder = Recorder(spec["my_ip"], wire.WireSerializer(keys, node_key=lambda: None, enforce_table=lambda: False))
    me = address(spec["my_ip"], recorder.port)
    table = samples(me, capability=spec.get("capability", ""), model=spec.get("model", "d1"))
    rows = [tuple(r.split(":")) for r in spec["rows"]] if spec["rows"] != "all" else list(table)
    skip = {tuple(r.split(":")) for r in spec.get("skip", [])}
    replies = {}
    for port in spec["ports"]:
        for row in rows:
            if row in skip:
                continue
            replies[f"{port} {row[0]}:{row[1]}"] = send(spec["host"], port, signer.dumps((me, table[row])))
    # Whatever an accepted frame makes the node send back is on its way before the answer to a status
    # request sent after it all (a refused frame never makes anything); then a moment for stragglers.
    if spec.get("sentinel_port"):
        from actors.runtime.protocol import StatusRequest

        send(spec["host"], spec["sentinel_port"], signer.dumps((me, StatusRequest(token="sentinel"))))
        recorder.sentinel.wait(20)
    # ``until``: a class (or a list of them) whose arrival ends the wait at once (``listen_s`` then
    # bounds it). Answers from different actors come in any order: wait for each one awaited.
    deadline = time.monotonic() + spec.get("listen_s", 1.0)
    until = spec.get("until")
    awaited = [until] if isinstance(until, str) else list(until or [])
    while time.monotonic() < deadline:
        with recorder.lock:
            if awaited and all(any(name.endswith("." + cls) for name in recorder.received) for cls in awaited):
                break
        time.sleep(0.05)
    with recorder.lock:
        return {"replies": replies, "received": list(recorder.received), "senders": dict(recorder.senders),
                "secrets": recorder.secrets, "pid": os.getpid()}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
