"""Crash consistency: SIGKILL the relay at random moments under traffic, many times.

One database lives through every cycle. In each cycle the relay starts on
it, Alice sends messages (new ones, and repeats of old ones), Bob takes
pushes and polls and acknowledges everything, and at a random moment the
relay gets SIGKILL. After each kill, `PRAGMA integrity_check` runs with the
sqlite3 tool on a copy of the files, so that the relay's own recovery is
what the next start exercises. The test checks:

- every message Alice saw acknowledged QUEUED reaches Bob (at least once),
  with the payload and sender it was sent with;
- a message whose DELIVERED receipt Alice saw never reaches Bob again in
  a later cycle, and a repeat of it is never answered QUEUED;
- the database passes integrity_check after every kill.

20 cycles by default; YAOK_LONG_TESTS=1 runs 200, YAOK_CRASH_CYCLES=N any
number, and YAOK_CRASH_SEED fixes the random moments.
"""

import hashlib
import os
import random
import selectors
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field

import pytest

from relay.client.events import EntryPushed, MessageAckReceived, PollResponseReceived
from relay.protocol.codec import Message
from relay.protocol.constants import MAX_ACK_ENTRIES, AckStatus
from relay.testing import RelayProcess
from tests.e2e.phone import UdpPhone
from tests.security_figures import record

pytestmark = pytest.mark.e2e

LONG = os.environ.get("YAOK_LONG_TESTS") == "1"
CYCLES = int(os.environ.get("YAOK_CRASH_CYCLES", "200" if LONG else "20"))
SEED = int(os.environ.get("YAOK_CRASH_SEED", str(time.time_ns() % 1_000_000)))
# The kill comes this long after traffic starts, uniformly at random.
KILL_AFTER_S = (0.05, 0.6)
MAX_IN_FLIGHT = 24
REPEAT_SHARE = 0.2
POLL_EVERY_S = 0.05


def payload_of(message_id: str) -> bytes:
    """Return the payload a message id is always sent with, to catch mixed-up rows."""
    return hashlib.sha256(message_id.encode()).digest() * 3


@dataclass
class Ledger:
    """What the phones were told, against which every delivery is checked."""

    queued: set[str] = field(default_factory=set)
    confirmed_in_cycle: dict[str, int] = field(default_factory=dict)
    delivered: set[str] = field(default_factory=set)
    sent: int = 0
    repeats: int = 0
    mailbox_full: int = 0
    violations: list[str] = field(default_factory=list)

    def on_ack(self, event: MessageAckReceived, cycle: int, resent: bool) -> None:
        """Note a MESSAGE_ACK; resent: it answers a repeat of a message DELIVERED."""
        message_id = event.message_id
        if event.status == AckStatus.QUEUED:
            if resent:
                self.violations.append(f"{message_id} answered QUEUED after DELIVERED")
            self.queued.add(message_id)
        elif event.status == AckStatus.DELIVERED:
            self.confirmed_in_cycle.setdefault(message_id, cycle)
        elif event.status == AckStatus.MAILBOX_FULL:
            # Kills that land before Bob's ACKs commit, several cycles in a
            # row, leave 100 messages waiting: the per-sender quota. Alice
            # was told to retry later, so nothing was promised.
            self.mailbox_full += 1
        else:
            self.violations.append(f"{message_id} answered {event.status.name}")

    def on_delivery(self, entry, sender_id: str, cycle: int) -> None:
        message_id = entry.message_id
        if entry.payload != payload_of(message_id) or entry.sender_id != sender_id:
            self.violations.append(f"{message_id} arrived altered")
        confirmed = self.confirmed_in_cycle.get(message_id)
        if confirmed is not None and confirmed < cycle:
            self.violations.append(
                f"{message_id} came back in cycle {cycle}, DELIVERED in {confirmed}"
            )
        self.delivered.add(message_id)


class Traffic:
    """Alice and Bob on one selector, until the relay is killed.

    Alice repeats only messages she has not sent yet in this cycle, so
    that every answer about a repeated message answers that repeat. A
    repeat of a message DELIVERED in an earlier cycle must get DELIVERED.
    """

    def __init__(
        self, relay: RelayProcess, alice, bob, ledger: Ledger, rng: random.Random
    ):
        self.relay, self.alice, self.bob = relay, alice, bob
        self.ledger, self.rng = ledger, rng
        self.in_flight: set[str] = set()
        self.sent: set[str] = set()
        self.resent_after_receipt: set[str] = set()

    def run_until_kill(self, cycle: int, kill_after_s: float) -> None:
        started = time.monotonic()
        last_poll = 0.0
        with selectors.DefaultSelector() as selector:
            for phone in (self.alice, self.bob):
                phone.socket.setblocking(False)
                selector.register(phone.socket, selectors.EVENT_READ, phone)
            while (now := time.monotonic()) - started < kill_after_s:
                self._send_more(cycle)
                if now - last_poll > POLL_EVERY_S:
                    self.bob.send(self.bob.session.poll(60_000))
                    last_poll = now
                for key, _ in selector.select(0.005):
                    self._handle(key.data, cycle)
            self.relay.kill()
            # Whatever arrived before the kill was really sent by the relay.
            for phone in (self.alice, self.bob):
                self._handle(phone, cycle)

    def _send_more(self, cycle: int) -> None:
        while len(self.in_flight) < MAX_IN_FLIGHT:
            old = sorted(self.ledger.queued - self.sent)
            if old and self.rng.random() < REPEAT_SHARE:
                message_id = self.rng.choice(old)
                self.ledger.repeats += 1
                if message_id in self.ledger.confirmed_in_cycle:
                    self.resent_after_receipt.add(message_id)
            else:
                message_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            message = Message(message_id, self.bob.user_id, 0, payload_of(message_id))
            self.alice.send(self.alice.session.message(message))
            self.in_flight.add(message_id)
            self.sent.add(message_id)
            self.ledger.sent += 1

    def _handle(self, phone, cycle: int) -> None:
        for event in phone.waiting_events():
            if phone is self.alice and isinstance(event, MessageAckReceived):
                resent = event.message_id in self.resent_after_receipt
                self.ledger.on_ack(event, cycle, resent)
                self.in_flight.discard(event.message_id)
            elif phone is self.bob:
                self._on_bob_event(event, cycle)

    def _on_bob_event(self, event, cycle: int) -> None:
        if isinstance(event, EntryPushed):
            entries = [event.entry]
        elif isinstance(event, PollResponseReceived):
            entries = event.response.entries
        else:
            return
        for entry in entries:
            self.ledger.on_delivery(entry, self.alice.user_id, cycle)
        acknowledge(self.bob, entries)


