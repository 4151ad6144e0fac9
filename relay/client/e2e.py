"""End-to-end payload sealing of the reference client's command line.

This is the demo format of the reference client, not part of the relay
protocol: the relay treats payloads as opaque bytes, and real Ya OK clients
use their own end-to-end encryption. A sealed payload is

    ephemeral_public (32) | ChaCha20-Poly1305 ciphertext | tag (16)

with the key HKDF-SHA256(ikm=X25519(ephemeral, recipient), salt=
ephemeral_public | recipient_public, info=SEAL_INFO, length=32), an
all-zero nonce (each key seals one message only, since the ephemeral key
is new every time) and no associated data.

The format hides the text from the relay but does not authenticate the
sender: anyone who has the recipient's contact card can seal to it. The
sender_id that the relay reports is what tells who sent a message.
"""

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.protocol.constants import KEY_SIZE, NONCE_SIZE, TAG_SIZE
from relay.protocol.crypto import CryptoError, x25519, x25519_public_bytes

SEAL_INFO = b"yaok-relay reference client/v1 e2e seal"
SEAL_OVERHEAD = KEY_SIZE + TAG_SIZE
_ZERO_NONCE = bytes(NONCE_SIZE)


class SealError(ValueError):
    """A payload that cannot be sealed to this key or opened with it."""


def _seal_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_public + recipient_public,
        info=SEAL_INFO,
    ).derive(shared)


def seal(
    recipient_public: bytes,
    plaintext: bytes,
    ephemeral: X25519PrivateKey | None = None,
) -> bytes:
    """Seal plaintext to a recipient's X25519 public key.

    `ephemeral` is for reproducible tests only; leave it None.
    """
    if len(recipient_public) != KEY_SIZE:
        raise SealError(f"recipient key must be {KEY_SIZE} bytes")
    ephemeral = ephemeral or X25519PrivateKey.generate()
    ephemeral_public = x25519_public_bytes(ephemeral)
    try:
        shared = x25519(ephemeral, recipient_public)
    except CryptoError:
        raise SealError("recipient key is a low-order X25519 key") from None
    key = _seal_key(shared, ephemeral_public, recipient_public)
    return ephemeral_public + ChaCha20Poly1305(key).encrypt(
        _ZERO_NONCE, plaintext, None
    )


def open_sealed(recipient: X25519PrivateKey, sealed: bytes) -> bytes:
    """Open a payload sealed to recipient's key; raise SealError if it does not open."""
    if len(sealed) < SEAL_OVERHEAD:
        raise SealError(f"sealed payload shorter than {SEAL_OVERHEAD} bytes")
    ephemeral_public = sealed[:KEY_SIZE]
    try:
        shared = x25519(recipient, ephemeral_public)
    except CryptoError:
        raise SealError("sealed payload has a low-order ephemeral key") from None
    key = _seal_key(shared, ephemeral_public, x25519_public_bytes(recipient))
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, sealed[KEY_SIZE:], None)
    except InvalidTag:
        raise SealError("sealed payload does not open with this key") from None
