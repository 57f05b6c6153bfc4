"""The mutation run's figures per module of actors/core, as a markdown table.

Reads mutmut's results in ``mutants/`` (after ``mutmut run``; see docs/architecture.md, "How
the core is tested"). Killed counts timeouts, as mutmut does; "not run" are mutants the run
did not reach; "no tests" are mutants no unit test reaches (neither is in "tested").

    python bench/mutation_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

from mutmut.stats import status_by_exit_code


def main() -> None:
    rows, total = [], [0] * 7
    for meta in sorted(Path("mutants/actors/core").glob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        if not codes:
            continue
        status = [status_by_exit_code[code] for code in codes]
        timeouts = status.count("timeout")
        killed = status.count("killed") + timeouts
        untested = status.count("no tests") + status.count("not checked")
        row = [len(status), len(status) - untested, killed, timeouts, status.count("survived"),
               status.count("no tests"), status.count("not checked")]
        rows.append((meta.name.removesuffix(".py.meta"), row))
        total = [a + b for a, b in zip(total, row)]
    print("| module | mutants | tested | killed (of which timeouts) | survived | killed % | no tests | not run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (n, tested, killed, timeouts, survived, no_tests, not_run) in rows + [("**all**", total)]:
        share = f"{100 * killed / tested:.1f}" if tested else "-"
        print(f"| {name} | {n} | {tested} | {killed} ({timeouts}) | {survived} | {share} | {no_tests} | {not_run} |")


if __name__ == "__main__":
    main()
