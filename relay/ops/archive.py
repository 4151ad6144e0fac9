"""Verify a backup archive: listing, manifest, checksums, integrity and row counts.

Verification extracts the database into a work folder and checks the copy
there, never the archive's claims alone. Any failure raises ArchiveInvalid
with one line naming the archive and what is wrong.
"""

import hashlib
import json
import re
import sqlite3
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from relay.ops.backup import (
    COUNTED_TABLES,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    count_rows,
)
from relay.ops.maintenance import describe_problems, integrity_problems
from relay.storage.connection import SQLITE_MAGIC
from relay.storage.migrate import schema_version

# A relay database holds at least its schema: page 1 plus one page per table
# and index. Fewer pages than this means an empty or truncated file.
MIN_DATABASE_PAGES = 8
KEY_MEMBER = "relay_key"
MAX_MANIFEST_BYTES = 1024 * 1024
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1024 * 1024


class ArchiveInvalid(Exception):
    """The archive failed verification; the message is one line."""


@dataclass(frozen=True, slots=True)
class VerifiedArchive:
    archive: Path
    manifest: dict
    database: Path  # the extracted, checked copy in the work folder
    relay_key: Path | None  # the extracted key, when the archive has one


def verify_archive(archive: Path, work_dir: Path) -> VerifiedArchive:
    """Check every property of a backup archive, extracting into work_dir.

    work_dir must exist and be empty of the archive's member names.
    """
    return _Checker(archive, work_dir).run()


