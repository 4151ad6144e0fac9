"""Options, timeline, relay process and progress bars shared by every scenario."""

import asyncio
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from loadtests.proc import ProcessSampler
from loadtests.profiling import Profiler
from loadtests.target import start_relay
from loadtests.timeline import Timeline
from relay.client.identity import Identity
from relay.testing import RelayProcess


@dataclass
class Options:
    """Sizes and durations of a run; `quick` and `full` differ only here."""

    storm_phones: int = 10_000
    steady_steps: tuple[int, ...] = (1_000, 4_000, 7_000, 10_000, 15_000)
    steady_settle_s: float = 32.0  # longer than a cookie's 30 s in the relay's ledger
    ping_interval_s: float = 25.0
    blast_phones: int = 256
    blast_window: int = 8
    blast_warmup_s: float = 1.0
    blast_duration_s: float = 4.0
    blast_rate_guess: float = 150_000.0
    blast_spin: bool = False  # the generator polls without sleeping (see blast.py)
    senders: int = 64
    send_window: int = 16
    recipients: int = 50
    durable_messages: int = 100_000
    latency_warmup_s: float = 2.0  # at half rate, after the durable phase's full load
    latency_duration_s: float = 10.0
    cycle_pairs: int = 128
    cycle_window: int = 8
    cycle_duration_s: float = 6.0
    payload_bytes: int = 160
    poll_bytes: int = 1200
    mix_phones: int = 2_000
    mix_online_fraction: float = 0.7
    mix_rate: float = 2_000.0  # messages a second, averaged over bursts
    mix_duration_s: float = 20.0
    soak_phones: int = 10_000
    soak_duration_s: float = 3_600.0
    soak_messages_per_day: int = 500_000
    soak_churn_per_s: float = 10.0  # phones a second that drop out, unregister or roam
    soak_session_timeout_s: int = 120
    repeat: int = 1


def quick_options() -> Options:
    """Return the small scale that CI runs: a few hundred phones, seconds each."""
    return Options(
        storm_phones=500,
        steady_steps=(100, 300, 500),
        steady_settle_s=1.0,
        blast_phones=64,
        blast_duration_s=1.5,
        blast_warmup_s=0.5,
        blast_rate_guess=60_000.0,
        senders=16,
        recipients=10,
        durable_messages=5_000,
        latency_warmup_s=0.5,
        latency_duration_s=2.0,
        cycle_pairs=32,
        cycle_duration_s=2.0,
        mix_phones=200,
        mix_rate=300.0,
        mix_duration_s=3.0,
        soak_phones=300,
        soak_duration_s=8.0,
        soak_churn_per_s=5.0,
        soak_session_timeout_s=5,
    )


@dataclass
class RelayRun:
    """One relay process of a scenario and the samples taken of it."""

    name: str
    process: RelayProcess
    sampler: ProcessSampler
    started_at_s: float  # on the scenario's timeline
    profiler: Profiler | None = None
    storage: dict | None = None  # the relay's write counters, from its last log line


@dataclass
class Context:
    out_dir: Path
    options: Options
    show_progress: bool = True
    profile: bool = False  # record each relay with py-spy
    timeline: Timeline = field(default_factory=Timeline)
    relays: list[RelayRun] = field(default_factory=list)
    generator: ProcessSampler | None = None

    def new_timeline(self) -> Timeline:
        """Start a scenario's timeline, with the generator's own CPU sampled on it."""
        self.timeline = Timeline()
        if self.generator is not None:
            self.generator.stop()
        self.generator = ProcessSampler(os.getpid(), 0.25, self.timeline.started)
        self.generator.start()
        return self.timeline

    def relay_directory(self, name: str) -> Path:
        """Return the folder the next relay of this name runs in."""
        return self.out_dir / "relays" / f"{name}-{len(self.relays)}"

    def start_relay(self, name: str, **environment: int | str) -> RelayProcess:
        directory = self.relay_directory(name)
        process = start_relay(directory, **environment)
        sampler = ProcessSampler(process.pid, 0.25, self.timeline.started).start()
        run = RelayRun(name, process, sampler, self.timeline.now())
        # Tracked before the profiler starts, so that stop_relays() stops
        # this relay even when py-spy is missing.
        self.relays.append(run)
        if self.profile:
            folder = self.out_dir / "profiles"
            folder.mkdir(parents=True, exist_ok=True)
            output = folder / f"{directory.name}.txt"
            run.profiler = Profiler(process.pid, output).start()
        return process

    def stop_relays(self) -> None:
        if self.generator is not None:
            self.generator.stop()
        for run in self.relays:
            if run.profiler is not None:
                run.profiler.stop()
                run.profiler = None
            run.sampler.stop()
            try:
                run.process.stop(timeout_s=20)
            except Exception:
                run.process.kill()
            closed = run.process.events("storage_closed")
            if closed:
                run.storage = {
                    key: closed[-1].get(key)
                    for key in ("commits", "committed_operations", "unwritten_messages")
                }

    def relay_sampler(self) -> ProcessSampler:
        return self.relays[-1].sampler

    def relay_cpu_percent(self, start: float, end: float) -> float:
        """Return the latest relay's mean CPU between two timeline times."""
        return round(self.relay_sampler().mean_cpu(start, end), 1)

    def generator_cpu_percent(self, start: float, end: float) -> float | None:
        """Return this process's mean CPU between two timeline times, if sampled."""
        if self.generator is None:
            return None
        return round(self.generator.mean_cpu(start, end), 1)

    @contextmanager
    def progress(
        self, description: str, total: float | None, unit: str
    ) -> Iterator[tqdm]:
        bar = tqdm(
            total=total,
            desc=description,
            unit=unit,
            disable=not self.show_progress,
            dynamic_ncols=True,
            mininterval=0.5,
            leave=True,
        )
        try:
            yield bar
        finally:
            bar.close()

    def write_json(self, name: str, document: dict) -> Path:
        path = self.out_dir / name
        path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
        return path


def show_elapsed(bar: tqdm, began: float) -> None:
    """Set a bar counting seconds to the time since began, within its total."""
    elapsed = round(time.perf_counter() - began, 1)
    bar.n = elapsed if bar.total is None else min(bar.total, elapsed)
    bar.refresh()


def make_identities(count: int) -> list[Identity]:
    return [Identity.generate() for _ in range(count)]


async def ticker(interval_s: float, until: float, step) -> None:
    """Call step(now) every interval_s until the perf_counter deadline."""
    while (now := time.perf_counter()) < until:
        step(now)
        await asyncio.sleep(interval_s)
