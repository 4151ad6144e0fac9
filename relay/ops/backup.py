"""Online backups: a consistent snapshot of the live database, packed with a manifest.

The snapshot comes from SQLite's online backup API in one step, which
copies every page inside a single read transaction: WAL lets the relay keep
committing meanwhile, and the copy is the database as of one commit. A
stepwise copy would restart each time the relay commits, and could never
finish under steady traffic. A file copy of a WAL database is not
consistent at all.

The archive is `yaok-relay-<region>-<YYYYMMDDTHHMMSSZ>.tar.gz`, so that
names sort by time, and holds manifest.json, the database file and, only
when asked for, the relay key. It is written to a hidden temporary file,
synced and renamed, so a crash never leaves a partial archive under the
final name. Archives are mode 0600: they hold the user registry and sealed
messages.
"""

import datetime
import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from relay import __version__
from relay.ops.health import disk_usage
from relay.ops.maintenance import (
    connect_existing,
    describe_problems,
    integrity_problems,
    wal_path,
)
from relay.storage.migrate import schema_version

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "yaok-relay-backup"
MANIFEST_VERSION = 1
COUNTED_TABLES = ("users", "mailbox_messages", "dedup_records")
ARCHIVE_PREFIX = "yaok-relay-"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
TEMPORARY_PREFIX = ".tmp-"
_CHUNK_BYTES = 1024 * 1024


class BackupError(Exception):
    """The backup could not be made; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: Path
    size: int
    sha256: str
    page_size: int
    page_count: int
    schema_version: int
    row_counts: dict[str, int]


def archive_name(region: str, created: datetime.datetime) -> str:
    return f"{ARCHIVE_PREFIX}{region}-{created.strftime(STAMP_FORMAT)}.tar.gz"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def count_rows(connection: sqlite3.Connection) -> dict[str, int]:
    return {
        table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in COUNTED_TABLES
    }


def take_snapshot(database: Path, target: Path, busy_timeout_s: float) -> Snapshot:
    """Copy the live database into target with the online backup API.

    The copy is switched to the rollback journal, so that it is one
    self-contained file, and checked with quick_check before it is packed.
    Raises BackupError when the source is damaged or the copy fails.
    """
    source = connect_existing(database, busy_timeout_s)
    copy = sqlite3.connect(target, isolation_level=None)
    try:
        # pages=-1 copies everything in one step, within one read transaction.
        source.backup(copy, pages=-1)
        copy.execute("PRAGMA journal_mode = DELETE").fetchall()
        problems = integrity_problems(copy, "quick_check")
        if problems:
            raise BackupError(
                f"the snapshot of {database} fails quick_check "
                f"({describe_problems(problems)}): "
                "the database is damaged; run `yaok-relay maintenance "
                "--integrity-check` and see docs/operations.md, Database corruption"
            )
        counts = count_rows(copy)
        version = schema_version(copy)
        page_size = copy.execute("PRAGMA page_size").fetchone()[0]
        page_count = copy.execute("PRAGMA page_count").fetchone()[0]
    except sqlite3.Error as exc:
        raise BackupError(f"snapshot of {database} failed: {exc}") from exc
    finally:
        copy.close()
        source.close()
    return Snapshot(
        path=target,
        size=target.stat().st_size,
        sha256=file_sha256(target),
        page_size=page_size,
        page_count=page_count,
        schema_version=version,
        row_counts=counts,
    )


def build_manifest(
    snapshot: Snapshot,
    *,
    database: Path,
    region: str,
    created: datetime.datetime,
    key_sha256: str | None,
) -> dict:
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "relay_version": __version__,
        "region": region,
        "source_path": str(database.resolve()),
        "database": {
            "file": database.name,
            "size_bytes": snapshot.size,
            "sha256": snapshot.sha256,
            "page_size": snapshot.page_size,
            "page_count": snapshot.page_count,
            "schema_version": snapshot.schema_version,
        },
        "row_counts": snapshot.row_counts,
        "relay_key": None,
    }
    if key_sha256 is not None:
        manifest["relay_key"] = {"file": "relay_key", "sha256": key_sha256}
    return manifest


def _member(name: str, size: int, created: datetime.datetime) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(created.timestamp())
    return info


def write_archive(
    final: Path,
    manifest: dict,
    snapshot: Snapshot,
    key_path: Path | None,
    created: datetime.datetime,
) -> None:
    """Write the tar.gz under a temporary name, sync it, then rename it to final."""
    if final.exists():
        raise BackupError(f"{final} already exists: wait a second and run again")
    descriptor, temporary_name = tempfile.mkstemp(
        prefix=TEMPORARY_PREFIX, suffix=".tar.gz", dir=final.parent
    )
    temporary = Path(temporary_name)
    try:
        with os.fdopen(descriptor, "wb") as raw:
            _pack(raw, manifest, snapshot, key_path, created)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_path(final.parent)


def _pack(
    raw: io.BufferedWriter,
    manifest: dict,
    snapshot: Snapshot,
    key_path: Path | None,
    created: datetime.datetime,
) -> None:
    encoded = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    # Level 6 is gzip's own default: level 9 costs much more time for little.
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as archive:
        archive.addfile(
            _member(MANIFEST_NAME, len(encoded), created), io.BytesIO(encoded)
        )
        with open(snapshot.path, "rb") as database:
            member = _member(manifest["database"]["file"], snapshot.size, created)
            archive.addfile(member, database)
        if key_path is not None:
            key_bytes = key_path.read_bytes()
            archive.addfile(
                _member("relay_key", len(key_bytes), created), io.BytesIO(key_bytes)
            )


def sync_path(path: Path) -> None:
    """Flush a file, or a folder's list of entries, to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_free_space(database: Path, output_dir: Path) -> None:
    """Raise BackupError unless output_dir has room for a snapshot and its archive."""
    needed = 2 * (database.stat().st_size + _size(wal_path(database)))
    free, _ = disk_usage(output_dir)
    if free is not None and free < needed:
        raise BackupError(
            f"not enough free space in {output_dir}: a backup of {database} needs "
            f"about {needed} bytes and {free} are free; free space or choose "
            "--output-dir on another volume"
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def create_backup(
    database: Path,
    output_dir: Path,
    *,
    region: str,
    key_path: Path | None,
    busy_timeout_s: float,
    now: datetime.datetime | None = None,
) -> tuple[Path, dict]:
    """Snapshot the live database into a new archive in output_dir.

    key_path, when given, adds the relay key. Returns the archive path and
    its manifest. Raises BackupError with a one-line reason.
    """
    if not database.exists():
        raise BackupError(f"database {database} not found: check DATABASE_URL")
    if key_path is not None and not key_path.is_file():
        raise BackupError(f"relay key {key_path} not found: check RELAY_KEY_PATH")
    output_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_free_space(database, output_dir)
    created = (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0)
    final = output_dir / archive_name(region, created)
    with tempfile.TemporaryDirectory(prefix=TEMPORARY_PREFIX, dir=output_dir) as work:
        snapshot = take_snapshot(database, Path(work) / database.name, busy_timeout_s)
        key_sha256 = None if key_path is None else file_sha256(key_path)
        manifest = build_manifest(
            snapshot,
            database=database,
            region=region,
            created=created,
            key_sha256=key_sha256,
        )
        write_archive(final, manifest, snapshot, key_path, created)
    return final, manifest
