"""The relay under test: a real `python -m relay serve` process with benchmark limits.

The relay's default rate limits (PING 6 a minute per user, MESSAGE 100,
signed REGISTER 30 a minute per source IP, 100 plain replies a second per
address) would throttle a benchmark that sends everything from 127.0.0.1,
so every run raises them through the environment and prints that it did.
"""

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from relay.client.identity import Identity
from relay.storage.migrate import migrate
from relay.testing import RelayProcess

# The largest values the relay's settings accept, so that no limit bites.
BENCHMARK_LIMITS = {
    "RATE_REGISTER_PER_IP": 1_000_000,
    "RATE_UNAUTHENTICATED_PER_IP": 10_000_000,
    "RATE_MESSAGE_PER_USER": 10_000_000,
    "RATE_POLL_PER_USER": 10_000_000,
    "RATE_ACK_PER_USER": 10_000_000,
    "RATE_PING_PER_USER": 10_000_000,
    "REPLIES_PER_ADDRESS_PER_S": 1_000_000,
}


def benchmark_environment(**overrides: int | str) -> dict[str, str]:
    environment = {key: str(value) for key, value in BENCHMARK_LIMITS.items()}
    environment.update({key: str(value) for key, value in overrides.items()})
    return environment


def describe_limits() -> str:
    pairs = ", ".join(f"{key}={value:,}" for key, value in BENCHMARK_LIMITS.items())
    return f"relay rate limits raised for benchmarking through the environment: {pairs}"


def seed_users(database: Path, identities: Iterable[Identity], now_ms: int) -> int:
    """Bind users to their keys in a fresh database, as a relay that knew them would.

    A registration storm after a deploy meets a registry that already has
    every user; writing the rows directly saves the harness a first round.
    """
    database.parent.mkdir(parents=True, exist_ok=True)
    migrate(database)
    rows = [
        (i.user_id, i.ed25519_public, i.x25519_public, now_ms, now_ms)
        for i in identities
    ]
    connection = sqlite3.connect(database)
    try:
        with connection:
            connection.executemany(
                "INSERT OR IGNORE INTO users (user_id, ed25519_public, x25519_public,"
                " registered_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
    finally:
        connection.close()
    return len(rows)


def start_relay(directory: Path, **environment: int | str) -> RelayProcess:
    """Start the relay on free loopback ports with the benchmark limits."""
    relay = RelayProcess(directory, **benchmark_environment(**environment))
    return relay.start()
