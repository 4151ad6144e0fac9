"""Database maintenance: integrity check, REINDEX, ANALYZE and VACUUM on a schedule.

The schedule follows the operating procedures: ANALYZE every day, the
integrity check and VACUUM on Mondays, REINDEX on the first day of the
month (dates in UTC). Every step is safe beside a relay serving the same
file, because each one either only reads or holds the write lock briefly:

- the integrity check is a read transaction, which WAL lets run beside the
  relay's commits (the WAL grows until it ends);
- ANALYZE samples at most MAINTENANCE_ANALYSIS_LIMIT rows per index, so its
  write transaction stays short;
- REINDEX runs one index per transaction;
- VACUUM rewrites the whole file in one write transaction, during which the
  relay cannot commit. With a relay running, maintenance therefore gives
  free pages back with incremental vacuum in short steps, and runs a full
  VACUUM only on files small enough to finish well within the relay's busy
  timeout (MAINTENANCE_ONLINE_VACUUM_MAX_BYTES). A full VACUUM with no relay
  running also switches the file to incremental vacuum, so that later runs
  can shrink it online.
"""

import contextlib
import datetime
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from relay.ops.health import disk_usage
from relay.storage.connection import is_corruption
from relay.storage.lock import DatabaseInUse, DatabaseLock, relay_is_running

# Pages freed per incremental-vacuum transaction (4 MB with 4 KiB pages), and
# the pause between two, which lets the relay's writer take the lock.
INCREMENTAL_VACUUM_PAGES = 1_000
INCREMENTAL_VACUUM_PAUSE_S = 0.01
_AUTO_VACUUM_INCREMENTAL = 2

Report = Callable[[str], None]


class IntegrityFailure(Exception):
    """The database file is damaged; the message names the file and the next step."""


@dataclass(frozen=True, slots=True)
class Plan:
    integrity_check: bool = False
    reindex: bool = False
    analyze: bool = False
    vacuum: bool = False
    forced: bool = False

    @property
    def steps(self) -> list[str]:
        names = []
        if self.integrity_check:
            names.append("integrity_check")
        if self.reindex:
            names.append("REINDEX")
        if self.analyze:
            names.append("ANALYZE")
        if self.vacuum:
            names.append("VACUUM")
        return names


def scheduled_plan(day: datetime.date) -> Plan:
    """Return the steps the schedule runs on day (a UTC date)."""
    monday = day.weekday() == 0
    return Plan(
        integrity_check=monday,
        reindex=day.day == 1,
        analyze=True,
        vacuum=monday,
    )


def describe_day(day: datetime.date) -> str:
    notes = [day.strftime("%A")]
    if day.day == 1:
        notes.append("first of the month")
    return f"{day.isoformat()}, {', '.join(notes)}"


@dataclass(frozen=True, slots=True)
class Limits:
    busy_timeout_s: float = 30.0
    analysis_limit: int = 1_000
    online_vacuum_max_bytes: int = 64 * 1024 * 1024


@dataclass
class Outcome:
    """Steps a run did, and steps it skipped for safety."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FileFigures:
    page_size: int
    page_count: int
    freelist_count: int
    auto_vacuum: int
    file_bytes: int
    wal_bytes: int

    def describe(self) -> str:
        mode = {0: "none", 1: "full", 2: "incremental"}.get(self.auto_vacuum, "?")
        return (
            f"{human_size(self.file_bytes)} file + {human_size(self.wal_bytes)} WAL, "
            f"{self.page_count} pages of {self.page_size} bytes, "
            f"{self.freelist_count} free, auto_vacuum {mode}"
        )


def human_size(size: int) -> str:
    """Format a size in bytes with a decimal unit, such as "1.9 MB"."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def integrity_problems(
    connection: sqlite3.Connection, pragma: str = "integrity_check"
) -> list[str]:
    """Run the integrity_check (or quick_check) pragma; return its problems.

    The result is [] for a sound file, else one line per problem. SQLite
    may pack several problems into one row, separated by newlines, under a
    "*** in database main ***" heading, and stops at 100.
    """
    rows = [row[0] for row in connection.execute(f"PRAGMA {pragma}")]
    if rows == ["ok"]:
        return []
    lines = [line.strip() for row in rows for line in str(row).splitlines()]
    problems = [line for line in lines if line and not line.startswith("***")]
    return problems or ["integrity_check returned no result"]


