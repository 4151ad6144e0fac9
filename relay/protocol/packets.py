"""Sealing and opening of session packets, for the relay and its clients alike.

A client packet's payload is `session_id | counter | ciphertext | tag`, a
relay packet's is `counter | ciphertext | tag`; both are ChaCha20-Poly1305
with the 8-byte header and the plain fields before the ciphertext as
associated data. REGISTERED also carries `session_id | re_public` in the
clear, before its counter.
"""

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from relay.protocol.codec import pack_header
from relay.protocol.constants import (
    CLIENT_SESSION_OVERHEAD,
    COUNTER_SIZE,
    HEADER_SIZE,
    KEY_SIZE,
    RELAY_SESSION_OVERHEAD,
    SESSION_ID_SIZE,
    TAG_SIZE,
    PacketType,
)
from relay.protocol.crypto import nonce_for

_COUNTER = struct.Struct(">Q")
_CLIENT_PLAIN_END = HEADER_SIZE + SESSION_ID_SIZE + COUNTER_SIZE
_RELAY_PLAIN_END = HEADER_SIZE + COUNTER_SIZE
_REGISTERED_PLAIN_END = HEADER_SIZE + SESSION_ID_SIZE + KEY_SIZE + COUNTER_SIZE


class PacketRejected(ValueError):
    """A session packet whose tag does not verify."""


def seal_client_packet(
    aead: ChaCha20Poly1305,
    packet_type: int,
    session_id: bytes,
    counter: int,
    body: bytes,
) -> bytes:
    counter_bytes = _COUNTER.pack(counter)
    length = CLIENT_SESSION_OVERHEAD + len(body)
    associated = pack_header(packet_type, length) + session_id + counter_bytes
    return associated + aead.encrypt(nonce_for(counter), body, associated)


def client_packet_ids(datagram: bytes) -> tuple[bytes, int]:
    """Return (session_id, counter) of a client session datagram, unchecked."""
    session_id = datagram[HEADER_SIZE : HEADER_SIZE + SESSION_ID_SIZE]
    counter = _COUNTER.unpack_from(datagram, HEADER_SIZE + SESSION_ID_SIZE)[0]
    return session_id, counter


def open_client_packet(aead: ChaCha20Poly1305, datagram: bytes, counter: int) -> bytes:
    """Return the body of a client session datagram or raise PacketRejected."""
    try:
        return aead.decrypt(
            nonce_for(counter),
            datagram[_CLIENT_PLAIN_END:],
            datagram[:_CLIENT_PLAIN_END],
        )
    except InvalidTag:
        raise PacketRejected("session packet tag does not verify") from None


def seal_relay_packet(
    aead: ChaCha20Poly1305, packet_type: int, counter: int, body: bytes
) -> bytes:
    length = RELAY_SESSION_OVERHEAD + len(body)
    associated = pack_header(packet_type, length) + _COUNTER.pack(counter)
    return associated + aead.encrypt(nonce_for(counter), body, associated)


def relay_packet_size(body_length: int) -> int:
    """Return the datagram size of a relay session packet with this body."""
    return HEADER_SIZE + RELAY_SESSION_OVERHEAD + body_length


def client_packet_size(body_length: int) -> int:
    return HEADER_SIZE + CLIENT_SESSION_OVERHEAD + body_length


def open_relay_packet(aead: ChaCha20Poly1305, datagram: bytes) -> tuple[int, bytes]:
    """Return (counter, body) of a relay session datagram or raise PacketRejected."""
    if len(datagram) < _RELAY_PLAIN_END + TAG_SIZE:
        raise PacketRejected("relay session packet too short")
    counter = _COUNTER.unpack_from(datagram, HEADER_SIZE)[0]
    try:
        body = aead.decrypt(
            nonce_for(counter),
            datagram[_RELAY_PLAIN_END:],
            datagram[:_RELAY_PLAIN_END],
        )
    except InvalidTag:
        raise PacketRejected("session packet tag does not verify") from None
    return counter, body


def seal_registered(
    aead: ChaCha20Poly1305,
    session_id: bytes,
    re_public: bytes,
    counter: int,
    body: bytes,
) -> bytes:
    length = SESSION_ID_SIZE + KEY_SIZE + RELAY_SESSION_OVERHEAD + len(body)
    associated = (
        pack_header(PacketType.REGISTERED, length)
        + session_id
        + re_public
        + _COUNTER.pack(counter)
    )
    return associated + aead.encrypt(nonce_for(counter), body, associated)


def registered_plain_fields(datagram: bytes) -> tuple[bytes, bytes, int]:
    """Return (session_id, re_public, counter) of a REGISTERED datagram."""
    if len(datagram) < _REGISTERED_PLAIN_END + TAG_SIZE:
        raise PacketRejected("REGISTERED datagram too short")
    session_id = datagram[HEADER_SIZE : HEADER_SIZE + SESSION_ID_SIZE]
    re_public = datagram[HEADER_SIZE + SESSION_ID_SIZE : _REGISTERED_PLAIN_END - 8]
    counter = _COUNTER.unpack_from(datagram, _REGISTERED_PLAIN_END - COUNTER_SIZE)[0]
    return session_id, re_public, counter


def open_registered(aead: ChaCha20Poly1305, datagram: bytes) -> bytes:
    """Return the body of a REGISTERED datagram or raise PacketRejected."""
    _, _, counter = registered_plain_fields(datagram)
    try:
        return aead.decrypt(
            nonce_for(counter),
            datagram[_REGISTERED_PLAIN_END:],
            datagram[:_REGISTERED_PLAIN_END],
        )
    except InvalidTag:
        raise PacketRejected("REGISTERED tag does not verify") from None
