"""The database's lock file, which shows tools whether a relay is using the file.

A running relay holds an exclusive flock(2) on `<database>.lock` while it
uses the database, and also while it retries opening a database it could
not open. It lets go only while `<database>.hold` exists, which an
operator creates to restore or VACUUM without stopping the process. Tools
that must not run beside a relay, such as restore and a blocking VACUUM,
take the lock exclusively too, which fails at once while a relay holds it.
A second relay started on the same file cannot take it either: it keeps
answering 503 and retrying, since two relays would each keep their own
in-memory mailbox index and disagree.

The kernel drops the lock when its process exits, so a killed relay leaves
no stale lock behind. flock is local to one host, as a Fly volume is.
"""

import fcntl
import os
from pathlib import Path


class DatabaseInUse(Exception):
    """Another process holds the database's lock file."""


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def hold_path(database: Path) -> Path:
    """Return the file whose presence asks a running relay to let go of the database."""
    return database.with_name(database.name + ".hold")


class DatabaseLock:
    """A flock on `<database>.lock`: exclusive for relays and for tools."""

    def __init__(self, database: Path) -> None:
        self.path = lock_path(Path(database))
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def acquire(self, *, exclusive: bool) -> None:
        """Take the lock without waiting; raise DatabaseInUse when it is taken.

        Creates the lock file (mode 0600) and its folder when missing.
        Raises OSError when the file cannot be created.
        """
        if self._descriptor is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            holder = "a relay or a tool" if exclusive else "a restore or VACUUM"
            raise DatabaseInUse(
                f"{holder} is using the database (lock held on {self.path})"
            ) from None
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> "DatabaseLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def relay_is_running(database: Path) -> bool:
    """Tell whether a relay holds the database's lock file now.

    The result is a snapshot: a relay may start or stop right after it.
    """
    lock = DatabaseLock(database)
    if not lock.path.exists():
        return False
    try:
        lock.acquire(exclusive=True)
    except DatabaseInUse:
        return True
    lock.release()
    return False
