"""Socket-free client side of protocol v1.

`ClientSession` takes relay datagrams and returns events, and builds the
datagrams a client sends. It does no I/O and reads no clock, so the caller
owns the socket, the timers and every retransmission. One object lives as
long as the client: each `start_register` begins a fresh handshake, and the
previous session stays usable until the new REGISTERED arrives.
"""

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from relay.client.errors import NotRegistered
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
from relay.client.identity import Identity
from relay.protocol.codec import (
    DecodeError,
    Message,
    Register,
    decode_challenge,
    decode_draining,
    decode_entry,
    decode_error,
    decode_message_ack,
    decode_path_challenge,
    decode_poll_response,
    decode_pong,
    decode_registered_body,
    decode_session_error,
    decode_unregister,
    encode_ack,
    encode_message,
    encode_poll,
    encode_register,
    encode_unregister,
    pack_header,
    unpack_header,
)
from relay.protocol.constants import (
    COUNTER_SIZE,
    ECHO_SIZE,
    HEADER_SIZE,
    KEY_SIZE,
    PATH_NONCE_SIZE,
    REGISTER_SIZE,
    SIGNATURE_SIZE,
    UNREGISTER_ERASE,
    VERSION,
    ZERO_COOKIE,
    PacketType,
)
from relay.protocol.crypto import (
    CryptoError,
    derive_session_keys,
    is_low_order_x25519,
    new_aead,
    register_signed_message,
    x25519,
    x25519_public_bytes,
)
from relay.protocol.packets import (
    PacketRejected,
    open_registered,
    open_relay_packet,
    registered_plain_fields,
    seal_client_packet,
)
from relay.protocol.replay import ReplayWindow

logger = logging.getLogger(__name__)

MAX_COUNTER = 2**64 - 1
# How many recently sent session packets a plain ERROR's echo may match.
SENT_ECHO_MEMORY = 1024


@dataclass(slots=True)
class _Handshake:
    ce_private: X25519PrivateKey
    ce_public: bytes
    # The REGISTER to retransmit: the first one, then the signed one.
    datagram: bytes
    cookie: bytes | None = None


@dataclass(slots=True)
class _SessionKeys:
    session_id: bytes
    sealer: ChaCha20Poly1305
    opener: ChaCha20Poly1305
    next_counter: int = 1
    window: ReplayWindow = field(default_factory=ReplayWindow)


