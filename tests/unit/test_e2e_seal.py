"""The reference client's demo end-to-end seal."""

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.client.e2e import SEAL_INFO, SealError, open_sealed, seal


@pytest.fixture
def recipient() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def test_seal_round_trip(recipient):
    sealed = seal(public(recipient), b"hello, Ya OK")
    assert open_sealed(recipient, sealed) == b"hello, Ya OK"


def test_empty_text_round_trip(recipient):
    assert open_sealed(recipient, seal(public(recipient), b"")) == b""


def test_sealed_layout(recipient):
    ephemeral = X25519PrivateKey.generate()
    sealed = seal(public(recipient), b"abc", ephemeral)
    assert len(sealed) == 32 + 3 + 16
    assert sealed[:32] == public(ephemeral)


def test_seal_matches_primitives(recipient):
    ephemeral = X25519PrivateKey.generate()
    sealed = seal(public(recipient), b"text", ephemeral)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public(recipient)))
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=public(ephemeral) + public(recipient),
        info=SEAL_INFO,
    ).derive(shared)
    assert ChaCha20Poly1305(key).decrypt(bytes(12), sealed[32:], None) == b"text"


def test_each_seal_uses_new_ephemeral(recipient):
    first = seal(public(recipient), b"same")
    second = seal(public(recipient), b"same")
    assert first[:32] != second[:32]
    assert first != second


def test_wrong_key_does_not_open(recipient):
    sealed = seal(public(recipient), b"secret")
    with pytest.raises(SealError, match="does not open"):
        open_sealed(X25519PrivateKey.generate(), sealed)


@pytest.mark.parametrize("index", [0, 31, 32, -1])
def test_tampered_seal_does_not_open(recipient, index):
    sealed = bytearray(seal(public(recipient), b"secret"))
    sealed[index] ^= 0x01
    with pytest.raises(SealError):
        open_sealed(recipient, bytes(sealed))


def test_short_seal_rejected(recipient):
    with pytest.raises(SealError, match="shorter than 48"):
        open_sealed(recipient, bytes(47))


def test_low_order_recipient_rejected():
    with pytest.raises(SealError, match="low-order"):
        seal(bytes(32), b"text")


def test_low_order_ephemeral_rejected(recipient):
    with pytest.raises(SealError, match="low-order"):
        open_sealed(recipient, bytes(32) + bytes(16))


def test_wrong_size_recipient_key_rejected():
    with pytest.raises(SealError, match="32 bytes"):
        seal(bytes(31), b"text")
