"""Overload episodes and the tick-sampled rates, on the real core."""

from relay.ops.metrics import WindowedRates
from relay.ops.overload import OverloadWatch
from relay.protocol.codec import decode_error
from relay.protocol.constants import HEADER_SIZE, ErrorCode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_episode_starts_once_and_ends_after_quiet(make_relay):
    relay = await make_relay(max_connections=1)
    clock = Clock()
    watch = OverloadWatch(relay.core, quiet_period_s=30, clock=clock)
    first = relay.phone()
    await first.register()
    watch.check()
    assert watch.in_episode
    assert watch.episodes == 1

    for _ in range(3):
        late = relay.phone()
        late.send(late.session.start_register())
        (reply,) = late.inbox()
        assert decode_error(reply[HEADER_SIZE:]).code == ErrorCode.OVERLOADED
        clock.now += 1
        watch.check()
    assert watch.episodes == 1
    assert relay.core.stats.register_refusals["overloaded"] == 3

    await first.exchange(first.session.unregister())
    clock.now += 29
    watch.check()
    assert watch.in_episode
    clock.now += 2
    watch.check()
    assert not watch.in_episode

    await first.register()
    watch.check()
    assert watch.episodes == 2


async def test_draining_relay_is_no_episode(make_relay):
    relay = await make_relay(max_connections=1)
    watch = OverloadWatch(relay.core, clock=Clock())
    relay.core.drain()
    late = relay.phone()
    late.send(late.session.start_register())
    watch.check()
    assert watch.episodes == 0


async def test_rates_measure_last_minute(make_relay):
    relay = await make_relay()
    clock, cpu = Clock(), [5.0]
    rates = WindowedRates(relay.core, clock=clock, cpu_clock=lambda: cpu[0])
    for _ in range(90):
        clock.now += 1
        cpu[0] += 0.25
        relay.core.stats.registrations += 2
        relay.core.stats.requests["ping"] += 10
        relay.core.stats.failed["ping"] += 1
        rates.sample()
    assert rates.cpu_percent() == 25.0
    assert rates.registrations_per_second() == 2.0
    assert rates.error_ratio() == 0.1
    clock.now += 60
    rates.sample()
    assert rates.cpu_percent() == 0.0
    assert rates.registrations_per_second() == 0.0


async def test_storage_failure_not_overload(make_relay):
    relay = await make_relay(max_connections=10)
    watch = OverloadWatch(relay.core, quiet_period_s=30, clock=Clock())
    await relay.storage.close()  # every write now fails at once
    phone = relay.phone()
    phone.send(phone.session.start_register())
    (challenge,) = phone.events()
    phone.send(challenge.register)
    await relay.settle()
    (reply,) = phone.inbox()
    error = decode_error(reply[HEADER_SIZE:])
    assert error.code == ErrorCode.OVERLOADED
    assert error.text == "relay storage unavailable, try another"
    watch.check()
    assert not watch.in_episode
    assert relay.core.stats.register_refusals["storage_unavailable"] == 1
    assert relay.core.stats.register_refusals["overloaded"] == 0
