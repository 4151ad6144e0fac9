"""Backup retention on folders of archives with crafted timestamps."""

import datetime
import os
import time
from pathlib import Path

from relay.ops.backup import archive_name
from relay.ops.retention import choose_kept, find_archives, parse_archive, prune

NOW = datetime.datetime(2026, 3, 15, 2, 0, tzinfo=datetime.UTC)


def at(*fields: int) -> datetime.datetime:
    return datetime.datetime(*fields, tzinfo=datetime.UTC)


def make(folder: Path, created: datetime.datetime, region: str = "ams") -> Path:
    path = folder / archive_name(region, created)
    path.write_bytes(b"archive")
    return path


def kept_names(folder: Path, keep_daily: int = 30, keep_monthly: int = 12) -> set[str]:
    archives = find_archives(folder)
    return {path.name for path in choose_kept(archives, NOW, keep_daily, keep_monthly)}


def test_name_sorts_by_time():
    early = archive_name("ams", at(2026, 1, 9, 23, 59, 59))
    late = archive_name("ams", at(2026, 1, 10, 0, 0, 0))
    assert early == "yaok-relay-ams-20260109T235959Z.tar.gz"
    assert sorted([late, early]) == [early, late]


def test_parse_archive_reads_region_and_time():
    archive = parse_archive(Path("yaok-relay-us-west-20260102T030405Z.tar.gz"))
    assert archive is not None
    assert archive.region == "us-west"
    assert archive.created == at(2026, 1, 2, 3, 4, 5)
    assert parse_archive(Path("yaok-relay-ams-20261302T030405Z.tar.gz")) is None
    assert parse_archive(Path("notes.txt")) is None


def test_newest_of_each_day_kept(tmp_path):
    late = make(tmp_path, at(2026, 3, 14, 23, 0))
    early = make(tmp_path, at(2026, 3, 14, 1, 0))
    today = make(tmp_path, at(2026, 3, 15, 1, 0))
    assert kept_names(tmp_path) == {late.name, today.name}
    assert early.name not in kept_names(tmp_path)


def test_daily_window_is_thirty_days(tmp_path):
    inside = make(tmp_path, at(2026, 2, 14, 12, 0))  # 29 days before today
    outside = make(tmp_path, at(2026, 2, 13, 12, 0))  # 30 days before today
    newer_in_february = make(tmp_path, at(2026, 2, 20, 12, 0))
    kept = kept_names(tmp_path)
    assert inside.name in kept
    assert newer_in_february.name in kept
    # Outside the daily window, and not the newest of February.
    assert outside.name not in kept


def test_newest_of_each_month_kept_for_twelve_months(tmp_path):
    months = [make(tmp_path, at(2025, month, 10, 2, 0)) for month in range(1, 13)]
    older_in_june = make(tmp_path, at(2025, 6, 3, 2, 0))
    kept = kept_names(tmp_path)
    # March 2026 back to April 2025 are the twelve months kept.
    assert {path.name for path in months[3:]} <= kept
    assert months[2].name not in kept  # March 2025
    assert older_in_june.name not in kept
    assert len(kept) == 9


def test_regions_are_pruned_apart(tmp_path):
    ams = make(tmp_path, at(2026, 3, 14, 1, 0), "ams")
    iad = make(tmp_path, at(2026, 3, 14, 0, 30), "iad")
    assert kept_names(tmp_path) == {ams.name, iad.name}


def test_future_archive_is_kept(tmp_path):
    future = make(tmp_path, at(2026, 3, 20, 0, 0))
    assert kept_names(tmp_path) == {future.name}


def test_prune_deletes_and_reports(tmp_path):
    keep = make(tmp_path, at(2026, 3, 15, 1, 0))
    drop = make(tmp_path, at(2026, 3, 15, 0, 0))
    ancient = make(tmp_path, at(2023, 1, 1, 0, 0))
    other = tmp_path / "notes.txt"
    other.write_text("not an archive")
    stale = tmp_path / ".tmp-abc.tar.gz"
    stale.write_bytes(b"left by a crash")
    hours_ago = time.time() - 7 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    fresh = tmp_path / ".tmp-running"
    fresh.mkdir()

    dry = prune(tmp_path, NOW, 30, 12, dry_run=True)
    assert {a.path for a in dry.deleted} == {drop, ancient}
    assert drop.exists()

    pruned = prune(tmp_path, NOW, 30, 12)
    assert [a.path for a in pruned.kept] == [keep]
    assert {a.path for a in pruned.deleted} == {drop, ancient}
    assert pruned.removed_temporary == [stale]
    assert keep.exists()
    assert not drop.exists()
    assert not ancient.exists()
    assert other.exists()
    assert not stale.exists()
    assert fresh.exists()
