"""Key agreement, session keys, packet protection and signatures of protocol v1."""

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.protocol.constants import (
    HEADER_SIZE,
    KEY_SIZE,
    REGISTER_SIGNATURE_CONTEXT,
    REGISTER_SIGNED_SIZE,
    SESSION_KEY_INFO,
)


class CryptoError(ValueError):
    """A key, shared secret or signature that the protocol does not accept."""


# --- X25519 ---------------------------------------------------------------

_ZERO_SECRET = bytes(KEY_SIZE)
# Any fixed scalar works for the low-order test: X25519 clamps every scalar
# to a multiple of 8, so the result is all zeros exactly for keys of order 1,
# 2, 4 or 8.
_PROBE_KEY = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def x25519(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Return X25519(private, peer); raise CryptoError for a low-order peer key."""
    try:
        secret = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        # OpenSSL refuses an all-zero result itself.
        raise CryptoError("X25519 result is all zeros (low-order key)") from None
    if secret == _ZERO_SECRET:
        raise CryptoError("X25519 result is all zeros (low-order key)")
    return secret


def is_low_order_x25519(public: bytes) -> bool:
    try:
        x25519(_PROBE_KEY, public)
    except CryptoError:
        return True
    return False


def x25519_public_bytes(private_key: X25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes_raw()


# --- Session keys and packet protection ------------------------------------


def derive_session_keys(
    dh1: bytes, dh2: bytes, cookie: bytes, session_id: bytes
) -> tuple[bytes, bytes]:
    """Return (k_c2s, k_s2c) from the two handshake secrets."""
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=cookie,
        info=SESSION_KEY_INFO + session_id,
    ).derive(dh1 + dh2)
    return okm[:32], okm[32:]


_NONCE_PREFIX = bytes(4)
_COUNTER = struct.Struct(">Q")


def nonce_for(counter: int) -> bytes:
    return _NONCE_PREFIX + _COUNTER.pack(counter)


def new_aead(key: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(key)


# --- Ed25519 -----------------------------------------------------------------

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P


def _sqrt_mod_p(value: int) -> int | None:
    """Return a square root of value modulo p, or None when there is none."""
    root = pow(value, (_P + 3) // 8, _P)
    if (root * root - value) % _P == 0:
        return root
    root = root * pow(2, (_P - 1) // 4, _P) % _P
    if (root * root - value) % _P == 0:
        return root
    return None


def _small_order_y_coordinates() -> frozenset[int]:
    """Return the y coordinates of the eight edwards25519 points of order 1-8.

    Order 1 and 2 are y = 1 and y = -1; order 4 is y = 0. A point of order 8
    doubles to y = 0, which on -x^2 + y^2 = 1 + d x^2 y^2 means x^2 = -y^2
    and so d y^4 + 2 y^2 - 1 = 0.
    """
    found = {0, 1, _P - 1}
    root = _sqrt_mod_p((1 + _D) % _P)
    inverse_d = pow(_D, _P - 2, _P)
    for y_squared in ((-1 + root) * inverse_d % _P, (-1 - root) * inverse_d % _P):
        y = _sqrt_mod_p(y_squared)
        if y is not None:
            found.update({y, _P - y})
    return frozenset(found)


_SMALL_ORDER_Y = _small_order_y_coordinates()
_Y_MASK = (1 << 255) - 1


def is_weak_ed25519_key(public: bytes) -> bool:
    """Tell whether an Ed25519 key is non-canonical or of small order.

    OpenSSL verifies S strictly but accepts such keys, and a small-order key
    lets one signature pass for many messages, so they are checked here.
    """
    y = int.from_bytes(public, "little") & _Y_MASK
    return y >= _P or y in _SMALL_ORDER_Y


def verify_ed25519(public: bytes, signature: bytes, message: bytes) -> bool:
    if len(public) != KEY_SIZE or is_weak_ed25519_key(public):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def register_signed_message(relay_static_public: bytes, datagram: bytes) -> bytes:
    """Return the bytes a REGISTER signature covers, taken from its datagram."""
    signed_end = HEADER_SIZE + REGISTER_SIGNED_SIZE
    return REGISTER_SIGNATURE_CONTEXT + relay_static_public + datagram[:signed_end]
