"""The targets table: each measured figure beside its ceiling, ratio and target."""

import platform
import sqlite3
import statistics
from dataclasses import dataclass
from importlib import metadata

from loadtests.proc import load_average


@dataclass
class Row:
    figure: str
    measured: str
    ceiling: str
    ratio: str
    target: str
    met: bool | None  # None: not measured at this scale

    def as_dict(self) -> dict:
        return {
            "figure": self.figure,
            "measured": self.measured,
            "ceiling": self.ceiling,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
        }


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        memory_kib = int(meminfo.readline().split()[1])
    import os

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cryptography": metadata.version("cryptography"),
        "uvloop": metadata.version("uvloop"),
        "load_average": load_average(),
    }


def spread(values: list[float]) -> tuple[float, float, float]:
    """Return (median, min, max)."""
    return statistics.median(values), min(values), max(values)


def _fmt(value: float, unit: str = "", digits: int = 0) -> str:
    return f"{value:,.{digits}f}{unit}"


def _with_spread(values: list[float], unit: str = "", digits: int = 0) -> str:
    middle, low, high = spread(values)
    text = _fmt(middle, unit, digits)
    if len(values) > 1:
        text += f" ({_fmt(low, '', digits)}-{_fmt(high, '', digits)})"
    return text


def targets(results: dict[str, list[dict]], scale: dict) -> list[Row]:
    rows: list[Row] = []
    rows.extend(_ping_rows(results.get("throughput", [])))
    rows.extend(_durable_rows(results.get("backlog", [])))
    rows.extend(_cycle_rows(results.get("cycles", [])))
    rows.extend(_storm_rows(results.get("storm", []), scale))
    rows.extend(_memory_rows(results.get("steady", []), results.get("soak", [])))
    rows.append(_lost_row(results))
    return rows


def _ping_rows(runs: list[dict]) -> list[Row]:
    if not runs:
        return []
    relay = [r["relay"]["rate_per_s"] for r in runs]
    echo = [r["echo"]["rate_per_s"] for r in runs]
    ratios = [r["ratio_to_echo"] for r in runs]
    return [
        Row(
            "authenticated PING/PONG round trips/s",
            _with_spread(relay),
            _with_spread(echo) + " echo",
            _with_spread([100 * x for x in ratios], " %"),
            ">= 50 % of echo",
            statistics.median(ratios) >= 0.5,
        )
    ]


def _durable_rows(runs: list[dict]) -> list[Row]:
    if not runs:
        return []
    rates = [r["durable"]["queued_per_s"] for r in runs]
    ceilings = [r["sqlite_batch100_rows_per_s"] for r in runs]
    ratios = [r["durable"]["ratio_to_sqlite"] for r in runs]
    p99 = [r["half_rate"]["latency_p99_ms"] for r in runs]
    p95 = [r["half_rate"]["latency_p95_ms"] for r in runs]
    warmup_p99 = [r["half_rate"]["warmup_latency_p99_ms"] for r in runs]
    return [
        Row(
            "durable sends/s (QUEUED, recipients offline)",
            _with_spread(rates),
            _with_spread(ceilings) + " SQLite b100",
            _with_spread([100 * x for x in ratios], " %"),
            ">= 50 % of SQLite",
            statistics.median(ratios) >= 0.5,
        ),
        Row(
            "p99 MESSAGE to QUEUED at half max rate",
            _with_spread(p99, " ms", 2),
            "",
            f"p95 {_with_spread(p95, ' ms', 2)}, "
            f"warm-up p99 {_with_spread(warmup_p99, ' ms', 2)}",
            "< 10 ms",
            statistics.median(p99) < 10,
        ),
    ]


def _cycle_rows(runs: list[dict]) -> list[Row]:
    if not runs:
        return []
    rates = [r["cycles_per_s"] for r in runs]
    return [
        Row(
            "full message cycles/s",
            _with_spread(rates),
            "",
            "",
            ">= 10,000",
            statistics.median(rates) >= 10_000,
        )
    ]


