"""The relay's own metric families, read from the collector."""

import asyncio
import os
import time

import pytest
from prometheus_client import CollectorRegistry

from relay.ops.metrics import RelayCollector, WindowedRates, build_registry
from relay.server.udp import RelayDatagramProtocol


def relay_registry(relay, **options) -> CollectorRegistry:
    """Return a registry with a collector of this relay's core and storage."""
    collector = RelayCollector(
        relay.core,
        relay.storage,
        WindowedRates(relay.core),
        time.monotonic(),
        **options,
    )
    return build_registry(collector)


async def test_requests_in_flight_gauge(relay):
    registry = relay_registry(relay)
    waiting = asyncio.get_running_loop().create_future()
    relay.core.follow(waiting, lambda future: None)
    assert registry.get_sample_value("relay_requests_in_flight") == 1
    waiting.set_result(None)
    await relay.settle()
    assert registry.get_sample_value("relay_requests_in_flight") == 0


async def test_endpoint_errors_are_counted(relay):
    endpoint = RelayDatagramProtocol(relay.core.datagram_received)
    registry = relay_registry(relay, endpoint=endpoint)
    assert registry.get_sample_value("relay_udp_send_errors_total") == 0
    endpoint.error_received(OSError(90, "Message too long"))
    endpoint.error_received(ConnectionRefusedError())
    assert registry.get_sample_value("relay_udp_send_errors_total") == 2
    assert registry.get_sample_value("relay_datagram_handler_errors_total") == 0


async def test_memory_gauge_omits_mapped_database(relay):
    paths = relay.storage.mapped_paths()
    registry = relay_registry(relay, mapped_paths=paths)
    mapped = registry.get_sample_value("relay_database_mapped_bytes")
    own = registry.get_sample_value("relay_memory_usage_bytes")
    resident = registry.get_sample_value("process_resident_memory_bytes")
    # Opening the database read its schema through the mapping.
    assert mapped > 0
    # The parts add up to the RSS, read a moment apart.
    assert own + mapped == pytest.approx(resident, abs=1024 * 1024)
    assert paths[0] == os.path.realpath(relay.storage.path)
