"""`yaok-relay maintenance`: scheduled database maintenance and release command.

Exit codes:
  0  every step ran, or the database does not exist (a Fly release machine
     has no volume)
  1  the file is damaged or a step failed
  2  bad arguments or settings
  3  a step asked for by flag was skipped for safety
"""

import argparse
import datetime
import sqlite3
import sys
from pathlib import Path

from relay.config import ConfigError, load_settings
from relay.ops.maintenance import (
    IntegrityFailure,
    Limits,
    Maintenance,
    Plan,
    describe_day,
    read_figures,
    scheduled_plan,
)
from relay.storage.connection import is_corruption

DESCRIPTION = """\
Run database maintenance on the relay's database (DATABASE_URL). Without
step flags the date decides, in UTC: ANALYZE every day, integrity_check and
VACUUM on Mondays, REINDEX on the first day of the month. Safe to run while
a relay serves the same file.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yaok-relay maintenance",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = parser.add_argument_group("steps (any of them turns the schedule off)")
    steps.add_argument(
        "--integrity-check",
        action="store_true",
        help="run PRAGMA integrity_check now",
    )
    steps.add_argument("--reindex", action="store_true", help="run REINDEX now")
    steps.add_argument("--analyze", action="store_true", help="run ANALYZE now")
    steps.add_argument("--vacuum", action="store_true", help="run VACUUM now")
    steps.add_argument("--all", action="store_true", help="run every step now")
    parser.add_argument(
        "--date",
        type=_parse_date,
        help="decide the scheduled steps as if today were this UTC date (YYYY-MM-DD)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and change nothing"
    )
    parser.add_argument(
        "--database",
        type=Path,
        help="database file to maintain (default: the path in DATABASE_URL)",
    )
    parser.add_argument(
        "--require-database",
        action="store_true",
        help="exit 1 when the database file does not exist (default: exit 0, "
        "as a release machine without the volume must)",
    )
    return parser


def _parse_date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid date {text!r}: expected YYYY-MM-DD"
        ) from None


def choose_plan(args: argparse.Namespace) -> tuple[Plan, str]:
    """Return the plan and a phrase saying why it was chosen."""
    if args.all:
        return Plan(True, True, True, True, forced=True), "all steps asked for"
    if args.integrity_check or args.reindex or args.analyze or args.vacuum:
        plan = Plan(args.integrity_check, args.reindex, args.analyze, args.vacuum, True)
        return plan, "steps asked for"
    day = args.date or datetime.datetime.now(datetime.UTC).date()
    return scheduled_plan(day), f"schedule for {describe_day(day)}"


def say(line: str) -> None:
    print(f"maintenance: {line}", flush=True)


def fail(line: str) -> None:
    print(f"yaok-relay: {line}", file=sys.stderr, flush=True)


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        fail(str(exc))
        return 2
    database = args.database or settings.database_path
    plan, reason = choose_plan(args)
    if not database.exists():
        if args.require_database:
            fail(f"database {database} not found: check DATABASE_URL or --database")
            return 1
        say(f"no database at {database}: nothing to maintain")
        return 0
    limits = Limits(
        busy_timeout_s=settings.maintenance_busy_timeout_s,
        analysis_limit=settings.maintenance_analysis_limit,
        online_vacuum_max_bytes=settings.maintenance_online_vacuum_max_bytes,
    )
    maintenance = Maintenance(database, limits, say)
    try:
        return _run(maintenance, plan, reason, args.dry_run)
    except IntegrityFailure as exc:
        fail(str(exc))
        return 1
    except sqlite3.Error as exc:
        if is_corruption(exc):
            fail(maintenance.failure_line(str(exc)))
        else:
            fail(f"maintenance of {database} failed: {exc}")
        return 1
    finally:
        maintenance.close()


def _run(maintenance: Maintenance, plan: Plan, reason: str, dry_run: bool) -> int:
    figures = read_figures(maintenance.connection, maintenance.database)
    steps = ", ".join(plan.steps) or "none"
    relay = "a relay is serving it" if maintenance.relay_running else "no relay running"
    say(f"database {maintenance.database}: {figures.describe()}; {relay}")
    say(f"steps: {steps} ({reason})")
    if dry_run:
        say("dry run: nothing changed")
        return 0
    outcome = maintenance.run(plan)
    if outcome.skipped and plan.forced:
        return 3
    return 0
