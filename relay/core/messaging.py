"""MESSAGE, ACK and POLL: storing, pushing, receipts and mailbox reads."""

import asyncio
import time
from functools import partial
from random import getrandbits
from typing import TYPE_CHECKING

import structlog

from relay.core.ratelimit import admit
from relay.core.session import Address, Session
from relay.protocol.codec import (
    POLL_RESPONSE_OVERHEAD,
    decode_ack,
    decode_message_fields,
    decode_poll,
    encode_entry_fields,
    encode_message_ack,
    encode_poll_response,
)
from relay.protocol.constants import (
    MAX_DATAGRAM,
    POLL_DEFAULT_BYTES,
    POLL_MIN_BYTES,
    PUSH_DATAGRAM_LIMIT,
    AckStatus,
    PacketType,
)
from relay.protocol.packets import relay_packet_size
from relay.storage.base import Receipt, StorageUnavailable, StoredMessage

if TYPE_CHECKING:
    from relay.core.relay import RelayCore

log = structlog.get_logger("relay.messaging")

_POLL_RESPONSE_FIXED_SIZE = relay_packet_size(POLL_RESPONSE_OVERHEAD)


def new_trace_id() -> str:
    """Return 16 hex digits, unique enough to find one message in the logs.

    random's generator, seeded from the OS at start, costs a fraction of
    an os.urandom call; trace ids need no secrecy.
    """
    return f"{getrandbits(64):016x}"


def poll_budget(requested: int) -> int:
    """Return the POLL_RESPONSE datagram size a POLL's max_bytes allows.

    The field reaches 65,535, but no UDP datagram over IPv4 carries more
    than MAX_DATAGRAM bytes, so a larger response would never be sent.
    """
    if requested == 0:
        return POLL_DEFAULT_BYTES
    return min(max(requested, POLL_MIN_BYTES), MAX_DATAGRAM)


