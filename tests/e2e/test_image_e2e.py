"""The image's health check command and entry point, run outside a container."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def health_check_command() -> list[str]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    command = json.loads(line.split(" CMD ", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def run_health_check(http_port: int) -> int:
    result = subprocess.run(
        health_check_command(),
        env={"PATH": "/usr/bin:/bin", "HTTP_PORT": str(http_port)},
        capture_output=True,
        timeout=30,
    )
    return result.returncode


def test_health_check_passes_on_serving_relay(relay):
    assert run_health_check(relay.http_port) == 0


def test_health_check_fails_without_relay():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert run_health_check(port) != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_entrypoint_hands_folders_over_and_drops_root(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "log"
    result = subprocess.run(
        [str(REPO / "deploy" / "docker-entrypoint.sh"), "id", "-u"],
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "YAOK_USER": "nobody",
            "YAOK_DATA_DIR": str(data),
            "YAOK_LOG_DIR": str(logs),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    nobody = int(subprocess.check_output(["id", "-u", "nobody"], text=True))
    assert int(result.stdout) == nobody
    assert data.stat().st_uid == nobody
    assert logs.stat().st_uid == nobody
