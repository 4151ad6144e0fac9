"""`yaok-relay client`: a person's command line for talking through a relay.

Two people (or two terminals, each with its own identity file) exchange
messages: one runs `listen`, the other `send CARD TEXT` with the card that
the first one's `whoami` printed. Texts are sealed end to end with
relay.client.e2e, so the relay only ever sees ciphertext.
"""

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from relay.client.client import RelayClient
from relay.client.e2e import SealError, open_sealed, seal
from relay.client.errors import RelayClientError
from relay.client.identity import ContactCard, Identity, IdentityError
from relay.protocol.codec import Entry
from relay.protocol.constants import KEY_SIZE, AckStatus

PROG = "yaok-relay client"
DEFAULT_IDENTITY = Path("yaok-identity.json")
DEFAULT_RELAY = "127.0.0.1:41641"
DEFAULT_HTTP = "http://127.0.0.1:8080"
HTTP_TIMEOUT_S = 5.0
# `listen --once` stops after this many POLLs even if messages remain.
MAX_POLLS_ONCE = 100
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report as one line on stderr."""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line instead of argparse's usage block and exit.
        raise _UsageError(message)


# --- arguments ------------------------------------------------------------------


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS lets the options stand before or after the subcommand without
    # the subcommand's defaults overwriting what was given before it.
    common = _Parser(add_help=False)
    common.add_argument(
        "--identity",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"identity file (default: ./{DEFAULT_IDENTITY})",
    )
    common.add_argument(
        "--relay",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT",
        help=f"relay's UDP address, IPv6 as [ADDR]:PORT (default: {DEFAULT_RELAY})",
    )
    key = common.add_mutually_exclusive_group()
    key.add_argument(
        "--relay-key",
        default=argparse.SUPPRESS,
        metavar="HEX",
        help="relay's X25519 public key, 64 hex characters (default: from --http)",
    )
    key.add_argument(
        "--http",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=f"relay's HTTP URL to GET /version with the key (default: {DEFAULT_HTTP})",
    )
    return common


def _build_parser() -> _Parser:
    common = _common_options()
    parser = _Parser(prog=PROG, parents=[common], description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str):
        sub = commands.add_parser(name, parents=[common], help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    command("init", _init, "create a new identity file and print its contact card")
    whoami = command(
        "whoami", _whoami, "print the user id and contact card of the identity"
    )
    whoami.add_argument(
        "--card", action="store_true", help="print only the contact card, for scripts"
    )
    send = command("send", _send, "seal TEXT to the contact CARD and send it")
    send.add_argument("card", metavar="CARD", help="contact card USER_ID:X25519_HEX")
    send.add_argument("text", metavar="TEXT", help="message text")
    send.add_argument(
        "--ttl",
        type=int,
        default=0,
        metavar="SECONDS",
        help="how long the relay keeps it undelivered (default: the relay's)",
    )
    send.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds to wait for the DELIVERED receipt after QUEUED (default: 0)",
    )
    listen = command("listen", _listen, "print and acknowledge incoming messages")
    listen.add_argument(
        "--once", action="store_true", help="fetch what is waiting, then exit"
    )
    command("ping", _ping, "register, ping the relay and print its answer")
    unregister = command("unregister", _unregister, "end this user's session")
    unregister.add_argument(
        "--erase",
        action="store_true",
        help="also delete the user and its mailbox on the relay",
    )
    return parser


def _identity_path(args: argparse.Namespace) -> Path:
    return getattr(args, "identity", DEFAULT_IDENTITY)


def parse_relay_address(text: str) -> tuple[str, int]:
    """Parse HOST:PORT or [IPV6]:PORT; raise CliError naming the bad value."""
    if text.startswith("["):
        host, separator, port = text[1:].partition("]:")
    else:
        host, separator, port = text.rpartition(":")
        if ":" in host:
            separator = ""
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"invalid --relay {text!r}: expected HOST:PORT or [IPV6]:PORT")
    return host, int(port)


def parse_relay_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_SIZE:
        raise CliError(
            f"invalid relay key {text!r}: expected {2 * KEY_SIZE} hex characters"
        )
    return key


def fetch_relay_key(base_url: str) -> bytes:
    """GET base_url/version and return its relay_public_key; raise CliError."""
    url = base_url.rstrip("/") + "/version"
    if not url.startswith(("http://", "https://")):
        raise CliError(
            f"invalid --http {base_url!r}: expected an http:// or https:// URL"
        )
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise CliError(
            f"GET {url} failed: HTTP {exc.code}; pass --relay-key HEX"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(
            f"failed to fetch the relay key from {url}: {reason}; pass --relay-key HEX"
        ) from None
    except ValueError:
        raise CliError(f"GET {url} did not return JSON") from None
    value = document.get("relay_public_key") if isinstance(document, dict) else None
    if (
        not isinstance(value, str)
        or len(value) != 2 * KEY_SIZE
        or value != value.lower()
    ):
        raise CliError(f"GET {url} has no valid relay_public_key (64 lowercase hex)")
    return parse_relay_key(value)


def _connect(args: argparse.Namespace, **options: object) -> RelayClient:
    identity = Identity.load(_identity_path(args))
    address = parse_relay_address(getattr(args, "relay", DEFAULT_RELAY))
    if hasattr(args, "relay_key"):
        key = parse_relay_key(args.relay_key)
    else:
        key = fetch_relay_key(getattr(args, "http", DEFAULT_HTTP))
    return RelayClient(identity, address, key, **options)  # type: ignore[arg-type]


# --- commands ---------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    path = _identity_path(args)
    identity = Identity.generate()
    identity.save(path)
    print(f"created identity file {path}")
    _print_identity(identity)
    return 0


def _whoami(args: argparse.Namespace) -> int:
    identity = Identity.load(_identity_path(args))
    if args.card:
        print(identity.contact_card)
    else:
        _print_identity(identity)
    return 0


def _print_identity(identity: Identity) -> None:
    print(f"user id:      {identity.user_id}")
    print(f"contact card: {identity.contact_card}")


def _send(args: argparse.Namespace) -> int:
    try:
        card = ContactCard.parse(args.card)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not 0 <= args.ttl <= 0xFFFFFFFF:
        raise CliError(f"invalid --ttl {args.ttl}: expected 0 to {0xFFFFFFFF} seconds")
    # surrogateescape keeps argument bytes that are not valid UTF-8.
    sealed = seal(card.x25519_public, args.text.encode("utf-8", "surrogateescape"))
    client = _connect(args, keepalive_interval_s=0, auto_poll=False)
    status = asyncio.run(
        _send_sealed(client, card.user_id, sealed, args.ttl, args.wait)
    )
    return 0 if status in (AckStatus.QUEUED, AckStatus.DELIVERED) else EXIT_ERROR


async def _send_sealed(
    client: RelayClient, recipient_id: str, sealed: bytes, ttl_s: int, wait_s: float
) -> AckStatus:
    message_id = str(uuid.uuid4())
    async with client:
        await client.register()
        status = await client.send(recipient_id, sealed, ttl_s, message_id)
        print(f"message {message_id}: {status.name}", flush=True)
        if status is AckStatus.QUEUED and wait_s > 0:
            await _wait_for_receipt(client, message_id, wait_s)
    return status


async def _wait_for_receipt(
    client: RelayClient, message_id: str, wait_s: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (left := deadline - loop.time()) > 0:
        try:
            receipt = await client.next_receipt(left)
        except TimeoutError:
            break
        if receipt == message_id:
            print(f"message {message_id}: DELIVERED", flush=True)
            return
    print(f"message {message_id}: no DELIVERED receipt within {wait_s:g} s", flush=True)


def _listen(args: argparse.Namespace) -> int:
    client = _connect(args, auto_poll=not args.once)
    try:
        asyncio.run(_listen_until_stopped(client, args.once))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


async def _listen_until_stopped(client: RelayClient, once: bool) -> None:
    async with client:
        established = await client.register()
        print(
            f"registered as {client.identity.user_id}; "
            f"messages waiting: {established.pending}",
            file=sys.stderr,
            flush=True,
        )
        if once:
            await _poll_everything(client)
            return
        print("waiting for messages; press Ctrl-C to stop", file=sys.stderr, flush=True)
        async for entry in client.messages():
            await _show_and_ack(client, entry)


async def _poll_everything(client: RelayClient) -> None:
    # Each POLL returns the oldest unacknowledged messages, so the entries
    # are acknowledged before the next POLL.
    for _ in range(MAX_POLLS_ONCE):
        result = await client.poll()
        while (entry := client.receive_nowait()) is not None:
            await _show_and_ack(client, entry)
        if result.remaining == 0 or result.new == 0:
            return


async def _show_and_ack(client: RelayClient, entry: Entry) -> None:
    print(format_entry(client.identity, entry), flush=True)
    await client.ack([(entry.sender_id, entry.message_id)])


def format_entry(identity: Identity, entry: Entry) -> str:
    """Return one line: time, sender and text, or hex when it cannot be read."""
    received = datetime.fromtimestamp(entry.received_at_ms / 1000, UTC)
    prefix = f"{received:%Y-%m-%d %H:%M:%S}Z from {entry.sender_id}:"
    try:
        text = open_sealed(identity.x25519_key, entry.payload).decode("utf-8")
    except (SealError, UnicodeDecodeError):
        return f"{prefix} (not readable, hex) {entry.payload.hex()}"
    # Control characters in a text could rewrite the terminal.
    printable = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return f"{prefix} {printable}"


# The client's first retransmission timeout, at its default.
PING_RETRY_AFTER_MS = 1000


def _ping(args: argparse.Namespace) -> int:
    client = _connect(args, keepalive_interval_s=0, auto_poll=False)
    asyncio.run(_ping_once(client))
    return 0


async def _ping_once(client: RelayClient) -> None:
    loop = asyncio.get_running_loop()
    async with client:
        await client.register()
        started = loop.time()
        pong = await client.ping()
        elapsed_ms = (loop.time() - started) * 1000
    relay_time = datetime.fromtimestamp(pong.server_time_ms / 1000, UTC)
    print(
        f"pong in {elapsed_ms:.1f} ms: relay time {relay_time:%Y-%m-%d %H:%M:%S}Z, "
        f"messages waiting: {pong.pending}"
    )
    if elapsed_ms > PING_RETRY_AFTER_MS:
        # The time includes retries: the relay drops a PING over its per-user rate
        # (RATE_PING_PER_USER, 6 a minute by default) without a reply.
        print("(the first PING got no answer, so this time includes retries)")


def _unregister(args: argparse.Namespace) -> int:
    client = _connect(args, keepalive_interval_s=0, auto_poll=False)
    asyncio.run(_unregister_once(client, args.erase))
    if args.erase:
        print(f"unregistered {client.identity.user_id} and erased it from the relay")
    else:
        print(f"unregistered {client.identity.user_id}")
    return 0


async def _unregister_once(client: RelayClient, erase: bool) -> None:
    async with client:
        await client.register()
        await client.unregister(erase)


# --- entry point ------------------------------------------------------------------


def run(argv: list[str]) -> int:
    """Run `yaok-relay client` with argv (no program name); return the exit code."""
    try:
        args = _build_parser().parse_args(argv)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc} (see {PROG} --help)", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:
        # --help prints and exits 0 inside argparse.
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return args.handler(args)
    except (CliError, IdentityError, RelayClientError, SealError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"{PROG}: error: network: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        # The command line promises one line per failure, bugs included.
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_ERROR
