"""SQLite storage: registry, mailboxes, dedup, quotas, fetch, sweep and erasure.

Every test runs against a real database file in tmp_path.
"""

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest

from relay.config import load_settings
from relay.protocol.codec import entry_size
from relay.protocol.constants import AckStatus
from relay.storage import open_storage
from relay.storage.base import Quotas, StoredMessage
from relay.storage.sqlite import SqliteStorage

QUOTAS = Quotas(max_messages=20, max_bytes=100_000, max_per_sender=10)
KEY_A = b"A" * 32
KEY_B = b"B" * 32
X_KEY = b"x" * 32
NOW = 1_000_000
TTL_MS = 60_000


def new_id() -> str:
    return str(uuid.uuid4())


def message(
    sender_id: str,
    recipient_id: str,
    *,
    message_id: str | None = None,
    payload: bytes = b"ciphertext",
    received_at_ms: int = NOW,
    expires_at_ms: int = NOW + TTL_MS,
) -> StoredMessage:
    return StoredMessage(
        sender_id=sender_id,
        message_id=message_id or new_id(),
        recipient_id=recipient_id,
        payload=payload,
        received_at_ms=received_at_ms,
        expires_at_ms=expires_at_ms,
        trace_id=new_id(),
    )


def query(database: Path, sql: str, parameters: tuple = ()) -> list[tuple]:
    """Read the file through a separate connection, as an operator would."""
    connection = sqlite3.connect(database)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


def count_rows(database: Path, table: str) -> int:
    return query(database, f"SELECT count(*) FROM {table}")[0][0]


@pytest.fixture
async def storage(tmp_path):
    store = SqliteStorage(tmp_path / "relay.db", QUOTAS, write_batch_max=500)
    await store.open()
    yield store
    await store.close()


async def register(storage: SqliteStorage, key: bytes = KEY_A) -> str:
    user_id = new_id()
    registration = await storage.register_user(user_id, key, X_KEY, NOW)
    assert not registration.key_conflict
    return user_id


@pytest.fixture
async def alice(storage):
    return await register(storage)


@pytest.fixture
async def bob(storage):
    return await register(storage)


# --- opening -------------------------------------------------------------------------


async def test_open_creates_parent_folders(tmp_path):
    database = tmp_path / "nested" / "folder" / "relay.db"
    store = SqliteStorage(database, QUOTAS, write_batch_max=10)
    await store.open()
    await store.close()
    assert database.is_file()


async def test_file_uses_wal_journal(storage):
    assert query(storage.path, "PRAGMA journal_mode") == [("wal",)]


async def test_open_storage_follows_settings(tmp_path):
    settings = load_settings(
        database_url=f"sqlite://{tmp_path}/data/relay.db",
        mailbox_max_messages=7,
        mailbox_max_bytes=7_000,
        mailbox_max_per_sender=3,
        max_stored_messages=70,
        write_batch_max=42,
        database_check_timeout_s=0.5,
    )
    store = open_storage(settings)
    assert store.path == tmp_path / "data" / "relay.db"
    assert store.quotas == Quotas(
        max_messages=7, max_bytes=7_000, max_per_sender=3, max_stored=70
    )
    assert store.write_batch_max == 42
    assert store.check_timeout_s == 0.5


# --- registry ------------------------------------------------------------------------


async def test_first_registration_binds_key(storage):
    user_id = new_id()
    registration = await storage.register_user(user_id, KEY_A, X_KEY, NOW)
    assert registration.key_conflict is False
    assert registration.pending == 0
    rows = query(storage.path, "SELECT ed25519_public, x25519_public FROM users")
    assert rows == [(KEY_A, X_KEY)]


async def test_same_key_updates_x25519(storage):
    user_id = new_id()
    await storage.register_user(user_id, KEY_A, X_KEY, NOW)
    registration = await storage.register_user(user_id, KEY_A, b"y" * 32, NOW + 5)
    assert registration.key_conflict is False
    rows = query(
        storage.path,
        "SELECT x25519_public, registered_at_ms, updated_at_ms FROM users",
    )
    assert rows == [(b"y" * 32, NOW, NOW + 5)]


async def test_other_key_conflicts_and_changes_nothing(storage):
    user_id = new_id()
    await storage.register_user(user_id, KEY_A, X_KEY, NOW)
    registration = await storage.register_user(user_id, KEY_B, b"y" * 32, NOW + 5)
    assert registration.key_conflict is True
    rows = query(storage.path, "SELECT ed25519_public, x25519_public FROM users")
    assert rows == [(KEY_A, X_KEY)]


