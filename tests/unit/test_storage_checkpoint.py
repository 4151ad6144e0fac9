"""WAL checkpoints beside the group-commit writer, on a real SQLite file."""

import asyncio
import itertools
import sqlite3
import sys
import time

from relay.ops.storage_metrics import StorageCollector
from relay.protocol.constants import AckStatus
from relay.storage.base import Quotas
from relay.storage.checkpoint import (
    CATCH_UP_PASSES,
    CHECKPOINT_INTERVAL_S,
    WRITER_COPY_PAGES,
    Checkpointer,
)
from relay.storage.connection import DatabaseFile
from tests.unit.test_storage_writer import message, opened, register_users


def wal_frames_left(path) -> int:
    """Return the log frames not yet copied into the database file."""
    connection = sqlite3.connect(path)
    try:
        _, log_frames, copied = connection.execute(
            "PRAGMA wal_checkpoint(PASSIVE)"
        ).fetchone()
    finally:
        connection.close()
    return log_frames - copied


async def test_checkpointer_copies_log_while_writer_commits(tmp_path):
    path = tmp_path / "relay.db"
    store = await opened(path, write_batch_max=50)
    alice, bob = await register_users(store, 2)
    statuses = await asyncio.gather(
        *(store.enqueue(message(alice, bob)) for _ in range(200))
    )
    assert set(statuses) == {AckStatus.QUEUED}
    for _ in range(40):
        if store._checkpointer.checkpoints:
            break
        await asyncio.sleep(CHECKPOINT_INTERVAL_S / 4)
    assert store._checkpointer.checkpoints >= 1
    assert store._checkpointer.failures == 0
    await store.close()


def log_length(path) -> int:
    """Read the log's length in frames from the WAL index, without a checkpoint.

    The shared-memory file starts with the index header, whose mxFrame (the
    last valid frame) sits at byte 16 in the machine's byte order.
    """
    header = path.with_name(path.name + "-shm").read_bytes()[16:20]
    return int.from_bytes(header, sys.byteorder)


async def test_log_restarts_while_writes_never_pause(tmp_path):
    path = tmp_path / "relay.db"
    roomy = Quotas(max_messages=10**6, max_bytes=2**40, max_per_sender=10**6)
    store = await opened(path, quotas=roomy, write_batch_max=20)
    store._checkpointer.interval_s = 0.05
    store._checkpointer.restart_pages = 40
    alice, bob = await register_users(store, 2)
    lengths: list[int] = []

    async def keep_sending(until: float) -> None:
        while time.monotonic() < until:
            assert await store.enqueue(message(alice, bob)) == AckStatus.QUEUED

    async def watch(until: float) -> None:
        while time.monotonic() < until:
            lengths.append(log_length(path))
            await asyncio.sleep(0.01)

    until = time.monotonic() + 2.0
    try:
        await asyncio.gather(watch(until), *(keep_sending(until) for _ in range(40)))
    finally:
        await store.close()
    assert store._writer.checkpoints >= 1
    # The log starts over from frame 1 instead of growing toward the writer's
    # automatic checkpoint at 40,000 pages.
    restarts = sum(1 for a, b in itertools.pairwise(lengths) if b < a)
    assert restarts >= 1


async def test_store_checkpointer_syncs_database_file(tmp_path):
    store = await opened(tmp_path / "relay.db")
    alice, bob = await register_users(store, 2)
    checkpointer = store._checkpointer
    syncs = []
    sync_file = checkpointer._sync_file
    checkpointer._sync_file = lambda: (sync_file(), syncs.append(1))
    try:
        assert await store.enqueue(message(alice, bob)) == AckStatus.QUEUED
        await checkpointer._pass()
        # The timed passes may have synced too.
        assert len(syncs) >= 1
        assert checkpointer.failures == 0
    finally:
        await store.close()


