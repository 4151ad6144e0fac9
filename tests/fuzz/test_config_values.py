"""Bad settings stop the relay with one line naming the problem, never a traceback.

In process: every setting gets hostile values (signs, units, huge numbers,
floats, blanks, control characters, non-ASCII) through load_settings. As a
process: values that only fail when used, such as paths that cannot be
created, must also end `yaok-relay serve` with one line on stderr.
"""

import os
import socket
import subprocess
import sys

import pytest

from fuzz.targets import SETTING_NAMES, _check_config_message, _environment
from relay.config import ConfigError, load_settings
from tests.security_figures import record

HOSTILE_VALUES = (
    "",
    " ",
    "-1",
    "0",
    "1e3",
    "0x10",
    "1_0",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "9" * 400,
    "-" + "9" * 30,
    "true",
    "None",
    "null",
    "[]",
    "{}",
    '{"a": 1}',
    "sqlite://",
    "sqlite:///",
    "postgres://x",
    "\t\n",
    "é",
    "\u202e41641",
    "41641\n",
    "١٢٣",
    "warn,=",
    "relay=loud",
)


@pytest.mark.parametrize("name", SETTING_NAMES)
def test_hostile_values_raise_one_line(name):
    rejected = 0
    for value in HOSTILE_VALUES:
        with _environment({name: value}):
            try:
                load_settings()
            except ConfigError as exc:
                _check_config_message(str(exc), {name: value})
                rejected += 1
    record(
        "config_values", {name: {"tried": len(HOSTILE_VALUES), "rejected": rejected}}
    )


def _free_port_taken() -> socket.socket:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    return holder


def _start_up_cases(tmp_path, taken_port: int) -> dict[str, dict[str, str]]:
    directory = tmp_path / "a_directory"
    directory.mkdir(mode=0o700)
    # A file that is not SQLite is not among these: it is a damaged
    # database, which the relay reports on /health while it keeps running.
    bad_key = tmp_path / "bad_key"
    bad_key.write_text("z" * 64)
    bad_key.chmod(0o600)
    # A folder others may read must not be taken for a key with a bad mode.
    open_directory = tmp_path / "an_open_directory"
    open_directory.mkdir(mode=0o755)
    open_key = tmp_path / "open_key"
    open_key.write_text("ab" * 32)
    open_key.chmod(0o644)
    key = str(tmp_path / "key")
    database = f"sqlite://{tmp_path / 'relay.db'}"
    return {
        "key_path_uncreatable": {"RELAY_KEY_PATH": "/proc/yaok-missing/key"},
        "key_path_directory": {"RELAY_KEY_PATH": str(directory)},
        "key_path_open_directory": {"RELAY_KEY_PATH": str(open_directory)},
        "key_readable_by_others": {"RELAY_KEY_PATH": str(open_key)},
        "key_not_hex": {"RELAY_KEY_PATH": str(bad_key)},
        "database_uncreatable": {
            "DATABASE_URL": "sqlite:///proc/yaok-missing/relay.db",
            "RELAY_KEY_PATH": key,
        },
        "database_directory": {
            "DATABASE_URL": f"sqlite://{directory}",
            "RELAY_KEY_PATH": key,
        },
        "log_file_uncreatable": {"LOG_FILE": "/proc/yaok-missing/relay.log"},
        "log_file_directory": {"LOG_FILE": str(directory)},
        "host_unresolvable": {"RELAY_HOST": "256.1.1.1"},
        "port_taken": {"RELAY_PORT": str(taken_port), "RELAY_HOST": "127.0.0.1"},
        "port_invalid": {"HTTP_PORT": "80 80"},
        "default_over_max": {
            "MESSAGE_TTL_DEFAULT_S": "7200",
            "MESSAGE_TTL_MAX_S": "3600",
        },
        "database": {"DATABASE_URL": database, "RUST_LOG": "verbose"},
    }


def test_start_up_failures_print_one_line(tmp_path):
    holder = _free_port_taken()
    runs: dict[str, subprocess.Popen] = {}
    try:
        cases = _start_up_cases(tmp_path, holder.getsockname()[1])
        base = {
            **os.environ,
            "DATABASE_URL": f"sqlite://{tmp_path / 'relay.db'}",
            "RELAY_KEY_PATH": str(tmp_path / "key"),
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": "0",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": "0",
        }
        runs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "relay", "serve"],
                env={**base, **overrides},
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, overrides in cases.items()
        }
        results = {}
        for name, run in runs.items():
            try:
                _, stderr = run.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                run.kill()
                run.communicate()
                raise AssertionError(
                    f"{name}: the relay started instead of stopping"
                ) from None
            results[name] = (run.returncode, stderr)
    finally:
        holder.close()
        # A case that failed must not leave the other relays running.
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.communicate()
    for name, (code, stderr) in results.items():
        lines = stderr.strip().splitlines()
        assert code != 0, f"{name}: exit code 0"
        assert "Traceback" not in stderr, f"{name}:\n{stderr}"
        assert len(lines) == 1, f"{name}: {len(lines)} lines:\n{stderr}"
        assert lines[0].startswith("yaok-relay: "), f"{name}: {lines[0]}"
        if name.startswith("key_"):
            assert "RELAY_KEY_PATH" in lines[0], f"{name}: {lines[0]}"
    assert "chmod" not in results["key_path_open_directory"][1]
    record("config_values", {"start_up_cases": sorted(results)})