class Messaging:
    """MESSAGE, ACK and POLL; MESSAGE and ACK finish in a callback on their future.

    A new message is pushed to an online recipient as soon as it arrives,
    before its batch commits, so that the recipient's ACK can reach the
    writer in the same batch. The writer then records the delivery and
    never writes the message. QUEUED still goes out only after the commit.
    A message id the storage may have seen before waits for the writer's
    lookup instead, and is pushed only if the writer stored it as new: a
    first copy may be delivered, expired or meant for someone else.
    """

    def __init__(self, core: "RelayCore") -> None:
        self.core = core
        # The latest ACK of each user still waiting for its commit, so that
        # a POLL reads the mailbox after it and does not return those again.
        self._acks_in_flight: dict[str, asyncio.Future] = {}

    # --- MESSAGE ---------------------------------------------------------------

    def message(
        self, session: Session, body: bytes, address: Address, now: int
    ) -> None:
        core = self.core
        message_id, recipient_id, ttl_s, payload = decode_message_fields(body)
        settings = core.settings
        full_at = admit(session.message_full_at, core.rates.message, now)
        if full_at is None:
            core.stats.rate_limited["message"] += 1
            self._answer(session, message_id, AckStatus.RATE_LIMITED)
            return
        session.message_full_at = full_at
        if core.draining:
            self._answer(session, message_id, AckStatus.UNAVAILABLE)
            return
        if len(payload) > settings.max_payload_bytes:
            self._answer(session, message_id, AckStatus.TOO_LARGE)
            return
        ttl_s = min(ttl_s or settings.message_ttl_default_s, settings.message_ttl_max_s)
        stored = StoredMessage(
            session.user_id,
            message_id,
            recipient_id,
            payload,
            now,
            now + ttl_s * 1000,
            new_trace_id(),
        )
        started = time.perf_counter()
        # Asked before the enqueue, which makes every message id seen.
        seen_before = core.storage.maybe_seen(session.user_id, message_id)
        try:
            future = core.storage.submit_enqueue(stored)
        except StorageUnavailable as exc:
            core.storage_failed(exc, "message_not_stored", trace_id=stored.trace_id)
            self._answer(session, message_id, AckStatus.UNAVAILABLE)
            return
        # The enqueue is queued before the push goes out, so the ACK of the
        # push lands in the same batch or a later one, never an earlier one.
        pushed_to = None if seen_before else self.push(stored, now)
        core.follow(future, partial(self._stored, stored, started, pushed_to))

    def _stored(
        self,
        stored: StoredMessage,
        started: float,
        pushed_to: Session | None,
        future: asyncio.Future,
    ) -> None:
        core = self.core
        if future.cancelled():
            return
        error = future.exception()
        stored_now = False
        if error is None:
            status, stored_now = future.result()
        elif isinstance(error, StorageUnavailable):
            core.storage_failed(error, "message_not_stored", trace_id=stored.trace_id)
            status = AckStatus.UNAVAILABLE
        else:
            raise error
        now = core.clock()
        sender = core.sessions.of_user(stored.sender_id, now)
        if sender is not None:
            self._answer(sender, stored.message_id, status)
        else:
            self._count(status)  # the sender left; the outcome still counts
        duration_s = time.perf_counter() - started
        core.stats.observe_latency("message", duration_s)
        log.debug(
            "message_stored",
            trace_id=stored.trace_id,
            user_id=stored.sender_id,
            status=status.name,
            duration_ms=round(duration_s * 1000, 3),
        )
        # A repeat is not pushed, because its first copy, which wins, may name
        # another recipient or payload. A new message is pushed again if the
        # recipient registered anew meanwhile, because that REGISTERED counted
        # the mailbox before this commit.
        if stored_now and not self._pushed_to_current(stored, pushed_to, now):
            self.push(stored, now)

    def _pushed_to_current(
        self, stored: StoredMessage, pushed_to: Session | None, now: int
    ) -> bool:
        if pushed_to is None:
            return False
        return self.core.sessions.of_user(stored.recipient_id, now) is pushed_to

    def _answer(self, session: Session, message_id: str, status: AckStatus) -> None:
        self._count(status)
        body = encode_message_ack(message_id, status)
        self.core.send_session(session, PacketType.MESSAGE_ACK, body)

    def _count(self, status: AckStatus) -> None:
        stats = self.core.stats
        stats.message_outcomes[status.name.lower()] += 1
        if status in (AckStatus.QUEUED, AckStatus.DELIVERED, AckStatus.EXPIRED):
            stats.succeeded["message"] += 1
        else:
            stats.failed["message"] += 1

    def push(self, stored: StoredMessage, now: int) -> Session | None:
        """Send a message to its recipient now, if it is online and reachable.

        A push is a hint: the message stays in the mailbox until acknowledged.
        Returns the session it was sent on, or None.
        """
        core = self.core
        if stored.expires_at_ms <= now:
            return None  # a slow commit outlived a short TTL
        recipient = core.sessions.of_user(stored.recipient_id, now)
        if recipient is None or not recipient.validated:
            return None
        if stored.recipient_id in core.erasing:
            return None  # the sender will get UNKNOWN_RECIPIENT
        entry = encode_entry_fields(
            stored.message_id, stored.sender_id, stored.received_at_ms, stored.payload
        )
        if relay_packet_size(len(entry)) > PUSH_DATAGRAM_LIMIT:
            return None
        core.send_session(recipient, PacketType.MESSAGE_DELIVER, entry)
        core.stats.pushes += 1
        log.debug(
            "message_pushed", trace_id=stored.trace_id, user_id=stored.recipient_id
        )
        return recipient

    # --- ACK -----------------------------------------------------------------

    def ack(self, session: Session, body: bytes, address: Address, now: int) -> None:
        core = self.core
        keys = decode_ack(body)
        full_at = admit(session.ack_full_at, core.rates.ack, now)
        if full_at is None:
            core.stats.rate_limited["ack"] += 1
            core.stats.failed["ack"] += 1
            return
        session.ack_full_at = full_at
        user_id = session.user_id
        try:
            future = core.storage.submit_acknowledge(user_id, keys, now)
        except StorageUnavailable as exc:
            core.stats.failed["ack"] += 1
            core.storage_failed(exc, user_id=user_id)
            return
        self._acks_in_flight[user_id] = future
        core.follow(future, partial(self._acknowledged, user_id, time.perf_counter()))

    def _acknowledged(
        self, user_id: str, started: float, future: asyncio.Future
    ) -> None:
        core = self.core
        if self._acks_in_flight.get(user_id) is future:
            del self._acks_in_flight[user_id]
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, StorageUnavailable):
            core.stats.failed["ack"] += 1
            core.storage_failed(error, user_id=user_id)
            return
        if error is not None:
            raise error
        receipts: list[Receipt] = future.result()
        core.stats.succeeded["ack"] += 1
        core.stats.observe_latency("ack", time.perf_counter() - started)
        now = core.clock()
        for receipt in receipts:
            log.debug(
                "message_delivered",
                trace_id=receipt.trace_id,
                user_id=user_id,
                duration_ms=now - receipt.received_at_ms,
            )
            sender = core.sessions.of_user(receipt.sender_id, now)
            # No DELIVERED to an unvalidated address; the receipt is not retried.
            if sender is not None and sender.validated:
                body = encode_message_ack(receipt.message_id, AckStatus.DELIVERED)
                core.send_session(sender, PacketType.MESSAGE_ACK, body)
                core.stats.message_outcomes["delivered"] += 1

    # --- POLL ------------------------------------------------------------------

    def poll(self, session: Session, body: bytes, address: Address, now: int) -> None:
        core = self.core
        max_bytes = poll_budget(decode_poll(body))
        full_at = admit(session.poll_full_at, core.rates.poll, now)
        if full_at is None:
            core.stats.rate_limited["poll"] += 1
            core.stats.failed["poll"] += 1
            return
        session.poll_full_at = full_at
        core.spawn(self._answer_poll(session, max_bytes, time.perf_counter()))

    async def _answer_poll(
        self, session: Session, max_bytes: int, started: float
    ) -> None:
        core = self.core
        acknowledging = self._acks_in_flight.get(session.user_id)
        if acknowledging is not None and not acknowledging.done():
            # Read after the user's latest ACK commits, or the response would
            # repeat the messages that ACK is deleting.
            await asyncio.wait([acknowledging])
        room = max(0, max_bytes - _POLL_RESPONSE_FIXED_SIZE)
        try:
            fetched = await core.storage.fetch(session.user_id, core.clock(), room)
        except StorageUnavailable:
            core.stats.failed["poll"] += 1
            raise
        if core.sessions.by_id.get(session.session_id) is not session:
            return  # the session ended while the mailbox was read
        # The waits above can outlast a short TTL: check expiry once more.
        now = core.clock()
        live = [m for m in fetched.entries if m.expires_at_ms > now]
        entries = [
            encode_entry_fields(m.message_id, m.sender_id, m.received_at_ms, m.payload)
            for m in live
        ]
        if session.path_nonce is not None:
            # To an unvalidated address the budget is a hard limit.
            entries = self._fit(entries, min(max_bytes, session.path_budget))
        remaining = fetched.remaining + len(live) - len(entries)
        sent = core.send_session(
            session, PacketType.POLL_RESPONSE, encode_poll_response(remaining, entries)
        )
        if sent:
            for message in live[: len(entries)]:
                log.debug(
                    "message_polled", trace_id=message.trace_id, user_id=session.user_id
                )
        core.stats.succeeded["poll"] += 1
        core.stats.observe_latency("poll", time.perf_counter() - started)

    @staticmethod
    def _fit(entries: list[bytes], limit: int) -> list[bytes]:
        kept, size = [], _POLL_RESPONSE_FIXED_SIZE
        for entry in entries:
            size += len(entry)
            if size > limit:
                break
            kept.append(entry)
        return kept
