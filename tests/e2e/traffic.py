"""Phones that keep a relay busy from background threads while a test runs tools.

Each loop is bounded by a message count and a deadline, and stops by itself.
"""

import threading
import time
import uuid
from collections.abc import Iterable

from relay.client.events import (
    DrainingReceived,
    MessageAckReceived,
    PollResponseReceived,
)
from relay.protocol.constants import AckStatus
from tests.e2e.phone import UdpPhone

OUTSTANDING_MAX = 8
ANSWER_TIMEOUT_S = 3.0


class Sender(threading.Thread):
    """Sends MESSAGEs to a recipient and records each MESSAGE_ACK.

    A message can be answered twice, QUEUED and later DELIVERED: answers
    keeps the latest status, queued_at the time of the QUEUED answer.

    At most `window` messages wait for an answer at once; one left
    unanswered for ANSWER_TIMEOUT_S is given up (not resent). DRAINING is
    counted, and stops the sending if stop_on_draining is set.
    """

    def __init__(
        self,
        phone: UdpPhone,
        recipient_id: str,
        *,
        max_messages: int = 5_000,
        max_seconds: float = 30.0,
        payload: bytes = b"sealed" * 40,
        window: int = OUTSTANDING_MAX,
        stop_on_draining: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.phone = phone
        self.recipient_id = recipient_id
        self.max_messages = max_messages
        self.max_seconds = max_seconds
        self.payload = payload
        self.window = window
        self.stop_on_draining = stop_on_draining
        self.drainings = 0
        self.stopping = threading.Event()
        self.sent: list[str] = []
        self.answers: dict[str, AckStatus] = {}
        self.queued_at: dict[str, float] = {}
        self._waiting: dict[str, float] = {}

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while time.monotonic() < deadline and not self.stopping.is_set():
            room = len(self._waiting) < self.window
            if len(self.sent) < self.max_messages and room:
                self._send_one()
                continue
            if not self._waiting and len(self.sent) >= self.max_messages:
                return
            self._receive(0.05)
        # Collect the answers still on their way, until the socket is quiet.
        for _ in range(1_000):
            if not self._receive(0.5):
                break

    def _send_one(self) -> None:
        message_id = str(uuid.uuid4())
        self.phone.send(
            self.phone.message(self.recipient_id, self.payload, message_id=message_id)
        )
        self.sent.append(message_id)
        self._waiting[message_id] = time.monotonic()
        self._receive(0.0005)

    def _receive(self, timeout_s: float) -> int:
        """Record the answers that arrive; return how many datagrams came."""
        count = 0
        event = self.phone.receive(timeout_s)
        while event is not None:
            count += 1
            if isinstance(event, MessageAckReceived):
                self.answers[event.message_id] = event.status
                if event.status == AckStatus.QUEUED:
                    self.queued_at.setdefault(event.message_id, time.monotonic())
                self._waiting.pop(event.message_id, None)
            elif isinstance(event, DrainingReceived):
                self.drainings += 1
                if self.stop_on_draining:
                    self.stopping.set()
            event = self.phone.receive(0.0005)
        now = time.monotonic()
        for message_id, sent_at in list(self._waiting.items()):
            if now - sent_at > ANSWER_TIMEOUT_S:
                del self._waiting[message_id]
        return count

    def stop(self) -> "Sender":
        self.stopping.set()
        self.join(timeout=self.max_seconds + 10)
        return self

    def queued(self, before: float = float("inf")) -> set[str]:
        """Return the ids answered QUEUED before a time.monotonic() value."""
        # A copy first: the sender thread may be adding entries.
        return {
            message_id
            for message_id, queued_at in dict(self.queued_at).items()
            if queued_at < before
        }

    def statuses(self) -> set[AckStatus]:
        return set(dict(self.answers).values())


class Collector(threading.Thread):
    """Polls its mailbox and acknowledges what it receives, so rows get deleted."""

    def __init__(self, phone: UdpPhone, *, max_seconds: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.phone = phone
        self.max_seconds = max_seconds
        self.stopping = threading.Event()
        self.received: set[str] = set()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while time.monotonic() < deadline and not self.stopping.is_set():
            self.phone.send(self.phone.session.poll(60_000))
            response = self.phone.receive(0.5)
            if not isinstance(response, PollResponseReceived):
                continue
            entries = response.response.entries
            self.received.update(entry.message_id for entry in entries)
            acknowledge(self.phone, ((e.sender_id, e.message_id) for e in entries))
            if not entries:
                time.sleep(0.05)

    def stop(self) -> "Collector":
        self.stopping.set()
        self.join(timeout=self.max_seconds + 10)
        return self


def total_queued(senders: list[Sender]) -> int:
    return sum(len(sender.queued()) for sender in senders)


def wait_for_queued(senders: list[Sender], count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while total_queued(senders) < count:
        if time.monotonic() > deadline:
            queued = total_queued(senders)
            raise AssertionError(
                f"only {queued} of {count} messages QUEUED in {timeout_s} s"
            )
        time.sleep(0.02)


def acknowledge(phone: UdpPhone, keys: Iterable[tuple[str, str]]) -> None:
    keys = list(keys)
    for start in range(0, len(keys), 15):
        phone.send(phone.session.ack(keys[start : start + 15]))


def drain_mailbox(phone: UdpPhone, acknowledge_entries: bool = True) -> set[str]:
    """Poll (and acknowledge) until the mailbox is empty; return the message ids.

    Without acknowledging, one poll returns the oldest entries only, so the
    loop stops after the first response.
    """
    seen: set[str] = set()
    for _ in range(10_000):
        phone.send(phone.session.poll(60_000))
        response = phone.receive()
        assert isinstance(response, PollResponseReceived), response
        entries = response.response.entries
        seen.update(entry.message_id for entry in entries)
        if not entries or not acknowledge_entries:
            return seen
        acknowledge(phone, ((e.sender_id, e.message_id) for e in entries))
    return seen
