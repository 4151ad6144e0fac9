"""The UDP endpoint: moves datagrams between the socket and the core, nothing else."""

import asyncio
import socket
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("relay.udp")

# A larger kernel buffer absorbs bursts (a registration storm after a
# deploy) while the loop is busy; the kernel caps it at net.core.rmem_max.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
_ERROR_LOG_INTERVAL_S = 10.0


class BindError(Exception):
    """A listening socket could not be opened; the message is one line."""


def bind_socket(
    host: str, port: int, kind: socket.SocketKind, setting: str
) -> socket.socket:
    """Open and bind a socket, or raise BindError naming the setting to change."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
        sock = socket.socket(family, kind)
    except OSError as exc:
        raise BindError(f"cannot resolve {host}:{port} ({setting}): {exc}") from None
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise BindError(f"cannot bind {host}:{port} ({setting}): {reason}") from None
    sock.setblocking(False)
    return sock


class RelayDatagramProtocol(asyncio.DatagramProtocol):
    """Hands each datagram to a handler with its (host, port) source address."""

    def __init__(self, handler: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None
        self.send_errors = 0
        self.handler_errors = 0
        self._last_error_log = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            self.handler(data, addr[:2])
        except Exception:
            # A bug must cost one datagram, not the endpoint; log it at a
            # bounded rate so a crafted flood cannot fill the disk.
            self.handler_errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                log.exception("datagram_handler_failed", total=self.handler_errors)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for phones that went away arrive here; they are routine.
        self.send_errors += 1
        log.debug("udp_error", error=str(exc))

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, address)
