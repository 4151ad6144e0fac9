"""Restore a verified backup into an empty database path, with no relay running.

The restore takes the database's lock file exclusively for its whole run,
so it fails at once while a relay holds the file, and a relay starting
meanwhile waits for it (the relay retries STORAGE_RETRY_INTERVAL_S later).
A relay lets go of the file while `<database>.hold` exists, so a restore
can also run beside a relay process that keeps serving /health.
It never overwrites: an existing database, WAL or shared-memory file stops
it, because a WAL left from another database would be replayed into the
restored one and damage it. The archive is fully verified in a folder
beside the target, and the copy is moved into place with link(2), which
fails rather than replace a file created meanwhile.
"""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from relay.ops.archive import VerifiedArchive, verify_archive
from relay.ops.backup import TEMPORARY_PREFIX, file_sha256, sync_path
from relay.storage.lock import DatabaseInUse, DatabaseLock, hold_path


class RestoreRefused(Exception):
    """The restore did not start or did not finish; nothing was replaced."""


@dataclass(frozen=True, slots=True)
class Restored:
    manifest: dict
    database: Path
    key_outcome: str  # one sentence about the relay key


def companion_files(database: Path) -> list[Path]:
    """Return the database and the files SQLite keeps beside it."""
    return [database] + [
        database.with_name(database.name + suffix)
        for suffix in ("-wal", "-shm", "-journal")
    ]


def restore(
    archive: Path, database: Path, key_path: Path, move_aside: Path | None = None
) -> Restored:
    """Verify archive and restore it to database.

    With move_aside, an existing database and its -wal and -shm files are
    first moved into that folder (same volume), once the archive verified.
    Raises RestoreRefused or ArchiveInvalid, having replaced nothing.
    """
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = DatabaseLock(database)
    try:
        lock.acquire(exclusive=True)
    except DatabaseInUse:
        raise RestoreRefused(
            f"a relay is using {database} (it holds {lock.path}): stop the relay "
            f"first, or create {hold_path(database)} and wait until its /health "
            "reports the database held, then run the restore again"
        ) from None
    try:
        if move_aside is None:
            _refuse_existing(database)
        with tempfile.TemporaryDirectory(
            prefix=TEMPORARY_PREFIX + "restore-", dir=database.parent
        ) as work:
            verified = verify_archive(archive, Path(work))
            if move_aside is not None:
                _move_aside(database, move_aside)
            _refuse_existing(database)
            _place(verified.database, database)
            key_outcome = _restore_key(verified, key_path)
    finally:
        lock.release()
    return Restored(verified.manifest, database, key_outcome)


def _refuse_existing(database: Path) -> None:
    present = [path for path in companion_files(database) if path.exists()]
    if present:
        names = ", ".join(str(path) for path in present)
        raise RestoreRefused(
            f"{names} already exists: restore only into an empty path; move the "
            "old files aside first (the -wal and -shm too), for example with "
            "--move-aside FOLDER"
        )


def _move_aside(database: Path, folder: Path) -> None:
    """Move the database and its companion files into folder, keeping their names."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in companion_files(database):
        if not path.exists():
            continue
        target = folder / path.name
        if target.exists():
            raise RestoreRefused(f"{target} already exists: choose another folder")
        try:
            os.rename(path, target)
        except OSError as exc:
            raise RestoreRefused(
                f"cannot move {path} to {folder} ({exc}): choose a folder on the "
                "same volume"
            ) from exc


def _place(source: Path, target: Path) -> None:
    """Sync source, give it mode 0600 and link it to target, which must not exist."""
    source.chmod(0o600)
    sync_path(source)
    try:
        os.link(source, target)
    except FileExistsError:
        raise RestoreRefused(
            f"{target} appeared during the restore; nothing replaced"
        ) from None
    sync_path(target.parent)


def _restore_key(verified: VerifiedArchive, key_path: Path) -> str:
    if verified.relay_key is None:
        if key_path.exists():
            return f"relay key {key_path} kept (the archive holds no key)"
        return (
            f"no relay key at {key_path} and none in the archive: put the relay's "
            "key there before starting it, or it makes a new key that phones "
            "which pinned the old one refuse"
        )
    if key_path.exists():
        if file_sha256(key_path) == verified.manifest["relay_key"]["sha256"]:
            return f"relay key {key_path} kept (same as the archive's)"
        return (
            f"relay key {key_path} kept, but it differs from the archive's key: "
            "phones pinned the key the relay used when they registered"
        )
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written, not linked: the key may live on another volume than the work folder.
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(verified.relay_key.read_bytes())
        file.flush()
        os.fsync(file.fileno())
    sync_path(key_path.parent)
    return f"relay key restored to {key_path}"
