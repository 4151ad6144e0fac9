"""Group commit: one task owns the write connection and commits queued work together.

Callers submit write operations and await their futures. The writer takes
everything queued, up to the batch limit, runs it as one transaction and
commits. Only then does it update the mailbox index and resolve the
futures, so an enqueue returns QUEUED only after its commit. Operations
submitted during a commit form the next batch, so under load many messages
share one commit. An erasure runs in a batch of its own, so that ordering
around it is exact.

A failed batch fails its futures with StorageUnavailable and the writer
keeps serving: when the cause goes away (disk space returns, a lock is
released), later batches succeed without a restart. Only a batch that
changed rows ends the failing state, because a commit that wrote nothing
succeeds even on a full disk. A batch that reports a damaged file sets
`corruption`, which stays set, because a damaged file needs an operator.
"""

import asyncio
import enum
import sqlite3
import time
from collections import deque
from collections.abc import Callable

import aiosqlite
import structlog

from relay.ops.logging import LogThrottle
from relay.storage.base import Quotas, StorageUnavailable
from relay.storage.batch import BatchTransaction, IndexChanges
from relay.storage.connection import is_corruption, run_on_thread
from relay.storage.mailbox_index import MailboxIndex
from relay.storage.operations import EnqueueMessage, EraseUser, WriteOperation

log = structlog.get_logger(__name__)


class _Stage(enum.Enum):
    IDLE = "idle"
    OPEN = "open"  # BEGIN succeeded, COMMIT not sent yet
    COMMITTING = "committing"


COMMIT_LATENCY_SAMPLES = 64
# A failing disk fails every batch; log the first failure, then at most one
# line per interval with the number of failures in between.
FAILURE_LOG_INTERVAL_S = 10.0


