"""The relay's static X25519 key: created on first start, kept with mode 0600."""

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.config import ConfigError


def load_or_create_relay_key(path: Path) -> tuple[X25519PrivateKey, bool]:
    """Return the relay key stored at path, creating it if missing.

    The file holds the 32-byte private key as 64 hex characters. Returns
    (key, created). Raises ConfigError for a file others can read, one
    that does not hold a key, or a path that cannot be read or created,
    since each needs an operator's decision.
    """
    try:
        return _load_or_create(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot read or create relay key file {path}: {reason} "
            "(set RELAY_KEY_PATH, or DATABASE_URL beside which it is kept)"
        ) from None


def _load_or_create(path: Path) -> tuple[X25519PrivateKey, bool]:
    if not path.exists():
        return _create(path), True
    if not path.is_file():
        raise ConfigError(
            f"relay key file {path} is a folder or another non-file: "
            "set RELAY_KEY_PATH to the key file itself"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"relay key file {path} has mode {mode:04o}, readable by others: "
            f"run chmod 600 {path} (RELAY_KEY_PATH names the file)"
        )
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(
            f"relay key file {path} does not hold 64 hex characters: restore "
            "it from backup (RELAY_KEY_PATH names the file); a new key makes "
            "phones that pinned the old one refuse this relay"
        )
    return X25519PrivateKey.from_private_bytes(raw), False


def _create(path: Path) -> X25519PrivateKey:
    key = X25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(key.private_bytes_raw().hex() + "\n")
        file.flush()
        os.fsync(file.fileno())
    return key
