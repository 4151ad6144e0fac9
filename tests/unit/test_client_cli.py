"""The `yaok-relay client` command line, in the parts that need no relay."""

import json
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.client.cli import (
    CliError,
    fetch_relay_key,
    format_entry,
    parse_relay_address,
    run,
)
from relay.client.e2e import seal
from relay.client.identity import ContactCard, Identity
from relay.protocol.codec import Entry

SENDER_ID = "c2d94e17-6a58-4f03-b1e9-0d7c35a8f264"
MESSAGE_ID = "9a4f1c3d-8e27-4b60-95ad-e1b3706c2f58"
RELAY_KEY = "11" * 32


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def identity_path(tmp_path):
    return tmp_path / "alice.json"


def test_init_creates_private_file(identity_path, capsys):
    assert run(["init", "--identity", str(identity_path)]) == 0
    assert stat.S_IMODE(identity_path.stat().st_mode) == 0o600
    identity = Identity.load(identity_path)
    out = capsys.readouterr().out
    assert identity.user_id in out
    assert str(identity.contact_card) in out


def test_init_refuses_existing_identity(identity_path, capsys):
    assert run(["--identity", str(identity_path), "init"]) == 0
    before = identity_path.read_text()
    capsys.readouterr()
    assert run(["--identity", str(identity_path), "init"]) == 1
    assert "already exists" in one_line(capsys.readouterr().err)
    assert identity_path.read_text() == before


def test_whoami_prints_card(identity_path, capsys):
    run(["init", "--identity", str(identity_path)])
    capsys.readouterr()
    assert run(["whoami", "--identity", str(identity_path)]) == 0
    out = capsys.readouterr().out
    card_line = next(
        line for line in out.splitlines() if line.startswith("contact card:")
    )
    card = ContactCard.parse(card_line.split(":", 1)[1])
    assert card == Identity.load(identity_path).contact_card


def test_whoami_missing_identity(identity_path, capsys):
    assert run(["whoami", "--identity", str(identity_path)]) == 1
    assert "not found" in one_line(capsys.readouterr().err)


def test_whoami_rejects_readable_identity(identity_path, capsys):
    run(["init", "--identity", str(identity_path)])
    identity_path.chmod(0o644)
    capsys.readouterr()
    assert run(["whoami", "--identity", str(identity_path)]) == 1
    assert "chmod 600" in one_line(capsys.readouterr().err)


def test_help_exits_zero(capsys):
    assert run(["--help"]) == 0
    assert "listen" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([], 2, "COMMAND"),
        (["bogus"], 2, "invalid choice"),
        (["send", "card-only"], 2, "TEXT"),
        (["send", "a", "b", "--ttl", "soon"], 2, "--ttl"),
        (["listen", "--unknown"], 2, "--unknown"),
        (
            ["ping", "--relay-key", RELAY_KEY, "--http", "http://127.0.0.1:1"],
            2,
            "not allowed",
        ),
    ],
)
def test_bad_arguments_one_line(argv, code, message, capsys):
    assert run(argv) == code
    line = one_line(capsys.readouterr().err)
    assert line.startswith("yaok-relay client: error:")
    assert message in line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["send", "not-a-card", "hi", "--relay-key", RELAY_KEY],
            "invalid contact card",
        ),
        (["ping", "--relay", "localhost", "--relay-key", RELAY_KEY], "invalid --relay"),
        (["ping", "--relay-key", "abcd"], "invalid relay key"),
        (["ping", "--http", "ftp://example.invalid"], "invalid --http"),
    ],
)
def test_bad_values_one_line(identity_path, extra, message, capsys):
    run(["init", "--identity", str(identity_path)])
    capsys.readouterr()
    assert run([*extra, "--identity", str(identity_path)]) == 1
    assert message in one_line(capsys.readouterr().err)


def test_send_bad_ttl(identity_path, capsys):
    run(["init", "--identity", str(identity_path)])
    card = str(Identity.generate().contact_card)
    capsys.readouterr()
    argv = ["send", card, "hi", "--ttl", "-1", "--identity", str(identity_path)]
    assert run(argv) == 1
    assert "invalid --ttl" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:41641", ("127.0.0.1", 41641)),
        ("relay.example:1", ("relay.example", 1)),
        ("[::1]:41641", ("::1", 41641)),
    ],
)
def test_parse_relay_address(text, expected):
    assert parse_relay_address(text) == expected


@pytest.mark.parametrize(
    "text", ["::1:41641", "host:", ":41641", "host:0", "host:65536", "[::1]"]
)
def test_parse_relay_address_rejects(text):
    with pytest.raises(CliError, match="invalid --relay"):
        parse_relay_address(text)


# --- GET /version -------------------------------------------------------------------


class VersionServer:
    """A loopback HTTP server answering GET /version with a set status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.paths: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "VersionServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_fetch_relay_key():
    key = X25519PrivateKey.generate().public_key().public_bytes_raw()
    body = json.dumps({"version": "0.1.0", "relay_public_key": key.hex()}).encode()
    with VersionServer(200, body) as server:
        assert fetch_relay_key(server.url + "/") == key
    assert server.paths == ["/version"]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b'{"relay_public_key": "AB"}', "no valid relay_public_key"),
        (200, json.dumps({"relay_public_key": "AB" * 32}).encode(), "no valid"),
        (200, b"[]", "no valid relay_public_key"),
        (200, b"<html>", "did not return JSON"),
        (404, b"{}", "HTTP 404"),
    ],
)
def test_fetch_relay_key_rejects(status, body, message):
    with VersionServer(status, body) as server, pytest.raises(CliError, match=message):
        fetch_relay_key(server.url)


def test_fetch_relay_key_connection_refused():
    with VersionServer(200, b"{}") as server:
        url = server.url
    with pytest.raises(CliError, match="pass --relay-key"):
        fetch_relay_key(url)


# --- printing messages ---------------------------------------------------------------


def entry(payload: bytes) -> Entry:
    return Entry(MESSAGE_ID, SENDER_ID, 1_767_225_600_000, payload)


def test_format_entry_opens_text():
    identity = Identity.generate()
    line = format_entry(identity, entry(seal(identity.x25519_public, b"hi there")))
    assert line == f"2026-01-01 00:00:00Z from {SENDER_ID}: hi there"


def test_format_entry_unreadable_as_hex():
    line = format_entry(Identity.generate(), entry(b"\x00\x01plain"))
    assert line.endswith("(not readable, hex) 0001706c61696e")


def test_format_entry_replaces_control_characters():
    identity = Identity.generate()
    line = format_entry(identity, entry(seal(identity.x25519_public, b"a\x1b[2Jb\nc")))
    assert "\x1b" not in line
    assert "\n" not in line
    assert line.endswith("a\ufffd[2Jb\ufffdc")