def acknowledge(phone, entries) -> None:
    for start in range(0, len(entries), MAX_ACK_ENTRIES):
        chunk = entries[start : start + MAX_ACK_ENTRIES]
        phone.send(phone.session.ack([(e.sender_id, e.message_id) for e in chunk]))


def integrity_check(database, scratch) -> str:
    """Run PRAGMA integrity_check with the sqlite3 tool on a copy of the files."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for suffix in ("", "-wal", "-shm"):
        source = database.with_name(database.name + suffix)
        if source.exists():
            shutil.copy2(source, scratch / source.name)
    result = subprocess.run(
        ["sqlite3", str(scratch / database.name), "PRAGMA integrity_check;"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (result.stdout + result.stderr).strip()


def connect(relay: RelayProcess, phone) -> None:
    """Point a phone at the restarted relay and register it again."""
    phone.relay_address = relay.udp_address
    phone.socket.settimeout(2.0)
    phone.register()


def drain(bob, alice_id: str, ledger: Ledger, cycle: int) -> None:
    """Poll and acknowledge until Bob's mailbox is empty."""
    for _ in range(1000):
        bob.send(bob.session.poll(60_000))
        while not isinstance(event := bob.receive(), PollResponseReceived):
            assert event is not None, "no POLL_RESPONSE"
            if isinstance(event, EntryPushed):
                ledger.on_delivery(event.entry, alice_id, cycle)
        entries = event.response.entries
        if not entries:
            return
        for entry in entries:
            ledger.on_delivery(entry, alice_id, cycle)
        acknowledge(bob, entries)
    raise AssertionError("the mailbox never emptied")


def test_sigkill_cycles_lose_nothing(tmp_path):
    rng = random.Random(SEED)
    relay = RelayProcess(
        tmp_path / "relay",
        RATE_MESSAGE_PER_USER=10_000_000,
        RATE_POLL_PER_USER=10_000_000,
        RATE_ACK_PER_USER=10_000_000,
        RATE_REGISTER_PER_IP=1_000_000,
    )
    alice = UdpPhone(("127.0.0.1", 9), b"\x09" * 32)
    bob = UdpPhone(("127.0.0.1", 9), b"\x09" * 32)
    ledger = Ledger()
    checks = []
    kill_moments = []
    started = time.monotonic()
    try:
        for cycle in range(CYCLES):
            relay.start()
            for phone in (alice, bob):
                phone.session = type(phone.session)(
                    phone.identity, relay.relay_public_key
                )
                connect(relay, phone)
            kill_after = rng.uniform(*KILL_AFTER_S)
            kill_moments.append(round(kill_after, 3))
            Traffic(relay, alice, bob, ledger, rng).run_until_kill(cycle, kill_after)
            verdict = integrity_check(relay.database, tmp_path / "copy")
            checks.append(verdict)
            assert verdict == "ok", f"cycle {cycle}: integrity_check said {verdict!r}"
            assert not ledger.violations, (SEED, cycle, ledger.violations[:5])

        # A last start without a kill: Bob fetches everything that is left.
        relay.start()
        for phone in (alice, bob):
            phone.session = type(phone.session)(phone.identity, relay.relay_public_key)
            connect(relay, phone)
        drain(bob, alice.user_id, ledger, CYCLES)
        relay.stop()
    finally:
        relay.kill()
        alice.close()
        bob.close()

    lost = ledger.queued - ledger.delivered
    assert not ledger.violations, ledger.violations[:5]
    assert not lost, f"{len(lost)} messages acknowledged QUEUED were lost"
    assert len(ledger.queued) > 0
    assert checks == ["ok"] * CYCLES
    record(
        "crash",
        {
            "kill_cycles": CYCLES,
            "seed": SEED,
            "seconds": round(time.monotonic() - started, 1),
            "kill_after_s_range": list(KILL_AFTER_S),
            "kill_moments_s": kill_moments,
            "messages_sent": ledger.sent,
            "repeats_sent": ledger.repeats,
            "answered_mailbox_full": ledger.mailbox_full,
            "acknowledged_queued": len(ledger.queued),
            "confirmed_delivered": len(ledger.confirmed_in_cycle),
            "delivered_to_recipient": len(ledger.delivered),
            "messages_lost": len(lost),
            "came_back_after_delivered": 0,
            "integrity_checks_ok": checks.count("ok"),
        },
    )
