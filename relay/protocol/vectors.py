"""Deterministic test vectors of protocol v1 for client implementers.

Run `python -m relay.protocol.vectors > tests/vectors/protocol_v1.json`.
Every key is derived from a fixed label, and Ed25519 and ChaCha20-Poly1305
are deterministic, so the output is the same on every run. One session is
followed from the first REGISTER to UNREGISTERED, and each packet is given
with its key, nonce, associated data, plaintext body, ciphertext and tag.
"""

import hashlib
import json
import sys
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.protocol import codec
from relay.protocol.constants import (
    ECHO_SIZE,
    HEADER_SIZE,
    REGISTER_SIZE,
    SESSION_KEY_INFO,
    SIGNATURE_SIZE,
    TAG_SIZE,
    ZERO_COOKIE,
    AckStatus,
    ErrorCode,
    PacketType,
)
from relay.protocol.crypto import (
    derive_session_keys,
    new_aead,
    nonce_for,
    register_signed_message,
    x25519,
    x25519_public_bytes,
)
from relay.protocol.packets import (
    seal_client_packet,
    seal_registered,
    seal_relay_packet,
)

LABEL_PREFIX = b"yaok-relay/v1 test vector "

CLIENT_USER_ID = "5f0c3a8e-2b71-4d6a-9c3e-8a1f7b2d4e60"
CONTACT_USER_ID = "c2d94e17-6a58-4f03-b1e9-0d7c35a8f264"
SENT_MESSAGE_ID = "0e6b9d42-71c5-4a8f-a3d0-5c28e1f97b34"
PUSHED_MESSAGE_ID = "9a4f1c3d-8e27-4b60-95ad-e1b3706c2f58"
POLLED_MESSAGE_ID = "3d7e2a90-c4b1-4f58-8e63-a29f5d10b7c4"
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SESSION_TIMEOUT_S = 120

LAYOUTS = {
    "conventions": "Byte strings are lowercase hex, integers are big-endian, "
    "ids are 36-byte ASCII lowercase UUIDs, times are milliseconds since the "
    "Unix epoch. Private keys are the raw 32 bytes that RFC 7748 (X25519) and "
    "RFC 8032 (Ed25519 seed) define.",
    "header": "version (1) = 01 | type (1) | flags (2) = 0000 | "
    "length (4): payload bytes after the header",
    "client_session_packet": "header | session_id (16) | counter (8) | "
    "ciphertext | tag (16); associated data = header | session_id | counter; "
    "key k_c2s",
    "relay_session_packet": "header | counter (8) | ciphertext | tag (16); "
    "associated data = header | counter; key k_s2c",
    "nonce": "00000000 | counter (8)",
    "aead": "ChaCha20-Poly1305 (RFC 8439); ciphertext is as long as the body",
    "REGISTER": "header | user_id (36) | x25519_public (32) | "
    "ed25519_public (32) | ce_public (32) | cookie (32) | signature (64)",
    "register_signed_message": '"yaok-relay/v1 register" (ASCII) | '
    "relay_static_public (32) | the REGISTER datagram's first 172 bytes "
    "(header and every field before the signature)",
    "CHALLENGE": "header | cookie (32); the cookie is opaque to clients",
    "REGISTERED": "header | session_id (16) | re_public (32) | counter (8) = 1 | "
    "ciphertext | tag (16); associated data = header | session_id | "
    "re_public | counter; key k_s2c",
    "session_keys": "dh1 = X25519(ce, relay_static_public), dh2 = X25519(ce, "
    "re_public); okm = HKDF-SHA256(ikm = dh1 | dh2, salt = cookie, info = "
    '"yaok-relay/v1 session" | session_id, length 64); k_c2s = okm[0:32], '
    "k_s2c = okm[32:64]",
    "ERROR": "header | code (2) | echo (24) | text_length (1) | text (UTF-8); "
    "echo = first 24 bytes of ce_public for a REGISTER, session_id | counter "
    "for a session packet; not encrypted",
    "bodies": {
        "REGISTERED": "server_time_ms (8) | session_timeout_s (2) | pending (4)",
        "PING": "empty, or the 8-byte PATH_CHALLENGE nonce it echoes",
        "PONG": "server_time_ms (8) | pending (4)",
        "PATH_CHALLENGE": "nonce (8)",
        "MESSAGE": "message_id (36) | recipient_id (36) | ttl_s (4) | "
        "payload_len (4) | payload",
        "MESSAGE_ACK": "message_id (36) | status (1): 00 QUEUED, 01 DELIVERED, "
        "02 EXPIRED, 10 UNKNOWN_RECIPIENT, 11 MAILBOX_FULL, 12 TOO_LARGE, "
        "13 RATE_LIMITED, 14 UNAVAILABLE",
        "entry": "message_id (36) | sender_id (36) | received_at_ms (8) | "
        "payload_len (4) | payload",
        "MESSAGE_DELIVER": "one entry",
        "POLL": "max_bytes (2)",
        "POLL_RESPONSE": "remaining (4) | count (2) | entry x count",
        "ACK": "count (1), 1 to 15 | (sender_id (36) | message_id (36)) x count",
        "UNREGISTER": "flags (1): bit 0 = erase",
        "UNREGISTERED": "flags (1), as in the UNREGISTER",
        "DRAINING": "retry_after_ms (4)",
        "SESSION_ERROR": "code (2) | text_length (1) | text (UTF-8)",
    },
}


