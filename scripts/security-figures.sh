#!/usr/bin/env bash
# Run the security tests afresh and print the figures they measured.
#
#   scripts/security-figures.sh                 the suite's own modes
#   YAOK_LONG_TESTS=1 scripts/security-figures.sh
#                                               200 kill cycles, 30 s floods
#   YAOK_FUZZ_SECONDS=60 scripts/security-figures.sh
#                                               a minute of atheris per target
#
# Each test writes its section to results/security/SECTION.json; the merged
# figures go to results/security.json (git ignores results/). Arguments are
# passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf results/security results/security.json
.venv/bin/pytest tests/fuzz tests/adversarial tests/crash tests/http "$@"
.venv/bin/python -m tests.security_figures