async def test_concurrent_first_registrations_one_wins(storage):
    user_id = new_id()
    first, second = await asyncio.gather(
        storage.register_user(user_id, KEY_A, X_KEY, NOW),
        storage.register_user(user_id, KEY_B, X_KEY, NOW),
    )
    assert [first.key_conflict, second.key_conflict] == [False, True]
    assert query(storage.path, "SELECT ed25519_public FROM users") == [(KEY_A,)]


async def test_registrations_in_separate_batches_one_wins(tmp_path):
    store = SqliteStorage(tmp_path / "relay.db", QUOTAS, write_batch_max=1)
    await store.open()
    try:
        user_id = new_id()
        outcomes = await asyncio.gather(
            store.register_user(user_id, KEY_B, X_KEY, NOW),
            store.register_user(user_id, KEY_A, X_KEY, NOW),
        )
        assert [outcome.key_conflict for outcome in outcomes] == [False, True]
        assert store.commit_count == 2
        assert query(store.path, "SELECT ed25519_public FROM users") == [(KEY_B,)]
    finally:
        await store.close()


async def test_registration_reports_pending_messages(storage, alice, bob):
    await storage.enqueue(message(alice, bob))
    await storage.enqueue(message(alice, bob, expires_at_ms=NOW + 10))
    registration = await storage.register_user(bob, KEY_A, X_KEY, NOW + 10)
    assert registration.pending == 1


# --- enqueue and dedup ---------------------------------------------------------------


async def test_enqueue_stores_message(storage, alice, bob):
    sent = message(alice, bob, payload=b"sealed")
    assert await storage.enqueue(sent) is AckStatus.QUEUED
    rows = query(
        storage.path,
        "SELECT recipient_id, sender_id, message_id, payload, received_at_ms, "
        "expires_at_ms, trace_id FROM mailbox_messages",
    )
    assert rows == [
        (
            bob,
            alice,
            sent.message_id,
            b"sealed",
            sent.received_at_ms,
            sent.expires_at_ms,
            sent.trace_id,
        )
    ]


async def test_duplicate_is_queued_and_stored_once(storage, alice, bob):
    first = message(alice, bob, payload=b"first")
    repeat = message(alice, alice, message_id=first.message_id, payload=b"second copy")
    assert await storage.enqueue(first) is AckStatus.QUEUED
    assert await storage.enqueue(repeat) is AckStatus.QUEUED
    rows = query(storage.path, "SELECT recipient_id, payload FROM mailbox_messages")
    assert rows == [(bob, b"first")]


async def test_duplicates_in_one_batch_stored_once(storage, alice, bob):
    first = message(alice, bob, payload=b"first")
    repeat = message(alice, bob, message_id=first.message_id, payload=b"second")
    commits = storage.commit_count
    statuses = await asyncio.gather(storage.enqueue(first), storage.enqueue(repeat))
    assert statuses == [AckStatus.QUEUED, AckStatus.QUEUED]
    assert storage.commit_count == commits + 1
    assert query(storage.path, "SELECT payload FROM mailbox_messages") == [(b"first",)]


async def test_duplicate_in_batch_copies_first_refusal(storage, alice):
    first = message(alice, new_id())
    repeat = message(alice, alice, message_id=first.message_id)
    statuses = await asyncio.gather(storage.enqueue(first), storage.enqueue(repeat))
    assert statuses == [AckStatus.UNKNOWN_RECIPIENT, AckStatus.UNKNOWN_RECIPIENT]
    assert count_rows(storage.path, "mailbox_messages") == 0


async def test_duplicate_after_acknowledge_is_delivered(storage, alice, bob):
    sent = message(alice, bob)
    await storage.enqueue(sent)
    await storage.acknowledge(bob, [(alice, sent.message_id)], NOW + 1)
    assert await storage.enqueue(sent) is AckStatus.DELIVERED
    assert count_rows(storage.path, "mailbox_messages") == 0


async def test_expired_stored_duplicate_is_expired(storage, alice, bob):
    sent = message(alice, bob, expires_at_ms=NOW + 100)
    await storage.enqueue(sent)
    repeat = message(alice, bob, message_id=sent.message_id, received_at_ms=NOW + 100)
    assert await storage.enqueue(repeat) is AckStatus.EXPIRED
    assert count_rows(storage.path, "mailbox_messages") == 1


