"""Health report of /health: its figures, and when it turns degraded or unhealthy.

Unhealthy (HTTP 503) means this instance should not take new phones: the
database check failed, live sessions passed 90 % of MAX_CONNECTIONS, or a
figure passed its HEALTH_*_UNHEALTHY threshold. Degraded (HTTP 200) means
an operator should look soon: a figure passed its HEALTH_*_DEGRADED
threshold, or the mailboxes hold MAX_STORED_MESSAGES. Every reason is
listed in the report.
"""

import asyncio
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from relay import __version__
from relay.storage.base import StorageUnavailable

if TYPE_CHECKING:
    from relay.config import Settings
    from relay.storage.sqlite import SqliteStorage

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
_RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}

# Above this share of MAX_CONNECTIONS the relay asks the platform to send
# new phones elsewhere (9,000 of the default 10,000).
CONNECTIONS_UNHEALTHY_RATIO = 0.9


@dataclass(frozen=True, slots=True)
class StorageFigures:
    """Measurements of the database that predict trouble before it fails.

    None means not measured: no message waiting, no commit yet, or the
    volume could not be read.
    """

    oldest_message_age_seconds: float | None
    database_bytes: int
    wal_bytes: int
    disk_free_bytes: int | None
    disk_total_bytes: int | None
    commit_latency_p95_ms: float | None

    @property
    def disk_free_percent(self) -> float | None:
        if not self.disk_total_bytes or self.disk_free_bytes is None:
            return None
        return 100.0 * self.disk_free_bytes / self.disk_total_bytes


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Limits from the HEALTH_* settings; 0 turns a limit off."""

    oldest_message_degraded_s: float = 0
    oldest_message_unhealthy_s: float = 0
    wal_degraded_bytes: int = 0
    wal_unhealthy_bytes: int = 0
    disk_free_degraded_percent: float = 0
    disk_free_unhealthy_percent: float = 0
    commit_p95_degraded_ms: float = 0
    commit_p95_unhealthy_ms: float = 0

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Thresholds":
        return cls(
            oldest_message_degraded_s=settings.oldest_message_degraded_s,
            oldest_message_unhealthy_s=settings.health_oldest_message_unhealthy_s,
            wal_degraded_bytes=settings.health_wal_degraded_bytes,
            wal_unhealthy_bytes=settings.health_wal_unhealthy_bytes,
            disk_free_degraded_percent=settings.health_disk_free_degraded_percent,
            disk_free_unhealthy_percent=settings.health_disk_free_unhealthy_percent,
            commit_p95_degraded_ms=settings.health_commit_p95_degraded_ms,
            commit_p95_unhealthy_ms=settings.health_commit_p95_unhealthy_ms,
        )


@dataclass
class HealthReport:
    status: str
    version: str
    uptime_seconds: float
    active_connections: int
    max_connections: int
    database_ok: bool
    queue_size: int
    oldest_message_age_seconds: float | None = None
    database_bytes: int = 0
    wal_bytes: int = 0
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_free_percent: float | None = None
    commit_latency_p95_ms: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        return 503 if self.status == UNHEALTHY else 200

    def as_dict(self) -> dict:
        return asdict(self)

    def gauges(self) -> dict[str, float]:
        """Return the numeric fields as health_* gauge values.

        A figure that was not measured (no message waiting, no commit yet)
        reads 0, and a volume that could not be read reads -1 free bytes.
        """
        free = self.disk_free_bytes
        return {
            "health_status": {HEALTHY: 2, DEGRADED: 1, UNHEALTHY: 0}[self.status],
            "health_up": 1.0,
            "health_uptime_seconds": self.uptime_seconds,
            "health_active_connections": self.active_connections,
            "health_max_connections": self.max_connections,
            "health_database_ok": 1.0 if self.database_ok else 0.0,
            "health_queue_size": self.queue_size,
            "health_oldest_message_age_seconds": self.oldest_message_age_seconds or 0.0,
            "health_database_size_bytes": self.database_bytes,
            "health_wal_size_bytes": self.wal_bytes,
            "health_disk_free_bytes": -1.0 if free is None else free,
            "health_disk_size_bytes": self.disk_total_bytes or 0,
            "health_commit_latency_p95_seconds": (self.commit_latency_p95_ms or 0.0)
            / 1000,
            "health_reasons": len(self.reasons),
        }


GAUGE_HELP = {
    "health_status": "Health status: 2 healthy, 1 degraded, 0 unhealthy.",
    "health_up": "Always 1: the ops API answered.",
    "health_uptime_seconds": "Seconds since the relay started.",
    "health_active_connections": "Live sessions.",
    "health_max_connections": "Configured live session limit (MAX_CONNECTIONS).",
    "health_database_ok": "1 when the database check passed, else 0.",
    "health_queue_size": "Messages waiting in all mailboxes.",
    "health_oldest_message_age_seconds": "Age of the oldest waiting message "
    "(0 when none).",
    "health_database_size_bytes": "Size of the database file.",
    "health_wal_size_bytes": "Size of the database's WAL file.",
    "health_disk_free_bytes": "Free bytes on the database's volume "
    "(-1 when unreadable).",
    "health_disk_size_bytes": "Size of the database's volume (0 when unreadable).",
    "health_commit_latency_p95_seconds": "95th percentile of the last 64 commits "
    "(0 before the first).",
    "health_reasons": "Number of reasons listed in the JSON report.",
}


def percentile(values: list[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile of values, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def disk_usage(folder: "os.PathLike[str] | str") -> tuple[int | None, int | None]:
    """Return (free, total) bytes of the volume holding folder, or (None, None).

    Free counts the blocks an unprivileged process may use (f_bavail).
    """
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None, None
    return stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize


def read_figures(storage: "SqliteStorage", now_ms: int) -> StorageFigures:
    """Measure the storage from memory and file metadata; no query runs."""
    oldest = storage.stats().oldest_received_at_ms
    database_bytes, wal_bytes = storage.file_sizes()
    free, total = disk_usage(storage.path.parent)
    p95 = percentile(storage.commit_latencies_ms, 0.95)
    return StorageFigures(
        oldest_message_age_seconds=(
            None if oldest is None else max(0.0, (now_ms - oldest) / 1000)
        ),
        database_bytes=database_bytes,
        wal_bytes=wal_bytes,
        disk_free_bytes=free,
        disk_total_bytes=total,
        commit_latency_p95_ms=None if p95 is None else round(p95, 3),
    )


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


def _above(value: float | None, degraded: float, unhealthy: float) -> tuple[str, float]:
    """Return the level a figure reaches when larger is worse, and its limit."""
    if value is None:
        return HEALTHY, 0
    if unhealthy and value > unhealthy:
        return UNHEALTHY, unhealthy
    if degraded and value > degraded:
        return DEGRADED, degraded
    return HEALTHY, 0


def _below(value: float | None, degraded: float, unhealthy: float) -> tuple[str, float]:
    """Return the level a figure reaches when smaller is worse, and its limit."""
    if value is None:
        return HEALTHY, 0
    if unhealthy and value < unhealthy:
        return UNHEALTHY, unhealthy
    if degraded and value < degraded:
        return DEGRADED, degraded
    return HEALTHY, 0


def judge_figures(figures: StorageFigures, limits: Thresholds) -> list[tuple[str, str]]:
    """Return (level, reason) for each figure past a threshold."""
    findings = []
    level, limit = _above(
        figures.oldest_message_age_seconds,
        limits.oldest_message_degraded_s,
        limits.oldest_message_unhealthy_s,
    )
    if level != HEALTHY:
        findings.append(
            (
                level,
                f"oldest waiting message is {figures.oldest_message_age_seconds:.0f} s "
                f"old, over {limit:.0f} s",
            )
        )
    level, limit = _above(
        figures.wal_bytes, limits.wal_degraded_bytes, limits.wal_unhealthy_bytes
    )
    if level != HEALTHY:
        findings.append(
            (level, f"WAL file is {figures.wal_bytes} bytes, over {limit:.0f} bytes")
        )
    free_percent = figures.disk_free_percent
    level, limit = _below(
        free_percent,
        limits.disk_free_degraded_percent,
        limits.disk_free_unhealthy_percent,
    )
    if level != HEALTHY:
        findings.append(
            (
                level,
                f"database volume has {free_percent:.1f} % free "
                f"({figures.disk_free_bytes} bytes), under {limit:g} %",
            )
        )
    level, limit = _above(
        figures.commit_latency_p95_ms,
        limits.commit_p95_degraded_ms,
        limits.commit_p95_unhealthy_ms,
    )
    if level != HEALTHY:
        findings.append(
            (
                level,
                f"commit latency p95 is {figures.commit_latency_p95_ms:.0f} ms, "
                f"over {limit:.0f} ms",
            )
        )
    return findings


def evaluate(
    *,
    uptime_seconds: float,
    active_connections: int,
    max_connections: int,
    database_ok: bool,
    database_error: str,
    queue_size: int,
    max_queue_size: int | None = None,
    figures: StorageFigures | None = None,
    thresholds: Thresholds | None = None,
) -> HealthReport:
    """Build the report; the worst finding decides the status."""
    findings = []
    if max_queue_size is not None and queue_size >= max_queue_size:
        # Phones still fetch their waiting messages, but new ones are rejected.
        findings.append(
            (
                DEGRADED,
                f"{queue_size} messages waiting, MAX_STORED_MESSAGES is "
                f"{max_queue_size}: new messages are answered UNAVAILABLE",
            )
        )
    if not database_ok:
        findings.append((UNHEALTHY, f"database check failed: {database_error}"))
    if active_connections > CONNECTIONS_UNHEALTHY_RATIO * max_connections:
        findings.append(
            (
                UNHEALTHY,
                f"active connections {active_connections} over "
                f"{CONNECTIONS_UNHEALTHY_RATIO:.0%} of {max_connections}",
            )
        )
    if figures is not None:
        findings.extend(judge_figures(figures, thresholds or Thresholds()))
    status = max((level for level, _ in findings), key=_RANK.get, default=HEALTHY)
    report = HealthReport(
        status=status,
        version=__version__,
        uptime_seconds=round(uptime_seconds, 3),
        active_connections=active_connections,
        max_connections=max_connections,
        database_ok=database_ok,
        queue_size=queue_size,
        reasons=[f"{level}: {reason}" for level, reason in findings],
    )
    if figures is not None:
        _copy_figures(report, figures)
    return report


def _copy_figures(report: HealthReport, figures: StorageFigures) -> None:
    age = figures.oldest_message_age_seconds
    report.oldest_message_age_seconds = None if age is None else round(age, 3)
    report.database_bytes = figures.database_bytes
    report.wal_bytes = figures.wal_bytes
    report.disk_free_bytes = figures.disk_free_bytes
    report.disk_total_bytes = figures.disk_total_bytes
    free_percent = figures.disk_free_percent
    report.disk_free_percent = None if free_percent is None else round(free_percent, 2)
    report.commit_latency_p95_ms = figures.commit_latency_p95_ms