class GroupCommitWriter:
    """The only writer of the database file, committing operations in batches.

    Public counters for health reports: commit_count, committed_operations,
    failed_batch_count, commit_latencies_ms (the last 64 batches, from BEGIN
    to the end of COMMIT), last_error with last_error_at_ms, failing and
    corruption. failing is True from a failed batch until a batch that
    changed rows commits. corruption is the first error that reported a
    damaged file, or None.
    """

    def __init__(
        self,
        connection: aiosqlite.Connection,
        index: MailboxIndex,
        quotas: Quotas,
        batch_max: int,
        max_variables: int,
        check_file: Callable[[], None] | None = None,
    ) -> None:
        self._db = connection
        self._check_file = check_file
        self.index = index
        self._quotas = quotas
        self._batch_max = batch_max
        self._max_variables = max_variables
        self._queue: deque[WriteOperation] = deque()
        self._wakeup = asyncio.Event()
        self._in_flight = 0
        self._closing = False
        self._task: asyncio.Task | None = None
        self._index_stale = False
        self._stage = _Stage.IDLE
        self._failure_log = LogThrottle(FAILURE_LOG_INTERVAL_S)
        self._checkpoint_requested = False

        self.commit_count = 0
        self.committed_operations = 0
        self.unwritten_messages = 0  # acknowledged before their batch, never written
        self.failed_batch_count = 0
        self.checkpoints = 0  # run at the checkpointer's request
        self.commit_latencies_ms: deque[float] = deque(maxlen=COMMIT_LATENCY_SAMPLES)
        self.last_error: str | None = None
        self.last_error_at_ms: int | None = None
        self.failing = False
        self.corruption: str | None = None

    @property
    def connection(self) -> aiosqlite.Connection:
        """The write connection, for diagnostics; only the writer task writes."""
        return self._db

    @property
    def pending_operations(self) -> int:
        """Operations submitted and not yet resolved, the running batch included."""
        return len(self._queue) + self._in_flight

    @property
    def queued_operations(self) -> int:
        """Operations waiting for the next batch, the running one excluded."""
        return len(self._queue)

    def request_checkpoint(self) -> None:
        """Request a checkpoint before the next batch, so that the log restarts."""
        self._checkpoint_requested = True
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="storage-writer")
        self._task.add_done_callback(_report_stopped)

    def submit(self, operation: WriteOperation) -> None:
        """Queue an operation for the next batch; its future gets the outcome."""
        if self._closing or self._task is None or self._task.done():
            raise StorageUnavailable("storage is closed")
        self._queue.append(operation)
        self._wakeup.set()

    def cancel(self) -> None:
        """Stop at once: fail every queued operation with StorageUnavailable."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Refuse new operations, commit those already queued, then return."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        try:
            while True:
                if self._checkpoint_requested:
                    await self._checkpoint()
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = self._take_batch()
                if batch:
                    await self._commit(batch)
                # The batch contains every payload and future of its commit.
                # Kept until the next batch, a burst followed by quiet would
                # keep them all in memory.
                del batch
        finally:
            # Reached with work queued only when the task is cancelled.
            self._closing = True
            queued = list(self._queue)
            self._queue.clear()
            _fail(queued, StorageUnavailable("storage writer stopped"))

    def _take_batch(self) -> list[WriteOperation]:
        batch: list[WriteOperation] = []
        queue = self._queue
        while queue and len(batch) < self._batch_max:
            operation = queue[0]
            if operation.future.done():
                # The caller was cancelled before the batch began and will not
                # read the outcome, so the operation is skipped.
                queue.popleft()
                continue
            if isinstance(operation, EraseUser):
                if not batch:
                    batch.append(queue.popleft())
                break
            batch.append(queue.popleft())
        return batch

    async def _commit(self, batch: list[WriteOperation]) -> None:
        self._in_flight = len(batch)
        try:
            changes, misplaced = await self._run_transaction(batch)
        except Exception as exc:
            await self._recover(exc, len(batch))
            _fail(batch, exc)
            # Every future's error names exc as its cause, and exc's traceback
            # references the frames that reference the batch: a cycle that
            # only the collector would free, payloads included.
            exc.__traceback__ = None
            return
        except BaseException as exc:
            _fail(batch, exc)
            raise
        finally:
            self._in_flight = 0
        self._apply(changes)
        if misplaced is not None:
            # The commit went to a file deleted or replaced under the relay,
            # which the next start will not open, so the batch fails.
            self._record_failure(misplaced, len(batch))
            _fail(batch, misplaced)
            return
        # Enqueues first: callbacks run in the order of set_result, and a
        # sender must hear QUEUED before the DELIVERED of an ACK in the
        # same batch, even when the ACK was queued first.
        for operation in sorted(batch, key=_enqueues_first):
            if not operation.future.done():
                operation.future.set_result(operation.result(self.index))

    async def _run_transaction(
        self, batch: list[WriteOperation]
    ) -> tuple[IndexChanges, OSError | None]:
        """Commit the batch; return its index changes and the file check's error."""
        if self._index_stale:
            await self._rebuild_index()
        started = time.perf_counter()
        changed, changes, misplaced = await run_on_thread(
            self._db, self._transact, batch
        )
        if misplaced is None:
            self._record_commit(started, len(batch), changed)
        return changes, misplaced

    def _transact(
        self, connection: sqlite3.Connection, batch: list[WriteOperation]
    ) -> tuple[bool, IndexChanges, OSError | None]:
        """Run one batch from BEGIN to COMMIT on the database thread.

        The whole transaction is one trip to the thread and back. Statement
        by statement, each trip waited for a turn of the event loop, which
        under load is busy with a burst of datagrams. Returns whether the
        batch changed any row, its changes to the index, and the error of
        the file check when the path no longer names the committed file.
        """
        transaction = BatchTransaction(
            connection, self.index, self._quotas, self._max_variables
        )
        changes_before = connection.total_changes
        connection.execute("BEGIN IMMEDIATE")
        self._stage = _Stage.OPEN
        transaction.run(batch)
        self._stage = _Stage.COMMITTING
        connection.execute("COMMIT")
        self._stage = _Stage.IDLE
        changed = connection.total_changes != changes_before
        return changed, transaction.changes, self._misplaced_file()

    def _misplaced_file(self) -> OSError | None:
        """Return the file check's error when the path no longer names this file."""
        if self._check_file is None:
            return None
        try:
            self._check_file()
        except OSError as exc:
            return exc
        return None

    async def _checkpoint(self) -> None:
        # Between batches the copy can reach the log's end, so the next BEGIN
        # restarts the log. A running read stops it short, which loses nothing.
        self._checkpoint_requested = False
        try:
            await self._db.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
        except (sqlite3.Error, ValueError) as exc:
            log.warning("wal_checkpoint_failed", error=str(exc), by="writer")
        else:
            self.checkpoints += 1

    async def _recover(self, exc: Exception, operations: int) -> None:
        """Roll back a failed batch and note whether the index still matches the file.

        The index changes only after a commit, so it still matches the file
        when BEGIN failed, or when the batch failed before COMMIT and the
        ROLLBACK succeeded. A failed COMMIT or ROLLBACK leaves the file's
        state in doubt, and the index is then rebuilt before the next batch.
        """
        self._record_failure(exc, operations)
        stage, self._stage = self._stage, _Stage.IDLE
        if stage is _Stage.IDLE:
            return
        try:
            await self._db.execute("ROLLBACK")
        except (sqlite3.Error, ValueError):
            self._index_stale = True
            return
        if stage is _Stage.COMMITTING:
            self._index_stale = True

    async def _rebuild_index(self) -> None:
        """Replace the index with one read from the database."""
        self.index = await MailboxIndex.load(self._db)
        self._index_stale = False
        # While writes fail (a full disk) every failed COMMIT leads here, and
        # the failure log already reports them at a bounded rate.
        log_rebuilt = log.debug if self.failing else log.info
        log_rebuilt("mailbox_index_rebuilt", messages=self.index.message_count)

    def _apply(self, changes: IndexChanges) -> None:
        self.unwritten_messages += changes.unwritten
        try:
            changes.apply(self.index)
        except Exception:
            # The commit succeeded, so the index is rebuilt from the file
            # before the next batch.
            log.exception("mailbox_index_update_failed")
            self._index_stale = True

    def _record_commit(self, started: float, operations: int, changed: bool) -> None:
        self.commit_latencies_ms.append((time.perf_counter() - started) * 1000)
        self.commit_count += 1
        self.committed_operations += operations
        if self.failing and changed:
            log.info(
                "database_writes_recovered", failed_batches=self.failed_batch_count
            )
            self.failing = False

    def _record_failure(self, exc: Exception, operations: int) -> None:
        self.failed_batch_count += 1
        self.failing = True
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_at_ms = int(time.time() * 1000)
        if self.corruption is None and is_corruption(exc):
            self.corruption = self.last_error
        held_back = self._failure_log.allow("database_write_failed")
        if held_back is None:
            return
        log_error = log.error if _is_database_error(exc) else log.exception
        log_error(
            "database_write_failed",
            error=self.last_error,
            operations=operations,
            failures_since_last_log=held_back,
        )


def _is_database_error(exc: BaseException) -> bool:
    # aiosqlite raises ValueError once its connection is closed, and the
    # file check reports a deleted or replaced file with an OSError.
    return isinstance(exc, sqlite3.Error | ValueError | OSError)


def _fail(batch: list[WriteOperation], exc: BaseException) -> None:
    detail = str(exc) or type(exc).__name__
    for operation in batch:
        if not operation.future.done():
            error = StorageUnavailable(f"database write failed: {detail}")
            error.__cause__ = exc
            operation.future.set_exception(error)


def _report_stopped(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("storage_writer_stopped", error=repr(task.exception()))


def _enqueues_first(operation: WriteOperation) -> int:
    return 0 if isinstance(operation, EnqueueMessage) else 1
