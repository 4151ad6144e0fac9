"""ClientSession without sockets, against a relay side built from the shared
protocol modules (cookies, signatures, session keys, packet sealing)."""

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.client.errors import NotRegistered
from relay.client.events import (
    ChallengeReceived,
    DrainingReceived,
    EntryPushed,
    ErrorReceived,
    ErrorTarget,
    MessageAckReceived,
    PathChallengeReceived,
    PollResponseReceived,
    PongReceived,
    SessionErrorReceived,
    SessionEstablished,
    UnregisteredReceived,
)
from relay.client.identity import Identity
from relay.client.session import ClientSession
from relay.protocol import codec
from relay.protocol.constants import (
    HEADER_SIZE,
    ZERO_COOKIE,
    AckStatus,
    ErrorCode,
    PacketType,
)
from relay.protocol.cookie import CookieJar, derive_cookie_key
from relay.protocol.crypto import (
    derive_session_keys,
    new_aead,
    register_signed_message,
    verify_ed25519,
    x25519,
    x25519_public_bytes,
)
from relay.protocol.packets import (
    client_packet_ids,
    open_client_packet,
    seal_registered,
    seal_relay_packet,
)
from relay.protocol.replay import ReplayWindow

VECTORS_PATH = Path(__file__).parents[1] / "vectors" / "protocol_v1.json"
NOW_MS = 1_767_225_600_000
# The address the simulated relay binds cookies to; nothing is sent there.
CLIENT_ADDRESS = ("192.0.2.7", 50_000)


class RelaySide:
    """The relay's half of one handshake and session, from the protocol modules."""

    def __init__(
        self, static: X25519PrivateKey | None = None, pending: int = 0
    ) -> None:
        self.static = static or X25519PrivateKey.generate()
        self.public = x25519_public_bytes(self.static)
        self.cookies = CookieJar(
            derive_cookie_key(self.static.private_bytes_raw()), 30_000
        )
        self.pending = pending
        self.counter = 1
        self.window = ReplayWindow()

    def answer_register(self, datagram: bytes, verify: bool = True) -> bytes:
        register = codec.decode_register(datagram[HEADER_SIZE:])
        user_id = register.user_id.encode()
        if register.cookie == ZERO_COOKIE:
            cookie = self.cookies.mint(
                CLIENT_ADDRESS, user_id, register.ce_public, NOW_MS
            )
            return codec.pack_header(PacketType.CHALLENGE, len(cookie)) + cookie
        if verify:
            assert self.cookies.check(
                register.cookie, CLIENT_ADDRESS, user_id, register.ce_public, NOW_MS
            )
            message = register_signed_message(self.public, datagram)
            assert verify_ed25519(register.ed25519_public, register.signature, message)
        return self._registered(register)

    def _registered(self, register: codec.Register) -> bytes:
        relay_ephemeral = X25519PrivateKey.generate()
        re_public = x25519_public_bytes(relay_ephemeral)
        self.session_id = os.urandom(16)
        dh1 = x25519(self.static, register.ce_public)
        dh2 = x25519(relay_ephemeral, register.ce_public)
        k_c2s, k_s2c = derive_session_keys(dh1, dh2, register.cookie, self.session_id)
        self.opener, self.sealer = new_aead(k_c2s), new_aead(k_s2c)
        body = codec.encode_registered_body(
            codec.RegisteredBody(NOW_MS, 120, self.pending)
        )
        self.counter = 1
        return seal_registered(self.sealer, self.session_id, re_public, 1, body)

    def open(self, datagram: bytes) -> tuple[int, int, bytes]:
        """Return (type, counter, body) of a client packet; fail on replay."""
        session_id, counter = client_packet_ids(datagram)
        assert session_id == self.session_id
        body = open_client_packet(self.opener, datagram, counter)
        assert self.window.accept(counter)
        return datagram[1], counter, body

    def seal(self, packet_type: int, body: bytes) -> bytes:
        self.counter += 1
        return seal_relay_packet(self.sealer, packet_type, self.counter, body)


def handshake(session: ClientSession, relay_side: RelaySide) -> SessionEstablished:
    challenge = relay_side.answer_register(session.start_register())
    event = session.receive(challenge)
    assert isinstance(event, ChallengeReceived)
    established = session.receive(relay_side.answer_register(event.register))
    assert isinstance(established, SessionEstablished)
    return established


