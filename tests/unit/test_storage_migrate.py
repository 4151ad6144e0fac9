"""Schema migrations: order, idempotence, atomicity and the sqlite3 tool."""

import sqlite3
import subprocess
from pathlib import Path

import pytest

import relay
from relay.storage.migrate import (
    MigrationError,
    apply_migrations,
    find_migrations,
    migrate,
    migrations_folder,
    schema_version,
    split_statements,
)

SQLITE3_TOOL = Path("/usr/bin/sqlite3")


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def table_names(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def test_folder_is_the_source_checkout_migrations():
    folder = migrations_folder()
    assert folder == Path(relay.__file__).parent.parent / "migrations"
    assert (folder / "0001_initial.sql").is_file()


def test_migrate_creates_the_schema(tmp_path):
    database = tmp_path / "relay.db"
    applied = migrate(database)
    assert [migration.version for migration in applied] == [1]
    expected = {"users", "mailbox_messages", "dedup_records", "schema_migrations"}
    assert table_names(database) == expected


def test_second_run_applies_nothing(tmp_path):
    database = tmp_path / "relay.db"
    migrate(database)
    assert migrate(database) == []
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT version, name FROM schema_migrations")
        assert rows.fetchall() == [(1, "0001_initial")]


def test_schema_version_counts_applied_files(tmp_path):
    database = tmp_path / "relay.db"
    with sqlite3.connect(database) as connection:
        assert schema_version(connection) == 0
    migrate(database)
    with sqlite3.connect(database) as connection:
        assert schema_version(connection) == 1


@pytest.mark.skipif(not SQLITE3_TOOL.exists(), reason="sqlite3 tool not installed")
def test_sqlite3_tool_reads_migrated_file(tmp_path):
    database = tmp_path / "relay.db"
    migrate(database)
    tables = subprocess.run(
        [str(SQLITE3_TOOL), str(database), ".tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(tables) == [
        "dedup_records",
        "mailbox_messages",
        "schema_migrations",
        "users",
    ]
    check = subprocess.run(
        [str(SQLITE3_TOOL), str(database), "PRAGMA integrity_check"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip() == "ok"


def test_versions_apply_in_numeric_order(tmp_path):
    # 10 sorts before 2 as text; the ALTER in 10 needs the table from 2.
    folder = write_migrations(
        tmp_path / "migrations",
        {
            "10_add_column.sql": "ALTER TABLE notes ADD COLUMN author TEXT;",
            "2_notes.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY);",
            "1_base.sql": "CREATE TABLE base (id INTEGER PRIMARY KEY);",
        },
    )
    assert [m.version for m in find_migrations(folder)] == [1, 2, 10]
    database = tmp_path / "relay.db"
    with sqlite3.connect(database) as connection:
        applied = apply_migrations(connection, folder)
        assert [m.version for m in applied] == [1, 2, 10]
        columns = [row[1] for row in connection.execute("PRAGMA table_info(notes)")]
        assert columns == ["id", "author"]


def test_failed_migration_leaves_no_trace(tmp_path):
    folder = write_migrations(
        tmp_path / "migrations",
        {
            "1_base.sql": "CREATE TABLE base (id INTEGER PRIMARY KEY);",
            "2_broken.sql": "CREATE TABLE half (id INTEGER);\nCREATE TABLE (;",
        },
    )
    database = tmp_path / "relay.db"
    with pytest.raises(sqlite3.OperationalError):
        migrate(database, folder)
    assert "half" not in table_names(database)
    assert "base" in table_names(database)
    with sqlite3.connect(database) as connection:
        assert schema_version(connection) == 1


def test_later_run_applies_new_files(tmp_path):
    folder = write_migrations(
        tmp_path / "migrations", {"1_base.sql": "CREATE TABLE base (id INTEGER);"}
    )
    database = tmp_path / "relay.db"
    migrate(database, folder)
    write_migrations(folder, {"2_more.sql": "CREATE TABLE more (id INTEGER);"})
    assert [m.version for m in migrate(database, folder)] == [2]
    assert {"base", "more"} <= table_names(database)


def test_newer_database_is_rejected(tmp_path):
    newer = write_migrations(
        tmp_path / "newer",
        {
            "1_base.sql": "CREATE TABLE base (id INTEGER);",
            "2_more.sql": "CREATE TABLE more (id INTEGER);",
        },
    )
    older = write_migrations(
        tmp_path / "older", {"1_base.sql": "CREATE TABLE base (id INTEGER);"}
    )
    database = tmp_path / "relay.db"
    migrate(database, newer)
    with pytest.raises(MigrationError, match="schema version 2 is newer"):
        migrate(database, older)


def test_file_without_version_is_rejected(tmp_path):
    folder = write_migrations(tmp_path / "migrations", {"initial.sql": "SELECT 1;"})
    with pytest.raises(MigrationError, match="invalid migration file name"):
        find_migrations(folder)


def test_two_files_with_one_version_are_rejected(tmp_path):
    folder = write_migrations(
        tmp_path / "migrations", {"1_a.sql": "SELECT 1;", "01_b.sql": "SELECT 1;"}
    )
    with pytest.raises(MigrationError, match="share version 1"):
        find_migrations(folder)


def test_split_keeps_semicolons_inside_literals_and_comments():
    script = (
        "-- header; with a semicolon\n"
        "CREATE TABLE t (v TEXT); -- trailing; comment\n"
        "INSERT INTO t VALUES ('a;b');\n"
        "-- closing comment\n"
    )
    assert split_statements(script) == [
        "-- header; with a semicolon\nCREATE TABLE t (v TEXT);",
        " -- trailing; comment\nINSERT INTO t VALUES ('a;b');",
    ]


def test_initial_migration_splits_into_its_statements():
    script = (migrations_folder() / "0001_initial.sql").read_text(encoding="utf-8")
    statements = split_statements(script)
    assert len(statements) == 6
    assert all(sqlite3.complete_statement(text) for text in statements)
