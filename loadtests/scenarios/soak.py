"""Soak: live sessions at a steady rate for a long time, with churn and flat memory.

Phones ping every 25 s and send messages at the planned daily volume,
spread evenly with a spike of ten times the rate for 5 s every minute.
Every second some phones churn: one unregisters and registers again, one
drops out silently (its session times out at the relay) and returns later
from a new port, one roams. The figure is the relay's RSS over the run:
flat means the last tenth of the run is no higher than the middle of it,
beyond noise.
"""

import asyncio
import gc
import random
import statistics
import time

from loadtests.context import Context, make_identities
from loadtests.fleet import Fleet, Phone
from loadtests.scenarios.steady import Pinger
from loadtests.target import seed_users
from loadtests.timeline import percentile_ms
from loadtests.traffic import drain, payload_of, settle_answers

REGISTER_TIMEOUT_S = 120.0
GENERATOR_GC_INTERVAL_S = 60.0
SPIKE_EVERY_S = 60.0
SPIKE_S = 5.0
SPIKE_FACTOR = 10.0
RETURN_AFTER_S = 3.0
# RSS may wobble by this much without counting as growth.
FLAT_TOLERANCE_BYTES = 2 * 2**20
FLAT_TOLERANCE_FRACTION = 0.02


async def run(context: Context) -> dict:
    options = context.options
    timeline = context.new_timeline()
    identities = make_identities(options.soak_phones)
    database = context.relay_directory("soak") / "yaok_relay.db"
    seed_users(database, identities, time.time_ns() // 1_000_000)
    relay = context.start_relay(
        "soak",
        MAX_CONNECTIONS=max(10_000, options.soak_phones),
        SESSION_TIMEOUT_S=options.soak_session_timeout_s,
    )
    fleet = Fleet(relay.udp_address, relay.relay_public_key, timeline)
    phones = fleet.make_phones(identities)
    await fleet.connect(phones)
    payload = payload_of(options.payload_bytes)
    churn = {"unregistered": 0, "dropped": 0, "returned": 0, "roamed": 0}
    pinger = Pinger(
        phones, min(options.ping_interval_s, options.soak_session_timeout_s / 3)
    )
    try:
        with context.progress("soak: registering", len(phones), "phone") as bar:
            waiting = await fleet.register(
                phones, REGISTER_TIMEOUT_S, progress=bar.update
            )
        if waiting:
            raise RuntimeError(f"{len(waiting)} phones did not register")
        started_at = timeline.mark("soak")
        deadline = time.perf_counter() + options.soak_duration_s
        tasks = [
            asyncio.create_task(pinger.run(deadline)),
            asyncio.create_task(
                _churn(fleet, phones, churn, options.soak_churn_per_s, deadline)
            ),
        ]
        rate = options.soak_messages_per_day / 86_400
        with context.progress("soak", round(options.soak_duration_s), "s") as bar:
            sent = await _messages(context, fleet, phones, payload, rate, deadline, bar)
        await asyncio.gather(*tasks)
        await settle_answers(fleet, 10.0)
        ended_at = timeline.now()
        await fleet.connect([p for p in phones if p.transport is None])
        with context.progress("soak: everyone drains", None, "msg") as bar:
            await drain(fleet, phones, 300.0, bar.update)
        memory = _memory(context, started_at, ended_at)
        latencies = timeline.samples("message_to_queued", started_at, ended_at)
        return {
            "phones": len(phones),
            "duration_s": options.soak_duration_s,
            "messages_sent": sent,
            "queued_latency_p95_ms": percentile_ms(latencies, 0.95),
            "queued_latency_p99_ms": percentile_ms(latencies, 0.99),
            "churn": churn,
            "memory": memory,
            "relay_cpu_percent": context.relay_cpu_percent(started_at, ended_at),
            **fleet.outcome(),
        }
    finally:
        pinger.stopped = True
        fleet.close()


async def _messages(context, fleet, phones, payload, rate, deadline, bar) -> int:
    """Send at `rate` a second, ten times that during the spike of every minute."""
    started = time.perf_counter()
    owed, sent = 0.0, 0
    last = collected = started
    while (now := time.perf_counter()) < deadline:
        if now - collected > GENERATOR_GC_INTERVAL_S:
            gc.collect()  # the suite turns automatic collection off
            collected = now
        in_spike = (now - started) % SPIKE_EVERY_S < SPIKE_S
        owed += (now - last) * rate * (SPIKE_FACTOR if in_spike else 1.0)
        last = now
        while owed >= 1:
            owed -= 1
            sender = random.choice(phones)
            if sender.established:
                fleet.send_message(sender, random.choice(phones).user_id, payload)
                sent += 1
        fleet.retransmit_unanswered(1.0, 6)
        bar.n = min(bar.total, round(now - started))
        bar.set_postfix(
            sessions=sum(1 for p in phones if p.established),
            rss_mib=round(context.relay_sampler().latest_rss() / 2**20, 1),
            refresh=True,
        )
        await asyncio.sleep(0.05)
    return sent


async def _churn(
    fleet: Fleet, phones: list[Phone], churn: dict, per_s: float, deadline: float
) -> None:
    away: list[tuple[float, Phone]] = []
    owed, last = 0.0, time.perf_counter()
    while (now := time.perf_counter()) < deadline:
        await asyncio.sleep(0.1)
        owed += (now - last) * per_s
        last = now
        while owed >= 1:
            owed -= 1
            await _churn_one(fleet, phones, churn, away, now)
        while away and now - away[0][0] > RETURN_AFTER_S:
            _, phone = away.pop(0)
            await fleet.roam_back(phone)
            churn["returned"] += 1
    for _, phone in away:
        await fleet.roam_back(phone)


async def _churn_one(fleet, phones, churn, away, now) -> None:
    phone = random.choice(phones)
    if not phone.established:
        return
    kind = random.choice(("unregister", "drop", "roam"))
    if kind == "unregister":
        phone.wants_session = False
        phone.send(phone.session.unregister())
        phone.registered_at = 0.0
        away.append((now, phone))
        churn["unregistered"] += 1
    elif kind == "drop":
        phone.close()
        phone.wants_session = False
        phone.registered_at = 0.0
        away.append((now, phone))
        churn["dropped"] += 1
    else:
        await fleet.roam(phone)
        churn["roamed"] += 1


def _memory(context: Context, start_s: float, end_s: float) -> dict:
    """Compare the relay's RSS at the end of the run with its middle.

    Flat is judged on anonymous memory, the heap, where a leak would show.
    File-backed memory grows with the database the relay maps, which keeps
    delivered messages' dedup records for a day, and is reported apart.
    """
    samples = [s for s in context.relay_sampler().samples if start_s <= s.at_s <= end_s]
    if len(samples) < 10:
        return {"samples": len(samples), "flat": None}
    span = end_s - start_s
    middle = [s for s in samples if 0.4 * span <= s.at_s - start_s < 0.6 * span]
    last = [s for s in samples if s.at_s - start_s >= 0.9 * span]
    middle = middle or samples[len(samples) // 2 : len(samples) // 2 + 1]
    last = last or samples[-1:]
    figures = {"samples": len(samples)}
    for name, read in (
        ("rss", lambda s: s.rss_bytes),
        ("anonymous", lambda s: s.anonymous_bytes),
        ("file", lambda s: s.file_bytes),
    ):
        middle_value = statistics.median(read(s) for s in middle)
        last_value = statistics.median(read(s) for s in last)
        figures[f"{name}_start_mib"] = round(read(samples[0]) / 2**20, 2)
        figures[f"{name}_middle_mib"] = round(middle_value / 2**20, 2)
        figures[f"{name}_end_mib"] = round(last_value / 2**20, 2)
        figures[f"{name}_growth_second_half_mib"] = round(
            (last_value - middle_value) / 2**20, 2
        )
    anonymous_middle = figures["anonymous_middle_mib"] * 2**20
    tolerance = max(FLAT_TOLERANCE_BYTES, FLAT_TOLERANCE_FRACTION * anonymous_middle)
    growth = figures["anonymous_growth_second_half_mib"] * 2**20
    figures["rss_max_mib"] = round(max(s.rss_bytes for s in samples) / 2**20, 2)
    figures["growth_second_half_mib"] = figures["anonymous_growth_second_half_mib"]
    figures["tolerance_mib"] = round(tolerance / 2**20, 2)
    figures["flat"] = growth <= tolerance
    return figures