def fixed_bytes(label: str, size: int = 32) -> bytes:
    """Return the first size bytes of SHA-256("yaok-relay/v1 test vector " | label)."""
    return hashlib.sha256(LABEL_PREFIX + label.encode("ascii")).digest()[:size]


def _x25519_pair(label: str) -> tuple[X25519PrivateKey, dict[str, str]]:
    private = X25519PrivateKey.from_private_bytes(fixed_bytes(label))
    described = {
        "label": label,
        "private": private.private_bytes_raw().hex(),
        "public": x25519_public_bytes(private).hex(),
    }
    return private, described


class _Vectors:
    """Builds the vectors of one session, keeping both sides' counters."""

    def __init__(self) -> None:
        self.relay_static, relay_static = _x25519_pair("relay static x25519")
        self.client_x25519, client_x25519 = _x25519_pair("client x25519")
        self.ce, ce = _x25519_pair("client ephemeral ce")
        self.re, re = _x25519_pair("relay ephemeral re")
        seed = fixed_bytes("client ed25519 seed")
        self.signing_key = Ed25519PrivateKey.from_private_bytes(seed)
        self.cookie = fixed_bytes("cookie")
        self.session_id = fixed_bytes("session id", 16)
        self.path_nonce = fixed_bytes("path challenge nonce", 8)
        self.keys = {
            "relay_static": relay_static,
            "client_ed25519": {
                "label": "client ed25519 seed",
                "seed": seed.hex(),
                "public": self._ed25519_public.hex(),
            },
            "client_x25519": client_x25519,
            "client_ephemeral_ce": ce,
            "relay_ephemeral_re": re,
        }
        self.client_counter = 0
        # REGISTERED is the relay's packet 1.
        self.relay_counter = 1
        self.sent: dict[str, bytes] = {}

    @property
    def _ed25519_public(self) -> bytes:
        return self.signing_key.public_key().public_bytes_raw()

    # --- handshake ------------------------------------------------------------

    def _register(self, cookie: bytes, signature: bytes) -> bytes:
        payload = codec.encode_register(
            codec.Register(
                CLIENT_USER_ID,
                x25519_public_bytes(self.client_x25519),
                self._ed25519_public,
                x25519_public_bytes(self.ce),
                cookie,
                signature,
            )
        )
        return codec.pack_header(PacketType.REGISTER, REGISTER_SIZE) + payload

    def handshake(self) -> dict[str, Any]:
        first = self._register(ZERO_COOKIE, bytes(SIGNATURE_SIZE))
        self.sent["register_first"] = first
        challenge = (
            codec.pack_header(PacketType.CHALLENGE, len(self.cookie)) + self.cookie
        )
        unsigned = self._register(self.cookie, bytes(SIGNATURE_SIZE))
        signed_message = register_signed_message(
            x25519_public_bytes(self.relay_static), unsigned
        )
        signature = self.signing_key.sign(signed_message)
        signed = unsigned[:-SIGNATURE_SIZE] + signature
        self.sent["register_signed"] = signed
        return {
            "register_first": {
                "note": "cookie all zero; the signature field is ignored and zero here",
                "datagram": first.hex(),
            },
            "challenge": {"cookie": self.cookie.hex(), "datagram": challenge.hex()},
            "register_signed": {
                "signed_message": signed_message.hex(),
                "signature": signature.hex(),
                "datagram": signed.hex(),
            },
            "session_keys": self._session_keys(),
            "registered": self._registered(),
        }

    def _session_keys(self) -> dict[str, str]:
        dh1 = x25519(self.ce, x25519_public_bytes(self.relay_static))
        dh2 = x25519(self.ce, x25519_public_bytes(self.re))
        self.k_c2s, self.k_s2c = derive_session_keys(
            dh1, dh2, self.cookie, self.session_id
        )
        return {
            "dh1": dh1.hex(),
            "dh2": dh2.hex(),
            "hkdf_ikm": (dh1 + dh2).hex(),
            "hkdf_salt": self.cookie.hex(),
            "hkdf_info": (SESSION_KEY_INFO + self.session_id).hex(),
            "k_c2s": self.k_c2s.hex(),
            "k_s2c": self.k_s2c.hex(),
        }

    def _registered(self) -> dict[str, Any]:
        fields = codec.RegisteredBody(T0_MS, SESSION_TIMEOUT_S, 2)
        body = codec.encode_registered_body(fields)
        re_public = x25519_public_bytes(self.re)
        datagram = seal_registered(
            new_aead(self.k_s2c), self.session_id, re_public, 1, body
        )
        plain_end = HEADER_SIZE + len(self.session_id) + len(re_public) + 8
        return {
            "session_id": self.session_id.hex(),
            "re_public": re_public.hex(),
            "counter": 1,
            "key": "k_s2c",
            "nonce": nonce_for(1).hex(),
            "body_fields": {
                "server_time_ms": fields.server_time_ms,
                "session_timeout_s": fields.session_timeout_s,
                "pending": fields.pending,
            },
            **_sealed_parts(datagram, plain_end, body),
        }

    # --- session packets ------------------------------------------------------

    def client_packet(
        self, name: str, packet_type: PacketType, body: bytes, fields: dict[str, Any]
    ) -> dict[str, Any]:
        self.client_counter += 1
        counter = self.client_counter
        datagram = seal_client_packet(
            new_aead(self.k_c2s), packet_type, self.session_id, counter, body
        )
        self.sent[name] = datagram
        plain_end = HEADER_SIZE + len(self.session_id) + 8
        return _described(name, packet_type, "client to relay", "k_c2s", counter) | {
            "body_fields": fields,
            **_sealed_parts(datagram, plain_end, body),
        }

    def relay_packet(
        self, name: str, packet_type: PacketType, body: bytes, fields: dict[str, Any]
    ) -> dict[str, Any]:
        self.relay_counter += 1
        counter = self.relay_counter
        datagram = seal_relay_packet(new_aead(self.k_s2c), packet_type, counter, body)
        return _described(name, packet_type, "relay to client", "k_s2c", counter) | {
            "body_fields": fields,
            **_sealed_parts(datagram, HEADER_SIZE + 8, body),
        }

    def conversation(self) -> list[dict[str, Any]]:
        return [*self._keepalive(), *self._messages(), *self._ending()]

    def _keepalive(self) -> list[dict[str, Any]]:
        pong = codec.Pong(T0_MS + 1_000, 2)
        nonce = self.path_nonce
        return [
            self.client_packet("PING (empty)", PacketType.PING, b"", {}),
            self.relay_packet(
                "PONG",
                PacketType.PONG,
                codec.encode_pong(pong),
                {"server_time_ms": pong.server_time_ms, "pending": pong.pending},
            ),
            self.relay_packet(
                "PATH_CHALLENGE",
                PacketType.PATH_CHALLENGE,
                nonce,
                {"nonce": nonce.hex()},
            ),
            self.client_packet(
                "PING (echo)", PacketType.PING, nonce, {"echo": nonce.hex()}
            ),
        ]

    def _messages(self) -> list[dict[str, Any]]:
        message = codec.Message(
            SENT_MESSAGE_ID, CONTACT_USER_ID, 3_600, b"opaque payload 1"
        )
        pushed = codec.Entry(
            PUSHED_MESSAGE_ID, CONTACT_USER_ID, T0_MS + 5_000, b"pushed"
        )
        polled = codec.Entry(
            POLLED_MESSAGE_ID, CONTACT_USER_ID, T0_MS + 6_000, b"polled"
        )
        acked = [
            (CONTACT_USER_ID, PUSHED_MESSAGE_ID),
            (CONTACT_USER_ID, POLLED_MESSAGE_ID),
        ]
        return [
            self.client_packet(
                "MESSAGE",
                PacketType.MESSAGE,
                codec.encode_message(message),
                _message(message),
            ),
            self._message_ack("MESSAGE_ACK (QUEUED)", AckStatus.QUEUED),
            self.relay_packet(
                "MESSAGE_DELIVER",
                PacketType.MESSAGE_DELIVER,
                codec.encode_entry(pushed),
                _entry(pushed),
            ),
            self.client_packet(
                "POLL", PacketType.POLL, codec.encode_poll(1_200), {"max_bytes": 1_200}
            ),
            self.relay_packet(
                "POLL_RESPONSE",
                PacketType.POLL_RESPONSE,
                codec.encode_poll_response(0, [codec.encode_entry(polled)]),
                {"remaining": 0, "count": 1, "entries": [_entry(polled)]},
            ),
            self.client_packet(
                "ACK",
                PacketType.ACK,
                codec.encode_ack(acked),
                {
                    "count": 2,
                    "keys": [{"sender_id": s, "message_id": m} for s, m in acked],
                },
            ),
            self._message_ack("MESSAGE_ACK (DELIVERED)", AckStatus.DELIVERED),
        ]

    def _message_ack(self, name: str, status: AckStatus) -> dict[str, Any]:
        return self.relay_packet(
            name,
            PacketType.MESSAGE_ACK,
            codec.encode_message_ack(SENT_MESSAGE_ID, status),
            {"message_id": SENT_MESSAGE_ID, "status": f"{status:#04x} {status.name}"},
        )

    def _ending(self) -> list[dict[str, Any]]:
        text = "malformed body"
        return [
            self.relay_packet(
                "SESSION_ERROR",
                PacketType.SESSION_ERROR,
                codec.encode_session_error(ErrorCode.BAD_REQUEST, text),
                {"code": "0x0400 BAD_REQUEST", "text": text},
            ),
            self.relay_packet(
                "DRAINING",
                PacketType.DRAINING,
                codec.encode_draining(2_000),
                {"retry_after_ms": 2_000},
            ),
            self.client_packet(
                "UNREGISTER",
                PacketType.UNREGISTER,
                codec.encode_unregister(0),
                {"flags": 0},
            ),
            self.relay_packet(
                "UNREGISTERED",
                PacketType.UNREGISTERED,
                codec.encode_unregister(0),
                {"flags": 0},
            ),
        ]

    # --- plain errors ---------------------------------------------------------

    def plain_errors(self) -> list[dict[str, Any]]:
        register = self.sent["register_first"]
        register_echo = codec.register_echo(register)
        message = self.sent["MESSAGE"]
        session_echo = message[HEADER_SIZE : HEADER_SIZE + len(self.session_id) + 8]
        return [
            _plain_error(
                "ERROR for a REGISTER",
                "register_first",
                ErrorCode.OVERLOADED,
                register_echo,
                "overloaded",
                "first 24 bytes of the REGISTER's ce_public",
                len(register),
            ),
            _plain_error(
                "ERROR for a session packet",
                "MESSAGE",
                ErrorCode.UNKNOWN_SESSION,
                session_echo,
                "unknown session",
                "session_id | counter of the MESSAGE above",
                len(message),
            ),
        ]


