"""Fuzz targets: each takes one input as bytes and raises only on a fault.

`TARGETS` maps a target's name to a factory that builds it (some targets
need a relay core with storage). A target raises `Finding` when an input
breaks a property the relay promises; any other exception escaping a target
is a fault too. The first input byte usually selects what to exercise, and
the rest is the material.
"""

import copy
import os
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fuzz.environment import FuzzRelay
from relay.client.session import ClientSession
from relay.config import ConfigError, Settings, load_settings
from relay.core.session import Session
from relay.protocol import codec
from relay.protocol.codec import DecodeError
from relay.protocol.constants import (
    CLIENT_SESSION_OVERHEAD,
    HEADER_SIZE,
    KEY_SIZE,
    MAX_DATAGRAM,
    REGISTER_SIZE,
    SIGNATURE_SIZE,
    UUID_SIZE,
    PacketType,
)
from relay.protocol.cookie import CookieJar
from relay.protocol.crypto import (
    is_low_order_x25519,
    is_weak_ed25519_key,
    new_aead,
    register_signed_message,
    verify_ed25519,
    x25519_public_bytes,
)
from relay.protocol.packets import (
    PacketRejected,
    client_packet_ids,
    open_client_packet,
    open_registered,
    open_relay_packet,
    registered_plain_fields,
    seal_relay_packet,
)


class Finding(AssertionError):
    """An input that breaks a property the relay promises."""


# --- codec: every decoder, and decode-then-encode gives the same bytes -----------


def _round_trip(
    name: str, decode: Callable[[bytes], Any], encode: Callable[[Any], bytes]
) -> Callable[[bytes], None]:
    """Build a check: decode raises only DecodeError, and re-encoding is exact.

    Decoders accept exactly one layout, so any body they accept must come
    back byte for byte from the matching encoder.
    """

    def check(body: bytes) -> None:
        try:
            value = decode(body)
        except DecodeError:
            return
        again = encode(value)
        if again != body:
            raise Finding(
                f"{name}: {body.hex()} decoded and re-encoded as {again.hex()}"
            )

    return check


def _check_header(body: bytes) -> None:
    try:
        fields = codec.unpack_header(body)
    except DecodeError:
        if len(body) >= HEADER_SIZE:
            raise Finding(f"header of {len(body)} bytes rejected") from None
        return
    if codec.HEADER.pack(*fields) != body[:HEADER_SIZE]:
        raise Finding(f"header {body[:HEADER_SIZE].hex()} changed on re-encoding")


def _entries(response: codec.PollResponse) -> bytes:
    encoded = [codec.encode_entry(entry) for entry in response.entries]
    return codec.encode_poll_response(response.remaining, encoded)


def _error_payload(error: codec.ErrorBody) -> bytes:
    datagram = codec.encode_error_datagram(
        error.code, error.echo, error.text, MAX_DATAGRAM
    )
    return datagram[HEADER_SIZE:]


# A fixed key: no fuzzed input can carry a valid tag under it.
_AEAD = new_aead(bytes(range(KEY_SIZE)))


def _check_relay_packet(body: bytes) -> None:
    try:
        open_relay_packet(_AEAD, body)
    except PacketRejected:
        return
    raise Finding(f"relay packet {body.hex()} opened without the key")


def _check_registered(body: bytes) -> None:
    try:
        registered_plain_fields(body)
        open_registered(_AEAD, body)
    except PacketRejected:
        return
    raise Finding(f"REGISTERED {body.hex()} opened without the key")


def _check_client_packet(body: bytes) -> None:
    # The core reads the ids only from datagrams of at least this size.
    if len(body) < HEADER_SIZE + CLIENT_SESSION_OVERHEAD:
        return
    _, counter = client_packet_ids(body)
    try:
        open_client_packet(_AEAD, body, counter)
    except PacketRejected:
        return
    raise Finding(f"client packet {body.hex()} opened without the key")


