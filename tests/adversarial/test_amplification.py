"""Amplification audit: bytes answered per byte received from an unauthenticated source.

Every packet type code (0 to 255) under several versions, sizes and header
faults, every REGISTER step, and session packets that are not accepted
(bad tag, replayed, unknown or ended session) or that come from an address
the session has moved to but not yet validated. Each probe is sent from its
own socket on its own loopback address, to a relay whose rate limits are
raised out of the way so that every probe gets the fullest answer the relay
would give. The suite fails if any probe gets more bytes back than it sent.
Accepted session packets at a validated address may get more (a POLL of a
few bytes fetches a mailbox); their ratios are reported, not limited.
"""

import os
import random
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.client.events import (
    MessageAckReceived,
    PathChallengeReceived,
    PollResponseReceived,
    PongReceived,
    UnregisteredReceived,
)
from relay.client.identity import Identity
from relay.protocol.constants import (
    CLIENT_SESSION_TYPES,
    COOKIE_SIZE,
    HEADER_SIZE,
    REGISTER_SIZE,
    PacketType,
)
from relay.protocol.crypto import new_aead, x25519_public_bytes
from relay.protocol.packets import seal_client_packet
from tests.adversarial.tools import (
    bind_udp,
    collect,
    loopback_addresses,
    receive_all,
    register_datagram,
    sign_register,
)
from tests.e2e.phone import UdpPhone
from tests.security_figures import record

pytestmark = pytest.mark.e2e

SIZES = (8, 9, 12, 35, 40, 47, 48, 49, 64, 100, 236, 300, 1200)
OTHER_VERSIONS = (0, 2, 3, 0x7F, 0xFF)
WAVE = 800
HUGE = 10_000_000
audit: dict[str, dict] = {}
addresses = loopback_addresses(200_000, first=0x010000)


def header(version: int, packet_type: int, flags: int, length: int) -> bytes:
    return (
        bytes((version, packet_type))
        + flags.to_bytes(2, "big")
        + length.to_bytes(4, "big")
    )


def note(category: str, sent: bytes, replies: list[bytes]) -> None:
    entry = audit.setdefault(
        category,
        {"probes": 0, "answered": 0, "bytes_in": 0, "bytes_out": 0, "max_ratio": 0.0},
    )
    answered = sum(len(reply) for reply in replies)
    entry["probes"] += 1
    entry["answered"] += bool(replies)
    entry["bytes_in"] += len(sent)
    entry["bytes_out"] += answered
    entry["max_ratio"] = max(entry["max_ratio"], round(answered / len(sent), 4))


def probe_all(relay, category: str, datagrams: list[bytes]) -> None:
    """Send each datagram from a socket of its own, in waves; note every answer."""
    for start in range(0, len(datagrams), WAVE):
        wave = datagrams[start : start + WAVE]
        sockets = {index: bind_udp(next(addresses)) for index in range(len(wave))}
        for index, datagram in enumerate(wave):
            sockets[index].sendto(datagram, relay.udp_address)
        replies = collect(sockets, 0.3, 1.0)
        for index, datagram in enumerate(wave):
            note(category, datagram, replies[index])
            sockets[index].close()


@pytest.fixture(scope="module")
def relay(relay_factory):
    return relay_factory(
        RATE_UNAUTHENTICATED_PER_IP=HUGE,
        REPLIES_PER_ADDRESS_PER_S=1_000_000,
        RATE_REGISTER_PER_IP=1_000_000,
        RATE_PING_PER_USER=HUGE,
        RATE_POLL_PER_USER=HUGE,
        RATE_MESSAGE_PER_USER=HUGE,
    )


@pytest.fixture(scope="module", autouse=True)
def check_and_record():
    yield
    unauthenticated = {k: v for k, v in audit.items() if not k.startswith("accepted_")}
    worst = max(entry["max_ratio"] for entry in unauthenticated.values())
    record(
        "amplification",
        {
            "categories": audit,
            "unauthenticated_probes": sum(
                e["probes"] for e in unauthenticated.values()
            ),
            "unauthenticated_max_ratio": worst,
        },
    )


