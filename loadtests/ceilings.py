"""Ceilings measured on this machine in the same run: raw SQLite and crypto.

The SQLite ceiling inserts rows shaped like the relay's messages into a
fresh file with the relay's own schema (its migrations) and the PRAGMAs its
connections set (relay.storage.connection), one transaction per batch, from
one thread with no event loop in the way. The crypto ceilings time the
primitives the relay runs per packet and per registration.
"""

import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from relay.protocol.constants import CLIENT_SESSION_OVERHEAD, HEADER_SIZE
from relay.storage.connection import _PRAGMAS, WAL_AUTOCHECKPOINT_PAGES
from relay.storage.migrate import migrate

_INSERT = """
INSERT INTO mailbox_messages (recipient_id, sender_id, message_id, received_at_ms,
                              expires_at_ms, payload, trace_id)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""


def sqlite_insert_rate(
    batch_size: int, rows: int, payload_bytes: int, directory: Path | None = None
) -> float:
    """Insert rows into mailbox_messages, batch_size per transaction; return rows/s."""
    with tempfile.TemporaryDirectory(dir=directory) as folder:
        path = Path(folder) / "ceiling.db"
        migrate(path)
        connection = sqlite3.connect(path, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.executescript(
                _PRAGMAS + f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
            )
            recipients = [str(uuid.uuid4()) for _ in range(max(1, rows // 1000))]
            sender = str(uuid.uuid4())
            payload = os.urandom(payload_bytes)
            now_ms = time.time_ns() // 1_000_000
            batches = []
            for start in range(0, rows, batch_size):
                batches.append(
                    [
                        (
                            recipients[i % len(recipients)],
                            sender,
                            str(uuid.uuid4()),
                            now_ms,
                            now_ms + 86_400_000,
                            payload,
                            os.urandom(8).hex(),
                        )
                        for i in range(start, min(rows, start + batch_size))
                    ]
                )
            started = time.perf_counter()
            for batch in batches:
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany(_INSERT, batch)
                connection.execute("COMMIT")
            elapsed = time.perf_counter() - started
        finally:
            connection.close()
    return rows / elapsed


def _time_per_call(function, seconds: float) -> float:
    """Call function repeatedly for about `seconds`; return microseconds per call."""
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(100):
            function()
        calls += 100
        now = time.perf_counter()
        if now >= deadline:
            return (now - started) / calls * 1e6


def crypto_costs(seconds_each: float = 0.5) -> dict[str, float]:
    """Return microseconds per call of the relay's per-packet and handshake crypto."""
    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = bytes(12)
    # A PING: header, session id and counter as associated data, empty body.
    associated = os.urandom(HEADER_SIZE + CLIENT_SESSION_OVERHEAD - 16)
    sealed = aead.encrypt(nonce, b"", associated)

    def seal_and_open() -> None:
        aead.decrypt(nonce, aead.encrypt(nonce, b"", associated), associated)

    signer = Ed25519PrivateKey.generate()
    public = signer.public_key().public_bytes_raw()
    message = os.urandom(300)
    signature = signer.sign(message)

    def verify() -> None:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)

    private = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def exchange() -> None:
        private.exchange(X25519PublicKey.from_public_bytes(peer))

    assert aead.decrypt(nonce, sealed, associated) == b""
    return {
        "chacha20poly1305_seal_open_us": _time_per_call(seal_and_open, seconds_each),
        "ed25519_verify_us": _time_per_call(verify, seconds_each),
        "x25519_us": _time_per_call(exchange, seconds_each),
        "x25519_keygen_us": _time_per_call(X25519PrivateKey.generate, seconds_each),
    }
