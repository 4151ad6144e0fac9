"""Authenticated PING/PONG round trips against the uvloop echo ceiling.

One generator configuration drives three targets in turn: a sink that
never answers (the generator's own maximum offered rate), the uvloop echo
server (the ceiling of any Python datagram server here) and the relay.
The datagrams are real sealed PINGs of registered sessions, sealed before
the clock starts; the echo server sends them back unread, the relay
verifies each one's tag and replay window and answers a sealed PONG. One
reply in 64 from the relay is opened and checked by the phone's session.
"""

import socket

from loadtests.blast import Lane, blast, offered_rate
from loadtests.context import Context, make_identities
from loadtests.echo import EchoProcess
from loadtests.fleet import Endpoint, Fleet, Phone, open_endpoints
from loadtests.proc import ProcessSampler
from relay.client.events import PongReceived

REGISTER_TIMEOUT_S = 30.0
OFFERED_SECONDS = 2.0


def _precompute(phones: list[Phone], per_phone: int) -> list[list[bytes]]:
    return [[phone.session.ping() for _ in range(per_phone)] for phone in phones]


class PongCheck:
    def __init__(self, phone: Phone) -> None:
        self.phone = phone
        self.verified = 0
        self.failed = 0

    def __call__(self, data: bytes) -> bool:
        event = self.phone.session.receive(data)
        if isinstance(event, PongReceived):
            self.verified += 1
            return True
        self.failed += 1
        return False


async def _run_lanes(
    context: Context,
    name: str,
    endpoints: list[Endpoint],
    datagrams: list[list[bytes]],
    checks: list[PongCheck] | None = None,
    server: ProcessSampler | None = None,
    cycle: bool = False,
) -> dict:
    options = context.options
    lanes = [
        Lane(
            endpoint,
            list(lane),
            options.blast_window,
            checks[i] if checks else None,
            cycle=cycle,
        )
        for i, (endpoint, lane) in enumerate(zip(endpoints, datagrams, strict=True))
    ]
    generator = context.generator
    total = options.blast_warmup_s + options.blast_duration_s
    with context.progress(f"throughput: {name}", round(total, 1), "s") as bar:

        def tick(rate: float) -> None:
            bar.update(0.1)
            bar.set_postfix(round_trips_per_s=f"{rate:,.0f}")

        result = await blast(
            lanes,
            context.timeline,
            name,
            options.blast_warmup_s,
            options.blast_duration_s,
            tick,
            spin=options.blast_spin,
        )
    start = result.measured_from_s
    end = start + result.measured_s
    figures = result.as_dict()
    if generator is not None:
        figures["generator_cpu_percent"] = round(generator.mean_cpu(start, end), 1)
    if server is not None:
        figures["server_cpu_percent"] = round(server.mean_cpu(start, end), 1)
    return figures


async def run(context: Context) -> dict:
    options = context.options
    timeline = context.new_timeline()
    relay = context.start_relay("throughput")
    fleet = Fleet(relay.udp_address, relay.relay_public_key, timeline)
    phones = fleet.make_phones(make_identities(options.blast_phones))
    await fleet.connect(phones)
    echo = EchoProcess().start()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    extra: list[Endpoint] = []
    try:
        waiting = await fleet.register(phones, REGISTER_TIMEOUT_S)
        if waiting:
            raise RuntimeError(f"{len(waiting)} phones did not register")
        total_s = options.blast_warmup_s + options.blast_duration_s
        per_phone = int(options.blast_rate_guess * total_s / len(phones)) + 1
        datagrams = _precompute(phones, per_phone)

        sink_endpoints = await open_endpoints(
            [Endpoint() for _ in phones], sink.getsockname()
        )
        extra.extend(sink_endpoints)
        timeline.mark("offered")
        offered = await offered_rate(sink_endpoints, datagrams, OFFERED_SECONDS)

        echo_endpoints = await open_endpoints(
            [Endpoint() for _ in phones], echo.address
        )
        extra.extend(echo_endpoints)
        timeline.mark("echo")
        echo_sampler = ProcessSampler(echo.pid, 0.25, timeline.started).start()
        echoed = await _run_lanes(
            context, "echo", echo_endpoints, datagrams, server=echo_sampler, cycle=True
        )
        echo_sampler.stop()
        echo.stop()

        timeline.mark("relay")
        checks = [PongCheck(phone) for phone in phones]
        relayed = await _run_lanes(
            context, "relay", phones, datagrams, checks, context.relay_sampler()
        )
        relayed["pongs_verified"] = sum(c.verified for c in checks)
        relayed["pongs_failed_verification"] = sum(c.failed for c in checks)
        ratio = (
            relayed["rate_per_s"] / echoed["rate_per_s"] if echoed["rate_per_s"] else 0
        )
        return {
            "phones": len(phones),
            "window_per_phone": options.blast_window,
            "generator_offered_per_s": round(offered, 1),
            "echo": echoed,
            "relay": relayed,
            "ratio_to_echo": round(ratio, 3),
        }
    finally:
        for endpoint in extra:
            endpoint.close()
        for phone in phones:
            phone.handler = phone.on_datagram
        echo.stop()
        sink.close()
        fleet.close()