def assert_no_amplification(category_prefix: str) -> None:
    for category, entry in audit.items():
        if category.startswith(category_prefix):
            assert entry["max_ratio"] <= 1.0, (category, entry)


def test_every_type_code_and_size(relay):
    rng = random.Random(1)
    datagrams = []
    for packet_type in range(256):
        for size in SIZES:
            datagrams.append(
                header(1, packet_type, 0, size - 8) + rng.randbytes(size - 8)
            )
    probe_all(relay, "v1_every_type_and_size", datagrams)
    assert_no_amplification("v1_every_type")


def test_every_type_with_bad_header(relay):
    rng = random.Random(2)
    datagrams = []
    for packet_type in range(256):
        body = rng.randbytes(56)
        datagrams.append(header(1, packet_type, 1, 56) + body)
        for length in (0, 57, 55, 0xFFFFFFFF):
            datagrams.append(header(1, packet_type, 0, length) + body)
    probe_all(relay, "v1_bad_header", datagrams)
    assert_no_amplification("v1_bad_header")


def test_other_versions(relay):
    rng = random.Random(3)
    datagrams = []
    for version in OTHER_VERSIONS:
        for packet_type in range(256):
            for size in (8, 35, 36, 64, 236):
                datagrams.append(
                    header(version, packet_type, 0, size - 8) + rng.randbytes(size - 8)
                )
    probe_all(relay, "other_versions", datagrams)
    assert_no_amplification("other_versions")


def test_register_steps(relay):
    phone = UdpPhone(relay.udp_address, relay.relay_public_key)
    try:
        first = phone.session.start_register()
        datagrams = [first[:size] for size in range(HEADER_SIZE, len(first))]
        datagrams += [
            header(1, 1, 0, size - 8) + first[8:size] for size in range(8, len(first))
        ]
        datagrams.append(first)
        datagrams.append(first + b"\x00")
        forged = bytearray(first)
        forged[HEADER_SIZE + REGISTER_SIZE - 96] ^= 1  # inside the cookie
        datagrams.append(bytes(forged))
        probe_all(relay, "register_malformed_or_forged", datagrams)

        # The whole handshake from one address: CHALLENGE, then REGISTERED.
        phone.send(first)
        challenge = receive_all(phone.socket)
        note("register_handshake", first, challenge)
        signed = phone.session.receive(challenge[0]).register
        phone.send(signed)
        note("register_handshake", signed, receive_all(phone.socket))
        # A retry of the signed REGISTER gets the same REGISTERED again.
        phone.send(signed)
        note("register_handshake", signed, receive_all(phone.socket))
    finally:
        phone.close()
    assert_no_amplification("register")


def test_signed_register_with_bad_cookie(relay):
    datagrams = []
    for _ in range(50):
        identity = Identity.generate()
        ce_public = x25519_public_bytes(X25519PrivateKey.generate())
        unsigned = register_datagram(identity, ce_public, os.urandom(COOKIE_SIZE))
        datagrams.append(sign_register(identity, relay.relay_public_key, unsigned))
    probe_all(relay, "register_forged_cookie", datagrams)
    assert_no_amplification("register_forged_cookie")


def _registered_pair(relay) -> tuple[UdpPhone, UdpPhone]:
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    bob.register()
    return alice, bob


