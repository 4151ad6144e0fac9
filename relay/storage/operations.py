"""Write operations queued for the group-commit writer.

Each operation carries the future its caller awaits. The batch that runs it
fills in its outcome fields, and after the commit the writer sets the future
to `result(index)`.
"""

import asyncio
from dataclasses import dataclass, field

from relay.protocol.constants import AckStatus
from relay.storage.base import Enqueued, Receipt, Registration, StoredMessage, Sweep
from relay.storage.mailbox_index import MailboxIndex


@dataclass(eq=False, slots=True)
class RegisterUser:
    future: asyncio.Future
    user_id: str
    ed25519_public: bytes
    x25519_public: bytes
    now_ms: int
    key_conflict: bool = False

    def result(self, index: MailboxIndex) -> Registration:
        if self.key_conflict:
            return Registration(key_conflict=True, pending=0)
        return Registration(False, index.pending_count(self.user_id, self.now_ms))


@dataclass(eq=False, slots=True)
class EnqueueMessage:
    future: asyncio.Future
    message: StoredMessage
    status: AckStatus | None = None
    stored: bool = False  # this copy waits in its mailbox as a new message

    def result(self, index: MailboxIndex) -> Enqueued:
        assert self.status is not None, "the batch decides every enqueue"
        return Enqueued(self.status, self.stored)


@dataclass(eq=False, slots=True)
class AcknowledgeMessages:
    future: asyncio.Future
    recipient_id: str
    keys: list[tuple[str, str]]
    now_ms: int
    receipts: list[Receipt] = field(default_factory=list)

    def result(self, index: MailboxIndex) -> list[Receipt]:
        return self.receipts


@dataclass(eq=False, slots=True)
class SweepExpired:
    """Delete up to limit expired messages and up to limit old dedup records."""

    future: asyncio.Future
    now_ms: int
    dedup_window_ms: int
    limit: int
    outcome: Sweep | None = None

    def result(self, index: MailboxIndex) -> Sweep | None:
        return self.outcome


@dataclass(eq=False, slots=True)
class EraseUser:
    future: asyncio.Future
    user_id: str

    def result(self, index: MailboxIndex) -> None:
        return None


@dataclass(eq=False, slots=True)
class ProbeWrite:
    """A write that leaves no trace, to learn whether commits work again.

    The writer submits nothing by itself: the server sends probes while
    writes are failing, so that an idle relay notices when disk space
    returns.
    """

    future: asyncio.Future

    def result(self, index: MailboxIndex) -> None:
        return None


WriteOperation = (
    RegisterUser
    | EnqueueMessage
    | AcknowledgeMessages
    | SweepExpired
    | EraseUser
    | ProbeWrite
)
