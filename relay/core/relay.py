"""The relay's decisions, without sockets: datagrams in, datagrams out.

`RelayCore.datagram_received` takes one datagram, its source address and
reads the clock; it answers through the `send` callable it was given and
hands storage work to the `Storage` interface, finishing that work in tasks
or in callbacks on storage futures.
The UDP endpoint only moves bytes, so tests drive the core directly on a
fake clock.
"""

import asyncio
import os
import struct
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.config import Settings
from relay.core.handshake import CookieLedger
from relay.core.messaging import Messaging
from relay.core.ratelimit import AddressLimiter, Rate, address_key, admit
from relay.core.registration import Registrar
from relay.core.session import (
    WINDOW_MASK,
    WINDOW_SIZE,
    Address,
    EndedSession,
    Session,
    SessionTable,
)
from relay.core.stats import RelayStats
from relay.ops.logging import LogThrottle
from relay.protocol.codec import (
    DecodeError,
    decode_ping,
    decode_unregister,
    encode_draining,
    encode_error_datagram,
    encode_session_error,
    encode_unregister,
)
from relay.protocol.constants import (
    CLIENT_SESSION_OVERHEAD,
    ECHO_SIZE,
    HEADER_SIZE,
    PATH_NONCE_SIZE,
    RELAY_ONLY_TYPES,
    RELAY_SESSION_OVERHEAD,
    SESSION_ID_SIZE,
    UNREGISTER_ERASE,
    VERSION,
    ErrorCode,
    PacketType,
)
from relay.protocol.cookie import CookieJar, derive_cookie_key
from relay.protocol.crypto import x25519_public_bytes
from relay.protocol.packets import client_packet_ids, relay_packet_size
from relay.storage.base import Storage, StorageUnavailable

Send = Callable[[bytes, Address], None]
log = structlog.get_logger("relay.core")

TYPE_NAMES = {int(t): t.name.lower() for t in PacketType}
_SESSION_MIN_SIZE = HEADER_SIZE + CLIENT_SESSION_OVERHEAD
_RELAY_ONLY = frozenset(int(t) for t in RELAY_ONLY_TYPES)
_REGISTER = int(PacketType.REGISTER)
_PING = int(PacketType.PING)
_PONG_TYPE = int(PacketType.PONG)

# The hot path reads and writes session packets with one struct call each.
# A client packet starts with header | session_id | counter, 32 bytes that
# are also its associated data; a relay packet with header | counter.
_CLIENT_HEAD = struct.Struct(">BBHI16sQ")
_CLIENT_PLAIN_END = _CLIENT_HEAD.size
_RELAY_HEAD = struct.Struct(">BBHIQ")
# The nonce is four zero bytes and the counter; for a client packet those
# are four zero bytes and the counter's 8 bytes in the datagram.
_NONCE = struct.Struct(">4xQ")
_NONCE_PREFIX = bytes(4)
_COUNTER_START = HEADER_SIZE + SESSION_ID_SIZE
_PONG = struct.Struct(">QI")
_PONG_LENGTH = RELAY_SESSION_OVERHEAD + _PONG.size


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class UserRates:
    """The per-user limits, shared by every session."""

    def __init__(self, settings: Settings) -> None:
        self.message = Rate.per_minute(settings.rate_message_per_user)
        self.poll = Rate.per_minute(settings.rate_poll_per_user)
        self.ack = Rate.per_minute(settings.rate_ack_per_user)
        self.ping = Rate.per_minute(settings.rate_ping_per_user)


