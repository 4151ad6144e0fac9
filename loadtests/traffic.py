"""Traffic patterns shared by the messaging scenarios: closed loops, pacing, drains."""

import asyncio
import os
import random
import time
from collections.abc import Callable

from loadtests.fleet import Fleet, Phone
from loadtests.ledger import Fate
from relay.client.events import MessageAckReceived
from relay.protocol.constants import AckStatus

RETRANSMIT_AFTER_S = 1.0
MAX_ATTEMPTS = 6


def payload_of(size: int) -> bytes:
    return os.urandom(size)


class ClosedLoop:
    """Each sender keeps `window` messages waiting for the answer that ends them.

    `done_status` is the MESSAGE_ACK status that frees a slot: QUEUED for
    durable sends, DELIVERED for full cycles. A slot whose answer never
    comes is freed after `stall_s`, so one lost datagram cannot stall a
    sender; the message stays in the ledger.
    """

    def __init__(
        self,
        fleet: Fleet,
        senders: list[Phone],
        pick_recipient: Callable[[Phone], str],
        payload: bytes,
        window: int,
        done_status: AckStatus,
        limit: int,
        stall_s: float = 2.0,
    ) -> None:
        self.fleet = fleet
        self.senders = senders
        self.pick_recipient = pick_recipient
        self.payload = payload
        self.window = window
        self.done_status = done_status
        self.limit = limit
        self.stall_s = stall_s
        self.sent = 0
        self.completed = 0
        self.stalled = 0
        self.in_flight: dict[str, tuple[Phone, float]] = {}
        self.stopped = False
        fleet.on_answer = self.on_answer

    def start(self) -> None:
        for sender in self.senders:
            for _ in range(self.window):
                self._send(sender)

    def _send(self, sender: Phone) -> None:
        if self.stopped or self.sent >= self.limit:
            return
        self.sent += 1
        message_id = self.fleet.send_message(
            sender, self.pick_recipient(sender), self.payload
        )
        self.in_flight[message_id] = (sender, time.perf_counter())

    def on_answer(self, phone: Phone, event: MessageAckReceived) -> None:
        status = event.status
        if status != self.done_status and status not in _REFUSALS:
            return
        entry = self.in_flight.pop(event.message_id, None)
        if entry is None:
            return
        self.completed += 1
        self._send(entry[0])

    def recover(self) -> None:
        """Free slots whose answer is overdue, and send unanswered messages again."""
        now = time.perf_counter()
        self.fleet.retransmit_unanswered(RETRANSMIT_AFTER_S, MAX_ATTEMPTS)
        overdue = [
            m for m, (_, sent) in self.in_flight.items() if now - sent > self.stall_s
        ]
        for message_id in overdue:
            sender, _ = self.in_flight.pop(message_id)
            self.stalled += 1
            self._send(sender)

    @property
    def finished(self) -> bool:
        return self.sent >= self.limit and not self.in_flight

    async def run(self, deadline: float, progress: Callable[[], None]) -> None:
        self.start()
        while not self.finished and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            self.recover()
            progress()
        self.stopped = True
        self.fleet.on_answer = None


# Answers that end a message's attempt without storing it.
_REFUSALS = frozenset(
    {
        AckStatus.UNKNOWN_RECIPIENT,
        AckStatus.MAILBOX_FULL,
        AckStatus.TOO_LARGE,
        AckStatus.RATE_LIMITED,
        AckStatus.UNAVAILABLE,
        AckStatus.EXPIRED,
    }
)


async def paced(
    fleet: Fleet,
    senders: list[Phone],
    pick_recipient: Callable[[Phone], str],
    payload: bytes,
    rate: float,
    duration_s: float,
    progress: Callable[[], None],
    burst: int = 1,
) -> int:
    """Send at `rate` messages a second for duration_s, in bursts; return how many.

    Steps of 2 ms keep the load smooth: coarser steps would send bursts
    whose own length shows up as latency.
    """
    step_s = 0.002
    started = time.perf_counter()
    deadline = started + duration_s
    owed, offered, sent, next_progress = 0.0, 0, 0, started
    while (now := time.perf_counter()) < deadline:
        owed = rate * (now - started) - offered
        while owed >= burst:
            sender = random.choice(senders)
            for _ in range(burst):
                if sender.established:
                    fleet.send_message(sender, pick_recipient(sender), payload)
                    sent += 1
                offered += 1
            owed -= burst
        if now >= next_progress:
            fleet.retransmit_unanswered(RETRANSMIT_AFTER_S, MAX_ATTEMPTS)
            progress()
            next_progress = now + 0.1
        await asyncio.sleep(step_s)
    return sent


