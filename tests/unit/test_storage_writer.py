"""SQLite storage: group commit, failures and recovery, durability, the index.

Every test runs against a real database file in tmp_path.
"""

import asyncio
import gc
import sqlite3
import subprocess
import threading
import time
import uuid
import weakref
from pathlib import Path

import aiosqlite
import pytest

from relay.protocol.constants import AckStatus
from relay.storage.base import Quotas, StorageUnavailable, StoredMessage
from relay.storage.mailbox_index import MailboxIndex
from relay.storage.sqlite import SqliteStorage

QUOTAS = Quotas(max_messages=1_000, max_bytes=16 * 1024 * 1024, max_per_sender=1_000)
KEY = b"K" * 32
X_KEY = b"x" * 32
NOW = 1_000_000
TTL_MS = 60_000
SQLITE3_TOOL = Path("/usr/bin/sqlite3")


def new_id() -> str:
    return str(uuid.uuid4())


def message(
    sender_id: str,
    recipient_id: str,
    *,
    payload: bytes = b"ciphertext",
    received_at_ms: int = NOW,
    expires_at_ms: int = NOW + TTL_MS,
) -> StoredMessage:
    return StoredMessage(
        sender_id, new_id(), recipient_id, payload, received_at_ms, expires_at_ms, "t"
    )


def count_messages(database: Path) -> int:
    connection = sqlite3.connect(database)
    try:
        return connection.execute("SELECT count(*) FROM mailbox_messages").fetchone()[0]
    finally:
        connection.close()


async def opened(path: Path, **options) -> SqliteStorage:
    options.setdefault("write_batch_max", 1_000)
    store = SqliteStorage(path, options.pop("quotas", QUOTAS), **options)
    await store.open()
    return store


async def register_users(store: SqliteStorage, count: int) -> list[str]:
    users = [new_id() for _ in range(count)]
    await asyncio.gather(*(store.register_user(u, KEY, X_KEY, NOW) for u in users))
    return users


def connection_threads() -> list[threading.Thread]:
    """Return the live threads of aiosqlite connections."""
    return [
        thread
        for thread in threading.enumerate()
        if "_connection_worker_thread" in thread.name and thread.is_alive()
    ]


async def reloaded_index(path: Path) -> dict:
    async with aiosqlite.connect(path) as connection:
        return (await MailboxIndex.load(connection)).snapshot()


async def survivors(watched: list[weakref.ref]) -> list[weakref.ref]:
    """Return the watched objects still alive once the loop and the collector ran."""
    for _ in range(3):
        await asyncio.sleep(0)  # let the loop run the futures' callbacks
    gc.collect()
    return [ref for ref in watched if ref() is not None]


@pytest.fixture
async def storage(tmp_path):
    store = await opened(tmp_path / "relay.db")
    yield store
    await store.close()


# --- group commit --------------------------------------------------------------------


async def test_concurrent_enqueues_share_commits(storage):
    alice, bob = await register_users(storage, 2)
    commits = storage.commit_count
    statuses = await asyncio.gather(
        *(storage.enqueue(message(alice, bob)) for _ in range(500))
    )
    assert statuses == [AckStatus.QUEUED] * 500
    assert storage.commit_count - commits <= 5
    assert count_messages(storage.path) == 500
    assert storage.pending_count(bob, NOW) == 500


async def test_batch_size_respects_limit(tmp_path):
    store = await opened(tmp_path / "relay.db", write_batch_max=10)
    try:
        alice, bob = await register_users(store, 2)
        commits = store.commit_count
        await asyncio.gather(*(store.enqueue(message(alice, bob)) for _ in range(100)))
        assert store.commit_count - commits == 10
        assert store.committed_operations >= 100
    finally:
        await store.close()


async def test_commit_latencies_are_recorded(storage):
    await register_users(storage, 3)
    latencies = storage.commit_latencies_ms
    assert len(latencies) == storage.commit_count == 1
    assert latencies[0] > 0


async def test_sequential_writes_commit_one_by_one(storage):
    alice, bob = await register_users(storage, 2)
    commits = storage.commit_count
    for _ in range(3):
        await storage.enqueue(message(alice, bob))
    assert storage.commit_count - commits == 3


