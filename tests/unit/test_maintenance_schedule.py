"""Maintenance: the date-driven plan, the flags, and runs on real database files."""

import datetime
import sqlite3

import pytest

from relay.ops.maintenance import (
    IntegrityFailure,
    Limits,
    Maintenance,
    Plan,
    scheduled_plan,
)
from relay.ops.maintenance_command import build_parser, choose_plan
from relay.storage.lock import DatabaseLock
from relay.storage.migrate import migrate


@pytest.mark.parametrize(
    ("day", "steps"),
    [
        ("2025-12-01", ["integrity_check", "REINDEX", "ANALYZE", "VACUUM"]),
        ("2025-12-08", ["integrity_check", "ANALYZE", "VACUUM"]),
        ("2026-01-01", ["REINDEX", "ANALYZE"]),
        ("2025-12-10", ["ANALYZE"]),
        ("2025-12-14", ["ANALYZE"]),
    ],
)
def test_schedule_by_date(day, steps):
    assert scheduled_plan(datetime.date.fromisoformat(day)).steps == steps


def plan_for(*arguments: str) -> tuple[Plan, str]:
    return choose_plan(build_parser().parse_args(list(arguments)))


def test_flags_replace_the_schedule():
    plan, reason = plan_for("--vacuum", "--date", "2025-12-01")
    assert plan.steps == ["VACUUM"]
    assert plan.forced
    assert reason == "steps asked for"


def test_all_runs_every_step():
    plan, _ = plan_for("--all")
    assert plan.steps == ["integrity_check", "REINDEX", "ANALYZE", "VACUUM"]


def test_no_arguments_follow_today():
    plan, reason = plan_for()
    today = datetime.datetime.now(datetime.UTC).date()
    assert plan == scheduled_plan(today)
    assert not plan.forced
    assert today.isoformat() in reason


def test_invalid_date_is_rejected(capsys):
    with pytest.raises(SystemExit):
        plan_for("--date", "2025-13-01")
    assert "invalid date '2025-13-01': expected YYYY-MM-DD" in capsys.readouterr().err


def make_database(path, *, incremental: bool, rows: int = 2_000):
    connection = sqlite3.connect(path)
    if incremental:
        connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.close()
    migrate(path)
    connection = sqlite3.connect(path)
    with connection:
        connection.executemany(
            "INSERT INTO mailbox_messages (recipient_id, sender_id, message_id, "
            "received_at_ms, expires_at_ms, payload, trace_id) "
            "VALUES ('bob', 'alice', ?, 1, 2, ?, 't')",
            [(str(n), b"p" * 1_000) for n in range(rows)],
        )
    with connection:
        connection.execute("DELETE FROM mailbox_messages WHERE seq % 2 = 0")
    connection.close()
    return path


def pragma(path, name: str) -> int:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        connection.close()


def run(path, plan: Plan, **limits):
    lines: list[str] = []
    maintenance = Maintenance(path, Limits(**limits), lines.append)
    try:
        outcome = maintenance.run(plan)
    finally:
        maintenance.close()
    return outcome, lines


def test_offline_vacuum_switches_to_incremental(tmp_path):
    path = make_database(tmp_path / "relay.db", incremental=False)
    assert pragma(path, "auto_vacuum") == 0
    size_before = path.stat().st_size
    outcome, lines = run(path, Plan(vacuum=True))
    assert outcome.done == ["VACUUM"]
    assert "full VACUUM offline" in lines[0]
    assert pragma(path, "auto_vacuum") == 2
    assert pragma(path, "freelist_count") == 0
    assert path.stat().st_size < size_before


def test_vacuum_beside_relay_is_incremental(tmp_path):
    path = make_database(tmp_path / "relay.db", incremental=True)
    assert pragma(path, "freelist_count") > 0
    with DatabaseLock(path) as relay:
        relay.acquire(exclusive=False)
        outcome, lines = run(path, Plan(vacuum=True))
    assert outcome.done == ["VACUUM"]
    assert "incremental vacuum beside the running relay" in lines[0]
    assert pragma(path, "freelist_count") == 0


def test_large_vacuum_beside_relay_is_skipped(tmp_path):
    path = make_database(tmp_path / "relay.db", incremental=False)
    with DatabaseLock(path) as relay:
        relay.acquire(exclusive=False)
        outcome, lines = run(path, Plan(vacuum=True), online_vacuum_max_bytes=1)
    assert outcome.skipped == ["VACUUM"]
    assert "stop the relay and run `yaok-relay maintenance --vacuum`" in lines[0]
    assert pragma(path, "auto_vacuum") == 0


def test_analyze_and_reindex_report(tmp_path):
    path = make_database(tmp_path / "relay.db", incremental=True)
    outcome, lines = run(path, Plan(reindex=True, analyze=True), analysis_limit=0)
    assert outcome.done == ["REINDEX", "ANALYZE"]
    assert lines[0].startswith("REINDEX: 4 indexes rebuilt")
    assert "sampling every row" in lines[1]
    assert lines[-1].startswith("finished in ")


def test_damaged_index_fails_integrity_check(tmp_path):
    path = make_database(tmp_path / "relay.db", incremental=True)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA writable_schema = ON")
    # Points the index at the table's own root page: the index no longer
    # matches the rows, as after a torn write.
    table_root = connection.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'mailbox_messages'"
    ).fetchone()[0]
    connection.execute(
        "UPDATE sqlite_master SET rootpage = ? "
        "WHERE name = 'mailbox_messages_by_expiry'",
        (table_root,),
    )
    connection.commit()
    connection.close()
    with pytest.raises(IntegrityFailure) as caught:
        run(path, Plan(integrity_check=True, vacuum=True))
    message = str(caught.value)
    assert message.startswith(f"integrity check failed for {path}")
    assert "\n" not in message
    assert "restore the latest backup" in message
