"""Replays, reordering, counters near 2^64, forged and truncated tags, on a real relay.

Every rejected packet must get silence and leave the session as it was:
afterwards the phone's next packet is still answered at its own address.
"""

import pytest

from relay.client.errors import NotRegistered
from relay.client.events import PongReceived
from relay.protocol.constants import HEADER_SIZE, TAG_SIZE
from tests.adversarial.tools import metric, scrape
from tests.security_figures import record

pytestmark = pytest.mark.e2e

QUIET_S = 0.3
figures: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def record_figures():
    yield
    record("adversarial_replay", figures)


@pytest.fixture(scope="module")
def relay(relay_factory):
    return relay_factory(RATE_PING_PER_USER=100_000)


@pytest.fixture
def alice(relay, phone_factory):
    phone = phone_factory(relay)
    phone.register()
    return phone


def assert_alive(phone) -> None:
    """The session still answers a fresh PING at the phone's own address."""
    phone.send(phone.session.ping())
    assert isinstance(phone.receive(), PongReceived)


def assert_silent(phone, *datagrams: bytes) -> None:
    """Send the datagrams; none may get an answer."""
    for datagram in datagrams:
        phone.send(datagram)
    assert phone.receive_raw(QUIET_S) is None


def test_replay_inside_window_silent(relay, alice):
    before = metric(scrape(relay), "relay_dropped_datagrams_total", reason="replayed")
    ping = alice.session.ping()
    alice.send(ping)
    assert isinstance(alice.receive(), PongReceived)
    assert_silent(alice, *[ping] * 5)
    assert_alive(alice)
    after = metric(scrape(relay), "relay_dropped_datagrams_total", reason="replayed")
    assert after - before == 5
    figures["replays_inside_window_silent"] = 5


def test_reordered_packets_accepted_once(alice):
    pings = [alice.session.ping() for _ in range(6)]
    for index in (5, 2, 0, 4):
        alice.send(pings[index])
        assert isinstance(alice.receive(), PongReceived), index
    assert_silent(alice, *[pings[index] for index in (5, 2, 0, 4)])
    for index in (1, 3):
        alice.send(pings[index])
        assert isinstance(alice.receive(), PongReceived), index


def test_replay_outside_window_silent(alice):
    old = alice.session.ping()
    for _ in range(70):
        alice.send(alice.session.ping())
    pongs = [event for event in alice.receive_all() if isinstance(event, PongReceived)]
    assert len(pongs) == 70
    # The old counter was never used, but it is now 70 behind the highest.
    assert_silent(alice, old)
    assert_alive(alice)
    figures["replays_outside_window_silent"] = 1


def test_counters_near_two_to_the_64(alice):
    early = alice.session.ping()
    alice.session._keys.next_counter = 2**64 - 3
    last = None
    for _ in range(3):
        last = alice.session.ping()
        alice.send(last)
        assert isinstance(alice.receive(), PongReceived)
    with pytest.raises(NotRegistered):
        alice.session.ping()
    assert_silent(alice, last)
    # 2^64 - 1 is the highest now: an unused low counter is far outside the window.
    assert_silent(alice, early)
    alice.register()
    assert_alive(alice)
    figures["counter_max_accepted_then_session_renewed"] = True


def test_forged_tags_silent(relay, alice):
    before = scrape(relay)
    ping = alice.session.ping()
    forgeries = [ping[:-TAG_SIZE] + bytes(TAG_SIZE)]
    for position in range(len(ping) - TAG_SIZE, len(ping)):
        forged = bytearray(ping)
        forged[position] ^= 0x5A
        forgeries.append(bytes(forged))
    assert_silent(alice, *forgeries)
    # None of the forgeries used up the counter: the genuine packet passes.
    alice.send(ping)
    assert isinstance(alice.receive(), PongReceived)
    failures = metric(scrape(relay), "auth_failures_total") - metric(
        before, "auth_failures_total"
    )
    assert failures == TAG_SIZE + 1
    figures["forged_tags_silent"] = TAG_SIZE + 1


def test_truncated_tags_silent(relay, alice):
    message = alice.message(alice, b"x" * 40)
    variants = []
    for cut in range(1, TAG_SIZE + 1):
        truncated = message[:-cut]
        # As truncated, the length field no longer matches the datagram.
        variants.append(truncated)
        fixed_length = len(truncated) - HEADER_SIZE
        variants.append(truncated[:4] + fixed_length.to_bytes(4, "big") + truncated[8:])
    assert_silent(alice, *variants)
    alice.send(message)
    events = alice.receive_all()
    assert events, "the intact MESSAGE got no MESSAGE_ACK"
    figures["truncated_tags_silent"] = 2 * TAG_SIZE


def test_replay_from_other_address_silent(relay, alice, phone_factory):
    ping = alice.session.ping()
    alice.send(ping)
    assert isinstance(alice.receive(), PongReceived)
    attacker = phone_factory(relay)
    attacker.send(ping)
    assert attacker.receive_raw(QUIET_S) is None
    # The session did not move to the attacker's address.
    assert_alive(alice)
