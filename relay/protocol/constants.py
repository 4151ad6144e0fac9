"""Numbers fixed by protocol version 1: packet types, codes and sizes."""

from enum import IntEnum

VERSION = 1

HEADER_SIZE = 8
UUID_SIZE = 36
KEY_SIZE = 32
SIGNATURE_SIZE = 64
COOKIE_SIZE = 32
SESSION_ID_SIZE = 16
COUNTER_SIZE = 8
TAG_SIZE = 16
NONCE_SIZE = 12
ECHO_SIZE = 24
PATH_NONCE_SIZE = 8

# A client session packet: session_id | counter | ciphertext | tag.
CLIENT_SESSION_OVERHEAD = SESSION_ID_SIZE + COUNTER_SIZE + TAG_SIZE
# A relay session packet: counter | ciphertext | tag.
RELAY_SESSION_OVERHEAD = COUNTER_SIZE + TAG_SIZE

REGISTER_SIZE = UUID_SIZE + 4 * KEY_SIZE + SIGNATURE_SIZE
# REGISTER bytes up to and including the cookie: what a retried REGISTER repeats.
REGISTER_SIGNED_SIZE = REGISTER_SIZE - SIGNATURE_SIZE
ZERO_COOKIE = bytes(COOKIE_SIZE)

REGISTER_SIGNATURE_CONTEXT = b"yaok-relay/v1 register"
SESSION_KEY_INFO = b"yaok-relay/v1 session"

# The largest datagram the relay pushes unasked, and the default POLL budget.
# Many mobile networks drop IP fragments, so pushes stay within one packet.
PUSH_DATAGRAM_LIMIT = 1200
POLL_DEFAULT_BYTES = 1200
POLL_MIN_BYTES = 64

# The largest UDP payload over IPv4.
MAX_DATAGRAM = 65507

MAX_ACK_ENTRIES = 15
MAX_ERROR_TEXT = 64


class PacketType(IntEnum):
    REGISTER = 0x01
    REGISTERED = 0x02
    UNREGISTER = 0x03
    PING = 0x04
    PONG = 0x05
    CHALLENGE = 0x06
    UNREGISTERED = 0x07
    DRAINING = 0x08
    PATH_CHALLENGE = 0x09
    MESSAGE = 0x10
    MESSAGE_ACK = 0x11
    MESSAGE_DELIVER = 0x12
    ACK = 0x13
    POLL = 0x20
    POLL_RESPONSE = 0x21
    SESSION_ERROR = 0xFE
    ERROR = 0xFF


# Types a client sends on a session; the relay accepts no others after REGISTER.
CLIENT_SESSION_TYPES = frozenset(
    {
        PacketType.UNREGISTER,
        PacketType.PING,
        PacketType.MESSAGE,
        PacketType.ACK,
        PacketType.POLL,
    }
)

RELAY_ONLY_TYPES = frozenset(
    {
        PacketType.REGISTERED,
        PacketType.PONG,
        PacketType.CHALLENGE,
        PacketType.UNREGISTERED,
        PacketType.DRAINING,
        PacketType.PATH_CHALLENGE,
        PacketType.MESSAGE_ACK,
        PacketType.MESSAGE_DELIVER,
        PacketType.POLL_RESPONSE,
        PacketType.SESSION_ERROR,
        PacketType.ERROR,
    }
)


class ErrorCode(IntEnum):
    BAD_REQUEST = 0x0400
    UNKNOWN_SESSION = 0x0401
    FORBIDDEN = 0x0403
    KEY_CONFLICT = 0x0409
    UNSUPPORTED = 0x0426
    RATE_LIMITED = 0x0429
    OVERLOADED = 0x0503


class AckStatus(IntEnum):
    QUEUED = 0x00
    DELIVERED = 0x01
    EXPIRED = 0x02
    UNKNOWN_RECIPIENT = 0x10
    MAILBOX_FULL = 0x11
    TOO_LARGE = 0x12
    RATE_LIMITED = 0x13
    UNAVAILABLE = 0x14


UNREGISTER_ERASE = 0x01
