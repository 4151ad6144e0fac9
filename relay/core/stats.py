"""Counters the core keeps as plain integers; /metrics reads them at scrape time.

Plain attributes cost a fraction of a prometheus_client call, which matters
at tens of thousands of datagrams a second.
"""

from bisect import bisect_left
from collections import Counter

# Upper bounds in seconds, from well under a millisecond to the 0.5 s alert.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class Histogram:
    """Cumulative-on-export histogram: counts per bucket, plus sum and count."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """Return (le, count) pairs in Prometheus order, +Inf last."""
        pairs, running = [], 0
        bounds = (*LATENCY_BUCKETS, float("inf"))
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            pairs.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return pairs


class RelayStats:
    """Everything the core counts. Labels are packet type names in lower case."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()  # every datagram, by type
        self.succeeded: Counter[str] = Counter()  # accepted and served
        self.failed: Counter[str] = Counter()  # dropped or refused
        self.dropped: Counter[str] = Counter()  # silent drops, by reason
        self.rate_limited: Counter[str] = Counter()  # by limit
        self.message_outcomes: Counter[str] = Counter()  # MESSAGE_ACK statuses sent
        self.register_refusals: Counter[str] = Counter()  # plain ERRORs, by code
        self.latency: dict[str, Histogram] = {}
        self.auth_failures = 0
        self.invalid_signatures = 0
        self.flood_drops = 0  # unauthenticated datagrams over their per-address rate
        self.registrations = 0
        self.sessions_timed_out = 0
        self.messages_expired = 0
        self.pushes = 0
        self.storage_errors = 0

    def observe_latency(self, packet_type: str, seconds: float) -> None:
        histogram = self.latency.get(packet_type)
        if histogram is None:
            histogram = self.latency[packet_type] = Histogram()
        histogram.observe(seconds)
