"""Asyncio client of the relay over one UDP socket.

`RelayClient` wraps a `ClientSession` with the socket, the timers and the
retransmissions. Every request that expects a reply is sent again after
a timeout that doubles up to `max_timeout_s`, at most `tries` times, and
each retransmission of a session packet is sealed under a fresh counter.
"""

import asyncio
import logging
import random
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from relay.client.errors import (
    ClientClosed,
    NotRegistered,
    RelayClientError,
    RelayTimeout,
    registration_error,
)
from relay.client.events import (
    ChallengeReceived,
    DrainingReceived,
    EntryPushed,
    ErrorReceived,
    ErrorTarget,
    MessageAckReceived,
    PathChallengeReceived,
    PollResponseReceived,
    PongReceived,
    SessionErrorReceived,
    SessionEstablished,
    SessionEvent,
    UnregisteredReceived,
)
from relay.client.identity import Identity, check_uuid
from relay.client.inbox import Arrival, Inbox, MessageKey
from relay.client.session import ClientSession
from relay.protocol.codec import MESSAGE_OVERHEAD, Entry, Message, Pong
from relay.protocol.constants import (
    MAX_ACK_ENTRIES,
    MAX_DATAGRAM,
    UNREGISTER_ERASE,
    AckStatus,
    ErrorCode,
)
from relay.protocol.packets import client_packet_size

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A hook returns False to drop the datagram (to simulate loss); None or True
# lets it through.
SentHook = Callable[[bytes], bool | None]
ReceivedHook = Callable[[bytes, Any], bool | None]
ReceiptHook = Callable[[str], None]

# A mailbox drain sends at most this many POLLs in a row.
MAX_POLLS_PER_DRAIN = 100
# The keep-alive stops after this many failed pings in a row.
MAX_KEEPALIVE_FAILURES = 5
RECEIPT_MEMORY = 10_000
MAX_MESSAGE_PAYLOAD = MAX_DATAGRAM - client_packet_size(MESSAGE_OVERHEAD)


@dataclass(frozen=True, slots=True)
class PollResult:
    """A POLL_RESPONSE: `entries` as the relay sent them, duplicates included.

    The `new` entries not seen before also went to the inbox, so a caller
    reads either the inbox or these entries, not both. POLL returns the
    oldest unacknowledged messages, so polling again without acknowledging
    returns the same entries.
    """

    remaining: int
    entries: list[Entry]
    new: int


class _RelayEndpoint(asyncio.DatagramProtocol):
    def __init__(self, client: "RelayClient") -> None:
        self._client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._client._datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._client._socket_error(exc)


