"""The front door one client cannot starve, and the input it refuses (issue 21).

A node on the mock provider with its HTTP listener beside it (actors/ops/http_process.py),
driven from outside as clients would: a thousand slow connections from one address while
another address calls through the openai SDK; bodies nested past any use; an absurd
``max_tokens``; an upstream that answers with a stack trace; ``--http`` on a config without
keys; and the listener itself, which must hold the wire key and never the node's capability.
"""

from __future__ import annotations

import dataclasses
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import openai
import pytest
import requests
import yaml

from actors.errors import ConfigError
from actors.ops.http_process import start_http
from actors.ops.procs import port_is_listening
from actors.security import trust
from actors.settings.loader import build
from actors.settings.schema import HttpConfig

from conftest import deployment, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-atomr-front-door-0123456789"
HI = [{"role": "user", "content": "hi"}]
NO_RETRY = {"max_retries": 0, "base_delay_s": 0.05, "max_delay_s": 0.2}


@pytest.fixture
def door(gateway, mock, tmp_path):
    """door(deployments=None, **http) -> (listener, node): the listener's log is tmp_path/http.log."""
    started = []

    def make(deployments=None, **http):
        deployments = deployments or [deployment(mock.url, "gpt", retry=NO_RETRY)]
        node, _ = gateway(deployments)
        section = {"listen": "127.0.0.1:0", "keys": [{"name": "team", "key": {"value": KEY}}], **http}
        handle = start_http(build(HttpConfig, section, "http"), node.admin_port,
                            models=[d["model"] for d in deployments], log_file=str(tmp_path / "http.log"))
        started.append(handle)
        return handle, node

    yield make
    for handle in started:
        handle.stop(timeout_s=10)


def oai(url: str, source: str = "127.0.0.1") -> openai.OpenAI:
    """The openai SDK, its connections made from ``source`` (another client address on loopback)."""
    http_client = httpx2.Client(transport=httpx2.HTTPTransport(local_address=source), timeout=30)
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, http_client=http_client)


def _status_of(data: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return int(match.group(1)) if match else None


class Trickler:
    """``count`` connections from one address, each sending a request's headers a byte at a time."""

    REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer " + KEY.encode()
               + b"\r\nContent-Type: application/json\r\nX-Padding: " + b"p" * 400 + b"\r\n\r\n")

    def __init__(self, port: int, count: int, every_s: float = 0.5) -> None:
        self.selector = selectors.DefaultSelector()
        self.sent: dict[socket.socket, int] = {}
        self.got: dict[socket.socket, bytes] = {}
        self.ended: dict[socket.socket, int | None] = {}   # socket -> the status it was answered with
        self.every_s = every_s
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            self.sent[sock], self.got[sock] = 0, b""
            self.selector.register(sock, selectors.EVENT_READ)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _end(self, sock: socket.socket) -> None:
        if sock in self.ended:
            return
        self.ended[sock] = _status_of(self.got[sock])
        self.selector.unregister(sock)
        sock.close()

    def _run(self) -> None:
        next_byte = time.monotonic()
        while not self.stop.is_set() and len(self.ended) < len(self.sent):
            for key, _ in self.selector.select(0.05):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.got[sock] += data
                else:
                    self._end(sock)
            if time.monotonic() >= next_byte:
                next_byte += self.every_s
                for sock, n in list(self.sent.items()):
                    if sock in self.ended or n >= len(self.REQUEST) - 4:  # never the final CRLF CRLF
                        continue
                    try:
                        sock.send(self.REQUEST[n:n + 1])
                        self.sent[sock] = n + 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._end(sock)

    def statuses(self) -> list[int | None]:
        return list(self.ended.values())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.sent:
            if sock not in self.ended:
                sock.close()


