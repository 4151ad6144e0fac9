"""Messaging mix: online and offline recipients in a set ratio, bursty senders.

Online phones ping every 25 s, get their messages pushed and acknowledge
them; offline recipients are registered users whose phones are off. While
messages flow, some online phones roam to a new source port (the relay
challenges the new path) and some drop out without a word, to come back
later from a new port. At the end every phone comes online and drains its
mailbox: each QUEUED message must have arrived.
"""

import asyncio
import random
import time

from loadtests.context import Context, make_identities, show_elapsed
from loadtests.fleet import Fleet, Phone
from loadtests.scenarios.steady import Pinger
from loadtests.target import seed_users
from loadtests.timeline import percentile_ms
from loadtests.traffic import drain, paced, payload_of, settle_answers

REGISTER_TIMEOUT_S = 60.0
BURST = 5
EVENTS_PER_S = 2.0  # roams and drop-outs a second, each


async def run(context: Context) -> dict:
    options = context.options
    timeline = context.new_timeline()
    identities = make_identities(options.mix_phones)
    online_count = int(options.mix_phones * options.mix_online_fraction)
    database = context.relay_directory("mix") / "yaok_relay.db"
    seed_users(database, identities, time.time_ns() // 1_000_000)
    relay = context.start_relay("mix")
    fleet = Fleet(relay.udp_address, relay.relay_public_key, timeline)
    phones = fleet.make_phones(identities)
    online = phones[:online_count]
    await fleet.connect(online)
    users = [p.user_id for p in phones]
    payload = payload_of(options.payload_bytes)
    pinger = Pinger(online, options.ping_interval_s)
    dropped: list[Phone] = []
    churn = {"roamed": 0, "dropped": 0, "returned": 0}
    try:
        waiting = await fleet.register(online, REGISTER_TIMEOUT_S)
        if waiting:
            raise RuntimeError(f"{len(waiting)} phones did not register")
        started_at = timeline.mark("mix")
        deadline = time.perf_counter() + options.mix_duration_s
        pinging = asyncio.create_task(pinger.run(deadline))
        churning = asyncio.create_task(_churn(fleet, online, dropped, churn, deadline))
        with context.progress("mix", round(options.mix_duration_s, 1), "s") as bar:
            began = time.perf_counter()

            def progress() -> None:
                show_elapsed(bar, began)
                bar.set_postfix(queued=timeline.total("queued"))

            senders = [p for p in online]
            sent = await paced(
                fleet,
                senders,
                lambda sender: random.choice(users),
                payload,
                options.mix_rate,
                options.mix_duration_s,
                progress,
                burst=BURST,
            )
        await pinging
        await churning
        await settle_answers(fleet, 10.0)
        ended_at = timeline.now()
        await fleet.connect([p for p in phones if p.transport is None])
        with context.progress("mix: everyone drains", None, "msg") as bar:
            drain_s = await drain(fleet, phones, 300.0, bar.update)
        queued = timeline.samples("message_to_queued", started_at, ended_at)
        delivered = timeline.samples("message_to_delivered", started_at, ended_at)
        return {
            "phones": len(phones),
            "online_fraction": options.mix_online_fraction,
            "offered_rate_per_s": options.mix_rate,
            "sent": sent,
            "queued_latency_p50_ms": percentile_ms(queued, 0.5),
            "queued_latency_p95_ms": percentile_ms(queued, 0.95),
            "queued_latency_p99_ms": percentile_ms(queued, 0.99),
            "push_latency_p50_ms": percentile_ms(delivered, 0.5),
            "push_latency_p99_ms": percentile_ms(delivered, 0.99),
            "churn": churn,
            "path_challenges": fleet.events["path_challenge"],
            "drain_s": round(drain_s, 2),
            "relay_cpu_percent": context.relay_cpu_percent(started_at, ended_at),
            **fleet.outcome(),
        }
    finally:
        pinger.stopped = True
        fleet.close()


async def _churn(
    fleet: Fleet,
    online: list[Phone],
    dropped: list[Phone],
    churn: dict,
    deadline: float,
) -> None:
    """Roam some phones and drop others out; dropped phones return a little later."""
    step_s = 1.0 / EVENTS_PER_S
    while time.perf_counter() < deadline:
        await asyncio.sleep(step_s)
        candidates = [p for p in online if p.established and p not in dropped]
        if not candidates:
            continue
        roaming = random.choice(candidates)
        await fleet.roam(roaming)
        churn["roamed"] += 1
        leaving = random.choice(candidates)
        if leaving is not roaming:
            # Silent: the socket closes, the relay's session times out.
            leaving.close()
            leaving.registered_at = 0.0
            leaving.wants_session = False
            dropped.append(leaving)
            churn["dropped"] += 1
        if len(dropped) > 3:
            back = dropped.pop(0)
            await fleet.roam_back(back)
            churn["returned"] += 1
