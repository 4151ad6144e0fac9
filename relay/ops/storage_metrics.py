"""Prometheus gauges of the database figures that /health judges.

They are read at scrape time from memory and file metadata, so a scrape
never waits for the database.
"""

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from relay.ops.health import read_figures

if TYPE_CHECKING:
    from relay.storage.sqlite import SqliteStorage


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class StorageCollector:
    """Collects relay_database_* and related figures from the SQLite storage."""

    def __init__(self, storage: "SqliteStorage", clock: Callable[[], int]) -> None:
        self.storage = storage
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        storage = self.storage
        figures = read_figures(storage, self.clock())
        available = (
            storage.is_open and storage.corruption is None and not storage.write_failing
        )
        yield _gauge(
            "relay_database_available",
            "1 while the database is open, not corrupt and its latest write "
            "succeeded; 0 otherwise.",
            1.0 if available else 0.0,
        )
        yield _gauge(
            "relay_database_corrupt",
            "1 once a read or write reported a damaged database file.",
            0.0 if storage.corruption is None else 1.0,
        )
        yield _gauge(
            "relay_oldest_message_age_seconds",
            "Age of the oldest message waiting in any mailbox (0 when none).",
            figures.oldest_message_age_seconds or 0.0,
        )
        yield _gauge(
            "relay_database_size_bytes",
            "Size of the database file.",
            figures.database_bytes,
        )
        yield _gauge(
            "relay_database_wal_size_bytes",
            "Size of the database's write-ahead log file.",
            figures.wal_bytes,
        )
        yield _gauge(
            "relay_disk_free_bytes",
            "Free bytes on the database's volume (-1 when it cannot be read).",
            -1.0 if figures.disk_free_bytes is None else figures.disk_free_bytes,
        )
        yield _gauge(
            "relay_disk_size_bytes",
            "Size of the database's volume (0 when it cannot be read).",
            figures.disk_total_bytes or 0,
        )
        yield CounterMetricFamily(
            "relay_wal_checkpoint_failures",
            "WAL checkpoints and database file syncs beside the writer that "
            "failed; the log then grows until the writer's own checkpoint copies it.",
            value=storage.checkpoint_failures,
        )
        yield _gauge(
            "relay_commit_latency_p95_seconds",
            "95th percentile of the last 64 group commits, BEGIN to end of "
            "COMMIT (0 before the first commit).",
            (figures.commit_latency_p95_ms or 0.0) / 1000,
        )
