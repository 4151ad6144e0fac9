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
_P = 2**255 - 19  # the field prime of Curve25519 and edwards25519
_U_MASK = (1 << 255) - 1
# X25519 clamps every scalar to a multiple of 8, so its result is all zeros
# exactly for the u-coordinates of points of order 1, 2, 4 or 8, on the curve
# or on its twist. Those are 0, 1, p - 1 and the two order-8 points below.
# X25519 ignores the top bit and reduces u modulo p, so the check does too. The
# unit tests compare this set with an actual X25519 against a fixed scalar.
_LOW_ORDER_U = frozenset(
    {
        0,
        1,
        _P - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)


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
    """Tell whether X25519 with this public key gives all zeros, for any scalar.

    About a microsecond, where the X25519 it stands for costs some 30 us;
    a signed REGISTER checks two keys.
    """
    return (int.from_bytes(public, "little") & _U_MASK) % _P in _LOW_ORDER_U


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
