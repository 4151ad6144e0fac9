"""A socket-free relay core with phones around it, on a fake clock.

The core runs with the real SQLite storage in a temporary file; only the
network is simulated, by a list of the datagrams the core sends.
"""

import uuid

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.client.events import ChallengeReceived, SessionEstablished
from relay.client.identity import Identity
from relay.client.session import ClientSession
from relay.config import Settings
from relay.core.relay import RelayCore
from relay.protocol.codec import Message
from relay.storage import open_storage

START_MS = 1_800_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


class Network:
    """Collects what the core sends, per destination address."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def __call__(self, datagram: bytes, address: tuple[str, int]) -> None:
        self.sent.append((datagram, address))

    def take(self, address: tuple[str, int]) -> list[bytes]:
        mine = [data for data, to in self.sent if to == address]
        self.sent = [(data, to) for data, to in self.sent if to != address]
        return mine


class Phone:
    """A client session at one address, talking to the core directly."""

    def __init__(self, relay: "Relay", address: tuple[str, int], identity: Identity):
        self.relay = relay
        self.address = address
        self.identity = identity
        self.session = ClientSession(identity, relay.core.relay_public)

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    def send(self, datagram: bytes) -> None:
        self.relay.core.datagram_received(datagram, self.address)

    def inbox(self) -> list[bytes]:
        return self.relay.network.take(self.address)

    def events(self) -> list:
        events = [self.session.receive(datagram) for datagram in self.inbox()]
        return [event for event in events if event is not None]

    async def register(self) -> SessionEstablished:
        self.send(self.session.start_register())
        (challenge,) = self.events()
        assert isinstance(challenge, ChallengeReceived)
        self.send(challenge.register)
        await self.relay.settle()
        (established,) = self.events()
        assert isinstance(established, SessionEstablished)
        return established

    async def exchange(self, datagram: bytes) -> list:
        """Send a datagram, let storage work finish, return the events received."""
        self.send(datagram)
        await self.relay.settle()
        return self.events()

    def message(
        self, recipient: "Phone | str", payload: bytes = b"hi", **fields
    ) -> bytes:
        recipient_id = recipient if isinstance(recipient, str) else recipient.user_id
        message_id = fields.pop("message_id", str(uuid.uuid4()))
        ttl_s = fields.pop("ttl_s", 0)
        return self.session.message(Message(message_id, recipient_id, ttl_s, payload))


class Relay:
    """The core under test, its clock, its network and its storage."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = FakeClock()
        self.network = Network()
        self.storage = open_storage(settings)
        self.key = X25519PrivateKey.generate()
        self.core = RelayCore(
            settings, self.storage, self.key, self.network, self.clock
        )
        self._next_port = 40000

    async def open(self) -> "Relay":
        await self.storage.open()
        return self

    async def close(self) -> None:
        await self.core.wait_idle(5)
        await self.storage.close()

    async def settle(self) -> None:
        """Wait until every task the core started, and those they started, is done."""
        for _ in range(20):
            if not self.core._tasks:
                return
            await self.core.wait_idle(5)

    def phone(self, host: str = "127.0.0.1", identity: Identity | None = None) -> Phone:
        self._next_port += 1
        return Phone(self, (host, self._next_port), identity or Identity.generate())


def relay_settings(tmp_path, **overrides) -> Settings:
    values = {
        "database_url": f"sqlite://{tmp_path / 'relay.db'}",
        "max_connections": 100,
        "rate_ping_per_user": 1000,
    }
    values.update(overrides)
    return Settings(**values)