def test_a_thousand_slow_connections_from_one_address_do_not_starve_another_client(door, tmp_path):
    """Issue 21: 1,010 connections sending a header byte every 5 s got 0 of 6 other calls through."""
    handle, _ = door(header_timeout_s=10, read_timeout_s=30, max_connections_per_client=100)
    port = int(handle.url.rsplit(":", 1)[1])
    slow = Trickler(port, 1010)
    try:
        # Past the cap, connections are answered 429 at once; the hundred held trickle on.
        wait_for(lambda: len(slow.ended) >= 910, timeout_s=30, message="the connections over the cap refused")
        assert set(slow.statuses()) == {429} and len(slow.ended) == 910
        other = oai(handle.url, source="127.0.0.2")
        answers = [other.chat.completions.create(model="gpt", messages=HI, max_tokens=2) for _ in range(6)]
        # All six served while the hundred slow connections were still open and trickling.
        assert len(slow.ended) == 910 and all(a.choices[0].message.content for a in answers)
        wait_for(lambda: len(slow.ended) == 1010, timeout_s=30, message="the held connections timed out")
    finally:
        slow.close()
    statuses = slow.statuses()
    assert statuses.count(429) == 910 and statuses.count(408) == 100
    assert min(slow.sent[s] for s, status in slow.ended.items() if status == 408) >= 2  # they trickled first
    assert oai(handle.url, source="127.0.0.2").chat.completions.create(model="gpt", messages=HI, max_tokens=2)
    log = wait_for(lambda: "did not all arrive" in (t := (tmp_path / "http.log").read_text()) and t,
                   message="the timeouts in the listener's log")
    refused = log.count("refused a connection from 127.0.0.1: it has 100 open, http.max_connections_per_client "
                        "is 100; answered 429")
    timed_out = log.count("closed a connection from 127.0.0.1: its request's headers did not all arrive within "
                          "http.header_timeout_s (10s); answered 408")
    assert 1 <= refused <= 4 and 1 <= timed_out <= 4, log  # a line per 10 s, not one per connection


