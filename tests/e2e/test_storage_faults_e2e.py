"""A corrupt or full database against the real relay process: 503, never a crash loop.

The disk-full test runs the relay on a small tmpfs mounted in a private
mount namespace, so that nothing outside the test sees the mount. It is
skipped where unshare(1) cannot create one (it needs root or user
namespaces).
"""

import json
import os
import shutil
import subprocess
import uuid

import pytest

from relay.client.events import MessageAckReceived
from relay.protocol.codec import decode_error
from relay.protocol.constants import HEADER_SIZE, AckStatus, ErrorCode
from relay.testing import RelayProcess
from tests.e2e.phone import UdpPhone
from tests.e2e.traffic import drain_mailbox

pytestmark = pytest.mark.e2e

FAST_RETRY = {
    "STORAGE_RETRY_INTERVAL_S": 1,
    "RATE_MESSAGE_PER_USER": 1_000_000,
    "MAILBOX_MAX_PER_SENDER": 1_000_000,
    "MAILBOX_MAX_MESSAGES": 1_000_000,
}


def register_refusal(relay) -> ErrorCode:
    """Run a new phone's handshake; return the ERROR code that ends it."""
    phone = UdpPhone(relay.udp_address, relay.relay_public_key)
    try:
        phone.send(phone.session.start_register())
        challenge = phone.receive()
        phone.send(challenge.register)
        reply = phone.receive_raw()
        assert reply is not None, "REGISTER got no answer"
        return decode_error(reply[HEADER_SIZE:]).code
    finally:
        phone.close()


def send_and_wait(phone: UdpPhone, recipient: UdpPhone) -> AckStatus:
    message_id = str(uuid.uuid4())
    phone.send(phone.message(recipient, b"sealed", message_id=message_id))
    for _ in range(20):
        event = phone.receive()
        assert event is not None, "MESSAGE got no answer"
        if isinstance(event, MessageAckReceived) and event.message_id == message_id:
            return event.status
    raise AssertionError("no MESSAGE_ACK for the message")


def error_lines(relay, message: str) -> list[dict]:
    return [e for e in relay.events(message) if e["level"] == "ERROR"]


def test_corrupt_file_at_start_serves_503_and_retries(relay_factory, tmp_path):
    directory = tmp_path / "volume"
    directory.mkdir()
    database = directory / "yaok_relay.db"
    database.write_bytes(os.urandom(64 * 1024))
    relay = relay_factory(directory, **FAST_RETRY)
    pid = relay.pid

    status, health = relay.health()
    assert status == 503
    assert health["database_ok"] is False
    assert health["status"] == "unhealthy"
    assert "file is not a database" in health["reasons"][0]
    assert register_refusal(relay) == ErrorCode.OVERLOADED
    status, metrics, _ = relay.http_get("/metrics")
    assert status == 200
    assert "relay_database_available 0.0" in metrics
    assert "relay_database_corrupt 1.0" in metrics

    # Several retries pass; the ERROR line is not repeated for each one.
    assert relay.wait_for(lambda: len(relay.events("storage_open_failed")) >= 1, 20)
    errors_before = len(error_lines(relay, "storage_open_failed"))
    relay.wait_for(lambda: False, 3)
    assert len(error_lines(relay, "storage_open_failed")) == errors_before == 1

    # The operator moves the damaged file aside; the next retry opens a new one.
    database.rename(directory / "yaok_relay.db.corrupt")
    assert relay.wait_for(lambda: relay.health()[0] == 200, 30)
    assert relay.pid == pid
    assert relay.returncode == -999
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    alice.close()


