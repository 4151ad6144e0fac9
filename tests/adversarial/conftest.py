import pytest

from relay.testing import RelayProcess
from tests.e2e.phone import UdpPhone

# Log events that mean a datagram or a task broke the relay's code.
FAULT_EVENTS = {"datagram_handler_failed", "request_failed", "storage_writer_stopped"}


def assert_no_faults(relay: RelayProcess) -> None:
    faults = [
        line
        for line in relay.lines
        if line.get("message") in FAULT_EVENTS or line.get("level") == "ERROR"
    ]
    assert not faults, faults[:3]


@pytest.fixture(scope="module")
def relay_factory(tmp_path_factory):
    """Start real relays for a module; then stop them and check none logged a fault."""
    started: list[RelayProcess] = []
    directory = tmp_path_factory.mktemp("relays")

    def start(**environment) -> RelayProcess:
        process = RelayProcess(directory / f"relay{len(started)}", **environment)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()
    for process in started:
        assert_no_faults(process)


@pytest.fixture
def phone_factory():
    phones: list[UdpPhone] = []

    def make(relay: RelayProcess, identity=None) -> UdpPhone:
        phone = UdpPhone(relay.udp_address, relay.relay_public_key, identity)
        phones.append(phone)
        return phone

    yield make
    for phone in phones:
        phone.close()
