"""The embedded storage: one SQLite file in WAL mode, reached through aiosqlite.

Two connections serve the relay. The group-commit writer owns the write
connection, and fetch and check use the read connection, which WAL lets run
beside the writer. Each aiosqlite connection runs its SQLite calls on its
own thread, never on the event loop. Quotas and pending counts come from the
in-memory mailbox index that the writer keeps in step with the file.

A read or write that reports a damaged file ("database disk image is
malformed", "file is not a database") marks the open storage corrupt for
good. From then on writes are rejected and check() fails, so that nothing
more is acknowledged into a file that must be restored from a backup.
"""

import asyncio
import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import aiosqlite
import structlog

from relay.protocol.codec import entry_size
from relay.protocol.constants import AckStatus
from relay.storage.base import (
    Enqueued,
    Fetched,
    Quotas,
    Receipt,
    Registration,
    StorageStats,
    StorageUnavailable,
    StoredMessage,
    Sweep,
)
from relay.storage.checkpoint import Checkpointer, open_checkpointer
from relay.storage.connection import (
    SQLITE_MAGIC,
    DatabaseFile,
    DatabaseFileReplaced,
    connect,
    is_corruption,
    prepare_file,
)
from relay.storage.mailbox_index import LOAD_CHUNK_ROWS, MailboxIndex
from relay.storage.operations import (
    AcknowledgeMessages,
    EnqueueMessage,
    EraseUser,
    ProbeWrite,
    RegisterUser,
    SweepExpired,
    WriteOperation,
)
from relay.storage.seen import SeenFilter
from relay.storage.writer import GroupCommitWriter

log = structlog.get_logger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 5_000

# Rows a sweep deletes per transaction, of each kind. The writer's thread
# returns a chunk's deleted messages to the event loop, which takes them out
# of the mailbox index. Sweeping 400,000 messages in one transaction took
# the relay to 570 MiB and held a PONG for 1.4 s. In chunks the peak was
# 222 MiB and the slowest PONG 25 ms.
SWEEP_CHUNK_ROWS = 2_000

# codec.entry_size(n) is this fixed overhead plus n payload bytes; the fetch
# query adds the overhead per entry to the payload lengths.
_ENTRY_OVERHEAD = entry_size(0)

# Selects a mailbox's entries, oldest first, while their encoded sizes add up
# to at most the budget. The oldest entry is returned even when it alone is
# over the budget. Payloads are read only for the returned entries.
_FETCH = """
WITH head AS (
    SELECT seq, length(payload) AS payload_size
    FROM mailbox_messages
    WHERE recipient_id = :recipient_id AND expires_at_ms > :now_ms
    ORDER BY seq
    LIMIT :max_entries
),
running AS (
    SELECT seq,
           row_number() OVER win AS position,
           sum(payload_size + :entry_overhead) OVER win AS used_bytes
    FROM head
    WINDOW win AS (ORDER BY seq ROWS UNBOUNDED PRECEDING)
)
SELECT m.sender_id, m.message_id, m.payload, m.received_at_ms, m.expires_at_ms,
       m.trace_id
FROM running AS r
JOIN mailbox_messages AS m ON m.seq = r.seq
WHERE r.used_bytes <= :max_bytes OR r.position = 1
ORDER BY r.seq
"""

# Reads a row of each table, so that a broken file or a missing table fails.
_CHECK = """
SELECT (SELECT user_id FROM users LIMIT 1),
       (SELECT seq FROM mailbox_messages ORDER BY seq DESC LIMIT 1)
"""


