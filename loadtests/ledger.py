"""The fate of every message the phones send: answered, stored, delivered, receipted.

The relay promises that a message it acknowledged QUEUED is delivered at
least once. The ledger records each message from its first MESSAGE to its
delivery, so a run can name every QUEUED message that never arrived.
"""

import time
from collections import Counter
from dataclasses import dataclass, field

from relay.protocol.constants import AckStatus


class Fate:
    """The fate of one message, as perf_counter() seconds (0.0: not yet)."""

    __slots__ = (
        "attempts",
        "delivered_at",
        "queued_at",
        "receipt_at",
        "recipient_id",
        "sender_id",
        "sent_at",
        "status",
    )

    def __init__(self, sender_id: str, recipient_id: str, sent_at: float) -> None:
        self.sender_id = sender_id
        self.recipient_id = recipient_id
        self.sent_at = sent_at
        self.queued_at = 0.0
        self.delivered_at = 0.0
        self.receipt_at = 0.0
        self.status: int | None = None  # the latest MESSAGE_ACK status
        self.attempts = 1


@dataclass
class LedgerReport:
    sent: int
    answered: int
    queued: int
    delivered: int
    receipted: int
    duplicates_delivered: int
    unexpected_deliveries: int
    statuses: dict[str, int]
    lost: list[str] = field(default_factory=list)  # QUEUED, never delivered
    unanswered: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "queued": self.queued,
            "delivered": self.delivered,
            "receipted": self.receipted,
            "duplicates_delivered": self.duplicates_delivered,
            "unexpected_deliveries": self.unexpected_deliveries,
            "statuses": self.statuses,
            "lost": len(self.lost),
            "lost_examples": self.lost[:20],
            "unanswered": len(self.unanswered),
        }


class Ledger:
    def __init__(self) -> None:
        self.fates: dict[str, Fate] = {}
        self.statuses: Counter[str] = Counter()
        self.duplicates_delivered = 0
        self.unexpected_deliveries = 0

    def sent(self, message_id: str, sender_id: str, recipient_id: str) -> Fate:
        fate = self.fates.get(message_id)
        if fate is None:
            fate = self.fates[message_id] = Fate(
                sender_id, recipient_id, time.perf_counter()
            )
        else:
            fate.attempts += 1
        return fate

    def answered(self, message_id: str, status: int) -> Fate | None:
        """Record a MESSAGE_ACK; return the fate, or None for an unknown message."""
        fate = self.fates.get(message_id)
        if fate is None:
            return None
        self.statuses[AckStatus(status).name] += 1
        now = time.perf_counter()
        if status == AckStatus.DELIVERED:
            fate.receipt_at = fate.receipt_at or now
        elif status == AckStatus.QUEUED and not fate.queued_at:
            fate.queued_at = now
        fate.status = status
        return fate

    def delivered(self, message_id: str, recipient_id: str) -> Fate | None:
        """Record that a recipient received a message; None if it was not sent to it."""
        fate = self.fates.get(message_id)
        if fate is None or fate.recipient_id != recipient_id:
            self.unexpected_deliveries += 1
            return None
        if fate.delivered_at:
            self.duplicates_delivered += 1
        else:
            fate.delivered_at = time.perf_counter()
        return fate

    def waiting_for(self, recipient_id: str) -> int:
        """Count QUEUED messages to a recipient not delivered yet."""
        return sum(
            1
            for fate in self.fates.values()
            if fate.recipient_id == recipient_id
            and fate.queued_at
            and not fate.delivered_at
        )

    def undelivered_queued(self) -> list[str]:
        return [
            message_id
            for message_id, fate in self.fates.items()
            if fate.queued_at and not fate.delivered_at
        ]

    def report(self) -> LedgerReport:
        fates = self.fates.values()
        return LedgerReport(
            sent=len(self.fates),
            answered=sum(1 for f in fates if f.status is not None),
            queued=sum(1 for f in fates if f.queued_at),
            delivered=sum(1 for f in fates if f.delivered_at),
            receipted=sum(1 for f in fates if f.receipt_at),
            duplicates_delivered=self.duplicates_delivered,
            unexpected_deliveries=self.unexpected_deliveries,
            statuses=dict(self.statuses),
            lost=self.undelivered_queued(),
            unanswered=[m for m, f in self.fates.items() if f.status is None],
        )
