"""Strict key and signature checks."""

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.protocol import crypto

P = 2**255 - 19
ORDER = 2**252 + 27742317777372353535851937790883648493


def test_identity_key_forges_any_message_unless_rejected():
    identity = bytes([1]) + bytes(31)
    signature = identity + bytes(32)  # R = identity, S = 0
    assert crypto.is_weak_ed25519_key(identity)
    assert not crypto.verify_ed25519(identity, signature, b"anything")


def test_all_small_order_y_coordinates_rejected_with_either_sign():
    for y in crypto._SMALL_ORDER_Y:
        for sign in (0, 1):
            key = (y | sign << 255).to_bytes(32, "little")
            assert crypto.is_weak_ed25519_key(key)


def test_non_canonical_key_rejected():
    key = (P + 5).to_bytes(32, "little")
    assert crypto.is_weak_ed25519_key(key)


def test_valid_signature_verifies():
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    assert not crypto.is_weak_ed25519_key(public)
    assert crypto.verify_ed25519(public, private.sign(b"m"), b"m")
    assert not crypto.verify_ed25519(public, private.sign(b"m"), b"n")


def test_non_canonical_s_rejected():
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    signature = private.sign(b"m")
    s = int.from_bytes(signature[32:], "little") + ORDER
    assert s < 2**256
    malleated = signature[:32] + s.to_bytes(32, "little")
    assert not crypto.verify_ed25519(public, malleated, b"m")


@pytest.mark.parametrize(
    "public",
    [bytes(32), bytes([1]) + bytes(31), (P - 1).to_bytes(32, "little")],
)
def test_low_order_x25519_detected(public):
    assert crypto.is_low_order_x25519(public)
    with pytest.raises(crypto.CryptoError):
        crypto.x25519(X25519PrivateKey.generate(), public)


def test_ordinary_x25519_key_accepted():
    public = crypto.x25519_public_bytes(X25519PrivateKey.generate())
    assert not crypto.is_low_order_x25519(public)


def test_session_keys_differ_by_direction_and_session():
    keys = crypto.derive_session_keys(bytes(32), bytes([1]) * 32, bytes(32), bytes(16))
    other = crypto.derive_session_keys(
        bytes(32), bytes([1]) * 32, bytes(32), bytes([1]) * 16
    )
    assert keys[0] != keys[1]
    assert keys != other
    assert all(len(key) == 32 for key in keys)


def _x25519_gives_zeros(public: bytes) -> bool:
    """The definition the fast check stands for: X25519 with a fixed scalar."""
    probe = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    try:
        crypto.x25519(probe, public)
    except crypto.CryptoError:
        return True
    return False


def _low_order_encodings() -> list[bytes]:
    order_8 = (
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    )
    found = []
    for u in (0, 1, P - 1, *order_8):
        for value in (u, u + P):
            if value >= 2**255:
                continue
            for top_bit in (0, 1 << 255):
                found.append((value | top_bit).to_bytes(32, "little"))
    return found


@pytest.mark.parametrize("public", _low_order_encodings())
def test_low_order_check_covers_every_encoding(public):
    assert _x25519_gives_zeros(public)
    assert crypto.is_low_order_x25519(public)


def test_low_order_check_agrees_with_x25519_nearby():
    values = list(range(300)) + list(range(P - 300, 2**255))
    for value in values:
        public = value.to_bytes(32, "little")
        assert crypto.is_low_order_x25519(public) == _x25519_gives_zeros(public), value


def test_low_order_check_agrees_with_x25519_on_random_keys():
    for _ in range(2_000):
        public = os.urandom(32)
        assert crypto.is_low_order_x25519(public) == _x25519_gives_zeros(public)
