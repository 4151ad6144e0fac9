"""The yaok-relay command: serve the relay, or run one of its tools."""

import argparse
import os
import sys

from relay import __version__

USAGE = """\
yaok-relay [serve]               run the relay (settings from the environment)
yaok-relay client ...            the reference client (yaok-relay client --help)
yaok-relay maintenance ...       scheduled database maintenance (--help)
yaok-relay backup ...            snapshot the live database into a .tar.gz (--help)
yaok-relay verify-backup ARCHIVE check a backup archive
yaok-relay restore ARCHIVE ...   restore a backup into an empty path (--help)
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
    from relay.storage.base import StorageUnavailable
    from relay.storage.migrate import MigrationError

    # The database, its WAL and the log hold users' metadata: no access for
    # other users, read access for the group (log shippers).
    os.umask(0o027)
    try:
        settings = load_settings()
        sink = configure_logging(
            settings.log_level,
            settings.log_format,
            settings.fly_region,
            settings.log_file,
        )
    except ConfigError as exc:
        print(f"yaok-relay: {exc}", file=sys.stderr)
        return 2
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        uvloop.run(RelayServer(settings, sink).run())
    except ConfigError as exc:  # a path setting that start-up cannot use
        print(f"yaok-relay: {exc}", file=sys.stderr)
        return 2
    # A port that cannot be bound stops start-up, and so does a database
    # written by a newer release, whose migrations this one does not know.
    # A database that cannot be opened does not: /health reports it.
    except (BindError, StorageUnavailable, MigrationError) as exc:
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
    if command == "maintenance":
        from relay.ops.maintenance_command import run

        return run(args)
    if command == "backup":
        from relay.ops.backup_command import run_backup

        return run_backup(args)
    if command == "verify-backup":
        from relay.ops.backup_command import run_verify

        return run_verify(args)
    if command == "restore":
        from relay.ops.backup_command import run_restore

        return run_restore(args)
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