CODEC_CHECKS: tuple[tuple[str, Callable[[bytes], None]], ...] = (
    ("header", _check_header),
    ("uuid", _round_trip("uuid", codec.decode_uuid, codec.encode_uuid)),
    ("register", _round_trip("register", codec.decode_register, codec.encode_register)),
    ("challenge", _round_trip("challenge", codec.decode_challenge, bytes)),
    (
        "registered_body",
        _round_trip(
            "registered_body",
            codec.decode_registered_body,
            codec.encode_registered_body,
        ),
    ),
    (
        "unregister",
        _round_trip("unregister", codec.decode_unregister, codec.encode_unregister),
    ),
    ("ping", _round_trip("ping", codec.decode_ping, bytes)),
    ("pong", _round_trip("pong", codec.decode_pong, codec.encode_pong)),
    ("draining", _round_trip("draining", codec.decode_draining, codec.encode_draining)),
    (
        "path_challenge",
        _round_trip("path_challenge", codec.decode_path_challenge, bytes),
    ),
    ("message", _round_trip("message", codec.decode_message, codec.encode_message)),
    (
        "message_ack",
        _round_trip(
            "message_ack",
            codec.decode_message_ack,
            lambda ack: codec.encode_message_ack(ack.message_id, ack.status),
        ),
    ),
    ("entry", _round_trip("entry", codec.decode_entry, codec.encode_entry)),
    ("ack", _round_trip("ack", codec.decode_ack, codec.encode_ack)),
    ("poll", _round_trip("poll", codec.decode_poll, codec.encode_poll)),
    (
        "poll_response",
        _round_trip("poll_response", codec.decode_poll_response, _entries),
    ),
    (
        "session_error",
        _round_trip(
            "session_error",
            codec.decode_session_error,
            lambda error: codec.encode_session_error(error.code, error.text),
        ),
    ),
    ("error", _round_trip("error", codec.decode_error, _error_payload)),
    ("relay_packet", _check_relay_packet),
    ("registered", _check_registered),
    ("client_packet", _check_client_packet),
)


def codec_target(data: bytes) -> None:
    """First byte: which decoder; the rest: the bytes it decodes."""
    if not data:
        return
    _, check = CODEC_CHECKS[data[0] % len(CODEC_CHECKS)]
    check(data[1:])


# --- registration parsing, signatures and keys ----------------------------------------


class RegisterTarget:
    """The REGISTER payload as the relay parses and checks it, without a core.

    The fuzzer cannot sign or mint cookies, so a signature that verifies or a
    cookie that passes is a forgery, and a finding.
    """

    def __init__(self) -> None:
        self.relay_public = x25519_public_bytes(X25519PrivateKey.generate())
        self.cookies = CookieJar(os.urandom(32), 30_000)
        self.address = ("127.0.0.1", 40_000)
        self.now_ms = 1_800_000_000_000

    def __call__(self, data: bytes) -> None:
        datagram = codec.pack_header(PacketType.REGISTER, len(data)) + data
        if len(codec.register_echo(datagram)) != 24:
            raise Finding("REGISTER echo is not 24 bytes")
        try:
            register = codec.decode_register(data)
        except DecodeError:
            if len(data) == REGISTER_SIZE and _has_canonical_uuid(data):
                raise Finding(f"valid REGISTER layout rejected: {data.hex()}") from None
            return
        message = register_signed_message(self.relay_public, datagram)
        if verify_ed25519(register.ed25519_public, register.signature, message):
            raise Finding(f"forged REGISTER signature accepted: {data.hex()}")
        if is_weak_ed25519_key(register.ed25519_public) not in (True, False):
            raise Finding("weak-key test returned a non-boolean")
        is_low_order_x25519(register.x25519_public)
        is_low_order_x25519(register.ce_public)
        user_id = register.user_id.encode()
        if self.cookies.check(
            register.cookie, self.address, user_id, register.ce_public, self.now_ms
        ):
            raise Finding(f"forged cookie accepted: {register.cookie.hex()}")


def _has_canonical_uuid(payload: bytes) -> bool:
    try:
        codec.decode_uuid(payload[:UUID_SIZE])
    except DecodeError:
        return False
    return True


# --- cookies --------------------------------------------------------------------------


