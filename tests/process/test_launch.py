"""launch.py as a user runs it: a node in the foreground, `ask` from another process, SIGTERM to stop."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import yaml

from actors.ops.procs import admin_pgid, pids_in_group, port_is_listening

from conftest import OutputLines, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_leader_serves_ask_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["node"]["admin_port"] = port
    config["node"]["log_file"] = str(tmp_path / "node.log")
    config["mock_provider"]["words_per_second"] = 200
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    node = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--convention", "leader", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    pgid = None
    try:
        lines = OutputLines(node)
        lines.wait_for(f"serving on admin port {port}")
        pgid = admin_pgid(port)
        assert pgid is not None and len(pids_in_group(pgid)) >= 4
        ask = subprocess.run([sys.executable, str(ROOT / "launch.py"), "ask", "--admin-port", str(port),
                              "--model", "demo", "--max-tokens", "8", "Say", "hello"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert ask.returncode == 0, ask.stderr
        first, summary = ask.stdout.strip().splitlines()
        assert first.startswith("You said: Say hello")
        assert "8 out tokens" in summary and "cost $" in summary and "finish stop" in summary
        status = subprocess.run([sys.executable, str(ROOT / "launch.py"), "status", "--admin-port", str(port)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert "demo[0]" in status.stdout and "completed=1" in status.stdout
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0
        lines.wait_for("stopped", timeout_s=5)
        assert pids_in_group(pgid) == []
        assert not port_is_listening(port)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(10)
        if pgid is not None and pids_in_group(pgid):
            import os
            os.killpg(pgid, signal.SIGKILL)


def test_ask_without_a_node_says_so():
    port = free_port()
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "ask", "--admin-port", str(port), "hi"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert f"no gateway node is listening on 127.0.0.1:{port}" in proc.stderr
    assert not port_is_listening(port)  # and it did not start a stray admin there


def test_launcher_stops_with_one_clear_message(tmp_path):
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(yaml.safe_dump({"deployments": [{"name": "d1", "model": "m", "provider": "openai", "endpoint": "https://api.openai.com/v1", "workers": -1}]}))
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", str(cfg), "--admin-port", "29998"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"configuration error: {cfg}: deployments[0].workers: must be >= 1, got -1"
    assert proc.stdout == ""


# --- the node never outlives its launcher; the launcher owns its node and only its node -------

import contextlib  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402

from actors.ops.procs import admin_process, kill_group, process_start_ticks  # noqa: E402

from conftest import deployment, wait_for  # noqa: E402


def _config(tmp_path: Path, port: int, name: str = "solo") -> Path:
    config = {"node": {"admin_port": port, "name": name, "log_file": str(tmp_path / f"{name}.log")},
              "mock_provider": {"port": 0, "words_per_second": 200},
              "deployments": [{"name": "demo", "model": "demo", "provider": "openai_compatible",
                               "upstream_model": "mock-gpt", "endpoint": "mock", "workers": 2}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def _node(tmp_path: Path, port: int, name: str = "solo"):
    """launch.py in the foreground, as a user runs it; everything it left is killed at the end."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config", str(_config(tmp_path, port, name))],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = OutputLines(proc)
    pgid = None
    try:
        lines.wait_for(f"serving on admin port {port}")
        found = admin_process(port)
        assert found is not None
        pgid = found[2]
        yield proc, lines, found
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if pgid is not None and pids_in_group(pgid):
            kill_group(pgid)


def _ask(port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), "ask", "--admin-port", str(port), "--max-tokens",
                           "3", "hi"], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_a_sigkilled_launcher_takes_its_node_with_it(tmp_path):
    port = free_port()
    with _node(tmp_path, port) as (proc, _, (admin, _ticks, pgid)):
        assert len(pids_in_group(pgid)) >= 5 and _ask(port).returncode == 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The watchdog checks every 0.5 s; its group kill frees every port at once.
        wait_for(lambda: not pids_in_group(pgid), timeout_s=10, message="every process of the node to exit")
        assert not port_is_listening(port)
    log = (tmp_path / "solo.log").read_text()
    assert f"the node's launcher (pid {proc.pid}) is gone: stopping this node (process group {pgid})" in log


def test_stop_by_admin_port_stops_a_node_whose_launcher_cannot(tmp_path):
    port = free_port()
    with _node(tmp_path, port) as (proc, _, (admin, _ticks, pgid)):
        proc.send_signal(signal.SIGSTOP)  # a frozen launcher: alive (the watchdog waits), but it will not stop it
        try:
            stop = subprocess.run([sys.executable, str(ROOT / "launch.py"), "stop", "--admin-port", str(port)],
                                  capture_output=True, text=True, timeout=90, cwd=ROOT)
            assert stop.returncode == 0, stop.stderr
            assert f"stopping node solo (admin pid {admin}, process group {pgid})" in stop.stdout
            assert pids_in_group(pgid) == [] and not port_is_listening(port)
        finally:
            proc.send_signal(signal.SIGCONT)


