"""The real relay process over real UDP on 127.0.0.1, with a real SQLite file."""

import os
import random
import socket
import sqlite3
import uuid

import pytest

from relay.client.events import (
    EntryPushed,
    ErrorReceived,
    MessageAckReceived,
    PathChallengeReceived,
    PollResponseReceived,
    PongReceived,
    UnregisteredReceived,
)
from relay.client.identity import Identity
from relay.protocol.codec import decode_error, pack_header
from relay.protocol.constants import HEADER_SIZE, AckStatus, ErrorCode, PacketType

pytestmark = pytest.mark.e2e


def acks(events) -> list[AckStatus]:
    return [e.status for e in events if isinstance(e, MessageAckReceived)]


def stored_rows(relay, sql: str) -> int:
    with sqlite3.connect(relay.database) as connection:
        return connection.execute(sql).fetchone()[0]


def test_online_push_with_delivered_receipt(phone_factory):
    alice, bob = phone_factory(), phone_factory()
    alice.register()
    bob.register()
    alice.send(alice.message(bob, b"sealed text"))
    assert acks([alice.receive()]) == [AckStatus.QUEUED]
    push = bob.receive()
    assert isinstance(push, EntryPushed)
    assert push.entry.sender_id == alice.user_id
    assert push.entry.payload == b"sealed text"
    bob.send(bob.session.ack([(alice.user_id, push.entry.message_id)]))
    assert acks([alice.receive()]) == [AckStatus.DELIVERED]


def test_offline_queue_then_poll_in_order(relay, phone_factory):
    alice, bob = phone_factory(), phone_factory()
    alice.register()
    bob.register()
    bob.send(bob.session.unregister())
    assert isinstance(bob.receive(), UnregisteredReceived)
    for index in range(6):
        alice.send(alice.message(bob, f"message {index}".encode()))
        assert acks([alice.receive()]) == [AckStatus.QUEUED]
    assert bob.register().pending == 6
    bob.send(bob.session.poll())
    response = bob.receive()
    assert isinstance(response, PollResponseReceived)
    payloads = [entry.payload for entry in response.response.entries]
    assert payloads == [f"message {i}".encode() for i in range(6)]


def test_duplicate_sent_three_times_stored_once(relay, phone_factory):
    alice, bob = phone_factory(), phone_factory()
    alice.register()
    bob.register()
    bob.send(bob.session.unregister())
    bob.receive()
    message_id = str(uuid.uuid4())
    for _ in range(3):
        alice.send(alice.message(bob, b"once", message_id=message_id))
        assert acks([alice.receive()]) == [AckStatus.QUEUED]
    count = stored_rows(
        relay,
        f"SELECT count(*) FROM mailbox_messages WHERE message_id = '{message_id}'",
    )
    assert count == 1


def test_replayed_and_forged_packets_get_no_reply(phone_factory):
    phone = phone_factory()
    phone.register()
    ping = phone.session.ping()
    phone.send(ping)
    assert isinstance(phone.receive(), PongReceived)
    phone.send(ping)
    assert phone.receive_raw(0.5) is None
    forged = bytearray(phone.session.ping())
    forged[-3] ^= 0x40
    phone.send(bytes(forged))
    assert phone.receive_raw(0.5) is None


def test_cookie_from_another_address_refused(phone_factory):
    phone, thief = phone_factory(), phone_factory()
    phone.send(phone.session.start_register())
    challenge = phone.receive()
    thief.send(challenge.register)
    reply = thief.receive_raw()
    assert reply is not None
    assert decode_error(reply[HEADER_SIZE:]).code == ErrorCode.FORBIDDEN


def test_key_conflict(phone_factory):
    owner = phone_factory()
    owner.register()
    stranger = Identity.generate()
    impostor = phone_factory(
        Identity(owner.user_id, stranger.signing_key, stranger.x25519_key)
    )
    impostor.send(impostor.session.start_register())
    challenge = impostor.receive()
    impostor.send(challenge.register)
    error = impostor.receive()
    assert isinstance(error, ErrorReceived)
    assert error.code == ErrorCode.KEY_CONFLICT


