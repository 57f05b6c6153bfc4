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
    assert proc.stderr.strip() == f"configuration error: {cfg}: deployments[0]: workers and replicas must be >= 1"
    assert proc.stdout == ""
