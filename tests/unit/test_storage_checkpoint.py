"""WAL checkpoints beside the group-commit writer, on a real SQLite file."""

import asyncio
import sqlite3

from relay.protocol.constants import AckStatus
from relay.storage.checkpoint import CHECKPOINT_INTERVAL_S
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