async def test_idle_writer_releases_last_batch(storage):
    """A burst of writes followed by quiet leaves no payload or future behind."""
    alice, bob = await register_users(storage, 2)
    futures = [storage.submit_enqueue(message(alice, bob)) for _ in range(50)]
    for future in futures:
        await future
    watched = [weakref.ref(future) for future in futures]
    del futures, future
    assert await survivors(watched) == []


async def test_pending_writes_count_queued_operations(storage):
    alice, bob = await register_users(storage, 2)
    tasks = [
        asyncio.create_task(storage.enqueue(message(alice, bob))) for _ in range(5)
    ]
    await asyncio.sleep(0)
    assert storage.stats().pending_writes == 5
    await asyncio.gather(*tasks)
    assert storage.stats().pending_writes == 0


async def test_statement_variable_limit_splits_statements(tmp_path):
    # Six variables hold two rows of three, so every step needs several
    # statements; the outcomes must not change.
    store = await opened(tmp_path / "relay.db", max_statement_variables=6)
    try:
        users = await register_users(store, 7)
        sender, recipient = users[0], users[1]
        sent = [message(sender, recipient) for _ in range(5)]
        stranger = message(sender, new_id())
        statuses = await asyncio.gather(
            *(store.enqueue(item) for item in [*sent, stranger, sent[2]])
        )
        assert statuses == [AckStatus.QUEUED] * 5 + [
            AckStatus.UNKNOWN_RECIPIENT,
            AckStatus.QUEUED,
        ]
        repeats = await asyncio.gather(*(store.enqueue(item) for item in sent))
        assert repeats == [AckStatus.QUEUED] * 5
        keys = [(sender, item.message_id) for item in sent]
        receipts = await store.acknowledge(recipient, keys, NOW)
        assert [r.message_id for r in receipts] == [item.message_id for item in sent]
        assert count_messages(store.path) == 0
        conflicts = await asyncio.gather(
            *(store.register_user(u, b"other key" * 4, X_KEY, NOW) for u in users)
        )
        assert all(outcome.key_conflict for outcome in conflicts)
    finally:
        await store.close()


# --- durability and shutdown ---------------------------------------------------------


async def test_data_survives_close_and_reopen(tmp_path):
    path = tmp_path / "relay.db"
    store = await opened(path)
    alice, bob = await register_users(store, 2)
    kept = message(alice, bob, payload=b"kept")
    await store.enqueue(kept)
    await store.enqueue(message(bob, alice, expires_at_ms=NOW + 10))
    before = store.index.snapshot()
    await store.close()

    store = await opened(path)
    try:
        assert store.index.snapshot() == before
        assert store.pending_count(bob, NOW) == 1
        assert store.pending_count(alice, NOW + 10) == 0
        fetched = await store.fetch(bob, NOW, max_bytes=10_000)
        assert fetched.entries == [kept]
        registration = await store.register_user(bob, b"other" * 8, X_KEY, NOW)
        assert registration.key_conflict is True
    finally:
        await store.close()


async def test_close_commits_queued_writes(tmp_path):
    path = tmp_path / "relay.db"
    store = await opened(path, write_batch_max=7)
    alice, bob = await register_users(store, 2)
    tasks = [asyncio.create_task(store.enqueue(message(alice, bob))) for _ in range(50)]
    await asyncio.sleep(0)
    await store.close()
    assert [task.result() for task in tasks] == [AckStatus.QUEUED] * 50
    assert count_messages(path) == 50


async def test_close_checkpoints_write_ahead_log(tmp_path):
    path = tmp_path / "relay.db"
    store = await opened(path)
    alice, bob = await register_users(store, 2)
    await store.enqueue(message(alice, bob))
    await store.close()
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


