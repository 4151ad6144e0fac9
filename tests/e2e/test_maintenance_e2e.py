"""`yaok-relay maintenance` against a relay process serving real UDP traffic.

The sqlite3 tool checks what each run did to the file, as an operator would.
"""

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from relay.protocol.constants import AckStatus
from relay.storage.migrate import migrate
from tests.e2e.phone import UdpPhone
from tests.e2e.traffic import Collector, Sender

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs sqlite3"),
]

STEP_LINE = re.compile(r"^maintenance: (\w+): .* \(\d+\.\d+ s\)$", re.MULTILINE)

BUSY = {
    "RATE_MESSAGE_PER_USER": 1_000_000,
    "RATE_POLL_PER_USER": 1_000_000,
    "RATE_ACK_PER_USER": 1_000_000,
    "MAILBOX_MAX_PER_SENDER": 1_000_000,
    "MAILBOX_MAX_MESSAGES": 1_000_000,
}


def maintenance(relay, *arguments: str, database: Path | None = None):
    environment = {**os.environ, **relay.environment}
    if database is not None:
        arguments = (*arguments, "--database", str(database))
    return subprocess.run(
        [sys.executable, "-m", "relay", "maintenance", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def sqlite3_tool(database: Path, command: str) -> str:
    # .timeout makes the tool wait for the relay's commits instead of failing.
    run = subprocess.run(
        ["sqlite3", "-cmd", ".timeout 10000", str(database), command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def has_statistics(database: Path) -> bool:
    """Tell whether ANALYZE left rows in sqlite_stat1 (which .tables hides)."""
    names = sqlite3_tool(database, "SELECT name FROM sqlite_master").split()
    if "sqlite_stat1" not in names:
        return False
    return int(sqlite3_tool(database, "SELECT count(*) FROM sqlite_stat1")) > 0


def pragma(database: Path, name: str) -> int:
    return int(sqlite3_tool(database, f"PRAGMA {name}"))


class Traffic:
    """A sender and a collector phone busy on the relay for the test's length."""

    def __init__(self, relay, *, collecting: bool = True) -> None:
        self.alice = UdpPhone(relay.udp_address, relay.relay_public_key)
        self.bob = UdpPhone(relay.udp_address, relay.relay_public_key)
        self.alice.register()
        self.bob.register()
        self.sender = Sender(self.alice, self.bob.user_id, payload=b"p" * 2_000)
        self.collector = Collector(self.bob)
        self.collecting = collecting

    def __enter__(self) -> "Traffic":
        self.sender.start()
        if self.collecting:
            self.collector.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sender.stop()
        if self.collector.is_alive():
            self.collector.stop()
        self.alice.close()
        self.bob.close()


def wait_for_queued(traffic: Traffic, count: int, relay) -> None:
    assert relay.wait_for(lambda: len(traffic.sender.queued()) >= count, 20)


def assert_still_commits(traffic: Traffic, relay) -> None:
    """The relay answers QUEUED to messages sent after the run ended."""
    before = len(traffic.sender.queued())
    assert relay.wait_for(lambda: len(traffic.sender.queued()) >= before + 20, 20)
    status, health = relay.health()
    assert status == 200, health
    assert health["database_ok"] is True


def steps_run(output: str) -> list[str]:
    """Return the step names of the "NAME: detail (N.NN s)" lines, in order."""
    return [match[1] for match in STEP_LINE.finditer(output)]


def test_forced_steps_beside_serving_relay(relay_factory):
    relay = relay_factory(**BUSY)
    with Traffic(relay) as traffic:
        wait_for_queued(traffic, 300, relay)
        database = relay.database
        assert not has_statistics(database)
        for flag in ("--integrity-check", "--reindex", "--analyze", "--vacuum"):
            run = maintenance(relay, flag)
            assert run.returncode == 0, run.stderr
            assert "a relay is serving it" in run.stdout
        assert "integrity_check: ok" in maintenance(relay, "--integrity-check").stdout
        assert_still_commits(traffic, relay)
        answers = traffic.sender.statuses()
    assert answers <= {AckStatus.QUEUED, AckStatus.DELIVERED}
    assert sqlite3_tool(database, "PRAGMA integrity_check") == "ok"
    tables = sqlite3_tool(database, ".tables").split()
    for table in ("users", "mailbox_messages", "dedup_records"):
        assert table in tables
    assert has_statistics(database)
    assert relay.returncode == -999  # still running


def test_vacuum_reclaims_pages_while_relay_commits(relay_factory):
    relay = relay_factory(**BUSY)
    with Traffic(relay, collecting=False) as traffic:
        wait_for_queued(traffic, 800, relay)
        traffic.sender.stopping.set()
        traffic.sender.join(30)
        # The collector then acknowledges the whole backlog at once. Its
        # deleted rows leave more free pages than the next sender's small
        # messages take before the vacuum runs.
        traffic.collector.start()
        queued = traffic.sender.queued()
        assert relay.wait_for(lambda: traffic.collector.received >= queued, 30)
        assert relay.wait_for(lambda: pragma(relay.database, "freelist_count") > 0, 20)
        traffic.sender = Sender(traffic.alice, traffic.bob.user_id, max_seconds=20)
        traffic.sender.start()

        run = maintenance(relay, "--vacuum")
        assert run.returncode == 0, run.stderr
        assert "incremental vacuum beside the running relay" in run.stdout
        shrunk = re.search(r"file shorter by (\d+) pages", run.stdout)
        assert shrunk is not None
        assert int(shrunk[1]) > 0
        assert_still_commits(traffic, relay)
        answers = traffic.sender.statuses()
    assert answers <= {AckStatus.QUEUED, AckStatus.DELIVERED}
    assert pragma(relay.database, "auto_vacuum") == 2
    assert sqlite3_tool(relay.database, "PRAGMA integrity_check") == "ok"


def older_database(tmp_path) -> Path:
    """Create a migrated database made before incremental vacuum; return its folder."""
    directory = tmp_path / "older"
    directory.mkdir()
    connection = sqlite3.connect(directory / "yaok_relay.db")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.close()
    migrate(directory / "yaok_relay.db")
    return directory


def test_full_vacuum_of_older_file_beside_relay(relay_factory, tmp_path):
    directory = older_database(tmp_path)
    assert pragma(directory / "yaok_relay.db", "auto_vacuum") == 0  # NONE
    relay = relay_factory(directory, **BUSY)
    with Traffic(relay) as traffic:
        wait_for_queued(traffic, 300, relay)
        run = maintenance(relay, "--vacuum")
        assert run.returncode == 0, run.stderr
        assert "full VACUUM beside the running relay" in run.stdout
        assert_still_commits(traffic, relay)
        answers = traffic.sender.statuses()
    # A small file's VACUUM ends well within the relay's busy timeout.
    assert answers <= {AckStatus.QUEUED, AckStatus.DELIVERED}
    assert pragma(relay.database, "auto_vacuum") == 2
    assert sqlite3_tool(relay.database, "PRAGMA integrity_check") == "ok"


def test_large_vacuum_beside_relay_is_skipped(relay_factory, tmp_path):
    directory = older_database(tmp_path)
    relay = relay_factory(directory, MAINTENANCE_ONLINE_VACUUM_MAX_BYTES=0)
    forced = maintenance(relay, "--vacuum")
    assert forced.returncode == 3
    assert "VACUUM: skipped: a relay is serving" in forced.stdout
    scheduled = maintenance(relay, "--date", "2025-12-08")
    assert scheduled.returncode == 0
    assert "VACUUM: skipped" in scheduled.stdout
    assert pragma(relay.database, "auto_vacuum") == 0
    relay.stop()
    offline = maintenance(relay, "--vacuum")
    assert offline.returncode == 0, offline.stderr
    assert "full VACUUM offline" in offline.stdout
    assert pragma(relay.database, "auto_vacuum") == 2


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        ("2025-12-08", ["integrity_check", "ANALYZE", "VACUUM"]),  # a Monday
        ("2026-01-01", ["REINDEX", "ANALYZE"]),  # a Thursday, first of the month
        ("2025-12-10", ["ANALYZE"]),  # an ordinary Wednesday
        ("2025-12-01", ["integrity_check", "REINDEX", "ANALYZE", "VACUUM"]),
    ],
)
def test_schedule_by_date_beside_relay(relay_factory, day, expected):
    relay = relay_factory(**BUSY)
    with Traffic(relay) as traffic:
        wait_for_queued(traffic, 100, relay)
        sqlite3_tool(relay.database, "ANALYZE; DELETE FROM sqlite_stat1")
        run = maintenance(relay, "--date", day)
        assert run.returncode == 0, run.stderr
        assert_still_commits(traffic, relay)
    assert f"steps: {', '.join(expected)} (schedule for {day}" in run.stdout
    assert steps_run(run.stdout) == expected
    assert has_statistics(relay.database)
    assert sqlite3_tool(relay.database, "PRAGMA integrity_check") == "ok"


def test_dry_run_changes_nothing(relay):
    run = maintenance(relay, "--all", "--dry-run")
    assert run.returncode == 0, run.stderr
    assert "steps: integrity_check, REINDEX, ANALYZE, VACUUM" in run.stdout
    assert "dry run: nothing changed" in run.stdout
    assert not has_statistics(relay.database)


def corrupt_copy(relay, target: Path, *, header: bool) -> Path:
    sqlite3_tool(relay.database, f".backup '{target}'")
    data = bytearray(target.read_bytes())
    if header:
        data[:100] = b"\xa5" * 100
    else:
        page_size = int.from_bytes(data[16:18], "big")
        data[page_size : 6 * page_size] = os.urandom(5 * page_size)
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("header", [False, True], ids=["pages", "header"])
def test_corrupt_copy_fails_with_one_line(relay, tmp_path, header):
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    alice.close()
    copy = corrupt_copy(relay, tmp_path / "copy.db", header=header)
    run = maintenance(relay, "--integrity-check", database=copy)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"integrity check failed for {copy}" in lines[0]
    assert "restore the latest backup" in lines[0]
    assert "docs/operations.md" in lines[0]
    scheduled = maintenance(relay, "--date", "2025-12-10", database=copy)
    assert scheduled.returncode == 1
    assert "integrity check failed" in scheduled.stderr


def test_missing_database_is_not_created(tmp_path):
    database = tmp_path / "volume" / "yaok_relay.db"
    environment = {**os.environ, "DATABASE_URL": f"sqlite://{database}"}
    command = [sys.executable, "-m", "relay", "maintenance"]
    run = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"no database at {database}: nothing to maintain" in run.stdout
    assert not database.parent.exists()
    strict = subprocess.run(
        [*command, "--require-database"],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert strict.returncode == 1
    assert "not found" in strict.stderr
