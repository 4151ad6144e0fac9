"""Floods against the real relay while real clients keep sending and receiving.

Phase one measures the legitimate traffic alone: pairs of phones, each
sender with one message in flight, pushed to its recipient, which
acknowledges it. Two more phases repeat that during a flood from two more
processes. One sends unauthenticated REGISTERs, forged cookies, guessed
session ids and garbage from tens of thousands of loopback source
addresses, at 20,000 datagrams a second in the first flood phase and as
fast as it can in the second. The other completes real registrations of
fresh user ids from fresh addresses until the session table is full. Throughout, a
sampler reads the relay's table sizes from /metrics and its memory from
/proc. Every message acknowledged QUEUED must reach its recipient in the
end. YAOK_LONG_TESTS=1 floods for 30 s instead of 5.
"""

import json
import os
import selectors
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest

from relay.client.events import EntryPushed, MessageAckReceived, PollResponseReceived
from relay.protocol.constants import AckStatus
from tests.adversarial.tools import metric, peak_memory_kib, scrape, table_sizes
from tests.e2e.phone import UdpPhone
from tests.security_figures import record

pytestmark = pytest.mark.e2e

LONG = os.environ.get("YAOK_LONG_TESTS") == "1"
BASELINE_S = 10 if LONG else 3
FLOOD_S = 30 if LONG else 5
PAIRS = 4
# A message not pushed within this time counts as late, and the pair sends
# its next one, as a phone retransmitting would. The late one stays in the
# mailbox and is fetched at the end.
LATE_S = 0.5
SAMPLE_EVERY_S = 0.25
MAX_CONNECTIONS = 100
MAX_TRACKED_ADDRESSES = 1_000
# Flood rates in datagrams a second: one the relay can absorb on this
# machine, then as fast as the flooding process can send (0).
FLOOD_RATES = {"flood_20k_per_second": 20_000, "flood_max_rate": 0}


@dataclass
class Phase:
    seconds: float = 0.0
    sent: int = 0
    late: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        latencies = sorted(self.latencies_ms)
        return {
            "seconds": round(self.seconds, 2),
            "messages_sent": self.sent,
            "delivered_in_time": len(latencies),
            "late": self.late,
            "delivered_per_second": round(len(latencies) / self.seconds, 1),
            "latency_p50_ms": round(statistics.median(latencies), 2)
            if latencies
            else None,
            "latency_p99_ms": round(percentile(latencies, 0.99), 2)
            if latencies
            else None,
        }


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class LegitTraffic:
    """Pairs of phones, each sender keeping one message in flight to its recipient."""

    def __init__(self, relay) -> None:
        self.pairs = []
        for _ in range(PAIRS):
            sender = UdpPhone(relay.udp_address, relay.relay_public_key)
            recipient = UdpPhone(relay.udp_address, relay.relay_public_key)
            sender.register()
            recipient.register()
            self.pairs.append((sender, recipient))
        self.queued: set[str] = set()
        self.delivered: set[str] = set()

    def run(self, seconds: float) -> Phase:
        phase = Phase()
        in_flight: dict[int, tuple[str, float]] = {}
        started = time.monotonic()
        with selectors.DefaultSelector() as selector:
            for index, (sender, recipient) in enumerate(self.pairs):
                for role, phone in (("sender", sender), ("recipient", recipient)):
                    phone.socket.setblocking(False)
                    selector.register(phone.socket, selectors.EVENT_READ, (index, role))
            while (now := time.monotonic()) < started + seconds:
                self._send_due(phase, in_flight, now)
                for key, _ in selector.select(0.02):
                    self._handle(key.data, phase, in_flight)
        phase.seconds = time.monotonic() - started
        return phase

    def _send_due(self, phase: Phase, in_flight: dict, now: float) -> None:
        for index, (sender, recipient) in enumerate(self.pairs):
            if index in in_flight and now - in_flight[index][1] < LATE_S:
                continue
            if index in in_flight:
                phase.late += 1
            message_id = str(uuid.uuid4())
            sender.send(
                sender.message(recipient, b"sealed" * 20, message_id=message_id)
            )
            in_flight[index] = (message_id, now)
            phase.sent += 1

    def _handle(self, key: tuple[int, str], phase: Phase, in_flight: dict) -> None:
        index, role = key
        sender, recipient = self.pairs[index]
        phone = sender if role == "sender" else recipient
        for event in phone.waiting_events():
            if (
                isinstance(event, MessageAckReceived)
                and event.status == AckStatus.QUEUED
            ):
                self.queued.add(event.message_id)
            elif isinstance(event, EntryPushed):
                entry = event.entry
                self.delivered.add(entry.message_id)
                recipient.send(
                    recipient.session.ack([(entry.sender_id, entry.message_id)])
                )
                waiting = in_flight.get(index)
                if waiting and waiting[0] == entry.message_id:
                    phase.latencies_ms.append((time.monotonic() - waiting[1]) * 1000)
                    del in_flight[index]

    def fetch_the_rest(self) -> None:
        """Poll each mailbox empty and acknowledge all, as a phone coming back does."""
        for _, recipient in self.pairs:
            recipient.socket.settimeout(2.0)
            for _ in range(100):
                recipient.send(recipient.session.poll(60_000))
                response = _next_poll_response(recipient)
                entries = response.entries
                if not entries:
                    break
                for entry in entries:
                    self.delivered.add(entry.message_id)
                for start in range(0, len(entries), 15):
                    chunk = entries[start : start + 15]
                    keys = [(entry.sender_id, entry.message_id) for entry in chunk]
                    recipient.send(recipient.session.ack(keys))

    def close(self) -> None:
        for pair in self.pairs:
            for phone in pair:
                phone.close()


