"""A user's identity: user id, Ed25519 signing key and X25519 key, kept in a file.

The file is JSON with the private keys in hex, created with mode 0600. On
POSIX systems `Identity.load` rejects a file that the group or others may
read or write, as ssh does for private keys. Such a key may already be in
someone else's hands, and a loud failure makes the owner fix the mode.
"""

import json
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.protocol.codec import DecodeError, decode_uuid
from relay.protocol.constants import KEY_SIZE

FILE_FORMAT = "yaok-relay identity v1"
FILE_MODE = 0o600


class IdentityError(Exception):
    """An identity file that is missing, unreadable, malformed or unsafe."""


def check_uuid(value: str, field_name: str = "user id") -> str:
    """Return value if it is a canonical lowercase UUID, else raise ValueError."""
    try:
        return decode_uuid(value.encode("ascii"))
    except (DecodeError, UnicodeEncodeError):
        raise ValueError(
            f"invalid {field_name} {value!r}: expected a lowercase UUID"
        ) from None


@dataclass(frozen=True, slots=True)
class ContactCard:
    """Contact card `USER_ID:X25519_PUBLIC_HEX`: a user id and the key to seal to."""

    user_id: str
    x25519_public: bytes

    def __str__(self) -> str:
        return f"{self.user_id}:{self.x25519_public.hex()}"

    @classmethod
    def parse(cls, text: str) -> "ContactCard":
        """Parse a card as printed by `str()`; raise ValueError naming the problem."""
        user_id, separator, key_hex = text.strip().partition(":")
        if not separator:
            raise ValueError(f"invalid contact card {text!r}: expected USER_ID:KEY_HEX")
        check_uuid(user_id)
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            key = b""
        if len(key) != KEY_SIZE:
            raise ValueError(
                f"invalid contact card {text!r}: the key must be "
                f"{2 * KEY_SIZE} hex characters"
            )
        return cls(user_id, key)


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    signing_key: Ed25519PrivateKey
    x25519_key: X25519PrivateKey

    @classmethod
    def generate(cls) -> "Identity":
        return cls(
            str(uuid.uuid4()),
            Ed25519PrivateKey.generate(),
            X25519PrivateKey.generate(),
        )

    @property
    def ed25519_public(self) -> bytes:
        return self.signing_key.public_key().public_bytes_raw()

    @property
    def x25519_public(self) -> bytes:
        return self.x25519_key.public_key().public_bytes_raw()

    @property
    def contact_card(self) -> ContactCard:
        return ContactCard(self.user_id, self.x25519_public)

    def to_json(self) -> str:
        document = {
            "format": FILE_FORMAT,
            "user_id": self.user_id,
            "ed25519_private": self.signing_key.private_bytes_raw().hex(),
            "x25519_private": self.x25519_key.private_bytes_raw().hex(),
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Identity":
        """Parse an identity document; raise IdentityError naming the bad field."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IdentityError(f"identity is not valid JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
            raise IdentityError(f"identity format is not {FILE_FORMAT!r}")
        try:
            user_id = check_uuid(str(document.get("user_id")))
        except ValueError as exc:
            raise IdentityError(str(exc)) from None
        ed25519_seed = _private_key_bytes(document, "ed25519_private")
        x25519_private = _private_key_bytes(document, "x25519_private")
        return cls(
            user_id,
            Ed25519PrivateKey.from_private_bytes(ed25519_seed),
            X25519PrivateKey.from_private_bytes(x25519_private),
        )

    def save(self, path: Path) -> None:
        """Create the identity file with mode 0600; raise IdentityError if it exists."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            descriptor = os.open(path, flags, FILE_MODE)
        except FileExistsError:
            raise IdentityError(f"identity file {path} already exists") from None
        except OSError as exc:
            raise IdentityError(f"cannot create identity file {path}: {exc}") from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            # O_CREAT applies the mode only to a new file and after the umask;
            # fchmod makes 0600 exact.
            if hasattr(os, "fchmod"):
                os.fchmod(file.fileno(), FILE_MODE)
            file.write(self.to_json())

    @classmethod
    def load(cls, path: Path) -> "Identity":
        """Read an identity file; raise IdentityError if it is missing or unsafe."""
        try:
            with open(path, encoding="utf-8") as file:
                _check_private_mode(path, os.fstat(file.fileno()).st_mode)
                text = file.read()
        except FileNotFoundError:
            raise IdentityError(
                f"identity file {path} not found: create it with init"
            ) from None
        except OSError as exc:
            raise IdentityError(f"cannot read identity file {path}: {exc}") from None
        try:
            return cls.from_json(text)
        except IdentityError as exc:
            raise IdentityError(f"identity file {path}: {exc}") from None


def _private_key_bytes(document: dict, field: str) -> bytes:
    value = document.get(field)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != KEY_SIZE:
        raise IdentityError(f"{field} must be {2 * KEY_SIZE} hex characters")
    return raw


def _check_private_mode(path: Path, mode: int) -> None:
    if os.name != "posix":
        return
    exposed = stat.S_IMODE(mode) & 0o077
    if exposed:
        raise IdentityError(
            f"identity file {path} is accessible by other users "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
