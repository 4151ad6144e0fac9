"""Connections to the ops API that stall are closed, and the relay has room for them.

Runs uvicorn with the relay's HTTP protocol on loopback, with the
deadline shortened, and talks to it over real TCP sockets.
"""

import asyncio
import shutil
import socket
from pathlib import Path

import pytest
import uvicorn

from relay.server.http_protocol import DeadlineH11Protocol
from relay.testing import RelayProcess

DEADLINE_S = 0.3


class ShortDeadline(DeadlineH11Protocol):
    request_timeout_s = DEADLINE_S
    write_stall_timeout_s = DEADLINE_S

    def connection_made(self, transport):
        # Small kernel buffers, so that a response of a few dozen KiB stays
        # in the server's own buffer when the client does not read.
        transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        super().connection_made(transport)


LARGE_BODY = b"m" * 8 * 1024 * 1024
# Under the 64 KiB past which the transport pauses writing.
MEDIUM_BODY = b"d" * 40 * 1024


async def slow_app(scope, receive, send):
    if scope["path"] == "/large":
        body = LARGE_BODY
    elif scope["path"] == "/medium":
        body = MEDIUM_BODY
    else:
        # Slower than the deadline: a request being served must not be cut off.
        await asyncio.sleep(DEADLINE_S * 2)
        body = b"served"
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server_port():
    config = uvicorn.Config(
        slow_app,
        host="127.0.0.1",
        port=0,
        http=ShortDeadline,
        log_config=None,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    (listener,) = server.servers
    yield listener.sockets[0].getsockname()[1]
    server.should_exit = True
    await serving


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), seconds) == b""
    except TimeoutError:
        return False


async def test_partial_request_head_is_closed(server_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\n")
    await writer.drain()
    assert await closed_within(reader, DEADLINE_S * 5)
    writer.close()
    await writer.wait_closed()


async def test_silent_connection_is_closed(server_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    assert await closed_within(reader, DEADLINE_S * 5)
    writer.close()
    await writer.wait_closed()


async def test_trickled_request_body_is_closed(server_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    writer.write(
        b"GET /health HTTP/1.1\r\nHost: relay\r\nContent-Length: 100000\r\n\r\n"
    )
    closed = asyncio.create_task(closed_within(reader, DEADLINE_S * 10))
    while not closed.done():
        writer.write(b"x")
        await asyncio.sleep(DEADLINE_S / 3)
    # The body never finished, so the deadline passed before any response.
    assert closed.result()
    writer.close()


async def test_unread_response_ends_connection(server_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    writer.write(b"GET /large HTTP/1.1\r\nHost: relay\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(DEADLINE_S * 6)  # read nothing while the deadline passes
    received = 0
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 16), 5):
            received += len(chunk)
    except ConnectionResetError:
        pass
    assert received < len(LARGE_BODY)
    writer.close()


async def test_unread_response_under_pause_limit_ends_connection(server_port):
    # A plain socket: a stream reader would keep reading in the background.
    loop = asyncio.get_running_loop()
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", server_port))
        await loop.sock_sendall(client, b"GET /medium HTTP/1.1\r\nHost: relay\r\n\r\n")
        await asyncio.sleep(DEADLINE_S * 6)  # read nothing while the deadline passes
        received = 0
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(client, 1 << 16), 5):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert received < len(MEDIUM_BODY)


async def test_request_slower_than_deadline_is_served(server_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    for _ in range(2):
        writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"served"
    writer.close()
    await writer.wait_closed()


class LimitedRelay(RelayProcess):
    """A relay started with a soft limit of 1,024 open files and a hard one of 4,096."""

    def command(self) -> list[str]:
        return ["prlimit", "--nofile=1024:4096", *super().command()]


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit")
def test_relay_raises_open_files_limit(tmp_path):
    relay = LimitedRelay(tmp_path).start()
    try:
        limits = Path(f"/proc/{relay.pid}/limits").read_text()
        (line,) = [row for row in limits.splitlines() if "open files" in row]
        (started,) = relay.events("relay_started")
    finally:
        relay.stop()
    assert line.split()[3:5] == ["4096", "4096"]
    assert started["open_files_limit"] == 4096
