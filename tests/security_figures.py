"""Figures measured by the security tests, kept for docs/security.md.

Each test records its figures under a section name; `record` merges them
into results/security/SECTION.json, which git ignores.
`scripts/security-figures.sh` runs the tests and prints every section.
"""

import json
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results" / "security"
# One test run: a section written by an earlier run is replaced, not merged,
# so that no figure outlives the code that measured it.
RUN_ID = f"{time.time_ns():x}"


def record(section: str, figures: dict) -> None:
    """Merge figures into the section's JSON file for this run."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{section}.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    if current.get("run_id") != RUN_ID:
        current = {"run_id": RUN_ID}
    current.update(figures)
    current["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


def merge() -> dict:
    """Collect every section into results/security.json and return it."""
    sections = {
        path.stem: json.loads(path.read_text())
        for path in sorted(RESULTS_DIR.glob("*.json"))
    }
    merged = RESULTS_DIR.parent / "security.json"
    merged.write_text(json.dumps(sections, indent=2, sort_keys=True) + "\n")
    return sections


if __name__ == "__main__":
    print(json.dumps(merge(), indent=2, sort_keys=True))