def _described(
    name: str, packet_type: PacketType, direction: str, key_name: str, counter: int
) -> dict[str, Any]:
    return {
        "name": name,
        "type": f"{packet_type:#04x} {packet_type.name}",
        "direction": direction,
        "key": key_name,
        "counter": counter,
        "nonce": nonce_for(counter).hex(),
    }


def _sealed_parts(datagram: bytes, plain_end: int, body: bytes) -> dict[str, str]:
    return {
        "associated_data": datagram[:plain_end].hex(),
        "body": body.hex(),
        "ciphertext": datagram[plain_end:-TAG_SIZE].hex(),
        "tag": datagram[-TAG_SIZE:].hex(),
        "datagram": datagram.hex(),
    }


def _message(message: codec.Message) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "recipient_id": message.recipient_id,
        "ttl_s": message.ttl_s,
        "payload": message.payload.hex(),
    }


def _entry(entry: codec.Entry) -> dict[str, Any]:
    return {
        "message_id": entry.message_id,
        "sender_id": entry.sender_id,
        "received_at_ms": entry.received_at_ms,
        "payload": entry.payload.hex(),
    }


def _plain_error(
    name: str,
    answers: str,
    code: ErrorCode,
    echo: bytes,
    text: str,
    echo_source: str,
    limit: int,
) -> dict[str, Any]:
    assert len(echo) == ECHO_SIZE
    datagram = codec.encode_error_datagram(code, echo, text, limit)
    return {
        "name": name,
        "answers": answers,
        "code": f"{code:#06x} {code.name}",
        "echo": echo.hex(),
        "echo_source": echo_source,
        "text": text,
        "datagram": datagram.hex(),
    }


def generate() -> dict[str, Any]:
    """Return the vectors as a JSON-ready dictionary."""
    vectors = _Vectors()
    handshake = vectors.handshake()
    packets = vectors.conversation()
    return {
        "description": "Test vectors of the yaok-relay wire protocol, version 1: "
        "one session from the first REGISTER to UNREGISTERED. Client packets "
        "count 1, 2, 3...; relay packets count from 2 because REGISTERED is "
        "the relay's packet 1.",
        "protocol_version": 1,
        "layouts": LAYOUTS,
        "keys": vectors.keys,
        "ids": {
            "client_user_id": CLIENT_USER_ID,
            "contact_user_id": CONTACT_USER_ID,
            "sent_message_id": SENT_MESSAGE_ID,
            "pushed_message_id": PUSHED_MESSAGE_ID,
            "polled_message_id": POLLED_MESSAGE_ID,
            "session_id": vectors.session_id.hex(),
        },
        "times": {"t0_ms": T0_MS, "t0_utc": "2026-01-01T00:00:00Z"},
        "handshake": handshake,
        "session_packets": packets,
        "plain_errors": vectors.plain_errors(),
    }


def render() -> str:
    """Return the vectors file's exact text."""
    return json.dumps(generate(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