def describe_problems(problems: list[str]) -> str:
    count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
    return f"{count}, first: {problems[0]}"


def wal_path(database: Path) -> Path:
    return database.with_name(database.name + "-wal")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def connect_existing(database: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """Open a database file that must exist, in autocommit mode; never create one."""
    uri = f"file:{database.resolve()}?mode=rw"
    return sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None)


def read_figures(connection: sqlite3.Connection, database: Path) -> FileFigures:
    def pragma(name: str) -> int:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]

    return FileFigures(
        page_size=pragma("page_size"),
        page_count=pragma("page_count"),
        freelist_count=pragma("freelist_count"),
        auto_vacuum=pragma("auto_vacuum"),
        file_bytes=_size(database),
        wal_bytes=_size(wal_path(database)),
    )


class Maintenance:
    """One maintenance run on one database file."""

    def __init__(self, database: Path, limits: Limits, report: Report) -> None:
        self.database = Path(database)
        self.limits = limits
        self.report = report
        self.relay_running = relay_is_running(self.database)
        self.outcome = Outcome()
        self._connection: sqlite3.Connection | None = None

    @property
    def connection(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = connect_existing(
                self.database, self.limits.busy_timeout_s
            )
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def run(self, plan: Plan) -> Outcome:
        """Run the plan's steps in order; raise IntegrityFailure on a damaged file.

        The integrity check runs first, so that nothing rewrites a damaged
        file. Other sqlite3 errors propagate.
        """
        started = time.monotonic()
        steps = [
            (plan.integrity_check, "integrity_check", self.integrity_check),
            (plan.reindex, "REINDEX", self.reindex),
            (plan.analyze, "ANALYZE", self.analyze),
            (plan.vacuum, "VACUUM", self.vacuum),
        ]
        for wanted, name, step in steps:
            if wanted:
                self._timed(name, step)
        figures = read_figures(self.connection, self.database)
        self.report(
            f"finished in {time.monotonic() - started:.2f} s; "
            f"database now {figures.describe()}"
        )
        return self.outcome

    def _timed(self, name: str, step: Callable[[], str]) -> None:
        began = time.monotonic()
        try:
            detail = step()
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc):
                raise IntegrityFailure(self.failure_line(str(exc))) from exc
            raise
        self.report(f"{name}: {detail} ({time.monotonic() - began:.2f} s)")

    def failure_line(self, problem: str) -> str:
        return (
            f"integrity check failed for {self.database}: {problem}; restore the "
            "latest backup (docs/operations.md, Database corruption)"
        )

    # --- steps -----------------------------------------------------------------

    def integrity_check(self) -> str:
        problems = integrity_problems(self.connection)
        if not problems:
            return "ok"
        raise IntegrityFailure(self.failure_line(describe_problems(problems)))

    def reindex(self) -> str:
        names = [
            row[0]
            for row in self.connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name"
            )
        ]
        for name in names:
            # One transaction per index keeps each lock on the file short.
            self.connection.execute(f'REINDEX "{name}"')
        self.outcome.done.append("REINDEX")
        return f"{len(names)} indexes rebuilt"

    def analyze(self) -> str:
        limit = self.limits.analysis_limit
        self.connection.execute(f"PRAGMA analysis_limit = {limit}")
        self.connection.execute("ANALYZE")
        self.outcome.done.append("ANALYZE")
        rows = self._count("sqlite_stat1")
        sampled = "every row" if limit == 0 else f"at most {limit} rows per index"
        return f"sqlite_stat1 has {rows} rows, sampling {sampled}"

    def vacuum(self) -> str:
        figures = read_figures(self.connection, self.database)
        live_bytes = (figures.page_count - figures.freelist_count) * figures.page_size
        if self.relay_running and figures.auto_vacuum == _AUTO_VACUUM_INCREMENTAL:
            return self._incremental_vacuum(figures)
        if self.relay_running and live_bytes > self.limits.online_vacuum_max_bytes:
            return self._skip(
                "VACUUM",
                f"a relay is serving {self.database} and a full VACUUM of "
                f"{human_size(live_bytes)} would hold off its commits for longer "
                "than its busy timeout; stop the relay and run `yaok-relay "
                "maintenance --vacuum` once, which also switches the file to "
                "incremental vacuum so that later runs shrink it while the relay "
                "serves",
            )
        return self._full_vacuum(figures, live_bytes)

    def _skip(self, step: str, reason: str) -> str:
        self.outcome.skipped.append(step)
        return f"skipped: {reason}"

    def _full_vacuum(self, figures: FileFigures, live_bytes: int) -> str:
        # VACUUM writes a copy of the live pages to a temporary file, then the
        # same pages again through the WAL.
        needed = 2 * live_bytes
        free, _ = disk_usage(self.database.parent)
        if free is not None and free < needed:
            return self._skip(
                "VACUUM",
                f"needs about {human_size(needed)} free beside {self.database}, "
                f"and {human_size(free)} are free",
            )
        os.environ.setdefault("SQLITE_TMPDIR", str(self.database.parent))
        lock = DatabaseLock(self.database)
        if not self.relay_running:
            # A relay that started since the check keeps the lock, and its
            # commits wait for the busy timeout while this VACUUM runs.
            with contextlib.suppress(DatabaseInUse):
                lock.acquire(exclusive=True)
        try:
            self.connection.execute("PRAGMA temp_store = FILE")
            self.connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self.connection.execute("VACUUM")
            checkpoint = "PASSIVE" if self.relay_running else "TRUNCATE"
            self.connection.execute(f"PRAGMA wal_checkpoint({checkpoint})").fetchall()
        finally:
            lock.release()
        self.outcome.done.append("VACUUM")
        where = "beside the running relay" if self.relay_running else "offline"
        return (
            f"full VACUUM {where}, {figures.freelist_count} free pages reclaimed, "
            "auto_vacuum incremental"
        )

    def _incremental_vacuum(self, figures: FileFigures) -> str:
        # Bounded: each round frees up to INCREMENTAL_VACUUM_PAGES pages, and
        # the relay adds free pages meanwhile only by deleting rows.
        rounds = figures.freelist_count // INCREMENTAL_VACUUM_PAGES + 10
        shrunk = 0
        for _ in range(rounds):
            if self._pragma("freelist_count") == 0:
                break
            shrunk += self._incremental_vacuum_round()
            time.sleep(INCREMENTAL_VACUUM_PAUSE_S)
        self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.outcome.done.append("VACUUM")
        return (
            "incremental vacuum beside the running relay, "
            f"file shorter by {shrunk} pages"
        )

    def _incremental_vacuum_round(self) -> int:
        """Free up to INCREMENTAL_VACUUM_PAGES pages and return the pages cut off."""
        # Only executescript runs the pragma to its end (execute() frees one
        # page), and a script returns no rows, so the counts go to a temporary
        # table. Both are taken inside the vacuum's write transaction, because
        # a relay commit between them may grow the file.
        self.connection.executescript(
            f"""
            BEGIN IMMEDIATE;
            CREATE TEMP TABLE IF NOT EXISTS vacuum_round (
                step INTEGER PRIMARY KEY, page_count INTEGER NOT NULL);
            DELETE FROM temp.vacuum_round;
            INSERT INTO temp.vacuum_round SELECT 0, page_count FROM pragma_page_count;
            PRAGMA incremental_vacuum({INCREMENTAL_VACUUM_PAGES});
            INSERT INTO temp.vacuum_round SELECT 1, page_count FROM pragma_page_count;
            COMMIT;
            """
        )
        (before, after) = self.connection.execute(
            "SELECT page_count FROM temp.vacuum_round ORDER BY step"
        ).fetchall()
        return before[0] - after[0]

    def _count(self, table: str) -> int:
        return self.connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def _pragma(self, name: str) -> int:
        return self.connection.execute(f"PRAGMA {name}").fetchone()[0]