class _Checker:
    def __init__(self, archive: Path, work_dir: Path) -> None:
        self.archive = archive
        self.work_dir = work_dir

    def fail(self, reason: str) -> ArchiveInvalid:
        return ArchiveInvalid(f"backup {self.archive} is invalid: {reason}")

    def run(self) -> VerifiedArchive:
        if not self.archive.is_file():
            raise self.fail("file not found")
        if self.archive.stat().st_size == 0:
            raise self.fail("file is empty")
        try:
            with tarfile.open(self.archive, "r:gz") as tar:
                members = self._list(tar)
                manifest = self._manifest(tar, members)
                database = self._extract_database(tar, members, manifest)
                key = self._extract_key(tar, members, manifest)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise self.fail(f"cannot read the tar.gz archive ({exc})") from exc
        self._check_database(database, manifest)
        return VerifiedArchive(self.archive, manifest, database, key)

    # --- listing and manifest ----------------------------------------------------

    def _list(self, tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
        # getmembers reads the whole stream, so a truncated or damaged gzip
        # fails here.
        members = {}
        for member in tar.getmembers():
            if not member.isfile() or not _SAFE_NAME.fullmatch(member.name):
                raise self.fail(f"unexpected member {member.name!r}")
            if member.name in members:
                raise self.fail(f"member {member.name!r} appears twice")
            members[member.name] = member
        if MANIFEST_NAME not in members:
            raise self.fail(f"{MANIFEST_NAME} is missing")
        return members

    def _manifest(self, tar: tarfile.TarFile, members: dict) -> dict:
        member = members[MANIFEST_NAME]
        if member.size > MAX_MANIFEST_BYTES:
            raise self.fail(f"{MANIFEST_NAME} is over {MAX_MANIFEST_BYTES} bytes")
        source = tar.extractfile(member)
        assert source is not None  # regular files only, checked by _list
        raw = source.read()
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise self.fail(f"{MANIFEST_NAME} is not valid JSON ({exc})") from None
        problem = manifest_problem(manifest)
        if problem:
            raise self.fail(f"{MANIFEST_NAME}: {problem}")
        expected = {MANIFEST_NAME, manifest["database"]["file"]}
        if manifest["relay_key"] is not None:
            expected.add(KEY_MEMBER)
        if set(members) != expected:
            raise self.fail(
                f"members {sorted(members)} do not match the manifest's "
                f"{sorted(expected)}"
            )
        return manifest

    # --- extraction --------------------------------------------------------------

    def _extract_database(
        self, tar: tarfile.TarFile, members: dict, manifest: dict
    ) -> Path:
        described = manifest["database"]
        member = members[described["file"]]
        if member.size != described["size_bytes"]:
            raise self.fail(
                f"database member is {member.size} bytes, the manifest says "
                f"{described['size_bytes']}"
            )
        target = self.work_dir / described["file"]
        digest = _extract(tar, member, target)
        if digest != described["sha256"]:
            raise self.fail(
                f"database checksum mismatch: SHA-256 {digest}, the manifest says "
                f"{described['sha256']}"
            )
        return target

    def _extract_key(
        self, tar: tarfile.TarFile, members: dict, manifest: dict
    ) -> Path | None:
        described = manifest["relay_key"]
        if described is None:
            return None
        target = self.work_dir / KEY_MEMBER
        digest = _extract(tar, members[KEY_MEMBER], target, mode=0o600)
        if digest != described["sha256"]:
            raise self.fail("relay key checksum does not match the manifest")
        text = target.read_text(encoding="ascii", errors="replace").strip()
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raise self.fail("relay key member does not hold 64 hex characters")
        return target

    # --- the database copy ---------------------------------------------------------

    def _check_database(self, database: Path, manifest: dict) -> None:
        described = manifest["database"]
        with open(database, "rb") as file:
            header = file.read(100)
        if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
            raise self.fail("database member is not an SQLite file")
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65_536 if page_size == 1 else page_size
        page_count = int.from_bytes(header[28:32], "big")
        size = database.stat().st_size
        if page_count < MIN_DATABASE_PAGES or size != page_size * page_count:
            raise self.fail(
                f"database is {size} bytes with {page_count} pages of {page_size} "
                f"bytes; a relay database has at least {MIN_DATABASE_PAGES} pages "
                "and its size is the page size times the page count"
            )
        try:
            self._check_contents(database, described, manifest["row_counts"])
        except sqlite3.Error as exc:
            raise self.fail(f"database cannot be read ({exc})") from exc

    def _check_contents(self, database: Path, described: dict, counts: dict) -> None:
        # immutable=1: the copy is private, so SQLite needs no locks or -shm.
        uri = f"file:{database.resolve()}?mode=ro&immutable=1"
        connection = sqlite3.connect(uri, uri=True)
        try:
            problems = integrity_problems(connection)
            if problems:
                reported = describe_problems(problems)
                raise self.fail(f"integrity_check reports {reported}")
            found = count_rows(connection)
            if found != counts:
                raise self.fail(
                    f"row counts {found} do not match the manifest's {counts}"
                )
            version = schema_version(connection)
            if version != described["schema_version"]:
                raise self.fail(
                    f"schema version {version} does not match the manifest's "
                    f"{described['schema_version']}"
                )
        finally:
            connection.close()


def manifest_problem(manifest: object) -> str:
    """Return what is wrong with a parsed manifest, or "" when it is valid."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if manifest.get("format") != MANIFEST_FORMAT:
        return f"format is {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}"
    if manifest.get("format_version") != MANIFEST_VERSION:
        return f"format_version is {manifest.get('format_version')!r}, expected 1"
    for name in ("created_at", "relay_version", "region", "source_path"):
        if not isinstance(manifest.get(name), str):
            return f"{name} is missing or not a string"
    return (
        _database_problem(manifest.get("database"))
        or _counts_problem(manifest.get("row_counts"))
        or _key_problem(manifest.get("relay_key", "missing"))
    )


def _database_problem(database: object) -> str:
    if not isinstance(database, dict):
        return "database is missing or not an object"
    name = database.get("file")
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        return "database.file is missing or not a plain file name"
    if name in (MANIFEST_NAME, KEY_MEMBER):
        return f"database.file may not be {name!r}"
    for field in ("size_bytes", "page_size", "page_count", "schema_version"):
        value = database.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"database.{field} is missing or not a non-negative integer"
    if not isinstance(database.get("sha256"), str) or not _SHA256.fullmatch(
        database["sha256"]
    ):
        return "database.sha256 is missing or not 64 lowercase hex characters"
    return ""


def _counts_problem(counts: object) -> str:
    if not isinstance(counts, dict) or set(counts) != set(COUNTED_TABLES):
        return f"row_counts must name exactly {', '.join(COUNTED_TABLES)}"
    for table, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"row_counts.{table} is not a non-negative integer"
    return ""


def _key_problem(key: object) -> str:
    if key is None:
        return ""
    if not isinstance(key, dict) or key.get("file") != KEY_MEMBER:
        return 'relay_key must be null or {"file": "relay_key", "sha256": ...}'
    if not isinstance(key.get("sha256"), str) or not _SHA256.fullmatch(key["sha256"]):
        return "relay_key.sha256 is not 64 lowercase hex characters"
    return ""


def _extract(
    tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, mode: int = 0o600
) -> str:
    """Copy a member into target (created new, with mode); return its SHA-256."""
    source: IO[bytes] | None = tar.extractfile(member)
    assert source is not None
    digest = hashlib.sha256()
    with open(target, "xb") as output:
        target.chmod(mode)
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
            output.write(chunk)
    return digest.hexdigest()