def _storm_rows(runs: list[dict], scale: dict) -> list[Row]:
    if not runs:
        return []
    phones = runs[0]["phones"]
    seconds = [
        r["seconds_to_all"] if r["seconds_to_all"] is not None else float("inf")
        for r in runs
    ]
    full_scale = phones >= 10_000
    return [
        Row(
            f"registration storm of {phones:,} phones",
            _with_spread(seconds, " s", 2),
            "",
            f"{_with_spread([r['registrations_per_s'] for r in runs])}/s",
            "all within 5 s (10,000)",
            statistics.median(seconds) <= 5 if full_scale else None,
        )
    ]


def _memory_rows(steady: list[dict], soak: list[dict]) -> list[Row]:
    rows = []
    if steady:
        run = steady[-1]
        at_10k = run.get("rss_at_10000_mib")
        at_15k = run.get("rss_at_15000_mib")
        slope = run.get("slope_bytes_per_session")
        rows.append(
            Row(
                "relay RSS with 10,000 sessions",
                "n/a" if at_10k is None else f"{at_10k:.1f} MiB",
                f"idle {run['idle_rss_mib']:.1f} MiB",
                "",
                "< 100 MB",
                None if at_10k is None else at_10k * 2**20 < 100e6,
            )
        )
        rows.append(
            Row(
                "relay RSS with 15,000 sessions",
                "n/a" if at_15k is None else f"{at_15k:.1f} MiB",
                "",
                "",
                "< 128 MB",
                None if at_15k is None else at_15k * 2**20 < 128e6,
            )
        )
        slope_range = run.get("slope_range") or [0, 0]
        rows.append(
            Row(
                "memory per additional session",
                f"{slope:,.0f} B",
                "",
                f"sessions {slope_range[0]:,}-{slope_range[1]:,}",
                "<= 1 KiB (1,000-10,000)",
                slope <= 1024 if slope_range[1] >= 10_000 else None,
            )
        )
    if soak:
        memory = soak[-1]["memory"]
        file_growth = memory.get("file_growth_second_half_mib", float("nan"))
        rows.append(
            Row(
                f"heap over {soak[-1]['duration_s']:,.0f} s of churn",
                f"{memory.get('growth_second_half_mib', float('nan')):+.2f} MiB",
                f"tolerance {memory.get('tolerance_mib', float('nan')):.1f} MiB",
                f"RSS end {memory.get('rss_end_mib', float('nan')):.1f} MiB, "
                f"mapped files {file_growth:+.2f} MiB",
                "flat (3,600 s)",
                memory.get("flat"),
            )
        )
    return rows


def _lost_row(results: dict[str, list[dict]]) -> Row:
    lost = sum(lost_messages(runs) for runs in results.values())
    return Row("acknowledged messages lost", f"{lost:,}", "", "", "0", lost == 0)


def lost_messages(runs: list[dict]) -> int:
    total = 0
    for run in runs:
        for value in _ledgers(run):
            total += value["lost"]
    return total


def unknown_recipients(runs: list[dict]) -> int:
    """Count the messages answered UNKNOWN_RECIPIENT in these runs' ledgers."""
    return sum(
        value.get("statuses", {}).get("UNKNOWN_RECIPIENT", 0)
        for run in runs
        for value in _ledgers(run)
    )


def _ledgers(document: dict):
    for key, value in document.items():
        if key == "ledger" and isinstance(value, dict):
            yield value
        elif isinstance(value, dict):
            yield from _ledgers(value)


def render(rows: list[Row]) -> str:
    header = ("figure", "measured", "ceiling", "ratio / detail", "target", "met")
    table = [header] + [
        (
            r.figure,
            r.measured,
            r.ceiling,
            r.ratio,
            r.target,
            _verdict(r.met),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for index, row in enumerate(table):
        lines.append(
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            )
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    if met is None:
        return "n/a"
    return "yes" if met else "NO"
