"""A relay core with real SQLite storage and two registered phones, run synchronously.

Fuzz targets call `FuzzRelay.feed` once per input; it runs the core and
every storage task the datagram started on a private event loop, on a fake
clock, and returns what the core sent. Logged warnings and errors are
collected, because the core turns a failing task into a log line, not an
exception.
"""

import asyncio
import tempfile
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.client.events import ChallengeReceived, SessionEstablished
from relay.client.identity import Identity
from relay.client.session import ClientSession
from relay.config import Settings
from relay.core.relay import RelayCore
from relay.core.session import Session
from relay.storage import open_storage

START_MS = 1_800_000_000_000
LOUD_LEVELS = frozenset({"warning", "warn", "error", "critical", "exception"})
# Storage tasks finish within a few loop turns; more rounds mean a task hangs.
SETTLE_ROUNDS = 50
# Each datagram moves the fake clock on, and the sweeps of a running relay
# (expired cookies, idle rate-limit entries) run every TICK_EVERY datagrams.
FEED_STEP_MS = 5
TICK_EVERY = 256
# A registration moves the clock further, so that the cookie ledger, which
# keeps every used cookie for its 30 s life, never fills up with the
# fuzzer's own registrations: 30 s hold at most 1,500 of them.
REGISTER_STEP_MS = 20


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms


class LogWatch:
    """A structlog processor that keeps warnings and errors and drops every event."""

    def __init__(self) -> None:
        self.loud: list[dict] = []

    def __call__(self, _logger: object, method_name: str, event: dict) -> dict:
        if method_name in LOUD_LEVELS:
            self.loud.append({"level": method_name, **event})
        raise structlog.DropEvent


class FuzzPhone:
    """A client session at a fixed source address."""

    def __init__(self, relay_public: bytes, port: int) -> None:
        self.identity = Identity.generate()
        self.session = ClientSession(self.identity, relay_public)
        self.address = ("127.0.0.1", port)

    @property
    def user_id(self) -> str:
        return self.identity.user_id


def fuzz_settings(directory: Path) -> Settings:
    """Return settings that let every input reach the code under test.

    Rate limits are out of the way, and quotas are small, so that the
    full-mailbox paths are reached too.
    """
    huge = 10_000_000
    return Settings(
        database_url=f"sqlite://{directory / 'relay.db'}",
        max_connections=1_000,
        max_payload_bytes=2_000,
        mailbox_max_messages=64,
        mailbox_max_bytes=64 * 1024,
        mailbox_max_per_sender=32,
        rate_register_per_ip=1_000_000,
        rate_unauthenticated_per_ip=huge,
        rate_message_per_user=huge,
        rate_poll_per_user=huge,
        rate_ack_per_user=huge,
        rate_ping_per_user=huge,
        replies_per_address_per_s=1_000_000,
        max_tracked_addresses=1_000,
    )


class FuzzRelay:
    """The core, its storage and its clock, on an event loop owned by this object."""

    def __init__(self, directory: Path | None = None) -> None:
        self._temporary: tempfile.TemporaryDirectory | None = None
        if directory is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="yaok-fuzz-")
            directory = Path(self._temporary.name)
        self.settings = fuzz_settings(directory)
        self.clock = FakeClock()
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.watch = LogWatch()
        self._saved_logging = structlog.get_config()
        structlog.configure(processors=[self.watch], cache_logger_on_first_use=False)
        self.loop = asyncio.new_event_loop()
        self.storage = open_storage(self.settings)
        self.loop.run_until_complete(self.storage.open())
        self.core = RelayCore(
            self.settings,
            self.storage,
            X25519PrivateKey.generate(),
            self._send,
            self.clock,
        )
        self._next_port = 20_000
        self.feeds = 0
        self.alice = self.new_phone()
        self.bob = self.new_phone()
        self.register(self.alice)
        self.register(self.bob)

    def _send(self, datagram: bytes, address: tuple[str, int]) -> None:
        self.sent.append((datagram, address))

    def new_phone(self) -> FuzzPhone:
        self._next_port += 1
        return FuzzPhone(self.core.relay_public, self._next_port)

    def fresh_address(self) -> tuple[str, int]:
        self._next_port = 20_000 + (self._next_port - 19_999) % 40_000
        return ("127.0.0.1", self._next_port)

    # --- driving the core -------------------------------------------------------------

    def feed(self, datagram: bytes, address: tuple[str, int]) -> list[bytes]:
        """Hand one datagram to the core and finish its storage work.

        Returns what the core sent to that address meanwhile.
        """
        self.sent.clear()
        self.clock.now_ms += FEED_STEP_MS
        self.feeds += 1
        if self.feeds % TICK_EVERY == 0:
            self.core.tick()
        self.loop.run_until_complete(self._feed(datagram, address))
        return [data for data, to in self.sent if to == address]

    async def _feed(self, datagram: bytes, address: tuple[str, int]) -> None:
        self.core.datagram_received(datagram, address)
        await self.settle()

    async def settle(self) -> None:
        for _ in range(SETTLE_ROUNDS):
            if not self.core._tasks:
                return
            await self.core.wait_idle(5)
        raise RuntimeError("storage tasks did not finish")

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def register(self, phone: FuzzPhone) -> SessionEstablished:
        self.clock.now_ms += REGISTER_STEP_MS
        replies = self.feed(phone.session.start_register(), phone.address)
        events = [phone.session.receive(data) for data in replies]
        challenges = [e for e in events if isinstance(e, ChallengeReceived)]
        if not challenges:
            raise RuntimeError(f"no CHALLENGE for {phone.user_id}: {events}")
        replies = self.feed(challenges[0].register, phone.address)
        events = [phone.session.receive(data) for data in replies]
        established = [e for e in events if isinstance(e, SessionEstablished)]
        if not established:
            raise RuntimeError(f"no REGISTERED for {phone.user_id}: {events}")
        return established[0]

    def live_session(self, phone: FuzzPhone) -> Session | None:
        return self.core.sessions.of_user(phone.user_id, self.clock())

    def ensure_registered(self, phone: FuzzPhone) -> Session:
        """Register the phone again when an input ended or replaced its session."""
        session = self.live_session(phone)
        if session is None or session.session_id != phone.session.session_id:
            phone.session = ClientSession(phone.identity, self.core.relay_public)
            self.register(phone)
            session = self.live_session(phone)
        assert session is not None
        return session

    def take_loud_logs(self) -> list[dict]:
        loud, self.watch.loud = self.watch.loud, []
        return loud

    def close(self) -> None:
        self.run(self.core.wait_idle(5))
        self.run(self.storage.close())
        self.loop.close()
        structlog.configure(**self._saved_logging)
        if self._temporary is not None:
            self._temporary.cleanup()