def test_session_packets_not_accepted(relay):
    alice, bob = _registered_pair(relay)
    try:
        kinds = sorted(CLIENT_SESSION_TYPES)
        session_id = alice.session.session_id
        bad_tags = [
            seal_client_packet(
                new_aead(os.urandom(32)), kind, session_id, 2**30 + n, b"\0" * n
            )
            for kind in kinds
            for n in range(0, 80, 8)
        ]
        probe_all(relay, "session_bad_tag", bad_tags)
        unknown = [
            seal_client_packet(
                new_aead(os.urandom(32)), kind, os.urandom(16), 1, b"\0" * n
            )
            for kind in kinds
            for n in range(0, 80, 8)
        ]
        probe_all(relay, "session_unknown_id", unknown)

        accepted = [
            alice.session.ping(),
            alice.message(bob, b"m"),
            alice.session.poll(0),
        ]
        for datagram in accepted:
            alice.send(datagram)
        alice.receive_all()
        probe_all(relay, "session_replayed_elsewhere", accepted)
    finally:
        alice.close()
        bob.close()
    assert_no_amplification("session_")


def test_ended_session_from_new_address(relay):
    alice, bob = _registered_pair(relay)
    try:
        retries = [alice.session.unregister() for _ in range(3)]
        others = [alice.session.ping(), alice.session.poll(0xFFFF), alice.message(bob)]
        alice.send(alice.session.unregister())
        assert isinstance(alice.receive(), UnregisteredReceived)
        probe_all(relay, "ended_session_elsewhere", retries + others)
    finally:
        alice.close()
        bob.close()
    assert audit["ended_session_elsewhere"]["answered"] > 0
    assert_no_amplification("ended_session")


def test_roaming_budget(relay):
    """A session that moves gets at most the bytes it sent until it validates."""
    alice, bob = _registered_pair(relay)
    try:
        bob.send(bob.session.unregister())
        bob.receive_all()
        bob_id = bob.user_id
        for _ in range(5):
            alice.send(alice.message(bob_id, os.urandom(1000)))
        assert all(isinstance(e, MessageAckReceived) for e in alice.receive_all())
        bob.register()
        bob.receive_all()
        bob.roam()
        sent = received = 0
        nonce = b""
        roaming = [
            bob.session.poll(0xFFFF),
            bob.session.ping(),
            bob.session.poll(0xFFFF),
        ]
        roaming += [bob.message(alice, b"hi"), bob.session.poll(0xFFFF)]
        for datagram in roaming:
            bob.send(datagram)
            sent += len(datagram)
            replies = receive_all(bob.socket, first_s=0.5)
            received += sum(len(reply) for reply in replies)
            note("roaming_unvalidated", datagram, replies)
            assert received <= sent, (received, sent)
            for reply in replies:
                event = bob.session.receive(reply)
                if isinstance(event, PathChallengeReceived):
                    nonce = event.nonce
        # Echoing the PATH_CHALLENGE validates the address; then large replies flow.
        bob.send(bob.session.ping(nonce))
        assert isinstance(bob.receive(), PongReceived)
        poll = bob.session.poll(0xFFFF)
        bob.send(poll)
        replies = receive_all(bob.socket)
        note("accepted_validated_poll", poll, replies)
        event = bob.session.receive(replies[-1])
        assert isinstance(event, PollResponseReceived)
        assert len(event.response.entries) == 5
    finally:
        alice.close()
        bob.close()
    assert_no_amplification("roaming")


def test_reply_rate_per_address_is_bounded(relay_factory):
    """With the default limits, one address gets at most about 100 answers a second."""
    relay = relay_factory()
    sock = bind_udp("127.0.0.5")
    # Long enough for a BAD_REQUEST with its text to fit.
    malformed = header(1, PacketType.REGISTER, 0, 100) + bytes(100)
    started = time.monotonic()
    for _ in range(3000):
        sock.sendto(malformed, relay.udp_address)
    replies = receive_all(sock, quiet_s=0.3)
    elapsed = time.monotonic() - started
    sock.close()
    burst, per_second = 100, 100
    assert len(replies) <= burst + per_second * elapsed + 1, (len(replies), elapsed)
    record(
        "amplification",
        {
            "reply_rate_limit": {
                "datagrams_sent": 3000,
                "answers": len(replies),
                "seconds": round(elapsed, 2),
            }
        },
    )
