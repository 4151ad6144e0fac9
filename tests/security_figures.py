"""Figures measured by the security tests, kept for docs/security.md.

Each test records its figures under a section name; `record` merges them
into results/security/SECTION.json, which git ignores.
`scripts/security-figures.sh` runs the tests and prints every section.
"""

import json
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results" / "security"


def record(section: str, figures: dict) -> None:
    """Merge figures into the section's JSON file, replacing keys measured again."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{section}.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(figures)
    current["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
