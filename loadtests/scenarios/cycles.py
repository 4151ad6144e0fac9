"""Full message cycles between online phones: MESSAGE, QUEUED, push, ACK, DELIVERED.

Each sender keeps a window of messages to its own recipient and sends the
next one when a DELIVERED receipt ends a cycle. Recipients acknowledge each
push at once. At the end every recipient polls, so that a push lost on the
way still arrives, and the ledger must show every QUEUED message delivered.
"""

import time

from loadtests.context import Context, make_identities, show_elapsed
from loadtests.fleet import Fleet
from loadtests.timeline import percentile_ms
from loadtests.traffic import ClosedLoop, drain, payload_of, settle_answers
from relay.protocol.constants import AckStatus

REGISTER_TIMEOUT_S = 30.0
WARMUP_S = 1.0


async def run(context: Context) -> dict:
    options = context.options
    timeline = context.new_timeline()
    relay = context.start_relay("cycles")
    fleet = Fleet(relay.udp_address, relay.relay_public_key, timeline)
    senders = fleet.make_phones(make_identities(options.cycle_pairs))
    recipients = fleet.make_phones(make_identities(options.cycle_pairs))
    partner = {s.user_id: r.user_id for s, r in zip(senders, recipients, strict=True)}
    for phone in senders:
        phone.drains = False
    await fleet.connect(senders + recipients)
    try:
        waiting = await fleet.register(senders + recipients, REGISTER_TIMEOUT_S)
        if waiting:
            raise RuntimeError(f"{len(waiting)} phones did not register")
        loop = ClosedLoop(
            fleet,
            senders,
            lambda sender: partner[sender.user_id],
            payload_of(options.payload_bytes),
            options.cycle_window,
            AckStatus.DELIVERED,
            limit=10**9,
        )
        started_at = timeline.mark("cycles")
        duration = WARMUP_S + options.cycle_duration_s
        with context.progress("cycles", round(duration, 1), "s") as bar:
            began = time.perf_counter()

            def progress() -> None:
                show_elapsed(bar, began)
                bar.set_postfix(cycles=loop.completed)

            await loop.run(began + duration, progress)
        ended_at = timeline.now()
        measured_from = started_at + WARMUP_S
        cycles = timeline.total("receipt", measured_from, ended_at)
        seconds = ended_at - measured_from
        await settle_answers(fleet, 5.0)
        with context.progress("cycles: final poll", None, "msg") as bar:
            await drain(fleet, recipients, 60.0, bar.update)
        latencies = timeline.samples("message_to_delivered", measured_from, ended_at)
        return {
            "pairs": options.cycle_pairs,
            "window": options.cycle_window,
            "cycles_per_s": round(cycles / seconds, 1) if seconds > 0 else 0.0,
            "cycles": cycles,
            "measured_s": round(seconds, 2),
            "stalled_slots": loop.stalled,
            "push_latency_p50_ms": percentile_ms(latencies, 0.5),
            "push_latency_p99_ms": percentile_ms(latencies, 0.99),
            "relay_cpu_percent": context.relay_cpu_percent(measured_from, ended_at),
            "generator_cpu_percent": context.generator_cpu_percent(
                measured_from, ended_at
            ),
            **fleet.outcome(),
        }
    finally:
        fleet.close()
