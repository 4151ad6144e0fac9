"""Byte layout of protocol v1: the 8-byte header and every packet body.

Decoders accept exactly one layout and raise DecodeError for anything
else, trailing bytes included. Encoders assume valid values and are used by
the relay, the reference client and the test vectors alike.
"""

import re
import struct
from dataclasses import dataclass

from relay.protocol.constants import (
    COOKIE_SIZE,
    ECHO_SIZE,
    HEADER_SIZE,
    KEY_SIZE,
    MAX_ACK_ENTRIES,
    MAX_ERROR_TEXT,
    PATH_NONCE_SIZE,
    REGISTER_SIZE,
    UUID_SIZE,
    VERSION,
    AckStatus,
)

HEADER = struct.Struct(">BBHI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_MESSAGE_FIXED = struct.Struct(">36s36sII")
_ENTRY_FIXED = struct.Struct(">36s36sQI")
_PONG = struct.Struct(">QI")
_REGISTERED_BODY = struct.Struct(">QHI")
_POLL_RESPONSE_FIXED = struct.Struct(">IH")
_ERROR_FIXED = struct.Struct(">H24sB")
_SESSION_ERROR_FIXED = struct.Struct(">HB")

ENTRY_OVERHEAD = _ENTRY_FIXED.size
MESSAGE_OVERHEAD = _MESSAGE_FIXED.size
POLL_RESPONSE_OVERHEAD = _POLL_RESPONSE_FIXED.size
ERROR_OVERHEAD = _ERROR_FIXED.size
SESSION_ERROR_OVERHEAD = _SESSION_ERROR_FIXED.size
ACK_KEY_SIZE = 2 * UUID_SIZE

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


class DecodeError(ValueError):
    """A packet or body that does not match its layout exactly."""


def pack_header(packet_type: int, payload_length: int) -> bytes:
    return HEADER.pack(VERSION, packet_type, 0, payload_length)


def unpack_header(datagram: bytes) -> tuple[int, int, int, int]:
    """Return (version, type, flags, length); the caller judges each field."""
    if len(datagram) < HEADER_SIZE:
        raise DecodeError("datagram shorter than the header")
    return HEADER.unpack_from(datagram)


def decode_uuid(raw: bytes) -> str:
    if _UUID.match(raw) is None:
        raise DecodeError("identifier is not a canonical lowercase UUID")
    return raw.decode("ascii")


def encode_uuid(value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) != UUID_SIZE:
        raise ValueError(f"not a 36-character UUID: {value!r}")
    return raw


def _expect_size(body: bytes, size: int, what: str) -> None:
    if len(body) != size:
        raise DecodeError(f"{what} must be {size} bytes, got {len(body)}")


# --- REGISTER and CHALLENGE -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register:
    user_id: str
    x25519_public: bytes
    ed25519_public: bytes
    ce_public: bytes
    cookie: bytes
    signature: bytes


_REGISTER = struct.Struct(">36s32s32s32s32s64s")


def decode_register(payload: bytes) -> Register:
    _expect_size(payload, REGISTER_SIZE, "REGISTER payload")
    raw_id, x_pub, ed_pub, ce_pub, cookie, signature = _REGISTER.unpack(payload)
    return Register(decode_uuid(raw_id), x_pub, ed_pub, ce_pub, cookie, signature)


def encode_register(register: Register) -> bytes:
    return _REGISTER.pack(
        encode_uuid(register.user_id),
        register.x25519_public,
        register.ed25519_public,
        register.ce_public,
        register.cookie,
        register.signature,
    )


# Offset of ce_public inside a REGISTER datagram, header included; an ERROR
# answering a REGISTER echoes the 24 bytes found there.
REGISTER_ECHO_OFFSET = HEADER_SIZE + UUID_SIZE + 2 * KEY_SIZE


def register_echo(datagram: bytes) -> bytes:
    """Return the echo for an ERROR answering this REGISTER datagram."""
    echo = datagram[REGISTER_ECHO_OFFSET : REGISTER_ECHO_OFFSET + ECHO_SIZE]
    return echo.ljust(ECHO_SIZE, b"\0")


def decode_challenge(payload: bytes) -> bytes:
    _expect_size(payload, COOKIE_SIZE, "CHALLENGE payload")
    return payload


# --- REGISTERED ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisteredBody:
    server_time_ms: int
    session_timeout_s: int
    pending: int


def encode_registered_body(body: RegisteredBody) -> bytes:
    return _REGISTERED_BODY.pack(
        body.server_time_ms, body.session_timeout_s, body.pending
    )


def decode_registered_body(body: bytes) -> RegisteredBody:
    _expect_size(body, _REGISTERED_BODY.size, "REGISTERED body")
    return RegisteredBody(*_REGISTERED_BODY.unpack(body))


# --- UNREGISTER, PING, PONG, DRAINING, PATH_CHALLENGE ----------------------


def decode_unregister(body: bytes) -> int:
    """Return the flags byte of an UNREGISTER or UNREGISTERED body."""
    _expect_size(body, 1, "UNREGISTER body")
    flags = body[0]
    if flags & ~0x01:
        raise DecodeError(f"UNREGISTER flags {flags:#04x} set reserved bits")
    return flags


def encode_unregister(flags: int) -> bytes:
    return bytes((flags,))


def decode_ping(body: bytes) -> bytes:
    """Return the PATH_CHALLENGE echo a PING carries, or b"" for none."""
    if len(body) not in (0, PATH_NONCE_SIZE):
        raise DecodeError(f"PING body must be 0 or 8 bytes, got {len(body)}")
    return body


@dataclass(frozen=True, slots=True)
class Pong:
    server_time_ms: int
    pending: int


def encode_pong(pong: Pong) -> bytes:
    return _PONG.pack(pong.server_time_ms, pong.pending)


def decode_pong(body: bytes) -> Pong:
    _expect_size(body, _PONG.size, "PONG body")
    return Pong(*_PONG.unpack(body))


def encode_draining(retry_after_ms: int) -> bytes:
    return _U32.pack(retry_after_ms)


def decode_draining(body: bytes) -> int:
    _expect_size(body, 4, "DRAINING body")
    return _U32.unpack(body)[0]


def decode_path_challenge(body: bytes) -> bytes:
    _expect_size(body, PATH_NONCE_SIZE, "PATH_CHALLENGE body")
    return body


# --- MESSAGE and MESSAGE_ACK ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    recipient_id: str
    ttl_s: int
    payload: bytes


def decode_message(body: bytes) -> Message:
    return Message(*decode_message_fields(body))


def decode_message_fields(body: bytes) -> tuple[str, str, int, bytes]:
    """Return (message_id, recipient_id, ttl_s, payload) without building a Message.

    The relay decodes every MESSAGE, and a frozen dataclass costs about a
    microsecond more than the tuple.
    """
    if len(body) < MESSAGE_OVERHEAD:
        raise DecodeError("MESSAGE body shorter than its fixed fields")
    raw_id, raw_recipient, ttl_s, payload_len = _MESSAGE_FIXED.unpack_from(body)
    _expect_size(body, MESSAGE_OVERHEAD + payload_len, "MESSAGE body")
    payload = body[MESSAGE_OVERHEAD:]
    return decode_uuid(raw_id), decode_uuid(raw_recipient), ttl_s, payload


def encode_message(message: Message) -> bytes:
    fixed = _MESSAGE_FIXED.pack(
        encode_uuid(message.message_id),
        encode_uuid(message.recipient_id),
        message.ttl_s,
        len(message.payload),
    )
    return fixed + message.payload


@dataclass(frozen=True, slots=True)
class MessageAck:
    message_id: str
    status: AckStatus


def encode_message_ack(message_id: str, status: int) -> bytes:
    return encode_uuid(message_id) + bytes((status,))


def decode_message_ack(body: bytes) -> MessageAck:
    _expect_size(body, UUID_SIZE + 1, "MESSAGE_ACK body")
    try:
        status = AckStatus(body[UUID_SIZE])
    except ValueError:
        raise DecodeError(
            f"unknown MESSAGE_ACK status {body[UUID_SIZE]:#04x}"
        ) from None
    return MessageAck(decode_uuid(body[:UUID_SIZE]), status)


# --- Mailbox entries, ACK, POLL, POLL_RESPONSE -----------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    message_id: str
    sender_id: str
    received_at_ms: int
    payload: bytes


def entry_size(payload_length: int) -> int:
    return ENTRY_OVERHEAD + payload_length


def encode_entry(entry: Entry) -> bytes:
    return encode_entry_fields(
        entry.message_id, entry.sender_id, entry.received_at_ms, entry.payload
    )


def encode_entry_fields(
    message_id: str, sender_id: str, received_at_ms: int, payload: bytes
) -> bytes:
    """Encode a mailbox entry from its fields, without building an Entry."""
    fixed = _ENTRY_FIXED.pack(
        encode_uuid(message_id), encode_uuid(sender_id), received_at_ms, len(payload)
    )
    return fixed + payload


def _decode_entry_at(body: bytes, offset: int) -> tuple[Entry, int]:
    if len(body) - offset < ENTRY_OVERHEAD:
        raise DecodeError("mailbox entry shorter than its fixed fields")
    raw_id, raw_sender, received_at_ms, payload_len = _ENTRY_FIXED.unpack_from(
        body, offset
    )
    start = offset + ENTRY_OVERHEAD
    end = start + payload_len
    if end > len(body):
        raise DecodeError("mailbox entry payload runs past the body")
    entry = Entry(
        decode_uuid(raw_id), decode_uuid(raw_sender), received_at_ms, body[start:end]
    )
    return entry, end


def decode_entry(body: bytes) -> Entry:
    entry, end = _decode_entry_at(body, 0)
    if end != len(body):
        raise DecodeError("trailing bytes after the mailbox entry")
    return entry


def decode_ack(body: bytes) -> list[tuple[str, str]]:
    """Return the (sender_id, message_id) pairs an ACK names."""
    if not body:
        raise DecodeError("ACK body is empty")
    count = body[0]
    if not 1 <= count <= MAX_ACK_ENTRIES:
        raise DecodeError(f"ACK count must be 1 to {MAX_ACK_ENTRIES}, got {count}")
    _expect_size(body, 1 + count * ACK_KEY_SIZE, "ACK body")
    keys = []
    for offset in range(1, len(body), ACK_KEY_SIZE):
        sender_id = decode_uuid(body[offset : offset + UUID_SIZE])
        message_id = decode_uuid(body[offset + UUID_SIZE : offset + ACK_KEY_SIZE])
        keys.append((sender_id, message_id))
    return keys


def encode_ack(keys: list[tuple[str, str]]) -> bytes:
    if not 1 <= len(keys) <= MAX_ACK_ENTRIES:
        raise ValueError(f"an ACK names 1 to {MAX_ACK_ENTRIES} messages")
    parts = [bytes((len(keys),))]
    for sender_id, message_id in keys:
        parts.append(encode_uuid(sender_id) + encode_uuid(message_id))
    return b"".join(parts)


def decode_poll(body: bytes) -> int:
    """Return the POLL's max_bytes field as sent (0 means the default)."""
    _expect_size(body, 2, "POLL body")
    return _U16.unpack(body)[0]


def encode_poll(max_bytes: int) -> bytes:
    return _U16.pack(max_bytes)


@dataclass(frozen=True, slots=True)
class PollResponse:
    remaining: int
    entries: list[Entry]


def encode_poll_response(remaining: int, encoded_entries: list[bytes]) -> bytes:
    fixed = _POLL_RESPONSE_FIXED.pack(remaining, len(encoded_entries))
    return fixed + b"".join(encoded_entries)


def decode_poll_response(body: bytes) -> PollResponse:
    if len(body) < POLL_RESPONSE_OVERHEAD:
        raise DecodeError("POLL_RESPONSE body shorter than its fixed fields")
    remaining, count = _POLL_RESPONSE_FIXED.unpack_from(body)
    offset = POLL_RESPONSE_OVERHEAD
    entries = []
    for _ in range(count):
        entry, offset = _decode_entry_at(body, offset)
        entries.append(entry)
    if offset != len(body):
        raise DecodeError("trailing bytes after the POLL_RESPONSE entries")
    return PollResponse(remaining, entries)


# --- SESSION_ERROR and ERROR ------------------------------------------------


def _fit_text(text: str, limit: int) -> bytes:
    """Encode text as UTF-8 cut to limit bytes without splitting a character."""
    raw = text.encode("utf-8")[: max(0, min(limit, MAX_ERROR_TEXT))]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def encode_session_error(code: int, text: str) -> bytes:
    raw = _fit_text(text, MAX_ERROR_TEXT)
    return _SESSION_ERROR_FIXED.pack(code, len(raw)) + raw


@dataclass(frozen=True, slots=True)
class ErrorBody:
    code: int
    text: str
    echo: bytes = b""


def _decode_text(body: bytes, offset: int, length: int) -> str:
    if length > MAX_ERROR_TEXT:
        raise DecodeError(f"error text length {length} is over {MAX_ERROR_TEXT}")
    _expect_size(body, offset + length, "error body")
    try:
        return body[offset:].decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("error text is not UTF-8") from None


def decode_session_error(body: bytes) -> ErrorBody:
    if len(body) < SESSION_ERROR_OVERHEAD:
        raise DecodeError("SESSION_ERROR body shorter than its fixed fields")
    code, length = _SESSION_ERROR_FIXED.unpack_from(body)
    return ErrorBody(code, _decode_text(body, SESSION_ERROR_OVERHEAD, length))


def encode_error_datagram(code: int, echo: bytes, text: str, limit: int) -> bytes:
    """Build a whole plain ERROR datagram of at most limit bytes, or b"".

    The text is shortened or dropped to fit; b"" means not even the
    empty-text form fits, and the caller stays silent.
    """
    room = limit - HEADER_SIZE - ERROR_OVERHEAD
    if room < 0:
        return b""
    raw = _fit_text(text, room)
    payload = _ERROR_FIXED.pack(code, echo, len(raw)) + raw
    return pack_header(0xFF, len(payload)) + payload


def decode_error(payload: bytes) -> ErrorBody:
    if len(payload) < ERROR_OVERHEAD:
        raise DecodeError("ERROR payload shorter than its fixed fields")
    code, echo, length = _ERROR_FIXED.unpack_from(payload)
    return ErrorBody(code, _decode_text(payload, ERROR_OVERHEAD, length), echo)
