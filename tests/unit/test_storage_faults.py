"""Storage faults on a real SQLite file: full database, corruption, the lock file."""

import asyncio
import os
import sqlite3
import weakref

import pytest
import structlog

from relay.protocol.constants import AckStatus
from relay.storage.base import StorageUnavailable
from relay.storage.lock import DatabaseInUse, DatabaseLock, lock_path, relay_is_running
from relay.storage.sqlite import SqliteStorage
from tests.unit.test_storage_writer import (
    NOW,
    QUOTAS,
    count_messages,
    message,
    opened,
    register_users,
    reloaded_index,
    survivors,
)

UNLIMITED_PAGES = 1_073_741_823


@pytest.fixture
async def storage(tmp_path):
    store = await opened(tmp_path / "relay.db")
    yield store
    await store.close()


async def fill_until_full(storage: SqliteStorage, alice: str, bob: str) -> None:
    # max_page_count cannot go below the current size, so 1 pins the file at
    # its present size and the next write needing a page fails with SQLITE_FULL.
    await storage.writer.connection.execute("PRAGMA max_page_count = 1")
    with pytest.raises(StorageUnavailable, match="full"):
        await storage.enqueue(message(alice, bob, payload=b"z" * 20_000))
    assert storage.write_failing


async def test_empty_commit_does_not_end_failing(storage):
    alice, bob = await register_users(storage, 2)
    await fill_until_full(storage, alice, bob)
    # A sweep with nothing to delete commits without writing a page.
    await storage.sweep(NOW, 1_000)
    assert storage.write_failing
    with pytest.raises(StorageUnavailable, match="latest database write failed"):
        await storage.check()


async def test_probe_write_ends_failing_state(storage):
    alice, bob = await register_users(storage, 2)
    assert await storage.enqueue(message(alice, bob)) is AckStatus.QUEUED
    await fill_until_full(storage, alice, bob)
    await storage.writer.connection.execute("PRAGMA max_page_count = 1")
    big = [message(alice, bob, payload=b"y" * 20_000) for _ in range(3)]
    for stored in big:
        with pytest.raises(StorageUnavailable):
            await storage.enqueue(stored)

    await storage.writer.connection.execute(
        f"PRAGMA max_page_count = {UNLIMITED_PAGES}"
    )
    await storage.probe_write()
    assert not storage.write_failing
    await storage.check()
    # The probe leaves no row behind, and the queued message is still there.
    assert count_messages(storage.path) == 1
    connection = sqlite3.connect(storage.path)
    try:
        probes = connection.execute("SELECT count(*) FROM dedup_records").fetchone()[0]
    finally:
        connection.close()
    assert probes == 0


# A deferred foreign key is checked at COMMIT, so a row that breaks it makes
# the COMMIT itself fail and leaves the transaction open. The trigger adds
# such a row for each message with this payload.
FAILING_COMMIT_SCHEMA = """
CREATE TABLE test_parent (id INTEGER PRIMARY KEY);
CREATE TABLE test_child (
    parent_id INTEGER REFERENCES test_parent (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TRIGGER test_fail_commit AFTER INSERT ON mailbox_messages
WHEN NEW.payload = CAST('fail commit' AS BLOB)
BEGIN INSERT INTO test_child VALUES (1); END;
"""

# RAISE(ABORT) fails the INSERT statement in the middle of the batch and
# leaves the transaction open.
FAILING_STATEMENT_SCHEMA = """
CREATE TRIGGER test_fail_insert BEFORE INSERT ON mailbox_messages
WHEN NEW.payload = CAST('fail insert' AS BLOB)
BEGIN SELECT RAISE(ABORT, 'insert rejected by test trigger'); END;
"""


