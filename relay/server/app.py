"""The relay process: start-up, serving and shutdown as explicit steps.

One event loop serves the UDP protocol and the HTTP ops API. Start-up binds
both sockets before anything is served, so a taken port stops the process
with one line. A database that cannot be opened does not stop it: the relay
serves /health with 503 and retries (see storage_watch). Shutdown tells
every session to go elsewhere, commits what is in flight, answers it, and
closes the database before the sockets.
"""

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Iterator

import structlog
import uvicorn

from relay import PROTOCOL_VERSION, __version__
from relay.config import Settings
from relay.core.relay import RelayCore
from relay.ops.logging import LogSink
from relay.ops.metrics import RelayCollector, WindowedRates, build_registry
from relay.ops.storage_metrics import StorageCollector
from relay.server.http import OpsState, create_app
from relay.server.keys import load_or_create_relay_key
from relay.server.storage_watch import StorageWatch
from relay.server.udp import RelayDatagramProtocol, bind_socket
from relay.storage import open_storage

log = structlog.get_logger("relay.server")

TICK_INTERVAL_S = 1.0


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers; the relay owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class RelayServer:
    def __init__(self, settings: Settings, sink: LogSink | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.stop_requested = asyncio.Event()
        self.stop_reason = ""
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        await self.start()
        self._install_signal_handlers()
        try:
            await self.stop_requested.wait()
        finally:
            self._remove_signal_handlers()
            await self.shutdown()

    # --- start-up -------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        self.started = time.monotonic()
        udp_socket = bind_socket(
            settings.relay_host, settings.relay_port, socket.SOCK_DGRAM, "RELAY_HOST/RELAY_PORT"
        )
        http_socket = bind_socket(
            settings.http_host, settings.http_port, socket.SOCK_STREAM, "HTTP_HOST/HTTP_PORT"
        )
        relay_key, key_created = load_or_create_relay_key(settings.key_path)
        self.storage = open_storage(settings)
        self.storage_watch = StorageWatch(
            self.storage, settings.storage_retry_interval_s
        )
        await self.storage_watch.open()

        loop = asyncio.get_running_loop()
        self.protocol = RelayDatagramProtocol(self._datagram_received)
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self.protocol, sock=udp_socket
        )
        self.core = RelayCore(settings, self.storage, relay_key, self.protocol.sendto)
        self.rates = WindowedRates(self.core)
        collector = RelayCollector(self.core, self.storage, self.rates, self.started)
        registry = build_registry(collector)
        registry.register(StorageCollector(self.storage, self.core.clock))
        self.ops = OpsState(self.core, self.storage, registry, self.started)
        self.http = await self._start_http(http_socket)
        self._tasks.append(asyncio.create_task(self._tick_forever()))
        self._tasks.append(asyncio.create_task(self._sweep_forever()))
        self._tasks.append(asyncio.create_task(self.storage_watch.run_forever()))
        self.udp_port = udp_socket.getsockname()[1]
        self.http_port = http_socket.getsockname()[1]
        self._log_started(key_created)

    def _datagram_received(self, data: bytes, address: tuple[str, int]) -> None:
        self.core.datagram_received(data, address)

    async def _start_http(self, sock: socket.socket) -> _EmbeddedUvicorn:
        config = uvicorn.Config(
            create_app(self.ops),
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
            session_timeout_s=settings.session_timeout_s,
            max_payload_bytes=settings.max_payload_bytes,
            prometheus_endpoint=settings.prometheus_endpoint,
        )

    # --- serving ----------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum.name)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_log)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)

    def request_stop(self, reason: str) -> None:
        if not self.stop_requested.is_set():
            self.stop_reason = reason
            self.stop_requested.set()

    def _reopen_log(self) -> None:
        if self.sink is not None:
            self.sink.reopen()
            log.info("log_file_reopened", path=str(self.sink.path))

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            self.core.tick()
            self.rates.sample()

    async def _sweep_forever(self) -> None:
        dedup_window_ms = self.settings.dedup_window_s * 1000
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            if not self.storage.is_open or self.storage.corruption is not None:
                continue  # the storage watch reports these states
            try:
                sweep = await self.storage.sweep(self.core.clock(), dedup_window_ms)
            except Exception as exc:
                log.warning("sweep_failed", error=str(exc))
                continue
            self.core.stats.messages_expired += sweep.expired_messages
            if sweep.expired_messages:
                log.info("messages_expired", count=sweep.expired_messages)

    # --- shutdown ----------------------------------------------------------------

    async def shutdown(self) -> None:
        began = time.monotonic()
        deadline = began + self.settings.shutdown_timeout_s
        told = self.core.drain()
        log.info("relay_draining", reason=self.stop_reason, sessions_told=told)
        for task in self._tasks:
            task.cancel()
        idle = await self.core.wait_idle(max(0.1, (deadline - time.monotonic()) * 0.6))
        await self._close_storage(deadline)
        self.storage_watch.release()
        self.transport.close()
        self.http.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.http_task, max(0.1, deadline - time.monotonic()))
        stats = self.core.stats
        log.info(
            "relay_stopped",
            reason=self.stop_reason,
            in_flight_finished=idle,
            registrations=stats.registrations,
            messages_queued=stats.message_outcomes.get("queued", 0),
            duration_ms=round((time.monotonic() - began) * 1000),
        )

    async def _close_storage(self, deadline: float) -> None:
        try:
            await asyncio.wait_for(self.storage.close(), max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            log.error("storage_close_failed", error=str(exc) or type(exc).__name__)
