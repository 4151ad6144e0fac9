"""Mailbox quotas, checked against the index plus what a batch already admitted."""

from relay.storage.base import Quotas, StoredMessage
from relay.storage.mailbox_index import MailboxIndex


class QuotaCheck:
    """Admit messages one by one within a single batch.

    The index changes only after the commit, so the messages admitted
    earlier in the same batch are counted here. Quotas count every stored
    message, expired ones too until the sweeper deletes them.
    """

    def __init__(self, index: MailboxIndex, quotas: Quotas) -> None:
        self._index = index
        self._quotas = quotas
        self._messages: dict[str, int] = {}
        self._payload_bytes: dict[str, int] = {}
        self._from_sender: dict[tuple[str, str], int] = {}
        self._admitted = 0

    def relay_full(self) -> bool:
        """Return whether all mailboxes together contain max_stored messages."""
        limit = self._quotas.max_stored
        return limit is not None and self._index.message_count + self._admitted >= limit

    def admit(self, message: StoredMessage) -> bool:
        """Return whether the message fits every quota, and count it if so."""
        recipient_id = message.recipient_id
        pair = (recipient_id, message.sender_id)
        size = len(message.payload)
        stored = self._index.usage(recipient_id, message.sender_id)
        messages = stored.messages + self._messages.get(recipient_id, 0) + 1
        payload_bytes = (
            stored.payload_bytes + self._payload_bytes.get(recipient_id, 0) + size
        )
        from_sender = stored.from_sender + self._from_sender.get(pair, 0) + 1
        if (
            messages > self._quotas.max_messages
            or payload_bytes > self._quotas.max_bytes
            or from_sender > self._quotas.max_per_sender
        ):
            return False
        self._messages[recipient_id] = self._messages.get(recipient_id, 0) + 1
        self._payload_bytes[recipient_id] = (
            self._payload_bytes.get(recipient_id, 0) + size
        )
        self._from_sender[pair] = self._from_sender.get(pair, 0) + 1
        self._admitted += 1
        return True
