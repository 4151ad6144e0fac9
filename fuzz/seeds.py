"""Write the starting inputs of every target into fuzz/corpus/TARGET/seed-*.

    python -m fuzz.seeds

Seeds are valid packets and requests in each target's input layout, so the
fuzzer starts from inputs that pass the parsers and mutates from there.
Running it again replaces the seed files and leaves other corpus files alone.
"""

import uuid
from pathlib import Path

from relay.protocol import codec
from relay.protocol.constants import AckStatus, ErrorCode, PacketType

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
ALICE = "6f1c2a4e-8d3b-4c5a-9e7f-0123456789ab"
BOB = "00000000-1111-4222-8333-444444444444"
MESSAGE_ID = "12345678-9abc-4def-8123-456789abcdef"


def _entry(payload: bytes = b"sealed") -> bytes:
    return codec.encode_entry(
        codec.Entry(MESSAGE_ID, ALICE, 1_800_000_000_000, payload)
    )


def _register(cookie: bytes = bytes(32)) -> bytes:
    return codec.encode_register(
        codec.Register(
            ALICE,
            bytes(range(32)),
            bytes(range(32, 64)),
            bytes(range(64, 96)),
            cookie,
            bytes(range(64)),
        )
    )


def codec_seeds() -> dict[str, bytes]:
    from fuzz.targets import CODEC_CHECKS

    bodies = {
        "header": codec.pack_header(PacketType.PING, 40),
        "uuid": ALICE.encode(),
        "register": _register(),
        "challenge": bytes(range(32)),
        "registered_body": codec.encode_registered_body(
            codec.RegisteredBody(1_800_000_000_000, 120, 3)
        ),
        "unregister": codec.encode_unregister(1),
        "ping": bytes(8),
        "pong": codec.encode_pong(codec.Pong(1_800_000_000_000, 2)),
        "draining": codec.encode_draining(2000),
        "path_challenge": bytes(range(8)),
        "message": codec.encode_message(codec.Message(MESSAGE_ID, BOB, 60, b"sealed")),
        "message_ack": codec.encode_message_ack(MESSAGE_ID, AckStatus.QUEUED),
        "entry": _entry(),
        "ack": codec.encode_ack([(ALICE, MESSAGE_ID), (BOB, MESSAGE_ID)]),
        "poll": codec.encode_poll(1200),
        "poll_response": codec.encode_poll_response(1, [_entry(), _entry(b"")]),
        "session_error": codec.encode_session_error(ErrorCode.BAD_REQUEST, "bad body"),
        "error": codec.encode_error_datagram(
            ErrorCode.FORBIDDEN, bytes(24), "cookie", 100
        )[8:],
        "relay_packet": codec.pack_header(PacketType.PONG, 36) + bytes(36),
        "registered": codec.pack_header(PacketType.REGISTERED, 110) + bytes(110),
        "client_packet": codec.pack_header(PacketType.PING, 40) + bytes(40),
    }
    names = [name for name, _ in CODEC_CHECKS]
    return {name: bytes((names.index(name),)) + body for name, body in bodies.items()}


def core_seeds() -> dict[str, bytes]:
    first = codec.pack_header(PacketType.REGISTER, 228) + _register()
    message = codec.encode_message(codec.Message(str(uuid.UUID(int=1)), BOB, 0, b"hi"))
    sealed_types = {"unregister": 0, "ping": 1, "message": 2, "ack": 3, "poll": 4}
    return {
        "raw_register": b"\x00" + first,
        "raw_ping": b"\x00" + codec.pack_header(PacketType.PING, 40) + bytes(40),
        "other_version": b"\x00" + b"\x02\x01\x00\x00\x00\x00\x00\x10" + bytes(16),
        "forged_ping": b"\x01\x01" + bytes(8 + 16),
        "forged_message": b"\x01\x02" + bytes(8) + message + bytes(16),
        "sealed_ping": bytes((2, sealed_types["ping"])),
        "sealed_ping_echo": bytes((2, sealed_types["ping"])) + bytes(8),
        "sealed_message": bytes((2, sealed_types["message"])) + message,
        "sealed_ack": bytes((2, sealed_types["ack"]))
        + codec.encode_ack([(ALICE, MESSAGE_ID)]),
        "sealed_poll": bytes((2, sealed_types["poll"])) + codec.encode_poll(0),
        "sealed_unregister": bytes((2, sealed_types["unregister"])) + b"\x00",
        "register_keys": b"\x03" + bytes(range(1, 65)),
        "register_low_order": b"\x03" + bytes(64),
        "raw_from_alice": b"\x04" + codec.pack_header(PacketType.POLL, 42) + bytes(42),
    }


