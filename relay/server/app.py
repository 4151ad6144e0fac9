"""The relay process: start-up, serving and shutdown as explicit steps.

One event loop serves the UDP protocol and the HTTP ops API. Start-up binds
both sockets before anything is served, so a taken port stops the process
with one line. A database that cannot be opened does not stop it: the relay
serves /health with 503 and retries (see storage_watch). Shutdown tells
every session to go elsewhere, commits what is in flight, answers it, and
closes the database before the sockets.

Signals: SIGTERM and SIGINT start the shutdown (a repeat during shutdown
is logged and otherwise ignored, so the database is always closed);
SIGUSR1 reopens the log file. The handlers are in place from before
start-up until the process is done.
"""

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import structlog
import uvicorn

from relay import PROTOCOL_VERSION, __version__
from relay.config import ConfigError, Settings
from relay.core.relay import RelayCore
from relay.ops.logging import LogSink, LogThrottle
from relay.ops.metrics import RelayCollector, WindowedRates, build_registry
from relay.ops.overload import OverloadWatch
from relay.ops.process import raise_open_files_limit
from relay.ops.storage_metrics import StorageCollector
from relay.server.http import OpsState, create_app
from relay.server.http_protocol import DeadlineH11Protocol
from relay.server.keys import load_or_create_relay_key
from relay.server.storage_watch import StorageWatch
from relay.server.udp import RelayDatagramProtocol, bind_socket
from relay.storage import open_storage

log = structlog.get_logger("relay.server")

TICK_INTERVAL_S = 1.0
# Shares of SHUTDOWN_TIMEOUT_S for the work in flight and then for the
# final commit and checkpoint. The rest lets the last replies go out and
# the HTTP server finish.
IN_FLIGHT_SHARE = 0.5
STORAGE_SHARE = 0.3
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers; the relay owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_database_path(path: Path) -> None:
    """Raise ConfigError when DATABASE_URL cannot name a database file at all.

    A file that exists but is damaged is not a configuration error: the
    relay then runs, reports it on /health and retries.
    """
    if path.is_dir():
        raise ConfigError(
            f"DATABASE_URL names the folder {path}: give a file path, "
            f"such as {path / 'yaok_relay.db'}"
        )
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(
            f"DATABASE_URL names {path}, but {blocker} is a file, not a folder"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the database folder {path.parent} (DATABASE_URL): "
            f"{exc.strerror or exc}"
        ) from None


