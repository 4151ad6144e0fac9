"""REGISTER: the stateless cookie round trip, then signature, binding and session.

Before a source address has returned a valid cookie the relay spends one
HMAC on it and nothing else: no public-key work and no storage write.
"""

import asyncio
import os
from functools import partial
from typing import TYPE_CHECKING

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.core.handshake import CookieUse, register_digest
from relay.core.ratelimit import AddressLimiter, Rate, address_key
from relay.core.session import Address
from relay.protocol.codec import (
    DecodeError,
    Register,
    RegisteredBody,
    decode_register,
    encode_registered_body,
    pack_header,
    register_echo,
)
from relay.protocol.constants import (
    HEADER_SIZE,
    REGISTER_SIGNED_SIZE,
    SESSION_ID_SIZE,
    ZERO_COOKIE,
    ErrorCode,
    PacketType,
)
from relay.protocol.crypto import (
    derive_session_keys,
    is_low_order_x25519,
    register_signed_message,
    verify_ed25519,
    x25519,
    x25519_public_bytes,
)
from relay.protocol.packets import seal_registered
from relay.storage.base import Registration, StorageUnavailable

if TYPE_CHECKING:
    from relay.core.relay import RelayCore

log = structlog.get_logger("relay.registration")


class Registrar:
    def __init__(self, core: "RelayCore") -> None:
        self.core = core
        settings = core.settings
        self.limiter = AddressLimiter(
            Rate.per_minute(settings.rate_register_per_ip),
            settings.max_tracked_addresses,
        )

    # --- first steps, all synchronous ------------------------------------------

    def register(self, data: bytes, address: Address, now: int) -> None:
        core = self.core
        core.stats.requests["register"] += 1
        if not core.allow_unauthenticated(address, now):
            core.stats.failed["register"] += 1
            return
        try:
            register = self._decode(data)
        except DecodeError as exc:
            self._refuse(ErrorCode.BAD_REQUEST, str(exc), data, address, now)
            return
        if register.cookie == ZERO_COOKIE:
            self._challenge(register, data, address, now)
        else:
            self._signed(register, data, address, now)

    @staticmethod
    def _decode(data: bytes) -> Register:
        if data[2:4] != b"\0\0":
            raise DecodeError("header flags must be 0")
        if int.from_bytes(data[4:8], "big") != len(data) - HEADER_SIZE:
            raise DecodeError("header length does not match the datagram")
        return decode_register(data[HEADER_SIZE:])

    def _refuse(
        self,
        code: ErrorCode,
        text: str,
        data: bytes,
        address: Address,
        now: int,
        counted_as: str | None = None,
    ) -> bytes:
        """Send a plain ERROR; count it under counted_as, or else the code's name."""
        self.core.stats.failed["register"] += 1
        self.core.stats.register_refusals[counted_as or code.name.lower()] += 1
        return self.core.send_error(
            code, register_echo(data), text, address, len(data), now
        )

    def _challenge(
        self, register: Register, data: bytes, address: Address, now: int
    ) -> None:
        core = self.core
        # A full relay spares the phone a doomed handshake, unless the phone
        # replaces its own session, which is always allowed.
        if core.draining or not self._has_room(register.user_id, now):
            self._refuse(
                ErrorCode.OVERLOADED, "relay full, try another", data, address, now
            )
            return
        if not core.reply_allowed(address, now):
            return
        cookie = core.cookies.mint(
            address, register.user_id.encode(), register.ce_public, now
        )
        core.send(pack_header(PacketType.CHALLENGE, len(cookie)) + cookie, address)
        core.stats.succeeded["register"] += 1

    def _signed(
        self, register: Register, data: bytes, address: Address, now: int
    ) -> None:
        core = self.core
        user_id = register.user_id.encode()
        if not core.cookies.check(
            register.cookie, address, user_id, register.ce_public, now
        ):
            core.stats.auth_failures += 1
            self._refuse(
                ErrorCode.FORBIDDEN, "invalid or expired cookie", data, address, now
            )
            return
        digest = register_digest(data[HEADER_SIZE : HEADER_SIZE + REGISTER_SIGNED_SIZE])
        use = core.ledger.get(register.cookie)
        if use is not None:
            self._repeat(use, register, digest, data, address, now)
            return
        key = address_key(address[0])
        if not self.limiter.allow(key, now):
            core.stats.rate_limited["register"] += 1
            retry = f"retry_after_ms={self.limiter.retry_after_ms(key)}"
            self._refuse(ErrorCode.RATE_LIMITED, retry, data, address, now)
            return
        if core.draining:
            self._refuse(ErrorCode.OVERLOADED, "relay draining", data, address, now)
            return
        refusal = self._check_keys(register, data)
        if refusal:
            core.stats.auth_failures += 1
            self._refuse(ErrorCode.FORBIDDEN, refusal, data, address, now)
            return
        if not self._has_room(register.user_id, now):
            self._refuse(
                ErrorCode.OVERLOADED, "relay full, try another", data, address, now
            )
            return
        expires_at = int.from_bytes(register.cookie[:8], "big")
        use = core.ledger.claim(register.cookie, digest, expires_at)
        if use is None:
            self._refuse(
                ErrorCode.OVERLOADED, "relay busy, try another", data, address, now
            )
            return
        try:
            future = core.storage.submit_register(
                register.user_id,
                register.ed25519_public,
                register.x25519_public,
                now,
            )
        except StorageUnavailable as exc:
            self._storage_unavailable(exc, register, data, address)
            return
        # A callback instead of a task: a registration storm keeps thousands
        # of these waiting at once, and a task costs about 1 KiB more. The
        # callback keeps the datagram and decodes it again when the write is
        # done (about a microsecond), because the decoded fields would add
        # about 270 bytes to each registration waiting.
        core.follow(future, partial(self._complete, data, use, address))

    def _repeat(
        self,
        use: CookieUse,
        register: Register,
        digest: bytes,
        data: bytes,
        address: Address,
        now: int,
    ) -> None:
        """Answer a REGISTER whose cookie was already used.

        A retry of the same REGISTER (its REGISTERED or ERROR was lost) gets
        the identical datagram again; one still being processed gets silence;
        anything else is FORBIDDEN.
        """
        core = self.core
        same = use.digest == digest and verify_ed25519(
            register.ed25519_public,
            register.signature,
            register_signed_message(core.relay_public, data),
        )
        if same and use.reply is None:
            core.stats.dropped["register_in_progress"] += 1
            return
        if same and self._reply_still_valid(use, now):
            # The stored reply goes to an address no session has validated,
            # so it counts against the per-address reply limit.
            if not core.reply_allowed(address, now):
                return
            core.send(use.reply, address)
            core.stats.succeeded["register"] += 1
            return
        core.stats.auth_failures += 1
        self._refuse(ErrorCode.FORBIDDEN, "cookie already used", data, address, now)

    def _reply_still_valid(self, use: CookieUse, now: int) -> bool:
        if use.session_id is None:
            return True  # the attempt ended in an ERROR, which repeats as is
        return self.core.sessions.live(use.session_id, now) is not None

    def _check_keys(self, register: Register, data: bytes) -> str:
        """Return why the keys or signature are refused, or "" when they pass."""
        core = self.core
        message = register_signed_message(core.relay_public, data)
        if not verify_ed25519(register.ed25519_public, register.signature, message):
            core.stats.invalid_signatures += 1
            return "invalid signature"
        if is_low_order_x25519(register.x25519_public) or is_low_order_x25519(
            register.ce_public
        ):
            return "low-order X25519 key"
        return ""

    def _has_room(self, user_id: str, now: int) -> bool:
        """Tell whether a session may be made: always when replacing the user's own."""
        sessions = self.core.sessions
        limit = self.core.settings.max_connections
        if len(sessions) < limit:
            return True
        if sessions.of_user(user_id, now) is not None:
            return True
        # Looking the user up removes the user's own session if it timed out.
        return len(sessions) < limit

    # --- completion, after the registry has answered -----------------------------

    def _complete(
        self,
        data: bytes,
        use: CookieUse,
        address: Address,
        future: "asyncio.Future[Registration]",
    ) -> None:
        core = self.core
        if future.cancelled():
            return
        register = self._decode(data)
        error = future.exception()
        if isinstance(error, StorageUnavailable):
            self._storage_unavailable(error, register, data, address)
            return
        if error is not None:
            raise error
        outcome = future.result()
        now = core.clock()
        if outcome.key_conflict:
            log.info("key_conflict", user_id=register.user_id)
            core.stats.auth_failures += 1
            refusal = (ErrorCode.KEY_CONFLICT, "user id bound to another key")
        elif core.draining or not self._has_room(register.user_id, now):
            refusal = (ErrorCode.OVERLOADED, "relay full, try another")
        else:
            session_id, use.reply = self._open_session(
                register, address, outcome.pending, now
            )
            use.session_id = session_id
            core.send(use.reply, address)
            return
        use.reply = self._refuse(*refusal, data, address, now)
        if not use.reply:
            # Nothing went out, so a retry must be decided afresh.
            core.ledger.release(register.cookie)

    def _storage_unavailable(
        self,
        error: StorageUnavailable,
        register: Register,
        data: bytes,
        address: Address,
    ) -> None:
        # The phone tries another relay. The cookie is released, so a retry
        # here is decided afresh once storage works again.
        core = self.core
        core.ledger.release(register.cookie)
        core.storage_failed(error, user_id=register.user_id)
        self._refuse(
            ErrorCode.OVERLOADED,
            "relay storage unavailable, try another",
            data,
            address,
            core.clock(),
            counted_as="storage_unavailable",
        )

    def _open_session(
        self, register: Register, address: Address, pending: int, now: int
    ) -> tuple[bytes, bytes]:
        """Create the session; return its id and its REGISTERED datagram."""
        core = self.core
        relay_ephemeral = X25519PrivateKey.generate()
        re_public = x25519_public_bytes(relay_ephemeral)
        dh1 = x25519(core.relay_key, register.ce_public)
        dh2 = x25519(relay_ephemeral, register.ce_public)
        session_id = self._fresh_session_id()
        keys = derive_session_keys(dh1, dh2, register.cookie, session_id)
        session = core.new_session(session_id, register.user_id, address, keys, now)
        body = encode_registered_body(
            RegisteredBody(now, core.settings.session_timeout_s, pending)
        )
        core.stats.registrations += 1
        core.stats.succeeded["register"] += 1
        log.debug("session_opened", user_id=register.user_id, pending=pending)
        outbound = core.sessions.ciphers.build(session)[1]
        datagram = seal_registered(outbound, session_id, re_public, 1, body)
        return session_id, datagram

    def _fresh_session_id(self) -> bytes:
        sessions = self.core.sessions
        while True:
            session_id = os.urandom(SESSION_ID_SIZE)
            if session_id not in sessions.by_id and session_id not in sessions.ended:
                return session_id