class RelayClient:
    """A phone's connection to one relay: register, send, receive, acknowledge.

    Incoming messages, pushed or polled, are read with `receive()` or
    `messages()`, each (sender_id, message_id) once. DELIVERED receipts are
    read with `next_receipt()` or passed to `on_receipt`. `on_datagram_sent`
    and `on_datagram_received` see every raw datagram and may drop it by
    returning False; `send_raw` transmits a datagram as it is.
    """

    def __init__(
        self,
        identity: Identity,
        relay_address: tuple[str, int],
        relay_public_key: bytes,
        *,
        timeout_s: float = 1.0,
        max_timeout_s: float = 4.0,
        tries: int = 5,
        keepalive_interval_s: float = 25.0,
        auto_poll: bool = True,
        poll_max_bytes: int = 0,
        reregister_interval_s: float = 5.0,
        dedup_capacity: int = 10_000,
        on_receipt: ReceiptHook | None = None,
        on_datagram_sent: SentHook | None = None,
        on_datagram_received: ReceivedHook | None = None,
    ) -> None:
        if timeout_s <= 0 or max_timeout_s < timeout_s or tries < 1:
            raise ValueError("need 0 < timeout_s <= max_timeout_s and tries >= 1")
        self.identity = identity
        self.relay_address = relay_address
        self._session = ClientSession(identity, relay_public_key)
        self._timeout_s = timeout_s
        self._max_timeout_s = max_timeout_s
        self._tries = tries
        self._keepalive_interval_s = keepalive_interval_s
        self._auto_poll = auto_poll
        self._poll_max_bytes = poll_max_bytes
        self._reregister_interval_s = reregister_interval_s
        self._on_receipt = on_receipt
        self.on_datagram_sent = on_datagram_sent
        self.on_datagram_received = on_datagram_received

        self._transport: asyncio.DatagramTransport | None = None
        self._closed = False
        self._last_socket_error: Exception | None = None
        # True from a successful register() until unregister() or close():
        # while it is, the client registers again after DRAINING or
        # UNKNOWN_SESSION.
        self._want_session = False
        self._established = asyncio.Event()
        self._last_register_at: float | None = None

        self._register_answer: asyncio.Future[SessionEstablished] | None = None
        self._send_answers: dict[str, asyncio.Future[AckStatus]] = {}
        self._poll_answers: deque[asyncio.Future[PollResult]] = deque()
        self._ping_answers: list[asyncio.Future[Pong]] = []
        self._unregister_answer: tuple[int, asyncio.Future[None]] | None = None

        self._register_task: asyncio.Task[SessionEstablished] | None = None
        self._reregister_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None

        self._inbox = Inbox(dedup_capacity)
        # The `remaining` of the latest POLL_RESPONSE.
        self._mailbox_remaining = 0
        self._receipts: asyncio.Queue[str | None] = asyncio.Queue()
        self._receipts_seen: OrderedDict[str, None] = OrderedDict()

    # --- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> "RelayClient":
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def session(self) -> ClientSession:
        """The socket-free session, for tests that seal or inspect packets."""
        return self._session

    @property
    def registered(self) -> bool:
        return self._session.established

    @property
    def local_address(self) -> Any:
        if self._transport is None:
            return None
        return self._transport.get_extra_info("sockname")

    async def open(self) -> None:
        """Open the UDP socket; register() does this too."""
        if self._closed:
            raise ClientClosed("client closed")
        if self._transport is None:
            self._transport = await self._open_endpoint()

    async def _open_endpoint(self) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        # A connected socket: the kernel passes on only the relay's datagrams.
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _RelayEndpoint(self), remote_addr=self.relay_address
        )
        return transport

    async def rebind(self) -> Pong:
        """Move to a new local port, as after a change of network, and ping at once.

        The relay follows the session to the new address and validates it
        with PATH_CHALLENGE, which this client answers by itself.
        """
        await self.open()
        old = self._transport
        self._transport = await self._open_endpoint()
        if old is not None:
            old.close()
        return await self.ping()

    async def close(self) -> None:
        """Stop background tasks, fail waiting calls and close the socket."""
        if self._closed:
            return
        self._closed = True
        self._want_session = False
        self._fail_answers(ClientClosed("client closed"))
        background = [
            task
            for task in (self._reregister_task, self._keepalive_task, self._drain_task)
            if task is not None and not task.done()
        ]
        for task in background:
            task.cancel()
        waiting = [*background]
        if self._register_task is not None and not self._register_task.done():
            waiting.append(self._register_task)
        await asyncio.gather(*waiting, return_exceptions=True)
        self._inbox.close()
        self._receipts.put_nowait(None)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _fail_answers(self, error: Exception) -> None:
        answers: list[asyncio.Future[Any]] = [
            *self._send_answers.values(),
            *self._poll_answers,
            *self._ping_answers,
        ]
        if self._register_answer is not None:
            answers.append(self._register_answer)
        if self._unregister_answer is not None:
            answers.append(self._unregister_answer[1])
        for answer in answers:
            if not answer.done():
                answer.set_exception(error)
                # Retrieved here so that an answer nobody awaits any more
                # does not log "exception was never retrieved".
                answer.exception()

    # --- registration -----------------------------------------------------------

    async def register(self) -> SessionEstablished:
        """Run the REGISTER handshake; return the new session's REGISTERED fields.

        Raises RelayOverloaded, RegistrationRateLimited, RegistrationForbidden,
        KeyConflict or RegistrationRejected when the relay rejects the
        REGISTER, and RelayTimeout when it does not answer. Concurrent calls
        share one handshake.
        """
        await self.open()
        task = self._register_task
        if task is None or task.done():
            task = asyncio.create_task(self._run_register())
            task.add_done_callback(_retrieve_exception)
            self._register_task = task
        return await asyncio.shield(task)

    async def _run_register(self) -> SessionEstablished:
        loop = asyncio.get_running_loop()
        self._last_register_at = loop.time()
        answer: asyncio.Future[SessionEstablished] = loop.create_future()
        self._register_answer = answer
        self._session.start_register()
        try:
            established = await self._retransmit_register(answer)
        finally:
            self._register_answer = None
            self._session.abandon_register()
        self._want_session = True
        self._established.set()
        logger.info(
            "registered user %s, session %s, %d pending",
            self.identity.user_id,
            established.session_id.hex(),
            established.pending,
        )
        self._start_keepalive()
        if established.pending and self._auto_poll:
            self._schedule_mailbox_drain()
        return established

    async def _retransmit_register(
        self, answer: asyncio.Future[SessionEstablished]
    ) -> SessionEstablished:
        # NOTE: the relay accepts a cookie for at most 30 s, so the default
        # schedule (1 + 2 + 4 + 4 + 4 s) ends well before that. A schedule
        # longer than 30 s can end in FORBIDDEN instead of a timeout.
        timeout = self._timeout_s
        for attempt in range(1, self._tries + 1):
            # The first REGISTER until a CHALLENGE arrives, then the signed one;
            # a retransmitted signed REGISTER gets the same REGISTERED again.
            datagram = self._session.handshake_datagram
            if datagram is not None:
                self._transmit(datagram)
            try:
                return await asyncio.wait_for(asyncio.shield(answer), timeout)
            except TimeoutError:
                logger.debug("REGISTER try %d timed out after %.1f s", attempt, timeout)
            timeout = min(timeout * 2, self._max_timeout_s)
        raise RelayTimeout(self._no_reply_message("REGISTER"))

    def _schedule_reregister(
        self, delay_s: float, reason: str, replace: bool = False
    ) -> None:
        """Register again after delay_s, unless a re-registration is already planned.

        With replace, a planned one is cancelled and this one takes its place.
        """
        if not self._want_session or self._closed:
            return
        task = self._reregister_task
        if task is not None and not task.done():
            if not replace:
                return
            task.cancel()
        requested_at = asyncio.get_running_loop().time()
        self._reregister_task = asyncio.create_task(
            self._reregister_after(delay_s, reason, requested_at)
        )

    async def _reregister_after(
        self, delay_s: float, reason: str, requested_at: float
    ) -> None:
        await asyncio.sleep(delay_s)
        if not self._want_session:
            return
        last = self._last_register_at
        if last is not None and last > requested_at and self._session.established:
            # A registration that started after the request already replaced
            # the session.
            return
        logger.info("registering again after %s", reason)
        try:
            await self.register()
        except RelayClientError as exc:
            logger.warning("registering again after %s failed: %s", reason, exc)

    def _reregister_soon(self, reason: str) -> None:
        """Register again, but at most once per reregister_interval_s."""
        now = asyncio.get_running_loop().time()
        last = self._last_register_at
        delay = (
            0.0 if last is None else max(0.0, last + self._reregister_interval_s - now)
        )
        self._schedule_reregister(delay, reason)

    # --- requests ----------------------------------------------------------------

    async def send(
        self,
        recipient_id: str,
        payload: bytes,
        ttl_s: int = 0,
        message_id: str | None = None,
    ) -> AckStatus:
        """Send one message and return the status of the first MESSAGE_ACK.

        QUEUED, DELIVERED and EXPIRED mean the relay has (or had) the
        message. Every other status is returned too: MAILBOX_FULL,
        RATE_LIMITED and UNAVAILABLE mean retry later with the same
        message_id. Raises RelayTimeout when no MESSAGE_ACK comes.
        """
        message = _checked_message(recipient_id, payload, ttl_s, message_id)
        answer = self._send_answers.get(message.message_id)
        if answer is None:
            answer = asyncio.get_running_loop().create_future()
            self._send_answers[message.message_id] = answer
        try:
            return await self._exchange(
                f"MESSAGE {message.message_id}",
                lambda: self._session.message(message),
                answer,
            )
        finally:
            if self._send_answers.get(message.message_id) is answer:
                del self._send_answers[message.message_id]

    async def poll(self, max_bytes: int = 0) -> PollResult:
        """Fetch the oldest waiting messages; max_bytes 0 means the relay's default."""
        if not 0 <= max_bytes <= 0xFFFF:
            raise ValueError(f"max_bytes must be 0 to 65535, got {max_bytes}")
        answer: asyncio.Future[PollResult] = asyncio.get_running_loop().create_future()
        self._poll_answers.append(answer)
        try:
            return await self._exchange(
                "POLL", lambda: self._session.poll(max_bytes), answer
            )
        finally:
            if answer in self._poll_answers:
                self._poll_answers.remove(answer)

    async def ack(self, keys: Iterable[MessageKey]) -> None:
        """Acknowledge (sender_id, message_id) pairs, in ACKs of at most 15.

        ACK has no answer, so nothing is retransmitted: if an ACK is lost,
        the relay delivers the message again and the client acknowledges it
        once more by itself.
        """
        unique = list(dict.fromkeys(keys))
        for sender_id, message_id in unique:
            check_uuid(sender_id, "sender id")
            check_uuid(message_id, "message id")
        if not unique:
            return
        if not await self._session_ready(self._max_timeout_s):
            raise RelayTimeout("no session to send the ACK on")
        self._inbox.mark_acknowledged(unique)
        self._send_acks(unique)
        # The acknowledged entries no longer fill the next POLL_RESPONSE.
        if self._mailbox_remaining > 0 and self._auto_poll:
            self._schedule_mailbox_drain()

    def _send_acks(self, keys: list[MessageKey]) -> None:
        for start in range(0, len(keys), MAX_ACK_ENTRIES):
            self._transmit(self._session.ack(keys[start : start + MAX_ACK_ENTRIES]))

    async def ping(self) -> Pong:
        """Send PING and return the PONG; a pending count above 0 starts a poll."""
        answer: asyncio.Future[Pong] = asyncio.get_running_loop().create_future()
        self._ping_answers.append(answer)
        try:
            return await self._exchange("PING", self._session.ping, answer)
        finally:
            if answer in self._ping_answers:
                self._ping_answers.remove(answer)

    async def unregister(self, erase: bool = False) -> None:
        """End the session; with erase the relay also deletes the user and mailbox."""
        self._want_session = False
        self._stop_background()
        flags = UNREGISTER_ERASE if erase else 0
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unregister_answer = (flags, answer)
        try:
            await self._exchange(
                "UNREGISTER", lambda: self._session.unregister(erase), answer
            )
        finally:
            self._unregister_answer = None
        self._established.clear()
        logger.info("unregistered user %s (erase=%s)", self.identity.user_id, erase)

    def send_raw(self, datagram: bytes) -> None:
        """Transmit a datagram as it is, through the on_datagram_sent hook."""
        self._transmit(datagram)

    async def _exchange(
        self, request_name: str, build: Callable[[], bytes], answer: asyncio.Future[T]
    ) -> T:
        timeout = self._timeout_s
        for attempt in range(1, self._tries + 1):
            if answer.done():
                return answer.result()
            if await self._session_ready(timeout):
                self._transmit(build())
                try:
                    return await asyncio.wait_for(asyncio.shield(answer), timeout)
                except TimeoutError:
                    logger.debug(
                        "%s try %d timed out after %.1f s",
                        request_name,
                        attempt,
                        timeout,
                    )
            timeout = min(timeout * 2, self._max_timeout_s)
        raise RelayTimeout(self._no_reply_message(request_name))

    async def _session_ready(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for a session; raise NotRegistered if none is coming."""
        if self._closed:
            raise ClientClosed("client closed")
        if self._session.established:
            return True
        if not self._registration_pending():
            raise NotRegistered("no session: call register() first")
        self._established.clear()
        try:
            await asyncio.wait_for(self._established.wait(), timeout_s)
        except TimeoutError:
            return False
        return self._session.established

    def _registration_pending(self) -> bool:
        tasks = (self._register_task, self._reregister_task)
        return any(task is not None and not task.done() for task in tasks)

    def _no_reply_message(self, request_name: str) -> str:
        host, port = self.relay_address[0], self.relay_address[1]
        text = (
            f"no reply from relay {host}:{port} to {request_name} "
            f"after {self._tries} tries"
        )
        if self._last_socket_error is not None:
            text += f" (last socket error: {self._last_socket_error})"
        return text

    # --- background work ------------------------------------------------------

    def _start_keepalive(self) -> None:
        if self._keepalive_interval_s <= 0:
            return
        if self._keepalive_task is None or self._keepalive_task.done():
            self._keepalive_task = asyncio.create_task(self._keepalive())

    async def _keepalive(self) -> None:
        # PING keeps the session and the NAT mapping alive; a PONG with
        # pending > 0 starts a mailbox drain in _on_pong.
        failures = 0
        while self._want_session and failures < MAX_KEEPALIVE_FAILURES:
            await asyncio.sleep(self._keepalive_interval_s)
            try:
                await self.ping()
            except NotRegistered:
                return
            except RelayClientError as exc:
                failures += 1
                logger.warning("keep-alive ping %d failed: %s", failures, exc)
            else:
                failures = 0
        if failures:
            logger.error(
                "keep-alive stopped after %d failed pings; call register() again",
                failures,
            )

    def _schedule_mailbox_drain(self) -> None:
        if self._closed:
            return
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.create_task(self._drain_mailbox())

    async def _drain_mailbox(self) -> None:
        # POLL returns the oldest unacknowledged messages. A response with
        # nothing new means that the application has not acknowledged the
        # last ones yet, and its ack() starts the next drain.
        for _ in range(MAX_POLLS_PER_DRAIN):
            try:
                result = await self.poll(self._poll_max_bytes)
            except RelayClientError as exc:
                logger.warning("polling the mailbox failed: %s", exc)
                return
            if result.remaining == 0 or result.new == 0:
                return

    def _stop_background(self) -> None:
        for task in (self._reregister_task, self._keepalive_task, self._drain_task):
            if (
                task is not None
                and not task.done()
                and task is not asyncio.current_task()
            ):
                task.cancel()

    # --- incoming messages and receipts ----------------------------------------

    async def receive(self, timeout_s: float | None = None) -> Entry:
        """Return the next new mailbox entry; raise TimeoutError or ClientClosed."""
        return await self._inbox.get(timeout_s)

    def receive_nowait(self) -> Entry | None:
        return self._inbox.get_nowait()

    async def messages(self) -> AsyncIterator[Entry]:
        """Yield new mailbox entries until the client closes."""
        while True:
            try:
                yield await self._inbox.get()
            except ClientClosed:
                return

    async def next_receipt(self, timeout_s: float | None = None) -> str:
        """Return the message_id of the next DELIVERED receipt; raise TimeoutError."""
        message_id = await asyncio.wait_for(self._receipts.get(), timeout_s)
        if message_id is None:
            self._receipts.put_nowait(None)
            raise ClientClosed("client closed")
        return message_id

    def _take_entries(self, entries: list[Entry]) -> int:
        """Queue new entries and acknowledge redelivered ones; return the new count."""
        new = 0
        acknowledged_again = []
        for entry in entries:
            arrival = self._inbox.add(entry)
            if arrival is Arrival.NEW:
                new += 1
            elif arrival is Arrival.ACKNOWLEDGED_DUPLICATE:
                acknowledged_again.append((entry.sender_id, entry.message_id))
        if acknowledged_again and self._session.established:
            logger.debug(
                "acknowledging %d redelivered messages", len(acknowledged_again)
            )
            self._send_acks(acknowledged_again)
        return new

    def _take_receipt(self, message_id: str) -> None:
        if message_id in self._receipts_seen:
            return
        self._receipts_seen[message_id] = None
        if len(self._receipts_seen) > RECEIPT_MEMORY:
            self._receipts_seen.popitem(last=False)
        if self._on_receipt is not None:
            self._on_receipt(message_id)
            return
        # Receipts nobody reads must not grow without bound: drop the oldest.
        if self._receipts.qsize() >= RECEIPT_MEMORY:
            self._receipts.get_nowait()
        self._receipts.put_nowait(message_id)

    # --- datagrams ----------------------------------------------------------------

    def _transmit(self, datagram: bytes) -> None:
        if (
            self.on_datagram_sent is not None
            and self.on_datagram_sent(datagram) is False
        ):
            return
        if self._transport is None:
            logger.debug("datagram not sent: socket closed")
            return
        self._transport.sendto(datagram)

    def _socket_error(self, exc: Exception) -> None:
        # On a connected UDP socket an ICMP port unreachable shows up here.
        self._last_socket_error = exc
        logger.debug("socket error: %s", exc)

    def _datagram_received(self, datagram: bytes, address: Any) -> None:
        hook = self.on_datagram_received
        if hook is not None and hook(datagram, address) is False:
            return
        event = self._session.receive(datagram)
        if event is not None:
            self._dispatch(event)

    def _dispatch(self, event: SessionEvent) -> None:
        match event:
            case ChallengeReceived(register=register):
                self._transmit(register)
            case SessionEstablished():
                _resolve(self._register_answer, event)
                self._established.set()
            case PongReceived():
                self._on_pong(event)
            case PathChallengeReceived(reply=reply):
                self._transmit(reply)
            case MessageAckReceived():
                self._on_message_ack(event)
            case EntryPushed(entry=entry):
                self._take_entries([entry])
            case PollResponseReceived(response=response):
                self._on_poll_response(response.remaining, response.entries)
            case UnregisteredReceived(flags=flags):
                self._on_unregistered(flags)
            case DrainingReceived(retry_after_ms=retry_after_ms):
                self._on_draining(retry_after_ms)
            case SessionErrorReceived():
                self._on_session_error(event)
            case ErrorReceived():
                self._on_plain_error(event)

    def _on_pong(self, event: PongReceived) -> None:
        pong = Pong(event.server_time_ms, event.pending)
        for answer in self._ping_answers:
            _resolve(answer, pong)
        if event.pending > 0 and self._auto_poll:
            self._schedule_mailbox_drain()

    def _on_message_ack(self, event: MessageAckReceived) -> None:
        _resolve(self._send_answers.get(event.message_id), event.status)
        if event.status is AckStatus.DELIVERED:
            self._take_receipt(event.message_id)

    def _on_poll_response(self, remaining: int, entries: list[Entry]) -> None:
        self._mailbox_remaining = remaining
        result = PollResult(remaining, entries, self._take_entries(entries))
        # A POLL_RESPONSE names no POLL, so it answers the oldest one waiting.
        while self._poll_answers:
            answer = self._poll_answers.popleft()
            if not answer.done():
                answer.set_result(result)
                break

    def _on_unregistered(self, flags: int) -> None:
        self._established.clear()
        if self._unregister_answer is not None:
            expected_flags, answer = self._unregister_answer
            if flags == expected_flags:
                _resolve(answer, None)

    def _on_draining(self, retry_after_ms: int) -> None:
        delay_s = random.uniform(retry_after_ms, 2 * retry_after_ms) / 1000
        logger.info("relay draining; registering again in %.1f s", delay_s)
        # DRAINING wins over an earlier, sooner plan to register again,
        # because the draining relay would answer OVERLOADED.
        self._schedule_reregister(delay_s, "DRAINING", replace=True)

    def _on_session_error(self, event: SessionErrorReceived) -> None:
        if event.code == ErrorCode.UNKNOWN_SESSION:
            self._reregister_soon("SESSION_ERROR UNKNOWN_SESSION")
            return
        logger.warning("relay sent SESSION_ERROR %#06x: %s", event.code, event.text)

    def _on_plain_error(self, event: ErrorReceived) -> None:
        if event.target is ErrorTarget.REGISTER:
            answer = self._register_answer
            if answer is not None and not answer.done():
                answer.set_exception(registration_error(event.code, event.text))
            return
        if event.code == ErrorCode.UNKNOWN_SESSION:
            self._reregister_soon("UNKNOWN_SESSION")
            return
        logger.warning(
            "relay sent ERROR %#06x for packet %s: %s",
            event.code,
            event.counter,
            event.text,
        )


def _checked_message(
    recipient_id: str, payload: bytes, ttl_s: int, message_id: str | None
) -> Message:
    check_uuid(recipient_id, "recipient id")
    message_id = message_id if message_id is not None else str(uuid.uuid4())
    check_uuid(message_id, "message id")
    if not 0 <= ttl_s <= 0xFFFFFFFF:
        raise ValueError(f"ttl_s must be 0 to {0xFFFFFFFF}, got {ttl_s}")
    if len(payload) > MAX_MESSAGE_PAYLOAD:
        raise ValueError(
            f"payload of {len(payload)} bytes does not fit one datagram "
            f"(at most {MAX_MESSAGE_PAYLOAD})"
        )
    return Message(message_id, recipient_id, ttl_s, bytes(payload))


def _resolve(answer: asyncio.Future[T] | None, value: T) -> None:
    if answer is not None and not answer.done():
        answer.set_result(value)


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