class CookieTarget:
    """Cookies for fuzzer-chosen addresses: only the exact binding passes.

    Layout: port (2) | address family and bytes (17) | user id (36) |
    ce_public (32) | a candidate cookie (32) | clock offset (4).
    """

    def __init__(self) -> None:
        self.jar = CookieJar(os.urandom(32), 30_000)
        self.now_ms = 1_800_000_000_000

    def __call__(self, data: bytes) -> None:
        data = data.ljust(123, b"\0")
        port = int.from_bytes(data[0:2], "big")
        host = _host(data[2:19])
        user_id, ce_public, candidate = data[19:55], data[55:87], data[87:119]
        now = self.now_ms + int.from_bytes(data[119:123], "big")
        address = (host, port)
        if self.jar.check(candidate, address, user_id, ce_public, now):
            raise Finding(f"forged cookie accepted: {candidate.hex()}")
        cookie = self.jar.mint(address, user_id, ce_public, now)
        if not self.jar.check(cookie, address, user_id, ce_public, now):
            raise Finding(f"fresh cookie rejected for {address}")
        self._expect_rejected(
            cookie, ((host, (port + 1) % 65536), user_id, ce_public, now)
        )
        self._expect_rejected(cookie, ((host + "0", port), user_id, ce_public, now))
        self._expect_rejected(cookie, (address, _flip(user_id), ce_public, now))
        self._expect_rejected(cookie, (address, user_id, _flip(ce_public), now))
        lifetime = self.jar.lifetime_ms
        self._expect_rejected(cookie, (address, user_id, ce_public, now + lifetime + 1))
        self._expect_rejected(_flip(cookie), (address, user_id, ce_public, now))

    def _expect_rejected(self, cookie: bytes, binding: tuple) -> None:
        address, user_id, ce_public, now = binding
        if self.jar.check(cookie, address, user_id, ce_public, now):
            raise Finding(f"cookie accepted for another binding: {binding!r}")


def _host(raw: bytes) -> str:
    if raw[0] & 1:
        return ":".join(raw[i + 1 : i + 3].hex() for i in range(0, 16, 2))
    return ".".join(str(byte) for byte in raw[1:5])


def _flip(raw: bytes) -> bytes:
    return bytes((raw[0] ^ 0x01,)) + raw[1:]


# --- the client session ---------------------------------------------------------------

_RELAY_SESSION_TYPES = (
    PacketType.UNREGISTERED,
    PacketType.PONG,
    PacketType.DRAINING,
    PacketType.PATH_CHALLENGE,
    PacketType.MESSAGE_ACK,
    PacketType.MESSAGE_DELIVER,
    PacketType.POLL_RESPONSE,
    PacketType.SESSION_ERROR,
)
_HANDSHAKE_TYPES = (PacketType.CHALLENGE, PacketType.REGISTERED, PacketType.ERROR)


class ClientTarget:
    """A phone's ClientSession fed hostile relay datagrams; it must never raise.

    Mode byte 0: a raw datagram to an established session. 1: a datagram
    with a valid tag from the relay, type and body from the input, so the
    body parsers run. 2: a plain CHALLENGE, REGISTERED or ERROR during a
    handshake. Each input goes to a shallow copy of the established
    session, so that an UNREGISTERED ends the copy only.
    """

    def __init__(self) -> None:
        self.relay = FuzzRelay()
        self.client = self.relay.alice.session
        session = self.relay.live_session(self.relay.alice)
        assert session is not None
        self.relay_session = session
        self.relay_outbound = ChaCha20Poly1305(session.keys[32:])

    def __call__(self, data: bytes) -> None:
        if len(data) < 2:
            return
        mode, rest = data[0] % 3, data[2:]
        if mode == 0:
            copy.copy(self.client).receive(data[1:])
        elif mode == 1:
            session = self.relay_session
            packet_type = _RELAY_SESSION_TYPES[data[1] % len(_RELAY_SESSION_TYPES)]
            datagram = seal_relay_packet(
                self.relay_outbound, packet_type, session.next_counter(), rest
            )
            copy.copy(self.client).receive(datagram)
        else:
            self._handshake_datagram(data[1], rest)

    def _handshake_datagram(self, selector: int, rest: bytes) -> None:
        client = ClientSession(self.relay.alice.identity, self.relay.core.relay_public)
        client.start_register()
        cookie = codec.pack_header(PacketType.CHALLENGE, 32) + bytes(32)
        if selector & 0x80:
            client.receive(cookie)
        packet_type = _HANDSHAKE_TYPES[selector % len(_HANDSHAKE_TYPES)]
        client.receive(codec.pack_header(packet_type, len(rest)) + rest)

    def close(self) -> None:
        self.relay.close()


# --- the core -------------------------------------------------------------------------

_CLIENT_TYPES = (
    PacketType.UNREGISTER,
    PacketType.PING,
    PacketType.MESSAGE,
    PacketType.ACK,
    PacketType.POLL,
)


