"""A recipient whose app restarts again and again while messages to it arrive.

Each restart registers a new session from a new port, which replaces the
old session while messages to the user are pushed and committed. The
restarted app hears only its new socket. It acknowledges what is pushed
there and polls when REGISTERED counts waiting messages. So every message
must reach the new session by a push or by that count. Otherwise it waits
in the mailbox until the next PONG. The relay covers the gap between a push
and its commit by pushing again to the new session.
"""

import selectors
import sqlite3
import time
import uuid
from collections import defaultdict

import pytest

from relay.client.events import (
    ChallengeReceived,
    EntryPushed,
    MessageAckReceived,
    PollResponseReceived,
    SessionEstablished,
)
from relay.client.identity import Identity
from relay.protocol.constants import AckStatus
from tests.e2e.phone import UdpPhone

pytestmark = pytest.mark.e2e

RESTARTS = 40
MESSAGES_PER_RESTART = 4
# The messages of one restart are spread over about the time a commit
# takes on loopback, so that some arrive while the registration commits.
MESSAGE_GAP_S = 0.0015
SETTLE_ROUNDS = 100


def drain(phones: list[UdpPhone], quiet_s: float = 0.05, limit_s: float = 5.0):
    """Return (phone, event) for each datagram accepted before quiet_s of silence."""
    events = []
    with selectors.DefaultSelector() as selector:
        for phone in phones:
            phone.socket.setblocking(False)
            selector.register(phone.socket, selectors.EVENT_READ, phone)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            ready = selector.select(quiet_s)
            if not ready:
                break
            for key, _ in ready:
                phone = key.data
                events.extend((phone, event) for event in phone.waiting_events())
    return events


class MessageTracker:
    """Messages Alice sent, her MESSAGE_ACKs, and what each recipient received."""

    def __init__(self, alice: UdpPhone) -> None:
        self.alice = alice
        # message id -> (recipient id, payload)
        self.sent: dict[str, tuple[str, bytes]] = {}
        self.statuses: dict[str, list[AckStatus]] = defaultdict(list)
        self.received: dict[str, set[str]] = defaultdict(set)  # user id -> message ids
        self.acknowledged: set[str] = set()
        self.misdelivered: list[tuple[str, str]] = []
        self.early_receipts: list[str] = []

    def send(self, recipient_id: str) -> None:
        message_id = str(uuid.uuid4())
        payload = message_id.encode()
        self.sent[message_id] = (recipient_id, payload)
        datagram = self.alice.message(recipient_id, payload, message_id=message_id)
        self.alice.send(datagram)

    def settled(self) -> bool:
        """Tell whether every MESSAGE_ACK and DELIVERED expected has arrived."""
        answered = all(self.statuses.get(m) for m in self.sent)
        receipts = all(
            AckStatus.DELIVERED in self.statuses.get(m, []) for m in self.acknowledged
        )
        return answered and receipts

    def take(self, events, listening: dict[str, UdpPhone]) -> None:
        """Record the events, and acknowledge and poll from the phones in `listening`.

        Entries that reach other phones (a restarted app's old socket) are
        checked and counted as received, but not acknowledged.
        """
        for phone, event in events:
            if isinstance(event, MessageAckReceived):
                self._on_message_ack(event)
                continue
            listener = listening.get(phone.user_id) is phone
            if isinstance(event, SessionEstablished) and listener and event.pending:
                phone.send(phone.session.poll(60_000))
            elif isinstance(event, EntryPushed):
                self._on_entries(phone, [event.entry], listener)
            elif isinstance(event, PollResponseReceived):
                self._on_entries(phone, event.response.entries, listener)
                if listener and event.response.remaining:
                    phone.send(phone.session.poll(60_000))

    def _on_message_ack(self, event: MessageAckReceived) -> None:
        self.statuses[event.message_id].append(event.status)
        acknowledged = event.message_id in self.acknowledged
        if event.status == AckStatus.DELIVERED and not acknowledged:
            self.early_receipts.append(event.message_id)

    def _on_entries(self, phone: UdpPhone, entries, listener: bool) -> None:
        for entry in entries:
            if self.sent.get(entry.message_id) != (phone.user_id, entry.payload):
                self.misdelivered.append((phone.user_id, entry.message_id))
            self.received[phone.user_id].add(entry.message_id)
        keys = [(entry.sender_id, entry.message_id) for entry in entries]
        if not listener or not keys:
            return
        for start in range(0, len(keys), 15):
            chunk = keys[start : start + 15]
            self.acknowledged.update(message_id for _, message_id in chunk)
            phone.send(phone.session.ack(chunk))


def waiting_messages(relay, recipient_id: str) -> int:
    with sqlite3.connect(relay.database) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM mailbox_messages WHERE recipient_id = ?",
            (recipient_id,),
        ).fetchone()
    return count


@pytest.fixture
def relay(relay_factory):
    # Every restart is a signed REGISTER from 127.0.0.1.
    return relay_factory(RATE_REGISTER_PER_IP=10_000, RATE_MESSAGE_PER_USER=10_000)


def test_restarting_recipient_reached_by_push_or_count(relay, phone_factory):
    alice, carol = phone_factory(), phone_factory()
    alice.register()
    carol.register()
    bob_identity = Identity.generate()
    bob_phones = [phone_factory(bob_identity)]
    bob_phones[0].register()
    tracker = MessageTracker(alice)
    stranded = []

    for restart in range(RESTARTS):
        bob = phone_factory(bob_identity)
        bob_phones.append(bob)
        bob.send(bob.session.start_register())
        challenge = bob.receive()
        assert isinstance(challenge, ChallengeReceived), challenge
        bob.send(challenge.register)
        for index in range(MESSAGES_PER_RESTART):
            tracker.send(carol.user_id if index == 0 else bob_identity.user_id)
            time.sleep(MESSAGE_GAP_S)
        listening = {carol.user_id: carol, bob_identity.user_id: bob}
        for _ in range(SETTLE_ROUNDS):
            events = drain([alice, carol, *bob_phones])
            tracker.take(events, listening)
            if not events and tracker.settled():
                break
        assert bob.session.established, bob.session.drops
        assert tracker.settled(), f"restart {restart}: answers or receipts missing"
        waiting = waiting_messages(relay, bob_identity.user_id)
        if waiting:
            stranded.append((restart, waiting))

    queued = [m for m, s in tracker.statuses.items() if AckStatus.QUEUED in s]
    assert len(queued) == len(tracker.sent)
    lost = [m for m in queued if m not in tracker.received[tracker.sent[m][0]]]
    assert lost == []
    # Left in the mailbox after a restart settled: the new session got
    # neither a push nor a count in REGISTERED for them.
    assert stranded == []
    assert tracker.misdelivered == []
    assert tracker.early_receipts == []
    status, health = relay.health()
    assert status == 200, health
    assert relay.events("request_failed") == []
