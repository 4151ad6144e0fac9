"""Run the client command line as `python -m relay.client ...`."""

import sys

from relay.client.cli import run

sys.exit(run(sys.argv[1:]))
