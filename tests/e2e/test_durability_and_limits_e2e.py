"""Crash durability, the session limit and start-up errors, against the real process."""

import subprocess
import sys
import uuid

import pytest

from relay.client.events import MessageAckReceived, PollResponseReceived
from relay.protocol.codec import decode_error
from relay.protocol.constants import HEADER_SIZE, AckStatus, ErrorCode
from tests.e2e.phone import UdpPhone

pytestmark = pytest.mark.e2e


def drain_mailbox(phone: UdpPhone) -> set[str]:
    """Poll and acknowledge until the mailbox is empty; return the message ids."""
    seen: set[str] = set()
    while True:
        phone.send(phone.session.poll(60_000))
        response = phone.receive()
        assert isinstance(response, PollResponseReceived), response
        entries = response.response.entries
        if not entries:
            return seen
        seen.update(entry.message_id for entry in entries)
        for start in range(0, len(entries), 15):
            chunk = entries[start : start + 15]
            phone.send(phone.session.ack([(e.sender_id, e.message_id) for e in chunk]))


def test_queued_messages_survive_sigkill(relay_factory, tmp_path):
    relay = relay_factory(tmp_path / "crash", RATE_MESSAGE_PER_USER=10_000)
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    bob.register()
    bob.send(bob.session.unregister())
    bob.receive()

    queued: set[str] = set()
    sent = [str(uuid.uuid4()) for _ in range(300)]
    for message_id in sent:
        alice.send(alice.message(bob, b"x" * 200, message_id=message_id))
    # Kill as soon as a third of the acknowledgements are in, with more in flight.
    while len(queued) < 100:
        event = alice.receive()
        assert isinstance(event, MessageAckReceived), event
        if event.status == AckStatus.QUEUED:
            queued.add(event.message_id)
    relay.kill()
    alice.close()

    relay.restart()
    bob.relay_address = relay.udp_address
    bob.register()
    delivered = drain_mailbox(bob)
    bob.close()
    assert queued <= delivered
    assert delivered <= set(sent)


def test_session_limit_overloaded_and_health_503(relay_factory):
    relay = relay_factory(MAX_CONNECTIONS=10)
    phones = [UdpPhone(relay.udp_address, relay.relay_public_key) for _ in range(11)]
    try:
        for phone in phones[:10]:
            phone.register()
        status, health = relay.health()
        assert status == 503
        assert health["active_connections"] == 10
        assert health["status"] == "unhealthy"
        last = phones[10]
        last.send(last.session.start_register())
        reply = last.receive_raw()
        assert decode_error(reply[HEADER_SIZE:]).code == ErrorCode.OVERLOADED
    finally:
        for phone in phones:
            phone.close()


def test_health_and_version_when_idle(relay):
    status, health = relay.health()
    assert status == 200
    for field in ("status", "version", "uptime_seconds", "active_connections",
                  "database_ok", "queue_size"):
        assert field in health
    assert health["database_ok"] is True
    status, body, _ = relay.http_get("/version")
    assert status == 200
    assert f'"relay_public_key":"{relay.relay_public_key.hex()}"' in body


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_CONNECTIONS", "lots"), ("DATABASE_URL", "mysql://x"), ("RUST_LOG", "chatty")],
)
def test_bad_configuration_one_clear_line(tmp_path, name, value):
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        env={"PATH": "/usr/bin:/bin", name: value},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert name in lines[0]
    assert "Traceback" not in result.stderr


def test_port_in_use_one_clear_line(relay, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        env={
            "PATH": "/usr/bin:/bin",
            "DATABASE_URL": f"sqlite://{tmp_path / 'other.db'}",
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(relay.udp_port),
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "RELAY_PORT" in lines[0]
    assert "in use" in lines[0]
