"""Routing across the cluster on two "hosts" (network namespaces joined by a veth pair).

Node ha (leader) in namespace A, node hb (member) in namespace B, each with its own mock
provider on its own loopback (so what each upstream counts is what that node sent):

- ``onlyb`` is deployed on hb only: ha's callers are served by it through the Python client,
  ``launch.py ask`` and ha's HTTP front door (OpenAI dialect, the real SDK), streams included,
  chunk-exact (count, order, text);
- ``both`` is deployed on each node, ha's copy failing (502) with a one-failure breaker: ha's
  callers are served by hb's copy, the attempt list naming both deployments and both nodes,
  and ha's upstream sees one request (the one that opened its circuit), hb's one per call.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import netns
import pytest
import yaml
from conftest import OutputLines, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
TAG = f"{os.getpid() % 10000}"
NS_A, NS_B = f"atxn{TAG}a", f"atxn{TAG}b"
VETH_A, VETH_B = f"ax{TAG}a", f"ax{TAG}b"
SUBNET = 10 + (os.getpid() + 97) % 200
IP_A, IP_B = f"10.81.{SUBNET}.1", f"10.81.{SUBNET}.2"
MOCK_PORT = 19561          # one per namespace: each host's own loopback
CALLS = 6

# Runs in namespace A, a caller of node ha only: one JSON document of what it saw.
CALLER = r"""
import json, sys, threading, time
import openai
from actors.client import GatewayClient
admin_port, http_port = int(sys.argv[1]), int(sys.argv[2])
out = {}
HI = [{"role": "user", "content": "hi there"}]
with GatewayClient(admin_port, timeout_s=30, route_ttl_s=0.2) as client:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:     # hb's engines reach ha with the heartbeats after it joined
        entries = client.routes("onlyb", refresh=True)
        if entries and {e.deployment for e in client.routes("both", refresh=True)} == {"both-a", "both-b"}:
            break
        time.sleep(0.2)
    out["routes"] = sorted((e.deployment, e.node, e.via is not None) for e in
                           client.routes("onlyb", refresh=True) + client.routes("both", refresh=True))
    served = [client.complete("onlyb", HI, max_tokens=5) for _ in range(CALLS)]
    out["onlyb"] = [(r.deployment, r.text, [(a.deployment, a.node, a.error_kind, a.sent) for a in r.attempt_log])
                    for r in served]
    both = [client.complete("both", HI, max_tokens=5) for _ in range(CALLS)]
    out["both"] = [(r.deployment, [(a.deployment, a.node, a.error_kind, a.status, a.sent) for a in r.attempt_log])
                   for r in both]
    with client.stream("onlyb", [{"role": "user", "content": "stream [[mock words=40 drip_ms=2]]"}]) as s:
        chunks = list(s)
    out["stream"] = {"seqs": [c.seq for c in chunks], "text": "".join(c.text for c in chunks),
                     "result_text": s.result.text, "result_chunks": s.result.chunks,
                     "deployment": s.result.deployment}
    # Cancel across nodes: a call held upstream on hb, cancelled by its caller once hb's engine holds it.
    def only_b_in_flight():
        for status in client.cluster_status(timeout_s=10).nodes:
            for engine in status.engines:
                if engine.deployment == "only-b":
                    return engine.in_flight + engine.queued
        return None
    held = client.stream("onlyb", [{"role": "user", "content": "hold [[mock hold=xnode]]"}], timeout_s=50)
    def cancel_when_held():
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not only_b_in_flight():
            time.sleep(0.1)
        held.cancel()
    canceller = threading.Thread(target=cancel_when_held)
    canceller.start()
    try:
        list(held)
        out["cancelled"] = "not cancelled"
    except Exception as exc:
        out["cancelled"] = type(exc).__name__
    canceller.join()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and only_b_in_flight():
        time.sleep(0.1)
    out["in_flight_after_cancel"] = only_b_in_flight()
    out["models"] = client.models()
sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="none", max_retries=0, timeout=30)
reply = sdk.chat.completions.create(model="onlyb", messages=HI, max_tokens=5)
out["http"] = reply.choices[0].message.content
deltas = [c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
    model="onlyb", messages=[{"role": "user", "content": "stream [[mock words=40 drip_ms=2]]"}], stream=True)
    if c.choices]
