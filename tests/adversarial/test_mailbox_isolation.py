"""A registered but malicious user against other users' mailboxes and sessions."""

import os
import uuid

import pytest

from relay.client.events import (
    EntryPushed,
    MessageAckReceived,
    PollResponseReceived,
    PongReceived,
)
from relay.protocol import codec
from relay.protocol.constants import (
    CLIENT_SESSION_TYPES,
    ECHO_SIZE,
    HEADER_SIZE,
    AckStatus,
    ErrorCode,
)
from relay.protocol.crypto import new_aead
from relay.protocol.packets import seal_client_packet
from tests.adversarial.tools import bind_udp, collect, error_code, metric, scrape
from tests.security_figures import record

pytestmark = pytest.mark.e2e

GUESSES = 300
figures: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def record_figures():
    yield
    record("adversarial_isolation", figures)


@pytest.fixture(scope="module")
def relay(relay_factory):
    return relay_factory(
        RATE_PING_PER_USER=10_000,
        RATE_UNAUTHENTICATED_PER_IP=100_000,
        REPLIES_PER_ADDRESS_PER_S=10_000,
    )


def queue_message(alice, bob_id: str, payload: bytes = b"for bob only") -> str:
    message_id = str(uuid.uuid4())
    alice.send(alice.message(bob_id, payload, message_id=message_id))
    event = alice.receive()
    assert isinstance(event, MessageAckReceived), event
    assert event.status == AckStatus.QUEUED
    return message_id


def poll(phone):
    """Return the next POLL_RESPONSE, passing over pushes that arrive first."""
    phone.send(phone.session.poll(60_000))
    while isinstance(event := phone.receive(), EntryPushed):
        pass
    assert isinstance(event, PollResponseReceived), event
    return event.response


def test_ack_of_others_mailbox_deletes_nothing(relay, phone_factory):
    alice, bob, mallory = (phone_factory(relay) for _ in range(3))
    for phone in (alice, bob, mallory):
        phone.register()
    message_id = queue_message(alice, bob.user_id)

    mallory.send(mallory.session.ack([(alice.user_id, message_id)]))
    # No DELIVERED reaches Alice, and the message is still Bob's.
    assert alice.receive(0.5) is None
    response = poll(bob)
    assert [entry.message_id for entry in response.entries] == [message_id]

    bob.send(bob.session.ack([(alice.user_id, message_id)]))
    event = alice.receive()
    assert isinstance(event, MessageAckReceived)
    assert event.status == AckStatus.DELIVERED
    figures["foreign_ack_deleted"] = 0


def test_poll_and_pending_see_own_mailbox_only(relay, phone_factory):
    alice, bob, mallory = (phone_factory(relay) for _ in range(3))
    for phone in (alice, bob, mallory):
        phone.register()
    for _ in range(3):
        queue_message(alice, bob.user_id)
    response = poll(mallory)
    assert response.entries == []
    assert response.remaining == 0
    mallory.send(mallory.session.ping())
    pong = mallory.receive()
    assert isinstance(pong, PongReceived)
    assert pong.pending == 0
    assert len(poll(bob).entries) == 3
    figures["foreign_entries_seen_by_poll"] = 0


def test_sender_id_comes_from_session(relay, phone_factory):
    alice, bob, mallory = (phone_factory(relay) for _ in range(3))
    for phone in (alice, bob, mallory):
        phone.register()
    queue_message(mallory, bob.user_id, b"claims to be alice")
    (entry,) = poll(bob).entries
    assert entry.sender_id == mallory.user_id


def test_guessed_session_ids_get_unknown_session(relay, phone_factory):
    bob = phone_factory(relay)
    bob.register()
    sessions_before = metric(scrape(relay), "relay_active_connections")
    sockets, sent = {}, {}
    kinds = sorted(CLIENT_SESSION_TYPES)
    for guess in range(GUESSES):
        sock = sockets[guess] = bind_udp()
        guessed = seal_client_packet(
            new_aead(os.urandom(32)),
            kinds[guess % len(kinds)],
            os.urandom(16),
            int.from_bytes(os.urandom(8), "big") or 1,
            b"\x00" * (guess % 40),
        )
        sent[guess] = guessed
        sock.sendto(guessed, relay.udp_address)
    replies = collect(sockets, 0.2, 2.0)
    for guess, sock in sockets.items():
        (reply,) = replies[guess]
        assert error_code(reply) == ErrorCode.UNKNOWN_SESSION
        assert len(reply) <= len(sent[guess])
        echo = codec.decode_error(reply[HEADER_SIZE:]).echo
        assert echo == sent[guess][HEADER_SIZE : HEADER_SIZE + ECHO_SIZE]
        sock.close()
    assert metric(scrape(relay), "relay_active_connections") == sessions_before
    bob.send(bob.session.ping())
    assert isinstance(bob.receive(), PongReceived)
    figures["guessed_session_ids"] = {"tried": GUESSES, "accepted": 0}


def test_known_session_id_without_keys_silent(relay, phone_factory):
    bob, mallory = phone_factory(relay), phone_factory(relay)
    bob.register()
    # An on-path observer sees Bob's session id, but not his keys.
    for kind in sorted(CLIENT_SESSION_TYPES):
        forged = seal_client_packet(
            new_aead(os.urandom(32)), kind, bob.session.session_id, 2**40, b"\x00"
        )
        mallory.send(forged)
    assert mallory.receive_raw(0.3) is None
    bob.send(bob.session.ping())
    assert isinstance(bob.receive(), PongReceived)
