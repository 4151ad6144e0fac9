"""MESSAGE, ACK and POLL: storing, pushing, receipts and mailbox reads."""

import os
import time
from typing import TYPE_CHECKING

import structlog

from relay.core.session import Address, Session
from relay.protocol.codec import (
    POLL_RESPONSE_OVERHEAD,
    Entry,
    decode_ack,
    decode_message,
    decode_poll,
    encode_entry,
    encode_message_ack,
    encode_poll_response,
)
from relay.protocol.constants import (
    POLL_DEFAULT_BYTES,
    POLL_MIN_BYTES,
    PUSH_DATAGRAM_LIMIT,
    AckStatus,
    PacketType,
)
from relay.ops.logging import LogThrottle
from relay.protocol.packets import relay_packet_size
from relay.storage.base import StoredMessage, StorageUnavailable

if TYPE_CHECKING:
    from relay.core.relay import RelayCore

log = structlog.get_logger("relay.messaging")
# A failing disk fails every MESSAGE. The writer logs the cause, so these
# lines only name a few of the messages answered UNAVAILABLE.
_storage_errors = LogThrottle()

_POLL_RESPONSE_FIXED_SIZE = relay_packet_size(POLL_RESPONSE_OVERHEAD)


def new_trace_id() -> str:
    return os.urandom(8).hex()


def poll_budget(requested: int) -> int:
    """Return the POLL_RESPONSE datagram size a POLL's max_bytes allows."""
    if requested == 0:
        return POLL_DEFAULT_BYTES
    return max(requested, POLL_MIN_BYTES)


class Messaging:
    def __init__(self, core: "RelayCore") -> None:
        self.core = core

    # --- MESSAGE ---------------------------------------------------------------

    def message(self, session: Session, body: bytes, address: Address, now: int) -> None:
        core = self.core
        message = decode_message(body)
        settings = core.settings
        if not session.buckets.message.take(core.rates.message, now):
            core.stats.rate_limited["message"] += 1
            self._answer(session, message.message_id, AckStatus.RATE_LIMITED)
            return
        if core.draining:
            self._answer(session, message.message_id, AckStatus.UNAVAILABLE)
            return
        if len(message.payload) > settings.max_payload_bytes:
            self._answer(session, message.message_id, AckStatus.TOO_LARGE)
            return
        ttl_s = min(message.ttl_s or settings.message_ttl_default_s, settings.message_ttl_max_s)
        stored = StoredMessage(
            sender_id=session.user_id,
            message_id=message.message_id,
            recipient_id=message.recipient_id,
            payload=message.payload,
            received_at_ms=now,
            expires_at_ms=now + ttl_s * 1000,
            trace_id=new_trace_id(),
        )
        core.spawn(self._store(stored, time.perf_counter()))

    async def _store(self, stored: StoredMessage, started: float) -> None:
        core = self.core
        try:
            status = await core.storage.enqueue(stored)
        except StorageUnavailable as exc:
            core.stats.storage_errors += 1
            if (held_back := _storage_errors.allow("enqueue")) is not None:
                log.warning(
                    "message_not_stored",
                    error=str(exc),
                    trace_id=stored.trace_id,
                    user_id=stored.sender_id,
                    held_back=held_back,
                )
            status = AckStatus.UNAVAILABLE
        now = core.clock()
        sender = core.sessions.of_user(stored.sender_id, now)
        if sender is not None:
            self._answer(sender, stored.message_id, status)
        core.stats.observe_latency("message", time.perf_counter() - started)
        log.debug(
            "message_stored",
            trace_id=stored.trace_id,
            user_id=stored.sender_id,
            status=status.name,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        if status == AckStatus.QUEUED:
            self.push(stored, now)

    def _answer(self, session: Session, message_id: str, status: AckStatus) -> None:
        core = self.core
        core.stats.message_outcomes[status.name.lower()] += 1
        if status in (AckStatus.QUEUED, AckStatus.DELIVERED, AckStatus.EXPIRED):
            core.stats.succeeded["message"] += 1
        else:
            core.stats.failed["message"] += 1
        body = encode_message_ack(message_id, status)
        core.send_session(session, PacketType.MESSAGE_ACK, body)

    def push(self, stored: StoredMessage, now: int) -> None:
        """Send a stored message to its recipient now, if it is online and reachable.

        A push is a hint: the message stays in the mailbox until acknowledged.
        """
        core = self.core
        recipient = core.sessions.of_user(stored.recipient_id, now)
        if recipient is None or not recipient.validated:
            return
        entry = encode_entry(
            Entry(stored.message_id, stored.sender_id, stored.received_at_ms, stored.payload)
        )
        if relay_packet_size(len(entry)) > PUSH_DATAGRAM_LIMIT:
            return
        core.send_session(recipient, PacketType.MESSAGE_DELIVER, entry)
        core.stats.pushes += 1
        log.debug("message_pushed", trace_id=stored.trace_id, user_id=stored.recipient_id)

    # --- ACK -----------------------------------------------------------------

    def ack(self, session: Session, body: bytes, address: Address, now: int) -> None:
        core = self.core
        keys = decode_ack(body)
        if not session.buckets.ack.take(core.rates.ack, now):
            core.stats.rate_limited["ack"] += 1
            core.stats.failed["ack"] += 1
            return
        core.spawn(self._acknowledge(session.user_id, keys, now, time.perf_counter()))

    async def _acknowledge(
        self, user_id: str, keys: list[tuple[str, str]], now: int, started: float
    ) -> None:
        core = self.core
        receipts = await core.storage.acknowledge(user_id, keys, now)
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
        if not session.buckets.poll.take(core.rates.poll, now):
            core.stats.rate_limited["poll"] += 1
            core.stats.failed["poll"] += 1
            return
        core.spawn(self._answer_poll(session, max_bytes, now, time.perf_counter()))

    async def _answer_poll(
        self, session: Session, max_bytes: int, now: int, started: float
    ) -> None:
        core = self.core
        room = max(0, max_bytes - _POLL_RESPONSE_FIXED_SIZE)
        fetched = await core.storage.fetch(session.user_id, now, room)
        if core.sessions.by_id.get(session.session_id) is not session:
            return  # the session ended while the mailbox was read
        entries = [
            encode_entry(Entry(m.message_id, m.sender_id, m.received_at_ms, m.payload))
            for m in fetched.entries
        ]
        if session.path_nonce is not None:
            # To an unvalidated address the budget is a hard limit.
            entries = self._fit(entries, min(max_bytes, session.path_budget))
        remaining = fetched.remaining + len(fetched.entries) - len(entries)
        sent = core.send_session(
            session, PacketType.POLL_RESPONSE, encode_poll_response(remaining, entries)
        )
        if sent:
            for message in fetched.entries[: len(entries)]:
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
