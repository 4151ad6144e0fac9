"""Closed-loop datagram driver: precomputed datagrams, a fixed window per socket.

Each lane owns one connected socket and a list of datagrams sealed before
the measurement starts, so the generator spends no crypto while it runs.
A lane keeps `window` datagrams in flight: every reply sends the next one.
A lane that hears nothing for a while counts its window as lost and sends a
fresh window, so drops in a full socket buffer do not stall the run.

The same lanes drive the relay (sealed PINGs, PONG replies) and the uvloop
echo server (the same PINGs, echoed), so both figures come from one
generator configuration.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from loadtests.fleet import Endpoint
from loadtests.timeline import Timeline

STALL_S = 0.3
CHECK_INTERVAL_S = 0.1


class Lane:
    __slots__ = (
        "cycle",
        "datagrams",
        "endpoint",
        "lost",
        "next",
        "replies",
        "seen_replies",
        "sent",
        "verify",
        "verify_every",
        "window",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        datagrams: list[bytes],
        window: int,
        verify: Callable[[bytes], bool] | None = None,
        verify_every: int = 64,
        cycle: bool = False,
    ) -> None:
        """Describe a lane; with cycle the datagrams are sent round and round.

        Only a target that ignores counters (the echo server) may get the
        same datagram twice; the relay would drop it as replayed.
        """
        self.endpoint = endpoint
        self.cycle = cycle
        self.datagrams = datagrams
        self.window = window
        self.next = 0
        self.sent = 0
        self.replies = 0
        self.seen_replies = 0
        self.lost = 0
        self.verify = verify
        self.verify_every = verify_every
        endpoint.handler = self.on_reply

    def on_reply(self, data: bytes) -> None:
        self.replies += 1
        verify = self.verify
        if verify is not None and self.replies % self.verify_every == 0:
            verify(data)
        self._send_next()

    def send_window(self) -> None:
        for _ in range(self.window):
            if not self._send_next():
                return

    def _send_next(self) -> bool:
        """Send the next datagram; return False when the lane has none left."""
        index = self.next
        if index >= len(self.datagrams):
            if not self.cycle or not self.datagrams:
                return False
            index = 0
        self.next = index + 1
        self.sent += 1
        self.endpoint.transport.sendto(self.datagrams[index])  # type: ignore[union-attr]
        return True

    def check_stalled(self) -> None:
        """Count the window as lost when nothing came back since the last check."""
        in_flight = self.sent - self.replies - self.lost
        if self.replies == self.seen_replies and in_flight > 0:
            self.lost += in_flight
            self.send_window()
        self.seen_replies = self.replies


@dataclass
class BlastResult:
    rate: float  # replies per second over the measured window
    replies: int
    sent: int
    lost: int
    measured_s: float
    measured_from_s: float  # on the timeline
    exhausted: bool  # a lane ran out of precomputed datagrams

    def as_dict(self) -> dict:
        return {
            "rate_per_s": round(self.rate, 1),
            "replies": self.replies,
            "sent": self.sent,
            "lost": self.lost,
            "measured_s": round(self.measured_s, 3),
            "exhausted": self.exhausted,
        }


async def blast(
    lanes: list[Lane],
    timeline: Timeline,
    counter: str,
    warmup_s: float,
    duration_s: float,
    tick: Callable[[float], None] | None = None,
    spin: bool = False,
) -> BlastResult:
    """Run the lanes for warmup_s plus duration_s; measure over duration_s.

    With spin, the generator's loop never sleeps in the kernel, so a reply
    costs the server an enqueue and no wake-up of an idle generator.
    """
    for lane in lanes:
        lane.send_window()
    spinning = asyncio.create_task(_spin()) if spin else None
    started = time.perf_counter()
    last_total, last_at = 0, started
    measured_from = None
    base_replies = 0
    stall_check = started
    while True:
        await asyncio.sleep(CHECK_INTERVAL_S)
        now = time.perf_counter()
        total = sum(lane.replies for lane in lanes)
        timeline.count(counter, total - last_total)
        if tick is not None:
            tick((total - last_total) / max(now - last_at, 1e-9))
        last_total, last_at = total, now
        if measured_from is None and now - started >= warmup_s:
            measured_from, base_replies = now, total
        if now - stall_check >= STALL_S:
            for lane in lanes:
                lane.check_stalled()
            stall_check = now
        exhausted = all(
            not lane.cycle and lane.next >= len(lane.datagrams) for lane in lanes
        )
        if exhausted and measured_from is None:
            measured_from, base_replies = started, 0
        if measured_from is not None and (
            now - measured_from >= duration_s or exhausted
        ):
            break
    if spinning is not None:
        spinning.cancel()
    measured_s = now - measured_from
    replies = total - base_replies
    for lane in lanes:
        lane.datagrams = []  # stop sending; late replies are ignored
        lane.cycle = False
    return BlastResult(
        rate=replies / measured_s if measured_s > 0 else 0.0,
        replies=replies,
        sent=sum(lane.sent for lane in lanes),
        lost=sum(lane.lost for lane in lanes),
        measured_s=measured_s,
        measured_from_s=measured_from - timeline.started,
        exhausted=exhausted,
    )


async def _spin() -> None:
    while True:
        await asyncio.sleep(0)


async def offered_rate(
    endpoints: list[Endpoint], datagrams: list[list[bytes]], duration_s: float
) -> float:
    """Send precomputed datagrams as fast as the generator can; return datagrams/s.

    The endpoints point at a sink that never reads, so this is the
    generator's own ceiling: the fastest it can offer load with no replies
    to handle.
    """
    sent = 0
    started = time.perf_counter()
    deadline = started + duration_s
    rounds = 0
    while time.perf_counter() < deadline:
        for endpoint, lane in zip(endpoints, datagrams, strict=True):
            transport = endpoint.transport
            for datagram in lane[rounds * 8 : rounds * 8 + 8]:
                transport.sendto(datagram)  # type: ignore[union-attr]
                sent += 1
        rounds += 1
        if rounds * 8 >= min(len(lane) for lane in datagrams):
            rounds = 0
        await asyncio.sleep(0)
    return sent / (time.perf_counter() - started)