def checkpoint(database) -> None:
    run = subprocess.run(
        [
            "sqlite3",
            "-cmd",
            ".timeout 5000",
            str(database),
            "PRAGMA wal_checkpoint(TRUNCATE)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs sqlite3")
@pytest.mark.parametrize("damage", ["pages", "header"])
def test_corruption_while_serving_turns_503(relay_factory, tmp_path, damage):
    relay = relay_factory(tmp_path / "volume", **FAST_RETRY)
    pid = relay.pid
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    bob.register()
    for _ in range(50):
        assert send_and_wait(alice, bob) == AckStatus.QUEUED
    assert relay.health()[0] == 200

    # Every page is in the database file now, none only in the WAL.
    checkpoint(relay.database)
    data = bytearray(relay.database.read_bytes())
    if damage == "header":
        data[:100] = os.urandom(100)
    else:
        page_size = int.from_bytes(data[16:18], "big")
        data[page_size:] = os.urandom(len(data) - page_size)
    # Written in place, as a failing disk would.
    with open(relay.database, "r+b") as file:
        file.write(bytes(data))

    assert relay.wait_for(lambda: relay.health()[0] == 503, 20)
    _, health = relay.health()
    assert health["database_ok"] is False
    assert "corrupt" in " ".join(health["reasons"])
    assert send_and_wait(alice, bob) == AckStatus.UNAVAILABLE
    assert register_refusal(relay) == ErrorCode.OVERLOADED
    assert relay.http_get("/metrics")[0] == 200
    assert relay.wait_for(lambda: error_lines(relay, "database_corrupt"), 20)
    assert relay.pid == pid
    assert relay.returncode == -999
    alice.close()
    bob.close()


class NamespacedRelay(RelayProcess):
    """A relay whose database folder is a small tmpfs in its own mount namespace."""

    def __init__(self, directory, size: str, **environment) -> None:
        super().__init__(directory, **environment)
        self.size = size

    def command(self) -> list[str]:
        mount = f'mount -t tmpfs -o size={self.size},mode=0700 tmpfs "$0" && exec "$@"'
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            mount,
            str(self.directory),
            *super().command(),
        ]

    def in_namespace(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "--", *command],
            capture_output=True,
            text=True,
            timeout=30,
        )


def test_deleted_database_refuses_messages(relay_factory, tmp_path):
    # The relay's connections keep the deleted file open and could go on
    # committing to it, but those commits would be gone at the next start.
    relay = relay_factory(tmp_path / "volume", **FAST_RETRY)
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    try:
        alice.register()
        bob.register()
        assert send_and_wait(alice, bob) == AckStatus.QUEUED

        os.unlink(relay.database)
        assert relay.wait_for(lambda: relay.health()[0] == 503, 10)
        _, health = relay.health()
        assert "is missing" in " ".join(health["reasons"])
        assert send_and_wait(alice, bob) == AckStatus.UNAVAILABLE
        assert relay.wait_for(lambda: error_lines(relay, "database_write_failed"), 5)
        assert relay.process.poll() is None
    finally:
        alice.close()
        bob.close()


def test_replaced_database_recovers_when_moved_back(relay_factory, tmp_path):
    relay = relay_factory(tmp_path / "volume", **FAST_RETRY)
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    moved = relay.database.with_name("moved-aside.db")
    try:
        alice.register()
        bob.register()
        assert send_and_wait(alice, bob) == AckStatus.QUEUED

        os.rename(relay.database, moved)
        shutil.copyfile(moved, relay.database)
        assert relay.wait_for(lambda: relay.health()[0] == 503, 10)
        _, health = relay.health()
        assert "was replaced while open" in " ".join(health["reasons"])
        assert send_and_wait(alice, bob) == AckStatus.UNAVAILABLE

        os.replace(moved, relay.database)
        assert relay.wait_for(lambda: relay.health()[0] == 200, 15)
        assert send_and_wait(alice, bob) == AckStatus.QUEUED
    finally:
        alice.close()
        bob.close()


def namespaces_available() -> bool:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(not namespaces_available(), reason="needs root and unshare")
def test_full_disk_turns_503_and_recovers(tmp_path):
    relay = NamespacedRelay(tmp_path / "volume", "3m", **FAST_RETRY)
    relay.start()
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    try:
        check_full_disk(relay, alice, bob)
    finally:
        alice.close()
        bob.close()
        relay.kill()


