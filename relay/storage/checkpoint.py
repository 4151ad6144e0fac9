"""WAL checkpoints on a connection of their own, beside the group-commit writer.

A checkpoint copies the write-ahead log back into the database file and
syncs it. Run inside a commit, as SQLite's automatic checkpoint does, it
holds up every message of that batch (46 to 157 ms on the 2-core test
machine, where the commits around it took 1 to 6 ms). PASSIVE checkpoints
on another connection copy the same pages while the writer keeps
committing.

Copying is not enough to keep the log short. SQLite starts the log over
from its beginning only when a write transaction begins on a log that is
wholly copied, and under continuous load the writer commits again while
a checkpoint is still syncing, so the log never is. Left alone it grows
to the writer's automatic checkpoint (connection.py), whose copy, sync
and cut-back of a 160 MB file stalled every message of one batch for 80
to 300 ms. So once the log passes LOG_RESTART_PAGES, this checkpointer
copies it again, each pass taking what was committed during the one
before, until a pass finds few new pages. Then it requests the writer to
copy the rest itself between two batches. Only the single writer can
finish a checkpoint with no commit landing in between, and its next
transaction then restarts the log. The messages that arrive meanwhile
wait for the writer's copy and its two syncs.

SQLite syncs the database file at the end of a checkpoint only when no
commit landed during it (walCheckpoint in SQLite's wal.c syncs only when
the copied frames reach the log's current end). Under continuous commits
no pass qualifies, so every page the passes copied waited in the page
cache for the writer's checkpoint. Its sync then wrote up to the whole
log's worth (about 117 MiB) while messages waited: 35 to 117 ms on the
2-core test machine.
So after every pass the checkpointer syncs the file itself, on its own
thread, and the writer's sync finds only the pages of its own copy to
write. A pass's result does not tell whether SQLite synced, and a sync
of 4 KiB took 0.3 ms there, so syncing after every pass costs little.
"""

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import structlog

from relay.ops.logging import LogThrottle

log = structlog.get_logger(__name__)

CHECKPOINT_INTERVAL_S = 0.5
# Log length, in pages, past which the writer is requested to finish a
# checkpoint so that the log restarts. Every restart stalls the writer for
# its last copy and two syncs, so a longer log means fewer stalls.
# At 2,000 messages a second one came every two seconds at 12,000 pages,
# and every four to five seconds at 30,000 pages. 30,000 pages of 4 KiB are
# about 117 MiB. That is under the size the file is cut back to
# (connection.WAL_SIZE_LIMIT_BYTES), so a restart does not also shrink the
# file, and under the WAL size at which /health reports degraded.
LOG_RESTART_PAGES = 30_000
# Once the log is past restart_pages, passes repeat until one finds at most
# this many pages committed during the pass before it. The writer then
# copies about as many pages, so its stall is mostly its two syncs.
WRITER_COPY_PAGES = 128
# Largest number of passes after the first. Past it the writer is requested
# anyway, because commits outpace the copies.
CATCH_UP_PASSES = 4
FAILURE_LOG_INTERVAL_S = 60.0


class Checkpointer:
    """Runs PASSIVE checkpoints every interval while the writer commits.

    The connection is a plain sqlite3 one, used from the loop's default
    executor one checkpoint at a time, so it adds no thread of its own.
    `request_checkpoint` asks the writer for a checkpoint before its next
    batch. It is called once the log has passed `restart_pages`.
    `sync_file` writes the database file's copied pages through to the
    disk after each pass, on the same executor thread.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        commit_count: Callable[[], int],
        request_checkpoint: Callable[[], None],
        sync_file: Callable[[], None] | None = None,
        interval_s: float = CHECKPOINT_INTERVAL_S,
        restart_pages: int = LOG_RESTART_PAGES,
    ) -> None:
        self._db = connection
        self._commit_count = commit_count
        self._request_checkpoint = request_checkpoint
        self._sync_file = sync_file
        self.interval_s = interval_s
        self.restart_pages = restart_pages
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self.checkpoints = 0
        self.failures = 0
        self._failure_log = LogThrottle(FAILURE_LOG_INTERVAL_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="storage-checkpointer")

    async def stop(self) -> None:
        """Stop checkpointing and close the connection."""
        self._stopping.set()
        try:
            if self._task is not None:
                # A checkpoint in progress finishes first; wait() raises
                # only when this call itself is cancelled.
                await asyncio.wait([self._task])
        finally:
            try:
                self._db.close()
            except sqlite3.Error as exc:
                log.warning("database_close_failed", error=str(exc))

    async def _run(self) -> None:
        seen = self._commit_count()
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
            except TimeoutError:
                pass
            else:
                return
            commits = self._commit_count()
            if commits == seen:
                continue
            seen = commits
            try:
                await self._copy_log()
            except (sqlite3.Error, OSError) as exc:
                self._record_failure(exc)

    async def _copy_log(self) -> None:
        """Copy the log back, and past restart_pages let the writer restart it."""
        log_pages = await self._pass()
        if log_pages < self.restart_pages:
            return
        for _ in range(CATCH_UP_PASSES):
            if self._stopping.is_set():
                return  # the writer's last commit and close copy the rest
            previous, log_pages = log_pages, await self._pass()
            if log_pages < previous:
                # The log restarted by itself, or the pass found the log busy
                # and read 0 pages. The next round looks again.
                return
            if log_pages - previous <= WRITER_COPY_PAGES:
                break
        self._request_checkpoint()

    async def _pass(self) -> int:
        loop = asyncio.get_running_loop()
        log_pages = await loop.run_in_executor(None, self._checkpoint)
        self.checkpoints += 1
        return log_pages

    def _checkpoint(self) -> int:
        """Copy the pages the log contains now and return the log's length in pages."""
        row = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if not row:
            return 0
        # The row is (busy, pages in the log, pages copied so far), with -1
        # pages when busy.
        _, log_pages, copied = row
        if self._sync_file is not None and copied > 0:
            self._sync_file()
        return max(log_pages, 0)

    def _record_failure(self, exc: Exception) -> None:
        # A failed checkpoint or sync loses nothing: the pages stay in the
        # log, which restarts only after the writer's own checkpoint has
        # copied and synced them. On a disk returning EIO that failed too.
        self.failures += 1
        if self._failure_log.allow("wal_checkpoint_failed") is not None:
            log.warning("wal_checkpoint_failed", error=str(exc), failures=self.failures)


def open_checkpointer(
    path: Path,
    commit_count: Callable[[], int],
    request_checkpoint: Callable[[], None],
    sync_file: Callable[[], None] | None = None,
) -> Checkpointer:
    """Open the checkpoint connection beside the writer.

    commit_count returns the writer's commits: a checkpoint is skipped while
    the count stays the same. request_checkpoint asks the writer for a
    checkpoint of its own, which lets the log restart. sync_file, when
    given, syncs the database file after each pass that copied pages.

    The file is already in WAL mode. The connection is query_only, like the
    read connection: a checkpoint changes no content, and SQLite runs it on
    such a connection.
    """
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("PRAGMA query_only = ON")
    except sqlite3.Error:
        connection.close()
        raise
    return Checkpointer(connection, commit_count, request_checkpoint, sync_file)
