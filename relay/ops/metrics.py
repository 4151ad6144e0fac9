"""Prometheus metrics, built at scrape time from the core's plain counters.

Counters follow Prometheus naming and end in _total: the monitoring plan's
relay_requests_success is exposed as relay_requests_success_total, and so
on (docs/operations.md lists every name).
"""

import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from relay.ops.process import (
    ResidentMemory,
    cpu_seconds,
    mapped_file_bytes,
    resident_memory_bytes,
)

if TYPE_CHECKING:
    from relay.core.relay import RelayCore
    from relay.storage.base import Storage

RATE_WINDOW_S = 60


class WindowedRates:
    """Rates of a few counters and of CPU time over the last minute.

    `sample` is called about once a second from the relay's tick, so the
    figures do not depend on how often, or by how many, /metrics is
    scraped. The rates compare the newest sample with the oldest one kept.
    """

    def __init__(
        self,
        core: "RelayCore",
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = cpu_seconds,
    ) -> None:
        self.core = core
        self.clock = clock
        self.cpu_clock = cpu_clock
        # (monotonic s, registrations, requests, failed, CPU s)
        self._samples: deque[tuple[float, int, int, int, float]] = deque()
        self.sample()

    def sample(self) -> None:
        stats = self.core.stats
        total = sum(stats.requests.values())
        failed = sum(stats.failed.values())
        now = self.clock()
        self._samples.append(
            (now, stats.registrations, total, failed, self.cpu_clock())
        )
        # Keep the newest sample at least RATE_WINDOW_S old as the baseline.
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()

    def _delta(self) -> tuple[float, int, int, int, float]:
        if len(self._samples) < 2:
            return 0.0, 0, 0, 0, 0.0
        first, last = self._samples[0], self._samples[-1]
        return (
            last[0] - first[0],
            last[1] - first[1],
            last[2] - first[2],
            last[3] - first[3],
            last[4] - first[4],
        )

    def registrations_per_second(self) -> float:
        elapsed, registrations, _, _, _ = self._delta()
        return registrations / elapsed if elapsed else 0.0

    def error_ratio(self) -> float:
        _, _, total, failed, _ = self._delta()
        return failed / total if total else 0.0

    def cpu_percent(self) -> float:
        """CPU time used per wall time, in percent of one core (above 100 on 2)."""
        elapsed, _, _, _, cpu = self._delta()
        return 100.0 * cpu / elapsed if elapsed else 0.0


