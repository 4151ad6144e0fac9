"""Keep the relay serving while its database cannot be used, and notice recovery.

A relay whose database is corrupt, missing, locked by a restore or on a full
disk keeps both ports open. /health returns 503 with the reason, MESSAGE
gets MESSAGE_ACK UNAVAILABLE and REGISTER gets ERROR OVERLOADED. Exiting
instead would turn the platform's restart policy into a crash loop.

The watch retries at a fixed interval. It opens a database that could not
be opened, and sends a write probe while writes fail, so that the relay
recovers without a restart once disk space returns. A file found corrupt
while open is not reopened: the watch logs it until an operator restores a
backup. While the hold file `<database>.hold` exists, the watch closes the
database and lets go of the lock file, so that restore can run while the
process keeps answering; removing the hold file opens the database again.
"""

import asyncio
import contextlib

import structlog

from relay.ops.logging import LogThrottle
from relay.storage.base import StorageUnavailable
from relay.storage.lock import DatabaseInUse, DatabaseLock, hold_path
from relay.storage.sqlite import SqliteStorage

log = structlog.get_logger("relay.server")

# A failure that lasts is logged once at ERROR, then at most once per
# interval with the number of attempts in between.
ERROR_LOG_INTERVAL_S = 60.0

CORRUPTION_ADVICE = (
    "stop the relay, then restore the database from the latest backup "
    "(docs/operations.md, Database corruption)"
)


class ThrottledError:
    """An ERROR log line for a repeating failure, at most once per interval."""

    def __init__(self, event: str, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self.event = event
        self.interval_s = interval_s
        self.failures = 0
        self._throttle = LogThrottle(interval_s)

    def failed(self, **fields: object) -> None:
        self.failures += 1
        held_back = self._throttle.allow(self.event)
        if held_back is not None:
            log.error(self.event, failures_since_last_log=held_back, **fields)

    def reset(self) -> int:
        """Forget the failures; return how many there were."""
        failures, self.failures = self.failures, 0
        self._throttle = LogThrottle(self.interval_s)
        return failures


class StorageWatch:
    """Opens the storage, retries what failed, and holds the relay's lock file."""

    def __init__(self, storage: SqliteStorage, retry_interval_s: float) -> None:
        self.storage = storage
        self.retry_interval_s = retry_interval_s
        self.lock = DatabaseLock(storage.path)
        self.hold = hold_path(storage.path)
        self.holding = False
        self._open_failures = ThrottledError("storage_open_failed")
        self._corruption = ThrottledError("database_corrupt")

    async def open(self) -> bool:
        """Take the lock file and open the storage; return whether it is open.

        Failures are logged, never raised: the relay serves without its
        database until a later attempt succeeds.
        """
        if self.hold.exists():
            self._keep_holding()
            return False
        if not self._take_lock():
            return False
        try:
            await self.storage.open()
        except StorageUnavailable as exc:
            self._open_failures.failed(
                error=str(exc),
                path=str(self.storage.path),
                retry_in_s=self.retry_interval_s,
            )
            return False
        failures = self._open_failures.reset()
        if failures > 1:
            log.info("storage_recovered", failed_attempts=failures - 1)
        return True

    def _take_lock(self) -> bool:
        try:
            # Exclusive, so a second relay on the same file waits with 503
            # instead of serving from its own, diverging mailbox index.
            self.lock.acquire(exclusive=True)
        except (DatabaseInUse, OSError) as exc:
            self.storage.open_error = str(exc)
            self._open_failures.failed(
                error=str(exc),
                path=str(self.storage.path),
                retry_in_s=self.retry_interval_s,
            )
            return False
        return True

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval_s)
            await self.check_once()

    async def check_once(self) -> None:
        storage = self.storage
        if self.hold.exists():
            if storage.is_open:
                await storage.suspend(self._hold_reason())
            self._keep_holding()
            return
        if self.holding:
            self.holding = False
            log.info("database_hold_ended", path=str(storage.path))
        if not storage.is_open:
            await self.open()
        elif storage.corruption is not None:
            self._corruption.failed(
                error=storage.corruption,
                path=str(storage.path),
                action=CORRUPTION_ADVICE,
            )
        elif storage.write_failing:
            # The writer logs a failed probe like any failed batch.
            with contextlib.suppress(StorageUnavailable):
                await storage.probe_write()

    def _hold_reason(self) -> str:
        return f"database held for maintenance: remove {self.hold} to resume"

    def _keep_holding(self) -> None:
        self.lock.release()
        self.storage.open_error = self._hold_reason()
        if not self.holding:
            self.holding = True
            log.warning(
                "database_held", path=str(self.storage.path), hold_file=str(self.hold)
            )

    def release(self) -> None:
        self.lock.release()