async def test_duplicate_after_sweep_is_expired(storage, alice, bob):
    sent = message(alice, bob, expires_at_ms=NOW + 100)
    await storage.enqueue(sent)
    await storage.sweep(NOW + 200, dedup_window_ms=TTL_MS)
    repeat = message(alice, bob, message_id=sent.message_id, received_at_ms=NOW + 300)
    assert await storage.enqueue(repeat) is AckStatus.EXPIRED
    assert count_rows(storage.path, "mailbox_messages") == 0


async def test_unknown_recipient(storage, alice):
    assert (
        await storage.enqueue(message(alice, new_id())) is AckStatus.UNKNOWN_RECIPIENT
    )
    assert count_rows(storage.path, "mailbox_messages") == 0


async def test_message_finds_user_registering_in_same_batch(storage, alice):
    newcomer = new_id()
    commits = storage.commit_count
    # The enqueue is submitted first; registrations still run first in a batch.
    status, registration = await asyncio.gather(
        storage.enqueue(message(alice, newcomer)),
        storage.register_user(newcomer, KEY_B, X_KEY, NOW),
    )
    assert storage.commit_count == commits + 1
    assert status is AckStatus.QUEUED
    assert registration.pending == 1


async def test_enqueue_rejects_non_bytes_payload(storage, alice, bob):
    with pytest.raises(TypeError, match="payload must be bytes"):
        await storage.enqueue(message(alice, bob, payload=bytearray(b"x")))


# --- quotas --------------------------------------------------------------------------


async def quota_storage(tmp_path: Path, quotas: Quotas) -> tuple[SqliteStorage, list]:
    store = SqliteStorage(tmp_path / "quota.db", quotas, write_batch_max=100)
    await store.open()
    users = [new_id() for _ in range(3)]
    for user_id in users:
        await store.register_user(user_id, KEY_A, X_KEY, NOW)
    return store, users


async def test_message_quota_fills_and_frees(tmp_path):
    store, (alice, bob, carol) = await quota_storage(
        tmp_path, Quotas(max_messages=3, max_bytes=10_000, max_per_sender=10)
    )
    try:
        sent = [message(alice, bob), message(carol, bob), message(alice, bob)]
        for item in sent:
            assert await store.enqueue(item) is AckStatus.QUEUED
        assert await store.enqueue(message(carol, bob)) is AckStatus.MAILBOX_FULL
        assert await store.enqueue(message(alice, carol)) is AckStatus.QUEUED
        await store.acknowledge(bob, [(alice, sent[0].message_id)], NOW)
        assert await store.enqueue(message(carol, bob)) is AckStatus.QUEUED
    finally:
        await store.close()


async def test_byte_quota_fills_and_frees(tmp_path):
    store, (alice, bob, _) = await quota_storage(
        tmp_path, Quotas(max_messages=100, max_bytes=1_000, max_per_sender=100)
    )
    try:
        first = message(alice, bob, payload=b"a" * 600)
        assert await store.enqueue(first) is AckStatus.QUEUED
        assert await store.enqueue(message(alice, bob, payload=b"b" * 401)) is (
            AckStatus.MAILBOX_FULL
        )
        assert await store.enqueue(message(alice, bob, payload=b"c" * 400)) is (
            AckStatus.QUEUED
        )
        await store.acknowledge(bob, [(alice, first.message_id)], NOW)
        assert await store.enqueue(message(alice, bob, payload=b"d" * 600)) is (
            AckStatus.QUEUED
        )
    finally:
        await store.close()


async def test_per_sender_quota_fills_and_frees(tmp_path):
    store, (alice, bob, carol) = await quota_storage(
        tmp_path, Quotas(max_messages=100, max_bytes=100_000, max_per_sender=2)
    )
    try:
        first = message(alice, bob)
        assert await store.enqueue(first) is AckStatus.QUEUED
        assert await store.enqueue(message(alice, bob)) is AckStatus.QUEUED
        assert await store.enqueue(message(alice, bob)) is AckStatus.MAILBOX_FULL
        assert await store.enqueue(message(carol, bob)) is AckStatus.QUEUED
        assert await store.enqueue(message(alice, carol)) is AckStatus.QUEUED
        await store.acknowledge(bob, [(alice, first.message_id)], NOW)
        assert await store.enqueue(message(alice, bob)) is AckStatus.QUEUED
    finally:
        await store.close()


