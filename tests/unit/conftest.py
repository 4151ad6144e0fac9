import pytest

from tests.unit.core_harness import Relay, relay_settings


@pytest.fixture
async def make_relay(tmp_path):
    """Build and open relays on a temporary database; close them afterwards."""
    relays: list[Relay] = []

    async def build(**overrides) -> Relay:
        relay = await Relay(relay_settings(tmp_path, **overrides)).open()
        relays.append(relay)
        return relay

    yield build
    for relay in relays:
        await relay.close()


@pytest.fixture
async def relay(make_relay) -> Relay:
    return await make_relay()