class RelayServer:
    def __init__(self, settings: Settings, sink: LogSink | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.stop_requested = asyncio.Event()
        self.stop_reason = ""
        self.started = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._throttle = LogThrottle()
        self._pid_written = False

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then shut down."""
        self._install_signal_handlers()
        try:
            await self._start_or_clean_up()
            await self.stop_requested.wait()
            await self.shutdown()
        finally:
            self._remove_signal_handlers()
            self._remove_pid_file()

    async def _start_or_clean_up(self) -> None:
        try:
            self._write_pid_file()
            await self.start()
        except BaseException as exc:
            log.error(
                "relay_start_failed",
                error=str(exc) or type(exc).__name__,
                error_type=type(exc).__name__,
            )
            storage = getattr(self, "storage", None)
            if storage is not None:
                with contextlib.suppress(Exception):
                    await storage.close()
            raise

    # --- start-up -------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        self.started = time.monotonic()
        self.open_files_limit = raise_open_files_limit()
        udp_socket = bind_socket(
            settings.relay_host,
            settings.relay_port,
            socket.SOCK_DGRAM,
            "RELAY_HOST/RELAY_PORT",
        )
        http_socket = bind_socket(
            settings.http_host,
            settings.http_port,
            socket.SOCK_STREAM,
            "HTTP_HOST/HTTP_PORT",
        )
        check_database_path(settings.database_path)
        relay_key, key_created = load_or_create_relay_key(settings.key_path)
        self.storage = open_storage(settings)
        self.storage_watch = StorageWatch(
            self.storage, settings.storage_retry_interval_s
        )
        self.protocol = RelayDatagramProtocol(self._datagram_received)
        self.core = RelayCore(settings, self.storage, relay_key, self.protocol.sendto)
        self.rates = WindowedRates(self.core)
        self.overload = OverloadWatch(self.core)
        collector = RelayCollector(
            self.core,
            self.storage,
            self.rates,
            self.started,
            mapped_paths=self.storage.mapped_paths(),
            endpoint=self.protocol,
        )
        registry = build_registry(collector)
        registry.register(StorageCollector(self.storage, self.core.clock))
        self.ops = OpsState(self.core, self.storage, registry, self.started)
        # HTTP first. Opening a large database reads every waiting message
        # and dedup record: 6-7 s for 300,000 and 500,000 on the 2-core test
        # machine. Meanwhile /health returns 503 with the reason instead of
        # leaving the platform's health check without a response.
        self.http = await self._start_http(http_socket)
        await self._open_storage_unless_stopped()
        # Phones' datagrams wait in the socket's buffer until the mailboxes
        # are loaded.
        self.transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: self.protocol, sock=udp_socket
        )
        self._tasks.append(asyncio.create_task(self._tick_forever()))
        self._tasks.append(asyncio.create_task(self._sweep_forever()))
        self._tasks.append(asyncio.create_task(self.storage_watch.run_forever()))
        self.udp_port = udp_socket.getsockname()[1]
        self.http_port = http_socket.getsockname()[1]
        # Most of what start-up built (modules, the web stack's schemas) lives
        # as long as the process. Frozen, it is left out of every later garbage
        # collection, which under load ran every second or two and took
        # 45-66 ms over it on the 2-core test machine. Frozen objects are still
        # freed when their last reference goes, as the loaded mailbox index is.
        gc.freeze()
        self._log_started(key_created)

    async def _open_storage_unless_stopped(self) -> None:
        """Open the storage, or give up when SIGTERM or SIGINT comes first.

        Nothing is written while the mailboxes load, so a stop can cut the
        load short. The relay then starts without its database and shuts
        down at once, within SHUTDOWN_TIMEOUT_S of the signal.
        """
        opening = asyncio.ensure_future(self.storage_watch.open())
        stopping = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opening
            log.info("storage_open_abandoned", reason=self.stop_reason)

    def _datagram_received(self, data: bytes, address: tuple[str, int]) -> None:
        self.core.datagram_received(data, address)

    async def _start_http(self, sock: socket.socket) -> _EmbeddedUvicorn:
        config = uvicorn.Config(
            create_app(self.ops),
            http=DeadlineH11Protocol,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
        )
        server = _EmbeddedUvicorn(config)
        self.http_task = asyncio.create_task(server.serve(sockets=[sock]))
        # relay_started must mean both ports answer, so wait for uvicorn.
        while not server.started:
            if self.http_task.done():
                self.http_task.result()
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        return server

    def _log_started(self, key_created: bool) -> None:
        settings = self.settings
        log.info(
            "relay_started",
            version=__version__,
            protocol_version=PROTOCOL_VERSION,
            pid=os.getpid(),
            udp_host=settings.relay_host,
            udp_port=self.udp_port,
            http_host=settings.http_host,
            http_port=self.http_port,
            database=str(settings.database_path),
            database_open=self.storage.is_open,
            relay_key_path=str(settings.key_path),
            relay_key_created=key_created,
            relay_public_key=self.core.relay_public.hex(),
            max_connections=settings.max_connections,
            open_files_limit=self.open_files_limit,
            session_timeout_s=settings.session_timeout_s,
            message_ttl_max_s=settings.message_ttl_max_s,
            max_payload_bytes=settings.max_payload_bytes,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            log_level=settings.log_level,
            log_format=settings.log_format,
            log_file=None if settings.log_file is None else str(settings.log_file),
            pid_file=None if settings.pid_file is None else str(settings.pid_file),
            prometheus_endpoint=settings.prometheus_endpoint,
        )
        if key_created:
            # Phones pin the relay key, so a new key on a relay that served
            # before (a wrong DATABASE_URL, a lost volume) locks them out.
            log.warning(
                "relay_key_created",
                relay_key_path=str(settings.key_path),
                relay_public_key=self.core.relay_public.hex(),
                action="if this relay served phones before, stop it and restore "
                "its key file (docs/operations.md, Relay key)",
            )

    # --- PID file ---------------------------------------------------------------

    def _write_pid_file(self) -> None:
        path = self.settings.pid_file
        if path is None:
            return
        staging = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging.write_text(f"{os.getpid()}\n", encoding="ascii")
            os.replace(staging, path)
        except OSError as exc:
            raise ConfigError(
                f"invalid configuration: PID_FILE={str(path)!r}: cannot write it "
                f"({exc.strerror or exc}); expected a writable file path"
            ) from None
        self._pid_written = True

    def _remove_pid_file(self) -> None:
        path = self.settings.pid_file
        if path is None or not self._pid_written:
            return
        # Another process may have taken the file over; leave its PID alone.
        with contextlib.suppress(OSError):
            if _read_pid(path) == os.getpid():
                path.unlink()

    # --- serving ----------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, self.request_stop, signum.name)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_log)

    def _remove_signal_handlers(self) -> None:
        # Ignored from here to the exit, not handed back to the default,
        # which would end the process with the signal's own status: a
        # SIGTERM repeated by an impatient supervisor, or logrotate's SIGUSR1.
        # Not through loop.remove_signal_handler either, which restores the
        # default first and leaves a moment in which a signal kills.
        for signum in (*_STOP_SIGNALS, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)

    def request_stop(self, reason: str) -> None:
        if self.stop_requested.is_set():
            # A supervisor may repeat the signal thousands of times a second.
            if (held_back := self._throttle.allow("shutdown_in_progress")) is not None:
                log.info("shutdown_in_progress", signal=reason, held_back=held_back)
            return
        self.stop_reason = reason
        self.stop_requested.set()

    def _reopen_log(self) -> None:
        if self.sink is None or self.sink.path is None:
            log.info("log_file_reopen_skipped", reason="LOG_FILE is not set")
            return
        problem = self.sink.reopen()
        if problem:
            log.error("log_file_reopen_failed", path=str(self.sink.path), error=problem)
        else:
            log.info("log_file_reopened", path=str(self.sink.path))

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            try:
                self.core.tick()
                self.rates.sample()
                self.overload.check()
            except Exception:
                if (held_back := self._throttle.allow("tick_failed")) is not None:
                    log.exception("tick_failed", held_back=held_back)

    async def _sweep_forever(self) -> None:
        dedup_window_ms = self.settings.dedup_window_s * 1000
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            if not self.storage.is_open or self.storage.corruption is not None:
                continue  # the storage watch reports these states
            try:
                sweep = await self.storage.sweep(self.core.clock(), dedup_window_ms)
            except Exception as exc:
                if (held_back := self._throttle.allow("sweep_failed")) is not None:
                    log.warning("sweep_failed", error=str(exc), held_back=held_back)
                continue
            self.core.stats.messages_expired += sweep.expired_messages
            if sweep.expired_messages:
                log.info("messages_expired", count=sweep.expired_messages)

    # --- shutdown ----------------------------------------------------------------

    async def shutdown(self) -> None:
        """Drain, finish the work in flight, commit, close the database and sockets.

        Every step has its share of SHUTDOWN_TIMEOUT_S. A MESSAGE is answered
        QUEUED only by its own commit, so a write cut off by the deadline is
        answered UNAVAILABLE (or not at all), never QUEUED.
        """
        began = time.monotonic()
        timeout_s = self.settings.shutdown_timeout_s
        told = self.core.drain()
        log.info(
            "relay_draining",
            reason=self.stop_reason,
            sessions_told=told,
            shutdown_timeout_s=timeout_s,
        )
        for task in self._tasks:
            task.cancel()
        in_flight_done = await self.core.wait_idle(
            max(0.1, began + timeout_s * IN_FLIGHT_SHARE - time.monotonic())
        )
        writes_at_close = self.storage.stats().pending_writes
        storage_closed = await self._close_storage(
            began + timeout_s * (IN_FLIGHT_SHARE + STORAGE_SHARE)
        )
        self.storage_watch.release()
        deadline = began + timeout_s
        # Tasks resumed by the final commit send their answers now, before
        # the socket closes.
        await self.core.wait_idle(max(0.05, (deadline - time.monotonic()) / 2))
        self.transport.close()
        await self._stop_http(deadline)
        self._log_stopped(began, told, in_flight_done, writes_at_close, storage_closed)

    async def _close_storage(self, until: float) -> bool:
        try:
            await asyncio.wait_for(
                self.storage.close(), max(0.1, until - time.monotonic())
            )
        except Exception as exc:
            log.error(
                "storage_close_failed",
                error=str(exc) or type(exc).__name__,
                database=str(self.settings.database_path),
            )
            return False
        return True

    async def _stop_http(self, deadline: float) -> None:
        self.http.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                self.http_task, max(0.1, deadline - time.monotonic())
            )

    def _log_stopped(
        self,
        began: float,
        told: int,
        in_flight_done: bool,
        writes_at_close: int,
        storage_closed: bool,
    ) -> None:
        stats = self.core.stats
        log.info(
            "relay_stopped",
            reason=self.stop_reason,
            sessions_told=told,
            in_flight_finished=in_flight_done,
            writes_committed_at_close=writes_at_close if storage_closed else 0,
            storage_closed=storage_closed,
            registrations=stats.registrations,
            messages_queued=stats.message_outcomes.get("queued", 0),
            uptime_s=round(time.monotonic() - self.started, 3),
            duration_ms=round((time.monotonic() - began) * 1000),
        )


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except ValueError:
        return None