def test_pass_syncs_file_only_after_copying(tmp_path):
    path = tmp_path / "relay.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE rows (data BLOB)")
    writer.execute("INSERT INTO rows VALUES (randomblob(20000))")
    database_file = DatabaseFile(path)
    syncs = []

    def sync_file() -> None:
        database_file.sync_data()
        syncs.append(1)

    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    checkpointer = Checkpointer(connection, lambda: 0, lambda: None, sync_file)
    try:
        assert checkpointer._checkpoint() > 0
        assert syncs == [1]
        assert wal_frames_left(path) == 0
        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # An empty log has nothing to copy, so nothing to sync.
        assert checkpointer._checkpoint() == 0
        assert syncs == [1]
    finally:
        for opened_connection in (connection, writer):
            opened_connection.close()
        database_file.close()


async def test_checkpointer_idle_without_commits(tmp_path):
    store = await opened(tmp_path / "relay.db")
    await asyncio.sleep(CHECKPOINT_INTERVAL_S * 2.5)
    assert store._checkpointer.checkpoints == 0
    await store.close()


async def test_close_leaves_no_log_frames(tmp_path):
    path = tmp_path / "relay.db"
    store = await opened(path)
    alice, bob = await register_users(store, 2)
    await store.enqueue(message(alice, bob))
    await store.close()
    assert wal_frames_left(path) == 0


class ScriptedLog:
    """Stands in for the checkpoint connection: log lengths from a script, in order."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = list(lengths)
        self.passes = 0

    def execute(self, sql: str) -> "ScriptedLog":
        assert sql == "PRAGMA wal_checkpoint(PASSIVE)"
        self.passes += 1
        self._row = (0, self.lengths.pop(0), 0)
        return self

    def fetchone(self) -> tuple[int, int, int]:
        return self._row


def run_copy(lengths: list[int], restart_pages: int = 1_000) -> tuple[int, int]:
    """Run one round of the checkpointer; return (passes, writer requests)."""
    log = ScriptedLog(lengths)
    requests = []
    checkpointer = Checkpointer(
        log, lambda: 0, lambda: requests.append(1), restart_pages=restart_pages
    )
    asyncio.run(checkpointer._copy_log())
    return log.passes, len(requests)


def test_checkpointer_short_log_one_pass():
    assert run_copy([999]) == (1, 0)


def test_checkpointer_long_log_passes_then_writer():
    # Each pass finds what was committed during the one before.
    lengths = [1_000, 1_900, 2_200, 2_200 + WRITER_COPY_PAGES]
    assert run_copy(lengths) == (4, 1)


def test_checkpointer_passes_bounded():
    # Commits outpace the copies: the writer is asked anyway.
    lengths = [1_000 * (n + 1) for n in range(CATCH_UP_PASSES + 1)]
    assert run_copy(lengths) == (CATCH_UP_PASSES + 1, 1)


def test_checkpointer_restarted_log_needs_no_writer():
    assert run_copy([1_500, 40]) == (2, 0)


async def test_failed_passes_counted_for_metrics(tmp_path):
    store = await opened(tmp_path / "relay.db")
    checkpointer = store._checkpointer
    alice, bob = await register_users(store, 2)
    assert await store.enqueue(message(alice, bob)) == AckStatus.QUEUED
    # A pass on a closed connection fails as a broken one would.
    checkpointer._db.close()
    for _ in range(40):
        if checkpointer.failures:
            break
        await asyncio.sleep(CHECKPOINT_INTERVAL_S / 4)
    assert checkpointer.failures >= 1
    assert store.checkpoint_failures == checkpointer.failures
    metrics = {
        metric.name: metric for metric in StorageCollector(store, lambda: 0).collect()
    }
    (sample,) = metrics["relay_wal_checkpoint_failures"].samples
    assert sample.value == checkpointer.failures
    failures = checkpointer.failures
    await store.close()
    # The count survives the close, so the counter never goes back.
    assert store.checkpoint_failures == failures