async def settle_answers(fleet: Fleet, timeout_s: float) -> None:
    """Wait until every message has its answer, sending unanswered ones again."""
    deadline = time.perf_counter() + timeout_s
    while fleet.unanswered and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
        fleet.retransmit_unanswered(RETRANSMIT_AFTER_S, MAX_ATTEMPTS)
        stale = [
            m
            for m, (phone, _, _) in fleet.unanswered.items()
            if fleet.ledger.fates[m].attempts >= MAX_ATTEMPTS
        ]
        if len(stale) == len(fleet.unanswered):
            # Every message left has used its attempts; waiting longer is futile.
            await asyncio.sleep(RETRANSMIT_AFTER_S)
            return


async def drain(
    fleet: Fleet,
    recipients: list[Phone],
    timeout_s: float,
    progress: Callable[[int], None],
) -> float:
    """Poll every recipient until no QUEUED message is missing; return seconds taken.

    Recipients that are not registered register first; each then polls
    (the fleet polls again after every POLL_RESPONSE that had entries and
    ACKs what it got). A recipient whose poll loop went quiet while
    messages are still missing polls again.
    """
    started = time.perf_counter()
    deadline = started + timeout_s
    missing = _missing_by_recipient(fleet)
    total = sum(missing.values())
    for phone in recipients:
        phone.drains = True
        if not phone.established:
            phone.start_register()
        else:
            fleet.poll(phone, fleet.poll_bytes)
    reported = 0
    quiet_since: dict[str, tuple[int, float]] = {}
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.25)
        missing = _missing_by_recipient(fleet)
        left = sum(missing.values())
        progress(total - left - reported)
        reported = total - left
        if not left:
            break
        _nudge(fleet, recipients, missing, quiet_since)
    for phone in recipients:
        phone.flush_acks()
    return time.perf_counter() - started


def _nudge(
    fleet: Fleet,
    recipients: list[Phone],
    missing: dict[str, int],
    quiet_since: dict[str, tuple[int, float]],
) -> None:
    now = time.perf_counter()
    for phone in recipients:
        waiting = missing.get(phone.user_id, 0)
        if not waiting:
            continue
        if not phone.established:
            if now - phone.handshake_sent_at > RETRANSMIT_AFTER_S:
                phone.start_register()
            continue
        # A recipient whose count has not moved for a second polls again: its
        # POLL or the response was lost, or a push it missed is still stored.
        last, since = quiet_since.get(phone.user_id, (-1, now))
        if last != waiting:
            quiet_since[phone.user_id] = (waiting, now)
        elif now - since > RETRANSMIT_AFTER_S:
            quiet_since[phone.user_id] = (waiting, now)
            fleet.poll(phone, fleet.poll_bytes)


def _missing_by_recipient(fleet: Fleet) -> dict[str, int]:
    missing: dict[str, int] = {}
    for fate in fleet.ledger.fates.values():
        if _is_missing(fate):
            missing[fate.recipient_id] = missing.get(fate.recipient_id, 0) + 1
    return missing


def _is_missing(fate: Fate) -> bool:
    return bool(fate.queued_at) and not fate.delivered_at


def steady_rate(times: list[float], low: float = 0.05, high: float = 0.95) -> float:
    """Events a second between the low and high fractions of the sorted times."""
    if len(times) < 20:
        return 0.0
    ordered = sorted(times)
    first = ordered[int(low * (len(ordered) - 1))]
    last = ordered[int(high * (len(ordered) - 1))]
    count = int(high * (len(ordered) - 1)) - int(low * (len(ordered) - 1))
    return count / (last - first) if last > first else 0.0
