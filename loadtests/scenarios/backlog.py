"""Durable sends to offline phones, the latency at half that rate, then the drain.

1. Senders keep a window of MESSAGEs to recipients that are offline, so
   every QUEUED answer is a commit: the durable send rate. The same number
   of rows, inserted raw with the relay's schema in batches of 100, is
   the SQLite ceiling, measured just before.
2. Senders send at half that rate, paced: MESSAGE to QUEUED latency.
3. The recipients come back and poll the thousands of messages waiting
   for each: the drain rate. Every QUEUED message must arrive.
"""

import random
import time

from loadtests.ceilings import sqlite_insert_rate
from loadtests.context import Context, make_identities, show_elapsed
from loadtests.fleet import Fleet
from loadtests.target import seed_users
from loadtests.timeline import percentile_ms
from loadtests.traffic import (
    ClosedLoop,
    drain,
    paced,
    payload_of,
    settle_answers,
    steady_rate,
)
from relay.protocol.constants import AckStatus

REGISTER_TIMEOUT_S = 30.0
SLOW_S = 0.02  # answers slower than this are listed by time, to find their cause
QUOTA_OFF = {
    "MAILBOX_MAX_MESSAGES": 10_000_000,
    "MAILBOX_MAX_BYTES": 2**40,
    "MAILBOX_MAX_PER_SENDER": 10_000_000,
}


async def run(context: Context) -> dict:
    options = context.options
    figures: dict = {}
    with context.progress("backlog: SQLite ceiling", None, "run") as bar:
        ceiling = sqlite_insert_rate(
            100, options.durable_messages, options.payload_bytes, context.out_dir
        )
        bar.set_postfix(rows_per_s=f"{ceiling:,.0f}")
    figures["sqlite_batch100_rows_per_s"] = round(ceiling, 1)

    timeline = context.new_timeline()
    senders_ids = make_identities(options.senders)
    recipient_ids = make_identities(options.recipients)
    database = context.relay_directory("backlog") / "yaok_relay.db"
    seed_users(database, recipient_ids, time.time_ns() // 1_000_000)
    relay = context.start_relay("backlog", **QUOTA_OFF)
    fleet = Fleet(relay.udp_address, relay.relay_public_key, timeline)
    fleet.poll_bytes = options.poll_bytes
    senders = fleet.make_phones(senders_ids)
    recipients = fleet.make_phones(recipient_ids)
    for phone in senders:
        phone.drains = False
    await fleet.connect(senders)
    payload = payload_of(options.payload_bytes)
    recipient_users = [p.user_id for p in recipients]

    def pick(_sender) -> str:
        return random.choice(recipient_users)

    try:
        waiting = await fleet.register(senders, REGISTER_TIMEOUT_S)
        if waiting:
            raise RuntimeError(f"{len(waiting)} senders did not register")
        figures["durable"] = await _durable(context, fleet, senders, pick, payload)
        durable_rate = figures["durable"]["queued_per_s"]
        figures["durable"]["ratio_to_sqlite"] = round(durable_rate / ceiling, 3)
        figures["half_rate"] = await _half_rate(
            context, fleet, senders, pick, payload, durable_rate / 2
        )
        await fleet.connect(recipients)
        figures["drain"] = await _drain(context, fleet, recipients)
        figures.update(fleet.outcome())
        return figures
    finally:
        fleet.close()


async def _durable(context, fleet, senders, pick, payload) -> dict:
    options = context.options
    loop = ClosedLoop(
        fleet,
        senders,
        pick,
        payload,
        options.send_window,
        AckStatus.QUEUED,
        options.durable_messages,
    )
    started_at = context.timeline.mark("durable")
    with context.progress(
        "backlog: durable sends", options.durable_messages, "msg"
    ) as bar:

        def progress() -> None:
            bar.update(loop.completed - bar.n)

        await loop.run(time.perf_counter() + 300, progress)
    queued_times = [f.queued_at for f in fleet.ledger.fates.values() if f.queued_at]
    rate = steady_rate(queued_times)
    ended_at = context.timeline.now()
    return {
        "messages": loop.sent,
        "queued": len(queued_times),
        "stalled_slots": loop.stalled,
        "queued_per_s": round(rate, 1),
        "in_flight": options.senders * options.send_window,
        "relay_cpu_percent": context.relay_cpu_percent(started_at, ended_at),
        "generator_cpu_percent": context.generator_cpu_percent(started_at, ended_at),
    }


async def _half_rate(context, fleet, senders, pick, payload, rate) -> dict:
    """Send at half the durable rate: a warm-up, then the measured window.

    The warm-up's latencies are reported apart. During it the relay is
    still finishing the work the full load left behind (the pages it wrote
    and the log's copy), which is a cost of the durable phase and not of a
    steady half rate.
    """
    options = context.options
    started_at = context.timeline.mark("half rate")
    warmup = options.latency_warmup_s
    duration = warmup + options.latency_duration_s
    with context.progress("backlog: half rate", round(duration, 1), "s") as bar:
        began = time.perf_counter()

        def progress() -> None:
            show_elapsed(bar, began)

        sent = await paced(fleet, senders, pick, payload, rate, duration, progress)
        await settle_answers(fleet, 10.0)
    ended_at = context.timeline.now()
    measured_from = started_at + warmup
    warmup_latencies = context.timeline.samples(
        "message_to_queued", started_at, measured_from
    )
    latencies = context.timeline.samples("message_to_queued", measured_from, ended_at)
    slow = [
        round(at_s - started_at, 3)
        for at_s, value in context.timeline.timed_samples("message_to_queued")
        if started_at <= at_s < ended_at and value > SLOW_S
    ]
    return {
        "slow_answers_at_s": slow[:: max(1, len(slow) // 200)],
        "target_rate_per_s": round(rate, 1),
        "warmup_s": warmup,
        "warmup_latency_p99_ms": percentile_ms(warmup_latencies, 0.99),
        "sent": sent,
        "answered": len(latencies),
        "latency_p50_ms": percentile_ms(latencies, 0.50),
        "latency_p95_ms": percentile_ms(latencies, 0.95),
        "latency_p99_ms": percentile_ms(latencies, 0.99),
        "latency_max_ms": percentile_ms(latencies, 1.0),
        "relay_cpu_percent": context.relay_cpu_percent(started_at, ended_at),
    }


async def _drain(context, fleet, recipients) -> dict:
    started_at = context.timeline.mark("drain")
    waiting = len(fleet.ledger.undelivered_queued())
    with context.progress("backlog: drain", waiting, "msg") as bar:
        seconds = await drain(fleet, recipients, 600.0, bar.update)
    delivered = waiting - len(fleet.ledger.undelivered_queued())
    return {
        "recipients": len(recipients),
        "waiting": waiting,
        "delivered": delivered,
        "seconds": round(seconds, 2),
        "delivered_per_s": round(delivered / seconds, 1) if seconds else 0.0,
        "poll_bytes": fleet.poll_bytes,
        "relay_cpu_percent": context.relay_cpu_percent(
            started_at, context.timeline.now()
        ),
    }
