"""The protocol test vectors: the file matches the generator, and the bytes
check out against the cryptography primitives directly, without the
protocol package's own sealing code."""

import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.protocol import vectors

VECTORS_PATH = Path(__file__).parents[1] / "vectors" / "protocol_v1.json"


@pytest.fixture(scope="module")
def data() -> dict:
    return json.loads(VECTORS_PATH.read_text())


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def test_file_matches_generator():
    assert VECTORS_PATH.read_text() == vectors.render()


def test_generator_is_deterministic():
    assert vectors.render() == vectors.render()


def test_every_packet_type_present(data):
    names = {packet["name"] for packet in data["session_packets"]}
    expected = {
        "PING (empty)",
        "PING (echo)",
        "PONG",
        "MESSAGE",
        "MESSAGE_ACK (QUEUED)",
        "MESSAGE_ACK (DELIVERED)",
        "MESSAGE_DELIVER",
        "ACK",
        "POLL",
        "POLL_RESPONSE",
        "UNREGISTER",
        "UNREGISTERED",
        "DRAINING",
        "PATH_CHALLENGE",
        "SESSION_ERROR",
    }
    assert names == expected
    assert [e["answers"] for e in data["plain_errors"]] == ["register_first", "MESSAGE"]


def test_public_keys_match_private(data):
    keys = data["keys"]
    for name in (
        "relay_static",
        "client_x25519",
        "client_ephemeral_ce",
        "relay_ephemeral_re",
    ):
        private = X25519PrivateKey.from_private_bytes(h(keys[name]["private"]))
        assert private.public_key().public_bytes_raw().hex() == keys[name]["public"], (
            name
        )
    signing = Ed25519PrivateKey.from_private_bytes(h(keys["client_ed25519"]["seed"]))
    assert (
        signing.public_key().public_bytes_raw().hex()
        == keys["client_ed25519"]["public"]
    )


def test_register_datagrams_carry_the_keys(data):
    keys, handshake = data["keys"], data["handshake"]
    first = h(handshake["register_first"]["datagram"])
    signed = h(handshake["register_signed"]["datagram"])
    assert first[:8] == bytes.fromhex("01010000000000e4")  # REGISTER, 228 bytes
    assert first[8:44] == data["ids"]["client_user_id"].encode("ascii")
    assert first[44:76] == h(keys["client_x25519"]["public"])
    assert first[76:108] == h(keys["client_ed25519"]["public"])
    assert first[108:140] == h(keys["client_ephemeral_ce"]["public"])
    assert first[140:172] == bytes(32)
    assert first[172:] == bytes(64)
    assert signed[:140] == first[:140]
    assert signed[140:172] == h(handshake["challenge"]["cookie"])
    assert signed[172:] == h(handshake["register_signed"]["signature"])


def test_challenge_datagram(data):
    challenge = data["handshake"]["challenge"]
    assert h(challenge["datagram"]) == bytes.fromhex("0106000000000020") + h(
        challenge["cookie"]
    )


def test_signature_verifies_with_ed25519(data):
    handshake = data["handshake"]
    signed = h(handshake["register_signed"]["datagram"])
    relay_public = h(data["keys"]["relay_static"]["public"])
    message = b"yaok-relay/v1 register" + relay_public + signed[:172]
    assert message == h(handshake["register_signed"]["signed_message"])
    public = Ed25519PublicKey.from_public_bytes(
        h(data["keys"]["client_ed25519"]["public"])
    )
    public.verify(h(handshake["register_signed"]["signature"]), message)


def test_signature_is_deterministic(data):
    seed = h(data["keys"]["client_ed25519"]["seed"])
    message = h(data["handshake"]["register_signed"]["signed_message"])
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(message)
    assert signature.hex() == data["handshake"]["register_signed"]["signature"]


def test_session_keys_from_primitives(data):
    keys, derived = data["keys"], data["handshake"]["session_keys"]
    ce = X25519PrivateKey.from_private_bytes(h(keys["client_ephemeral_ce"]["private"]))
    relay_static = X25519PublicKey.from_public_bytes(h(keys["relay_static"]["public"]))
    relay_ephemeral = X25519PublicKey.from_public_bytes(
        h(keys["relay_ephemeral_re"]["public"])
    )
    dh1 = ce.exchange(relay_static)
    dh2 = ce.exchange(relay_ephemeral)
    assert dh1.hex() == derived["dh1"]
    assert dh2.hex() == derived["dh2"]
    session_id = h(data["ids"]["session_id"])
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=h(data["handshake"]["challenge"]["cookie"]),
        info=b"yaok-relay/v1 session" + session_id,
    ).derive(dh1 + dh2)
    assert okm[:32].hex() == derived["k_c2s"]
    assert okm[32:].hex() == derived["k_s2c"]


