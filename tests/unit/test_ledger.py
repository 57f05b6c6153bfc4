"""The spend ledger: SQLite rows, reports, seeds, start-time checks, and a writer that survives a full disk."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time

import pytest

from actors.core.budget import Budget
from actors.core.periods import parse_period
from actors.core.records import TerminalRecord
from actors.errors import ConfigError
from actors.ops.spend import format_report, parse_since, spend_ledger
from actors.runtime.ledger import LedgerWriter
from actors.runtime.ledger_store import LedgerStore, check_ledger, LedgerError, report, seed_for
from actors.settings.loader import parse_config

T0 = 1_800_000_000.0


def record(rid="r1", key="k1", team="", cost=0.001, charged=None, at=T0, deployment="d1", model="m1", **kw):
    base = dict(at_unix=at, request_id=rid, node="n1@127.0.0.1:1900", deployment=deployment, model=model,
                provider="openai", key=key, team=team, outcome="completed", error_kind="", status=None, attempts=1,
                streamed=False, input_tokens=10, cached_input_tokens=0, output_tokens=5, reasoning_tokens=0,
                usage_reported=cost is not None, charged_tokens=15, cost_usd=cost, latency_s=0.1, ttft_s=0.05,
                charged_usd=cost if charged is None else charged)
    base.update(kw)
    return TerminalRecord(**base)


def test_rows_are_written_in_one_transaction_and_reported_by_group_with_unknown_costs_apart(tmp_path):
    path = str(tmp_path / "ledger.db")
    store = LedgerStore(path)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.write([("s", record("a", key="k1", cost=0.002)), ("s", record("b", key="k1", cost=0.001)),
                 ("s", record("c", key="k2", cost=None, charged=0.004)),
                 ("s", record("old", key="k1", cost=5.0, at=T0 - 7200))])
    store.close()
    rows = {r["group"]: r for r in report(path, T0 - 3600, "key")}
    assert rows["k1"]["requests"] == 2 and rows["k1"]["cost_usd"] == pytest.approx(0.003)
    assert rows["k2"]["unknown_cost"] == 1 and rows["k2"]["cost_usd"] == 0 and rows["k2"]["charged_usd"] == 0.004
    text = format_report(list(rows.values()), "key", "title")
    assert "total" in text.splitlines()[-2] and "1 request(s) of unknown cost" in text
    assert text.splitlines()[-2].split()[1:4] == ["3", "0", "0.003000"]
    with pytest.raises(ValueError, match="by"):
        report(path, 0, "prompt")


def test_no_prompt_or_completion_text_is_stored(tmp_path):
    path = tmp_path / "ledger.db"
    assert {f.name for f in dataclasses.fields(TerminalRecord)}.isdisjoint({"text", "messages", "prompt"})
    store = LedgerStore(str(path))
    store.write([("s", record())])
    columns = [c[1] for c in store.db.execute("PRAGMA table_info(spend)")]
    store.close()
    assert not {"text", "messages", "prompt", "completion"} & set(columns)


def test_seeds_count_only_this_slot_this_period_and_this_budget_s_scope(tmp_path):
    path = str(tmp_path / "ledger.db")
    store = LedgerStore(path)
    store.write([("mine", record("a", key="k1", team="t", charged=0.25, at=T0 + 10)),
                 ("mine", record("b", key="k2", team="t", charged=0.5, at=T0 + 20)),
                 ("theirs", record("c", key="k1", charged=1.0, at=T0 + 30)),
                 ("mine", record("d", key="k1", charged=2.0, at=T0 - 10))])  # the previous hour
    store.close()
    hour = parse_period("1h")
    assert T0 % 3600 == 0
    k1, team = Budget("key", "k1", 1, hour), Budget("team", "t", 1, hour)
    seeds = seed_for(path, "mine", [k1, team, Budget("deployment", "d1", 1, hour)], T0 + 100)
    assert seeds == {k1.counter_key: 250_000_000, team.counter_key: 750_000_000,
                     Budget("deployment", "d1", 1, hour).counter_key: 750_000_000}
    assert seed_for(str(tmp_path / "none.db"), "mine", [k1], T0) == {}


def test_a_corrupted_ledger_is_refused_at_start_naming_the_file(tmp_path):
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    with pytest.raises(LedgerError, match=f"ledger {path} is corrupted"):
        check_ledger(str(path))
    cfg = parse_config({"deployments": [{"name": "d", "model": "d", "provider": "openai",
                                         "endpoint": "http://127.0.0.1:9/v1"}],
                        "node": {"ledger": str(path)}}, "node.yaml", credentials=False)
    with pytest.raises(ConfigError) as info:
        spend_ledger(cfg)
    assert str(info.value).startswith("node.ledger: ledger") and "corrupted" in str(info.value)


def test_an_unwritable_ledger_is_refused_at_start(tmp_path):
    with pytest.raises(LedgerError, match="does not exist"):
        check_ledger(str(tmp_path / "missing-dir" / "ledger.db"))
    with pytest.raises(LedgerError, match="is a directory"):
        check_ledger(str(tmp_path))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(LedgerError):
        check_ledger(str(blocker / "ledger.db"))
    fine = tmp_path / "ok.db"
    check_ledger(str(fine))
    check_ledger(str(fine))  # and again, once it exists


def wait(condition, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_a_full_disk_mid_run_degrades_the_ledger_logs_once_and_keeps_accepting(tmp_path, caplog):
    path = str(tmp_path / "ledger.db")
    # SQLite's page limit gives exactly the error a full disk does: "database or disk is full".
    writer = LedgerWriter(lambda: LedgerStore(path, max_pages=8), path, batch_interval_s=0.01)
    try:
        with caplog.at_level(logging.ERROR, logger="atomr.ledger"):
            writer.put("s", [record("first")])
            assert writer.flush() and writer.state().state == "ok" and writer.written == 1
            for batch in range(5):
                writer.put("s", [record(f"b{batch}-{i}", error_kind="x" * 2000) for i in range(20)])
                assert writer.flush()
        state = writer.state()
        assert state.state == "degraded" and state.dropped > 0 and "full" in state.error
        losses = [r for r in caplog.records if "degraded" in r.getMessage()]
        assert len(losses) == 1 and path in losses[0].getMessage()
        writer.put("s", [record("after")])  # still taken, never raises
        assert writer.flush()
    finally:
        writer.close()
    assert report(path, 0, "key")[0]["requests"] >= 1  # what was written before stays


def test_a_full_queue_drops_with_one_log_line_instead_of_blocking(tmp_path, caplog):
    path = str(tmp_path / "ledger.db")
    writer = LedgerWriter(lambda: LedgerStore(path), path, batch_interval_s=5.0, queue_limit=10)
    try:
        with caplog.at_level(logging.ERROR, logger="atomr.ledger"):
            writer.put("s", [record(f"r{i}") for i in range(25)])
            assert writer.dropped == 15 and writer.state().state == "degraded"
            writer.put("s", [record(f"more{i}") for i in range(30)])
        assert writer.dropped >= 35
        assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1
    finally:
        writer.close()
    assert report(path, 0, "key")[0]["requests"] == 55 - writer.dropped  # close flushed what was queued


def test_close_flushes_and_a_new_reader_sees_every_committed_row(tmp_path):
    path = str(tmp_path / "ledger.db")
    writer = LedgerWriter(lambda: LedgerStore(path), path, batch_interval_s=10.0)
    writer.put("s", [record(f"r{i}") for i in range(100)])
    writer.close()
    assert report(path, 0, "model")[0]["requests"] == 100


def test_retention_removes_old_rows(tmp_path):
    path = str(tmp_path / "ledger.db")
    store = LedgerStore(path)
    store.write([("s", record("old", at=time.time() - 10 * 86400)), ("s", record("new", at=time.time()))])
    store.close()
    writer = LedgerWriter(lambda: LedgerStore(path), path, batch_interval_s=0.01, retention_days=7)
    wait(lambda: LedgerStore(path).count() == 1)
    writer.close()


def test_since_accepts_durations_and_this_calendar_month():
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert parse_since("1h", now) == now - 3600 and parse_since("30d", now) == now - 30 * 86400
    assert time.gmtime(parse_since("1mo", now))[:3] == (2027, 1, 1)
    with pytest.raises(ConfigError, match="--since"):
        parse_since("yesterday", now)


def test_the_writer_survives_a_ledger_that_cannot_even_be_opened(tmp_path, caplog):
    def broken():
        raise sqlite3.OperationalError("unable to open database file")

    with caplog.at_level(logging.ERROR, logger="atomr.ledger"):
        writer = LedgerWriter(broken, "/nowhere/ledger.db", batch_interval_s=0.01)
        writer.put("s", [record()])
        assert writer.flush()
    assert writer.state().state == "degraded" and writer.dropped == 1
    writer.close()
