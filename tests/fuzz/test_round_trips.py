"""Round trips of every layout, of packet protection and of the replay window."""

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import codec
from relay.protocol.constants import (
    HEADER_SIZE,
    MAX_ACK_ENTRIES,
    MAX_DATAGRAM,
    MAX_ERROR_TEXT,
    AckStatus,
    PacketType,
)
from relay.protocol.cookie import CookieJar
from relay.protocol.crypto import new_aead
from relay.protocol.packets import (
    PacketRejected,
    client_packet_ids,
    open_client_packet,
    open_registered,
    open_relay_packet,
    seal_client_packet,
    seal_registered,
    seal_relay_packet,
)
from relay.protocol.replay import WINDOW_SIZE, ReplayWindow

uuids = st.uuids().map(str)
keys = st.binary(min_size=32, max_size=32)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
payloads = st.binary(max_size=300)
short_text = st.text(max_size=20).filter(
    lambda text: len(text.encode()) <= MAX_ERROR_TEXT
)
entries = st.builds(codec.Entry, uuids, uuids, u64, payloads)


@given(
    st.builds(
        codec.Register,
        uuids,
        keys,
        keys,
        keys,
        keys,
        st.binary(min_size=64, max_size=64),
    )
)
def test_register_round_trip(register):
    assert codec.decode_register(codec.encode_register(register)) == register


@given(st.builds(codec.RegisteredBody, u64, u16, u32))
def test_registered_body_round_trip(body):
    assert codec.decode_registered_body(codec.encode_registered_body(body)) == body


@given(st.builds(codec.Message, uuids, uuids, u32, payloads))
def test_message_round_trip(message):
    assert codec.decode_message(codec.encode_message(message)) == message


@given(uuids, st.sampled_from(list(AckStatus)))
def test_message_ack_round_trip(message_id, status):
    ack = codec.decode_message_ack(codec.encode_message_ack(message_id, status))
    assert ack == codec.MessageAck(message_id, status)


@given(entries)
def test_entry_round_trip(entry):
    assert codec.decode_entry(codec.encode_entry(entry)) == entry


@given(st.lists(st.tuples(uuids, uuids), min_size=1, max_size=MAX_ACK_ENTRIES))
def test_ack_round_trip(pairs):
    assert codec.decode_ack(codec.encode_ack(pairs)) == pairs


@given(u32, st.lists(entries, max_size=5))
def test_poll_response_round_trip(remaining, listed):
    body = codec.encode_poll_response(
        remaining, [codec.encode_entry(e) for e in listed]
    )
    assert codec.decode_poll_response(body) == codec.PollResponse(remaining, listed)


@given(u16, u64, u32, st.integers(0, 1))
def test_small_bodies_round_trip(max_bytes, server_time_ms, pending, flags):
    assert codec.decode_poll(codec.encode_poll(max_bytes)) == max_bytes
    pong = codec.Pong(server_time_ms, pending)
    assert codec.decode_pong(codec.encode_pong(pong)) == pong
    assert codec.decode_draining(codec.encode_draining(pending)) == pending
    assert codec.decode_unregister(codec.encode_unregister(flags)) == flags


@given(u16, short_text)
def test_session_error_round_trip(code, text):
    error = codec.decode_session_error(codec.encode_session_error(code, text))
    assert error == codec.ErrorBody(code, text)


@given(
    u16, st.binary(min_size=24, max_size=24), st.text(max_size=80), st.integers(0, 200)
)
def test_error_datagram_fits_its_limit(code, echo, text, limit):
    datagram = codec.encode_error_datagram(code, echo, text, limit)
    assert len(datagram) <= limit
    if datagram:
        error = codec.decode_error(datagram[HEADER_SIZE:])
        assert error.code == code
        assert error.echo == echo
        assert text.startswith(error.text)


@given(u16, st.binary(min_size=24, max_size=24), short_text)
def test_error_datagram_round_trip(code, echo, text):
    datagram = codec.encode_error_datagram(code, echo, text, MAX_DATAGRAM)
    assert codec.decode_error(datagram[HEADER_SIZE:]) == codec.ErrorBody(
        code, text, echo
    )


@given(
    keys,
    st.binary(min_size=16, max_size=16),
    st.integers(1, 2**64 - 1),
    payloads,
    st.sampled_from([PacketType.PING, PacketType.MESSAGE, PacketType.POLL]),
)
def test_client_packet_round_trip_and_every_bit_counts(
    key, session_id, counter, body, kind
):
    aead = new_aead(key)
    datagram = seal_client_packet(aead, kind, session_id, counter, body)
    assert client_packet_ids(datagram) == (session_id, counter)
    assert open_client_packet(aead, datagram, counter) == body
    for position in range(0, len(datagram), 7):
        flipped = bytearray(datagram)
        flipped[position] ^= 0x01
        try:
            open_client_packet(aead, bytes(flipped), counter)
        except PacketRejected:
            continue
        raise AssertionError(f"bit flip at byte {position} went unnoticed")


@given(keys, st.integers(1, 2**64 - 1), payloads)
def test_relay_packet_round_trip(key, counter, body):
    aead = new_aead(key)
    datagram = seal_relay_packet(aead, PacketType.POLL_RESPONSE, counter, body)
    assert open_relay_packet(aead, datagram) == (counter, body)
    truncated = datagram[:-1]
    try:
        open_relay_packet(aead, truncated)
    except PacketRejected:
        return
    raise AssertionError("a truncated tag went unnoticed")


@given(keys, st.binary(min_size=16, max_size=16), keys, payloads)
def test_registered_round_trip(key, session_id, re_public, body):
    aead = new_aead(key)
    datagram = seal_registered(aead, session_id, re_public, 1, body)
    assert open_registered(aead, datagram) == body


@settings(max_examples=300)
@given(st.lists(st.one_of(st.integers(0, 200), u64), max_size=80))
def test_replay_window_matches_its_definition(counters):
    """A counter passes once, if above the highest or less than 64 below it."""
    window = ReplayWindow()
    seen: set[int] = set()
    highest = 0
    for counter in counters:
        expected = (
            counter != 0
            and counter not in seen
            and (counter > highest or highest - counter < WINDOW_SIZE)
        )
        assert window.check(counter) == expected
        assert window.accept(counter) == expected
        if expected:
            seen.add(counter)
            highest = max(highest, counter)


def flip_first(raw: bytes) -> bytes:
    return bytes((raw[0] ^ 0x01,)) + raw[1:]


hosts = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))


@given(
    hosts,
    st.integers(0, 65535),
    st.binary(min_size=36, max_size=36),
    keys,
    st.integers(0, 29_999),
)
def test_cookie_binds_address_user_and_key(host, port, user_id, ce_public, age_ms):
    jar = CookieJar(b"k" * 32, 30_000)
    now = 1_800_000_000_000
    cookie = jar.mint((host, port), user_id, ce_public, now)
    assert jar.check(cookie, (host, port), user_id, ce_public, now + age_ms)
    assert not jar.check(cookie, (host, port ^ 1), user_id, ce_public, now)
    assert not jar.check(cookie, (host + "1", port), user_id, ce_public, now)
    assert not jar.check(cookie, (host, port), flip_first(user_id), ce_public, now)
    assert not jar.check(cookie, (host, port), user_id, flip_first(ce_public), now)
    assert not jar.check(cookie, (host, port), user_id, ce_public, now + 30_001)
    other_relay = CookieJar(b"j" * 32, 30_000)
    assert not other_relay.check(cookie, (host, port), user_id, ce_public, now)
