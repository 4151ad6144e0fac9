"""A flood of hostile datagrams from many loopback source addresses, as its own process.

    python -m tests.adversarial.flooder HOST PORT RELAY_KEY_HEX --seconds S
        [--rate N] [--sybil]

Without --sybil it sends, at N datagrams a second or as fast as one process
can (N = 0, the default), a mix of first
REGISTERs, signed REGISTERs with forged cookies, session packets with
guessed session ids and random garbage, rotating its source address over
127.2.0.0 upwards. With --sybil it completes real registrations of fresh
user ids, each from a new source address, to fill the session table and
the cookie ledger. It stops after S seconds or MAX_DATAGRAMS datagrams and
prints one JSON line: datagrams and bytes sent, bytes received, addresses used.
"""

import argparse
import itertools
import json
import os
import random
import socket
import time

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.client.events import ChallengeReceived
from relay.client.identity import Identity
from relay.client.session import ClientSession
from relay.protocol.constants import COOKIE_SIZE, PacketType
from relay.protocol.crypto import new_aead, x25519_public_bytes
from relay.protocol.packets import seal_client_packet
from tests.adversarial.tools import (
    loopback_addresses,
    register_datagram,
    sign_register,
)

MAX_DATAGRAMS = 5_000_000
POOL_SOCKETS = 256
# A socket moves to a fresh source address after this many datagrams.
DATAGRAMS_PER_ADDRESS = 8
PREBUILT = 500


def hostile_datagrams(relay_public: bytes) -> list[bytes]:
    """Build the flood's datagrams of every kind once, before the flood starts."""
    rng = random.Random(7)
    pool = []
    for _ in range(PREBUILT):
        identity = Identity.generate()
        ce_public = x25519_public_bytes(X25519PrivateKey.generate())
        pool.append(register_datagram(identity, ce_public, bytes(COOKIE_SIZE)))
        forged = register_datagram(identity, ce_public, os.urandom(COOKIE_SIZE))
        pool.append(sign_register(identity, relay_public, forged))
        kind = rng.choice((PacketType.PING, PacketType.MESSAGE, PacketType.POLL))
        pool.append(
            seal_client_packet(
                new_aead(os.urandom(32)),
                kind,
                os.urandom(16),
                1,
                os.urandom(rng.randrange(80)),
            )
        )
        garbage = bytes((rng.randrange(256), rng.randrange(256))) + os.urandom(
            rng.randrange(1400)
        )
        pool.append(garbage)
    rng.shuffle(pool)
    return pool


class SocketPool:
    """Sockets bound to ever new loopback addresses; counts the bytes that come back."""

    def __init__(self) -> None:
        self.addresses = loopback_addresses(16_000_000, first=0x020000)
        self.used = 0
        self.received = 0
        self.sockets = [self._bind() for _ in range(POOL_SOCKETS)]

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((next(self.addresses), 0))
        sock.setblocking(False)
        self.used += 1
        return sock

    def renew(self, index: int) -> None:
        self.drain(index)
        self.sockets[index].close()
        self.sockets[index] = self._bind()

    def drain(self, index: int) -> None:
        while True:
            try:
                self.received += len(self.sockets[index].recv(70_000))
            except BlockingIOError:
                return

    def close(self) -> None:
        for index in range(len(self.sockets)):
            self.drain(index)
            self.sockets[index].close()


def flood(
    target: tuple[str, int], relay_public: bytes, seconds: float, rate: int
) -> dict:
    pool = hostile_datagrams(relay_public)
    sockets = SocketPool()
    sent = sent_bytes = dropped_locally = passes = 0
    started = time.monotonic()
    deadline = started + seconds
    datagrams = itertools.cycle(pool)
    while sent < MAX_DATAGRAMS and time.monotonic() < deadline:
        for index in range(POOL_SOCKETS):
            datagram = next(datagrams)
            try:
                sockets.sockets[index].sendto(datagram, target)
            except BlockingIOError:
                dropped_locally += 1
                continue
            sent += 1
            sent_bytes += len(datagram)
        passes += 1
        if passes % DATAGRAMS_PER_ADDRESS == 0:
            for index in range(POOL_SOCKETS):
                sockets.renew(index)
        if rate:
            ahead_s = sent / rate - (time.monotonic() - started)
            if ahead_s > 0:
                time.sleep(ahead_s)
    time.sleep(0.5)  # the last answers
    sockets.close()
    return {
        "datagrams": sent,
        "bytes_sent": sent_bytes,
        "bytes_received": sockets.received,
        "source_addresses": sockets.used,
        "not_sent_buffer_full": dropped_locally,
    }


def sybil(target: tuple[str, int], relay_public: bytes, seconds: float, _: int) -> dict:
    """Complete registrations of fresh user ids, each from a new address."""
    addresses = loopback_addresses(1_000_000, first=0x400000)
    registered = refused = lost = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and registered + refused + lost < MAX_DATAGRAMS:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((next(addresses), 0))
        sock.settimeout(0.5)
        try:
            outcome = _register_once(sock, target, relay_public)
        finally:
            sock.close()
        registered += outcome == "registered"
        refused += outcome == "refused"
        lost += outcome == "lost"
    return {"registered": registered, "refused": refused, "lost": lost}


def _register_once(sock: socket.socket, target, relay_public: bytes) -> str:
    session = ClientSession(Identity.generate(), relay_public)
    sock.sendto(session.start_register(), target)
    try:
        event = session.receive(sock.recv(70_000))
        if not isinstance(event, ChallengeReceived):
            return "refused"
        sock.sendto(event.register, target)
        reply = sock.recv(70_000)
    except TimeoutError:
        return "lost"
    return "registered" if reply[1] == PacketType.REGISTERED else "refused"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("relay_key_hex")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument(
        "--rate", type=int, default=0, help="datagrams a second; 0: max"
    )
    parser.add_argument("--sybil", action="store_true")
    arguments = parser.parse_args()
    target = (arguments.host, arguments.port)
    relay_public = bytes.fromhex(arguments.relay_key_hex)
    run = sybil if arguments.sybil else flood
    report = run(target, relay_public, arguments.seconds, arguments.rate)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
