"""Every one-byte mutation of valid datagrams of each type, through the core.

Each valid datagram is built but not sent. Every variant with one byte
replaced by each of the other 255 values goes to the socket-free core
first; only then the original, which must still be accepted. For each
variant: the core does not raise, answers with at most as many bytes as the
variant has, starts no storage work and leaves every session, ended session
and cookie record as it was. The tag covers the whole datagram, so no
variant of a session packet may pass; a variant of a REGISTER may at most
get a CHALLENGE or an ERROR.
"""

import pytest

from fuzz.targets import session_state
from relay.client.events import (
    ChallengeReceived,
    MessageAckReceived,
    PongReceived,
    SessionEstablished,
    UnregisteredReceived,
)
from relay.protocol.constants import PacketType
from tests.security_figures import record
from tests.unit.core_harness import Relay, relay_settings

MESSAGE_ID = "12345678-9abc-4def-8123-456789abcdef"
mutated_counts: dict[str, int] = {}


def one_byte_mutations(datagram: bytes):
    for position, original in enumerate(datagram):
        for value in range(256):
            if value != original:
                yield datagram[:position] + bytes((value,)) + datagram[position + 1 :]


def core_state(relay: Relay) -> tuple:
    sessions = relay.core.sessions
    return (
        {sid: session_state(s) for sid, s in sessions.by_id.items()},
        {sid: (e.flags, session_state(e.session)) for sid, e in sessions.ended.items()},
        dict(sessions.by_user),
        len(relay.core.ledger),
    )


def feed_mutations(relay: Relay, datagram: bytes, address: tuple[str, int]) -> int:
    """Send every one-byte variant; return how many were sent."""
    before = core_state(relay)
    count = 0
    for variant in one_byte_mutations(datagram):
        count += 1
        try:
            relay.core.datagram_received(variant, address)
        except Exception as exc:
            raise AssertionError(f"core raised {exc!r} on {variant.hex()}") from exc
        answered = sum(len(reply) for reply in relay.network.take(address))
        assert answered <= len(variant), variant.hex()
        assert not relay.core._tasks, f"storage work started by {variant.hex()}"
        assert core_state(relay) == before, f"state changed by {variant.hex()}"
    assert relay.network.sent == []
    return count


@pytest.fixture
async def relay(tmp_path):
    huge = 10_000_000
    settings = relay_settings(
        tmp_path,
        rate_unauthenticated_per_ip=huge,
        rate_register_per_ip=1_000_000,
        replies_per_address_per_s=1_000_000,
        rate_ping_per_user=huge,
    )
    relay = await Relay(settings).open()
    yield relay
    await relay.close()


@pytest.fixture(scope="module", autouse=True)
def record_mutations():
    yield
    record(
        "core_mutations",
        {
            "datagrams_by_case": dict(mutated_counts),
            "datagrams": sum(mutated_counts.values()),
        },
    )


async def test_register_mutations_open_no_session(relay):
    phone = relay.phone()
    first = phone.session.start_register()
    mutated_counts["register_first"] = feed_mutations(relay, first, phone.address)

    (challenge,) = await phone.exchange(first)
    assert isinstance(challenge, ChallengeReceived)
    mutated_counts["register_signed"] = feed_mutations(
        relay, challenge.register, phone.address
    )
    (established,) = await phone.exchange(challenge.register)
    assert isinstance(established, SessionEstablished)


SESSION_PACKETS = {
    "ping": lambda phone, peer: phone.session.ping(),
    "ping_echo": lambda phone, peer: phone.session.ping(bytes(8)),
    "message": lambda phone, peer: phone.message(peer, b"sealed payload"),
    "ack": lambda phone, peer: phone.session.ack([(peer.user_id, MESSAGE_ID)]),
    "poll": lambda phone, peer: phone.session.poll(0),
    "unregister": lambda phone, peer: phone.session.unregister(),
    "unregister_erase": lambda phone, peer: phone.session.unregister(erase=True),
}


@pytest.mark.parametrize("kind", list(SESSION_PACKETS))
async def test_session_packet_mutations_all_rejected(relay, kind):
    alice, bob = relay.phone(), relay.phone()
    await alice.register()
    await bob.register()
    session_id = alice.session.session_id
    datagram = SESSION_PACKETS[kind](alice, bob)
    counter = alice.session.next_counter - 1
    mutated_counts[kind] = feed_mutations(relay, datagram, alice.address)

    # No variant used up the original's counter, so the original still passes.
    events = await alice.exchange(datagram)
    sessions = relay.core.sessions
    session = sessions.by_id.get(session_id) or sessions.ended[session_id].session
    assert session.highest == counter
    expected = {
        "ping": PongReceived,
        "ping_echo": PongReceived,
        "message": MessageAckReceived,
        "unregister": UnregisteredReceived,
        "unregister_erase": UnregisteredReceived,
    }
    if kind in expected:
        assert any(isinstance(event, expected[kind]) for event in events), events


async def test_mutations_from_new_address_never_move_session(relay):
    alice = relay.phone()
    await alice.register()
    datagram = alice.session.ping()
    elsewhere = ("127.0.0.9", 50_000)
    mutated_counts["ping_from_new_address"] = feed_mutations(relay, datagram, elsewhere)
    session = relay.core.sessions.by_user[alice.user_id]
    assert session.address == alice.address
    assert session.path_nonce is None


async def test_ended_session_retry_mutations_rejected(relay):
    alice = relay.phone()
    await alice.register()
    # The client forgets its keys on UNREGISTERED, so the retransmission is
    # sealed before the first UNREGISTER goes out.
    first, retry = alice.session.unregister(), alice.session.unregister()
    events = await alice.exchange(first)
    assert any(isinstance(event, UnregisteredReceived) for event in events)
    mutated_counts["unregister_retry"] = feed_mutations(relay, retry, alice.address)
    relay.core.datagram_received(retry, alice.address)
    (reply,) = relay.network.take(alice.address)
    assert reply[1] == PacketType.UNREGISTERED
