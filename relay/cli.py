"""The yaok-relay command: serve the relay, or run one of its tools."""

import argparse
import sys

from relay import __version__

USAGE = """\
yaok-relay [serve]          run the relay (settings from the environment)
yaok-relay client ...       the reference client (yaok-relay client --help)
"""


# How long a thread may hold the GIL while another waits for it (Python's
# default is 5 ms). The SQLite threads give up the GIL for every row they
# step and must take it back from the event loop, so while the loop is busy
# each row could wait a whole interval. In process, with the loop kept busy,
# the group-commit writer managed 6,000-21,000 enqueues a second at 5 ms and
# 21,000-28,000 at 0.5 ms on the 2-core test machine.
GIL_SWITCH_INTERVAL_S = 0.0005


def serve() -> int:
    import uvloop

    from relay.config import ConfigError, load_settings
    from relay.ops.logging import configure_logging
    from relay.server.app import RelayServer
    from relay.server.udp import BindError

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"yaok-relay: {exc}", file=sys.stderr)
        return 2
    sink = configure_logging(
        settings.log_level, settings.log_format, settings.fly_region, settings.log_file
    )
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        uvloop.run(RelayServer(settings, sink).run())
    except (BindError, ConfigError) as exc:
        print(f"yaok-relay: {exc}", file=sys.stderr)
        return 1
    finally:
        sink.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else "serve"
    if command == "serve":
        parser = argparse.ArgumentParser(prog="yaok-relay serve", usage=USAGE)
        parser.parse_args(args)
        return serve()
    if command == "client":
        from relay.client.cli import run

        return run(args)
    if command in ("-V", "--version"):
        print(__version__)
        return 0
    if command in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    print(f"yaok-relay: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
