"""Run a real relay process on loopback, for end-to-end tests and load tests.

The relay binds port 0 for UDP and HTTP; the ports it got are read back
from its `relay_started` log line, so parallel runs never collide.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 30.0


def serve_once(
    environment: dict[str, str], cwd: Path | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `python -m relay serve` with only these variables until it exits.

    For start-up failures: the relay is expected to stop by itself.
    """
    return subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


class RelayProcess:
    """One `python -m relay serve` child with a database under `directory`."""

    def __init__(self, directory: Path, **environment: str | int) -> None:
        # Absolute: the relay runs in this folder and would resolve a
        # relative DATABASE_URL from there a second time.
        self.directory = Path(directory).resolve()
        self.database = self.directory / "yaok_relay.db"
        self.environment = {
            "DATABASE_URL": f"sqlite://{self.database}",
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": "0",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": "0",
            "RUST_LOG": "info",
            "FLY_REGION": "test",
        }
        self.environment.update({key: str(value) for key, value in environment.items()})
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw_lines: list[str] = []
        self.udp_port = 0
        self.http_port = 0
        self.relay_public_key = b""
        self._started = threading.Event()
        self._reader: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------

    def start(
        self, timeout_s: float = STARTUP_TIMEOUT_S, wait: bool = True
    ) -> "RelayProcess":
        """Start the relay; with wait, return once it logged relay_started."""
        self.directory.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **self.environment}
        self._started.clear()
        self.process = subprocess.Popen(
            self.command(),
            env=environment,
            cwd=self.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        if wait and not self._started.wait(timeout_s):
            self.kill()
            tail = "\n".join(self.raw_lines[-20:])
            raise RuntimeError(f"relay did not start within {timeout_s} s:\n{tail}")
        return self

    def command(self) -> list[str]:
        """Return the command that starts the relay; a subclass may wrap it."""
        return [sys.executable, "-m", "relay", "serve"]

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.raw_lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.lines.append(event)
            if event.get("message") == "relay_started":
                self.udp_port = event["udp_port"]
                self.http_port = event["http_port"]
                self.relay_public_key = bytes.fromhex(event["relay_public_key"])
                self._started.set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def udp_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.udp_port)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 15.0) -> int:
        """Send SIGTERM and wait; return the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.returncode
        self.signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL: the crash the relay must survive without losing data."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.wait(10)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout_s)
        if self._reader is not None:
            self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    @property
    def returncode(self) -> int:
        assert self.process is not None
        code = self.process.poll()
        return -999 if code is None else code

    def restart(self, **environment: str | int) -> "RelayProcess":
        """Start again on the same database and key (new ports)."""
        self.environment.update({key: str(value) for key, value in environment.items()})
        return self.start()

    def __enter__(self) -> "RelayProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.kill()

    # --- observing ----------------------------------------------------------------

    def events(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("message") == message]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def http_get(
        self, path: str, headers: dict[str, str] | None = None, timeout_s: float = 5.0
    ) -> tuple[int, str, dict[str, str]]:
        """GET from the ops API; return (status, body, headers), 5xx included."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), dict(error.headers)

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body, _ = self.http_get("/health")
        return status, json.loads(body)
