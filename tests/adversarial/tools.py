"""Tools of the attacks: raw sockets on any loopback address, forged REGISTERs, metrics.

Loopback is the whole 127.0.0.0/8, so a test can send from thousands of
distinct source addresses on one machine.
"""

import selectors
import socket
import time
from collections.abc import Iterable, Iterator

from prometheus_client.parser import text_string_to_metric_families

from relay.client.identity import Identity
from relay.protocol import codec
from relay.protocol.constants import (
    HEADER_SIZE,
    REGISTER_SIGNATURE_CONTEXT,
    REGISTER_SIZE,
    SIGNATURE_SIZE,
    PacketType,
)
from relay.testing import RelayProcess

MAX_DATAGRAM = 70_000


def loopback_addresses(count: int, first: int = 2) -> Iterator[str]:
    """Yield count distinct addresses 127.x.y.z, skipping 127.0.0.1."""
    for number in range(first, first + count):
        yield f"127.{(number >> 16) & 0xFF}.{(number >> 8) & 0xFF}.{number & 0xFF}"


def bind_udp(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def receive_all(
    sock: socket.socket, quiet_s: float = 0.1, first_s: float = 2.0
) -> list[bytes]:
    """Return the datagrams that arrive within first_s, then until quiet_s is quiet."""
    return collect({0: sock}, quiet_s, first_s)[0]


def collect(
    sockets: dict, quiet_s: float, first_s: float | None = None, limit_s: float = 10.0
) -> dict:
    """Read every socket until none receives for quiet_s; return datagrams by key.

    The first wait lasts first_s (default quiet_s), to allow for the relay's
    first answer.
    """
    received: dict = {key: [] for key in sockets}
    wait_s = quiet_s if first_s is None else first_s
    # The phones' sockets block with a timeout; draining needs them not to.
    timeouts = {key: sock.gettimeout() for key, sock in sockets.items()}
    with selectors.DefaultSelector() as selector:
        for key, sock in sockets.items():
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, key)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            ready = selector.select(wait_s)
            wait_s = quiet_s
            if not ready:
                break
            for selected, _ in ready:
                received[selected.data].extend(_drain(selected.fileobj))
    for key, sock in sockets.items():
        sock.settimeout(timeouts[key])
    return received


def _drain(sock: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            data, _ = sock.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            return
        yield data


def error_code(datagram: bytes) -> int:
    assert datagram[1] == PacketType.ERROR, datagram.hex()
    return codec.decode_error(datagram[HEADER_SIZE:]).code


def register_datagram(
    identity: Identity,
    ce_public: bytes,
    cookie: bytes,
    signature: bytes = bytes(SIGNATURE_SIZE),
    user_id: str | None = None,
    ed25519_public: bytes | None = None,
) -> bytes:
    register = codec.Register(
        user_id or identity.user_id,
        identity.x25519_public,
        ed25519_public if ed25519_public is not None else identity.ed25519_public,
        ce_public,
        cookie,
        signature,
    )
    return codec.pack_header(
        PacketType.REGISTER, REGISTER_SIZE
    ) + codec.encode_register(register)


def signed_part(datagram: bytes) -> bytes:
    """Return the header and payload fields a REGISTER signature covers."""
    return datagram[: len(datagram) - SIGNATURE_SIZE]


def sign_register(identity: Identity, relay_public: bytes, datagram: bytes) -> bytes:
    """Return the REGISTER with a valid signature by identity."""
    message = REGISTER_SIGNATURE_CONTEXT + relay_public + signed_part(datagram)
    return signed_part(datagram) + identity.signing_key.sign(message)


def scrape(relay: RelayProcess) -> dict[tuple[str, tuple], float]:
    """Return every sample of /metrics by (name, sorted labels)."""
    status, body, _ = relay.http_get("/metrics", {"Accept": "text/plain"})
    assert status == 200, status
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def table_sizes(relay: RelayProcess) -> dict[str, tuple[float, float]]:
    """Return (entries, capacity) of each in-memory table, from /metrics."""
    samples = scrape(relay)
    sizes = {}
    for (name, labels), value in samples.items():
        if name == "relay_table_entries":
            table = dict(labels)["table"]
            sizes[table] = (value, metric(samples, "relay_table_capacity", table=table))
    return sizes


def peak_memory_kib(pid: int) -> int:
    """Return the process's peak resident memory (VmHWM) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


def send_all(sock: socket.socket, datagrams: Iterable[bytes], address) -> int:
    sent = 0
    for datagram in datagrams:
        sock.sendto(datagram, address)
        sent += len(datagram)
    return sent
