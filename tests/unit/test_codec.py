"""Round trips and rejections of every packet layout."""

import uuid

import pytest

from relay.protocol import codec
from relay.protocol.codec import DecodeError
from relay.protocol.constants import REGISTER_SIZE, AckStatus

USER = "6f1c2a4e-8d3b-4c5a-9e7f-0123456789ab"
OTHER = "00000000-1111-4222-8333-444444444444"


def test_header_round_trip():
    header = codec.pack_header(0x10, 300)
    assert codec.unpack_header(header + bytes(300)) == (1, 0x10, 0, 300)


def test_header_too_short():
    with pytest.raises(DecodeError):
        codec.unpack_header(b"\x01\x04\x00\x00\x00\x00\x00")


@pytest.mark.parametrize(
    "raw",
    [
        USER.upper(),
        USER.replace("-", "_"),
        USER[:-1] + "g",
        "{" + USER[1:-1] + "}",
        USER[:35] + " ",
        "x" * 36,
    ],
)
def test_uuid_rejects_non_canonical(raw):
    with pytest.raises(DecodeError):
        codec.decode_uuid(raw.encode())


def test_uuid_accepts_random_uuid4():
    value = str(uuid.uuid4())
    assert codec.decode_uuid(value.encode()) == value


def make_register(**changes):
    fields = dict(
        user_id=USER,
        x25519_public=bytes(range(32)),
        ed25519_public=bytes(range(32, 64)),
        ce_public=bytes(range(64, 96)),
        cookie=bytes(32),
        signature=bytes(range(64)),
    )
    fields.update(changes)
    return codec.Register(**fields)


def test_register_round_trip():
    register = make_register()
    payload = codec.encode_register(register)
    assert len(payload) == REGISTER_SIZE
    assert codec.decode_register(payload) == register


@pytest.mark.parametrize("size", [0, 227, 229, 300])
def test_register_wrong_size(size):
    with pytest.raises(DecodeError):
        codec.decode_register(bytes(size))


def test_register_bad_user_id():
    payload = bytearray(codec.encode_register(make_register()))
    payload[0:1] = b"G"
    with pytest.raises(DecodeError):
        codec.decode_register(bytes(payload))


def test_register_echo_zero_fills_short_datagram():
    assert codec.register_echo(bytes(20)) == bytes(24)
    datagram = bytes(codec.REGISTER_ECHO_OFFSET) + bytes(range(1, 11))
    assert codec.register_echo(datagram) == bytes(range(1, 11)) + bytes(14)


def test_message_round_trip():
    message = codec.Message(USER, OTHER, 3600, b"ciphertext")
    assert codec.decode_message(codec.encode_message(message)) == message


def test_message_empty_payload_round_trip():
    message = codec.Message(USER, OTHER, 0, b"")
    assert codec.decode_message(codec.encode_message(message)) == message


@pytest.mark.parametrize("delta", [-1, 1])
def test_message_length_mismatch(delta):
    body = codec.encode_message(codec.Message(USER, OTHER, 0, b"abc"))
    body = body[:-1] if delta < 0 else body + b"x"
    with pytest.raises(DecodeError):
        codec.decode_message(body)


def test_message_shorter_than_fixed_fields():
    with pytest.raises(DecodeError):
        codec.decode_message(bytes(79))


def test_message_ack_round_trip():
    body = codec.encode_message_ack(USER, AckStatus.MAILBOX_FULL)
    assert codec.decode_message_ack(body) == codec.MessageAck(
        USER, AckStatus.MAILBOX_FULL
    )


def test_message_ack_unknown_status():
    with pytest.raises(DecodeError):
        codec.decode_message_ack(USER.encode() + b"\x7f")


def test_ack_round_trip():
    keys = [(USER, OTHER), (OTHER, USER)]
    assert codec.decode_ack(codec.encode_ack(keys)) == keys


@pytest.mark.parametrize("count", [0, 16, 255])
def test_ack_count_out_of_range(count):
    body = bytes([count]) + (USER + OTHER).encode() * max(count, 1)
    with pytest.raises(DecodeError):
        codec.decode_ack(body)


def test_ack_count_disagrees_with_size():
    body = bytes([2]) + (USER + OTHER).encode()
    with pytest.raises(DecodeError):
        codec.decode_ack(body)


def test_ack_empty():
    with pytest.raises(DecodeError):
        codec.decode_ack(b"")