async def test_failed_commit_rolls_back_and_recovers(storage):
    alice, bob = await register_users(storage, 2)
    assert await storage.enqueue(message(alice, bob)) is AckStatus.QUEUED
    writer_connection = storage.writer.connection
    await writer_connection.executescript(FAILING_COMMIT_SCHEMA)
    await writer_connection.execute("PRAGMA foreign_keys = ON")

    payloads = [b"fail commit", b"a", b"b", b"c"]
    outcomes = await asyncio.gather(
        *(storage.enqueue(message(alice, bob, payload=p)) for p in payloads),
        return_exceptions=True,
    )
    for outcome in outcomes:
        assert isinstance(outcome, StorageUnavailable), outcome
    assert "FOREIGN KEY constraint failed" in storage.last_error
    assert storage.write_failing
    assert count_messages(storage.path) == 1

    # The writer rolled the open transaction back, so the next BEGIN works.
    assert await storage.enqueue(message(alice, bob)) is AckStatus.QUEUED
    assert not storage.write_failing
    assert count_messages(storage.path) == 2
    assert storage.stats().queue_size == 2
    assert storage.index.snapshot() == await reloaded_index(storage.path)
    await storage.check()


async def test_failed_statement_rolls_back_batch(storage):
    alice, bob = await register_users(storage, 2)
    assert await storage.enqueue(message(alice, bob)) is AckStatus.QUEUED
    await storage.writer.connection.executescript(FAILING_STATEMENT_SCHEMA)

    payloads = [b"a", b"fail insert", b"b"]
    outcomes = await asyncio.gather(
        *(storage.enqueue(message(alice, bob, payload=p)) for p in payloads),
        return_exceptions=True,
    )
    for outcome in outcomes:
        assert isinstance(outcome, StorageUnavailable), outcome
    assert "insert rejected by test trigger" in storage.last_error
    assert count_messages(storage.path) == 1
    assert storage.index.snapshot() == await reloaded_index(storage.path)

    assert await storage.enqueue(message(alice, bob)) is AckStatus.QUEUED
    assert not storage.write_failing
    assert count_messages(storage.path) == 2
    assert storage.index.snapshot() == await reloaded_index(storage.path)
    await storage.check()


