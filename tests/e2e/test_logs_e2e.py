"""The relay's log lines from real runs: format, trace ids, files and lifecycle."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from relay.client.events import (
    EntryPushed,
    MessageAckReceived,
    PollResponseReceived,
    UnregisteredReceived,
)
from relay.protocol.codec import decode_error
from relay.protocol.constants import HEADER_SIZE, AckStatus, ErrorCode
from relay.testing import serve_once
from tests.e2e.log_format import line_problems
from tests.e2e.phone import UdpPhone

pytestmark = pytest.mark.e2e

MESSAGE_EVENTS = (
    "message_stored",
    "message_pushed",
    "message_polled",
    "message_delivered",
)


def trace_of(relay, event_name: str, user_id: str) -> list[str]:
    return [
        e["trace_id"] for e in relay.events(event_name) if e.get("user_id") == user_id
    ]


def offline_exchange(relay) -> tuple[UdpPhone, UdpPhone, str]:
    """Send one message to an offline phone, which then polls and acknowledges it."""
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    bob.register()
    bob.send(bob.session.unregister())
    assert isinstance(bob.receive(), UnregisteredReceived)
    alice.send(alice.message(bob, b"while you were away"))
    ack = alice.receive()
    assert isinstance(ack, MessageAckReceived)
    assert ack.status == AckStatus.QUEUED
    bob.register()
    bob.send(bob.session.poll())
    polled = bob.receive()
    assert isinstance(polled, PollResponseReceived)
    (entry,) = polled.response.entries
    bob.send(bob.session.ack([(alice.user_id, entry.message_id)]))
    delivered = alice.receive()
    assert isinstance(delivered, MessageAckReceived)
    assert delivered.status == AckStatus.DELIVERED
    return alice, bob, entry.message_id


def online_exchange(relay) -> tuple[UdpPhone, UdpPhone]:
    """Send one message to an online phone, which acknowledges the push."""
    carol = UdpPhone(relay.udp_address, relay.relay_public_key)
    dave = UdpPhone(relay.udp_address, relay.relay_public_key)
    carol.register()
    dave.register()
    carol.send(carol.message(dave, b"right now"))
    assert carol.receive().status == AckStatus.QUEUED
    push = dave.receive()
    assert isinstance(push, EntryPushed)
    dave.send(dave.session.ack([(carol.user_id, push.entry.message_id)]))
    assert carol.receive().status == AckStatus.DELIVERED
    return carol, dave


def test_every_line_parses_for_promtail(relay_factory, tmp_path):
    log_file = tmp_path / "logs" / "relay.log"
    relay = relay_factory(RUST_LOG="debug", LOG_FILE=log_file, FLY_REGION="ams")
    phones = [*offline_exchange(relay)[:2], *online_exchange(relay)]
    phones[0].send(b"\x01\x99junk that is no packet")
    forged = phones[0].message(phones[1], b"x")
    phones[0].send(forged[:-1] + bytes([forged[-1] ^ 1]))  # fails its tag
    time.sleep(0.3)
    assert relay.http_get("/health")[0] == 200
    assert relay.stop() == 0
    for phone in phones:
        phone.close()

    stdout_lines = [line for line in relay.raw_lines if line]
    file_lines = log_file.read_text().splitlines()
    assert len(stdout_lines) > 10
    for line in stdout_lines:
        assert line_problems(line, "ams") == [], line
    assert file_lines == stdout_lines
    names = {json.loads(line)["message"] for line in stdout_lines}
    for expected in (
        "relay_started",
        "relay_draining",
        "relay_stopped",
        *MESSAGE_EVENTS,
    ):
        assert expected in names
    levels = {json.loads(line)["level"] for line in stdout_lines}
    assert {"INFO", "DEBUG"} <= levels


def test_trace_id_follows_message_to_delivery(relay_factory):
    relay = relay_factory(RUST_LOG="debug")
    alice, bob, _ = offline_exchange(relay)
    carol, dave = online_exchange(relay)
    relay.wait_for(lambda: len(relay.events("message_delivered")) == 2)

    (stored,) = trace_of(relay, "message_stored", alice.user_id)
    assert trace_of(relay, "message_polled", bob.user_id) == [stored]
    assert trace_of(relay, "message_delivered", bob.user_id) == [stored]
    (pushed_stored,) = trace_of(relay, "message_stored", carol.user_id)
    assert trace_of(relay, "message_pushed", dave.user_id) == [pushed_stored]
    assert trace_of(relay, "message_delivered", dave.user_id) == [pushed_stored]
    assert stored != pushed_stored
    run_trace = relay.events("relay_started")[0]["trace_id"]
    assert run_trace not in (stored, pushed_stored)
    for phone in (alice, bob, carol, dave):
        phone.close()


def test_message_trace_id_is_stored_with_message(relay_factory):
    relay = relay_factory(RUST_LOG="debug")
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    bob.register()
    bob.send(bob.session.unregister())
    bob.receive()
    alice.send(
        alice.message(bob, b"kept", message_id="6f1d7a4e-0000-4000-8000-000000000001")
    )
    assert alice.receive().status == AckStatus.QUEUED
    assert relay.wait_for(lambda: trace_of(relay, "message_stored", alice.user_id))
    (logged,) = trace_of(relay, "message_stored", alice.user_id)
    with sqlite3.connect(relay.database) as connection:
        (stored,) = connection.execute(
            "SELECT trace_id FROM mailbox_messages WHERE message_id = ?",
            ("6f1d7a4e-0000-4000-8000-000000000001",),
        ).fetchone()
    assert logged == stored
    alice.close()
    bob.close()


def test_info_level_has_no_per_packet_lines(relay_factory):
    relay = relay_factory(RUST_LOG="info")
    phones = online_exchange(relay)
    assert relay.stop() == 0
    names = [event["message"] for event in relay.lines]
    assert all(event["level"] != "DEBUG" for event in relay.lines)
    for per_packet in (*MESSAGE_EVENTS, "session_opened"):
        assert per_packet not in names
    for phone in phones:
        phone.close()


def test_start_line_names_settings_and_key(relay_factory, tmp_path):
    relay = relay_factory(MAX_CONNECTIONS=1234, PID_FILE=tmp_path / "relay.pid")
    (started,) = relay.events("relay_started")
    assert started["max_connections"] == 1234
    assert started["relay_public_key"] == relay.relay_public_key.hex()
    assert started["pid"] == relay.pid
    assert started["level"] == "INFO"
    assert (tmp_path / "relay.pid").read_text().strip() == str(relay.pid)
    assert relay.stop() == 0
    assert not (tmp_path / "relay.pid").exists()


def test_session_limit_logged_once_per_episode(relay_factory):
    relay = relay_factory(MAX_CONNECTIONS=2)
    phones = [UdpPhone(relay.udp_address, relay.relay_public_key) for _ in range(8)]
    for phone in phones[:2]:
        phone.register()
    for phone in phones[2:]:
        phone.send(phone.session.start_register())
        reply = phone.receive_raw()
        assert decode_error(reply[HEADER_SIZE:]).code == ErrorCode.OVERLOADED
    assert relay.wait_for(lambda: relay.events("session_limit_reached"), 20)
    time.sleep(1.5)  # more ticks pass while the relay stays full
    (reached,) = relay.events("session_limit_reached")
    assert reached["level"] == "WARN"
    assert reached["active_connections"] == 2
    assert reached["max_connections"] == 2
    _, metrics, _ = relay.http_get("/metrics")
    assert 'relay_register_refusals_total{code="overloaded"} 6.0' in metrics
    for phone in phones:
        phone.close()


def test_console_format_on_stdout_json_in_file(tmp_path):
    log_file = tmp_path / "relay.log"
    environment = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": f"sqlite://{tmp_path / 'relay.db'}",
        "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": "0",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        "LOG_FORMAT": "console",
        "LOG_FILE": str(log_file),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while "relay_started" not in (log_file.read_text() if log_file.exists() else ""):
        assert time.monotonic() < deadline, "relay did not start"
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    console = [line for line in stdout.splitlines() if line]
    assert any("relay_started" in line and "[INFO" in line for line in console)
    assert all(not line.startswith("{") for line in console)
    assert all("\x1b[" not in line for line in console)  # no colours off a terminal
    for line in log_file.read_text().splitlines():
        assert line_problems(line, "local") == [], line


def test_unwritable_log_file_one_clear_line(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = serve_once(
        {"PATH": "/usr/bin:/bin", "LOG_FILE": str(blocker / "relay.log")}, cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "LOG_FILE" in lines[0]
    assert "Traceback" not in result.stderr


def test_port_in_use_one_line_and_logged(relay, tmp_path):
    result = serve_once(
        {
            "PATH": "/usr/bin:/bin",
            "DATABASE_URL": f"sqlite://{tmp_path / 'other.db'}",
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(relay.udp_port),
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": "0",
        }
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "RELAY_PORT" in lines[0]
    assert "in use" in lines[0]
    events = [json.loads(line) for line in result.stdout.splitlines() if line]
    failed = [e for e in events if e["message"] == "relay_start_failed"]
    assert len(failed) == 1
    assert failed[0]["level"] == "ERROR"
    assert "RELAY_PORT" in failed[0]["error"]


def test_sigusr1_without_log_file_keeps_serving(relay):
    relay.signal(signal.SIGUSR1)
    assert relay.wait_for(lambda: relay.events("log_file_reopen_skipped"), 20)
    assert relay.http_get("/health")[0] == 200
    assert relay.stop() == 0


def test_relay_host_accepts_host_name(relay_factory, phone_factory):
    relay = relay_factory(RELAY_HOST="localhost", HTTP_HOST="localhost")
    phone = UdpPhone(relay.udp_address, relay.relay_public_key)
    phone.register()
    phone.close()
    assert relay.events("relay_started")[0]["udp_host"] == "localhost"
