"""Incoming mailbox entries, with duplicates dropped by (sender_id, message_id).

Delivery is at least once: the relay pushes a message, and sends it again
on every POLL until the recipient acknowledges it. The inbox passes each
message to the application once. It also remembers which messages the
application acknowledged, because a message that comes back after that
means the ACK was lost, and the client must send it again or the message
would wait in the relay's mailbox until it expires.
"""

import asyncio
from collections import OrderedDict
from enum import Enum

from relay.client.errors import ClientClosed
from relay.protocol.codec import Entry

MessageKey = tuple[str, str]  # (sender_id, message_id)


class Arrival(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    # A duplicate of a message the application already acknowledged.
    ACKNOWLEDGED_DUPLICATE = "acknowledged_duplicate"


class Inbox:
    """A queue of new entries and a bounded memory of the keys already seen."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("inbox capacity must be at least 1")
        self._capacity = capacity
        # Key to whether the application acknowledged it; oldest first.
        self._seen: OrderedDict[MessageKey, bool] = OrderedDict()
        self._queue: asyncio.Queue[Entry | None] = asyncio.Queue()
        self._closed = False

    def add(self, entry: Entry) -> Arrival:
        """Queue a new entry, or report what kind of duplicate it is."""
        key = (entry.sender_id, entry.message_id)
        acknowledged = self._seen.get(key)
        if acknowledged is not None:
            return Arrival.ACKNOWLEDGED_DUPLICATE if acknowledged else Arrival.DUPLICATE
        self._remember(key, False)
        self._queue.put_nowait(entry)
        return Arrival.NEW

    def mark_acknowledged(self, keys: list[MessageKey]) -> None:
        for key in keys:
            self._remember(key, True)

    def _remember(self, key: MessageKey, acknowledged: bool) -> None:
        self._seen[key] = acknowledged
        self._seen.move_to_end(key)
        # Forgetting the oldest key only risks showing that message twice.
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)

    def qsize(self) -> int:
        return self._queue.qsize()

    async def get(self, timeout_s: float | None = None) -> Entry:
        """Return the next new entry; raise TimeoutError or ClientClosed."""
        entry = await asyncio.wait_for(self._queue.get(), timeout_s)
        if entry is None:
            # Leave the end marker for every other reader.
            self._queue.put_nowait(None)
            raise ClientClosed("client closed")
        return entry

    def get_nowait(self) -> Entry | None:
        """Return the next new entry, or None if none is queued."""
        try:
            entry = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if entry is None:
            self._queue.put_nowait(None)
        return entry

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)
