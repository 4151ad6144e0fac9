"""The README's two-terminal exchange, run with the real command line."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def client_command(relay, directory, identity: str, *arguments: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "relay",
        "client",
        "--identity",
        str(directory / identity),
        "--relay",
        f"127.0.0.1:{relay.udp_port}",
        "--http",
        f"http://127.0.0.1:{relay.http_port}",
        *arguments,
    ]


def client(relay, directory, identity: str, *arguments: str, timeout_s: float = 30):
    command = client_command(relay, directory, identity, *arguments)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)


def test_two_clients_exchange_through_relay(relay, tmp_path):
    for name in ("alice.json", "bob.json"):
        assert client(relay, tmp_path, name, "init").returncode == 0
    card = client(relay, tmp_path, "bob.json", "whoami", "--card").stdout.strip()
    alice_id = client(relay, tmp_path, "alice.json", "whoami", "--card").stdout.split(
        ":"
    )[0]

    # Bob registers once, so the relay knows him, then goes offline.
    assert client(relay, tmp_path, "bob.json", "unregister").returncode == 0
    assert relay_sessions(relay) == 0
    sent = client(relay, tmp_path, "alice.json", "send", card, "hello while you slept")
    assert sent.returncode == 0, sent.stderr
    assert "QUEUED" in sent.stdout
    received = client(relay, tmp_path, "bob.json", "listen", "--once")
    assert received.returncode == 0, received.stderr
    assert "hello while you slept" in received.stdout
    assert alice_id in received.stdout

    # Bob is online: the message is pushed and Alice hears it was delivered.
    # Stale sessions of the earlier commands still count as live, so the
    # listener's own line shows when it has registered.
    listener_log = tmp_path / "listener.log"
    with listener_log.open("w") as output:
        listener = subprocess.Popen(
            client_command(relay, tmp_path, "bob.json", "listen"),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        assert relay.wait_for(
            lambda: "waiting for messages" in listener_log.read_text(), 15
        ), listener_log.read_text()
        sent = client(
            relay, tmp_path, "alice.json", "send", "--wait", "5", card, "live"
        )
        assert sent.returncode == 0, sent.stderr
        assert re.search(r"^message \S+: DELIVERED$", sent.stdout, re.M), sent.stdout
    finally:
        listener.terminate()
        listener.wait(timeout=15)
    assert "live" in listener_log.read_text()


def relay_sessions(relay) -> int:
    _, health = relay.health()
    return health["active_connections"]


def test_wrong_relay_key_hint(relay, tmp_path):
    assert client(relay, tmp_path, "alice.json", "init").returncode == 0
    command = [
        sys.executable, "-m", "relay", "client",
        "--identity", str(tmp_path / "alice.json"),
        "--relay", f"127.0.0.1:{relay.udp_port}",
        "--relay-key", bytes(range(1, 33)).hex(),
        "ping",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "invalid signature" in result.stderr
    assert "check the pinned relay key" in result.stderr
