"""Stateless REGISTER cookies.

A cookie is `expiry_ms (8) | HMAC-SHA256(key, expiry_ms | ip | port |
user_id | ce_public)[:24]`. The relay keeps no state per cookie it hands
out, so a flood of first REGISTERs costs one HMAC each and no memory. The
key is derived from the relay's static key, so every process that shares
that key accepts the others' cookies.
"""

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.protocol.constants import COOKIE_SIZE

_EXPIRY = struct.Struct(">Q")
_MAC_SIZE = COOKIE_SIZE - _EXPIRY.size
COOKIE_KEY_INFO = b"yaok-relay/v1 cookie"


def derive_cookie_key(relay_static_private: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=COOKIE_KEY_INFO
    ).derive(relay_static_private)


class CookieJar:
    """Mint and check cookies bound to a source address, user id and ce_public."""

    __slots__ = ("_key", "lifetime_ms")

    def __init__(self, key: bytes, lifetime_ms: int) -> None:
        self._key = key
        self.lifetime_ms = lifetime_ms

    def _mac(
        self, expiry: bytes, address: tuple, user_id: bytes, ce_public: bytes
    ) -> bytes:
        host, port = address[0], address[1]
        bound = b"|".join(
            (expiry, host.encode(), str(port).encode(), user_id, ce_public)
        )
        return hmac.digest(self._key, bound, hashlib.sha256)[:_MAC_SIZE]

    def mint(
        self, address: tuple, user_id: bytes, ce_public: bytes, now_ms: int
    ) -> bytes:
        expiry = _EXPIRY.pack(now_ms + self.lifetime_ms)
        return expiry + self._mac(expiry, address, user_id, ce_public)

    def check(
        self,
        cookie: bytes,
        address: tuple,
        user_id: bytes,
        ce_public: bytes,
        now_ms: int,
    ) -> bool:
        expiry = cookie[: _EXPIRY.size]
        expires_at_ms = _EXPIRY.unpack(expiry)[0]
        # A cookie from a relay whose clock runs ahead could claim a longer life.
        if not now_ms <= expires_at_ms <= now_ms + self.lifetime_ms:
            return False
        expected = self._mac(expiry, address, user_id, ce_public)
        return hmac.compare_digest(expected, cookie[_EXPIRY.size :])
