"""Backup retention: the newest archive of each recent day and of each recent month.

With the defaults (30 days, 12 months) a folder keeps at most 30 daily and
12 monthly archives per region, and an archive can count for both. Only
files named like the backups this relay writes are considered, each region
on its own. The time comes from the name, not from the file's mtime, which
a copy between machines may change. Archives dated in the future are kept.
"""

import datetime
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from relay.ops.backup import ARCHIVE_PREFIX, STAMP_FORMAT, TEMPORARY_PREFIX

_ARCHIVE_NAME = re.compile(
    re.escape(ARCHIVE_PREFIX) + r"(?P<region>.+)-(?P<stamp>\d{8}T\d{6}Z)\.tar\.gz"
)
# A temporary file or folder older than this is left from a backup that
# crashed; a backup running now is younger.
STALE_TEMPORARY_S = 6 * 3600


@dataclass(frozen=True, slots=True)
class Archive:
    path: Path
    region: str
    created: datetime.datetime


@dataclass
class Pruned:
    kept: list[Archive]
    deleted: list[Archive]
    removed_temporary: list[Path]


def parse_archive(path: Path) -> Archive | None:
    """Return the archive a file name describes, or None for other files."""
    match = _ARCHIVE_NAME.fullmatch(path.name)
    if match is None:
        return None
    try:
        created = datetime.datetime.strptime(match["stamp"], STAMP_FORMAT)
    except ValueError:
        return None
    return Archive(path, match["region"], created.replace(tzinfo=datetime.UTC))


def find_archives(folder: Path) -> list[Archive]:
    archives = (parse_archive(path) for path in folder.iterdir() if path.is_file())
    return sorted((a for a in archives if a is not None), key=lambda a: a.path.name)


def choose_kept(
    archives: list[Archive],
    now: datetime.datetime,
    keep_daily: int,
    keep_monthly: int,
) -> set[Path]:
    """Return the paths to keep: per region, the newest of each recent day and month.

    Days and months count back from now's, which is the first of each:
    keep_daily=30 covers today and the 29 days before, keep_monthly=12
    this month and the 11 before.
    """
    kept: set[Path] = set()
    today = now.date()
    this_month = now.year * 12 + now.month - 1
    days_seen: set[tuple[str, datetime.date]] = set()
    months_seen: set[tuple[str, int]] = set()
    for archive in sorted(archives, key=lambda a: a.created, reverse=True):
        if archive.created > now:
            kept.add(archive.path)
            continue
        day = archive.created.date()
        recent_day = (today - day).days < keep_daily
        if recent_day and (archive.region, day) not in days_seen:
            days_seen.add((archive.region, day))
            kept.add(archive.path)
        month = archive.created.year * 12 + archive.created.month - 1
        recent_month = this_month - month < keep_monthly
        if recent_month and (archive.region, month) not in months_seen:
            months_seen.add((archive.region, month))
            kept.add(archive.path)
    return kept


def prune(
    folder: Path,
    now: datetime.datetime,
    keep_daily: int,
    keep_monthly: int,
    *,
    dry_run: bool = False,
) -> Pruned:
    """Delete the archives choose_kept does not keep, and stale temporary files."""
    archives = find_archives(folder)
    kept_paths = choose_kept(archives, now, keep_daily, keep_monthly)
    kept = [a for a in archives if a.path in kept_paths]
    deleted = [a for a in archives if a.path not in kept_paths]
    stale = _stale_temporaries(folder)
    if not dry_run:
        for archive in deleted:
            archive.path.unlink(missing_ok=True)
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return Pruned(kept, deleted, stale)


def _stale_temporaries(folder: Path) -> list[Path]:
    cutoff = time.time() - STALE_TEMPORARY_S
    return sorted(
        path
        for path in folder.glob(TEMPORARY_PREFIX + "*")
        if path.stat().st_mtime < cutoff
    )
