"""`yaok-relay backup`, `verify-backup` and `restore` against relay processes.

The backup runs while a phone keeps sending; the restored database is served
by a new relay, and the recipient reads its mailbox back over UDP.
"""

import datetime
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from relay.testing import RelayProcess
from tests.e2e.phone import UdpPhone
from tests.e2e.traffic import Sender, drain_mailbox

pytestmark = pytest.mark.e2e

BUSY = {
    "RATE_MESSAGE_PER_USER": 1_000_000,
    "RATE_POLL_PER_USER": 1_000_000,
    "RATE_ACK_PER_USER": 1_000_000,
    "MAILBOX_MAX_PER_SENDER": 1_000_000,
    "MAILBOX_MAX_MESSAGES": 1_000_000,
}


def command(environment: dict, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", *arguments],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def only_archive(folder: Path) -> Path:
    archives = sorted(folder.glob("yaok-relay-*.tar.gz"))
    assert len(archives) == 1, archives
    return archives[0]


def test_backup_under_traffic_restores_queued_messages(relay_factory, tmp_path):
    relay = relay_factory(tmp_path / "live", **BUSY)
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    bob.register()
    bob.send(bob.session.unregister())  # offline: his mailbox only grows
    bob.receive()
    sender = Sender(alice, bob.user_id, max_seconds=30)
    sender.start()
    assert relay.wait_for(lambda: len(sender.queued()) >= 300, 20)

    backup_started = time.monotonic()
    output = tmp_path / "backups"
    run = command(
        relay.environment, "backup", "--output-dir", str(output), "--include-key"
    )
    assert relay.wait_for(lambda: len(sender.queued()) >= len(sender.sent) // 2, 20)
    sender.stop()
    alice.close()
    assert run.returncode == 0, run.stderr
    queued_before_backup = sender.queued(before=backup_started)
    queued_after_backup = sender.queued() - queued_before_backup
    assert len(queued_before_backup) >= 300
    assert queued_after_backup, "the phone kept sending while the backup ran"

    archive = only_archive(output)
    assert archive.name.startswith("yaok-relay-test-")
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    assert f"wrote {archive}" in run.stdout
    verified = command({}, "verify-backup", str(archive))
    assert verified.returncode == 0, verified.stderr
    assert "is valid" in verified.stdout
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "relay_key", "yaok_relay.db"]
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest["row_counts"]["users"] == 2
    assert manifest["row_counts"]["mailbox_messages"] >= len(queued_before_backup)

    restored_dir = tmp_path / "restored"
    restored = command(
        relay.environment,
        "restore",
        str(archive),
        "--database",
        str(restored_dir / "yaok_relay.db"),
    )
    assert restored.returncode == 0, restored.stderr
    assert f"relay key restored to {restored_dir / 'relay_key'}" in restored.stdout
    assert oct((restored_dir / "yaok_relay.db").stat().st_mode & 0o777) == "0o600"
    relay.stop()

    second = relay_factory(restored_dir, **BUSY)
    # The restored key: phones that pinned the old relay accept this one.
    assert second.relay_public_key == relay.relay_public_key
    status, health = second.health()
    assert status == 200, health
    assert health["queue_size"] == manifest["row_counts"]["mailbox_messages"]
    bob_again = UdpPhone(second.udp_address, second.relay_public_key, bob.identity)
    bob.close()
    bob_again.register()
    delivered = drain_mailbox(bob_again)
    bob_again.close()
    assert queued_before_backup <= delivered
    assert len(delivered) == manifest["row_counts"]["mailbox_messages"]


def test_restore_refuses_database_in_use(relay_factory, tmp_path):
    relay = relay_factory(tmp_path / "live")
    output = tmp_path / "backups"
    made = command(relay.environment, "backup", "--output-dir", str(output))
    assert made.returncode == 0, made.stderr
    archive = only_archive(output)
    other = relay_factory(tmp_path / "other")

    in_use = command(other.environment, "restore", str(archive))
    assert in_use.returncode == 1
    lines = in_use.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"a relay is using {other.database}" in lines[0]
    assert "stop the relay first" in lines[0]

    other.stop()
    existing = command(other.environment, "restore", str(archive))
    assert existing.returncode == 1
    assert f"{other.database} already exists" in existing.stderr

    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "yaok_relay.db-wal").write_bytes(b"left from another database")
    wal_left = command(
        {}, "restore", str(archive), "--database", str(stale / "yaok_relay.db")
    )
    assert wal_left.returncode == 1
    assert "yaok_relay.db-wal already exists" in wal_left.stderr
    assert not (stale / "yaok_relay.db").exists()


def test_relay_waits_for_restore_lock(tmp_path):
    """A relay started during a restore reports it on /health, then opens the file."""
    from relay.storage.lock import DatabaseLock

    directory = tmp_path / "volume"
    directory.mkdir()
    lock = DatabaseLock(directory / "yaok_relay.db")
    lock.acquire(exclusive=True)
    relay = RelayProcess(directory, STORAGE_RETRY_INTERVAL_S=1).start()
    try:
        status, health = relay.health()
        assert status == 503
        assert "lock held" in health["reasons"][0]
        lock.release()
        assert relay.wait_for(lambda: relay.health()[0] == 200, 20)
    finally:
        lock.release()
        relay.stop()