def test_entry_and_poll_response_round_trip():
    entries = [
        codec.Entry(USER, OTHER, 1_700_000_000_000, b"one"),
        codec.Entry(OTHER, USER, 1_700_000_000_001, b""),
    ]
    body = codec.encode_poll_response(7, [codec.encode_entry(e) for e in entries])
    assert codec.decode_poll_response(body) == codec.PollResponse(7, entries)
    assert codec.decode_entry(codec.encode_entry(entries[0])) == entries[0]


def test_poll_response_trailing_bytes():
    body = codec.encode_poll_response(0, []) + b"\0"
    with pytest.raises(DecodeError):
        codec.decode_poll_response(body)


def test_poll_response_entry_overruns():
    entry = codec.encode_entry(codec.Entry(USER, OTHER, 1, b"abc"))
    with pytest.raises(DecodeError):
        codec.decode_poll_response(codec.encode_poll_response(0, [entry[:-1]]))


def test_entry_size_matches_encoding():
    entry = codec.Entry(USER, OTHER, 1, b"x" * 50)
    assert len(codec.encode_entry(entry)) == codec.entry_size(50)


def test_poll_round_trip():
    assert codec.decode_poll(codec.encode_poll(1200)) == 1200


@pytest.mark.parametrize("body", [b"", b"\0", b"\0\0\0"])
def test_poll_wrong_size(body):
    with pytest.raises(DecodeError):
        codec.decode_poll(body)


@pytest.mark.parametrize("flags", [0, 1])
def test_unregister_flags(flags):
    assert codec.decode_unregister(codec.encode_unregister(flags)) == flags


@pytest.mark.parametrize("body", [b"\x02", b"\x81", b"", b"\0\0"])
def test_unregister_rejects(body):
    with pytest.raises(DecodeError):
        codec.decode_unregister(body)


@pytest.mark.parametrize("body", [b"", bytes(8)])
def test_ping_bodies(body):
    assert codec.decode_ping(body) == body


@pytest.mark.parametrize("size", [1, 7, 9, 16])
def test_ping_rejects_other_sizes(size):
    with pytest.raises(DecodeError):
        codec.decode_ping(bytes(size))


def test_pong_and_registered_round_trip():
    pong = codec.Pong(1_700_000_000_000, 3)
    assert codec.decode_pong(codec.encode_pong(pong)) == pong
    body = codec.RegisteredBody(1_700_000_000_000, 120, 5)
    assert codec.decode_registered_body(codec.encode_registered_body(body)) == body


def test_draining_round_trip():
    assert codec.decode_draining(codec.encode_draining(2000)) == 2000


def test_session_error_round_trip():
    body = codec.encode_session_error(0x0400, "bad body")
    assert codec.decode_session_error(body) == codec.ErrorBody(0x0400, "bad body")


def test_session_error_text_capped_at_64_bytes():
    body = codec.encode_session_error(0x0400, "é" * 40)
    decoded = codec.decode_session_error(body)
    assert len(decoded.text.encode()) <= 64
    assert decoded.text == "é" * 32


def test_error_datagram_round_trip():
    datagram = codec.encode_error_datagram(
        0x0401, bytes(range(24)), "register again", 500
    )
    version, packet_type, flags, length = codec.unpack_header(datagram)
    assert (version, packet_type, flags) == (1, 0xFF, 0)
    assert length == len(datagram) - 8
    error = codec.decode_error(datagram[8:])
    assert error == codec.ErrorBody(0x0401, "register again", bytes(range(24)))


def test_error_datagram_text_shortened_to_limit():
    datagram = codec.encode_error_datagram(0x0401, bytes(24), "register again", 40)
    assert len(datagram) == 40
    assert codec.decode_error(datagram[8:]).text == "regis"


def test_error_datagram_empty_when_nothing_fits():
    assert codec.encode_error_datagram(0x0401, bytes(24), "x", 34) == b""
    assert len(codec.encode_error_datagram(0x0401, bytes(24), "x", 35)) == 35


def test_error_text_length_over_64_rejected():
    payload = (0x0400).to_bytes(2, "big") + bytes(24) + bytes([65]) + b"a" * 65
    with pytest.raises(DecodeError):
        codec.decode_error(payload)


def test_error_text_not_utf8_rejected():
    payload = (0x0400).to_bytes(2, "big") + bytes(24) + bytes([1]) + b"\xff"
    with pytest.raises(DecodeError):
        codec.decode_error(payload)
