"""Steady state: sessions that ping every 25 s, added in steps, and the relay's RSS.

After each step the sessions keep pinging for the settle time, longer than
a cookie's 30 s life in the relay's replay ledger, so that the RSS read at
the end of the step holds live sessions and not handshakes in flight. The
slope of RSS against sessions is the memory each additional session costs.
"""

import asyncio
import statistics
import time

from loadtests.context import Context, make_identities
from loadtests.fleet import Fleet, Phone
from loadtests.target import seed_users

REGISTER_TIMEOUT_S = 60.0


class Pinger:
    """Pings every established phone once per interval, spread evenly over it."""

    def __init__(self, phones: list[Phone], interval_s: float) -> None:
        self.phones = phones
        self.interval_s = interval_s
        self.position = 0.0
        self.sent = 0
        self.stopped = False

    async def run(self, until: float) -> None:
        step_s = 0.05
        while not self.stopped and time.perf_counter() < until:
            self.position += len(self.phones) * step_s / self.interval_s
            while self.position >= 1 and self.phones:
                self.position -= 1
                phone = self.phones[self.sent % len(self.phones)]
                self.sent += 1
                if phone.established:
                    phone.send(phone.session.ping())
            await asyncio.sleep(step_s)


def slope_bytes_per_session(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS bytes against live sessions."""
    if len(points) < 2:
        return float("nan")
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    denominator = sum((x - mean_x) ** 2 for x in xs)
    return numerator / denominator if denominator else float("nan")


async def run(context: Context) -> dict:
    options = context.options
    timeline = context.new_timeline()
    steps = sorted(options.steady_steps)
    identities = make_identities(steps[-1])
    database = context.relay_directory("steady") / "yaok_relay.db"
    seed_users(database, identities, time.time_ns() // 1_000_000)
    relay = context.start_relay("steady", MAX_CONNECTIONS=max(steps[-1], 10_000))
    sampler = context.relay_sampler()
    fleet = Fleet(relay.udp_address, relay.relay_public_key, timeline)
    live: list[Phone] = []
    pinger = Pinger(live, options.ping_interval_s)
    pinging = asyncio.create_task(pinger.run(time.perf_counter() + 24 * 3600))
    idle_rss = sampler.latest_rss()
    points: list[dict] = []
    try:
        with context.progress("steady: sessions", steps[-1], "session") as bar:
            for step in steps:
                new = fleet.make_phones(identities[len(live) : step])
                await fleet.connect(new)
                waiting = await fleet.register(
                    new, REGISTER_TIMEOUT_S, progress=bar.update
                )
                live.extend(p for p in new if p.established)
                timeline.mark(f"{step} sessions")
                await asyncio.sleep(options.steady_settle_s)
                _, health = relay.health()
                rss = _settled_rss(sampler)
                points.append(
                    {
                        "sessions": len(live),
                        "active_connections": health.get("active_connections"),
                        "rss_bytes": rss,
                        "rss_mib": round(rss / 2**20, 2),
                        "not_registered": len(waiting),
                    }
                )
                bar.set_postfix(rss_mib=round(rss / 2**20, 1))
    finally:
        pinger.stopped = True
        await pinging
        fleet.close()
    return _figures(points, idle_rss, pinger.sent, timeline.total("pong"))


def _settled_rss(sampler) -> int:
    """Median RSS of the last second of samples, so one spike does not count."""
    recent = [s.rss_bytes for s in sampler.samples[-4:]]
    return int(statistics.median(recent)) if recent else sampler.latest_rss()


def _figures(points: list[dict], idle_rss: int, pings: int, pongs: int) -> dict:
    by_sessions = {p["sessions"]: p["rss_bytes"] for p in points}
    in_range = [
        (p["sessions"], p["rss_bytes"])
        for p in points
        if 1_000 <= p["sessions"] <= 10_000
    ]
    if len(in_range) < 2:
        in_range = [(p["sessions"], p["rss_bytes"]) for p in points]
    return {
        "idle_rss_mib": round(idle_rss / 2**20, 2),
        "points": points,
        "rss_at_10000_mib": _mib(by_sessions.get(10_000)),
        "rss_at_15000_mib": _mib(by_sessions.get(15_000)),
        "slope_bytes_per_session": round(slope_bytes_per_session(in_range), 1),
        "slope_range": [in_range[0][0], in_range[-1][0]] if in_range else None,
        "pings": pings,
        "pongs": pongs,
    }


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 2)