def test_roaming_to_new_source_port(phone_factory):
    alice, bob = phone_factory(), phone_factory()
    alice.register()
    bob.register()
    bob.roam()
    bob.send(bob.session.ping())
    challenge = bob.receive()
    assert isinstance(challenge, PathChallengeReceived)
    bob.send(challenge.reply)
    assert isinstance(bob.receive(), PongReceived)
    alice.send(alice.message(bob, b"after roaming"))
    assert acks([alice.receive()]) == [AckStatus.QUEUED]
    push = bob.receive()
    assert isinstance(push, EntryPushed)
    assert push.entry.payload == b"after roaming"


def test_erase_removes_user_and_mailbox(relay, phone_factory):
    alice, bob = phone_factory(), phone_factory()
    alice.register()
    bob.register()
    alice.send(alice.message(bob))
    alice.receive()
    bob.receive()
    bob.send(bob.session.unregister(erase=True))
    done = bob.receive()
    assert isinstance(done, UnregisteredReceived)
    assert done.flags == 1
    where = f"WHERE user_id = '{bob.user_id}'"
    assert stored_rows(relay, f"SELECT count(*) FROM users {where}") == 0
    mailbox = f"WHERE recipient_id = '{bob.user_id}'"
    assert stored_rows(relay, f"SELECT count(*) FROM mailbox_messages {mailbox}") == 0
    alice.send(alice.message(bob))
    assert acks([alice.receive()]) == [AckStatus.UNKNOWN_RECIPIENT]


def test_unknown_recipient(phone_factory):
    alice = phone_factory()
    alice.register()
    alice.send(alice.message(str(uuid.uuid4())))
    assert acks([alice.receive()]) == [AckStatus.UNKNOWN_RECIPIENT]


def test_too_large(relay_factory):
    relay = relay_factory(MAX_PAYLOAD_BYTES=2000)
    from tests.e2e.phone import UdpPhone

    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    try:
        alice.register()
        bob.register()
        alice.send(alice.message(bob, b"x" * 2001))
        assert acks([alice.receive()]) == [AckStatus.TOO_LARGE]
        alice.send(alice.message(bob, b"x" * 2000))
        assert acks([alice.receive()]) == [AckStatus.QUEUED]
    finally:
        alice.close()
        bob.close()


def test_other_users_ack_deletes_nothing(relay, phone_factory):
    alice, bob, mallory = phone_factory(), phone_factory(), phone_factory()
    for phone in (alice, bob, mallory):
        phone.register()
    bob.send(bob.session.unregister())
    bob.receive()
    message_id = str(uuid.uuid4())
    alice.send(alice.message(bob, message_id=message_id))
    alice.receive()
    mallory.send(mallory.session.ack([(alice.user_id, message_id)]))
    assert alice.receive(0.5) is None  # no DELIVERED receipt
    count = stored_rows(
        relay,
        f"SELECT count(*) FROM mailbox_messages WHERE message_id = '{message_id}'",
    )
    assert count == 1


def test_random_datagrams_never_amplified_and_relay_stays_healthy(relay):
    rng = random.Random(2024)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    templates = [
        pack_header(PacketType.REGISTER, 228) + os.urandom(228),
        pack_header(PacketType.PING, 40) + os.urandom(40),
        pack_header(PacketType.MESSAGE, 200) + os.urandom(200),
    ]
    largest_ratio = 0.0
    try:
        for _ in range(400):
            if rng.random() < 0.4:
                datagram = os.urandom(rng.randrange(0, 600))
            else:
                mutated = bytearray(rng.choice(templates))
                for _ in range(rng.randrange(0, 4)):
                    mutated[rng.randrange(len(mutated))] = rng.randrange(256)
                datagram = bytes(mutated[: rng.randrange(1, len(mutated) + 1)])
            sock.sendto(datagram, relay.udp_address)
            try:
                reply, _ = sock.recvfrom(70_000)
            except TimeoutError:
                continue
            assert len(reply) <= len(datagram)
            largest_ratio = max(largest_ratio, len(reply) / max(1, len(datagram)))
    finally:
        sock.close()
    assert largest_ratio <= 1.0
    status, health = relay.health()
    assert status == 200
    assert health["status"] == "healthy"
    assert relay.returncode == -999  # still running
