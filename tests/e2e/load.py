"""Phones that send MESSAGEs as fast as they are answered, in threads, with bounds."""

import threading
import time
import uuid

from relay.client.events import DrainingReceived, MessageAckReceived
from relay.protocol.constants import AckStatus
from tests.e2e.phone import UdpPhone


class Sender(threading.Thread):
    """Keeps up to `window` MESSAGEs unanswered until stopped or out of budget.

    Records every MESSAGE_ACK status by message id and every DRAINING.
    """

    def __init__(
        self,
        phone: UdpPhone,
        recipient_id: str,
        window: int = 8,
        max_messages: int = 20_000,
        max_seconds: float = 60.0,
        payload: bytes = b"p" * 64,
        stop_on_draining: bool = True,
    ) -> None:
        super().__init__(daemon=True)
        self.phone = phone
        self.recipient_id = recipient_id
        self.window = window
        self.max_messages = max_messages
        self.max_seconds = max_seconds
        self.payload = payload
        self.stop_on_draining = stop_on_draining
        self.stop_sending = threading.Event()
        self.sent: list[str] = []
        self.statuses: dict[str, AckStatus] = {}
        self.drainings = 0
        self._outstanding: set[str] = set()

    @property
    def queued(self) -> set[str]:
        return {m for m, status in self.statuses.items() if status == AckStatus.QUEUED}

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while (
            not self.stop_sending.is_set()
            and len(self.sent) < self.max_messages
            and time.monotonic() < deadline
        ):
            while (
                len(self._outstanding) < self.window
                and len(self.sent) < self.max_messages
            ):
                self._send_one()
            self._record(self.phone.receive(0.2))
        # Collect the answers still on their way, until the socket is quiet.
        for _ in range(1_000):
            event = self.phone.receive(0.5)
            if event is None:
                break
            self._record(event)

    def _send_one(self) -> None:
        message_id = str(uuid.uuid4())
        self.sent.append(message_id)
        self._outstanding.add(message_id)
        self.phone.send(
            self.phone.message(self.recipient_id, self.payload, message_id=message_id)
        )

    def _record(self, event: object) -> None:
        if isinstance(event, MessageAckReceived):
            # The first answer counts: a later one for the same id is a repeat.
            self.statuses.setdefault(event.message_id, event.status)
            self._outstanding.discard(event.message_id)
        elif isinstance(event, DrainingReceived):
            self.drainings += 1
            if self.stop_on_draining:
                self.stop_sending.set()
        elif event is None:
            # Nothing for 0.2 s: answers were lost or the relay is gone.
            self._outstanding.clear()


def total_queued(senders: list[Sender]) -> int:
    return sum(len(sender.queued) for sender in senders)


def wait_for_queued(senders: list[Sender], count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while total_queued(senders) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"only {total_queued(senders)} of {count} messages QUEUED in {timeout_s} s"
            )
        time.sleep(0.02)
