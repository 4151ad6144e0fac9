#!/usr/bin/env bash
# Prepare this checkout: a virtualenv in .venv with the relay and its test
# dependencies. With --test-tools, also install the system tools the test
# suite runs against (sqlite3, logrotate, Prometheus and promtool) from
# Debian's packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--test-tools" ]]; then
    missing=()
    command -v sqlite3 >/dev/null || missing+=(sqlite3)
    command -v logrotate >/dev/null || missing+=(logrotate)
    # Debian's prometheus package ships both the server and promtool.
    { command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing+=(prometheus)
    if ((${#missing[@]})); then
        sudo=""
        [[ "$(id -u)" == 0 ]] || sudo="sudo"
        echo "setup: installing ${missing[*]} with apt-get"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $python is $("$python" -V 2>&1); yaok-relay needs Python 3.11 or newer" >&2
    exit 1
fi
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
echo "setup: ready (.venv)"
