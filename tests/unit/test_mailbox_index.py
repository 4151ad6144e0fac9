"""The in-memory mailbox index against a plain recount of what it holds."""

import random

from relay.storage.mailbox_index import MailboxIndex, MessageSummary


def recount_oldest(stored: list[MessageSummary]) -> int | None:
    return min((message.received_at_ms for message in stored), default=None)


def test_oldest_follows_adds_removes_and_drops():
    chooser = random.Random(7)
    index = MailboxIndex()
    stored: list[MessageSummary] = []
    recipients = [f"recipient-{n}" for n in range(5)]
    for step in range(3_000):
        action = chooser.random()
        if action < 0.55 or not stored:
            message = MessageSummary(
                recipient_id=chooser.choice(recipients),
                sender_id=f"sender-{chooser.randrange(3)}",
                payload_size=10,
                expires_at_ms=step + 1_000,
                # Out of order and repeated, as after a restart or a roam.
                received_at_ms=chooser.randrange(500),
            )
            index.add(message)
            stored.append(message)
        elif action < 0.97:
            message = stored.pop(chooser.randrange(len(stored)))
            index.remove(message)
        else:
            recipient = chooser.choice(recipients)
            index.drop(recipient)
            stored = [m for m in stored if m.recipient_id != recipient]
        assert index.oldest_received_at_ms() == recount_oldest(stored), step
        assert index.message_count == len(stored)