def test_stop_refuses_what_is_not_a_node(tmp_path):
    port = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        stop = subprocess.run([sys.executable, str(ROOT / "launch.py"), "stop", "--admin-port", str(port)],
                              capture_output=True, text=True, timeout=90, cwd=ROOT)
        assert stop.returncode == 1
        assert "did not answer as an atomr node" in stop.stderr and "not stopping it" in stop.stderr
        assert port_is_listening(port)  # it is still there: nothing was signalled


def test_a_dead_admin_ends_the_launcher_with_a_clear_message(tmp_path):
    port = free_port()
    with _node(tmp_path, port) as (proc, lines, (admin, _ticks, pgid)):
        os.kill(admin, signal.SIGKILL)
        assert proc.wait(timeout=30) == 1
        lines.wait_for(f"error: the node's admin process (pid {admin}) died; stopping what is left of node solo",
                       timeout_s=5)
        wait_for(lambda: not pids_in_group(pgid), timeout_s=10, message="the rest of the node to exit")
        assert not port_is_listening(port)
    assert "no cluster secret" not in "".join(lines.seen)


def test_a_stale_launcher_never_stops_a_newer_node_on_its_port(tmp_path, gateway, mock):
    """Node A's processes die under it; B starts on the same port; A's stop must leave B alone."""
    from actors.settings.loader import parse_config
    from actors.ops.system import start_node

    port = free_port()
    config = parse_config({"node": {"admin_port": port, "name": "a"},
                           "deployments": [{"name": "demo", "model": "demo", "provider": "openai_compatible",
                                            "upstream_model": "mock-gpt", "endpoint": mock.url + "/v1",
                                            "workers": 1}]}, "<stale>")
    stale = start_node(config, log_file=str(tmp_path / "a.log"), console_log=False)
    try:
        os.killpg(stale.pgid, signal.SIGKILL)
        wait_for(lambda: not pids_in_group(stale.pgid) and not port_is_listening(port), timeout_s=10,
                 message="node A to be gone")
        with _node(tmp_path, port, "b") as (_, _, (b_admin, b_ticks, b_pgid)):
            assert not stale.owns_port()
            stale.stop(kill_after_s=1)
            assert process_start_ticks(b_admin) == b_ticks and pids_in_group(b_pgid)
            ask = _ask(port)
            assert ask.returncode == 0 and ask.stdout.startswith("You said: hi"), ask.stderr
    finally:
        stale.stop(kill_after_s=1)


def test_ask_prints_what_it_knows_about_usage():
    sys.path.insert(0, str(ROOT))
    import launch
    from actors.types import Completed, Usage

    known = Completed("r", "hi", "stop", Usage(5, 3), deployment="d", latency_s=0.01, charged_tokens=8)
    assert "[d: 5 in / 3 out tokens," in launch._summary(known)
    unknown = Completed("r", "hi", "stop", Usage(reported=False), deployment="d", latency_s=0.01, charged_tokens=71)
    summary = launch._summary(unknown)
    assert "usage not reported, 71 tokens charged by estimate" in summary and "0 in / 0 out" not in summary


def test_an_error_after_partial_text_starts_on_its_own_line(tmp_path):
    port = free_port()
    with _node(tmp_path, port):
        ask = subprocess.run([sys.executable, str(ROOT / "launch.py"), "ask", "--admin-port", str(port),
                              "--max-tokens", "20", "[[mock error_after=3]] hi"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert ask.returncode == 1
        assert ask.stdout.endswith("\n") and ask.stdout.strip(), ask.stdout  # the partial text, then a newline
        assert ask.stderr.startswith("error: "), ask.stderr


def test_workers_die_with_their_engine(gateway, mock):
    """PR_SET_PDEATHSIG in every actor process: a SIGKILLed engine leaves no orphaned worker,
    even a frozen one that could not notice by itself."""
    from actors.ops.procs import listening_pids, parent_pid

    node, client = gateway([deployment(mock.url, "d1", workers=3, worker_processes=3)])
    engine_port = client.routes("d1")[0].engine.addressDetails.sockname[1]
    engine = next(pid for pid in listening_pids(engine_port) if parent_pid(pid) not in listening_pids(engine_port))
    workers = [pid for pid in pids_in_group(node.pgid) if parent_pid(pid) == engine]
    assert len(workers) == 3
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    os.kill(engine, signal.SIGKILL)
    wait_for(lambda: not [pid for pid in workers if process_start_ticks(pid) is not None], timeout_s=10,
             message="the engine's workers to exit with it")


def test_the_demo_runs_end_to_end_on_the_ports_it_is_given(tmp_path):
    port, http_port = free_port(), free_port()
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["mock_provider"]["words_per_second"] = 500   # the demo streams for the eye; the test need not wait
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    demo = subprocess.run([sys.executable, str(ROOT / "launch.py"), "demo", "--config", str(path), "--admin-port",
                           str(port), "--http-port", str(http_port)], capture_output=True, text=True, timeout=180,
                          cwd=ROOT)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"POST http://127.0.0.1:{http_port}/v1/chat/completions -> 200" in demo.stdout, demo.stdout
    assert "demo finished; node stopped" in demo.stdout
    assert not port_is_listening(port) and not port_is_listening(http_port)