@pytest.fixture
def identity() -> Identity:
    return Identity.generate()


@pytest.fixture
def relay_side() -> RelaySide:
    return RelaySide(pending=3)


@pytest.fixture
def session(identity: Identity, relay_side: RelaySide) -> ClientSession:
    return ClientSession(identity, relay_side.public)


@pytest.fixture
def live(session: ClientSession, relay_side: RelaySide) -> ClientSession:
    handshake(session, relay_side)
    return session


# --- handshake -------------------------------------------------------------------


def test_first_register_has_zero_cookie(session, identity):
    datagram = session.start_register()
    register = codec.decode_register(datagram[HEADER_SIZE:])
    assert datagram[:HEADER_SIZE] == codec.pack_header(PacketType.REGISTER, 228)
    assert register.user_id == identity.user_id
    assert register.x25519_public == identity.x25519_public
    assert register.ed25519_public == identity.ed25519_public
    assert register.cookie == ZERO_COOKIE
    assert register.signature == bytes(64)
    assert session.handshake_datagram == datagram


def test_each_handshake_uses_fresh_ce(session):
    first = codec.decode_register(session.start_register()[HEADER_SIZE:])
    second = codec.decode_register(session.start_register()[HEADER_SIZE:])
    assert first.ce_public != second.ce_public


def test_challenge_yields_signed_register(session, relay_side):
    first = session.start_register()
    event = session.receive(relay_side.answer_register(first))
    assert isinstance(event, ChallengeReceived)
    signed = codec.decode_register(event.register[HEADER_SIZE:])
    assert signed.cookie == event.cookie
    assert event.register[:140] == first[:140]
    assert session.handshake_datagram == event.register
    message = register_signed_message(relay_side.public, event.register)
    assert verify_ed25519(signed.ed25519_public, signed.signature, message)


def test_handshake_establishes_session(session, relay_side):
    established = handshake(session, relay_side)
    assert established.pending == 3
    assert established.session_timeout_s == 120
    assert established.server_time_ms == NOW_MS
    assert established.session_id == relay_side.session_id
    assert session.established
    assert session.session_id == relay_side.session_id
    assert not session.registering


def test_both_sides_derive_same_keys(live, relay_side):
    packet_type, counter, body = relay_side.open(live.ping())
    assert packet_type == PacketType.PING
    assert counter == 1
    assert body == b""
    event = live.receive(
        relay_side.seal(PacketType.PONG, codec.encode_pong(codec.Pong(5, 0)))
    )
    assert event == PongReceived(5, 0)


def test_client_counters_count_from_one(live, relay_side):
    counters = [relay_side.open(live.ping())[1] for _ in range(3)]
    assert counters == [1, 2, 3]


def test_registered_from_unpinned_relay_ignored(identity, relay_side):
    pinned = X25519PrivateKey.generate()
    session = ClientSession(identity, x25519_public_bytes(pinned))
    challenge = relay_side.answer_register(session.start_register())
    event = session.receive(challenge)
    registered = relay_side.answer_register(event.register, verify=False)
    assert session.receive(registered) is None
    assert session.drops["bad_tag"] == 1
    assert not session.established
    assert session.registering


def test_registered_without_challenge_ignored(session, relay_side):
    other = ClientSession(Identity.generate(), relay_side.public)
    challenge = relay_side.answer_register(other.start_register())
    registered = relay_side.answer_register(other.receive(challenge).register)
    session.start_register()
    assert session.receive(registered) is None
    assert session.drops["unexpected_registered"] == 1


def test_repeated_registered_ignored(session, relay_side):
    challenge = relay_side.answer_register(session.start_register())
    registered = relay_side.answer_register(session.receive(challenge).register)
    assert isinstance(session.receive(registered), SessionEstablished)
    assert session.receive(registered) is None
    assert session.drops["unexpected_registered"] == 1


def test_registered_counter_must_be_one(session, relay_side):
    challenge = relay_side.answer_register(session.start_register())
    registered = bytearray(
        relay_side.answer_register(session.receive(challenge).register)
    )
    registered[63] = 2
    assert session.receive(bytes(registered)) is None
    assert session.drops["registered_counter_not_1"] == 1


def test_second_challenge_ignored(session, relay_side):
    first = session.start_register()
    event = session.receive(relay_side.answer_register(first))
    assert isinstance(event, ChallengeReceived)
    assert session.receive(relay_side.answer_register(first)) is None
    assert session.handshake_datagram == event.register


