"""Crash durability, the session limit and start-up errors, against the real process."""

import uuid

import pytest

from relay.client.events import MessageAckReceived
from relay.protocol.codec import decode_error
from relay.protocol.constants import HEADER_SIZE, AckStatus, ErrorCode
from relay.testing import serve_once
from tests.e2e.phone import UdpPhone
from tests.e2e.traffic import drain_mailbox

pytestmark = pytest.mark.e2e


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
    for field in (
        "status",
        "version",
        "uptime_seconds",
        "active_connections",
        "database_ok",
        "queue_size",
    ):
        assert field in health
    assert health["database_ok"] is True
    status, body, _ = relay.http_get("/version")
    assert status == 200
    assert f'"relay_public_key":"{relay.relay_public_key.hex()}"' in body


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_CONNECTIONS", "lots"),
        ("DATABASE_URL", "mysql://x"),
        ("RUST_LOG", "chatty"),
    ],
)
def test_bad_configuration_one_clear_line(tmp_path, name, value):
    result = serve_once({"PATH": "/usr/bin:/bin", name: value}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert name in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "expected"),
    [("DATABASE_URL", "is a file, not a folder"), ("PID_FILE", "cannot write it")],
)
def test_path_under_a_file_one_clear_line(tmp_path, name, expected):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder\n")
    env = {"PATH": "/usr/bin:/bin", "RELAY_PORT": "0", "HTTP_PORT": "0"}
    env["DATABASE_URL"] = f"sqlite://{tmp_path / 'relay.db'}"
    if name == "DATABASE_URL":
        env[name] = f"sqlite://{blocker / 'data' / 'relay.db'}"
    else:
        env[name] = str(blocker / "relay.pid")
    result = serve_once(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert name in lines[0]
    assert expected in lines[0]
