"""Rotation with the real logrotate, the shipped config, while messages flow."""

import getpass
import grp
import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.log_format import line_problems
from tests.e2e.phone import UdpPhone
from tests.e2e.traffic import Sender, total_queued, wait_for_queued

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "deploy" / "logrotate" / "yaok-relay"
ROTATIONS = 2


def logrotate_config(log_dir: Path, pid_file: Path) -> str:
    """Return the shipped config with this test's folders and owner."""
    text = SHIPPED_CONFIG.read_text()
    assert "/var/log/yaok-relay/" in text
    assert "/run/yaok-relay/relay.pid" in text
    assert "create 0640 yaok yaok" in text
    owner = f"{getpass.getuser()} {grp.getgrgid(os.getgid()).gr_name}"
    return (
        text.replace("/var/log/yaok-relay/", f"{log_dir}/")
        .replace("/run/yaok-relay/relay.pid", str(pid_file))
        .replace("create 0640 yaok yaok", f"create 0640 {owner}")
    )


def read_lines(path: Path) -> list[str]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as file:
            return file.read().splitlines()
    return path.read_text(encoding="utf-8").splitlines()


def test_logrotate_loses_no_line(relay_factory, tmp_path):
    log_dir = tmp_path / "log"
    log_file = log_dir / "relay.log"
    pid_file = tmp_path / "run" / "relay.pid"
    config = tmp_path / "logrotate.conf"
    config.write_text(logrotate_config(log_dir, pid_file))
    relay = relay_factory(
        RUST_LOG="debug",
        LOG_FILE=log_file,
        PID_FILE=pid_file,
        RATE_MESSAGE_PER_USER=1_000_000,
        MAILBOX_MAX_MESSAGES=1_000_000,
        MAILBOX_MAX_PER_SENDER=1_000_000,
    )
    recipient = UdpPhone(relay.udp_address, relay.relay_public_key)
    recipient.register()
    phones = [UdpPhone(relay.udp_address, relay.relay_public_key) for _ in range(3)]
    for phone in phones:
        phone.register()
    senders = [Sender(phone, recipient.user_id, max_seconds=60) for phone in phones]
    for sender in senders:
        sender.start()

    for rotation in range(1, ROTATIONS + 1):
        wait_for_queued(senders, total_queued(senders) + 150)
        result = subprocess.run(
            ["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert relay.wait_for(
            lambda n=rotation: len(relay.events("log_file_reopened")) == n
        )
    rotated_inode = (log_dir / "relay.log.1").stat().st_ino
    wait_for_queued(senders, total_queued(senders) + 150)
    for sender in senders:
        sender.stopping.set()
    for sender in senders:
        sender.join(30)
    assert relay.stop() == 0
    for phone in [recipient, *phones]:
        phone.close()

    oldest_first = [log_dir / "relay.log.2.gz", log_dir / "relay.log.1", log_file]
    assert sorted(p.name for p in log_dir.iterdir()) == sorted(
        p.name for p in oldest_first
    )
    file_lines = [line for path in oldest_first for line in read_lines(path)]
    stdout_lines = [line for line in relay.raw_lines if line]
    # Every line the relay wrote is in exactly one file, whole and in order.
    assert file_lines == stdout_lines
    for line in file_lines:
        assert line_problems(line, "test") == [], line

    stored = [json.loads(line) for line in file_lines]
    stored = [e for e in stored if e["message"] == "message_stored"]
    trace_ids = [e["trace_id"] for e in stored]
    assert len(trace_ids) == len(set(trace_ids))
    queued_lines = sum(1 for e in stored if e["status"] == "QUEUED")
    assert queued_lines >= total_queued(senders) >= ROTATIONS * 150
    # After the last rotation the relay writes to the new file.
    assert log_file.stat().st_ino != rotated_inode
    newest = [json.loads(line)["message"] for line in read_lines(log_file)]
    assert "message_stored" in newest
    assert newest[-1] == "relay_stopped"
