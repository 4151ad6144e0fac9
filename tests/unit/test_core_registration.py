"""REGISTER on the socket-free core: cookie, signature, binding, limits."""

import sqlite3

from relay.client.events import ErrorReceived, SessionEstablished
from relay.client.identity import Identity
from relay.protocol.codec import decode_error
from relay.protocol.constants import HEADER_SIZE, ErrorCode, PacketType


def users_in(relay) -> int:
    with sqlite3.connect(relay.settings.database_path) as connection:
        return connection.execute("SELECT count(*) FROM users").fetchone()[0]


async def test_register_opens_session(relay):
    phone = relay.phone()
    established = await phone.register()
    assert established.session_timeout_s == 120
    assert established.pending == 0
    assert len(relay.core.sessions) == 1
    assert relay.core.stats.registrations == 1


async def test_first_register_stores_nothing(relay):
    phone = relay.phone()
    phone.send(phone.session.start_register())
    (challenge,) = phone.inbox()
    assert challenge[1] == PacketType.CHALLENGE
    assert len(challenge) == HEADER_SIZE + 32
    await relay.settle()
    assert users_in(relay) == 0
    assert relay.core.stats.invalid_signatures == 0


async def test_cookie_from_other_address_forbidden(relay):
    phone = relay.phone()
    phone.send(phone.session.start_register())
    (challenge,) = phone.events()
    thief = relay.phone()
    thief.send(challenge.register)
    await relay.settle()
    (reply,) = thief.inbox()
    assert decode_error(reply[HEADER_SIZE:]).code == ErrorCode.FORBIDDEN
    assert len(relay.core.sessions) == 0


async def test_expired_cookie_forbidden(relay):
    phone = relay.phone()
    phone.send(phone.session.start_register())
    (challenge,) = phone.events()
    relay.clock.advance(31)
    (error,) = await phone.exchange(challenge.register)
    assert isinstance(error, ErrorReceived)
    assert error.code == ErrorCode.FORBIDDEN


async def test_bad_signature_forbidden_and_counted(relay):
    phone = relay.phone()
    phone.send(phone.session.start_register())
    (challenge,) = phone.events()
    forged = challenge.register[:-1] + bytes([challenge.register[-1] ^ 1])
    (error,) = await phone.exchange(forged)
    assert error.code == ErrorCode.FORBIDDEN
    assert relay.core.stats.invalid_signatures == 1
    assert users_in(relay) == 0


async def test_lost_registered_repeated_byte_for_byte(relay):
    phone = relay.phone()
    phone.send(phone.session.start_register())
    (challenge,) = phone.events()
    phone.send(challenge.register)
    await relay.settle()
    (first,) = phone.inbox()
    phone.send(challenge.register)
    await relay.settle()
    (second,) = phone.inbox()
    assert first == second
    assert first[1] == PacketType.REGISTERED
    assert relay.core.stats.registrations == 1


async def test_repeated_register_not_rate_limited(make_relay):
    relay = await make_relay(rate_register_per_ip=1)
    phone = relay.phone()
    phone.send(phone.session.start_register())
    (challenge,) = phone.events()
    for _ in range(3):
        phone.send(challenge.register)
        await relay.settle()
        (reply,) = phone.inbox()
        assert reply[1] == PacketType.REGISTERED


async def test_cookie_reuse_with_other_keys_forbidden(relay):
    phone = relay.phone()
    await phone.register()
    # Same identity and address, same cookie, different ephemeral key.
    cookie_reuse = phone.session
    cookie_reuse.start_register()
    original = relay.core.ledger._uses
    (cookie,) = list(original)
    handshake = cookie_reuse._handshake
    handshake.cookie = cookie
    datagram = cookie_reuse._register_datagram(handshake.ce_public, cookie)
    (error,) = await phone.exchange(datagram)
    assert error.code == ErrorCode.FORBIDDEN


async def test_key_conflict(relay):
    first = relay.phone()
    await first.register()
    impostor_identity = Identity.generate()
    impostor_identity = Identity(
        first.user_id, impostor_identity.signing_key, impostor_identity.x25519_key
    )
    impostor = relay.phone(identity=impostor_identity)
    impostor.send(impostor.session.start_register())
    (challenge,) = impostor.events()
    (error,) = await impostor.exchange(challenge.register)
    assert error.code == ErrorCode.KEY_CONFLICT
    assert relay.core.sessions.of_user(first.user_id, relay.clock()) is not None


async def test_register_rate_limited_per_address(make_relay):
    relay = await make_relay(rate_register_per_ip=2)
    codes = []
    for _ in range(3):
        phone = relay.phone()
        phone.send(phone.session.start_register())
        (challenge,) = phone.events()
        events = await phone.exchange(challenge.register)
        codes.append(events[0])
    assert isinstance(codes[0], SessionEstablished)
    assert isinstance(codes[1], SessionEstablished)
    assert codes[2].code == ErrorCode.RATE_LIMITED
    assert codes[2].text.startswith("retry_after_ms=")
    assert int(codes[2].text.split("=")[1]) > 0


async def test_session_limit_overloaded_but_own_replacement_allowed(make_relay):
    relay = await make_relay(max_connections=2)
    first, second = relay.phone(), relay.phone()
    await first.register()
    await second.register()
    third = relay.phone()
    third.send(third.session.start_register())
    (error,) = third.events()
    assert error.code == ErrorCode.OVERLOADED
    replacement = await first.register()
    assert isinstance(replacement, SessionEstablished)
    assert len(relay.core.sessions) == 2


async def test_full_relay_admits_timed_out_user(make_relay):
    relay = await make_relay(max_connections=1, session_timeout_s=30)
    phone = relay.phone()
    await phone.register()
    relay.clock.advance(31)  # timed out, and no sweep has run yet
    again = await phone.register()
    assert isinstance(again, SessionEstablished)
    assert len(relay.core.sessions) == 1


async def test_new_register_replaces_old_session(relay):
    phone = relay.phone()
    await phone.register()
    old_id = phone.session.session_id
    await phone.register()
    assert phone.session.session_id != old_id
    assert old_id not in relay.core.sessions.by_id
    assert len(relay.core.sessions) == 1


async def test_malformed_register_bad_request(relay):
    phone = relay.phone()
    datagram = phone.session.start_register()
    truncated = datagram[:-10]
    truncated = truncated[:4] + (len(truncated) - 8).to_bytes(4, "big") + truncated[8:]
    phone.send(truncated)
    (reply,) = phone.inbox()
    error = decode_error(reply[HEADER_SIZE:])
    assert error.code == ErrorCode.BAD_REQUEST
    assert len(reply) <= len(truncated)
    assert error.echo == datagram[HEADER_SIZE + 100 : HEADER_SIZE + 124]


async def test_low_order_x25519_forbidden(relay):
    identity = Identity.generate()
    phone = relay.phone(identity=identity)
    phone.send(phone.session.start_register())
    (challenge,) = phone.events()
    low_order = bytes(32)
    datagram = bytearray(challenge.register)
    datagram[HEADER_SIZE + 36 : HEADER_SIZE + 68] = low_order
    (error,) = await phone.exchange(bytes(datagram))
    # The signature no longer matches either, so FORBIDDEN is certain.
    assert error.code == ErrorCode.FORBIDDEN
