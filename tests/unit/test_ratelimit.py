"""Token buckets and bounded per-address tables on a fake clock."""

from relay.core.ratelimit import AddressLimiter, Rate, TokenBucket, address_key, admit


def test_bucket_allows_burst_then_refills():
    rate = Rate.per_minute(6)
    bucket = TokenBucket(rate, now_ms=0)
    assert all(bucket.take(rate, 0) for _ in range(6))
    assert not bucket.take(rate, 0)
    assert not bucket.take(rate, 9_999)
    assert bucket.take(rate, 10_000)  # one token every 10 s


def test_bucket_never_exceeds_burst():
    rate = Rate.per_minute(6)
    bucket = TokenBucket(rate, now_ms=0)
    assert bucket.take(rate, 3_600_000)
    taken = sum(bucket.take(rate, 3_600_000) for _ in range(10))
    assert taken == 5


def test_retry_after_counts_to_next_token():
    rate = Rate.per_minute(60)
    bucket = TokenBucket(rate, now_ms=0)
    for _ in range(60):
        bucket.take(rate, 0)
    assert 900 <= bucket.retry_after_ms(rate) <= 1_001


def test_limiter_separates_keys():
    limiter = AddressLimiter(Rate.per_second(2), max_entries=10)
    assert limiter.allow("a", 0) and limiter.allow("a", 0)
    assert not limiter.allow("a", 0)
    assert limiter.allow("b", 0)


def test_limiter_caps_entries():
    limiter = AddressLimiter(Rate.per_second(1), max_entries=100)
    for i in range(10_000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}", 0)
    assert len(limiter) == 100
    assert limiter.evictions == 9_900


def test_limiter_sweep_drops_refilled():
    limiter = AddressLimiter(Rate.per_second(1), max_entries=100)
    limiter.allow("a", 0)
    limiter.allow("b", 900)
    assert limiter.sweep(1_000) == 1
    assert len(limiter) == 1


def test_ipv6_limited_per_64():
    first = address_key("2001:db8:1:2:aaaa::1")
    second = address_key("2001:db8:1:2:ffff::9")
    third = address_key("2001:db8:1:3::1")
    assert first == second
    assert first != third


def test_ipv4_mapped_counts_as_ipv4():
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"


def test_admit_allows_burst_then_refills():
    rate = Rate.per_minute(6)
    full_at = 0.0
    for _ in range(6):
        full_at = admit(full_at, rate, 0)
        assert full_at is not None
    assert admit(full_at, rate, 0) is None
    assert admit(full_at, rate, 9_999) is None
    assert admit(full_at, rate, 10_000) is not None  # one event every 10 s


def test_admit_never_exceeds_burst():
    rate = Rate.per_minute(6)
    full_at = admit(0.0, rate, 3_600_000)
    taken = 0
    for _ in range(10):
        later = admit(full_at, rate, 3_600_000)
        if later is not None:
            full_at, taken = later, taken + 1
    assert taken == 5


def test_admit_matches_token_bucket():
    rate = Rate.per_second(3)
    bucket = TokenBucket(rate, now_ms=0)
    full_at = 0.0
    for now_ms in range(0, 5_000, 37):
        allowed = admit(full_at, rate, now_ms)
        assert bucket.take(rate, now_ms) == (allowed is not None)
        if allowed is not None:
            full_at = allowed