def test_relay_side_agrees_on_dh(data):
    keys, derived = data["keys"], data["handshake"]["session_keys"]
    ce_public = X25519PublicKey.from_public_bytes(
        h(keys["client_ephemeral_ce"]["public"])
    )
    relay_static = X25519PrivateKey.from_private_bytes(
        h(keys["relay_static"]["private"])
    )
    relay_ephemeral = X25519PrivateKey.from_private_bytes(
        h(keys["relay_ephemeral_re"]["private"])
    )
    assert relay_static.exchange(ce_public).hex() == derived["dh1"]
    assert relay_ephemeral.exchange(ce_public).hex() == derived["dh2"]


def test_registered_opens(data):
    registered = data["handshake"]["registered"]
    datagram = h(registered["datagram"])
    key = h(data["handshake"]["session_keys"]["k_s2c"])
    associated = h(registered["associated_data"])
    assert associated == datagram[:64]
    assert associated[8:24] == h(data["ids"]["session_id"])
    assert associated[24:56] == h(data["keys"]["relay_ephemeral_re"]["public"])
    assert associated[56:64] == (1).to_bytes(8, "big")
    body = ChaCha20Poly1305(key).decrypt(
        h(registered["nonce"]),
        h(registered["ciphertext"]) + h(registered["tag"]),
        associated,
    )
    assert body == h(registered["body"])
    fields = registered["body_fields"]
    expected = struct.pack(
        ">QHI", fields["server_time_ms"], fields["session_timeout_s"], fields["pending"]
    )
    assert body == expected


@pytest.mark.parametrize("index", range(15))
def test_session_packet_opens(data, index):
    packet = data["session_packets"][index]
    datagram = h(packet["datagram"])
    key = h(data["handshake"]["session_keys"][packet["key"]])
    nonce = h(packet["nonce"])
    associated = h(packet["associated_data"])
    assert nonce == bytes(4) + packet["counter"].to_bytes(8, "big")
    assert datagram == associated + h(packet["ciphertext"]) + h(packet["tag"])
    assert int.from_bytes(datagram[4:8], "big") == len(datagram) - 8
    assert datagram[1] == int(packet["type"].split()[0], 16)
    assert associated[-8:] == packet["counter"].to_bytes(8, "big")
    if packet["direction"] == "client to relay":
        assert associated[8:24] == h(data["ids"]["session_id"])
    plaintext = ChaCha20Poly1305(key).decrypt(
        nonce, h(packet["ciphertext"]) + h(packet["tag"]), associated
    )
    assert plaintext == h(packet["body"])


def test_counters_count_up_per_direction(data):
    client = [p["counter"] for p in data["session_packets"] if p["key"] == "k_c2s"]
    relay = [p["counter"] for p in data["session_packets"] if p["key"] == "k_s2c"]
    assert client == list(range(1, len(client) + 1))
    assert relay == list(range(2, len(relay) + 2))


def test_message_body_layout(data):
    packet = next(p for p in data["session_packets"] if p["name"] == "MESSAGE")
    body, fields = h(packet["body"]), packet["body_fields"]
    payload = h(fields["payload"])
    expected = (
        fields["message_id"].encode()
        + fields["recipient_id"].encode()
        + struct.pack(">II", fields["ttl_s"], len(payload))
        + payload
    )
    assert body == expected


def test_plain_errors_echo(data):
    by_name = {e["answers"]: e for e in data["plain_errors"]}
    ce_public = h(data["keys"]["client_ephemeral_ce"]["public"])
    register_error = h(by_name["register_first"]["datagram"])
    assert register_error[1] == 0xFF
    assert register_error[8:10] == (0x0503).to_bytes(2, "big")
    assert register_error[10:34] == ce_public[:24]
    message = h(
        next(p for p in data["session_packets"] if p["name"] == "MESSAGE")["datagram"]
    )
    session_error = h(by_name["MESSAGE"]["datagram"])
    assert session_error[8:10] == (0x0401).to_bytes(2, "big")
    assert session_error[10:34] == message[8:32]
    text = by_name["MESSAGE"]["text"].encode()
    assert session_error[34] == len(text)
    assert session_error[35:] == text
