"""Token buckets, alone (per user) and in bounded tables (per source address)."""

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """A limit of `burst` events at once, refilled at `per_ms` events a millisecond."""

    burst: int
    per_ms: float

    @classmethod
    def per_minute(cls, count: int) -> "Rate":
        return cls(count, count / 60_000)

    @classmethod
    def per_second(cls, count: int) -> "Rate":
        return cls(count, count / 1_000)

    @property
    def interval_ms(self) -> float:
        """Milliseconds in which one event's worth of allowance comes back."""
        return 1 / self.per_ms


def admit(full_at_ms: float, rate: Rate, now_ms: int) -> float | None:
    """Take one event from a bucket kept as the time it is full again.

    Returns the bucket's new full-at time, or None when the event is over
    the limit (the bucket is then unchanged). This is a token bucket of
    `rate.burst` tokens in one number: the tokens missing are
    (full_at_ms - now_ms) / interval, so an event fits while at most
    burst - 1 are missing. A bucket not used for a while is full, and 0.0
    stands for that.
    """
    interval = 1 / rate.per_ms
    start = full_at_ms if full_at_ms > now_ms else now_ms
    full_at = start + interval
    # The tolerance absorbs float rounding of the interval at exact refills.
    if full_at - now_ms > rate.burst * interval + 1e-6:
        return None
    return full_at


class TokenBucket:
    """One bucket; the Rate is kept by the owner so that buckets stay small.

    A bucket starts full, so a newcomer gets the whole burst at once.
    """

    __slots__ = ("stamp_ms", "tokens")

    def __init__(self, rate: Rate, now_ms: int) -> None:
        self.tokens = float(rate.burst)
        self.stamp_ms = now_ms

    def take(self, rate: Rate, now_ms: int) -> bool:
        elapsed = now_ms - self.stamp_ms
        if elapsed > 0:
            self.tokens = min(rate.burst, self.tokens + elapsed * rate.per_ms)
            self.stamp_ms = now_ms
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def retry_after_ms(self, rate: Rate) -> int:
        """Return the milliseconds until the next event would be allowed."""
        missing = max(0.0, 1 - self.tokens)
        return int(missing / rate.per_ms) + 1

    def is_full(self, rate: Rate, now_ms: int) -> bool:
        return self.tokens + (now_ms - self.stamp_ms) * rate.per_ms >= rate.burst


def address_key(host: str) -> str:
    """Return the rate-limit key of a source address.

    IPv4 addresses count alone; IPv6 addresses count per /64, because one
    subscriber usually holds a whole /64.
    """
    if ":" not in host:
        return host
    address = ipaddress.IPv6Address(host.split("%", 1)[0])
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return address.packed[:8].hex() + "::/64"


class AddressLimiter:
    """Per-key token buckets with a hard cap on how many are kept.

    A bucket that has refilled completely is the same as no bucket, so
    `sweep` drops those. When the table is full the least recently used
    bucket is dropped to make room: a flood of spoofed addresses can reset
    some other address's allowance but cannot grow memory.
    """

    def __init__(self, rate: Rate, max_entries: int) -> None:
        self.rate = rate
        self.max_entries = max_entries
        self._buckets: OrderedDict[object, TokenBucket] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: object, now_ms: int) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                self._buckets.popitem(last=False)
                self.evictions += 1
            bucket = self._buckets[key] = TokenBucket(self.rate, now_ms)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(self.rate, now_ms)

    def retry_after_ms(self, key: object) -> int:
        bucket = self._buckets.get(key)
        return 0 if bucket is None else bucket.retry_after_ms(self.rate)

    def sweep(self, now_ms: int) -> int:
        """Drop buckets that have refilled; return how many were dropped."""
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.is_full(self.rate, now_ms)
        ]
        for key in full:
            del self._buckets[key]
        return len(full)
