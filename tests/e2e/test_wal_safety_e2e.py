"""Operators' sqlite3 runs beside a serving relay must leave its WAL alone."""

import subprocess
import uuid

import pytest

from relay.client.events import MessageAckReceived, PollResponseReceived
from relay.protocol.constants import AckStatus
from tests.e2e.phone import UdpPhone

pytestmark = pytest.mark.e2e


def sqlite3(database, sql: str) -> str:
    result = subprocess.run(
        ["sqlite3", "-cmd", ".timeout 10000", str(database), sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def phones(relay):
    made = [UdpPhone(relay.udp_address, relay.relay_public_key) for _ in range(2)]
    yield made
    for phone in made:
        phone.close()


def test_health_checks_keep_sqlite_locks(relay, phones):
    """/health reads the file header; that must not drop the relay's locks."""
    alice, bob = phones
    alice.register()
    bob.register()
    bob.send(bob.session.unregister())
    bob.receive()
    for _ in range(3):
        status, _ = relay.health()
        assert status == 200

    assert sqlite3(relay.database, "PRAGMA integrity_check") == "ok"
    wal = relay.database.with_name(relay.database.name + "-wal")
    assert wal.exists()

    queued = []
    for _ in range(5):
        message_id = str(uuid.uuid4())
        alice.send(alice.message(bob, b"after the check", message_id=message_id))
        event = alice.receive()
        assert isinstance(event, MessageAckReceived)
        assert event.status == AckStatus.QUEUED
        queued.append(message_id)
    assert sqlite3(relay.database, "PRAGMA integrity_check") == "ok"
    assert wal.exists()

    relay.kill()
    relay.restart()
    bob.relay_address = relay.udp_address
    assert bob.register().pending == 5
    bob.send(bob.session.poll(60_000))
    response = bob.receive()
    assert isinstance(response, PollResponseReceived)
    assert sorted(e.message_id for e in response.response.entries) == sorted(queued)


def test_second_relay_on_same_database_waits(relay, relay_factory, phones):
    """Two relays on one file would keep two mailbox indexes; the second waits."""
    second = relay_factory(
        relay.directory, RELAY_KEY_PATH=str(relay.directory / "relay_key")
    )
    status, health = second.health()
    assert status == 503
    assert health["database_ok"] is False
    assert any("lock" in reason for reason in health["reasons"])

    alice, bob = phones
    alice.register()
    bob.register()
    alice.send(alice.message(bob))
    event = alice.receive()
    assert event.status == AckStatus.QUEUED
    status, _ = relay.health()
    assert status == 200