def session_state(session: Session) -> tuple:
    """Everything about a session that a rejected packet must leave alone."""
    return (
        session.session_id,
        session.address,
        session.highest,
        session.seen,
        session.last_seen_ms,
        session.send_counter,
        session.path_nonce,
        session.path_budget,
    )


class CoreTarget:
    """The socket-free core with real storage, fed one hostile datagram per input.

    Mode byte 0: a raw datagram from a new address. 1: a forged packet on
    alice's live session (her session id, fuzzed counter, ciphertext and
    tag). 2: a packet with a valid tag from alice, type and body from the
    input. 3: a signed REGISTER from alice with fuzzed X25519 keys. 4: a raw
    datagram from alice's address.

    Properties: nothing raises and nothing is logged as a warning or error;
    a datagram that is not an accepted session packet gets at most as many
    bytes back as it had; a forged packet leaves the session as it was.
    """

    def __init__(self) -> None:
        self.relay = FuzzRelay()

    def __call__(self, data: bytes) -> None:
        if len(data) < 2:
            return
        mode = data[0] % 5
        if mode == 0:
            self._unauthenticated(data[1:], self.relay.fresh_address())
        elif mode == 1:
            self._forged(data[1], data[2:])
        elif mode == 2:
            self._sealed(data[1], data[2:])
        elif mode == 3:
            self._register_with_keys(data[1:])
        else:
            self._unauthenticated(data[1:], self.relay.alice.address)
        loud = self.relay.take_loud_logs()
        if loud:
            raise Finding(f"the core logged {loud[0]!r} for input {data.hex()}")

    def _unauthenticated(self, datagram: bytes, address: tuple[str, int]) -> None:
        replies = self.relay.feed(datagram, address)
        _check_no_amplification(datagram, replies)

    def _forged(self, selector: int, rest: bytes) -> None:
        session = self.relay.ensure_registered(self.relay.alice)
        packet_type = _CLIENT_TYPES[selector % len(_CLIENT_TYPES)]
        payload = session.session_id + rest
        datagram = codec.pack_header(packet_type, len(payload)) + payload
        before = session_state(session)
        replies = self.relay.feed(datagram, self.relay.alice.address)
        _check_no_amplification(datagram, replies)
        if session_state(session) != before:
            raise Finding(f"forged packet changed the session: {datagram.hex()}")
        if self.relay.live_session(self.relay.alice) is not session:
            raise Finding(f"forged packet ended the session: {datagram.hex()}")

    def _sealed(self, selector: int, body: bytes) -> None:
        alice = self.relay.alice
        self.relay.ensure_registered(alice)
        packet_type = _CLIENT_TYPES[selector % len(_CLIENT_TYPES)]
        self.relay.feed(alice.session.seal(packet_type, body), alice.address)

    def _register_with_keys(self, rest: bytes) -> None:
        rest = rest.ljust(2 * KEY_SIZE, b"\0")
        alice = self.relay.alice
        identity = alice.identity
        ce_public, x25519_public = rest[:KEY_SIZE], rest[KEY_SIZE : 2 * KEY_SIZE]
        register = codec.Register(
            identity.user_id,
            x25519_public,
            identity.ed25519_public,
            ce_public,
            bytes(32),
            bytes(SIGNATURE_SIZE),
        )
        first = self._register_datagram(register)
        replies = self.relay.feed(first, alice.address)
        _check_no_amplification(first, replies)
        challenges = [r for r in replies if r[1] == PacketType.CHALLENGE]
        if not challenges:
            return
        cookie = challenges[0][HEADER_SIZE:]
        unsigned = self._register_datagram(
            codec.Register(
                identity.user_id,
                x25519_public,
                identity.ed25519_public,
                ce_public,
                cookie,
                bytes(SIGNATURE_SIZE),
            )
        )
        message = register_signed_message(self.relay.core.relay_public, unsigned)
        signed = unsigned[:-SIGNATURE_SIZE] + identity.signing_key.sign(message)
        replies = self.relay.feed(signed, alice.address)
        _check_no_amplification(signed, replies)

    @staticmethod
    def _register_datagram(register: codec.Register) -> bytes:
        payload = codec.encode_register(register)
        return codec.pack_header(PacketType.REGISTER, len(payload)) + payload

    def close(self) -> None:
        self.relay.close()


