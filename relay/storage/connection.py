"""Open the database file: migrations first, then configured aiosqlite connections."""

import errno
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite

from relay.storage.migrate import migrate

T = TypeVar("T")

# RETURNING, which the batches use, arrived in SQLite 3.35.
MIN_SQLITE_VERSION = (3, 35, 0)

# Set on every connection. Operators run the sqlite3 tool against the live
# file (ANALYZE, VACUUM, integrity_check), so the busy timeout lets the relay
# wait for their locks instead of failing at once.
_PRAGMAS = """
PRAGMA synchronous = NORMAL;
PRAGMA cache_size = -10000;
PRAGMA temp_store = MEMORY;
PRAGMA mmap_size = 268435456;
PRAGMA foreign_keys = OFF;
"""


# Pages the write-ahead log may reach before a commit copies it back into the
# database file (SQLite's default is 1,000). The copy runs inside the commit
# that crosses the limit, so a larger limit means fewer, longer copies, and
# pages changed by many commits are copied once. On a 2-core test machine,
# 10,000 pages (about 40 MB) raised group-commit throughput by about a quarter
# (batches of 300 to 1,000 messages of 300 bytes), with the slowest commit
# near 90 ms instead of 50 ms. The checkpointer (checkpoint.py) now copies
# pages beside the writer and has the writer restart the log past 30,000
# pages. This checkpoint is then a backstop for when the checkpointer cannot
# run (its connection failed to open, or its checkpoints fail), and 40,000
# pages are about 160 MB of log at most.
WAL_AUTOCHECKPOINT_PAGES = 40_000

# Size the WAL file is cut back to when a checkpoint lets the log start over.
# Without a limit the file keeps the largest size it ever reached, so the WAL
# size on /health would never fall after a spike or a blocked checkpoint.
# Above the checkpointer's restart length, so that the file is not cut back
# and grown again at every restart.
WAL_SIZE_LIMIT_BYTES = 128 * 1024 * 1024

# Primary result codes of SQLite (https://sqlite.org/rescode.html) that mean
# the file itself is damaged, as opposed to busy, full or unreadable for now.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

SQLITE_MAGIC = b"SQLite format 3\x00"


def is_corruption(exc: BaseException) -> bool:
    """Tell whether an error reports a damaged file ("malformed", "not a database")."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.Error)
        and code is not None
        and (code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB))
    )


class DatabaseFileReplaced(OSError):
    """The database path names another file than the one the relay has open."""


class DatabaseFile:
    """The database file through one descriptor kept open: its header, place and syncs.

    Closing any descriptor of a file drops every POSIX lock the process
    holds on it, SQLite's included. A checker that opened and closed the
    file on each call would leave the relay's connections unlocked, and
    the next sqlite3 run beside it would take itself for the last user,
    checkpoint and delete the WAL under the relay. So the descriptor opens
    with the connections and closes only after them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read_magic(self) -> bytes:
        """Return the bytes where SQLite keeps SQLITE_MAGIC; blocking."""
        self.check_in_place()
        return os.pread(self._open_descriptor(), len(SQLITE_MAGIC), 0)

    def check_in_place(self) -> None:
        """Raise unless the path still names the open file; blocking.

        The relay's connections keep a deleted or renamed file open and go
        on committing to it, but a restart opens whatever the path names,
        so those commits would be lost. Raises FileNotFoundError when the
        path names nothing and DatabaseFileReplaced when it names another
        file.
        """
        descriptor = self._open_descriptor()
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, "database file deleted while open", str(self.path)
            ) from None
        opened = os.fstat(descriptor)
        if (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
            raise DatabaseFileReplaced(
                errno.ESTALE, "database file replaced while open", str(self.path)
            )

    def sync_data(self) -> None:
        """Write the file's changed pages through to the disk; blocking."""
        os.fdatasync(self._open_descriptor())

    def _open_descriptor(self) -> int:
        if self._descriptor is None:
            raise ValueError("database file is closed")
        return self._descriptor

    def close(self) -> None:
        """Close the descriptor; call only after every connection is closed."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def prepare_file(path: Path) -> int:
    """Create the folder, apply migrations and return the bound-variable limit.

    Blocking: the relay runs it in a worker thread before opening its
    connections. The limit is the most `?` one statement may hold in this
    SQLite library.
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        required = ".".join(map(str, MIN_SQLITE_VERSION))
        raise sqlite3.NotSupportedError(
            f"SQLite {sqlite3.sqlite_version} is too old: the relay needs {required} "
            "or newer"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.stat().st_size == 0:
        _create_incremental(path)
    migrate(path)
    probe = sqlite3.connect(":memory:")
    try:
        return probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    finally:
        probe.close()


def _create_incremental(path: Path) -> None:
    """Start a new file with auto_vacuum INCREMENTAL and the WAL journal.

    Incremental vacuum gives free pages back to the file system in short
    transactions, so maintenance can shrink the file while a relay writes.
    SQLite only accepts the mode before the first table exists, and setting
    the journal mode writes it into the file header.
    """
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
        connection.execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()


async def connect(
    path: Path, *, busy_timeout_ms: int, read_only: bool
) -> aiosqlite.Connection:
    """Open one connection in WAL mode and autocommit mode.

    The writer issues BEGIN and COMMIT itself, so Python's implicit
    transactions are off. A read-only connection refuses writes with
    query_only, as a guard against mistakes. The write connection runs the
    automatic WAL checkpoints.
    """
    connection = await aiosqlite.connect(path, isolation_level=None)
    try:
        await connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        rows = await connection.execute_fetchall("PRAGMA journal_mode = WAL")
        mode = rows[0][0] if rows else None
        if mode != "wal":
            raise sqlite3.OperationalError(
                f"cannot switch {path} to WAL journal mode (got {mode!r}); "
                "the file system must support shared memory and file locks"
            )
        if read_only:
            script = _PRAGMAS + "PRAGMA query_only = ON;"
        else:
            script = (
                _PRAGMAS
                + f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
                + f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES};"
            )
        await connection.executescript(script)
    except BaseException:
        await connection.close()
        raise
    return connection


async def run_on_thread(
    connection: aiosqlite.Connection,
    function: Callable[..., T],
    *args: object,
) -> T:
    """Call function(sqlite3_connection, *args) on the connection's own thread.

    aiosqlite sends each statement to its thread and the result back
    through the event loop. Work of several statements passed whole makes
    that trip once. aiosqlite has no public call for this, so this uses
    its queue (`_execute`) and its sqlite3 connection (`_conn`), both
    present in aiosqlite 0.20 to 0.22, the versions pyproject.toml admits.

    The thread keeps the last call it ran, and that call's outcome, until
    the next call arrives. A write batch's payloads must not stay in memory
    while the relay is quiet, so the call lets go of its arguments once it
    has them. A failed call returns its exception in a wrapper, emptied
    here before the exception is raised. The exception's traceback gathers
    the callers' frames as it propagates, and those contain the batch.
    """
    waiting = [args]
    del args

    def call() -> T | _RaisedOnThread:
        try:
            return function(connection._conn, *waiting.pop())
        except Exception as exc:
            return _RaisedOnThread(exc)

    outcome = await connection._execute(call)
    if isinstance(outcome, _RaisedOnThread):
        error, outcome.error = outcome.error, None
        raise error
    return outcome


class _RaisedOnThread:
    """An exception from a call on the database thread, until it is raised."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error: Exception | None = error
