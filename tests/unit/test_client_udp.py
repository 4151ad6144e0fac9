"""RelayClient over real UDP on 127.0.0.1, against a small relay double.

The double speaks protocol v1 with the shared protocol modules (cookies,
signatures, session keys, sealing, replay window) and keeps mailboxes in
memory. It is not the relay: it has no rate limits, quotas, storage or
anti-amplification, and tests steer it to lose, refuse or forget things.
"""

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.client import (
    ClientClosed,
    Identity,
    NotRegistered,
    RegistrationForbidden,
    RegistrationRateLimited,
    RelayClient,
    RelayOverloaded,
    RelayTimeout,
)
from relay.protocol import codec
from relay.protocol.constants import (
    HEADER_SIZE,
    POLL_DEFAULT_BYTES,
    POLL_MIN_BYTES,
    REGISTER_SIGNED_SIZE,
    UNREGISTER_ERASE,
    ZERO_COOKIE,
    AckStatus,
    ErrorCode,
    PacketType,
)
from relay.protocol.cookie import CookieJar, derive_cookie_key
from relay.protocol.crypto import (
    derive_session_keys,
    new_aead,
    register_signed_message,
    verify_ed25519,
    x25519,
    x25519_public_bytes,
)
from relay.protocol.packets import (
    PacketRejected,
    client_packet_ids,
    open_client_packet,
    relay_packet_size,
    seal_registered,
    seal_relay_packet,
)
from relay.protocol.replay import ReplayWindow

FAST = {"timeout_s": 0.05, "max_timeout_s": 0.2, "tries": 4}
WAIT_S = 2.0


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class DoubleSession:
    user_id: str
    session_id: bytes
    opener: object
    sealer: object
    address: tuple
    counter: int = 1
    window: ReplayWindow = field(default_factory=ReplayWindow)
    path_nonce: bytes | None = None


