#!/usr/bin/env python3
"""The floor under a relayed token: one Thespian message against one signed frame on a socket.

Both send N small chunks from one process to another on loopback and report the CPU
each side spends per chunk (from /proc and os.times):
- thespian: an actor in a node sends N TokenChunks, one per handler (as a worker does), to
  this process's endpoint (the node's signed, allow-listed wire; pickle; an ack per message);
- frame: a child process writes N frames (4-byte length, JSON chunk, HMAC-SHA256 over it)
  to a TCP socket; this process reads, verifies and decodes them.

    python bench/bench_channel_floor.py [--n 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_streams import cpu_seconds, free_port, make_config, self_cpu  # noqa: E402

from actors.client import GatewayClient  # noqa: E402
from actors.ops.system import start_node  # noqa: E402
from actors.types import TokenChunk  # noqa: E402

KEY = os.urandom(32)


def thespian_floor(n: int) -> tuple[float, float]:
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    port = free_port()
    node = start_node(make_config(port, "http://127.0.0.1:9", workers=1), console_log=False,
                      log_file=f"/tmp/atomr-floor-{port}.log")
    client = GatewayClient(port, timeout_s=30)
    try:
        endpoint = client._endpoint()
        sender = client.asys.createActor("floor_actors.ChunkSender")
        pid = endpoint.ask(sender, "pid", 10)
        got = 0
        c_sender, c_self = cpu_seconds([pid]), self_cpu()
        endpoint.tell(sender, ("go", n))
        while got < n:
            msg = endpoint.listen(10)
            if msg is None:
                break
            got += isinstance(msg, TokenChunk)
        return (cpu_seconds([pid]) - c_sender) / max(1, got), (self_cpu() - c_self) / max(1, got)
    finally:
        client.close()
        node.stop()


def frame_floor(n: int) -> tuple[float, float]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for seq in range(n):
            body = json.dumps({"r": "r_floor", "s": seq, "t": "tok "}).encode()
            sock.sendall(struct.pack(">I", len(body)) + hmac.new(KEY, body, hashlib.sha256).digest() + body)
            if seq % 50 == 0:
                time.sleep(0.001)  # not one burst: the reader wakes per frame more often than not
        sock.close()
        os._exit(0)
    conn, _ = server.accept()
    c_self = self_cpu()
    got = 0
    file = conn.makefile("rb")
    while got < n:
        head = file.read(36)
        if len(head) < 36:
            break
        size, mac = struct.unpack(">I", head[:4])[0], head[4:]
        body = file.read(size)
        if not hmac.compare_digest(mac, hmac.new(KEY, body, hashlib.sha256).digest()):
            raise SystemExit("bad frame")
        doc = json.loads(body)
        TokenChunk(doc["r"], doc["s"], doc["t"])
        got += 1
    receiver = (self_cpu() - c_self) / max(1, got)
    os.waitpid(pid, 0)
    child = os.times()  # the child's CPU shows up in children_user/system once it is reaped
    return (child.children_user + child.children_system) / max(1, got), receiver


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    for name, run in (("thespian message", thespian_floor), ("signed frame", frame_floor)):
        sender, receiver = run(args.n)
        print(f"{name:17s} sender {sender * 1e6:7.0f} us/chunk, receiver {receiver * 1e6:7.0f} us/chunk")


if __name__ == "__main__":
    main()