async def test_quota_counts_messages_of_same_batch(tmp_path):
    store, (alice, bob, _) = await quota_storage(
        tmp_path, Quotas(max_messages=3, max_bytes=10_000, max_per_sender=10)
    )
    try:
        commits = store.commit_count
        statuses = await asyncio.gather(
            *(store.enqueue(message(alice, bob)) for _ in range(5))
        )
        assert store.commit_count == commits + 1
        assert statuses == [AckStatus.QUEUED] * 3 + [AckStatus.MAILBOX_FULL] * 2
        assert count_rows(store.path, "mailbox_messages") == 3
    finally:
        await store.close()


async def test_relay_wide_limit_answers_unavailable(tmp_path):
    quotas = Quotas(max_messages=10, max_bytes=10_000, max_per_sender=10, max_stored=4)
    store, (alice, bob, carol) = await quota_storage(tmp_path, quotas)
    try:
        to_carol = message(alice, carol)
        await store.enqueue(to_carol)
        statuses = await asyncio.gather(
            *(store.enqueue(message(alice, bob)) for _ in range(4))
        )
        assert statuses == [AckStatus.QUEUED] * 3 + [AckStatus.UNAVAILABLE]
        assert count_rows(store.path, "mailbox_messages") == 4
        await store.acknowledge(carol, [(alice, to_carol.message_id)], NOW)
        assert store.stats().queue_size == 3
        assert await store.enqueue(message(alice, bob)) is AckStatus.QUEUED
    finally:
        await store.close()


async def test_quota_counts_expired_until_swept(tmp_path):
    store, (alice, bob, _) = await quota_storage(
        tmp_path, Quotas(max_messages=1, max_bytes=10_000, max_per_sender=10)
    )
    try:
        await store.enqueue(message(alice, bob, expires_at_ms=NOW + 10))
        late = NOW + 20
        assert await store.enqueue(message(alice, bob, received_at_ms=late)) is (
            AckStatus.MAILBOX_FULL
        )
        await store.sweep(late, dedup_window_ms=TTL_MS)
        assert await store.enqueue(message(alice, bob, received_at_ms=late)) is (
            AckStatus.QUEUED
        )
    finally:
        await store.close()


# --- acknowledge ---------------------------------------------------------------------


async def test_acknowledge_returns_receipts(storage, alice, bob):
    sent = message(alice, bob)
    await storage.enqueue(sent)
    receipts = await storage.acknowledge(bob, [(alice, sent.message_id)], NOW + 1)
    assert len(receipts) == 1
    assert receipts[0].sender_id == alice
    assert receipts[0].message_id == sent.message_id
    assert receipts[0].trace_id == sent.trace_id
    assert receipts[0].received_at_ms == sent.received_at_ms
    assert count_rows(storage.path, "mailbox_messages") == 0
    records = query(storage.path, "SELECT status, recorded_at_ms FROM dedup_records")
    assert records == [(AckStatus.DELIVERED, NOW + 1)]


async def test_acknowledge_by_other_user_deletes_nothing(storage, alice, bob):
    sent = message(alice, bob)
    await storage.enqueue(sent)
    assert await storage.acknowledge(alice, [(alice, sent.message_id)], NOW) == []
    assert count_rows(storage.path, "mailbox_messages") == 1
    assert count_rows(storage.path, "dedup_records") == 0
    assert storage.pending_count(bob, NOW) == 1


async def test_acknowledge_of_expired_gives_no_receipt(storage, alice, bob):
    expired = message(alice, bob, expires_at_ms=NOW + 10)
    fresh = message(alice, bob)
    await storage.enqueue(expired)
    await storage.enqueue(fresh)
    keys = [(alice, expired.message_id), (alice, fresh.message_id)]
    receipts = await storage.acknowledge(bob, keys, NOW + 10)
    assert [receipt.message_id for receipt in receipts] == [fresh.message_id]
    assert count_rows(storage.path, "mailbox_messages") == 0
    repeat = message(alice, bob, message_id=expired.message_id)
    assert await storage.enqueue(repeat) is AckStatus.EXPIRED