class RelayDouble(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.static = X25519PrivateKey.generate()
        self.public = x25519_public_bytes(self.static)
        self.cookies = CookieJar(
            derive_cookie_key(self.static.private_bytes_raw()), 30_000
        )
        self.sessions: dict[bytes, DoubleSession] = {}
        self.by_user: dict[str, DoubleSession] = {}
        self.mailboxes: dict[str, list[codec.Entry]] = {}
        self.states: dict[tuple[str, str], AckStatus] = {}
        # Cookie to (the REGISTER's first 164 payload bytes, the REGISTERED sent).
        self.used_cookies: dict[bytes, tuple[bytes, bytes]] = {}
        self.accepted: list[
            tuple[str, int, int, bytes]
        ] = []  # user, type, counter, body
        self.rejected = 0
        self.register_error: tuple[int, str] | None = None
        self.message_status: AckStatus | None = None
        self.silent_types: set[int] = set()
        self.silent_count = 0
        self.registers = 0

    async def start(self) -> "RelayDouble":
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.address = self.transport.get_extra_info("sockname")
        return self

    def close(self) -> None:
        self.transport.close()

    def client(self, identity: Identity | None = None, **options) -> RelayClient:
        merged = {**FAST, "keepalive_interval_s": 0, **options}
        return RelayClient(
            identity or Identity.generate(), self.address, self.public, **merged
        )

    # --- datagrams in ----------------------------------------------------------

    def datagram_received(self, data: bytes, addr) -> None:
        packet_type = data[1]
        if packet_type == PacketType.REGISTER:
            self._on_register(data, addr)
        else:
            self._on_session_packet(data, addr)

    def _send(self, datagram: bytes, addr) -> None:
        self.transport.sendto(datagram, addr)

    def _error(self, code: int, echo: bytes, text: str, addr, limit: int) -> None:
        self._send(codec.encode_error_datagram(code, echo, text, limit), addr)

    def _on_register(self, data: bytes, addr) -> None:
        register = codec.decode_register(data[HEADER_SIZE:])
        if register.cookie == ZERO_COOKIE:
            self._on_first_register(register, data, addr)
            return

        echo = codec.register_echo(data)
        user = register.user_id.encode()
        now = now_ms()
        valid_cookie = self.cookies.check(
            register.cookie, addr, user, register.ce_public, now
        )
        message = register_signed_message(self.public, data)
        signature = register.signature
        if not valid_cookie or not verify_ed25519(
            register.ed25519_public, signature, message
        ):
            self._error(ErrorCode.FORBIDDEN, echo, "forbidden", addr, len(data))
            return

        signed = data[HEADER_SIZE : HEADER_SIZE + REGISTER_SIGNED_SIZE]
        if register.cookie in self.used_cookies:
            first_bytes, registered = self.used_cookies[register.cookie]
            if first_bytes == signed:
                self._send(registered, addr)
            else:
                self._error(ErrorCode.FORBIDDEN, echo, "cookie used", addr, len(data))
            return

        registered = self._create_session(register, addr)
        self.used_cookies[register.cookie] = (signed, registered)
        self._send(registered, addr)

    def _on_first_register(self, register: codec.Register, data: bytes, addr) -> None:
        if self.register_error is not None:
            code, text = self.register_error
            self._error(code, codec.register_echo(data), text, addr, len(data))
            return
        user = register.user_id.encode()
        cookie = self.cookies.mint(addr, user, register.ce_public, now_ms())
        challenge = codec.pack_header(PacketType.CHALLENGE, len(cookie)) + cookie
        self._send(challenge, addr)

    def _create_session(self, register: codec.Register, addr) -> bytes:
        self.registers += 1
        relay_ephemeral = X25519PrivateKey.generate()
        re_public = x25519_public_bytes(relay_ephemeral)
        session_id = os.urandom(16)
        dh1 = x25519(self.static, register.ce_public)
        dh2 = x25519(relay_ephemeral, register.ce_public)
        k_c2s, k_s2c = derive_session_keys(dh1, dh2, register.cookie, session_id)
        session = DoubleSession(
            register.user_id, session_id, new_aead(k_c2s), new_aead(k_s2c), addr
        )
        old = self.by_user.get(register.user_id)
        if old is not None:
            self.sessions.pop(old.session_id, None)
        self.sessions[session_id] = session
        self.by_user[register.user_id] = session
        self.mailboxes.setdefault(register.user_id, [])
        pending = len(self.mailboxes[register.user_id])
        body = codec.encode_registered_body(
            codec.RegisteredBody(now_ms(), 120, pending)
        )
        return seal_registered(session.sealer, session_id, re_public, 1, body)

    def _on_session_packet(self, data: bytes, addr) -> None:
        session_id, counter = client_packet_ids(data)
        session = self.sessions.get(session_id)
        if session is None:
            echo = data[HEADER_SIZE : HEADER_SIZE + 24]
            self._error(
                ErrorCode.UNKNOWN_SESSION, echo, "unknown session", addr, len(data)
            )
            return
        try:
            body = open_client_packet(session.opener, data, counter)
        except PacketRejected:
            self.rejected += 1
            return
        highest = counter > session.window.highest
        if not session.window.accept(counter):
            self.rejected += 1
            return
        self.accepted.append((session.user_id, data[1], counter, body))
        if highest and addr != session.address:
            session.address = addr
            session.path_nonce = os.urandom(8)
            self.seal_to(session, PacketType.PATH_CHALLENGE, session.path_nonce)
        if data[1] in self.silent_types and self.silent_count > 0:
            self.silent_count -= 1
            return
        self._dispatch(session, data[1], body)

    def _dispatch(self, session: DoubleSession, packet_type: int, body: bytes) -> None:
        if packet_type == PacketType.PING:
            if body and body == session.path_nonce:
                session.path_nonce = None
            pending = len(self.mailboxes[session.user_id])
            self.seal_to(
                session,
                PacketType.PONG,
                codec.encode_pong(codec.Pong(now_ms(), pending)),
            )
        elif packet_type == PacketType.MESSAGE:
            self._on_message(session, codec.decode_message(body))
        elif packet_type == PacketType.ACK:
            self._on_ack(session, codec.decode_ack(body))
        elif packet_type == PacketType.POLL:
            self._on_poll(session, codec.decode_poll(body))
        elif packet_type == PacketType.UNREGISTER:
            flags = codec.decode_unregister(body)
            if flags & UNREGISTER_ERASE:
                self.mailboxes.pop(session.user_id, None)
            self.seal_to(
                session, PacketType.UNREGISTERED, codec.encode_unregister(flags)
            )
            self.sessions.pop(session.session_id, None)
            self.by_user.pop(session.user_id, None)

    def _on_message(self, session: DoubleSession, message: codec.Message) -> None:
        key = (session.user_id, message.message_id)
        status = self.message_status or self.states.get(key)
        if status is None:
            status = AckStatus.QUEUED
            self.states[key] = status
            entry = codec.Entry(
                message.message_id, session.user_id, now_ms(), message.payload
            )
            self.mailboxes.setdefault(message.recipient_id, []).append(entry)
            recipient = self.by_user.get(message.recipient_id)
            if recipient is not None:
                self.seal_to(
                    recipient, PacketType.MESSAGE_DELIVER, codec.encode_entry(entry)
                )
        ack = codec.encode_message_ack(message.message_id, status)
        self.seal_to(session, PacketType.MESSAGE_ACK, ack)

    def _on_ack(self, session: DoubleSession, keys: list[tuple[str, str]]) -> None:
        mailbox = self.mailboxes.get(session.user_id, [])
        for sender_id, message_id in keys:
            found = [
                e
                for e in mailbox
                if (e.sender_id, e.message_id) == (sender_id, message_id)
            ]
            for entry in found:
                mailbox.remove(entry)
                self.states[(sender_id, message_id)] = AckStatus.DELIVERED
                sender = self.by_user.get(sender_id)
                if sender is not None:
                    receipt = codec.encode_message_ack(message_id, AckStatus.DELIVERED)
                    self.seal_to(sender, PacketType.MESSAGE_ACK, receipt)

    def _on_poll(self, session: DoubleSession, max_bytes: int) -> None:
        budget = max(max_bytes or POLL_DEFAULT_BYTES, POLL_MIN_BYTES)
        mailbox = self.mailboxes.get(session.user_id, [])
        chosen: list[bytes] = []
        size = relay_packet_size(codec.POLL_RESPONSE_OVERHEAD)
        for entry in mailbox:
            encoded = codec.encode_entry(entry)
            if chosen and size + len(encoded) > budget:
                break
            chosen.append(encoded)
            size += len(encoded)
        body = codec.encode_poll_response(len(mailbox) - len(chosen), chosen)
        self.seal_to(session, PacketType.POLL_RESPONSE, body)

    # --- datagrams out and controls -------------------------------------------

    def seal_to(self, session: DoubleSession, packet_type: int, body: bytes) -> None:
        session.counter += 1
        datagram = seal_relay_packet(session.sealer, packet_type, session.counter, body)
        self._send(datagram, session.address)

    def store(self, recipient_id: str, sender_id: str, payload: bytes) -> codec.Entry:
        entry = codec.Entry(str(uuid.uuid4()), sender_id, now_ms(), payload)
        self.mailboxes.setdefault(recipient_id, []).append(entry)
        return entry

    def push(self, user_id: str, entry: codec.Entry) -> None:
        self.seal_to(
            self.by_user[user_id], PacketType.MESSAGE_DELIVER, codec.encode_entry(entry)
        )

    def types_from(self, user_id: str) -> list[int]:
        return [
            packet_type for user, packet_type, _, _ in self.accepted if user == user_id
        ]


@pytest.fixture
async def relay_double():
    double = await RelayDouble().start()
    yield double
    double.close()


async def eventually(condition, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def dropping(packet_type: int, count: int = 1):
    """Return an on_datagram_sent hook losing the first count datagrams of a type."""
    state = {"left": count, "seen": []}

    def hook(datagram: bytes) -> bool:
        state["seen"].append(datagram)
        if datagram[1] == packet_type and state["left"] > 0:
            state["left"] -= 1
            return False
        return True

    hook.seen = state["seen"]  # type: ignore[attr-defined]
    return hook


# --- registration ----------------------------------------------------------------


async def test_register_creates_session(relay_double):
    async with relay_double.client() as client:
        established = await client.register()
        assert client.registered
        assert established.session_id in relay_double.sessions
        assert established.pending == 0


async def test_register_survives_lost_first_register(relay_double):
    hook = dropping(PacketType.REGISTER)
    async with relay_double.client(on_datagram_sent=hook) as client:
        await client.register()
    registers = [d for d in hook.seen if d[1] == PacketType.REGISTER]
    assert len(registers) >= 3  # lost, repeated, signed
    assert registers[0] == registers[1]
    assert registers[-1][8:140] == registers[0][8:140]
    assert registers[-1][140:172] != bytes(32)


async def test_register_repeats_signed_register(relay_double):
    lost = {"left": 1}

    def lose_registered(datagram: bytes, addr) -> bool:
        if datagram[1] == PacketType.REGISTERED and lost["left"]:
            lost["left"] -= 1
            return False
        return True

    async with relay_double.client(on_datagram_received=lose_registered) as client:
        established = await client.register()
    assert relay_double.registers == 1
    assert established.session_id in relay_double.sessions


@pytest.mark.parametrize(
    ("code", "text", "error"),
    [
        (ErrorCode.OVERLOADED, "overloaded", RelayOverloaded),
        (ErrorCode.RATE_LIMITED, "retry_after_ms=1500", RegistrationRateLimited),
        (ErrorCode.FORBIDDEN, "forbidden", RegistrationForbidden),
    ],
)
async def test_register_rejections_raise(relay_double, code, text, error):
    relay_double.register_error = (code, text)
    async with relay_double.client() as client:
        with pytest.raises(error) as raised:
            await client.register()
        assert not client.registered
    assert raised.value.code == code
    if error is RegistrationRateLimited:
        assert raised.value.retry_after_ms == 1500


async def test_register_times_out(relay_double):
    relay_double.close()
    async with relay_double.client(tries=2) as client:
        with pytest.raises(RelayTimeout, match="REGISTER after 2 tries"):
            await client.register()


async def test_concurrent_registers_share_handshake(relay_double):
    async with relay_double.client() as client:
        first, second = await asyncio.gather(client.register(), client.register())
    assert first == second
    assert relay_double.registers == 1


# --- sending and receiving -----------------------------------------------------------


async def test_message_between_two_clients(relay_double):
    async with relay_double.client() as alice, relay_double.client() as bob:
        await alice.register()
        await bob.register()
        status = await alice.send(bob.identity.user_id, b"sealed bytes", ttl_s=60)
        assert status is AckStatus.QUEUED
        entry = await bob.receive(WAIT_S)
        assert entry.sender_id == alice.identity.user_id
        assert entry.payload == b"sealed bytes"
        await bob.ack([(entry.sender_id, entry.message_id)])
        assert await alice.next_receipt(WAIT_S) == entry.message_id
        await eventually(lambda: relay_double.mailboxes[bob.identity.user_id] == [])


async def test_send_retransmits_with_fresh_counter(relay_double):
    hook = dropping(PacketType.MESSAGE)
    async with relay_double.client(on_datagram_sent=hook) as client:
        await client.register()
        status = await client.send(
            str(uuid.uuid4()), b"x", message_id=str(uuid.uuid4())
        )
    assert status is AckStatus.QUEUED
    messages = [d for d in hook.seen if d[1] == PacketType.MESSAGE]
    counters = [client_packet_ids(d)[1] for d in messages]
    assert len(counters) >= 2
    assert counters == sorted(set(counters))


async def test_send_returns_refusal_status(relay_double):
    relay_double.message_status = AckStatus.MAILBOX_FULL
    async with relay_double.client() as client:
        await client.register()
        assert await client.send(str(uuid.uuid4()), b"x") is AckStatus.MAILBOX_FULL


async def test_send_times_out(relay_double):
    relay_double.silent_types = {PacketType.MESSAGE}
    relay_double.silent_count = 100
    async with relay_double.client(tries=3) as client:
        await client.register()
        with pytest.raises(RelayTimeout, match="MESSAGE"):
            await client.send(str(uuid.uuid4()), b"x")
    assert (
        relay_double.types_from(client.identity.user_id).count(PacketType.MESSAGE) == 3
    )


async def test_send_repeated_message_id_gets_state(relay_double):
    message_id = str(uuid.uuid4())
    async with relay_double.client() as alice, relay_double.client() as bob:
        await alice.register()
        await bob.register()
        assert (
            await alice.send(bob.identity.user_id, b"x", message_id=message_id)
            is AckStatus.QUEUED
        )
        entry = await bob.receive(WAIT_S)
        await bob.ack([(entry.sender_id, entry.message_id)])
        assert await alice.next_receipt(WAIT_S) == message_id
        assert (
            await alice.send(bob.identity.user_id, b"x", message_id=message_id)
            is AckStatus.DELIVERED
        )
        with pytest.raises(TimeoutError):
            await alice.next_receipt(0.1)


async def test_send_without_register_raises(relay_double):
    async with relay_double.client() as client:
        with pytest.raises(NotRegistered):
            await client.send(str(uuid.uuid4()), b"x")


@pytest.mark.parametrize(
    ("recipient", "payload", "ttl_s", "message"),
    [
        ("Bob", b"x", 0, "recipient id"),
        (None, b"x", -1, "ttl_s"),
        (None, bytes(65_380), 0, "does not fit"),
    ],
)
async def test_send_checks_arguments(relay_double, recipient, payload, ttl_s, message):
    async with relay_double.client() as client:
        await client.register()
        with pytest.raises(ValueError, match=message):
            await client.send(recipient or str(uuid.uuid4()), payload, ttl_s)


async def test_register_polls_waiting_messages(relay_double):
    identity = Identity.generate()
    sender = str(uuid.uuid4())
    stored = [
        relay_double.store(identity.user_id, sender, bytes([i]) * 400) for i in range(5)
    ]
    async with relay_double.client(identity) as client:
        established = await client.register()
        assert established.pending == 5
        received = []
        for _ in stored:
            entry = await client.receive(WAIT_S)
            received.append(entry)
            await client.ack([(entry.sender_id, entry.message_id)])
    assert [e.message_id for e in received] == [e.message_id for e in stored]
    assert relay_double.types_from(identity.user_id).count(PacketType.POLL) >= 3


async def test_drain_waits_for_acks(relay_double):
    identity = Identity.generate()
    for i in range(5):
        relay_double.store(identity.user_id, str(uuid.uuid4()), bytes([i]) * 400)
    # Timeouts long enough that no POLL is retransmitted.
    async with relay_double.client(identity, timeout_s=2, max_timeout_s=2) as client:
        await client.register()
        await eventually(lambda: client._inbox.qsize() == 2)
        await asyncio.sleep(0.1)
        assert client._inbox.qsize() == 2
    assert relay_double.types_from(identity.user_id).count(PacketType.POLL) == 2


async def test_poll_returns_entries_and_remaining(relay_double):
    identity = Identity.generate()
    stored = [
        relay_double.store(identity.user_id, str(uuid.uuid4()), b"m" * 450)
        for _ in range(3)
    ]
    async with relay_double.client(identity, auto_poll=False) as client:
        await client.register()
        result = await client.poll(max_bytes=1200)
        assert [e.message_id for e in result.entries] == [
            e.message_id for e in stored[:2]
        ]
        assert result.remaining == 1
        assert client.receive_nowait() == stored[0]


async def test_duplicate_entries_dropped(relay_double):
    identity = Identity.generate()
    async with relay_double.client(identity, auto_poll=False) as client:
        await client.register()
        entry = relay_double.store(identity.user_id, str(uuid.uuid4()), b"once")
        relay_double.push(identity.user_id, entry)
        relay_double.push(identity.user_id, entry)
        await client.poll()
        assert await client.receive(WAIT_S) == entry
        with pytest.raises(TimeoutError):
            await client.receive(0.1)


async def test_redelivered_acknowledged_entry_acked_again(relay_double):
    identity = Identity.generate()
    hook = dropping(PacketType.ACK)
    async with relay_double.client(
        identity, auto_poll=False, on_datagram_sent=hook
    ) as client:
        await client.register()
        entry = relay_double.store(identity.user_id, str(uuid.uuid4()), b"lost ack")
        await client.poll()
        delivered = await client.receive(WAIT_S)
        await client.ack([(delivered.sender_id, delivered.message_id)])
        assert relay_double.mailboxes[identity.user_id] == [entry]
        await client.poll()
        await eventually(lambda: relay_double.mailboxes[identity.user_id] == [])
        assert client.receive_nowait() is None


async def test_ack_splits_into_fifteen(relay_double):
    identity = Identity.generate()
    hook = dropping(PacketType.ACK, count=0)
    keys = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(20)]
    async with relay_double.client(identity, on_datagram_sent=hook) as client:
        await client.register()
        await client.ack(keys + keys[:3])
        await eventually(
            lambda: relay_double.types_from(identity.user_id).count(PacketType.ACK) == 2
        )
    bodies = [body for user, t, _, body in relay_double.accepted if t == PacketType.ACK]
    assert [len(codec.decode_ack(b)) for b in bodies] == [15, 5]
    assert codec.decode_ack(bodies[0]) + codec.decode_ack(bodies[1]) == keys


async def test_ack_rejects_bad_ids(relay_double):
    async with relay_double.client() as client:
        await client.register()
        with pytest.raises(ValueError, match="message id"):
            await client.ack([(str(uuid.uuid4()), "nope")])


# --- keep-alive, roaming, draining, lost sessions -------------------------------


async def test_ping_returns_pending(relay_double):
    identity = Identity.generate()
    async with relay_double.client(identity, auto_poll=False) as client:
        await client.register()
        relay_double.store(identity.user_id, str(uuid.uuid4()), b"x")
        pong = await client.ping()
    assert pong.pending == 1


async def test_keepalive_pings_and_polls(relay_double):
    identity = Identity.generate()
    async with relay_double.client(identity, keepalive_interval_s=0.05) as client:
        await client.register()
        entry = relay_double.store(identity.user_id, str(uuid.uuid4()), b"waiting")
        assert await client.receive(WAIT_S) == entry
    types = relay_double.types_from(identity.user_id)
    assert PacketType.PING in types
    assert PacketType.POLL in types


async def test_rebind_answers_path_challenge(relay_double):
    async with relay_double.client() as client:
        await client.register()
        old_address = client.local_address
        pong = await client.rebind()
        assert client.local_address != old_address
        session = relay_double.by_user[client.identity.user_id]
        assert session.address == client.local_address
        assert session.path_nonce is None
    assert pong.pending == 0
    pings = [body for _, t, _, body in relay_double.accepted if t == PacketType.PING]
    assert any(len(body) == 8 for body in pings)


async def test_draining_reregisters_after_delay(relay_double):
    async with relay_double.client() as client:
        first = await client.register()
        session = relay_double.by_user[client.identity.user_id]
        started = time.monotonic()
        relay_double.seal_to(session, PacketType.DRAINING, codec.encode_draining(100))
        await eventually(lambda: relay_double.registers == 2)
        elapsed = time.monotonic() - started
        assert client.session.session_id != first.session_id
    assert 0.1 <= elapsed < 1.0


async def test_draining_replaces_planned_reregister(relay_double):
    async with relay_double.client(reregister_interval_s=30) as client:
        await client.register()
        relay_double.sessions.clear()
        with pytest.raises(RelayTimeout):
            await client.ping()  # plans a re-registration 30 s ahead
        session = relay_double.by_user[client.identity.user_id]
        relay_double.sessions[session.session_id] = session
        relay_double.seal_to(session, PacketType.DRAINING, codec.encode_draining(50))
        await eventually(lambda: relay_double.registers == 2)


async def test_planned_reregister_skipped_after_register(relay_double):
    async with relay_double.client(tries=2, reregister_interval_s=0.5) as client:
        await client.register()
        relay_double.sessions.clear()
        with pytest.raises(RelayTimeout):
            await client.ping()  # plans a re-registration
        await client.register()
        await asyncio.sleep(0.6)
    assert relay_double.registers == 2


async def test_unknown_session_reregisters(relay_double):
    async with relay_double.client(reregister_interval_s=0) as client:
        first = await client.register()
        relay_double.sessions.clear()
        relay_double.by_user.clear()
        pong = await client.ping()
        assert client.session.session_id != first.session_id
    assert pong.pending == 0
    assert relay_double.registers == 2


async def test_unknown_session_reregister_rate_limited(relay_double):
    async with relay_double.client(reregister_interval_s=30) as client:
        await client.register()
        relay_double.sessions.clear()
        await client.register()  # counts as the last registration
        relay_double.sessions.clear()
        with pytest.raises(RelayTimeout):
            await client.ping()
    assert relay_double.registers == 2


async def test_session_error_unknown_session_reregisters(relay_double):
    async with relay_double.client(reregister_interval_s=0) as client:
        await client.register()
        session = relay_double.by_user[client.identity.user_id]
        body = codec.encode_session_error(ErrorCode.UNKNOWN_SESSION, "gone")
        relay_double.seal_to(session, PacketType.SESSION_ERROR, body)
        await eventually(lambda: relay_double.registers == 2)


async def test_forged_error_ignored(relay_double):
    async with relay_double.client() as client:
        await client.register()
        session = relay_double.by_user[client.identity.user_id]
        forged_echo = session.session_id + (999).to_bytes(8, "big")
        relay_double._error(
            ErrorCode.UNKNOWN_SESSION, forged_echo, "", session.address, 1200
        )
        relay_double._error(
            ErrorCode.UNKNOWN_SESSION, bytes(24), "", session.address, 1200
        )
        await client.ping()
        await asyncio.sleep(0.1)
    assert relay_double.registers == 1
    assert client.session.drops["unmatched_error"] == 2


# --- unregister, close, hooks ---------------------------------------------------


async def test_unregister_ends_session(relay_double):
    async with relay_double.client() as client:
        await client.register()
        await client.unregister()
        assert not client.registered
        assert client.identity.user_id not in relay_double.by_user
        with pytest.raises(NotRegistered):
            await client.ping()


async def test_unregister_erase_deletes_mailbox(relay_double):
    identity = Identity.generate()
    relay_double.store(identity.user_id, str(uuid.uuid4()), b"x")
    async with relay_double.client(identity, auto_poll=False) as client:
        await client.register()
        await client.unregister(erase=True)
    assert identity.user_id not in relay_double.mailboxes


async def test_unregister_retransmits_with_fresh_counter(relay_double):
    hook = dropping(PacketType.UNREGISTER)
    async with relay_double.client(on_datagram_sent=hook) as client:
        await client.register()
        await client.unregister()
    sent = [client_packet_ids(d)[1] for d in hook.seen if d[1] == PacketType.UNREGISTER]
    assert len(sent) >= 2
    assert sent == sorted(set(sent))


async def test_close_ends_waiting_receivers(relay_double):
    client = relay_double.client()
    await client.register()
    waiter = asyncio.create_task(client.receive())
    collected = []

    async def collect():
        async for entry in client.messages():
            collected.append(entry)

    iterator = asyncio.create_task(collect())
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(ClientClosed):
        await waiter
    await asyncio.wait_for(iterator, WAIT_S)
    assert collected == []


async def test_close_fails_pending_send(relay_double):
    relay_double.silent_types = {PacketType.MESSAGE}
    relay_double.silent_count = 100
    client = relay_double.client(timeout_s=1.0, max_timeout_s=1.0)
    await client.register()
    sending = asyncio.create_task(client.send(str(uuid.uuid4()), b"x"))
    await eventually(
        lambda: PacketType.MESSAGE in relay_double.types_from(client.identity.user_id)
    )
    await client.close()
    with pytest.raises(ClientClosed):
        await sending


async def test_replayed_datagram_rejected_by_relay(relay_double):
    sent: list[bytes] = []
    async with relay_double.client(on_datagram_sent=sent.append) as client:
        await client.register()
        await client.ping()
        ping = next(d for d in sent if d[1] == PacketType.PING)
        client.send_raw(ping)
        await eventually(lambda: relay_double.rejected == 1)


async def test_received_hook_sees_datagrams(relay_double):
    received: list[int] = []
    hook = lambda datagram, addr: received.append(datagram[1])  # noqa: E731
    slow = {"timeout_s": 2, "max_timeout_s": 2}
    async with relay_double.client(on_datagram_received=hook, **slow) as client:
        await client.register()
        await client.ping()
    assert received == [PacketType.CHALLENGE, PacketType.REGISTERED, PacketType.PONG]
