"""The load-test harness at a small scale: it runs, reports and loses nothing.

Benchmarks are reported, not asserted: this test checks only that the quick
set runs against the real relay, writes its summary and plots, and that
every message acknowledged QUEUED was delivered. The full set is
`python -m loadtests full` (see README.md).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[1]
SCALE = [
    "--set", "storm_phones=200",
    "--set", "steady_steps=100,200",
    "--set", "durable_messages=2000",
    "--set", "mix_phones=100",
    "--set", "soak_phones=150",
    "--set", "soak_duration_s=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("loadtests")
    # A relative --out, as in the README, from the folder that contains it.
    command = [sys.executable, "-m", "loadtests", "quick", "--out", out.name]
    completed = subprocess.run(
        [*command, "--no-progress", *SCALE],
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return completed, out


def test_quick_set_exits_zero(quick_run):
    completed, _ = quick_run
    assert completed.returncode == 0, (
        completed.stdout[-3000:] + completed.stderr[-3000:]
    )


def test_quick_set_prints_targets_table(quick_run):
    completed, _ = quick_run
    assert "authenticated PING/PONG round trips/s" in completed.stdout
    assert "acknowledged messages lost" in completed.stdout
    assert "rate limits raised for benchmarking" in completed.stdout


def test_summary_has_every_scenario(quick_run):
    _, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    scenarios = summary["scenarios"]
    for name in ("storm", "steady", "throughput", "backlog", "cycles", "mix", "soak"):
        assert name in scenarios, name
    assert summary["failures"] == []


def test_summary_reports_ceilings(quick_run):
    _, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    throughput = summary["scenarios"]["throughput"][0]
    assert throughput["echo"]["rate_per_s"] > 0
    assert throughput["generator_offered_per_s"] > 0
    assert summary["scenarios"]["backlog"][0]["sqlite_batch100_rows_per_s"] > 0
    assert summary["crypto_us"]["ed25519_verify_us"] > 0


def test_no_acknowledged_message_lost(quick_run):
    _, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lost"] == 0
    backlog = summary["scenarios"]["backlog"][0]["ledger"]
    assert backlog["queued"] > 0
    assert backlog["delivered"] == backlog["queued"]


def test_plots_written(quick_run):
    _, out = quick_run
    plots = sorted(path.name for path in (out / "plots").glob("*.png"))
    assert "backlog.png" in plots
    assert "steady.png" in plots
    assert all((out / "plots" / name).stat().st_size > 10_000 for name in plots)
