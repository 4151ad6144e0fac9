"""What /health reports, and when it turns degraded or unhealthy."""

import asyncio
import time
from dataclasses import asdict, dataclass, field

from relay import __version__
from relay.storage.base import StorageUnavailable

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"

# Above this share of MAX_CONNECTIONS the relay asks the platform to send
# new phones elsewhere (9,000 of the default 10,000).
CONNECTIONS_UNHEALTHY_RATIO = 0.9


@dataclass
class HealthReport:
    status: str
    version: str
    uptime_seconds: float
    active_connections: int
    max_connections: int
    database_ok: bool
    queue_size: int
    reasons: list[str] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        return 503 if self.status == UNHEALTHY else 200

    def as_dict(self) -> dict:
        return asdict(self)

    def gauges(self) -> dict[str, float]:
        """Return the numeric fields as health_* gauge values."""
        return {
            "health_status": {HEALTHY: 2, DEGRADED: 1, UNHEALTHY: 0}[self.status],
            "health_up": 1.0,
            "health_uptime_seconds": self.uptime_seconds,
            "health_active_connections": self.active_connections,
            "health_max_connections": self.max_connections,
            "health_database_ok": 1.0 if self.database_ok else 0.0,
            "health_queue_size": self.queue_size,
        }


class DatabaseProbe:
    """Runs the storage's real query with a timeout, at most once a second.

    Caching keeps a burst of /health requests from becoming a burst of
    database reads.
    """

    def __init__(self, storage: object, timeout_s: float, min_interval_s: float = 1.0):
        self.storage = storage
        self.timeout_s = timeout_s
        self.min_interval_s = min_interval_s
        self._checked_at = float("-inf")
        self.ok = True
        self.error = ""

    async def check(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at < self.min_interval_s:
            return self.ok
        self._checked_at = now
        try:
            await asyncio.wait_for(self.storage.check(), self.timeout_s)
        except (StorageUnavailable, TimeoutError) as exc:
            self.ok, self.error = False, str(exc) or type(exc).__name__
        else:
            self.ok, self.error = True, ""
        return self.ok


def evaluate(
    *,
    uptime_seconds: float,
    active_connections: int,
    max_connections: int,
    database_ok: bool,
    database_error: str,
    queue_size: int,
) -> HealthReport:
    reasons = []
    if not database_ok:
        reasons.append(f"database check failed: {database_error}")
    if active_connections > CONNECTIONS_UNHEALTHY_RATIO * max_connections:
        reasons.append(
            f"active connections {active_connections} over "
            f"{CONNECTIONS_UNHEALTHY_RATIO:.0%} of {max_connections}"
        )
    return HealthReport(
        status=UNHEALTHY if reasons else HEALTHY,
        version=__version__,
        uptime_seconds=round(uptime_seconds, 3),
        active_connections=active_connections,
        max_connections=max_connections,
        database_ok=database_ok,
        queue_size=queue_size,
        reasons=reasons,
    )