async def test_cancelled_close_still_stops_threads(tmp_path):
    path = tmp_path / "relay.db"
    store = await opened(path, write_batch_max=50)
    assert len(connection_threads()) == 2
    alice, bob = await register_users(store, 2)
    commits = store.commit_count
    tasks = [
        asyncio.create_task(store.enqueue(message(alice, bob))) for _ in range(500)
    ]
    deadline = time.monotonic() + 10.0
    while store.commit_count < commits + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0)
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing

    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    queued = [outcome for outcome in outcomes if outcome is AckStatus.QUEUED]
    unavailable = [o for o in outcomes if isinstance(o, StorageUnavailable)]
    assert len(queued) + len(unavailable) == 500
    assert 100 <= len(queued) < 500
    # Every message whose caller got QUEUED is on disk. A batch cut off after
    # its commit may add a few more rows, which senders' retries find as
    # duplicates.
    assert count_messages(path) >= len(queued)
    for _ in range(50):
        if not connection_threads():
            break
        await asyncio.sleep(0.05)
    assert connection_threads() == []
    await asyncio.sleep(0)
    writers = [t for t in asyncio.all_tasks() if t.get_name() == "storage-writer"]
    assert writers == []


async def test_closed_storage_refuses_work(tmp_path):
    store = await opened(tmp_path / "relay.db")
    alice, bob = await register_users(store, 2)
    await store.close()
    with pytest.raises(StorageUnavailable):
        await store.enqueue(message(alice, bob))
    with pytest.raises(StorageUnavailable):
        await store.register_user(alice, KEY, X_KEY, NOW)
    with pytest.raises(StorageUnavailable):
        await store.fetch(bob, NOW, 1_200)
    with pytest.raises(StorageUnavailable):
        await store.check()
    await store.close()


# --- failures and recovery -----------------------------------------------------------


async def test_full_database_fails_batch_then_recovers(storage):
    alice, bob = await register_users(storage, 2)
    await storage.enqueue(message(alice, bob))
    index_before = storage.index.snapshot()
    writer_connection = storage.writer.connection
    # max_page_count cannot go below the current size, so 1 pins the file at
    # its present size: the next write needing a page fails with SQLITE_FULL.
    await writer_connection.execute("PRAGMA max_page_count = 1")

    big = b"z" * 8_000
    outcomes = await asyncio.gather(
        *(storage.enqueue(message(alice, bob, payload=big)) for _ in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, StorageUnavailable) for outcome in outcomes)
    assert storage.write_failing
    assert "full" in storage.last_error
    assert storage.last_error_at_ms is not None
    assert storage.failed_batch_count >= 1
    assert storage.index.snapshot() == index_before
    with pytest.raises(StorageUnavailable, match="latest database write failed"):
        await storage.check()

    await writer_connection.execute("PRAGMA max_page_count = 1073741823")
    statuses = await asyncio.gather(
        *(storage.enqueue(message(alice, bob, payload=big)) for _ in range(20))
    )
    assert statuses == [AckStatus.QUEUED] * 20
    assert not storage.write_failing
    await storage.check()
    assert count_messages(storage.path) == 21
    assert storage.index.snapshot() == await reloaded_index(storage.path)


async def test_failed_batch_freed_without_collector(storage):
    """A failed batch must not wait for the cycle collector to free its payloads."""
    alice, bob = await register_users(storage, 2)
    await storage.writer.connection.execute("PRAGMA max_page_count = 1")
    gc.disable()
    try:
        futures = [
            storage.submit_enqueue(message(alice, bob, payload=b"z" * 8_000))
            for _ in range(20)
        ]
        for future in futures:
            with pytest.raises(StorageUnavailable):
                await future
        watched = [weakref.ref(future) for future in futures]
        del futures, future
        for _ in range(3):
            await asyncio.sleep(0)
        alive = [ref for ref in watched if ref() is not None]
    finally:
        gc.enable()
    assert alive == []


async def test_corrupt_file_fails_open(tmp_path):
    path = tmp_path / "relay.db"
    store = await opened(path)
    alice, bob = await register_users(store, 2)
    for _ in range(20):
        await store.enqueue(message(alice, bob, payload=b"p" * 3_000))
    await store.close()
    with path.open("r+b") as file:
        file.seek(4096)
        file.write(b"\xff" * (path.stat().st_size - 4096))

    broken = SqliteStorage(path, QUOTAS, write_batch_max=10)
    with pytest.raises(StorageUnavailable, match="cannot open database"):
        await broken.open()
    assert broken.stats().queue_size == 0


