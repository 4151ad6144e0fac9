"""Backup archives made from real database files: verification and restore."""

import hashlib
import io
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest

from relay.ops.archive import ArchiveInvalid, manifest_problem, verify_archive
from relay.ops.backup import BackupError, create_backup
from relay.ops.restore import RestoreRefused, restore
from relay.storage.lock import DatabaseLock
from relay.storage.migrate import migrate

KEY_TEXT = "ab" * 32 + "\n"


def make_database(path: Path, users: int = 3, messages: int = 40) -> Path:
    migrate(path)
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.executemany(
            "INSERT INTO users VALUES (?, ?, ?, 1, 1)",
            [(f"user-{n}", bytes(32), bytes(32)) for n in range(users)],
        )
        connection.executemany(
            "INSERT INTO mailbox_messages (recipient_id, sender_id, message_id, "
            "received_at_ms, expires_at_ms, payload, trace_id) "
            "VALUES ('user-0', 'user-1', ?, 1, 2, ?, 't')",
            [(str(n), b"sealed" * 50) for n in range(messages)],
        )
        connection.execute("INSERT INTO dedup_records VALUES ('user-1', 'gone', 1, 1)")
    connection.close()
    return path


@pytest.fixture
def source(tmp_path) -> Path:
    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "relay_key").write_text(KEY_TEXT)
    (folder / "relay_key").chmod(0o600)
    return make_database(folder / "yaok_relay.db")


def backup(source: Path, output: Path, with_key: bool = False) -> tuple[Path, dict]:
    key = source.parent / "relay_key" if with_key else None
    return create_backup(source, output, region="ams", key_path=key, busy_timeout_s=5)


def verify(archive: Path, tmp_path: Path):
    work = tmp_path / f"work-{len(list(tmp_path.glob('work-*')))}"
    work.mkdir()
    return verify_archive(archive, work)


def test_backup_manifest_describes_snapshot(source, tmp_path):
    archive, manifest = backup(source, tmp_path / "out")
    assert archive.parent == tmp_path / "out"
    assert manifest["row_counts"] == {
        "users": 3,
        "mailbox_messages": 40,
        "dedup_records": 1,
    }
    assert manifest["database"]["schema_version"] == 1
    assert manifest["relay_key"] is None
    assert manifest["source_path"] == str(source.resolve())
    assert manifest_problem(manifest) == ""
    verified = verify(archive, tmp_path)
    digest = hashlib.sha256(verified.database.read_bytes()).hexdigest()
    assert digest == manifest["database"]["sha256"]
    assert verified.relay_key is None
    assert list((tmp_path / "out").iterdir()) == [archive]


def test_backup_with_key_packs_it(source, tmp_path):
    archive, manifest = backup(source, tmp_path / "out", with_key=True)
    assert manifest["relay_key"]["file"] == "relay_key"
    verified = verify(archive, tmp_path)
    assert verified.relay_key.read_text() == KEY_TEXT


def test_backup_of_missing_database_fails(tmp_path):
    with pytest.raises(BackupError, match="not found"):
        backup(tmp_path / "absent.db", tmp_path / "out")
    assert not (tmp_path / "absent.db").exists()