def _next_poll_response(phone: UdpPhone):
    while True:
        event = phone.receive()
        assert event is not None, "no POLL_RESPONSE"
        if isinstance(event, PollResponseReceived):
            return event.response


class Sampler(threading.Thread):
    """Reads table sizes and resident memory of the relay until stopped."""

    def __init__(self, relay) -> None:
        super().__init__(daemon=True)
        self.relay = relay
        self.stop = threading.Event()
        self.max_entries: dict[str, float] = {}
        self.capacity: dict[str, float] = {}
        self.over_cap: list[tuple[str, float, float]] = []
        self.samples = 0
        self.max_rss_kib = 0

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY_S):
            try:
                sizes = table_sizes(self.relay)
            except OSError:
                continue  # the ops API is busy under the flood; sample again
            self.samples += 1
            for table, (entries, cap) in sizes.items():
                self.max_entries[table] = max(self.max_entries.get(table, 0), entries)
                self.capacity[table] = cap
                if entries > cap:
                    self.over_cap.append((table, entries, cap))
            self.max_rss_kib = max(self.max_rss_kib, _rss_kib(self.relay.pid))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_flooders(relay, seconds: float, rate: int) -> list[subprocess.Popen]:
    base = [
        sys.executable,
        "-m",
        "tests.adversarial.flooder",
        "127.0.0.1",
        str(relay.udp_port),
        relay.relay_public_key.hex(),
        "--seconds",
        str(seconds),
    ]
    return [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        for command in ([*base, "--rate", str(rate)], [*base, "--sybil"])
    ]


def flood_phase(relay, legit: LegitTraffic, rate: int) -> dict:
    """Run the legitimate traffic during a flood at rate datagrams a second (0: max)."""
    requests_before = sum_requests(relay)
    flooders = start_flooders(relay, FLOOD_S, rate)
    phase = legit.run(FLOOD_S)
    flood_report, sybil_report = [
        json.loads(flooder.communicate(timeout=FLOOD_S + 60)[0]) for flooder in flooders
    ]
    assert flood_report["datagrams"] > 0
    return {
        "legitimate": phase.summary(),
        "flooder": {
            **flood_report,
            "datagrams_per_second": round(flood_report["datagrams"] / FLOOD_S),
        },
        "sybil_registrations": sybil_report,
        "relay_datagrams_handled": sum_requests(relay) - requests_before,
        "delivered": bool(phase.latencies_ms),
    }


def test_legitimate_traffic_survives_flood(relay_factory):
    relay = relay_factory(
        MAX_CONNECTIONS=MAX_CONNECTIONS,
        MAX_TRACKED_ADDRESSES=MAX_TRACKED_ADDRESSES,
        RATE_MESSAGE_PER_USER=1_000_000,
        RATE_ACK_PER_USER=1_000_000,
        RATE_POLL_PER_USER=1_000_000,
    )
    legit = LegitTraffic(relay)
    sampler = Sampler(relay)
    sampler.start()
    phases = {}
    try:
        baseline = legit.run(BASELINE_S).summary()
        memory_before_kib = peak_memory_kib(relay.pid)
        for name, rate in FLOOD_RATES.items():
            phases[name] = flood_phase(relay, legit, rate)
        legit.fetch_the_rest()
    finally:
        sampler.stop.set()
        sampler.join(5)
        legit.close()
    peak_kib = peak_memory_kib(relay.pid)
    status, _ = relay.health()

    lost = legit.queued - legit.delivered
    assert status in (200, 503), status
    assert not lost, f"{len(lost)} messages acknowledged QUEUED never arrived"
    assert sampler.samples > 0
    assert set(sampler.capacity) >= {"sessions", "cookie_ledger", "reply_limiter"}
    assert not sampler.over_cap, sampler.over_cap
    for name, phase in phases.items():
        assert phase["delivered"], f"no legitimate message was delivered in {name}"
        during = phase["legitimate"]
        phase["delivery_rate_ratio"] = round(
            during["delivered_per_second"] / baseline["delivered_per_second"], 3
        )
        phase["latency_p99_ratio"] = round(
            during["latency_p99_ms"] / baseline["latency_p99_ms"], 2
        )
    record(
        "flood",
        {
            "long_mode": LONG,
            "baseline": baseline,
            "phases": phases,
            "queued_messages": len(legit.queued),
            "queued_messages_lost": len(lost),
            "peak_memory_kib_before_flood": memory_before_kib,
            "peak_memory_kib": peak_kib,
            "max_rss_kib_sampled": sampler.max_rss_kib,
            "table_max_entries": sampler.max_entries,
            "table_capacity": sampler.capacity,
            "table_samples": sampler.samples,
        },
    )


def sum_requests(relay) -> float:
    samples = scrape(relay)
    handled = sum(
        value for (name, _), value in samples.items() if name == "relay_requests_total"
    )
    return handled + metric(samples, "relay_ddos_attempts_total")
