"""In-memory summary of every mailbox, so that quotas and counts need no query.

The index keeps, per recipient, the payload bytes, the message count per
sender and the sorted expiry and receive times of the stored messages. It
keeps no payloads, and a mailbox that becomes empty is dropped, so memory
grows with the number of stored messages only. The group-commit writer is
its only writer and changes it only after a successful commit.
"""

from array import array
from bisect import bisect_left, bisect_right, insort
from typing import NamedTuple

import aiosqlite

from relay.storage.seen import SeenFilter

LOAD_CHUNK_ROWS = 1_000


class MessageSummary(NamedTuple):
    """Fields of one stored message that the index keeps."""

    recipient_id: str
    sender_id: str
    payload_size: int
    expires_at_ms: int
    received_at_ms: int


# Columns of mailbox_messages in MessageSummary order, for SELECT and RETURNING.
SUMMARY_COLUMNS = (
    "recipient_id, sender_id, length(payload), expires_at_ms, received_at_ms"
)


class MailboxUsage(NamedTuple):
    messages: int
    payload_bytes: int
    from_sender: int


class _Mailbox:
    # The times are arrays of 64-bit integers, 8 bytes a message. A list
    # would store a pointer and an int object for each, about 40 bytes, and
    # a relay with a week's backlog keeps millions of them.
    __slots__ = ("expiries", "payload_bytes", "per_sender", "receptions")

    def __init__(self) -> None:
        self.payload_bytes = 0
        self.per_sender: dict[str, int] = {}
        self.expiries = array("q")
        self.receptions = array("q")


class MailboxIndex:
    def __init__(self) -> None:
        self._mailboxes: dict[str, _Mailbox] = {}
        self.message_count = 0
        # The earliest receive time, found by a scan of every mailbox only
        # after the message that had it left: /health and /metrics ask for
        # it on every request, and a scan takes about 1.4 ms per 10,000
        # mailboxes.
        self._oldest: int | None = None
        self._oldest_known = True

    @classmethod
    async def load(
        cls, connection: aiosqlite.Connection, seen: SeenFilter | None = None
    ) -> "MailboxIndex":
        """Build the index from one scan of mailbox_messages.

        The same scan adds each stored message's id to seen, if given.
        """
        index = cls()
        cursor = await connection.execute(
            f"SELECT {SUMMARY_COLUMNS}, message_id FROM mailbox_messages"
        )
        try:
            while rows := await cursor.fetchmany(LOAD_CHUNK_ROWS):
                for *columns, message_id in rows:
                    summary = MessageSummary._make(columns)
                    index._append(summary)
                    if seen is not None:
                        seen.add(summary.sender_id, message_id, summary.expires_at_ms)
        finally:
            await cursor.close()
        for mailbox in index._mailboxes.values():
            mailbox.expiries = array("q", sorted(mailbox.expiries))
            mailbox.receptions = array("q", sorted(mailbox.receptions))
        index._oldest_known = False
        return index

    def add(self, message: MessageSummary) -> None:
        mailbox = self._count_in(message)
        insort(mailbox.expiries, message.expires_at_ms)
        insort(mailbox.receptions, message.received_at_ms)
        self._note_received(message.received_at_ms)

    def remove(self, message: MessageSummary) -> None:
        mailbox = self._mailboxes.get(message.recipient_id)
        if mailbox is None:
            return
        self.message_count -= 1
        mailbox.payload_bytes -= message.payload_size
        remaining = mailbox.per_sender[message.sender_id] - 1
        if remaining:
            mailbox.per_sender[message.sender_id] = remaining
        else:
            del mailbox.per_sender[message.sender_id]
        _remove_value(mailbox.expiries, message.expires_at_ms)
        _remove_value(mailbox.receptions, message.received_at_ms)
        self._note_gone(message.received_at_ms)
        if not mailbox.expiries:
            del self._mailboxes[message.recipient_id]

    def drop(self, recipient_id: str) -> None:
        """Forget a whole mailbox, as when its user is erased."""
        mailbox = self._mailboxes.pop(recipient_id, None)
        if mailbox is not None:
            self._note_gone(mailbox.receptions[0])
            self.message_count -= len(mailbox.expiries)

    def pending_count(self, recipient_id: str, now_ms: int) -> int:
        """Count the messages of a mailbox with expires_at_ms after now_ms."""
        mailbox = self._mailboxes.get(recipient_id)
        if mailbox is None:
            return 0
        expired = bisect_right(mailbox.expiries, now_ms)
        return len(mailbox.expiries) - expired

    def usage(self, recipient_id: str, sender_id: str) -> MailboxUsage:
        """Return what counts toward the quotas, expired messages included."""
        mailbox = self._mailboxes.get(recipient_id)
        if mailbox is None:
            return MailboxUsage(0, 0, 0)
        return MailboxUsage(
            len(mailbox.expiries),
            mailbox.payload_bytes,
            mailbox.per_sender.get(sender_id, 0),
        )

    def oldest_received_at_ms(self) -> int | None:
        """Return the earliest receive time of any stored message."""
        if not self._oldest_known:
            firsts = [mailbox.receptions[0] for mailbox in self._mailboxes.values()]
            self._oldest = min(firsts, default=None)
            self._oldest_known = True
        return self._oldest

    def _note_received(self, received_at_ms: int) -> None:
        if self._oldest_known and (
            self._oldest is None or received_at_ms < self._oldest
        ):
            self._oldest = received_at_ms

    def _note_gone(self, received_at_ms: int) -> None:
        if received_at_ms == self._oldest:
            self._oldest_known = False

    def mailbox_count(self) -> int:
        return len(self._mailboxes)

    def snapshot(self) -> dict[str, tuple]:
        """Return a plain copy of the index, for comparing two of them."""
        return {
            recipient_id: (
                mailbox.payload_bytes,
                dict(sorted(mailbox.per_sender.items())),
                list(mailbox.expiries),
                list(mailbox.receptions),
            )
            for recipient_id, mailbox in self._mailboxes.items()
        }

    def _append(self, message: MessageSummary) -> None:
        """Add without keeping the times sorted; load sorts them once at the end."""
        mailbox = self._count_in(message)
        mailbox.expiries.append(message.expires_at_ms)
        mailbox.receptions.append(message.received_at_ms)

    def _count_in(self, message: MessageSummary) -> _Mailbox:
        mailbox = self._mailboxes.get(message.recipient_id)
        if mailbox is None:
            mailbox = self._mailboxes[message.recipient_id] = _Mailbox()
        self.message_count += 1
        mailbox.payload_bytes += message.payload_size
        per_sender = mailbox.per_sender
        per_sender[message.sender_id] = per_sender.get(message.sender_id, 0) + 1
        return mailbox


def _remove_value(values: array, value: int) -> None:
    """Remove one occurrence of value from a sorted array."""
    position = bisect_left(values, value)
    if position < len(values) and values[position] == value:
        del values[position]