def test_challenge_without_handshake_ignored(session):
    challenge = codec.pack_header(PacketType.CHALLENGE, 32) + os.urandom(32)
    assert session.receive(challenge) is None
    assert session.drops["unexpected_challenge"] == 1


def test_abandoned_handshake_ignores_challenge(session, relay_side):
    challenge = relay_side.answer_register(session.start_register())
    session.abandon_register()
    assert session.receive(challenge) is None
    assert session.handshake_datagram is None


def test_old_session_works_during_reregister(live, relay_side):
    old_id = live.session_id
    challenge = relay_side.answer_register(live.start_register())
    assert live.established
    old_relay_packet = relay_side.seal(
        PacketType.PONG, codec.encode_pong(codec.Pong(1, 0))
    )
    assert isinstance(live.receive(old_relay_packet), PongReceived)
    assert client_packet_ids(live.ping())[0] == old_id
    live.receive(relay_side.answer_register(live.receive(challenge).register))
    assert live.session_id == relay_side.session_id != old_id


def test_low_order_relay_key_rejected(identity):
    with pytest.raises(ValueError, match="relay public key"):
        ClientSession(identity, bytes(32))


# --- relay packets and the replay window ------------------------------------------


def pong(relay_side: RelaySide, pending: int = 0) -> bytes:
    return relay_side.seal(
        PacketType.PONG, codec.encode_pong(codec.Pong(NOW_MS, pending))
    )


def test_replayed_relay_packet_dropped(live, relay_side):
    datagram = pong(relay_side)
    assert live.receive(datagram) == PongReceived(NOW_MS, 0)
    assert live.receive(datagram) is None
    assert live.drops["replayed"] == 1


def test_reordered_relay_packets_accepted(live, relay_side):
    early, late = pong(relay_side, 1), pong(relay_side, 2)
    assert live.receive(late) == PongReceived(NOW_MS, 2)
    assert live.receive(early) == PongReceived(NOW_MS, 1)


def test_relay_packet_older_than_window_dropped(live, relay_side):
    old = pong(relay_side)
    relay_side.counter += 64
    assert live.receive(pong(relay_side)) is not None
    assert live.receive(old) is None
    assert live.drops["replayed"] == 1


def test_registered_counter_is_used(live, relay_side):
    relay_side.counter = 0  # the next relay packet reuses counter 1
    assert live.receive(pong(relay_side)) is None
    assert live.drops["replayed"] == 1


def test_tampered_relay_packet_dropped(live, relay_side):
    datagram = bytearray(pong(relay_side))
    datagram[-1] ^= 1
    assert live.receive(bytes(datagram)) is None
    assert live.drops["bad_tag"] == 1


def test_malformed_body_uses_counter(live, relay_side):
    datagram = relay_side.seal(PacketType.PONG, b"\x00" * 3)
    assert live.receive(datagram) is None
    assert live.drops["malformed_body"] == 1
    assert live.receive(datagram) is None
    assert live.drops["replayed"] == 1


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, 2, "bad_header"),
        (2, 1, "bad_header"),
        (7, 99, "bad_header"),
        (1, 0x04, "unexpected_type"),
    ],
)
def test_bad_header_dropped(live, relay_side, offset, value, reason):
    datagram = bytearray(pong(relay_side))
    datagram[offset] = value
    assert live.receive(bytes(datagram)) is None
    assert live.drops[reason] == 1


def test_short_datagram_dropped(live):
    assert live.receive(b"\x01\x05") is None
    assert live.drops["short_datagram"] == 1


def test_session_packet_before_session_dropped(session, relay_side):
    relay_side.sealer = new_aead(os.urandom(32))
    assert session.receive(pong(relay_side)) is None
    assert session.drops["no_session"] == 1


def test_seal_without_session_raises(session):
    with pytest.raises(NotRegistered):
        session.ping()