def check_full_disk(relay, alice: UdpPhone, bob: UdpPhone) -> None:
    pid = relay.pid
    alice.register()
    bob.register()
    bob.send(bob.session.unregister())
    bob.receive()

    queued: set[str] = set()
    answers: list[AckStatus] = []
    for _ in range(2_000):
        message_id = str(uuid.uuid4())
        alice.send(alice.message(bob, os.urandom(4_000), message_id=message_id))
        event = alice.receive()
        assert isinstance(event, MessageAckReceived), event
        answers.append(event.status)
        if event.status == AckStatus.QUEUED:
            queued.add(event.message_id)
        if event.status == AckStatus.UNAVAILABLE:
            break
    assert answers[-1] == AckStatus.UNAVAILABLE, "the tmpfs never filled"
    assert len(queued) > 50

    status, health = relay.health()
    assert status == 503
    assert health["database_ok"] is False
    reasons = " ".join(health["reasons"])
    assert "database or disk is full" in reasons
    assert "unhealthy: database volume has" in reasons
    assert error_lines(relay, "database_write_failed")
    # Write probes run every second and keep failing while the disk is full.
    relay.wait_for(lambda: False, 2.5)
    status, health = relay.health()
    assert status == 503
    assert health["database_ok"] is False
    # Each failed COMMIT has the index reread, and only the failures are logged.
    assert relay.events("mailbox_index_rebuilt") == []

    grown = relay.in_namespace("mount", "-o", "remount,size=64m", str(relay.directory))
    assert grown.returncode == 0, grown.stderr
    # The write probe notices the space without any message arriving.
    assert relay.wait_for(lambda: relay.health()[0] == 200, 30)
    assert relay.events("database_writes_recovered")
    assert send_and_wait(alice, bob) == AckStatus.QUEUED
    assert relay.pid == pid

    bob.register()
    delivered = drain_mailbox(bob)
    assert queued <= delivered


def test_old_message_turns_degraded(relay_factory):
    relay = relay_factory(HEALTH_OLDEST_MESSAGE_DEGRADED_S=1)
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    bob.register()
    bob.send(bob.session.unregister())
    bob.receive()
    assert send_and_wait(alice, bob) == AckStatus.QUEUED
    assert relay.health()[1]["status"] == "healthy"

    assert relay.wait_for(lambda: relay.health()[1]["status"] == "degraded", 20)
    status, health = relay.health()
    assert status == 200
    assert health["oldest_message_age_seconds"] > 1
    assert "degraded: oldest waiting message" in health["reasons"][0]
    _, text, _ = relay.http_get("/health", {"Accept": "text/plain"})
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    gauges = dict(line.split(" ") for line in samples)
    assert float(gauges["health_status"]) == 1.0
    assert float(gauges["health_oldest_message_age_seconds"]) > 1
    for name in (
        "health_wal_size_bytes",
        "health_disk_free_bytes",
        "health_database_size_bytes",
        "health_commit_latency_p95_seconds",
    ):
        assert name in gauges
    _, metrics, _ = relay.http_get("/metrics")
    assert "relay_oldest_message_age_seconds" in metrics
    assert "relay_commit_latency_p95_seconds" in metrics

    bob.register()
    assert len(drain_mailbox(bob)) == 1
    assert relay.wait_for(lambda: relay.health()[1]["status"] == "healthy", 20)
    alice.close()
    bob.close()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")
def test_health_gauges_pass_promtool(relay):
    _, text, _ = relay.http_get("/health", {"Accept": "text/plain"})
    _, metrics, _ = relay.http_get("/metrics")
    for exposition in (text, metrics):
        run = subprocess.run(
            ["promtool", "check", "metrics"],
            input=exposition,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(relay.http_get("/health")[1])["status"] == "healthy"