class SqliteStorage:
    """Storage in one SQLite file, with group commit for every write.

    Beyond the Storage protocol it exposes figures for health reports:
    commit_count, committed_operations, failed_batch_count,
    commit_latencies_ms, last_error, last_error_at_ms, write_failing,
    corruption, open_error and file_sizes().
    """

    def __init__(
        self,
        path: Path,
        quotas: Quotas,
        write_batch_max: int,
        *,
        check_timeout_s: float = 1.0,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        max_statement_variables: int | None = None,
        sweep_chunk_rows: int = SWEEP_CHUNK_ROWS,
    ) -> None:
        """Describe the storage; nothing is opened before `open()`.

        max_statement_variables caps the bound variables per statement
        below the SQLite library's own limit (None keeps that limit).
        """
        if write_batch_max < 1:
            raise ValueError(
                f"write_batch_max must be at least 1, got {write_batch_max}"
            )
        self.path = Path(path)
        self.quotas = quotas
        self.write_batch_max = write_batch_max
        self.check_timeout_s = check_timeout_s
        self.busy_timeout_ms = busy_timeout_ms
        self._max_statement_variables = max_statement_variables
        self.sweep_chunk_rows = sweep_chunk_rows
        self._reader: aiosqlite.Connection | None = None
        self._writer: GroupCommitWriter | None = None
        self._file: DatabaseFile | None = None
        self._checkpointer: Checkpointer | None = None
        self._earlier_checkpoint_failures = 0  # of checkpointers closed before
        self._seen: SeenFilter | None = None
        self._closed = False
        self._read_error: str | None = None
        self._read_error_at_ms: int | None = None
        self._read_corruption: str | None = None
        self.open_error: str | None = "not opened yet"
        # The mailboxes as they were when the database was last closed, so
        # that /health still reports them while it is held for maintenance.
        self._closed_stats = StorageStats(0, None, 0)

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Create or migrate the schema, open both connections and load the index.

        Raises StorageUnavailable when the file cannot be opened, migrated or
        read, and the same object may try open() again later. Raises
        MigrationError when the migration files do not fit the database.
        """
        if self._writer is not None:
            raise RuntimeError("open() was already called on this storage")
        # What /health shows while the mailboxes load, which takes seconds
        # on a large database.
        self.open_error = f"opening {self.path}: loading the mailboxes"
        log.info("storage_opening", path=str(self.path))
        try:
            library_limit = await asyncio.to_thread(prepare_file, self.path)
        except (sqlite3.Error, OSError) as exc:
            raise self._open_failed(exc) from exc
        max_variables = min(
            library_limit, self._max_statement_variables or library_limit
        )
        write_connection = reader = database_file = None
        try:
            write_connection = await self._connect(read_only=False)
            reader = await self._connect(read_only=True)
            database_file = DatabaseFile(self.path)
            seen = SeenFilter()
            index = await MailboxIndex.load(write_connection, seen)
            await _load_dedup_keys(write_connection, seen)
        except (sqlite3.Error, OSError, ValueError) as exc:
            await _abandon(reader, write_connection, database_file)
            raise self._open_failed(exc) from exc
        except asyncio.CancelledError:
            # A stop during the load: each connection's thread must end too.
            await _abandon(reader, write_connection, database_file)
            raise
        self._file = database_file
        self._seen = seen
        self.open_error = None
        self._read_corruption = None
        self._reader = reader
        self._writer = GroupCommitWriter(
            write_connection,
            index,
            self.quotas,
            self.write_batch_max,
            max_variables,
            database_file.check_in_place,
        )
        self._writer.start()
        writer = self._writer
        try:
            self._checkpointer = open_checkpointer(
                self.path,
                lambda: writer.commit_count,
                writer.request_checkpoint,
                database_file.sync_data,
            )
        except sqlite3.Error as exc:
            # Checkpoints then run only inside commits, as SQLite does alone.
            log.warning("checkpoint_connection_failed", error=str(exc))
        else:
            self._checkpointer.start()
        log.info(
            "storage_opened",
            path=str(self.path),
            messages=index.message_count,
            mailboxes=index.mailbox_count(),
        )

    def _open_failed(self, exc: BaseException) -> StorageUnavailable:
        self.open_error = f"cannot open database {self.path}: {exc}"
        if is_corruption(exc):
            self._read_corruption = f"{type(exc).__name__}: {exc}"
        return StorageUnavailable(self.open_error)

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._closed

    async def close(self) -> None:
        """Refuse new work, commit everything queued, then close the file.

        A final WAL checkpoint copies the log into the database file and
        truncates it, so that a copy of the file alone is a complete backup.
        Calling close() again does nothing.
        """
        writer, reader = self._writer, self._reader
        if self._closed or writer is None or reader is None:
            return
        self._closed = True
        try:
            checkpointer, self._checkpointer = self._checkpointer, None
            if checkpointer is not None:
                try:
                    await checkpointer.stop()
                finally:
                    self._earlier_checkpoint_failures += checkpointer.failures
            await writer.stop()
            await _close_quietly(reader)
            try:
                await writer.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except (sqlite3.Error, ValueError) as exc:
                log.warning("wal_checkpoint_failed", error=str(exc))
            await _close_quietly(writer.connection)
            if self._file is not None:
                self._file.close()
                self._file = None
        except asyncio.CancelledError:
            # A caller's deadline ran out. Stopping the connection threads
            # without waiting lets the process exit, because aiosqlite's
            # threads are not daemons. Each thread closes its connection
            # after the work already queued on it. So a batch already on the
            # write thread still runs to its COMMIT although its callers get
            # StorageUnavailable, and senders' retries find it stored.
            reader.stop()
            writer.connection.stop()
            writer.cancel()
            log.warning("storage_close_cancelled", path=str(self.path))
            raise
        log.info(
            "storage_closed",
            path=str(self.path),
            commits=writer.commit_count,
            committed_operations=writer.committed_operations,
            unwritten_messages=writer.unwritten_messages,
        )

    async def suspend(self, reason: str) -> None:
        """Close the database as close() does, but leave the storage able to open again.

        Until the next open(), writes and checks raise StorageUnavailable
        naming reason.
        """
        await self.close()
        self._closed_stats = replace(self.stats(), pending_writes=0)
        self._writer = None
        self._reader = None
        self._closed = False
        self._read_corruption = None
        self.open_error = reason

    async def _connect(self, *, read_only: bool) -> aiosqlite.Connection:
        return await connect(
            self.path, busy_timeout_ms=self.busy_timeout_ms, read_only=read_only
        )

    # --- writes, through the group-commit writer -------------------------------------

    async def register_user(
        self, user_id: str, ed25519_public: bytes, x25519_public: bytes, now_ms: int
    ) -> Registration:
        return await self.submit_register(
            user_id, ed25519_public, x25519_public, now_ms
        )

    def submit_register(
        self, user_id: str, ed25519_public: bytes, x25519_public: bytes, now_ms: int
    ) -> "asyncio.Future[Registration]":
        operation = RegisterUser(
            self._new_future(),
            user_id,
            bytes(ed25519_public),
            bytes(x25519_public),
            now_ms,
        )
        return self._submit(operation)

    async def enqueue(self, message: StoredMessage) -> AckStatus:
        return (await self.submit_enqueue(message)).status

    def submit_enqueue(self, message: StoredMessage) -> "asyncio.Future[Enqueued]":
        if not isinstance(message.payload, bytes):
            raise TypeError(
                f"payload must be bytes, got {type(message.payload).__name__}"
            )
        future = self._submit(EnqueueMessage(self._new_future(), message))
        # Before the commit, so that a repeat arriving meanwhile is known.
        if self._seen is not None:
            self._seen.add(message.sender_id, message.message_id, message.expires_at_ms)
        return future

    async def acknowledge(
        self, recipient_id: str, keys: list[tuple[str, str]], now_ms: int
    ) -> list[Receipt]:
        return await self.submit_acknowledge(recipient_id, keys, now_ms)

    def submit_acknowledge(
        self, recipient_id: str, keys: list[tuple[str, str]], now_ms: int
    ) -> "asyncio.Future[list[Receipt]]":
        if not keys:
            done = self._new_future()
            done.set_result([])
            return done
        operation = AcknowledgeMessages(
            self._new_future(), recipient_id, list(keys), now_ms
        )
        return self._submit(operation)

    async def erase_user(self, user_id: str) -> None:
        await self._submit(EraseUser(self._new_future(), user_id))

    async def sweep(self, now_ms: int, dedup_window_ms: int) -> Sweep:
        """Delete every expired message and dedup record, sweep_chunk_rows at a time.

        Each chunk is one operation of the writer's queue, so messages
        arriving meanwhile commit between chunks instead of after the
        whole sweep.
        """
        expired = purged = 0
        while True:
            operation = SweepExpired(
                self._new_future(), now_ms, dedup_window_ms, self.sweep_chunk_rows
            )
            part = await self._submit(operation)
            expired += part.expired_messages
            purged += part.purged_dedup_records
            largest = max(part.expired_messages, part.purged_dedup_records)
            if largest < self.sweep_chunk_rows:
                break
        if self._seen is not None:
            self._seen.after_sweep(now_ms, dedup_window_ms)
        return Sweep(expired_messages=expired, purged_dedup_records=purged)

    def maybe_seen(self, sender_id: str, message_id: str) -> bool:
        seen = self._seen
        return seen is None or seen.may_contain(sender_id, message_id)

    async def probe_write(self) -> None:
        """Commit a write that leaves no row behind, or raise StorageUnavailable.

        A success ends the write_failing state, so an idle relay notices
        when the disk has room again.
        """
        await self._submit(ProbeWrite(self._new_future()))

    def _submit(self, operation: WriteOperation) -> asyncio.Future:
        """Queue an operation for the writer and return its future.

        Raises StorageUnavailable at once when the storage is not open,
        closed or corrupt.
        """
        writer = self._writer
        if writer is None:
            raise StorageUnavailable(f"database not open: {self.open_error}")
        if self._closed:
            raise StorageUnavailable("storage is closed")
        corruption = self.corruption
        if corruption is not None:
            raise StorageUnavailable(f"database file is corrupt: {corruption}")
        writer.submit(operation)
        return operation.future

    def _new_future(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    # --- reads -----------------------------------------------------------------------

    async def fetch(self, recipient_id: str, now_ms: int, max_bytes: int) -> Fetched:
        """Return the oldest unexpired messages of a mailbox, in mailbox order.

        Entries are taken while their encoded sizes (see codec.entry_size)
        add up to at most max_bytes, and the oldest is always returned, even
        alone over the budget. remaining counts the unexpired messages left
        out, from the index. A commit landing between the read and the count
        can make it off by that commit's changes for this mailbox.
        """
        parameters = {
            "recipient_id": recipient_id,
            "now_ms": now_ms,
            "max_entries": max(1, max_bytes // _ENTRY_OVERHEAD),
            "entry_overhead": _ENTRY_OVERHEAD,
            "max_bytes": max_bytes,
        }
        rows = await self._read(_FETCH, parameters)
        entries = [
            StoredMessage(
                sender_id, message_id, recipient_id, payload, received, expires, trace
            )
            for sender_id, message_id, payload, received, expires, trace in rows
        ]
        remaining = max(0, self.pending_count(recipient_id, now_ms) - len(entries))
        return Fetched(entries, remaining)

    async def check(self) -> None:
        """Check the file header, then run a real query within check_timeout_s.

        Raises StorageUnavailable when the storage is not open, when the file
        is missing, corrupt or its header is not SQLite's, when the query
        fails or times out, and also while writes are failing, because the
        relay then cannot store messages.
        """
        writer = self._writer
        if writer is None:
            raise StorageUnavailable(f"database not open: {self.open_error}")
        reader = self._reader
        try:
            await asyncio.wait_for(self._check_header(), self.check_timeout_s)
            corruption = self.corruption
            if corruption is not None:
                raise StorageUnavailable(f"database file is corrupt: {corruption}")
            if writer.failing:
                raise StorageUnavailable(
                    f"latest database write failed: {writer.last_error}"
                )
            await asyncio.wait_for(self._read(_CHECK, ()), self.check_timeout_s)
        except TimeoutError:
            if reader is not None and not self._closed:
                # Stops the stuck query so later reads are not queued behind it.
                await reader.interrupt()
            message = f"database check timed out after {self.check_timeout_s} s"
            self._note_read_error(message)
            raise StorageUnavailable(message) from None

    async def _check_header(self) -> None:
        """Read the file's first bytes, which open connections may never reread.

        A header overwritten under a running relay goes unnoticed by its
        connections until a query needs the damaged page, so the check reads
        the file itself.
        """
        try:
            if self._file is None:
                raise StorageUnavailable("storage is closed")
            magic = await asyncio.to_thread(self._file.read_magic)
        except FileNotFoundError:
            raise StorageUnavailable(
                f"database file {self.path} is missing: restore it and restart"
                " the relay"
            ) from None
        except DatabaseFileReplaced:
            raise StorageUnavailable(
                f"database file {self.path} was replaced while open: restart the relay"
            ) from None
        except OSError as exc:
            self._note_read_error(f"cannot read {self.path}: {exc}")
            raise StorageUnavailable(f"cannot read {self.path}: {exc}") from exc
        if magic != SQLITE_MAGIC:
            self._read_corruption = self._read_corruption or "file is not a database"
            self._note_read_error("file is not a database")
            raise StorageUnavailable(
                f"database file is corrupt: {self._read_corruption}"
            )

    async def _read(self, sql: str, parameters: object) -> list:
        reader = self._reader
        if reader is None or self._closed:
            raise StorageUnavailable("storage is closed")
        try:
            return list(await reader.execute_fetchall(sql, parameters))
        except (sqlite3.Error, ValueError) as exc:
            description = f"{type(exc).__name__}: {exc}"
            self._note_read_error(description)
            if not is_corruption(exc):
                raise StorageUnavailable(f"database read failed: {exc}") from exc
            if self._read_corruption is None:
                self._read_corruption = description
                log.error("database_corrupt", path=str(self.path), error=description)
            raise StorageUnavailable(f"database file is corrupt: {exc}") from exc

    def _note_read_error(self, description: str) -> None:
        self._read_error = description
        self._read_error_at_ms = int(time.time() * 1000)

    # --- from memory -----------------------------------------------------------------

    def pending_count(self, recipient_id: str, now_ms: int) -> int:
        if self._writer is None:
            return 0
        return self._writer.index.pending_count(recipient_id, now_ms)

    def stats(self) -> StorageStats:
        writer = self._writer
        if writer is None:
            return self._closed_stats
        return StorageStats(
            queue_size=writer.index.message_count,
            oldest_received_at_ms=writer.index.oldest_received_at_ms(),
            pending_writes=writer.pending_operations,
        )

    def mapped_paths(self) -> tuple[str, ...]:
        """Return the files SQLite maps into memory: the database and its WAL index.

        Resolved as the kernel names them in /proc/self/smaps.
        """
        database = os.path.realpath(self.path)
        return (database, database + "-shm")

    @property
    def index(self) -> MailboxIndex | None:
        """The in-memory mailbox index, or None before open()."""
        return None if self._writer is None else self._writer.index

    # --- figures for health reports --------------------------------------------------

    @property
    def writer(self) -> GroupCommitWriter | None:
        return self._writer

    @property
    def commit_count(self) -> int:
        return 0 if self._writer is None else self._writer.commit_count

    @property
    def committed_operations(self) -> int:
        return 0 if self._writer is None else self._writer.committed_operations

    @property
    def failed_batch_count(self) -> int:
        return 0 if self._writer is None else self._writer.failed_batch_count

    @property
    def checkpoint_failures(self) -> int:
        """WAL checkpoints or syncs beside the writer that failed, since start."""
        current = self._checkpointer
        return self._earlier_checkpoint_failures + (
            0 if current is None else current.failures
        )

    @property
    def commit_latencies_ms(self) -> list[float]:
        """Durations of the last 64 batches, BEGIN to end of COMMIT, oldest first."""
        return [] if self._writer is None else list(self._writer.commit_latencies_ms)

    @property
    def last_error(self) -> str | None:
        """The latest database error of a read or a write batch, or None."""
        return self._latest_error()[0]

    @property
    def last_error_at_ms(self) -> int | None:
        """Wall-clock time of last_error in Unix milliseconds, or None."""
        return self._latest_error()[1]

    def _latest_error(self) -> tuple[str | None, int | None]:
        read_error = (self._read_error, self._read_error_at_ms)
        writer = self._writer
        if writer is None or writer.last_error_at_ms is None:
            return read_error
        if read_error[1] is not None and read_error[1] > writer.last_error_at_ms:
            return read_error
        return writer.last_error, writer.last_error_at_ms

    @property
    def write_failing(self) -> bool:
        """True from a failed write batch until a batch that changed rows commits."""
        return self._writer is not None and self._writer.failing

    @property
    def corruption(self) -> str | None:
        """The first error that reported a damaged file, or None; it stays set."""
        if self._read_corruption is not None:
            return self._read_corruption
        return None if self._writer is None else self._writer.corruption

    def file_sizes(self) -> tuple[int, int]:
        """Return the sizes in bytes of the database file and its WAL (0 if absent)."""
        return _size(self.path), _size(self.path.with_name(self.path.name + "-wal"))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def _close_quietly(connection: aiosqlite.Connection) -> None:
    try:
        await connection.close()
    except (sqlite3.Error, ValueError) as exc:
        log.warning("database_close_failed", error=str(exc))


async def _abandon(
    reader: aiosqlite.Connection | None,
    writer: aiosqlite.Connection | None,
    database_file: DatabaseFile | None,
) -> None:
    """Close what an open() that did not finish had opened."""
    for connection in (reader, writer):
        if connection is not None:
            await _close_quietly(connection)
    if database_file is not None:
        database_file.close()


async def _load_dedup_keys(connection: aiosqlite.Connection, seen: SeenFilter) -> None:
    """Add the key of every dedup record to the filter of message ids seen.

    A record lasts one window past the time it was recorded, as a stored
    message lasts one window past its expiry at the latest, so the record
    time serves as the key's expiry.
    """
    query = "SELECT sender_id, message_id, recorded_at_ms FROM dedup_records"
    async with connection.execute(query) as cursor:
        while rows := await cursor.fetchmany(LOAD_CHUNK_ROWS):
            for sender_id, message_id, recorded_at_ms in rows:
                seen.add(sender_id, message_id, recorded_at_ms)
