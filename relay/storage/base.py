"""The one interface between the protocol core and storage.

The core never sees SQL. An implementation keeps the user registry (user
id to Ed25519 and X25519 keys), one mailbox per recipient and the dedup
records, and decides atomically what a single writer would: key conflicts,
duplicates, unknown recipients and quotas. SQLite is the embedded
implementation; a distributed one must give the same answers.

Async methods may wait for a commit. `submit_enqueue` and
`submit_acknowledge` queue the same work as `enqueue` and `acknowledge` at
once and return its future, so that the relay can finish each MESSAGE and
ACK in a callback instead of a task of its own. The three synchronous
methods that read are called on the hot path and must read only memory.
"""

import asyncio
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from relay.protocol.constants import AckStatus


class StorageUnavailable(Exception):
    """Storage cannot serve now (disk full, corrupt file, I/O error, closed).

    Nothing was stored; the caller answers UNAVAILABLE and may retry later.
    """


@dataclass(frozen=True, slots=True)
class Quotas:
    max_messages: int  # per mailbox
    max_bytes: int  # per mailbox
    max_per_sender: int  # per mailbox, from one sender
    # All mailboxes together; None for no limit. The mailbox index keeps
    # every stored message in memory, so this bounds its size.
    max_stored: int | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as the relay keeps it until its recipient acknowledges it."""

    sender_id: str
    message_id: str
    recipient_id: str
    payload: bytes
    received_at_ms: int
    expires_at_ms: int
    trace_id: str


class Enqueued(NamedTuple):
    """The outcome of one enqueued copy of a message."""

    status: AckStatus
    # This copy was written to its mailbox as a new message. False for a
    # repeat, a refusal, or a message its recipient acknowledged in the
    # same batch, which is delivered and never written.
    stored: bool


@dataclass(frozen=True, slots=True)
class Registration:
    """Outcome of binding a user id to its keys."""

    key_conflict: bool
    pending: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """A message deleted by its recipient's ACK before it expired."""

    sender_id: str
    message_id: str
    trace_id: str
    received_at_ms: int


@dataclass(frozen=True, slots=True)
class Fetched:
    entries: list[StoredMessage]
    remaining: int


@dataclass(frozen=True, slots=True)
class Sweep:
    expired_messages: int
    purged_dedup_records: int


@dataclass(frozen=True, slots=True)
class StorageStats:
    queue_size: int  # unacknowledged messages in all mailboxes, expired ones included
    oldest_received_at_ms: int | None  # of the oldest message still waiting
    pending_writes: int  # operations waiting for the next commit


class Storage(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema and load what the hot path needs."""

    async def close(self) -> None:
        """Commit every pending write, then release the database."""

    async def register_user(
        self, user_id: str, ed25519_public: bytes, x25519_public: bytes, now_ms: int
    ) -> Registration:
        """Bind user_id to ed25519_public on first use, or check the binding.

        With the same Ed25519 key the X25519 key is updated. With another
        key nothing changes and key_conflict is True. Committed on return.
        """

    async def enqueue(self, message: StoredMessage) -> AckStatus:
        """Store a message and return QUEUED once it is committed.

        A repeated (sender_id, message_id) is stored once and returns the
        first copy's state: QUEUED, DELIVERED or EXPIRED while the dedup
        window lasts. Otherwise UNKNOWN_RECIPIENT or MAILBOX_FULL. Quotas
        count every stored message, expired ones too until sweep deletes them.
        """

    async def acknowledge(
        self, recipient_id: str, keys: list[tuple[str, str]], now_ms: int
    ) -> list[Receipt]:
        """Delete (sender_id, message_id) pairs from recipient_id's own mailbox.

        Returns the deleted messages that had not expired, whose senders get
        a DELIVERED receipt. Pairs not in that mailbox are ignored.
        """

    def submit_register(
        self, user_id: str, ed25519_public: bytes, x25519_public: bytes, now_ms: int
    ) -> "asyncio.Future[Registration]":
        """Queue `register_user` now; return the future of its outcome.

        Raises StorageUnavailable at once when storage is closed.
        """

    def submit_enqueue(self, message: StoredMessage) -> "asyncio.Future[Enqueued]":
        """Queue `enqueue` now; return the future of its status and admission.

        Raises StorageUnavailable at once when storage is closed; the future
        fails with it when the commit fails.
        """

    def submit_acknowledge(
        self, recipient_id: str, keys: list[tuple[str, str]], now_ms: int
    ) -> "asyncio.Future[list[Receipt]]":
        """Queue `acknowledge` now; return the future of its receipts."""

    async def fetch(self, recipient_id: str, now_ms: int, max_bytes: int) -> Fetched:
        """Return the oldest unexpired messages of a mailbox, in mailbox order.

        Entries are taken while their encoded sizes (see
        codec.entry_size) add up to at most max_bytes, and the oldest is
        always returned, even alone over the budget. remaining counts the
        unexpired messages left out.
        """

    async def erase_user(self, user_id: str) -> None:
        """Delete the registry entry, the mailbox and the user's dedup records."""

    async def sweep(self, now_ms: int, dedup_window_ms: int) -> Sweep:
        """Delete expired messages, recording them EXPIRED, and old dedup records."""

    async def check(self) -> None:
        """Run a real query; raise StorageUnavailable if the database fails."""

    def maybe_seen(self, sender_id: str, message_id: str) -> bool:
        """Tell, from memory, whether this message may have been enqueued before.

        False must mean certainly not, within the dedup window: the relay
        then pushes the message before it is committed. An implementation
        that cannot tell returns True, and every push waits for its commit.
        """

    def pending_count(self, recipient_id: str, now_ms: int) -> int:
        """Count the unexpired messages waiting for recipient_id, from memory."""

    def stats(self) -> StorageStats:
        """Summarise the mailboxes from memory."""
