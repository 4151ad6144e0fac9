"""WAL checkpoints on a connection of their own, beside the group-commit writer.

A checkpoint copies the write-ahead log back into the database file and
syncs it. Run inside a commit, as SQLite's automatic checkpoint does, it
holds up every message of that batch (46 to 157 ms on the 2-core test
machine, where the commits around it took 1 to 6 ms). PASSIVE checkpoints
on another connection copy the same pages while the writer keeps
committing, so the writer's own automatic checkpoint, kept as a backstop,
finds almost nothing left to copy. That backstop is still what lets the
log restart from its beginning under continuous load: only the single
writer can checkpoint with no commit landing in between.
"""

import asyncio
import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

CHECKPOINT_INTERVAL_S = 0.5
FAILURE_LOG_INTERVAL_S = 60.0


class Checkpointer:
    """Runs PASSIVE checkpoints every interval while the writer commits.

    The connection is a plain sqlite3 one, used from the loop's default
    executor one checkpoint at a time, so it adds no thread of its own.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        commit_count: Callable[[], int],
        interval_s: float = CHECKPOINT_INTERVAL_S,
    ) -> None:
        self._db = connection
        self._commit_count = commit_count
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self.checkpoints = 0
        self.failures = 0
        self._failure_logged_at = -math.inf

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
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, self._checkpoint)
                self.checkpoints += 1
            except sqlite3.Error as exc:
                self._record_failure(exc)

    def _checkpoint(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _record_failure(self, exc: Exception) -> None:
        # A failed checkpoint loses nothing: the pages stay in the log and
        # the writer's own checkpoint copies them later.
        self.failures += 1
        now = time.monotonic()
        if now - self._failure_logged_at >= FAILURE_LOG_INTERVAL_S:
            self._failure_logged_at = now
            log.warning("wal_checkpoint_failed", error=str(exc), failures=self.failures)


def open_checkpointer(path: Path, commit_count: Callable[[], int]) -> Checkpointer:
    """Open the checkpoint connection; commit_count returns the writer's commits.

    A checkpoint is skipped while the count stays the same.

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
    return Checkpointer(connection, commit_count)