def _labelled_counter(
    name: str, documentation: str, label: str, values: dict[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


# Seconds a reading of the mapped files' resident pages is reused.
MAPPED_FILES_REFRESH_S = 10.0


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class EndpointCounts(Protocol):
    """The error counts the UDP endpoint keeps."""

    send_errors: int
    handler_errors: int


class RelayCollector:
    """Collects the relay's metrics from the core, the storage and the process."""

    def __init__(
        self,
        core: "RelayCore",
        storage: "Storage",
        rates: WindowedRates,
        started_monotonic: float,
        mapped_paths: Collection[str] = (),
        endpoint: "EndpointCounts | None" = None,
    ) -> None:
        """Collect from these parts of the relay.

        mapped_paths are files the storage maps into memory, whose resident
        pages are reported apart from the relay's own memory. endpoint is
        the UDP endpoint, whose error counts are exported.
        """
        self.core = core
        self.storage = storage
        self.rates = rates
        self.started = started_monotonic
        self.mapped_paths = mapped_paths
        self.endpoint = endpoint
        self._mapped_bytes = 0
        self._mapped_read_at = float("-inf")

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._security()
        yield from self._capacity()
        yield from self._tables()
        yield from self._process()
        if self.endpoint is not None:
            yield from self._endpoint(self.endpoint)

    def _endpoint(self, endpoint: "EndpointCounts") -> Iterator[Metric]:
        yield _counter(
            "relay_udp_send_errors",
            "Datagrams the kernel refused to send, and ICMP errors for phones "
            "that went away.",
            endpoint.send_errors,
        )
        yield _counter(
            "relay_datagram_handler_errors",
            "Datagrams whose handling raised an unexpected error (a fault in "
            "the relay; each is logged, at most every 10 s).",
            endpoint.handler_errors,
        )

    def _tables(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily(
            "relay_table_entries",
            "Entries in each in-memory table that grows with traffic.",
            labels=["table"],
        )
        capacity = GaugeMetricFamily(
            "relay_table_capacity",
            "Hard cap on the entries of each in-memory table.",
            labels=["table"],
        )
        for name, (size, cap) in sorted(self.core.table_sizes().items()):
            entries.add_metric([name], size)
            capacity.add_metric([name], cap)
        yield entries
        yield capacity

    def _requests(self) -> Iterator[Metric]:
        stats = self.core.stats
        yield _labelled_counter(
            "relay_requests",
            "Datagrams received, by packet type.",
            "type",
            stats.requests,
        )
        yield _labelled_counter(
            "relay_requests_success",
            "Datagrams accepted and served, by packet type.",
            "type",
            stats.succeeded,
        )
        yield _labelled_counter(
            "relay_requests_failed",
            "Datagrams dropped or refused, by packet type.",
            "type",
            stats.failed,
        )
        yield _labelled_counter(
            "relay_dropped_datagrams",
            "Datagrams not served, by reason (most dropped silently).",
            "reason",
            stats.dropped,
        )
        yield _labelled_counter(
            "relay_message_acks",
            "MESSAGE_ACK statuses sent to senders.",
            "status",
            stats.message_outcomes,
        )
        histogram = HistogramMetricFamily(
            "relay_request_duration_seconds",
            "Time from a datagram's arrival to its answer, by packet type.",
            labels=["type"],
        )
        for type_name, observed in sorted(stats.latency.items()):
            histogram.add_metric([type_name], observed.cumulative(), observed.sum)
        yield histogram
        yield _gauge(
            "relay_error_rate",
            "Share of datagrams dropped or refused over the last minute (0 to 1).",
            self.rates.error_ratio(),
        )
        yield _counter(
            "relay_pushes", "Messages pushed to online recipients.", stats.pushes
        )
        yield _counter(
            "relay_storage_errors",
            "Storage operations that failed.",
            stats.storage_errors,
        )

    def _security(self) -> Iterator[Metric]:
        stats = self.core.stats
        yield _counter(
            "auth_failures",
            "Bad cookies, signatures, tags and key conflicts.",
            stats.auth_failures,
        )
        yield _counter(
            "invalid_signatures",
            "REGISTER signatures that failed strict Ed25519 verification.",
            stats.invalid_signatures,
        )
        yield _labelled_counter(
            "rate_limit_exceeded",
            "Requests over a rate limit, by limit.",
            "limit",
            stats.rate_limited,
        )
        yield _counter(
            "relay_ddos_attempts",
            "Unauthenticated datagrams dropped over their per-address rate.",
            stats.flood_drops,
        )

    def _capacity(self) -> Iterator[Metric]:
        stats = self.core.stats
        storage_stats = self.storage.stats()
        yield _gauge(
            "relay_active_connections", "Live sessions.", len(self.core.sessions)
        )
        yield _gauge(
            "relay_max_connections",
            "Configured live session limit (MAX_CONNECTIONS).",
            self.core.settings.max_connections,
        )
        yield _gauge(
            "relay_message_queue_size",
            "Messages waiting in all mailboxes.",
            storage_stats.queue_size,
        )
        yield _gauge(
            "relay_requests_in_flight",
            "Requests waiting for storage (MESSAGE, ACK, POLL, REGISTER, erasure).",
            self.core.requests_in_flight,
        )
        yield _counter(
            "relay_registrations", "Sessions opened by REGISTER.", stats.registrations
        )
        yield _labelled_counter(
            "relay_register_refusals",
            "REGISTERs answered with a plain ERROR, by error code "
            "(overloaded: session limit reached or draining; "
            "storage_unavailable: OVERLOADED because storage failed).",
            "code",
            stats.register_refusals,
        )
        yield _gauge(
            "relay_registration_rate",
            "Sessions opened per second over the last minute.",
            self.rates.registrations_per_second(),
        )
        yield _counter(
            "relay_heartbeat_failures",
            "Sessions ended because no packet arrived within the session timeout.",
            stats.sessions_timed_out,
        )
        yield _counter(
            "relay_message_ttl_violations",
            "Messages whose TTL ran out before their recipient acknowledged them.",
            stats.messages_expired,
        )

    def _memory(self) -> ResidentMemory:
        """Return the resident memory, with the mapped files' part read every 10 s.

        Reading that part walks the pages of every mapping: about 6 ms with
        a fully resident 256 MiB database mapped, against 0.03 ms for the
        total. It changes slowly, so frequent scrapes reuse it.
        """
        now = time.monotonic()
        if now - self._mapped_read_at >= MAPPED_FILES_REFRESH_S:
            self._mapped_bytes = mapped_file_bytes(self.mapped_paths)
            self._mapped_read_at = now
        total = resident_memory_bytes()
        return ResidentMemory(total, min(self._mapped_bytes, total))

    def _process(self) -> Iterator[Metric]:
        memory = self._memory()
        yield _gauge(
            "relay_cpu_usage_percent",
            "CPU used by the relay process over the last minute, percent of one core.",
            self.rates.cpu_percent(),
        )
        yield _gauge(
            "relay_memory_usage_bytes",
            "Resident memory of the relay process, without the pages of the "
            "database file it maps (relay_database_mapped_bytes).",
            memory.own,
        )
        yield _gauge(
            "relay_database_mapped_bytes",
            "Resident pages of the memory-mapped database file and WAL index: "
            "page cache the kernel takes back under memory pressure.",
            memory.mapped_files,
        )
        yield _gauge(
            "relay_uptime_seconds",
            "Seconds since the relay started.",
            time.monotonic() - self.started,
        )


def build_registry(collector: RelayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