def repack(archive: Path, target: Path, change) -> Path:
    """Copy an archive, letting change(name, data) replace or drop (None) members."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(target, "w:gz") as tar:
        for member, data in members:
            new = change(member.name, data)
            if new is None:
                continue
            member.size = len(new)
            tar.addfile(member, io.BytesIO(new))
    return target


def edit_manifest(edit):
    def change(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        edit(manifest)
        return json.dumps(manifest).encode()

    return change


def set_rows(manifest: dict) -> None:
    manifest["row_counts"]["users"] = 99


def set_format(manifest: dict) -> None:
    manifest["format"] = "other"


def drop_counts(manifest: dict) -> None:
    del manifest["row_counts"]["dedup_records"]


def claim_key(manifest: dict) -> None:
    manifest["relay_key"] = {"file": "relay_key", "sha256": "0" * 64}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (edit_manifest(set_rows), "row counts"),
        (edit_manifest(set_format), "format is 'other'"),
        (edit_manifest(drop_counts), "row_counts must name exactly"),
        (edit_manifest(claim_key), "do not match the manifest's"),
        (lambda name, data: b"not json" if name == "manifest.json" else data, "JSON"),
        (lambda name, data: data + b"x" if name == "yaok_relay.db" else data, "bytes"),
    ],
    ids=["rows", "format", "counts", "key", "json", "size"],
)
def test_tampered_archive_is_invalid(source, tmp_path, change, reason):
    archive, _ = backup(source, tmp_path / "out")
    tampered = repack(archive, tmp_path / "tampered.tar.gz", change)
    with pytest.raises(ArchiveInvalid) as caught:
        verify(tampered, tmp_path)
    message = str(caught.value)
    assert message.startswith(f"backup {tampered} is invalid: ")
    assert reason in message
    assert "\n" not in message


def test_unsafe_member_name_is_invalid(tmp_path):
    hostile = tmp_path / "hostile.tar.gz"
    with tarfile.open(hostile, "w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ArchiveInvalid, match=r"unexpected member '\.\./escape'"):
        verify(hostile, tmp_path)
    assert not (tmp_path / "escape").exists()


def test_tiny_database_is_invalid(tmp_path):
    tiny = tmp_path / "tiny" / "yaok_relay.db"
    tiny.parent.mkdir()
    connection = sqlite3.connect(tiny)
    for table in ("users", "mailbox_messages", "dedup_records"):
        connection.execute(f"CREATE TABLE {table} (id TEXT)")
    connection.close()
    archive, _ = backup(tiny, tmp_path / "out")
    with pytest.raises(ArchiveInvalid, match="at least 8 pages"):
        verify(archive, tmp_path)


def test_restore_places_database_and_key(source, tmp_path):
    archive, manifest = backup(source, tmp_path / "out", with_key=True)
    target = tmp_path / "fresh" / "yaok_relay.db"
    restored = restore(archive, target, target.parent / "relay_key")
    key = target.parent / "relay_key"
    assert restored.key_outcome == f"relay key restored to {key}"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert oct((target.parent / "relay_key").stat().st_mode & 0o777) == "0o600"
    assert (target.parent / "relay_key").read_text() == KEY_TEXT
    connection = sqlite3.connect(target)
    try:
        users = connection.execute("SELECT count(*) FROM users").fetchone()[0]
    finally:
        connection.close()
    assert users == manifest["row_counts"]["users"]
    leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_restore_keeps_existing_key(source, tmp_path):
    archive, _ = backup(source, tmp_path / "out", with_key=True)
    target = tmp_path / "fresh" / "yaok_relay.db"
    target.parent.mkdir()
    (target.parent / "relay_key").write_text("cd" * 32 + "\n")
    restored = restore(archive, target, target.parent / "relay_key")
    assert "kept, but it differs from the archive's key" in restored.key_outcome
    assert (target.parent / "relay_key").read_text() == "cd" * 32 + "\n"


def test_restore_without_key_warns(source, tmp_path):
    archive, _ = backup(source, tmp_path / "out")
    target = tmp_path / "fresh" / "yaok_relay.db"
    restored = restore(archive, target, target.parent / "relay_key")
    assert "none in the archive" in restored.key_outcome
    assert not (target.parent / "relay_key").exists()


def test_restore_refuses_locked_or_existing_target(source, tmp_path):
    archive, _ = backup(source, tmp_path / "out")
    target = tmp_path / "fresh" / "yaok_relay.db"
    with DatabaseLock(target) as relay:
        relay.acquire(exclusive=False)
        with pytest.raises(RestoreRefused, match="a relay is using"):
            restore(archive, target, target.parent / "relay_key")
    assert not target.exists()
    restore(archive, target, target.parent / "relay_key")
    before = target.read_bytes()
    with pytest.raises(RestoreRefused, match="already exists"):
        restore(archive, target, target.parent / "relay_key")
    assert target.read_bytes() == before


def test_restore_of_invalid_archive_leaves_nothing(source, tmp_path):
    archive, _ = backup(source, tmp_path / "out")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:300])
    target = tmp_path / "fresh" / "yaok_relay.db"
    with pytest.raises(ArchiveInvalid):
        restore(broken, target, target.parent / "relay_key")
    assert sorted(p.name for p in target.parent.iterdir()) == ["yaok_relay.db.lock"]


def test_restore_moves_damaged_files_aside(source, tmp_path):
    archive, manifest = backup(source, tmp_path / "out")
    target = tmp_path / "volume" / "yaok_relay.db"
    target.parent.mkdir()
    target.write_bytes(b"damaged")
    (target.parent / "yaok_relay.db-wal").write_bytes(b"stale log")
    aside = tmp_path / "volume" / "damaged"
    restore(archive, target, target.parent / "relay_key", move_aside=aside)
    moved = sorted(p.name for p in aside.iterdir())
    assert moved == ["yaok_relay.db", "yaok_relay.db-wal"]
    assert (aside / "yaok_relay.db").read_bytes() == b"damaged"
    assert not (target.parent / "yaok_relay.db-wal").exists()
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    assert digest == manifest["database"]["sha256"]


def test_invalid_archive_moves_nothing_aside(source, tmp_path):
    target = tmp_path / "volume" / "yaok_relay.db"
    target.parent.mkdir()
    target.write_bytes(b"damaged")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not an archive")
    aside = tmp_path / "aside"
    with pytest.raises(ArchiveInvalid):
        restore(broken, target, target.parent / "relay_key", move_aside=aside)
    assert target.read_bytes() == b"damaged"
    assert not aside.exists()
