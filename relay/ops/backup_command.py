"""`yaok-relay backup`, `verify-backup` and `restore`: the operator's commands.

Each prints what it did on stdout and, on failure, one line on stderr with
exit code 1 (2 for bad arguments or settings).
"""

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

from relay.config import ConfigError, Settings, load_settings


def say(command: str, line: str) -> None:
    print(f"{command}: {line}", flush=True)


def fail(line: str) -> int:
    print(f"yaok-relay: {line}", file=sys.stderr, flush=True)
    return 1


def describe_counts(counts: dict[str, int]) -> str:
    from relay.ops.backup import COUNTED_TABLES

    return ", ".join(f"{counts[table]} {table}" for table in COUNTED_TABLES)


def _settings() -> Settings | None:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc))
        return None


# --- backup ------------------------------------------------------------------------


def backup_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yaok-relay backup",
        description="Snapshot the live database into a .tar.gz archive with a "
        "manifest, then delete archives the retention policy does not keep.",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="folder for the archives (default: BACKUP_DIR, else backups beside "
        "the database)",
    )
    parser.add_argument(
        "--database", type=Path, help="database file (default: from DATABASE_URL)"
    )
    parser.add_argument(
        "--include-key",
        action="store_true",
        help="also pack the relay's private key; anyone holding such an archive "
        "can impersonate the relay (see docs/operations.md)",
    )
    parser.add_argument(
        "--keep-daily",
        type=int,
        help="days whose newest archive is kept (default: BACKUP_KEEP_DAILY, 30)",
    )
    parser.add_argument(
        "--keep-monthly",
        type=int,
        help="months whose newest archive is kept (default: BACKUP_KEEP_MONTHLY, 12)",
    )
    parser.add_argument(
        "--no-prune", action="store_true", help="keep every existing archive"
    )
    return parser


def run_backup(argv: list[str]) -> int:
    args = backup_parser().parse_args(argv)
    settings = _settings()
    if settings is None:
        return 2
    keep_daily = args.keep_daily
    if keep_daily is None:
        keep_daily = settings.backup_keep_daily
    keep_monthly = args.keep_monthly
    if keep_monthly is None:
        keep_monthly = settings.backup_keep_monthly
    if keep_daily < 1 or keep_monthly < 0:
        return fail("--keep-daily must be at least 1 and --keep-monthly at least 0")

    from relay.ops.backup import BackupError, create_backup
    from relay.ops.retention import prune

    database = args.database or settings.database_path
    output_dir = args.output_dir or settings.backup_folder
    try:
        archive, manifest = create_backup(
            database,
            output_dir,
            region=settings.fly_region,
            key_path=settings.key_path if args.include_key else None,
            busy_timeout_s=settings.maintenance_busy_timeout_s,
        )
    except (BackupError, OSError) as exc:
        return fail(f"backup failed: {exc}")
    counts = describe_counts(manifest["row_counts"])
    key = "with the relay key" if manifest["relay_key"] else "without the relay key"
    say(
        "backup",
        f"wrote {archive} ({archive.stat().st_size} bytes; database "
        f"{manifest['database']['size_bytes']} bytes, schema version "
        f"{manifest['database']['schema_version']}; {counts}; {key})",
    )
    if args.no_prune:
        return 0
    now = datetime.datetime.now(datetime.UTC)
    pruned = prune(output_dir, now, keep_daily, keep_monthly)
    for kept in pruned.kept:
        say("backup", f"kept {kept.path.name}")
    for deleted in pruned.deleted:
        say("backup", f"deleted {deleted.path.name}")
    for path in pruned.removed_temporary:
        say("backup", f"removed {path.name}, left by an interrupted run")
    return 0


# --- verify-backup --------------------------------------------------------------------


def verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yaok-relay verify-backup",
        description="Check a backup archive: the archive can be listed, the "
        "manifest is valid, the checksums match, integrity_check passes on an "
        "extracted copy, the row counts match and the size is sane.",
    )
    parser.add_argument("archive", type=Path, help="the .tar.gz to check")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="folder for the extracted copy, which is deleted afterwards "
        "(default: the system's temporary folder)",
    )
    return parser


def run_verify(argv: list[str]) -> int:
    args = verify_parser().parse_args(argv)
    from relay.ops.archive import ArchiveInvalid, verify_archive

    try:
        with tempfile.TemporaryDirectory(
            prefix=".tmp-verify-", dir=args.work_dir
        ) as work:
            verified = verify_archive(args.archive, Path(work))
    except ArchiveInvalid as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot verify {args.archive}: {exc}")
    manifest = verified.manifest
    counts = describe_counts(manifest["row_counts"])
    say(
        "verify-backup",
        f"{args.archive} is valid: created {manifest['created_at']} in region "
        f"{manifest['region']} by relay {manifest['relay_version']}; database "
        f"{manifest['database']['size_bytes']} bytes, integrity ok, schema version "
        f"{manifest['database']['schema_version']}; {counts}; relay key "
        f"{'included' if manifest['relay_key'] else 'not included'}",
    )
    return 0


# --- restore ------------------------------------------------------------------------


def restore_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yaok-relay restore",
        description="Verify a backup archive and restore it into an empty "
        "database path. Stop the relay first, or create DATABASE.hold and wait "
        "until /health reports the database held: the restore refuses a "
        "database in use and never overwrites a file.",
    )
    parser.add_argument("archive", type=Path, help="the .tar.gz to restore")
    parser.add_argument(
        "--database",
        type=Path,
        help="database file to create (default: the path in DATABASE_URL)",
    )
    parser.add_argument(
        "--move-aside",
        type=Path,
        metavar="FOLDER",
        help="first move an existing database and its -wal and -shm files into "
        "FOLDER (on the same volume), after the archive verified",
    )
    parser.add_argument(
        "--key-path",
        type=Path,
        help="where the relay key goes, if the archive has one (default: "
        "RELAY_KEY_PATH, else relay_key beside the database)",
    )
    return parser


def run_restore(argv: list[str]) -> int:
    args = restore_parser().parse_args(argv)
    settings = _settings()
    if settings is None:
        return 2
    from relay.ops.archive import ArchiveInvalid
    from relay.ops.restore import RestoreRefused, restore
    from relay.storage.lock import hold_path

    database = args.database or settings.database_path
    if args.key_path is not None:
        key_path = args.key_path
    elif args.database is not None and settings.relay_key_path is None:
        key_path = database.parent / "relay_key"
    else:
        key_path = settings.key_path
    try:
        restored = restore(args.archive, database, key_path, args.move_aside)
    except (ArchiveInvalid, RestoreRefused) as exc:
        return fail(f"restore refused: {exc}")
    except OSError as exc:
        return fail(f"restore failed: {exc}")
    counts = describe_counts(restored.manifest["row_counts"])
    say(
        "restore",
        f"restored {database} (mode 0600) from {args.archive}, created "
        f"{restored.manifest['created_at']}: {counts}",
    )
    say("restore", restored.key_outcome)
    say(
        "restore",
        f"next: start the relay, or remove {hold_path(database)} if you created "
        "it, then check GET /health",
    )
    return 0