def rewrite_archive(source: Path, target: Path, change) -> Path:
    """Copy an archive member by member, passing each (name, bytes) to change."""
    with tarfile.open(source) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(target, "w:gz") as tar:
        for member, data in members:
            data = change(member.name, data)
            if data is None:
                continue
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return target


def flip_page(name: str, data: bytes) -> bytes:
    if name != "yaok_relay.db":
        return data
    changed = bytearray(data)
    changed[5000] ^= 0xFF
    return bytes(changed)


def test_tampered_archives_fail_verify(relay, tmp_path):
    output = tmp_path / "backups"
    made = command(relay.environment, "backup", "--output-dir", str(output))
    assert made.returncode == 0, made.stderr
    archive = only_archive(output)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    not_gzip = tmp_path / "plain.tar.gz"
    not_gzip.write_bytes(gzip.decompress(archive.read_bytes())[:2048])
    cases = {
        truncated: "cannot read the tar.gz archive",
        not_gzip: "cannot read the tar.gz archive",
        rewrite_archive(archive, tmp_path / "flipped.tar.gz", flip_page): (
            "database checksum mismatch"
        ),
        rewrite_archive(
            archive,
            tmp_path / "no-manifest.tar.gz",
            lambda name, data: None if name == "manifest.json" else data,
        ): "manifest.json is missing",
        tmp_path / "absent.tar.gz": "file not found",
    }
    for path, reason in cases.items():
        run = command({}, "verify-backup", str(path))
        assert run.returncode == 1, path
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert f"backup {path} is invalid: {reason}" in lines[0]


def touch_archive(folder: Path, stamp: str) -> Path:
    path = folder / f"yaok-relay-test-{stamp}.tar.gz"
    path.write_bytes(b"placeholder")
    return path


def test_backup_prunes_by_retention(relay, tmp_path):
    output = tmp_path / "backups"
    output.mkdir()
    today = datetime.datetime.now(datetime.UTC).date()
    yesterday = today - datetime.timedelta(days=1)
    old_day = today - datetime.timedelta(days=40)
    ancient = today - datetime.timedelta(days=800)
    crafted = {
        "kept-yesterday-late": touch_archive(output, f"{yesterday:%Y%m%d}T230000Z"),
        "deleted-yesterday-early": touch_archive(output, f"{yesterday:%Y%m%d}T010000Z"),
        "kept-month-of-old-day": touch_archive(output, f"{old_day:%Y%m%d}T120000Z"),
        "deleted-ancient": touch_archive(output, f"{ancient:%Y%m%d}T120000Z"),
    }
    other_file = output / "notes.txt"
    other_file.write_text("not an archive")
    run = command(relay.environment, "backup", "--output-dir", str(output))
    assert run.returncode == 0, run.stderr
    for label, path in crafted.items():
        verb = "kept" if label.startswith("kept") else "deleted"
        assert f"backup: {verb} {path.name}" in run.stdout, label
        assert path.exists() == (verb == "kept"), label
    assert other_file.exists()
    assert len(list(output.glob("yaok-relay-test-*.tar.gz"))) == 3


def test_restore_beside_held_relay_after_corruption(relay_factory, tmp_path):
    """The corruption runbook on a relay process that keeps running."""
    relay = relay_factory(tmp_path / "volume", STORAGE_RETRY_INTERVAL_S=1, **BUSY)
    pid = relay.pid
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    bob.register()
    bob.send(bob.session.unregister())
    bob.receive()
    sender = Sender(alice, bob.user_id, max_messages=200, max_seconds=20)
    sender.run()
    alice.close()
    queued = sender.queued()
    assert len(queued) == 200
    made = command(relay.environment, "backup", "--output-dir", str(tmp_path / "out"))
    assert made.returncode == 0, made.stderr
    archive = only_archive(tmp_path / "out")

    with open(relay.database, "r+b") as file:
        file.write(os.urandom(100))
    assert relay.wait_for(lambda: relay.health()[0] == 503, 20)

    hold = relay.database.with_name("yaok_relay.db.hold")
    hold.touch()
    assert relay.wait_for(lambda: "held" in relay.health()[1]["reasons"][0], 20)
    refused = command(relay.environment, "restore", str(archive))
    assert refused.returncode == 1
    assert "already exists" in refused.stderr
    assert "--move-aside" in refused.stderr
    aside = relay.directory / "damaged"
    restored = command(
        relay.environment, "restore", str(archive), "--move-aside", str(aside)
    )
    assert restored.returncode == 0, restored.stderr
    assert (aside / "yaok_relay.db").exists()
    hold.unlink()

    assert relay.wait_for(lambda: relay.health()[0] == 200, 20)
    assert relay.pid == pid
    assert relay.events("database_held")
    assert relay.events("database_hold_ended")
    bob.register()
    assert drain_mailbox(bob) == queued
    bob.close()