def _check_no_amplification(datagram: bytes, replies: list[bytes]) -> None:
    answered = sum(len(reply) for reply in replies)
    if answered > len(datagram):
        raise Finding(
            f"{answered} bytes answered to {len(datagram)} unauthenticated bytes: "
            f"{datagram.hex()}"
        )


# --- settings -------------------------------------------------------------------------

SETTING_NAMES = tuple(sorted(name.upper() for name in Settings.model_fields))


def config_target(data: bytes) -> None:
    """Environment variables from the input; load_settings must be one clean line.

    Parts are separated by 0xFF; each part's first byte picks a variable and
    the rest, as UTF-8, is its value.
    """
    environment: dict[str, str] = {}
    for part in data.split(b"\xff"):
        if not part:
            continue
        name = SETTING_NAMES[part[0] % len(SETTING_NAMES)]
        # Environment values can hold neither NUL nor lone surrogates.
        value = part[1:].decode("utf-8", "replace").replace("\0", "")
        environment[name] = value
    with _environment(environment):
        try:
            load_settings()
        except ConfigError as exc:
            _check_config_message(str(exc), environment)


def _check_config_message(message: str, environment: dict[str, str]) -> None:
    if "\n" in message or "\r" in message:
        raise Finding(f"configuration error spans lines: {message!r}")
    if not message.startswith("invalid configuration: "):
        raise Finding(f"configuration error without its prefix: {message!r}")
    if not any(name in message for name in environment):
        raise Finding(
            f"configuration error names no variable that was set: {message!r}"
        )


class _environment:
    """Replace the relay's variables in os.environ for the duration of a block."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for name in SETTING_NAMES:
            self.saved[name] = os.environ.pop(name, None)
        os.environ.update(self.values)

    def __exit__(self, *exc: object) -> None:
        for name in SETTING_NAMES:
            os.environ.pop(name, None)
            if self.saved[name] is not None:
                os.environ[name] = self.saved[name]


# --- the ops API ----------------------------------------------------------------------

HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")


class HttpTarget:
    """The ops API as an ASGI app, called without a socket with fuzzed requests.

    Layout: method selector (1), then path, query string and Accept value
    separated by newlines, reduced to the bytes uvicorn lets through. No
    request may end in a 5xx, except 503 from /health when the relay is
    unhealthy, which this relay never is here.
    """

    def __init__(self) -> None:
        from relay.ops.metrics import RelayCollector, WindowedRates, build_registry
        from relay.server.http import OpsState, create_app

        self.relay = FuzzRelay()
        core, storage = self.relay.core, self.relay.storage
        started = time.monotonic()
        collector = RelayCollector(core, storage, WindowedRates(core), started)
        state = OpsState(core, storage, build_registry(collector), started)
        self.app = create_app(state)

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        method = HTTP_METHODS[data[0] % len(HTTP_METHODS)]
        raw_path, _, rest = data[1:].partition(b"\n")
        query, _, accept = rest.partition(b"\n")
        # uvicorn answers 400 itself for a request target with anything but
        # visible ASCII, and for control characters in a header value.
        raw_path, query = _visible_ascii(raw_path), _visible_ascii(query)
        accept = bytes(byte for byte in accept if byte >= 0x20 or byte == 0x09)
        status = self.relay.run(self.request(method, b"/" + raw_path, query, accept))
        if status >= 500:
            raise Finding(f"{method.decode()} {raw_path!r}?{query!r} answered {status}")

    async def request(
        self, method: bytes, raw_path: bytes, query: bytes, accept: bytes
    ) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method.decode("ascii"),
            "scheme": "http",
            "path": raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"accept", accept)],
            "client": ("127.0.0.1", 50_000),
            "server": ("127.0.0.1", 8_080),
        }
        statuses: list[int] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await self.app(scope, receive, send)
        if not statuses:
            raise Finding(f"no response to {method!r} {raw_path!r}")
        return statuses[0]

    def close(self) -> None:
        self.relay.close()


def _visible_ascii(raw: bytes) -> bytes:
    return bytes(byte for byte in raw if 0x21 <= byte <= 0x7E)


# --- the registry of targets ----------------------------------------------------------

TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "codec": lambda: codec_target,
    "register": RegisterTarget,
    "cookie": CookieTarget,
    "client": ClientTarget,
    "core": CoreTarget,
    "config": lambda: config_target,
    "http": HttpTarget,
}


def close_target(target: Callable[[bytes], None]) -> None:
    close = getattr(target, "close", None)
    if close is not None:
        close()