async def test_failed_begin_releases_batch(tmp_path):
    """A batch whose BEGIN failed leaves no payload or future behind while idle."""
    storage = await opened(tmp_path / "relay.db", busy_timeout_ms=50)
    try:
        alice, bob = await register_users(storage, 2)
        holder = sqlite3.connect(storage.path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            futures = [
                storage.submit_enqueue(message(alice, bob, payload=b"p" * 1_000))
                for _ in range(20)
            ]
            for future in futures:
                with pytest.raises(StorageUnavailable, match="database is locked"):
                    await future
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        watched = [weakref.ref(future) for future in futures]
        del futures, future
        # The failed futures and their batch form a cycle through the error's
        # traceback, which only the cyclic collector frees.
        assert await survivors(watched) == []
    finally:
        await storage.close()


def overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


async def test_header_damage_marks_storage_corrupt(storage):
    alice, bob = await register_users(storage, 2)
    overwrite(storage.path, 0, b"\x00" * 100)
    with pytest.raises(StorageUnavailable, match="corrupt: file is not a database"):
        await storage.check()
    assert storage.corruption == "file is not a database"
    with pytest.raises(StorageUnavailable, match="database file is corrupt"):
        await storage.enqueue(message(alice, bob))
    with pytest.raises(StorageUnavailable, match="database file is corrupt"):
        await storage.register_user(alice, b"K" * 32, b"x" * 32, NOW)


async def test_page_damage_found_by_read_stays_flagged(storage):
    alice, bob = await register_users(storage, 2)
    for _ in range(30):
        await storage.enqueue(message(alice, bob, payload=b"p" * 2_000))
    await storage.writer.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = storage.path.stat().st_size
    page_size = 4096
    overwrite(storage.path, page_size, os.urandom(size - page_size))

    with pytest.raises(StorageUnavailable, match="database file is corrupt"):
        await storage.fetch(bob, NOW, 60_000)
    assert "malformed" in storage.corruption
    with pytest.raises(StorageUnavailable, match="database file is corrupt"):
        await storage.enqueue(message(alice, bob))
    with pytest.raises(StorageUnavailable, match="corrupt"):
        await storage.check()


async def test_open_of_damaged_file_reports_corruption(tmp_path):
    path = tmp_path / "relay.db"
    path.write_bytes(os.urandom(16_384))
    store = SqliteStorage(path, QUOTAS, write_batch_max=10)
    with pytest.raises(StorageUnavailable, match="file is not a database"):
        await store.open()
    assert not store.is_open
    assert "not a database" in store.corruption
    with pytest.raises(StorageUnavailable, match="database not open"):
        await store.enqueue(message("a", "b"))
    with pytest.raises(StorageUnavailable, match="database not open"):
        await store.check()

    path.unlink()
    await store.open()
    assert store.is_open
    assert store.corruption is None
    await store.check()
    await store.close()


async def test_new_file_uses_incremental_vacuum(storage):
    connection = sqlite3.connect(storage.path)
    try:
        assert connection.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()


async def test_file_sizes_include_wal(storage):
    alice, bob = await register_users(storage, 2)
    await asyncio.gather(*(storage.enqueue(message(alice, bob)) for _ in range(10)))
    database_bytes, wal_bytes = storage.file_sizes()
    assert database_bytes == storage.path.stat().st_size
    assert wal_bytes > 0


def test_lock_shared_blocks_exclusive(tmp_path):
    database = tmp_path / "relay.db"
    assert not relay_is_running(database)
    relay = DatabaseLock(database)
    relay.acquire(exclusive=False)
    assert lock_path(database).exists()
    assert oct(lock_path(database).stat().st_mode & 0o777) == "0o600"
    second_relay = DatabaseLock(database)
    second_relay.acquire(exclusive=False)
    assert relay_is_running(database)
    with pytest.raises(DatabaseInUse, match="lock held on"):
        DatabaseLock(database).acquire(exclusive=True)
    relay.release()
    second_relay.release()
    assert not relay_is_running(database)
    with DatabaseLock(database) as tool:
        tool.acquire(exclusive=True)
        with pytest.raises(DatabaseInUse):
            DatabaseLock(database).acquire(exclusive=False)


async def test_failed_batches_logged_once_per_interval(storage):
    alice, bob = await register_users(storage, 2)
    with structlog.testing.capture_logs() as logs:
        await fill_until_full(storage, alice, bob)
        for _ in range(3):
            with pytest.raises(StorageUnavailable):
                await storage.enqueue(message(alice, bob, payload=b"w" * 20_000))
    lines = [line for line in logs if line["event"] == "database_write_failed"]
    assert len(lines) == 1
    assert lines[0]["failures_since_last_log"] == 0
    assert storage.failed_batch_count == 4


async def test_deleted_file_fails_writes(storage):
    alice, bob = await register_users(storage, 2)
    os.unlink(storage.path)
    rejected = pytest.raises(StorageUnavailable, match="deleted while open")
    with structlog.testing.capture_logs() as logs, rejected:
        await storage.enqueue(message(alice, bob))
    failures = [line for line in logs if line["event"] == "database_write_failed"]
    assert [line["log_level"] for line in failures] == ["error"]
    with pytest.raises(StorageUnavailable, match="is missing"):
        await storage.check()


async def test_replaced_file_fails_until_moved_back(storage):
    alice, bob = await register_users(storage, 2)
    moved = storage.path.with_name("moved.db")
    os.rename(storage.path, moved)
    storage.path.write_bytes(moved.read_bytes())
    with pytest.raises(StorageUnavailable, match="replaced while open"):
        await storage.enqueue(message(alice, bob))
    with pytest.raises(StorageUnavailable, match="restart the relay"):
        await storage.check()

    os.replace(moved, storage.path)
    assert await storage.enqueue(message(alice, bob)) is AckStatus.QUEUED
    await storage.check()
    # The failed batch committed to the moved file, which is back in place.
    assert count_messages(storage.path) == 2
