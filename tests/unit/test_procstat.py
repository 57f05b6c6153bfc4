"""The one /proc/<pid>/stat reader (actors/core/procstat.py): fields after the last ')', one zombie rule."""

from __future__ import annotations

import os

from actors.core.procstat import group_members, live_stat, parse_stat, read_stat


def _stat(pid: int, comm: str, state: str, ppid: int, pgrp: int, start: int) -> str:
    rest = [state, str(ppid), str(pgrp)] + ["0"] * 16 + [str(start)] + ["0"] * 30
    return f"{pid} ({comm}) " + " ".join(rest) + "\n"


def write(root, pid: int, **fields) -> None:
    (root / str(pid)).mkdir()
    (root / str(pid) / "stat").write_text(_stat(pid, **fields))


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields():
    stat = parse_stat(42, _stat(42, comm="a) (b c)", state="S", ppid=7, pgrp=5, start=9001))
    assert (stat.state, stat.ppid, stat.pgrp, stat.start_ticks) == ("S", 7, 5, 9001) and stat.alive
    assert parse_stat(42, "42 (x) S 1 2") is None          # truncated: not a stat line
    assert parse_stat(42, _stat(42, "x", "S", 1, 2, 3).replace(" 1 2 ", " one 2 ", 1)) is None


def test_zombies_and_dead_processes_are_not_alive_everywhere(tmp_path):
    write(tmp_path, 10, comm="admin", state="S", ppid=1, pgrp=10, start=100)
    write(tmp_path, 11, comm="worker", state="Z", ppid=10, pgrp=10, start=101)
    write(tmp_path, 12, comm="worker", state="X", ppid=10, pgrp=10, start=102)
    write(tmp_path, 13, comm="engine", state="R", ppid=10, pgrp=10, start=103)
    write(tmp_path, 14, comm="other", state="S", ppid=1, pgrp=14, start=104)
    (tmp_path / "self").mkdir()                              # not a pid: skipped
    proc = str(tmp_path)
    assert read_stat(11, proc).state == "Z" and live_stat(11, proc) is None and live_stat(12, proc) is None
    assert live_stat(13, proc).ppid == 10 and read_stat(99, proc) is None
    assert sorted(group_members(10, proc)) == [10, 13]


def test_this_process_reads_as_alive_with_its_real_parent():
    me = live_stat(os.getpid())
    assert me is not None and me.ppid == os.getppid() and me.pgrp == os.getpgid(0)
    assert os.getpid() in group_members(os.getpgid(0))


def test_exactly_twenty_fields_after_the_name_are_enough_and_the_pid_is_the_one_asked(tmp_path):
    text = "42 (x) S 7 5 " + " ".join(["0"] * 16) + " 9001"
    stat = parse_stat(42, text)
    assert stat is not None and stat.start_ticks == 9001 and stat.pid == 42
    assert parse_stat(42, text.rsplit(" ", 1)[0]) is None           # nineteen: not a stat line
    write(tmp_path, 77, comm="w", state="R", ppid=1, pgrp=77, start=5)
    assert read_stat(77, str(tmp_path)).pid == 77