def client_seeds() -> dict[str, bytes]:
    types = {
        "unregistered": 0,
        "pong": 1,
        "draining": 2,
        "path_challenge": 3,
        "message_ack": 4,
        "deliver": 5,
        "poll_response": 6,
        "session_error": 7,
    }
    return {
        "raw": b"\x00\x00" + codec.pack_header(PacketType.PONG, 36) + bytes(36),
        "pong": bytes((1, types["pong"])) + codec.encode_pong(codec.Pong(1, 2)),
        "deliver": bytes((1, types["deliver"])) + _entry(),
        "poll_response": bytes((1, types["poll_response"]))
        + codec.encode_poll_response(0, [_entry()]),
        "message_ack": bytes((1, types["message_ack"]))
        + codec.encode_message_ack(MESSAGE_ID, AckStatus.DELIVERED),
        "session_error": bytes((1, types["session_error"]))
        + codec.encode_session_error(ErrorCode.BAD_REQUEST, "x"),
        "path_challenge": bytes((1, types["path_challenge"])) + bytes(8),
        "unregistered": bytes((1, types["unregistered"])) + b"\x01",
        "challenge": b"\x02\x00" + bytes(32),
        "registered": b"\x02\x81" + bytes(110),
        "error": b"\x02\x02"
        + codec.encode_error_datagram(ErrorCode.FORBIDDEN, bytes(24), "x", 60)[8:],
    }


def other_seeds() -> dict[str, dict[str, bytes]]:
    from fuzz.targets import SETTING_NAMES

    def setting(name: str, value: str) -> bytes:
        return bytes((SETTING_NAMES.index(name),)) + value.encode()

    return {
        "register": {"register": _register(), "signed": _register(bytes(range(32)))},
        "cookie": {"ipv4": bytes(123), "ipv6": b"\x01\x00\x01" + bytes(120)},
        "config": {
            "port": setting("RELAY_PORT", "41641"),
            "ports": setting("RELAY_PORT", "abc")
            + b"\xff"
            + setting("HTTP_PORT", "-1"),
            "rust_log": setting("RUST_LOG", "warn,yaok_relay=debug"),
            "database": setting("DATABASE_URL", "sqlite://x.db"),
            "timeout": setting("DATABASE_CHECK_TIMEOUT_S", "0.5"),
            "ttl": setting("MESSAGE_TTL_DEFAULT_S", "100")
            + b"\xff"
            + setting("MESSAGE_TTL_MAX_S", "60"),
        },
        "http": {
            "health": b"\x00health\n\napplication/json",
            "health_text": b"\x00health\n\ntext/plain",
            "metrics": b"\x00metrics\n\napplication/openmetrics-text",
            "version": b"\x00version\na=1\n*/*",
            "post": b"\x02version\n\n",
        },
    }


def write_seeds() -> int:
    groups = {"codec": codec_seeds(), "core": core_seeds(), "client": client_seeds()}
    groups.update(other_seeds())
    written = 0
    for target, seeds in groups.items():
        folder = CORPUS_DIR / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / f"seed-{name}").write_bytes(data)
            written += 1
    return written


if __name__ == "__main__":
    print(f"wrote {write_seeds()} seed inputs under {CORPUS_DIR}")