out["http_stream"] = {"text": "".join(deltas), "deltas": len([d for d in deltas if d])}
out["http_models"] = sorted(m.id for m in sdk.models.list())
print(json.dumps(out))
""".replace("CALLS", str(CALLS))


@pytest.fixture
def two_hosts():
    with netns.two_hosts(NS_A, NS_B, VETH_A, VETH_B, IP_A, IP_B):
        yield


def _deployment(name: str, model: str, path: str, **kw) -> dict:
    return {"name": name, "model": model, "provider": "openai", "upstream_model": "mock-gpt", "workers": 2,
            "endpoint": f"http://127.0.0.1:{MOCK_PORT}/{path}/v1", **kw}


def _config(tmp_path: Path, name: str, port: int, deployments: list[dict], http_port: int | None = None) -> Path:
    config = {"node": {"admin_port": port, "name": name, "log_file": str(tmp_path / f"{name}.log")},
              "cluster": {"heartbeat_s": 0.5, "failure_timeout_s": 3.0, "reregistration_s": 2},
              "deployments": deployments, "routing": {"cross_node": "prefer_local"}}
    if http_port is not None:
        config["http"] = {"listen": f"127.0.0.1:{http_port}", "auth": "none"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(ns: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _start(ns: str, *args: str) -> tuple[subprocess.Popen, OutputLines]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, OutputLines(proc)


def _mock_stats(ns: str) -> dict:
    got = _run(ns, "-c", f"import requests; print(requests.get('http://127.0.0.1:{MOCK_PORT}/_mock/stats', "
                         f"timeout=10).text)")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)["requests"]


def _hits(stats: dict, name: str) -> int:
    return sum(n for path, n in stats.items() if path.startswith(f"/{name}/"))


def _stop(procs: list) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        if proc is not None:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_a_model_on_another_node_serves_this_nodes_callers_and_a_dead_local_copy_moves_them_there(two_hosts, tmp_path):
    leader_port, member_port, http_port = free_port(), free_port(), free_port()
    a_deps = [_deployment("both-a", "both", "both-a/mock:status=502", retry={"max_retries": 0},
                          breaker={"consecutive_failures": 1, "open_s": 60})]
    b_deps = [_deployment("only-b", "onlyb", "only-b"), _deployment("both-b", "both", "both-b")]
    procs: list = []
    try:
        for ns in (NS_A, NS_B):
            mock, mock_out = _start(ns, "-m", "actors.testing.mock_provider", "--port", str(MOCK_PORT))
            procs.append(mock)
            mock_out.wait_for("mock provider listening on", timeout_s=30)
        leader, leader_out = _start(NS_A, str(ROOT / "launch.py"), "--convention", "leader", "--advertise", IP_A,
                                    "--config", str(_config(tmp_path, "ha", leader_port, a_deps, http_port)))
        procs.insert(0, leader)
        leader_out.wait_for(f"serving on admin port {leader_port}", timeout_s=120)
        member, member_out = _start(NS_B, str(ROOT / "launch.py"), "--convention", "member", "--leader",
                                    f"{IP_A}:{leader_port}", "--advertise", IP_B,
                                    "--config", str(_config(tmp_path, "hb", member_port, b_deps)))
        procs.insert(0, member)
        member_out.wait_for(f"serving on admin port {member_port}", timeout_s=120)

        caller = _run(NS_A, "-c", CALLER, str(leader_port), str(http_port), timeout_s=240)
        assert caller.returncode == 0, caller.stderr[-4000:]
        seen = json.loads(caller.stdout.strip().splitlines()[-1])

        # ha's routes list hb's engines, reached through ha's relay.
        assert ["only-b", "hb", True] in seen["routes"] and ["both-b", "hb", True] in seen["routes"], seen["routes"]
        assert ["both-a", "ha", False] in seen["routes"], seen["routes"]
        # A model only hb serves: every call served there, one attempt each, naming hb.
        for deployment, text, log in seen["onlyb"]:
            assert deployment == "only-b" and text.startswith("You said: hi"), (deployment, text)
            assert log == [["only-b", "hb", "", True]], log
        # ha's own copy of `both` fails (502) and opens its circuit: the first call tried it, then hb's;
        # the rest pass it over (not sent) and are served by hb. Each names both deployments and nodes.
        first, *rest = seen["both"]
        assert first == ["both-b", [["both-a", "ha", "server_error", 502, True], ["both-b", "hb", "", None, True]]], first
        for deployment, log in rest:
            assert deployment == "both-b" and log == [["both-a", "ha", "circuit_open", None, False],
                                                      ["both-b", "hb", "", None, True]], log
        # A stream across nodes: every chunk once, in order, the text whole.
        stream = seen["stream"]
        assert stream["deployment"] == "only-b" and stream["result_chunks"] == len(stream["seqs"]) > 1
        assert stream["seqs"] == list(range(len(stream["seqs"]))), stream["seqs"]
        assert stream["text"] == stream["result_text"] and len(stream["text"].split()) >= 40, stream
        # ha's HTTP front door (the OpenAI SDK), whole and streamed.
        assert seen["http"].startswith("You said: hi"), seen["http"]
        assert seen["http_stream"]["text"] == stream["text"] and seen["http_stream"]["deltas"] > 1, seen["http_stream"]
        # What ha lists is what a call through it reaches: its own models and hb's.
        assert seen["models"] == seen["http_models"] == ["both", "onlyb"], seen
        # Cancel: the caller's Cancel reached hb's engine through ha's relay, which ended the call there.
        assert seen["cancelled"] == "Cancelled" and seen["in_flight_after_cancel"] == 0, seen
        # launch.py ask through ha.
        ask = _run(NS_A, str(ROOT / "launch.py"), "ask", "--admin-port", str(leader_port), "--model", "onlyb",
                   "--max-tokens", "3", "hi")
        assert ask.returncode == 0 and ask.stdout.startswith("You said: hi"), ask.stderr[-2000:]

        # What each upstream received: ha's failing copy one request (then its circuit stayed open),
        # hb's one per call served there (CALLS + a stream + 2 HTTP + 1 ask on only-b).
        a_stats, b_stats = _mock_stats(NS_A), _mock_stats(NS_B)
        assert _hits(a_stats, "both-a") == 1, a_stats
        assert _hits(b_stats, "both-b") == CALLS, b_stats
        assert _hits(b_stats, "only-b") == CALLS + 5, b_stats     # and the one cancelled
    finally:
        _run(NS_B, "-c", f"import requests; requests.post('http://127.0.0.1:{MOCK_PORT}/_mock/release', "
                         f"json={{'name': 'xnode'}}, timeout=10)", timeout_s=30)
        _stop(procs)
    wait_for(lambda: not netns.ns_pids(NS_A) and not netns.ns_pids(NS_B), timeout_s=20,
             message="no process left in either host")
