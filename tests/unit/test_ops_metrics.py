"""The relay's own metric families, read from the collector."""

import asyncio
import time

from relay.ops.metrics import RelayCollector, WindowedRates, build_registry
from relay.server.udp import RelayDatagramProtocol


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


async def test_endpoint_errors_are_counted(relay):
    endpoint = RelayDatagramProtocol(relay.core.datagram_received)
    collector = RelayCollector(
        relay.core,
        relay.storage,
        WindowedRates(relay.core),
        time.monotonic(),
        endpoint=endpoint,
    )
    registry = build_registry(collector)
    assert registry.get_sample_value("relay_udp_send_errors_total") == 0
    endpoint.error_received(OSError(90, "Message too long"))
    endpoint.error_received(ConnectionRefusedError())
    assert registry.get_sample_value("relay_udp_send_errors_total") == 2
    assert registry.get_sample_value("relay_datagram_handler_errors_total") == 0
