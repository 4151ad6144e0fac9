"""PNG plots of one scenario: throughput, latency percentiles, relay memory and CPU."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtests.context import RelayRun
from loadtests.proc import ProcessSampler
from loadtests.timeline import Timeline

# Timeline counters worth a line in the throughput panel, with their labels.
RATE_SERIES = {
    "registered": "REGISTERED",
    "pong": "PONG",
    "relay": "PING/PONG round trips",
    "echo": "echo round trips",
    "message_sent": "MESSAGE sent",
    "queued": "QUEUED",
    "delivered": "delivered to recipient",
    "receipt": "DELIVERED receipts",
    "poll_response": "POLL_RESPONSE",
}
LATENCY_SERIES = {
    "register": "REGISTER to REGISTERED",
    "message_to_queued": "MESSAGE to QUEUED",
    "message_to_delivered": "MESSAGE to delivery",
}
PERCENTILES = ((0.5, "p50", ":"), (0.95, "p95", "--"), (0.99, "p99", "-"))


def plot_scenario(
    path: Path,
    title: str,
    timeline: Timeline,
    relays: list[RelayRun],
    generator: ProcessSampler | None,
) -> Path:
    figure, (rates, latency, memory) = plt.subplots(3, 1, figsize=(11, 11), sharex=True)
    figure.suptitle(title)
    _rates(rates, timeline)
    _latency(latency, timeline)
    _memory(memory, relays, generator)
    for at_s, label in timeline.marks:
        for axis in (rates, latency, memory):
            axis.axvline(at_s, color="grey", linewidth=0.6, alpha=0.6)
        rates.annotate(
            label,
            (at_s, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="grey",
        )
    memory.set_xlabel(f"seconds (buckets of {timeline.bucket_s} s)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _rates(axis, timeline: Timeline) -> None:
    drawn = False
    for name, label in RATE_SERIES.items():
        times, values = timeline.rate_series(name)
        if times:
            axis.plot(times, values, label=label, linewidth=1)
            drawn = True
    axis.set_ylabel("events / s")
    axis.set_title("throughput", fontsize=10)
    if drawn:
        axis.legend(fontsize=8, loc="upper right")
    axis.grid(alpha=0.3)


def _latency(axis, timeline: Timeline) -> None:
    drawn = False
    for name, label in LATENCY_SERIES.items():
        for fraction, short, style in PERCENTILES:
            times, values = timeline.percentile_series(name, fraction)
            if times:
                axis.plot(
                    times,
                    [v * 1000 for v in values],
                    style,
                    label=f"{label} {short}",
                    linewidth=1,
                )
                drawn = True
    axis.set_ylabel("ms")
    axis.set_title("latency percentiles per bucket", fontsize=10)
    if drawn:
        axis.set_yscale("log")
        axis.legend(fontsize=7, loc="upper right", ncol=2)
    axis.grid(alpha=0.3)


def _memory(axis, relays: list[RelayRun], generator: ProcessSampler | None) -> None:
    cpu_axis = axis.twinx()
    for run in relays:
        samples = run.sampler.samples
        if not samples:
            continue
        times = [s.at_s for s in samples]
        axis.plot(
            times,
            [s.rss_bytes / 2**20 for s in samples],
            color="tab:blue",
            label=f"relay RSS ({run.name})",
        )
        axis.plot(
            times,
            [s.anonymous_bytes / 2**20 for s in samples],
            color="tab:blue",
            linestyle="--",
            linewidth=0.8,
            label="of which anonymous (heap)",
        )
        cpu_axis.plot(
            times,
            [s.cpu_percent for s in samples],
            color="tab:red",
            linewidth=0.7,
            alpha=0.7,
            label="relay CPU",
        )
    if generator is not None and generator.samples:
        cpu_axis.plot(
            [s.at_s for s in generator.samples],
            [s.cpu_percent for s in generator.samples],
            color="tab:green",
            linewidth=0.7,
            alpha=0.6,
            label="generator CPU",
        )
    axis.set_ylabel("RSS MiB", color="tab:blue")
    cpu_axis.set_ylabel("CPU % of one core", color="tab:red")
    axis.set_title("relay memory and CPU (from /proc)", fontsize=10)
    lines = axis.get_legend_handles_labels()
    cpu_lines = cpu_axis.get_legend_handles_labels()
    axis.legend(
        lines[0] + cpu_lines[0], lines[1] + cpu_lines[1], fontsize=8, loc="upper left"
    )
    axis.grid(alpha=0.3)
