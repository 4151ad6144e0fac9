"""The atheris targets: saved inputs replay cleanly, and a short run finds nothing.

Every file under fuzz/corpus/TARGET/ (seeds, and inputs that once broke a
target) goes through its target in this process. Then each target runs
under atheris, coverage-guided, for YAOK_FUZZ_SECONDS seconds (default 3),
all targets at once in child processes. Longer runs:
`python -m fuzz.run TARGET --seconds N`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.run import CORPUS_DIR, TARGET_NAMES
from fuzz.targets import TARGETS, close_target
from tests.security_figures import record

REPOSITORY = Path(__file__).resolve().parents[2]
FUZZ_SECONDS = int(os.environ.get("YAOK_FUZZ_SECONDS", "3"))
EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")


def test_every_target_is_runnable():
    assert set(TARGETS) == set(TARGET_NAMES)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_corpus_replays_without_findings(name):
    files = sorted((CORPUS_DIR / name).iterdir())
    assert files, f"no saved inputs for {name}"
    target = TARGETS[name]()
    try:
        for path in files:
            try:
                target(path.read_bytes())
            except Exception as exc:
                raise AssertionError(f"{path.name} broke {name}: {exc!r}") from exc
    finally:
        close_target(target)
    regressions = [path.name for path in files if not path.name.startswith("seed-")]
    record("fuzz_corpus", {name: {"files": len(files), "regressions": regressions}})


def test_atheris_runs_find_nothing(tmp_path):
    """Fuzz every target at once for a few seconds; none may find a fault."""
    pytest.importorskip("atheris", reason="atheris is in the test extra")
    runs = {
        name: subprocess.Popen(
            [
                *(sys.executable, "-m", "fuzz.run", name),
                *("--seconds", str(FUZZ_SECONDS), "--work", str(tmp_path / name)),
            ],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in TARGET_NAMES
    }
    outputs = {
        name: run.communicate(timeout=FUZZ_SECONDS + 120)[0]
        for name, run in runs.items()
    }
    executed = {}
    for name, run in runs.items():
        assert run.returncode == 0, (
            f"atheris found a fault in {name}:\n{outputs[name][-4000:]}"
        )
        match = EXECUTED.search(outputs[name])
        assert match, f"no statistics from {name}:\n{outputs[name][-2000:]}"
        executed[name] = int(match.group(1))
    assert all(count > 0 for count in executed.values()), executed
    record(
        "atheris",
        {
            "seconds_per_target": FUZZ_SECONDS,
            "inputs_by_target": executed,
            "inputs": sum(executed.values()),
        },
    )
