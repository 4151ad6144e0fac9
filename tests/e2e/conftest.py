import pytest

from relay.testing import RelayProcess
from tests.e2e.phone import UdpPhone


@pytest.fixture
def relay_factory(tmp_path):
    """Start real relay processes on temporary databases; stop them afterwards."""
    started: list[RelayProcess] = []

    def start(directory=None, **environment) -> RelayProcess:
        process = RelayProcess(
            directory or tmp_path / f"relay{len(started)}", **environment
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def relay(relay_factory) -> RelayProcess:
    return relay_factory()


@pytest.fixture
def phone_factory(relay):
    phones: list[UdpPhone] = []

    def make(identity=None) -> UdpPhone:
        phone = UdpPhone(relay.udp_address, relay.relay_public_key, identity)
        phones.append(phone)
        return phone

    yield make
    for phone in phones:
        phone.close()