async def test_acknowledge_is_idempotent(storage, alice, bob):
    sent = message(alice, bob)
    await storage.enqueue(sent)
    keys = [(alice, sent.message_id)]
    first, second = await asyncio.gather(
        storage.acknowledge(bob, keys, NOW), storage.acknowledge(bob, keys, NOW)
    )
    assert len(first) == 1
    assert second == []
    assert await storage.acknowledge(bob, keys, NOW) == []


async def test_acknowledge_in_batch_of_its_enqueue(storage, alice, bob):
    sent = message(alice, bob)
    commits = storage.commit_count
    status, receipts = await asyncio.gather(
        storage.enqueue(sent), storage.acknowledge(bob, [(alice, sent.message_id)], NOW)
    )
    assert storage.commit_count == commits + 1
    assert status is AckStatus.QUEUED
    assert [receipt.message_id for receipt in receipts] == [sent.message_id]
    assert storage.pending_count(bob, NOW) == 0


async def test_acknowledge_of_unknown_keys_is_ignored(storage, bob):
    assert await storage.acknowledge(bob, [(new_id(), new_id())], NOW) == []
    assert await storage.acknowledge(bob, [], NOW) == []


# --- fetch and pending count ---------------------------------------------------------


async def test_fetch_returns_mailbox_order(storage, alice, bob):
    # Receive times run backwards, so only the mailbox order sorts them right.
    sent = [message(alice, bob, received_at_ms=NOW - index) for index in range(3)]
    for item in sent:
        await storage.enqueue(item)
    fetched = await storage.fetch(bob, NOW, max_bytes=10_000)
    assert [entry.message_id for entry in fetched.entries] == [
        item.message_id for item in sent
    ]
    assert fetched.entries[0] == sent[0]
    assert fetched.remaining == 0


async def test_fetch_stops_at_budget(storage, alice, bob):
    payload = b"p" * 100
    for _ in range(4):
        await storage.enqueue(message(alice, bob, payload=payload))
    budget = 2 * entry_size(len(payload))
    fetched = await storage.fetch(bob, NOW, max_bytes=budget)
    assert len(fetched.entries) == 2
    assert fetched.remaining == 2
    fetched = await storage.fetch(bob, NOW, max_bytes=budget - 1)
    assert len(fetched.entries) == 1
    assert fetched.remaining == 3


async def test_fetch_returns_oldest_alone_over_budget(storage, alice, bob):
    large = message(alice, bob, payload=b"L" * 5_000)
    await storage.enqueue(large)
    await storage.enqueue(message(alice, bob, payload=b"s"))
    fetched = await storage.fetch(bob, NOW, max_bytes=1_200)
    assert [entry.message_id for entry in fetched.entries] == [large.message_id]
    assert fetched.entries[0].payload == large.payload
    assert fetched.remaining == 1


async def test_fetch_skips_expired(storage, alice, bob):
    expired = message(alice, bob, expires_at_ms=NOW + 10)
    fresh = message(alice, bob)
    await storage.enqueue(expired)
    await storage.enqueue(fresh)
    fetched = await storage.fetch(bob, NOW + 10, max_bytes=10_000)
    assert [entry.message_id for entry in fetched.entries] == [fresh.message_id]
    assert fetched.remaining == 0


async def test_fetch_of_empty_mailbox(storage, bob):
    fetched = await storage.fetch(bob, NOW, max_bytes=1_200)
    assert fetched.entries == []
    assert fetched.remaining == 0


async def test_fetch_reads_only_own_mailbox(storage, alice, bob):
    await storage.enqueue(message(alice, bob))
    fetched = await storage.fetch(alice, NOW, max_bytes=10_000)
    assert fetched.entries == []


async def test_pending_count_exact_at_expiry(storage, alice, bob):
    await storage.enqueue(message(alice, bob, expires_at_ms=NOW + 100))
    await storage.enqueue(message(alice, bob, expires_at_ms=NOW + 200))
    assert storage.pending_count(bob, NOW) == 2
    assert storage.pending_count(bob, NOW + 99) == 2
    assert storage.pending_count(bob, NOW + 100) == 1
    assert storage.pending_count(bob, NOW + 199) == 1
    assert storage.pending_count(bob, NOW + 200) == 0
    assert storage.pending_count(alice, NOW) == 0


