"""Command line: `python -m loadtests quick|full|run SCENARIO|ceilings`.

Run it from the repository's root.
"""

import argparse
import dataclasses
import gc
import sys
import time
import traceback
from pathlib import Path

import uvloop

from loadtests import report
from loadtests.ceilings import crypto_costs
from loadtests.context import Context, Options, quick_options
from loadtests.plots import plot_scenario
from loadtests.proc import load_average
from loadtests.profiling import summarise
from loadtests.scenarios import backlog, cycles, mix, soak, steady, storm, throughput
from loadtests.target import describe_limits

SCENARIOS = {
    "storm": storm,
    "steady": steady,
    "throughput": throughput,
    "backlog": backlog,
    "cycles": cycles,
    "mix": mix,
    "soak": soak,
}
# Scenarios whose figures are ratios worth repeating with --repeat.
REPEATED = ("throughput", "backlog", "cycles", "storm")
DEFAULT_RESULTS = Path("loadtests/results")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests",
        description="Load tests of the relay, beside ceilings from the same run.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    quick = commands.add_parser("quick", help="every scenario at a small scale (CI)")
    full = commands.add_parser("full", help="every scenario at the planned scale")
    run = commands.add_parser("run", help="one or more scenarios")
    run.add_argument(
        "scenarios",
        nargs="+",
        choices=sorted(SCENARIOS),
        metavar="SCENARIO",
        help=f"one of: {', '.join(SCENARIOS)}",
    )
    run.add_argument("--quick", action="store_true", help="use the small scale")
    commands.add_parser("ceilings", help="only the crypto and SQLite ceilings")
    for command in (quick, full, run):
        command.add_argument(
            "--out",
            type=Path,
            default=None,
            help="folder for summary.json, plots and profiles "
            "(default: loadtests/results/<time>)",
        )
        command.add_argument(
            "--repeat",
            type=int,
            default=1,
            help="run the ratio scenarios this many times and "
            "report median and range (default 1)",
        )
        command.add_argument(
            "--duration",
            type=float,
            default=None,
            help="soak duration in seconds (default 3600, quick 8)",
        )
        command.add_argument(
            "--profile", action="store_true", help="record every relay with py-spy"
        )
        command.add_argument(
            "--no-progress", action="store_true", help="no progress bars"
        )
        command.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="override an option, e.g. --set storm_phones=15000",
        )
    return parser


def options_from(args: argparse.Namespace) -> Options:
    quick = args.command == "quick" or getattr(args, "quick", False)
    options = quick_options() if quick else Options()
    if args.duration is not None:
        options.soak_duration_s = args.duration
    fields = {f.name: f for f in dataclasses.fields(Options)}
    for assignment in args.set:
        name, _, text = assignment.partition("=")
        if name not in fields:
            raise SystemExit(f"unknown option {name!r}; known: {', '.join(fields)}")
        current = getattr(options, name)
        if isinstance(current, tuple):
            value = tuple(int(part) for part in text.split(","))
        else:
            value = type(current)(text)
        setattr(options, name, value)
    options.repeat = max(1, args.repeat)
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ceilings":
        for name, value in crypto_costs().items():
            print(f"{name}: {value:.2f}")
        return 0
    options = options_from(args)
    names = list(SCENARIOS) if args.command in ("quick", "full") else args.scenarios
    scale = (
        "quick" if args.command == "quick" or getattr(args, "quick", False) else "full"
    )
    # Absolute, because the relays run with their own folders as working
    # directories and would resolve a relative database path again.
    out = (args.out or DEFAULT_RESULTS / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    context = Context(
        out, options, show_progress=not args.no_progress, profile=args.profile
    )
    return uvloop.run(run_suite(context, names, scale))


async def run_suite(context: Context, names: list[str], scale: str) -> int:
    # The generator holds a ledger entry per message; a full collection of
    # that heap would pause it for tens of milliseconds in the middle of a
    # latency measurement. It collects between scenarios instead.
    gc.disable()
    out = context.out_dir
    print(describe_limits())
    one, _, _ = load_average()
    print(f"load average before the run: {one:.2f}; results in {out}")
    summary: dict = {
        "scale": scale,
        "options": dataclasses.asdict(context.options),
        "machine": report.machine(),
        "benchmark_limits": describe_limits(),
        "crypto_us": crypto_costs(),
        "scenarios": {},
        "profiles": {},
        "failures": [],
    }
    results: dict[str, list[dict]] = {}
    for name in names:
        repeats = context.options.repeat if name in REPEATED else 1
        for attempt in range(repeats):
            label = name if repeats == 1 else f"{name}-{attempt + 1}"
            document = await _run_one(context, name, label, summary)
            gc.collect()
            if document is not None:
                results.setdefault(name, []).append(document)
            summary["scenarios"] = results
            context.write_json("summary.json", summary)
    rows = report.targets(results, {"scale": scale})
    summary["targets"] = [row.as_dict() for row in rows]
    summary["load_average_after"] = load_average()
    summary["lost"] = sum(report.lost_messages(runs) for runs in results.values())
    context.write_json("summary.json", summary)
    print()
    print(report.render(rows))
    if scale == "quick":
        print(
            "\nquick scale: these figures show that the harness works; the targets "
            "apply to `loadtests full` (docs/performance.md explains the misses)"
        )
    print(f"\nsummary: {out / 'summary.json'}; plots: {out / 'plots'}")
    if summary["failures"]:
        print(
            f"scenarios that failed: {', '.join(summary['failures'])}", file=sys.stderr
        )
        return 1
    if summary["lost"]:
        print(f"{summary['lost']} acknowledged messages were lost", file=sys.stderr)
        return 1
    return 0


async def _run_one(
    context: Context, name: str, label: str, summary: dict
) -> dict | None:
    module = SCENARIOS[name]
    document = None
    try:
        document = await module.run(context)
    except Exception:
        summary["failures"].append(label)
        traceback.print_exc()
    finally:
        context.stop_relays()
    plots = context.out_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_scenario(
        plots / f"{label}.png",
        f"{label}",
        context.timeline,
        context.relays,
        context.generator,
    )
    if document is not None:
        document["relay_storage"] = [run.storage for run in context.relays]
    for run in context.relays:
        profile = context.out_dir / "profiles" / f"{run.process.directory.name}.txt"
        if profile.exists():
            summary["profiles"][label] = {
                "event_loop": summarise(profile, thread="MainThread"),
                "sqlite_threads": summarise(profile, thread="Thread-"),
            }
    context.relays.clear()
    if document is not None:
        lost = report.lost_messages([document])
        print(f"{label}: done{'' if not lost else f', {lost} QUEUED messages lost'}")
        unknown = report.unknown_recipients([document])
        if unknown:
            # Every recipient is registered first, so the run measured a
            # relay that does not have the scenario's users.
            print(
                f"{label}: {unknown} messages answered UNKNOWN_RECIPIENT",
                file=sys.stderr,
            )
            summary["failures"].append(label)
    return document