def test_bodies_decoded(live, relay_side):
    entry = codec.Entry(
        "9a4f1c3d-8e27-4b60-95ad-e1b3706c2f58",
        "c2d94e17-6a58-4f03-b1e9-0d7c35a8f264",
        NOW_MS,
        b"payload",
    )
    message_id = entry.message_id
    cases = [
        (
            PacketType.MESSAGE_ACK,
            codec.encode_message_ack(message_id, AckStatus.QUEUED),
            MessageAckReceived(message_id, AckStatus.QUEUED),
        ),
        (PacketType.MESSAGE_DELIVER, codec.encode_entry(entry), EntryPushed(entry)),
        (
            PacketType.POLL_RESPONSE,
            codec.encode_poll_response(4, [codec.encode_entry(entry)]),
            PollResponseReceived(codec.PollResponse(4, [entry])),
        ),
        (PacketType.DRAINING, codec.encode_draining(2_000), DrainingReceived(2_000)),
        (
            PacketType.SESSION_ERROR,
            codec.encode_session_error(ErrorCode.BAD_REQUEST, "bad"),
            SessionErrorReceived(ErrorCode.BAD_REQUEST, "bad"),
        ),
    ]
    for packet_type, body, expected in cases:
        assert live.receive(relay_side.seal(packet_type, body)) == expected


def test_unregistered_ends_session(live, relay_side):
    relay_side.open(live.unregister(erase=True))
    event = live.receive(
        relay_side.seal(PacketType.UNREGISTERED, codec.encode_unregister(1))
    )
    assert event == UnregisteredReceived(1)
    assert not live.established
    with pytest.raises(NotRegistered):
        live.ping()


# --- PATH_CHALLENGE --------------------------------------------------------------


def test_path_challenge_answered_by_ping_echo(live, relay_side):
    live.ping()
    nonce = os.urandom(8)
    event = live.receive(relay_side.seal(PacketType.PATH_CHALLENGE, nonce))
    assert isinstance(event, PathChallengeReceived)
    assert event.nonce == nonce
    packet_type, counter, body = relay_side.open(event.reply)
    assert packet_type == PacketType.PING
    assert body == nonce
    assert counter == 2


def test_path_challenge_with_bad_nonce_size_dropped(live, relay_side):
    assert live.receive(relay_side.seal(PacketType.PATH_CHALLENGE, b"1234567")) is None
    assert live.drops["malformed_body"] == 1


# --- plain ERROR echo matching ----------------------------------------------------


def plain_error(code: int, echo: bytes, text: str = "") -> bytes:
    return codec.encode_error_datagram(code, echo, text, 1_200)


def test_register_error_with_matching_echo(session):
    first = session.start_register()
    echo = codec.register_echo(first)
    event = session.receive(plain_error(ErrorCode.OVERLOADED, echo, "full"))
    assert event == ErrorReceived(ErrorCode.OVERLOADED, "full", ErrorTarget.REGISTER)


def test_register_error_after_challenge_matches(session, relay_side):
    first = session.start_register()
    session.receive(relay_side.answer_register(first))
    event = session.receive(
        plain_error(ErrorCode.FORBIDDEN, codec.register_echo(first))
    )
    assert event is not None
    assert event.target is ErrorTarget.REGISTER


def test_register_error_from_old_handshake_ignored(session):
    old = session.start_register()
    session.start_register()
    assert (
        session.receive(plain_error(ErrorCode.FORBIDDEN, codec.register_echo(old)))
        is None
    )
    assert session.drops["unmatched_error"] == 1


def test_register_error_after_handshake_ignored(session, relay_side):
    first = session.start_register()
    session.receive(
        relay_side.answer_register(
            session.receive(relay_side.answer_register(first)).register
        )
    )
    assert session.established
    assert (
        session.receive(plain_error(ErrorCode.FORBIDDEN, codec.register_echo(first)))
        is None
    )


def test_session_error_echo_names_counter(live):
    live.ping()
    sent = live.ping()
    session_id, counter = client_packet_ids(sent)
    echo = session_id + counter.to_bytes(8, "big")
    event = live.receive(plain_error(ErrorCode.UNKNOWN_SESSION, echo))
    assert event == ErrorReceived(
        ErrorCode.UNKNOWN_SESSION, "", ErrorTarget.SESSION_PACKET, 2
    )


@pytest.mark.parametrize("echo_kind", ["unsent_counter", "other_session", "zeros"])
def test_unmatched_error_ignored(live, echo_kind):
    sent = live.ping()
    session_id, counter = client_packet_ids(sent)
    echo = {
        "unsent_counter": session_id + (counter + 1).to_bytes(8, "big"),
        "other_session": os.urandom(16) + counter.to_bytes(8, "big"),
        "zeros": bytes(24),
    }[echo_kind]
    assert live.receive(plain_error(ErrorCode.UNKNOWN_SESSION, echo)) is None
    assert live.drops["unmatched_error"] == 1