async def test_stats_summarise_mailboxes(storage, alice, bob):
    assert storage.stats().queue_size == 0
    assert storage.stats().oldest_received_at_ms is None
    await storage.enqueue(message(alice, bob, received_at_ms=NOW + 5))
    await storage.enqueue(message(bob, alice, received_at_ms=NOW + 3))
    await storage.enqueue(
        message(bob, alice, received_at_ms=NOW + 9, expires_at_ms=NOW)
    )
    stats = storage.stats()
    assert stats.queue_size == 3
    assert stats.oldest_received_at_ms == NOW + 3
    assert stats.pending_writes == 0


# --- sweep and erase -----------------------------------------------------------------


async def test_sweep_deletes_expired_and_old_records(storage, alice, bob):
    delivered = message(alice, bob)
    await storage.enqueue(delivered)
    await storage.acknowledge(bob, [(alice, delivered.message_id)], NOW)
    await storage.enqueue(message(alice, bob, expires_at_ms=NOW + 10))
    await storage.enqueue(message(bob, alice, expires_at_ms=NOW + 20))
    kept = message(alice, bob, expires_at_ms=NOW + 1_000)
    await storage.enqueue(kept)

    sweep = await storage.sweep(NOW + 500, dedup_window_ms=100)
    assert sweep.expired_messages == 2
    assert sweep.purged_dedup_records == 1
    assert query(storage.path, "SELECT message_id FROM mailbox_messages") == [
        (kept.message_id,)
    ]
    statuses = query(storage.path, "SELECT status FROM dedup_records")
    assert statuses == [(AckStatus.EXPIRED,), (AckStatus.EXPIRED,)]
    assert storage.stats().queue_size == 1


async def test_sweep_works_through_chunks_in_turns(tmp_path):
    store = SqliteStorage(
        tmp_path / "relay.db", QUOTAS, write_batch_max=500, sweep_chunk_rows=3
    )
    await store.open()
    try:
        alice, bob = await register(store), await register(store, KEY_B)
        for _ in range(4):
            delivered = message(alice, bob)
            await store.enqueue(delivered)
            await store.acknowledge(bob, [(alice, delivered.message_id)], NOW)
        expiring = [message(alice, bob, expires_at_ms=NOW + 10) for _ in range(7)]
        for item in expiring:
            await store.enqueue(item)
        unexpired = message(bob, alice, expires_at_ms=NOW + 1_000)
        await store.enqueue(unexpired)
        commits = store.commit_count

        sweep = await store.sweep(NOW + 500, dedup_window_ms=100)

        # 7 messages and 4 old records, 3 a chunk: three chunks, the last short.
        assert store.commit_count - commits == 3
        assert sweep.expired_messages == 7
        assert sweep.purged_dedup_records == 4
        assert query(store.path, "SELECT message_id FROM mailbox_messages") == [
            (unexpired.message_id,)
        ]
        records = query(store.path, "SELECT message_id, status FROM dedup_records")
        expected = {(item.message_id, AckStatus.EXPIRED) for item in expiring}
        assert set(records) == expected
        assert store.stats().queue_size == 1
        assert store.pending_count(bob, NOW) == 0
    finally:
        await store.close()


async def test_sweep_keeps_records_inside_window(storage, alice, bob):
    delivered = message(alice, bob)
    await storage.enqueue(delivered)
    await storage.acknowledge(bob, [(alice, delivered.message_id)], NOW)
    sweep = await storage.sweep(NOW + 100, dedup_window_ms=100)
    assert sweep.purged_dedup_records == 0
    assert await storage.enqueue(delivered) is AckStatus.DELIVERED
    sweep = await storage.sweep(NOW + 101, dedup_window_ms=100)
    assert sweep.purged_dedup_records == 1
    assert await storage.enqueue(delivered) is AckStatus.QUEUED


async def test_erase_deletes_user_mailbox_and_records(storage, alice, bob):
    to_bob = message(alice, bob)
    from_bob = message(bob, alice)
    delivered_from_bob = message(bob, alice)
    delivered_from_alice = message(alice, bob)
    for item in (to_bob, from_bob, delivered_from_bob, delivered_from_alice):
        await storage.enqueue(item)
    await storage.acknowledge(alice, [(bob, delivered_from_bob.message_id)], NOW)
    await storage.acknowledge(bob, [(alice, delivered_from_alice.message_id)], NOW)

    await storage.erase_user(bob)

    assert query(storage.path, "SELECT user_id FROM users") == [(alice,)]
    assert query(storage.path, "SELECT message_id FROM mailbox_messages") == [
        (from_bob.message_id,)
    ]
    assert query(storage.path, "SELECT sender_id FROM dedup_records") == [(alice,)]
    assert storage.pending_count(bob, NOW) == 0
    assert storage.pending_count(alice, NOW) == 1
    assert await storage.enqueue(message(alice, bob)) is AckStatus.UNKNOWN_RECIPIENT


