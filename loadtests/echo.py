"""The smallest uvloop UDP server: every datagram goes straight back to its sender.

It is the ceiling for any Python datagram server on this machine: the relay
does all this plus its own work. Run by the harness as a separate process
(`python -m loadtests.echo`), which prints its port and exits by itself
after --max-seconds.
"""

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys

import uvloop

RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # the relay asks for the same


class EchoProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def serve(max_seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    sock.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(EchoProtocol, sock=sock)
    print(sock.getsockname()[1], flush=True)
    try:
        await asyncio.sleep(max_seconds)
    finally:
        transport.close()


class EchoProcess:
    """The echo server as a child process, started and stopped by the harness."""

    def __init__(self, max_seconds: float = 600.0) -> None:
        self.max_seconds = max_seconds
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> "EchoProcess":
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtests.echo",
                "--max-seconds",
                str(self.max_seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"echo server did not start: {line!r}")
        self.port = int(line)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--max-seconds", type=float, default=600.0, help="exit after this many seconds"
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.max_seconds))


if __name__ == "__main__":
    main()
