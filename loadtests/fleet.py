"""Simulated phones: one UDP socket each, speaking protocol v1 through ClientSession.

A phone's socket is connected to the relay, so every datagram it receives
comes from the relay and is handed to the phone's `handler`. By default the
fleet decodes it with the reference client's `ClientSession` and reacts as a
phone would: it answers CHALLENGE and PATH_CHALLENGE, acknowledges pushed
and polled messages, polls while messages wait, registers again after
UNKNOWN_SESSION, and records every message's fate in the ledger.
"""

import asyncio
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable

from loadtests.ledger import Ledger
from loadtests.timeline import Timeline
from relay.client.events import (
    ChallengeReceived,
    DrainingReceived,
    EntryPushed,
    ErrorReceived,
    MessageAckReceived,
    PathChallengeReceived,
    PollResponseReceived,
    PongReceived,
    SessionErrorReceived,
    SessionEstablished,
    UnregisteredReceived,
)
from relay.client.identity import Identity
from relay.client.session import ClientSession
from relay.protocol.codec import Message
from relay.protocol.constants import MAX_ACK_ENTRIES, AckStatus, ErrorCode

Address = tuple[str, int]
SOCKET_BUFFER_BYTES = 1 << 20
# The reference client's longest wait between tries of a handshake step.
MAX_RETRY_S = 4.0
# Socket opening runs in slices so that replies keep flowing meanwhile.
OPEN_SLICE = 256