async def test_erase_runs_in_batch_of_its_own(storage, alice, bob):
    commits = storage.commit_count
    before, _, after = await asyncio.gather(
        storage.enqueue(message(alice, bob)),
        storage.erase_user(bob),
        storage.enqueue(message(alice, bob)),
    )
    assert before is AckStatus.QUEUED
    assert after is AckStatus.UNKNOWN_RECIPIENT
    assert storage.commit_count == commits + 3
    assert count_rows(storage.path, "mailbox_messages") == 0


# --- acknowledged before written -----------------------------------------------------


async def test_ack_in_same_batch_skips_insert(storage, alice, bob):
    sent = message(alice, bob)
    commits = storage.commit_count
    changes = storage.writer.connection.total_changes
    status = storage.submit_enqueue(sent)
    receipts = storage.submit_acknowledge(bob, [(alice, sent.message_id)], NOW + 1)
    assert (await status).status is AckStatus.QUEUED
    (receipt,) = await receipts
    assert storage.commit_count == commits + 1
    # One row changed, the dedup record: the message was never inserted.
    assert storage.writer.connection.total_changes == changes + 1
    assert receipt.message_id == sent.message_id
    assert receipt.trace_id == sent.trace_id
    assert count_rows(storage.path, "mailbox_messages") == 0
    assert storage.pending_count(bob, NOW + 1) == 0
    assert storage.stats().queue_size == 0


async def test_ack_in_same_batch_records_delivery(storage, alice, bob):
    sent = message(alice, bob)
    await asyncio.gather(
        storage.submit_enqueue(sent),
        storage.submit_acknowledge(bob, [(alice, sent.message_id)], NOW + 1),
    )
    assert await storage.enqueue(sent) is AckStatus.DELIVERED
    assert count_rows(storage.path, "mailbox_messages") == 0


async def test_ack_from_other_user_in_same_batch_leaves_message(storage, alice, bob):
    sent = message(alice, bob)
    status = storage.submit_enqueue(sent)
    receipts = storage.submit_acknowledge(alice, [(alice, sent.message_id)], NOW + 1)
    assert (await status).status is AckStatus.QUEUED
    assert await receipts == []
    assert count_rows(storage.path, "mailbox_messages") == 1
    assert storage.pending_count(bob, NOW + 1) == 1


async def test_ack_of_expired_message_in_same_batch_gives_no_receipt(
    storage, alice, bob
):
    sent = message(alice, bob, expires_at_ms=NOW + 10)
    status = storage.submit_enqueue(sent)
    receipts = storage.submit_acknowledge(bob, [(alice, sent.message_id)], NOW + 10)
    assert (await status).status is AckStatus.QUEUED
    assert await receipts == []
    assert await storage.enqueue(sent) is AckStatus.EXPIRED
    assert count_rows(storage.path, "mailbox_messages") == 0


async def test_ack_in_same_batch_survives_reopen(tmp_path):
    store = SqliteStorage(tmp_path / "relay.db", QUOTAS, write_batch_max=500)
    await store.open()
    alice, bob = await register(store), await register(store)
    sent = message(alice, bob)
    await asyncio.gather(
        store.submit_enqueue(sent),
        store.submit_acknowledge(bob, [(alice, sent.message_id)], NOW + 1),
    )
    await store.close()
    reopened = SqliteStorage(tmp_path / "relay.db", QUOTAS, write_batch_max=500)
    await reopened.open()
    assert await reopened.enqueue(sent) is AckStatus.DELIVERED
    assert reopened.pending_count(bob, NOW + 1) == 0
    await reopened.close()


async def test_stats_kept_while_suspended(storage, alice, bob):
    await storage.enqueue(message(alice, bob, received_at_ms=NOW + 5))
    await storage.enqueue(message(bob, alice, received_at_ms=NOW + 3))
    await storage.suspend("held for maintenance")
    stats = storage.stats()
    assert stats.queue_size == 2
    assert stats.oldest_received_at_ms == NOW + 3
    assert stats.pending_writes == 0
