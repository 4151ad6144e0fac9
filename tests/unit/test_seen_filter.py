"""The Bloom filter of message ids the relay may have seen before."""

import tracemalloc
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.storage.seen import SeenFilter

DAY_MS = 86_400_000
WINDOW_MS = DAY_MS


def keys(count: int) -> list[tuple[str, str]]:
    return [(f"sender-{n % 50}", str(uuid.uuid4())) for n in range(count)]


def test_added_keys_found():
    seen = SeenFilter(bits=1 << 16)
    added = keys(2_000)
    for key in added:
        seen.add(*key, expires_at_ms=DAY_MS)
    assert all(seen.may_contain(*key) for key in added)


def test_false_positives_rare_at_planned_load():
    seen = SeenFilter(bits=1 << 16)
    for key in keys(4_000):  # a quarter of the default's 2 million keys in 2^24 bits
        seen.add(*key, expires_at_ms=DAY_MS)
    strangers = keys(20_000)
    false_positives = sum(seen.may_contain(*key) for key in strangers)
    assert false_positives < len(strangers) * 0.005


def test_key_outlives_expiry_and_window():
    seen = SeenFilter(bits=1 << 12)
    seen.add("alice", "m1", expires_at_ms=7 * DAY_MS)
    seen.after_sweep(DAY_MS, WINDOW_MS)  # seals the generation holding m1
    seen.add("alice", "m2", expires_at_ms=9 * DAY_MS)
    seen.after_sweep(7 * DAY_MS - 1, WINDOW_MS)  # m1 not yet expired
    seen.after_sweep(7 * DAY_MS, WINDOW_MS)  # this sweep deletes m1
    seen.after_sweep(8 * DAY_MS, WINDOW_MS)  # its dedup record may remain
    assert seen.may_contain("alice", "m1")
    seen.after_sweep(8 * DAY_MS + 1, WINDOW_MS)  # purged: m1's generation goes
    assert not seen.may_contain("alice", "m1")
    assert seen.may_contain("alice", "m2")  # sealed now, in its turn


def test_zero_window_drops_after_next_sweep():
    seen = SeenFilter(bits=1 << 12)
    seen.add("alice", "m1", expires_at_ms=10)
    seen.after_sweep(5, 0)
    seen.after_sweep(10, 0)
    assert seen.may_contain("alice", "m1")
    seen.after_sweep(11, 0)
    assert not seen.may_contain("alice", "m1")


def test_generation_turns_allocate_nothing():
    seen = SeenFilter(bits=1 << 20)  # 128 KiB a generation
    tracemalloc.start()
    try:
        for day in range(1, 6):
            seen.add("alice", f"m{day}", expires_at_ms=day * DAY_MS)
            seen.after_sweep(day * DAY_MS, 0)
            seen.after_sweep(day * DAY_MS + 1, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen.may_contain("alice", "m5")
    assert not seen.may_contain("alice", "m1")
    # Clearing a buffer in place briefly needs one buffer of zeros, no more.
    assert peak <= (1 << 20) // 8 + 16 * 1024


# Each step adds a key expiring `offset` ms from now, or sweeps `offset` ms later.
STEPS = st.lists(
    st.tuples(st.sampled_from(["add", "sweep"]), st.integers(0, 40)), max_size=60
)


@settings(max_examples=500, deadline=None)
@given(steps=STEPS, window_ms=st.integers(0, 30))
def test_keys_kept_while_needed(steps, window_ms):
    """Across many turns, a key stays until its dedup record can be gone."""
    seen = SeenFilter(bits=1 << 12)
    now = 0
    # Per key: its expiry, and the first sweep at or after that expiry.
    expiry: dict[str, int] = {}
    swept_at: dict[str, int | None] = {}
    for step, offset in steps:
        if step == "add":
            key = f"m{len(expiry)}"
            expiry[key] = now + offset
            swept_at[key] = None
            seen.add("alice", key, expires_at_ms=now + offset)
            continue
        now += offset
        for key, sweep in list(swept_at.items()):
            if sweep is not None and now - window_ms > sweep:
                del swept_at[key]  # its dedup record may be purged now
            elif sweep is None and now >= expiry[key]:
                swept_at[key] = now
        seen.after_sweep(now, window_ms)
        missing = [key for key in swept_at if not seen.may_contain("alice", key)]
        assert missing == []


@pytest.mark.parametrize("bits", [0, 7, 1000])
def test_size_power_of_two(bits):
    with pytest.raises(ValueError, match="power of two"):
        SeenFilter(bits=bits)
