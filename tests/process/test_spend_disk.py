"""A disk that fills up under a running node's ledger: it keeps serving, logs the loss once, says degraded.

Needs a small filesystem of its own: a tmpfs, mounted here when the tests run as root (else skipped;
tests/unit/test_ledger.py covers the same writer with SQLite's page limit).
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from actors.types import Completed

from conftest import deployment, wait_for

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory):
    """Take every free byte of the filesystem."""
    try:
        with open(directory / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


def test_a_full_disk_mid_run_keeps_the_node_serving_and_marks_the_ledger_degraded(gateway, mock, small_disk, tmp_path):
    ledger = small_disk / "ledger.db"
    node, client = gateway([deployment(mock.url, "d1")], node={"ledger": str(ledger)})
    assert isinstance(client.complete("d1", HI, max_tokens=2), Completed)
    wait_for(lambda: client.status().spend["ledger"]["written"] == 1, message="the first record on disk")
    fill(small_disk)
    for i in range(30):
        assert isinstance(client.complete("d1", HI + [{"role": "user", "content": "x" * 500}], max_tokens=2),
                          Completed), i
    wait_for(lambda: client.status().spend["ledger"]["state"] == "degraded", message="the ledger to say degraded")
    state = client.status().spend["ledger"]
    assert state["dropped"] > 0 and "full" in state["error"] and state["written"] >= 1
    assert isinstance(client.complete("d1", HI, max_tokens=2), Completed)  # still serving
    log = (tmp_path / "n1.log").read_text()
    assert log.count("degraded, spend records are being lost") == 1, log