class RelayCore:
    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        relay_key: X25519PrivateKey,
        send: Send,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.relay_key = relay_key
        self.relay_public = x25519_public_bytes(relay_key)
        self.send = send
        self.clock = clock
        self.stats = RelayStats()
        self.draining = False
        # Users whose erasure is in flight: nothing is pushed to them.
        self.erasing: set[str] = set()
        self.rates = UserRates(settings)

        self.cookies = CookieJar(
            derive_cookie_key(relay_key.private_bytes_raw()),
            settings.cookie_lifetime_s * 1000,
        )
        # Each cookie stays in the ledger for its 30 s life: room for every
        # session to register twice in that time, plus slack for tests and
        # tiny relays.
        self.ledger = CookieLedger(2 * settings.max_connections + 1024)
        self._timeout_ms = settings.session_timeout_s * 1000
        self.sessions = SessionTable(
            settings.session_timeout_s * 1000,
            settings.unregister_linger_s * 1000,
            max_ended=settings.max_connections,
        )
        tracked = settings.max_tracked_addresses
        self.unauthenticated = AddressLimiter(
            Rate.per_minute(settings.rate_unauthenticated_per_ip), tracked
        )
        self.replies = AddressLimiter(
            Rate.per_second(settings.replies_per_address_per_s), tracked
        )
        self.registrar = Registrar(self)
        self.messaging = Messaging(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._log_throttle = LogThrottle()
        self._session_handlers = {
            PacketType.PING: self._ping,
            PacketType.MESSAGE: self.messaging.message,
            PacketType.ACK: self.messaging.ack,
            PacketType.POLL: self.messaging.poll,
            PacketType.UNREGISTER: self._unregister,
        }

    # --- entry points -------------------------------------------------------

    def datagram_received(self, data: bytes, address: Address) -> None:
        now = self.clock()
        if len(data) < HEADER_SIZE:
            self.drop("invalid", "short")
            return
        packet_type = data[1]
        # Silence for relay-only types in any version, so relays never answer
        # each other.
        if packet_type in _RELAY_ONLY:
            self.drop("invalid", "relay_only_type")
            return
        if data[0] != VERSION:
            self._unsupported_version(data, address, now)
            return
        if packet_type == _REGISTER:
            self.registrar.register(data, address, now)
        elif packet_type in self._session_handlers:
            self._session_packet(data, address, now)
        else:
            self.drop("invalid", "unknown_type")

    def tick(self) -> None:
        """Expire sessions, cookies and idle rate-limit entries, about once a second."""
        now = self.clock()
        timed_out = self.sessions.sweep(now)
        self.stats.sessions_timed_out += len(timed_out)
        for session in timed_out:
            log.debug("session_timed_out", user_id=session.user_id)
        self.ledger.sweep(now)
        self.unauthenticated.sweep(now)
        self.replies.sweep(now)
        self.registrar.limiter.sweep(now)

    def drain(self) -> int:
        """Tell every live session to go elsewhere and refuse new work.

        Returns how many sessions were told.
        """
        self.draining = True
        body = encode_draining(self.settings.drain_retry_after_ms)
        sessions = list(self.sessions.by_id.values())
        for session in sessions:
            self.send_session(session, PacketType.DRAINING, body, exempt=True)
        return len(sessions)

    def table_sizes(self) -> dict[str, tuple[int, int]]:
        """Return (entries, cap) of every table that grows with traffic.

        Each cap is enforced where the table grows, so a flood can fill a
        table but never push it past its cap.
        """
        sessions = self.sessions
        limiters = {
            "unauthenticated_limiter": self.unauthenticated,
            "reply_limiter": self.replies,
            "register_limiter": self.registrar.limiter,
        }
        sizes = {
            "sessions": (len(sessions), self.settings.max_connections),
            "ended_sessions": (len(sessions.ended), sessions.max_ended),
            "carried_limits": (len(sessions.carried_limits), sessions.max_ended),
            "cookie_ledger": (len(self.ledger), self.ledger.max_entries),
        }
        for name, limiter in limiters.items():
            sizes[name] = (len(limiter), limiter.max_entries)
        return sizes

    @property
    def requests_in_flight(self) -> int:
        """Count the requests waiting for storage or for a task to finish."""
        return len(self._tasks)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait for storage work in flight; return False if some is still running."""
        pending = set(self._tasks)
        if not pending:
            return True
        _, still_running = await asyncio.wait(pending, timeout=timeout_s)
        return not still_running

    # --- helpers used by the handlers ----------------------------------------

    def follow(
        self,
        future: "asyncio.Future[Any]",
        callback: Callable[["asyncio.Future[Any]"], None],
    ) -> None:
        """Run callback when a storage future resolves, counted as work in flight.

        A callback costs far less than a task per datagram. An exception it
        raises is logged like one escaping a spawned task.
        """
        self._tasks.add(future)  # type: ignore[arg-type]
        future.add_done_callback(partial(self._guarded_callback, callback))

    def _guarded_callback(
        self,
        callback: Callable[["asyncio.Future[Any]"], None],
        future: "asyncio.Future[Any]",
    ) -> None:
        self._tasks.discard(future)  # type: ignore[arg-type]
        try:
            callback(future)
        except Exception:
            self._request_failed()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def storage_failed(
        self,
        error: StorageUnavailable,
        event: str = "storage_unavailable",
        **fields: Any,
    ) -> None:
        """Count a request that storage failed, and log one line per interval.

        A failing disk fails every request, and the writer already logs the
        cause, so these lines only name a few of the requests it failed.
        """
        self.stats.storage_errors += 1
        held_back = self._log_throttle.allow("storage")
        if held_back is not None:
            log.warning(event, error=str(error), held_back=held_back, **fields)

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except StorageUnavailable as exc:
            self.storage_failed(exc)
        except Exception:
            self._request_failed()

    def _request_failed(self) -> None:
        """Log the exception being handled, at a bounded rate."""
        if (held_back := self._log_throttle.allow("request")) is not None:
            log.exception("request_failed", held_back=held_back)

    def drop(self, type_name: str, reason: str) -> None:
        self.stats.requests[type_name] += 1
        self.stats.failed[type_name] += 1
        self.stats.dropped[reason] += 1

    def allow_unauthenticated(self, address: Address, now_ms: int) -> bool:
        if self.unauthenticated.allow(address_key(address[0]), now_ms):
            return True
        self.stats.flood_drops += 1
        self.stats.rate_limited["unauthenticated"] += 1
        return False

    def send_error(
        self,
        code: ErrorCode,
        echo: bytes,
        text: str,
        address: Address,
        received_size: int,
        now_ms: int,
    ) -> bytes:
        """Send a plain ERROR no larger than the datagram it answers.

        Returns the datagram sent, or b"" when the reply limit or the size
        rule kept it back.
        """
        if not self.reply_allowed(address, now_ms):
            return b""
        datagram = encode_error_datagram(code, echo, text, received_size)
        if datagram:
            self.send(datagram, address)
        else:
            self.stats.dropped["error_too_large"] += 1
        return datagram

    def reply_allowed(self, address: Address, now_ms: int) -> bool:
        """Return whether a plain reply may go to address, taking a token if so."""
        if self.replies.allow(address_key(address[0]), now_ms):
            return True
        self.stats.dropped["reply_rate"] += 1
        return False

    def send_session(
        self, session: Session, packet_type: int, body: bytes, exempt: bool = False
    ) -> bool:
        """Seal and send a packet on a session, within an unvalidated path's budget.

        exempt skips the budget (DRAINING only). Returns False when the
        packet did not fit and was not sent.
        """
        if session.path_nonce is not None and not exempt:
            size = relay_packet_size(len(body))
            if size > session.path_budget:
                self.stats.dropped["path_budget"] += 1
                return False
            session.path_budget -= size
        self.send(self._seal(session, packet_type, body), session.address)
        return True

    def _seal(self, session: Session, packet_type: int, body: bytes) -> bytes:
        """Seal a relay packet under the session's next counter."""
        counter = session.send_counter + 1
        session.send_counter = counter
        associated = _RELAY_HEAD.pack(
            VERSION, packet_type, 0, RELAY_SESSION_OVERHEAD + len(body), counter
        )
        outbound = (session.ciphers or self.sessions.ciphers.build(session))[1]
        return associated + outbound.encrypt(_NONCE.pack(counter), body, associated)

    def new_session(
        self,
        session_id: bytes,
        user_id: str,
        address: Address,
        keys: tuple,
        now_ms: int,
    ) -> Session:
        """Create a session, replacing the user's previous one without notice."""
        k_c2s, k_s2c = keys
        session = Session(session_id, user_id, address, k_c2s + k_s2c, now_ms)
        self.sessions.add(session)
        return session

    # --- session packets -------------------------------------------------------

    def _session_packet(self, data: bytes, address: Address, now: int) -> None:
        """Check a session packet and hand its body to the handler of its type.

        This is the relay's hot path: every PING, MESSAGE, ACK and POLL runs
        it, so it reads the plain fields with one struct call and keeps the
        replay window and cipher lookup inline.
        """
        size = len(data)
        if size < _SESSION_MIN_SIZE:
            self.drop(TYPE_NAMES[data[1]], "bad_header")
            return
        _, packet_type, flags, length, session_id, counter = _CLIENT_HEAD.unpack_from(
            data
        )
        if flags or length != size - HEADER_SIZE:
            self.drop(TYPE_NAMES[packet_type], "bad_header")
            return
        session = self.sessions.by_id.get(session_id)
        if session is None or now - session.last_seen_ms > self._timeout_ms:
            session = self.sessions.live(session_id, now)
            if session is None:
                type_name = TYPE_NAMES[packet_type]
                self._unknown_session(data, address, now, session_id, type_name)
                return
        body = self._accept(session, data, counter, packet_type)
        if body is None:
            return
        session.last_seen_ms = now
        if session.path_nonce is not None or address != session.address:
            self._follow_address(session, address, counter, size)
        if packet_type == _PING and not body and session.path_nonce is None:
            # The commonest packet of all: a keep-alive on a validated path.
            self.stats.requests["ping"] += 1
            self._pong(session, now)
            return
        type_name = TYPE_NAMES[packet_type]
        self.stats.requests[type_name] += 1
        try:
            self._session_handlers[packet_type](session, body, address, now)
        except DecodeError as exc:
            self.stats.failed[type_name] += 1
            log.debug("malformed_body", user_id=session.user_id, error=str(exc))
            error = encode_session_error(ErrorCode.BAD_REQUEST, str(exc))
            self.send_session(session, PacketType.SESSION_ERROR, error)

    def _accept(
        self, session: Session, data: bytes, counter: int, packet_type: int
    ) -> bytes | None:
        """Verify the replay window and the tag; return the body or None.

        The window is checked before the tag (cheap first) and recorded only
        after the tag verifies.
        """
        highest = session.highest
        if counter <= highest:
            offset = highest - counter
            if offset >= WINDOW_SIZE or (session.seen >> offset) & 1:
                self.drop(TYPE_NAMES[packet_type], "replayed")
                return None
        inbound = (session.ciphers or self.sessions.ciphers.build(session))[0]
        nonce = _NONCE_PREFIX + data[_COUNTER_START:_CLIENT_PLAIN_END]
        try:
            body = inbound.decrypt(
                nonce, data[_CLIENT_PLAIN_END:], data[:_CLIENT_PLAIN_END]
            )
        except InvalidTag:
            self.drop(TYPE_NAMES[packet_type], "bad_tag")
            self.stats.auth_failures += 1
            return None
        if counter > highest:
            shift = counter - highest
            if shift < WINDOW_SIZE:
                session.seen = ((session.seen << shift) | 1) & WINDOW_MASK
            else:
                session.seen = 1
            session.highest = counter
        else:
            session.seen |= 1 << (highest - counter)
        return body

    def _follow_address(
        self, session: Session, address: Address, counter: int, size: int
    ) -> None:
        """Move the session when its newest packet comes from a new address."""
        if address == session.address:
            if session.path_nonce is not None:
                session.path_budget += size
            return
        # Only the newest packet moves the session: a late packet from an old
        # address must not drag replies back there.
        if counter != session.highest:
            return
        session.address = address
        session.path_nonce = os.urandom(PATH_NONCE_SIZE)
        session.path_budget = size
        log.debug("session_moved", user_id=session.user_id)
        self.send_session(session, PacketType.PATH_CHALLENGE, session.path_nonce)

    def _unknown_session(
        self, data: bytes, address: Address, now: int, session_id: bytes, type_name: str
    ) -> None:
        ended = self.sessions.ended.get(session_id)
        if ended is not None:
            self._ended_session_packet(ended, data, address, type_name)
            return
        self.drop(type_name, "unknown_session")
        if not self.allow_unauthenticated(address, now):
            return
        echo = data[HEADER_SIZE : HEADER_SIZE + ECHO_SIZE]
        self.send_error(
            ErrorCode.UNKNOWN_SESSION, echo, "register again", address, len(data), now
        )

    def _ended_session_packet(
        self, ended: EndedSession, data: bytes, address: Address, type_name: str
    ) -> None:
        """Answer a packet on a session ended by UNREGISTER, at its source address."""
        session = ended.session
        _, counter = client_packet_ids(data)
        body = self._accept(session, data, counter, data[1])
        if body is None:
            return
        self.stats.requests[type_name] += 1
        reply = self._ended_session_reply(ended, data[1], body)
        datagram = self._seal(session, reply[0], reply[1])
        # Never more bytes than came in: this address was not validated.
        if len(datagram) <= len(data):
            self.send(datagram, address)

    def _ended_session_reply(
        self, ended: EndedSession, packet_type: int, body: bytes
    ) -> tuple[int, bytes]:
        if packet_type == PacketType.UNREGISTER:
            try:
                flags = decode_unregister(body)
            except DecodeError:
                flags = None
            if flags == ended.flags:
                return PacketType.UNREGISTERED, encode_unregister(flags)
        error = encode_session_error(ErrorCode.UNKNOWN_SESSION, "session ended")
        return PacketType.SESSION_ERROR, error

    def _unsupported_version(self, data: bytes, address: Address, now: int) -> None:
        self.drop("invalid", "unsupported_version")
        if self.allow_unauthenticated(address, now):
            self.send_error(
                ErrorCode.UNSUPPORTED,
                bytes(ECHO_SIZE),
                "this relay speaks version 1",
                address,
                len(data),
                now,
            )

    # --- PING and UNREGISTER ------------------------------------------------------

    def _ping(self, session: Session, body: bytes, address: Address, now: int) -> None:
        echo = decode_ping(body)
        if session.path_nonce is not None and address == session.address:
            if echo == session.path_nonce:
                session.path_nonce = None
                session.path_budget = 0
                log.debug("path_validated", user_id=session.user_id)
            else:
                self.send_session(
                    session, PacketType.PATH_CHALLENGE, session.path_nonce
                )
        if session.path_nonce is None:
            self._pong(session, now)
            return
        if not self._admit_ping(session, now):
            return
        pending = self.storage.pending_count(session.user_id, now)
        self.send_session(session, _PONG_TYPE, _PONG.pack(now, pending))
        self.stats.succeeded["ping"] += 1

    def _pong(self, session: Session, now: int) -> None:
        """Answer a PING on a validated path, within the user's PING rate.

        The same steps as send_session and _seal, inline, because every
        phone sends a PING every 25 s and a benchmark sends nothing else.
        """
        if not self._admit_ping(session, now):
            return
        body = _PONG.pack(now, self.storage.pending_count(session.user_id, now))
        counter = session.send_counter + 1
        session.send_counter = counter
        associated = _RELAY_HEAD.pack(VERSION, _PONG_TYPE, 0, _PONG_LENGTH, counter)
        outbound = (session.ciphers or self.sessions.ciphers.build(session))[1]
        sealed = outbound.encrypt(_NONCE.pack(counter), body, associated)
        self.send(associated + sealed, session.address)
        self.stats.succeeded["ping"] += 1

    def _admit_ping(self, session: Session, now: int) -> bool:
        """Take a PING from the user's bucket; count and refuse it when empty."""
        full_at = admit(session.ping_full_at, self.rates.ping, now)
        if full_at is None:
            self.stats.rate_limited["ping"] += 1
            self.stats.failed["ping"] += 1
            return False
        session.ping_full_at = full_at
        return True

    def _unregister(
        self, session: Session, body: bytes, address: Address, now: int
    ) -> None:
        flags = decode_unregister(body)
        if session.user_id in self.erasing:
            return  # an erase is in flight; its UNREGISTERED answers this retry too
        if flags & UNREGISTER_ERASE:
            self.erasing.add(session.user_id)
            self.spawn(self._erase(session, flags))
            return
        self._end_session(session, flags, now)

    async def _erase(self, session: Session, flags: int) -> None:
        user_id = session.user_id
        try:
            await self.storage.erase_user(user_id)
        finally:
            self.erasing.discard(user_id)
        log.info("user_erased", user_id=user_id)
        now = self.clock()
        self._end_session(session, flags, now)
        # A REGISTER committed while the erasure waited may have opened a
        # session for the erased user. It ends silently, so the phone's next
        # packet gets UNKNOWN_SESSION.
        other = self.sessions.of_user(user_id, now)
        if other is not None:
            self.sessions.remove(other, now)

    def _end_session(self, session: Session, flags: int, now: int) -> None:
        self.sessions.end(session, flags, now)
        self.send_session(session, PacketType.UNREGISTERED, encode_unregister(flags))
        self.stats.succeeded["unregister"] += 1