def test_echo_of_previous_session_ignored(live, relay_side):
    session_id, counter = client_packet_ids(live.ping())
    handshake(live, relay_side)
    echo = session_id + counter.to_bytes(8, "big")
    assert live.receive(plain_error(ErrorCode.UNKNOWN_SESSION, echo)) is None


def test_malformed_error_ignored(live):
    datagram = plain_error(ErrorCode.UNKNOWN_SESSION, bytes(24), "text")[:-1]
    fixed_length = bytearray(datagram)
    fixed_length[4:8] = (len(datagram) - HEADER_SIZE).to_bytes(4, "big")
    assert live.receive(bytes(fixed_length)) is None
    assert live.drops["malformed_error"] == 1


# --- the published test vectors ---------------------------------------------------


def test_session_reproduces_vectors():
    data = json.loads(VECTORS_PATH.read_text())
    keys, steps = data["keys"], data["handshake"]
    identity = Identity(
        data["ids"]["client_user_id"],
        Ed25519PrivateKey.from_private_bytes(
            bytes.fromhex(keys["client_ed25519"]["seed"])
        ),
        X25519PrivateKey.from_private_bytes(
            bytes.fromhex(keys["client_x25519"]["private"])
        ),
    )
    session = ClientSession(identity, bytes.fromhex(keys["relay_static"]["public"]))
    ce = X25519PrivateKey.from_private_bytes(
        bytes.fromhex(keys["client_ephemeral_ce"]["private"])
    )
    assert session.start_register(ce).hex() == steps["register_first"]["datagram"]
    challenged = session.receive(bytes.fromhex(steps["challenge"]["datagram"]))
    assert challenged.register.hex() == steps["register_signed"]["datagram"]
    established = session.receive(bytes.fromhex(steps["registered"]["datagram"]))
    assert isinstance(established, SessionEstablished)
    assert established.pending == steps["registered"]["body_fields"]["pending"]

    packets = {p["name"]: p for p in data["session_packets"]}
    assert session.ping().hex() == packets["PING (empty)"]["datagram"]
    assert session.receive(bytes.fromhex(packets["PONG"]["datagram"])) is not None
    path = session.receive(bytes.fromhex(packets["PATH_CHALLENGE"]["datagram"]))
    assert path.reply.hex() == packets["PING (echo)"]["datagram"]
    fields = packets["MESSAGE"]["body_fields"]
    message = codec.Message(
        fields["message_id"],
        fields["recipient_id"],
        fields["ttl_s"],
        bytes.fromhex(fields["payload"]),
    )
    assert session.message(message).hex() == packets["MESSAGE"]["datagram"]
    for name in ("MESSAGE_ACK (QUEUED)", "MESSAGE_DELIVER"):
        assert session.receive(bytes.fromhex(packets[name]["datagram"])) is not None, (
            name
        )
    assert session.poll(1_200).hex() == packets["POLL"]["datagram"]
    polled = session.receive(bytes.fromhex(packets["POLL_RESPONSE"]["datagram"]))
    assert polled.response.entries[0].message_id == data["ids"]["polled_message_id"]
    acked = [
        (k["sender_id"], k["message_id"]) for k in packets["ACK"]["body_fields"]["keys"]
    ]
    assert session.ack(acked).hex() == packets["ACK"]["datagram"]
    delivered = session.receive(
        bytes.fromhex(packets["MESSAGE_ACK (DELIVERED)"]["datagram"])
    )
    assert delivered.status is AckStatus.DELIVERED
    for name in ("SESSION_ERROR", "DRAINING"):
        assert session.receive(bytes.fromhex(packets[name]["datagram"])) is not None, (
            name
        )
    errors = {e["answers"]: e for e in data["plain_errors"]}
    unknown = session.receive(bytes.fromhex(errors["MESSAGE"]["datagram"]))
    assert unknown.counter == packets["MESSAGE"]["counter"]
    assert session.unregister().hex() == packets["UNREGISTER"]["datagram"]
    ended = session.receive(bytes.fromhex(packets["UNREGISTERED"]["datagram"]))
    assert ended == UnregisteredReceived(0)
