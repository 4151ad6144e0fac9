"""The relay's own metric families, read from the collector."""

import asyncio
import time

from relay.ops.metrics import RelayCollector, WindowedRates, build_registry


async def test_requests_in_flight_gauge(relay):
    collector = RelayCollector(
        relay.core, relay.storage, WindowedRates(relay.core), time.monotonic()
    )
    registry = build_registry(collector)
    waiting = asyncio.get_running_loop().create_future()
    relay.core.follow(waiting, lambda future: None)
    assert registry.get_sample_value("relay_requests_in_flight") == 1
    waiting.set_result(None)
    await relay.settle()
    assert registry.get_sample_value("relay_requests_in_flight") == 0
