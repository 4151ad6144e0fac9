"""Registration storm: every phone registers at once, as after a deploy or failover.

The users are already in the registry (written to the database before the
relay starts), as they would be for a relay that restarts. The figure is
the time from the first REGISTER to the last REGISTERED.
"""

import time

from loadtests.context import Context, make_identities
from loadtests.fleet import Fleet
from loadtests.target import seed_users
from loadtests.timeline import percentile_ms

REGISTER_TIMEOUT_S = 60.0


async def run(context: Context) -> dict:
    phones_wanted = context.options.storm_phones
    timeline = context.new_timeline()
    identities = make_identities(phones_wanted)
    database = context.relay_directory("storm") / "yaok_relay.db"
    seed_users(database, identities, time.time_ns() // 1_000_000)
    relay = context.start_relay("storm", MAX_CONNECTIONS=max(10_000, phones_wanted))
    fleet = Fleet(relay.udp_address, relay.relay_public_key, timeline)
    phones = fleet.make_phones(identities)
    await fleet.connect(phones)
    try:
        started_at = timeline.mark("storm")
        started = time.perf_counter()
        with context.progress("storm: registering", len(phones), "phone") as bar:
            waiting = await fleet.register(
                phones, REGISTER_TIMEOUT_S, retry_s=1.0, progress=bar.update
            )
        registered = [p for p in phones if p.established]
        last = max((p.registered_at for p in registered), default=started)
        latencies = timeline.samples("register")
        seconds = last - started
        return {
            "phones": len(phones),
            "registered": len(registered),
            "not_registered": len(waiting),
            "seconds_to_all": round(seconds, 3) if not waiting else None,
            "seconds_to_last_registered": round(seconds, 3),
            "registrations_per_s": round(len(registered) / seconds, 1)
            if seconds
            else 0,
            "latency_p50_ms": percentile_ms(latencies, 0.5, digits=1),
            "latency_p99_ms": percentile_ms(latencies, 0.99, digits=1),
            "handshakes_retransmitted": fleet.events["register_retransmitted"],
            "errors": dict(fleet.errors),
            "relay_cpu_percent": context.relay_cpu_percent(
                started_at, started_at + seconds
            ),
            "relay_rss_mib": round(context.relay_sampler().latest_rss() / 2**20, 1),
        }
    finally:
        fleet.close()