def test_a_body_that_trickles_past_its_deadline_is_answered_408(door):
    handle, _ = door(body_timeout_s=1, header_timeout_s=5)
    port = int(handle.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n{")
        data = b""
        for _ in range(200):  # a byte of the body every 50 ms: never idle, never done
            try:
                sock.settimeout(0.05)
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            except socket.timeout:
                sock.sendall(b" ")
            except OSError:
                break
    assert _status_of(data) == 408 and b"request_timeout" in data and b"body did not all arrive" in data


# --- what the front door refuses ---------------------------------------------------------------

def test_nested_json_and_absurd_values_are_400s_naming_the_field(door):
    handle, _ = door(keys=[{"name": "team", "key": {"value": KEY}, "limits": {"rpm": 100, "tpm": 100000}}])
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = handle.url + "/v1/chat/completions"
    deep = requests.post(url, data=b"[" * 100_000, headers=headers, timeout=30)
    assert deep.status_code == 400 and deep.json()["error"]["code"] == "invalid_json"
    assert "nests deeper than 64 levels" in deep.json()["error"]["message"]
    content: object = "hi"
    for _ in range(200):
        content = [content]
    body = {"model": "gpt", "messages": [{"role": "user", "content": content}]}
    nested = requests.post(url, json=body, headers=headers, timeout=30)
    assert nested.status_code == 400 and nested.json()["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        oai(handle.url).chat.completions.create(model="gpt", messages=HI, max_tokens=10**30)
    assert err.value.body["param"] == "max_tokens" and "at most 2097152" in err.value.body["message"]
    anthropic_body = {"model": "gpt", "max_tokens": 10**30, "messages": HI}
    refused = requests.post(handle.url + "/v1/messages", json=anthropic_body, headers=headers, timeout=30)
    assert refused.status_code == 400 and "max_tokens" in refused.json()["error"]["message"]
    # None of it was charged to the key's budget, and the next call goes through.
    assert oai(handle.url).chat.completions.create(model="gpt", messages=HI, max_tokens=2).choices


class _TracebackUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible server with a bad habit: a 500 whose body is its Python traceback."""

    BODY = ('Traceback (most recent call last):\n'
            '  File "/srv/inference/app/server.py", line 214, in chat_completions\n'
            '    result = engine.generate(request)\n'
            '  File "/usr/lib/python3.11/site-packages/vllm/engine.py", line 88, in generate\n'
            '    raise RuntimeError(f"CUDA out of memory loading {path}")\n'
            'RuntimeError: CUDA out of memory loading /srv/models/llama-70b/shard-3.safetensors\n')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = self.BODY.encode()
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_an_upstream_traceback_reaches_the_caller_as_its_message_only_and_the_log_whole(door, tmp_path):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _TracebackUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{upstream.server_address[1]}/v1"
        handle, _ = door([{"name": "gpt", "model": "gpt", "provider": "openai_compatible", "upstream_model": "llama",
                           "endpoint": url, "workers": 1, "retry": NO_RETRY,
                           "breaker": {"consecutive_failures": 50}}])
        with pytest.raises(openai.InternalServerError) as err:
            oai(handle.url).chat.completions.create(model="gpt", messages=HI, max_tokens=2)
    finally:
        upstream.shutdown()
    message = err.value.body["message"]
    assert err.value.status_code == 502
    assert "RuntimeError: CUDA out of memory loading [path]" in message and "stack trace removed" in message
    for leaked in ("Traceback", "File \"", "/srv/", "/usr/lib", "server.py", "engine.generate"):
        assert leaked not in message, leaked
    log = wait_for(lambda: "the whole body" in (t := (tmp_path / "n1.log").read_text()) and t,
                   message="the whole body in the node's log")
    assert "/srv/inference/app/server.py" in log and "shard-3.safetensors" in log


# --- listening without keys --------------------------------------------------------------------

def test_http_without_keys_is_refused_unless_the_config_says_auth_none_on_loopback(gateway, mock, tmp_path):
    node, _ = gateway([deployment(mock.url, "gpt")])
    with pytest.raises(ConfigError) as err:
        start_http(node.config, node.admin_port, listen="127.0.0.1:0")
    message = str(err.value)
    assert "needs an http section with its callers' keys" in message and "python launch.py key new" in message
    assert "auth: none" in message
    keyless = dataclasses.replace(node.config, http=HttpConfig(auth="none"))
    with pytest.raises(ConfigError, match="auth: 'none' is allowed on a loopback listener only"):
        start_http(keyless, node.admin_port, listen="0.0.0.0:0")
    handle = start_http(keyless, node.admin_port, listen="127.0.0.1:0")
    try:
        reply = requests.post(handle.url + "/v1/chat/completions", timeout=30,
                              json={"model": "gpt", "max_tokens": 2, "messages": HI})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    finally:
        handle.stop(timeout_s=10)
    # launch.py --http on a config without keys: refused before anything starts, saying how to add keys.
    admin, listen = free_port(), free_port()
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"node": {"admin_port": admin, "log_file": str(tmp_path / "launch.log")},
                                      "deployments": [deployment(mock.url, "gpt")]}))
    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", str(config), "--http",
                          f"127.0.0.1:{listen}"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "configuration error: http: --http 127.0.0.1:" in out.stderr
    assert "python launch.py key new" in out.stderr and "serving on admin port" not in out.stdout
    assert not port_is_listening(admin) and not port_is_listening(listen)


# --- the listener is a local caller --------------------------------------------------------------

def _memory_holds(pid: int, needle: bytes) -> bool:
    """Whether any readable mapping of ``pid`` holds ``needle`` (root reads another process's memory)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar]" in line or "[vsyscall]" in line:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except (OSError, ValueError, OverflowError):
                continue
    return False


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory takes root")
def test_the_listener_holds_the_wire_key_but_never_the_nodes_capability(door):
    """If it is compromised it can call models, not read credentials: on the wire it is a local caller."""
    handle, _ = door()
    capability = trust.capability()
    assert capability and _memory_holds(os.getpid(), capability.encode())  # the launcher does (the check works)
    assert oai(handle.url).chat.completions.create(model="gpt", messages=HI, max_tokens=2).choices
    environ = Path(f"/proc/{handle.pid}/environ").read_bytes() + Path(f"/proc/{handle.pid}/cmdline").read_bytes()
    assert capability.encode() not in environ
    assert not _memory_holds(handle.pid, capability.encode())
    node_tag_key = trust.current_node_key()._mac_key
    assert not _memory_holds(handle.pid, node_tag_key)