class ClientSession:
    """Handshake, packet protection and replay checks of one client."""

    def __init__(self, identity: Identity, relay_public_key: bytes) -> None:
        if len(relay_public_key) != KEY_SIZE or is_low_order_x25519(relay_public_key):
            raise ValueError("relay public key must be a valid 32-byte X25519 key")
        self.identity = identity
        self.relay_public_key = relay_public_key
        # Datagrams dropped, by reason; for tests and debugging.
        self.drops: Counter[str] = Counter()
        self._handshake: _Handshake | None = None
        self._keys: _SessionKeys | None = None
        self._sent_echoes: OrderedDict[bytes, int] = OrderedDict()
        self._session_handlers: dict[int, Callable[[bytes], SessionEvent | None]] = {
            PacketType.PONG: self._on_pong,
            PacketType.PATH_CHALLENGE: self._on_path_challenge,
            PacketType.MESSAGE_ACK: self._on_message_ack,
            PacketType.MESSAGE_DELIVER: self._on_deliver,
            PacketType.POLL_RESPONSE: self._on_poll_response,
            PacketType.UNREGISTERED: self._on_unregistered,
            PacketType.DRAINING: self._on_draining,
            PacketType.SESSION_ERROR: self._on_session_error,
        }

    # --- state ----------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self._keys is not None

    @property
    def session_id(self) -> bytes | None:
        return self._keys.session_id if self._keys else None

    @property
    def next_counter(self) -> int | None:
        return self._keys.next_counter if self._keys else None

    @property
    def registering(self) -> bool:
        return self._handshake is not None

    @property
    def handshake_datagram(self) -> bytes | None:
        """The REGISTER to send: the first one until CHALLENGE, then the signed one."""
        return self._handshake.datagram if self._handshake else None

    # --- handshake --------------------------------------------------------------

    def start_register(self, ce_private: X25519PrivateKey | None = None) -> bytes:
        """Begin a handshake with a fresh ephemeral key and return the first REGISTER.

        `ce_private` is for reproducing test vectors only; leave it None.
        """
        ce_private = ce_private or X25519PrivateKey.generate()
        ce_public = x25519_public_bytes(ce_private)
        datagram = self._register_datagram(ce_public, ZERO_COOKIE)
        self._handshake = _Handshake(ce_private, ce_public, datagram)
        return datagram

    def abandon_register(self) -> None:
        """Forget the handshake in progress, so that late replies to it are ignored."""
        self._handshake = None

    def _register_datagram(self, ce_public: bytes, cookie: bytes) -> bytes:
        identity = self.identity
        unsigned = pack_header(PacketType.REGISTER, REGISTER_SIZE) + encode_register(
            Register(
                identity.user_id,
                identity.x25519_public,
                identity.ed25519_public,
                ce_public,
                cookie,
                bytes(SIGNATURE_SIZE),
            )
        )
        if cookie == ZERO_COOKIE:
            # The relay does no public-key work on the first REGISTER, so its
            # signature field stays zero.
            return unsigned
        message = register_signed_message(self.relay_public_key, unsigned)
        signature = identity.signing_key.sign(message)
        return unsigned[:-SIGNATURE_SIZE] + signature

    def _on_challenge(self, datagram: bytes) -> SessionEvent | None:
        handshake = self._handshake
        if handshake is None or handshake.cookie is not None:
            # Only the first CHALLENGE of a handshake counts. A later one is
            # the reply to a retransmitted first REGISTER.
            return self._drop("unexpected_challenge")
        try:
            cookie = decode_challenge(datagram[HEADER_SIZE:])
        except DecodeError:
            return self._drop("malformed_challenge")
        handshake.cookie = cookie
        handshake.datagram = self._register_datagram(handshake.ce_public, cookie)
        return ChallengeReceived(cookie, handshake.datagram)

    def _on_registered(self, datagram: bytes) -> SessionEvent | None:
        handshake = self._handshake
        if handshake is None or handshake.cookie is None:
            return self._drop("unexpected_registered")

        try:
            session_id, re_public, counter = registered_plain_fields(datagram)
        except PacketRejected:
            return self._drop("malformed_registered")
        if counter != 1:
            return self._drop("registered_counter_not_1")

        try:
            # dh1 uses the pinned relay key, so only that relay can produce
            # a REGISTERED whose tag verifies.
            dh1 = x25519(handshake.ce_private, self.relay_public_key)
            dh2 = x25519(handshake.ce_private, re_public)
        except CryptoError:
            return self._drop("low_order_key")

        k_c2s, k_s2c = derive_session_keys(dh1, dh2, handshake.cookie, session_id)
        opener = new_aead(k_s2c)
        try:
            body = decode_registered_body(open_registered(opener, datagram))
        except PacketRejected:
            return self._drop("bad_tag")
        except DecodeError:
            return self._drop("malformed_body")

        keys = _SessionKeys(session_id, new_aead(k_c2s), opener)
        keys.window.accept(counter)
        self._keys = keys
        self._handshake = None
        # Echoes of the previous session can only match stale errors now.
        self._sent_echoes.clear()
        return SessionEstablished(
            session_id, body.server_time_ms, body.session_timeout_s, body.pending
        )

    # --- sending on a session ------------------------------------------------

    def seal(self, packet_type: int, body: bytes) -> bytes:
        """Seal a session packet under the next counter.

        Raises NotRegistered when there is no session.

        Every call uses a new counter, so a retransmission is a new seal.
        The type is not checked, so tests can also seal types a client never sends.
        """
        keys = self._keys
        if keys is None:
            raise NotRegistered("no session: register first")
        counter = keys.next_counter
        if counter > MAX_COUNTER:
            raise NotRegistered("session counter exhausted: register again")
        keys.next_counter = counter + 1
        echo = keys.session_id + counter.to_bytes(COUNTER_SIZE, "big")
        self._remember_echo(echo, counter)
        return seal_client_packet(
            keys.sealer, packet_type, keys.session_id, counter, body
        )

    def ping(self, echo: bytes = b"") -> bytes:
        if len(echo) not in (0, PATH_NONCE_SIZE):
            raise ValueError(f"a PING echo is 0 or {PATH_NONCE_SIZE} bytes")
        return self.seal(PacketType.PING, echo)

    def message(self, message: Message) -> bytes:
        return self.seal(PacketType.MESSAGE, encode_message(message))

    def ack(self, keys: list[tuple[str, str]]) -> bytes:
        """Seal one ACK of 1 to 15 (sender_id, message_id) pairs."""
        return self.seal(PacketType.ACK, encode_ack(keys))

    def poll(self, max_bytes: int = 0) -> bytes:
        if not 0 <= max_bytes <= 0xFFFF:
            raise ValueError(f"max_bytes must be 0 to 65535, got {max_bytes}")
        return self.seal(PacketType.POLL, encode_poll(max_bytes))

    def unregister(self, erase: bool = False) -> bytes:
        return self.seal(
            PacketType.UNREGISTER, encode_unregister(_unregister_flags(erase))
        )

    def _remember_echo(self, echo: bytes, counter: int) -> None:
        self._sent_echoes[echo] = counter
        if len(self._sent_echoes) > SENT_ECHO_MEMORY:
            self._sent_echoes.popitem(last=False)

    # --- receiving ----------------------------------------------------------------

    def receive(self, datagram: bytes) -> SessionEvent | None:
        """Check a datagram from the relay; return its event, or None if dropped."""
        try:
            version, packet_type, flags, length = unpack_header(datagram)
        except DecodeError:
            return self._drop("short_datagram")
        # ERROR keeps its code in every version, but its layout may differ,
        # so an ERROR of another version is dropped like any other datagram.
        if version != VERSION or flags != 0 or length != len(datagram) - HEADER_SIZE:
            return self._drop("bad_header")
        if packet_type == PacketType.CHALLENGE:
            return self._on_challenge(datagram)
        if packet_type == PacketType.REGISTERED:
            return self._on_registered(datagram)
        if packet_type == PacketType.ERROR:
            return self._on_error(datagram)
        handler = self._session_handlers.get(packet_type)
        if handler is None:
            return self._drop("unexpected_type")
        body = self._open(datagram)
        if body is None:
            return None
        try:
            return handler(body)
        except DecodeError:
            # The counter stays used: the window accepted it before parsing.
            return self._drop("malformed_body")

    def _open(self, datagram: bytes) -> bytes | None:
        keys = self._keys
        if keys is None:
            return self._drop("no_session")
        try:
            counter, body = open_relay_packet(keys.opener, datagram)
        except PacketRejected:
            return self._drop("bad_tag")
        if not keys.window.accept(counter):
            return self._drop("replayed")
        return body

    def _on_error(self, datagram: bytes) -> SessionEvent | None:
        try:
            error = decode_error(datagram[HEADER_SIZE:])
        except DecodeError:
            return self._drop("malformed_error")
        handshake = self._handshake
        if handshake is not None and error.echo == handshake.ce_public[:ECHO_SIZE]:
            return ErrorReceived(error.code, error.text, ErrorTarget.REGISTER)
        counter = self._sent_echoes.get(error.echo)
        if counter is None:
            return self._drop("unmatched_error")
        return ErrorReceived(
            error.code, error.text, ErrorTarget.SESSION_PACKET, counter
        )

    def _on_pong(self, body: bytes) -> SessionEvent:
        pong = decode_pong(body)
        return PongReceived(pong.server_time_ms, pong.pending)

    def _on_path_challenge(self, body: bytes) -> SessionEvent:
        nonce = decode_path_challenge(body)
        return PathChallengeReceived(nonce, self.ping(nonce))

    def _on_message_ack(self, body: bytes) -> SessionEvent:
        ack = decode_message_ack(body)
        return MessageAckReceived(ack.message_id, ack.status)

    def _on_deliver(self, body: bytes) -> SessionEvent:
        return EntryPushed(decode_entry(body))

    def _on_poll_response(self, body: bytes) -> SessionEvent:
        return PollResponseReceived(decode_poll_response(body))

    def _on_unregistered(self, body: bytes) -> SessionEvent:
        flags = decode_unregister(body)
        self._keys = None
        return UnregisteredReceived(flags)

    def _on_draining(self, body: bytes) -> SessionEvent:
        return DrainingReceived(decode_draining(body))

    def _on_session_error(self, body: bytes) -> SessionEvent:
        error = decode_session_error(body)
        return SessionErrorReceived(error.code, error.text)

    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1
        logger.debug("relay datagram dropped: %s", reason)
        return None


def _unregister_flags(erase: bool) -> int:
    return UNREGISTER_ERASE if erase else 0