async def test_failed_open_can_be_retried(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the folder should be")
    path = blocker / "relay.db"
    store = SqliteStorage(path, QUOTAS, write_batch_max=10)
    with pytest.raises(StorageUnavailable):
        await store.open()
    blocker.unlink()
    await store.open()
    await store.check()
    await store.close()


async def test_check_passes_on_healthy_file(storage):
    await register_users(storage, 1)
    await storage.check()
    assert storage.last_error is None


async def test_check_fails_on_timeout_then_recovers(tmp_path):
    store = await opened(tmp_path / "relay.db", check_timeout_s=1e-6)
    try:
        with pytest.raises(StorageUnavailable, match="timed out"):
            await store.check()
        assert "timed out" in store.last_error
        store.check_timeout_s = 5.0
        # The timed-out query was interrupted; a later check runs afresh.
        await store.check()
    finally:
        await store.close()


@pytest.mark.skipif(not SQLITE3_TOOL.exists(), reason="sqlite3 tool not installed")
async def test_operator_tools_run_beside_live_relay(storage):
    alice, bob = await register_users(storage, 2)
    await asyncio.gather(*(storage.enqueue(message(alice, bob)) for _ in range(50)))
    for command in ("PRAGMA integrity_check", "ANALYZE", "VACUUM", "REINDEX"):
        run = subprocess.run(
            [str(SQLITE3_TOOL), str(storage.path), command],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode == 0, run.stderr
        assert await storage.enqueue(message(alice, bob)) is AckStatus.QUEUED
    assert count_messages(storage.path) == 54
    await storage.check()


async def test_index_in_doubt_is_rebuilt_before_next_batch(storage):
    alice, bob = await register_users(storage, 2)
    await storage.enqueue(message(alice, bob))
    # A commit that failed after reaching the file leaves rows the index
    # lacks. No healthy file system fails a COMMIT on demand, so the test
    # writes such a row itself and marks the index in doubt, as the writer
    # does after a failed COMMIT.
    connection = sqlite3.connect(storage.path)
    with connection:
        connection.execute(
            "INSERT INTO mailbox_messages (recipient_id, sender_id, message_id, "
            "received_at_ms, expires_at_ms, payload, trace_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (bob, alice, new_id(), NOW, NOW + TTL_MS, b"landed", "t"),
        )
    connection.close()
    storage.writer._index_stale = True

    await storage.enqueue(message(bob, alice))
    assert storage.pending_count(bob, NOW) == 2
    assert storage.index.snapshot() == await reloaded_index(storage.path)


# --- the in-memory index -------------------------------------------------------------


async def test_index_matches_reload_after_mixed_operations(tmp_path):
    store = await opened(
        tmp_path / "relay.db",
        quotas=Quotas(max_messages=12, max_bytes=5_000, max_per_sender=6),
        write_batch_max=16,
    )
    try:
        users = await register_users(store, 5)
        sent: list[StoredMessage] = []
        for round_number in range(6):
            batch = [
                message(
                    users[(round_number + offset) % 5],
                    users[(round_number * 3 + offset) % 5],
                    payload=bytes(50 * (offset % 4) + 1),
                    received_at_ms=NOW + round_number,
                    expires_at_ms=NOW + 50 + 40 * offset,
                )
                for offset in range(10)
            ]
            statuses = await asyncio.gather(*(store.enqueue(item) for item in batch))
            sent += [m for m, s in zip(batch, statuses, strict=True) if s == 0]
            recipient = users[round_number % 5]
            keys = [(m.sender_id, m.message_id) for m in sent[::3]]
            await asyncio.gather(
                store.acknowledge(recipient, keys, NOW + 60),
                store.enqueue(sent[-1]),
                store.sweep(NOW + 20 * round_number, dedup_window_ms=30),
            )
            assert store.index.snapshot() == await reloaded_index(store.path)
        await store.erase_user(users[2])
        assert store.index.snapshot() == await reloaded_index(store.path)
        assert store.stats().queue_size == count_messages(store.path)
    finally:
        await store.close()
