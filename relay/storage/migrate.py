"""Schema migrations: numbered *.sql files, each applied once and in order.

A migration file is named `<version>_<name>.sql`, for example
`0001_initial.sql`, and contains plain SQL statements without transaction
control. Each file runs in its own transaction together with its row in
`schema_migrations`, so a failed file leaves no trace and a second run
applies nothing. The functions here are synchronous, so the relay calls them
from a worker thread and operators can call them from a script.
"""

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import relay

_FILE_NAME = re.compile(r"(?P<version>\d+)_(?P<name>.+)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version       INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    applied_at_ms INTEGER NOT NULL
)
"""

# Seconds a migration waits for a lock held by another connection, such as
# an operator's VACUUM or a relay serving the same file.
BUSY_TIMEOUT_S = 5.0


class MigrationError(Exception):
    """The migration files or the database schema cannot be brought together."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path


def migrations_folder() -> Path:
    """Return the migrations folder of an installed wheel or a source checkout."""
    package = Path(relay.__file__).parent
    installed = package / "migrations"
    if installed.is_dir():
        return installed
    return package.parent / "migrations"


def find_migrations(folder: Path | None = None) -> list[Migration]:
    """List the *.sql files of folder in the order of their version prefix.

    Raises MigrationError for a .sql file without a numeric prefix, and for
    two files with the same version.
    """
    folder = migrations_folder() if folder is None else folder
    if not folder.is_dir():
        raise MigrationError(f"migrations folder not found: {folder}")
    migrations: dict[int, Migration] = {}
    for path in folder.glob("*.sql"):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"invalid migration file name {path.name!r}: "
                "expected <version>_<name>.sql, for example 0002_add_index.sql"
            )
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(
                f"migrations {migrations[version].path.name!r} and {path.name!r} "
                f"share version {version}"
            )
        migrations[version] = Migration(version, path.stem, path)
    return [migrations[version] for version in sorted(migrations)]


def split_statements(script: str) -> list[str]:
    """Split an SQL script into complete statements.

    A semicolon inside a string literal, a comment or a trigger body does
    not end a statement, because sqlite3.complete_statement decides where
    each one ends. Pieces holding only comments or blanks are dropped.
    """
    statements = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending)
            pending = ""
    if pending.strip(" \t\r\n;"):
        statements.append(pending)
    return [text for text in statements if _has_code(text)]


def _has_code(statement: str) -> bool:
    lines = (line.split("--", 1)[0].strip(" \t\r;") for line in statement.splitlines())
    return any(lines)


def schema_version(connection: sqlite3.Connection) -> int:
    """Return the highest applied migration version, or 0 for a new database."""
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master "
        "WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if exists is None:
        return 0
    row = connection.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return row[0] or 0


def apply_migrations(
    connection: sqlite3.Connection, folder: Path | None = None
) -> list[Migration]:
    """Apply the migrations that the database lacks and return them.

    Raises MigrationError when the database records a version newer than
    every file, because this relay would not understand that schema.
    """
    migrations = find_migrations(folder)
    saved_isolation = connection.isolation_level
    # Autocommit mode, so that the explicit BEGIN and COMMIT below are the
    # only transaction control.
    connection.isolation_level = None
    try:
        connection.execute(_CREATE_TABLE)
        _reject_newer_schema(connection, migrations)
        already_applied = _applied_versions(connection)
        newly_applied = []
        for migration in migrations:
            if migration.version in already_applied:
                continue
            if _apply(connection, migration):
                newly_applied.append(migration)
        return newly_applied
    finally:
        connection.isolation_level = saved_isolation


def migrate(database: Path, folder: Path | None = None) -> list[Migration]:
    """Open the database file, apply the missing migrations and close it."""
    connection = sqlite3.connect(database, timeout=BUSY_TIMEOUT_S)
    try:
        return apply_migrations(connection, folder)
    finally:
        connection.close()


def _applied_versions(connection: sqlite3.Connection) -> set[int]:
    rows = connection.execute("SELECT version FROM schema_migrations").fetchall()
    return {version for (version,) in rows}


def _reject_newer_schema(
    connection: sqlite3.Connection, migrations: list[Migration]
) -> None:
    current = schema_version(connection)
    newest = migrations[-1].version if migrations else 0
    if current > newest:
        raise MigrationError(
            f"database schema version {current} is newer than the newest "
            f"migration {newest} of this relay; run a relay of the same or a "
            "newer release"
        )


def _apply(connection: sqlite3.Connection, migration: Migration) -> bool:
    """Apply one migration in its own transaction; False if already applied.

    The version is checked again under the write lock, because another
    process may have applied it since the first check.
    """
    statements = split_statements(migration.path.read_text(encoding="utf-8"))
    connection.execute("BEGIN IMMEDIATE")
    try:
        if _is_applied(connection, migration.version):
            connection.execute("ROLLBACK")
            return False
        for statement in statements:
            connection.execute(statement)
        connection.execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) "
            "VALUES (?, ?, ?)",
            (migration.version, migration.name, int(time.time() * 1000)),
        )
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return True


def _is_applied(connection: sqlite3.Connection, version: int) -> bool:
    row = connection.execute(
        "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
    ).fetchone()
    return row is not None
