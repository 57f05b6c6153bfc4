"""A process forked inside ``not_inherited`` holds none of what its parent had open when the block began."""

from __future__ import annotations

import json
import os

import pytest

from actors.ops.launcher_descriptors import not_inherited

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd")


def _fork_reporting(fds: list[int]) -> tuple[int, int]:
    """Fork a child that reports what each of ``fds`` is in it; (its pid, the report's read end).

    The report's pipe is made here: inside the block it is one of the block's own, as Thespian's
    sockets are."""
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(report_w, json.dumps([os.readlink(f"/proc/self/fd/{fd}") for fd in fds]).encode())
        finally:
            os._exit(0)
    os.close(report_w)
    return pid, report_r


def _report(forked: tuple[int, int]) -> list[str]:
    pid, report_r = forked
    try:
        return list(json.loads(os.read(report_r, 65536)))
    finally:
        os.close(report_r)
        os.waitpid(pid, 0)


def test_what_was_open_before_the_block_is_dev_null_in_the_child_and_untouched_outside_it(tmp_path) -> None:
    read_end, write_end = os.pipe()
    with open(tmp_path / "launcher-only", "w") as launcher_file:
        held = [read_end, write_end, launcher_file.fileno()]
        try:
            with not_inherited():
                forked = _fork_reporting(held)
            assert _report(forked) == [os.devnull] * 3
            outside = _report(_fork_reporting(held))
            assert outside == [os.readlink(f"/proc/self/fd/{fd}") for fd in held]
            assert outside[0].startswith("pipe:") and outside[2].endswith("launcher-only")
            os.write(write_end, b"x")   # the parent keeps them all
            assert os.read(read_end, 1) == b"x"
        finally:
            os.close(read_end)
            os.close(write_end)


def test_a_number_closed_and_reused_inside_the_block_stays_the_childs() -> None:
    """A descriptor closed inside the block may come back as a new one (Thespian's socket, say)."""
    kept_r, reused = os.pipe()
    other_r, other_w = os.pipe()
    try:
        with not_inherited():
            os.dup2(other_r, reused)   # closed meanwhile, and its number given to something new
            forked = _fork_reporting([kept_r, reused])
        assert _report(forked) == [os.devnull, os.readlink(f"/proc/self/fd/{other_r}")]
    finally:
        for fd in (kept_r, reused, other_r, other_w):
            os.close(fd)