class Endpoint(asyncio.DatagramProtocol):
    """A connected UDP socket whose datagrams go to a replaceable handler."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.handler: Callable[[bytes], None] = _ignore
        self.send_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.handler(data)

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1

    def send(self, datagram: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(datagram)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def _ignore(data: bytes) -> None:
    return None


async def open_endpoints(
    endpoints: Iterable[Endpoint], remote: Address
) -> list[Endpoint]:
    """Bind each endpoint to its own loopback port, connected to `remote`."""
    loop = asyncio.get_running_loop()
    opened = []
    for index, endpoint in enumerate(endpoints):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        sock.bind(("127.0.0.1", 0))
        sock.connect(remote)
        sock.setblocking(False)
        await loop.create_datagram_endpoint(lambda e=endpoint: e, sock=sock)
        opened.append(endpoint)
        if index % OPEN_SLICE == OPEN_SLICE - 1:
            await asyncio.sleep(0)
    return opened


class Phone(Endpoint):
    """One simulated phone: an identity, a client session and a socket."""

    def __init__(self, fleet: "Fleet", identity: Identity) -> None:
        super().__init__()
        self.fleet = fleet
        self.identity = identity
        self.user_id = identity.user_id
        self.session = ClientSession(identity, fleet.relay_public_key)
        self.handler = self.on_datagram
        self.register_started = 0.0
        self.registered_at = 0.0
        self.handshake_sent_at = 0.0
        self.handshake_tries = 1  # sends of the current handshake step
        self.register_attempts = 0
        self.wants_session = False  # registers again after UNKNOWN_SESSION
        self.drains = True  # polls while messages wait
        self.polling = False
        self.unacked: list[tuple[str, str]] = []

    @property
    def established(self) -> bool:
        return self.session.established and self.registered_at > 0

    def on_datagram(self, data: bytes) -> None:
        event = self.session.receive(data)
        if event is not None:
            self.fleet.on_event(self, event)

    def start_register(self) -> None:
        self.wants_session = True
        self.registered_at = 0.0
        self.register_attempts += 1
        now = time.perf_counter()
        self.register_started = self.register_started or now
        self.handshake_sent_at = now
        self.handshake_tries = 1
        self.send(self.session.start_register())

    def flush_acks(self) -> None:
        while self.unacked:
            chunk = self.unacked[:MAX_ACK_ENTRIES]
            del self.unacked[:MAX_ACK_ENTRIES]
            self.send(self.session.ack(chunk))


class Fleet:
    """Every phone of a run, the ledger of their messages and the run's timeline."""

    def __init__(
        self,
        relay_address: Address,
        relay_public_key: bytes,
        timeline: Timeline,
        ledger: Ledger | None = None,
    ) -> None:
        self.relay_address = relay_address
        self.relay_public_key = relay_public_key
        self.timeline = timeline
        self.ledger = ledger or Ledger()
        self.phones: list[Phone] = []
        self.by_user: dict[str, Phone] = {}
        self.events: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        # Messages sent and not answered yet: message_id to (phone, message, sent).
        self.unanswered: dict[str, tuple[Phone, Message, float]] = {}
        self.on_answer: Callable[[Phone, MessageAckReceived], None] | None = None
        self.on_delivery: Callable[[Phone, str], None] | None = None
        self.ack_pushes_at_once = True

    def outcome(self) -> dict:
        """Return the fates of the run's messages and the errors seen, for a summary."""
        return {"ledger": self.ledger.report().as_dict(), "errors": dict(self.errors)}

    # --- phones and sockets ------------------------------------------------------

    def make_phones(self, identities: Iterable[Identity]) -> list[Phone]:
        made = [Phone(self, identity) for identity in identities]
        self.phones.extend(made)
        for phone in made:
            self.by_user[phone.user_id] = phone
        return made

    async def connect(self, phones: list[Phone]) -> None:
        await open_endpoints(phones, self.relay_address)

    async def roam(self, phone: Phone) -> None:
        """Move a phone to a new source port, as a change of network does."""
        phone.close()
        await open_endpoints([phone], self.relay_address)
        phone.send(phone.session.ping())

    async def roam_back(self, phone: Phone) -> None:
        """Bring a phone that dropped out back from a new port: it registers again."""
        phone.close()
        await open_endpoints([phone], self.relay_address)
        phone.register_started = 0.0
        phone.start_register()

    def close(self) -> None:
        for phone in self.phones:
            phone.close()

    # --- registration ------------------------------------------------------------

    async def register(
        self,
        phones: list[Phone],
        timeout_s: float,
        retry_s: float = 1.0,
        progress: Callable[[int], None] | None = None,
        slice_size: int = 500,
    ) -> list[Phone]:
        """Register phones, as fast as the relay answers; return those still waiting.

        A handshake that gets no answer within retry_s is sent again, and
        the wait doubles up to MAX_RETRY_S after each try, as the reference
        client does, until timeout_s has passed since the first one.
        """
        deadline = time.perf_counter() + timeout_s
        for start in range(0, len(phones), slice_size):
            for phone in phones[start : start + slice_size]:
                phone.start_register()
            await asyncio.sleep(0)
        waiting = [p for p in phones if not p.established]
        reported = len(phones) - len(waiting)
        while waiting and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            for phone in waiting:
                if phone.established:
                    continue
                wait_s = min(retry_s * 2 ** (phone.handshake_tries - 1), MAX_RETRY_S)
                if now - phone.handshake_sent_at > wait_s:
                    self._retry_handshake(phone, now)
            waiting = [p for p in waiting if not p.established]
            done = len(phones) - len(waiting)
            if progress is not None and done > reported:
                progress(done - reported)
                reported = done
        return waiting

    def _retry_handshake(self, phone: Phone, now: float) -> None:
        datagram = phone.session.handshake_datagram
        phone.handshake_sent_at = now
        phone.handshake_tries += 1
        if datagram is None:
            phone.start_register()
            return
        self.events["register_retransmitted"] += 1
        phone.send(datagram)

    # --- messages ------------------------------------------------------------------

    def send_message(
        self, sender: Phone, recipient_id: str, payload: bytes, message_id: str = ""
    ) -> str:
        message = Message(message_id or str(uuid.uuid4()), recipient_id, 0, payload)
        self.ledger.sent(message.message_id, sender.user_id, recipient_id)
        self.unanswered[message.message_id] = (sender, message, time.perf_counter())
        sender.send(sender.session.message(message))
        self.timeline.count("message_sent")
        return message.message_id

    def retransmit_unanswered(self, older_than_s: float, max_attempts: int) -> int:
        """Send again the messages that got no MESSAGE_ACK; return how many."""
        now = time.perf_counter()
        resent = 0
        for message_id, (phone, message, sent) in list(self.unanswered.items()):
            if now - sent < older_than_s or not phone.established:
                continue
            fate = self.ledger.fates[message_id]
            if fate.attempts >= max_attempts:
                continue
            fate.attempts += 1
            self.unanswered[message_id] = (phone, message, now)
            phone.send(phone.session.message(message))
            resent += 1
        self.events["message_retransmitted"] += resent
        return resent

    def poll(self, phone: Phone, max_bytes: int = 0) -> None:
        phone.polling = True
        phone.send(phone.session.poll(max_bytes))

    # --- events ----------------------------------------------------------------------

    def on_event(self, phone: Phone, event: object) -> None:
        kind = type(event)
        if kind is MessageAckReceived:
            self._on_message_ack(phone, event)  # type: ignore[arg-type]
        elif kind is EntryPushed:
            self._on_entry(phone, event.entry.sender_id, event.entry.message_id)  # type: ignore[attr-defined]
            if self.ack_pushes_at_once:
                phone.flush_acks()
        elif kind is PollResponseReceived:
            self._on_poll_response(phone, event)  # type: ignore[arg-type]
        elif kind is PongReceived:
            self.timeline.count("pong")
            if event.pending and phone.drains and not phone.polling:  # type: ignore[attr-defined]
                self.poll(phone, self.poll_bytes)
        elif kind is ChallengeReceived:
            phone.handshake_sent_at = time.perf_counter()
            phone.handshake_tries = 1
            phone.send(event.register)  # type: ignore[attr-defined]
        elif kind is SessionEstablished:
            self._on_established(phone, event)  # type: ignore[arg-type]
        elif kind is PathChallengeReceived:
            self.events["path_challenge"] += 1
            phone.send(event.reply)  # type: ignore[attr-defined]
        elif kind is ErrorReceived:
            self._on_error(phone, event)  # type: ignore[arg-type]
        elif kind is DrainingReceived:
            self.events["draining"] += 1
        elif kind is UnregisteredReceived:
            self.events["unregistered"] += 1
            phone.registered_at = 0.0
        elif kind is SessionErrorReceived:
            self.errors[f"session_error_{event.code:#06x}"] += 1  # type: ignore[attr-defined]

    poll_bytes = 0

    def _on_established(self, phone: Phone, event: SessionEstablished) -> None:
        now = time.perf_counter()
        phone.registered_at = now
        phone.polling = False
        self.timeline.count("registered")
        self.timeline.latency("register", now - phone.register_started)
        phone.register_started = 0.0
        if event.pending and phone.drains:
            self.poll(phone, self.poll_bytes)

    def _on_message_ack(self, phone: Phone, event: MessageAckReceived) -> None:
        status = event.status
        fate = self.ledger.answered(event.message_id, status)
        if fate is None:
            self.errors["ack_for_unknown_message"] += 1
            return
        if status != AckStatus.DELIVERED:
            self.unanswered.pop(event.message_id, None)
        if status == AckStatus.QUEUED:
            self.timeline.count("queued")
            if fate.queued_at - fate.sent_at >= 0:
                self.timeline.latency(
                    "message_to_queued", fate.queued_at - fate.sent_at
                )
        elif status == AckStatus.DELIVERED:
            self.timeline.count("receipt")
        else:
            self.timeline.count(f"answer_{status.name.lower()}")
        if self.on_answer is not None:
            self.on_answer(phone, event)

    def _on_entry(self, phone: Phone, sender_id: str, message_id: str) -> None:
        phone.unacked.append((sender_id, message_id))
        fate = self.ledger.delivered(message_id, phone.user_id)
        if fate is not None and fate.delivered_at and fate.sent_at:
            self.timeline.count("delivered")
            self.timeline.latency(
                "message_to_delivered", fate.delivered_at - fate.sent_at
            )
        if self.on_delivery is not None:
            self.on_delivery(phone, message_id)

    def _on_poll_response(self, phone: Phone, event: PollResponseReceived) -> None:
        response = event.response
        self.timeline.count("poll_response")
        for entry in response.entries:
            self._on_entry(phone, entry.sender_id, entry.message_id)
        phone.flush_acks()
        if response.remaining or response.entries:
            self.poll(phone, self.poll_bytes)
        else:
            phone.polling = False

    def _on_error(self, phone: Phone, event: ErrorReceived) -> None:
        self.errors[ErrorCode(event.code).name.lower()] += 1
        if event.code == ErrorCode.UNKNOWN_SESSION and phone.wants_session:
            if phone.session.registering:
                return
            phone.registered_at = 0.0
            phone.start_register()
        elif event.code in (ErrorCode.OVERLOADED, ErrorCode.FORBIDDEN):
            # The handshake failed; the retry timer starts a fresh one.
            phone.session.abandon_register()
