"""A blocking UDP phone for end-to-end tests: the client session on a real socket.

It exposes every datagram, so tests can replay, forge and roam.
"""

import socket
import uuid

from relay.client.events import ChallengeReceived, SessionEstablished
from relay.client.identity import Identity
from relay.client.session import ClientSession
from relay.protocol.codec import Message

RECEIVE_TIMEOUT_S = 5.0


class UdpPhone:
    def __init__(self, relay_address, relay_public_key: bytes, identity=None):
        self.relay_address = relay_address
        self.identity = identity or Identity.generate()
        self.session = ClientSession(self.identity, relay_public_key)
        self.socket = self._open_socket()

    @staticmethod
    def _open_socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(RECEIVE_TIMEOUT_S)
        return sock

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def roam(self) -> None:
        """Move to a new source port, as a phone changing networks does."""
        self.socket.close()
        self.socket = self._open_socket()

    def close(self) -> None:
        self.socket.close()

    def send(self, datagram: bytes) -> None:
        self.socket.sendto(datagram, self.relay_address)

    def receive_raw(self, timeout_s: float = RECEIVE_TIMEOUT_S) -> bytes | None:
        self.socket.settimeout(timeout_s)
        try:
            data, _ = self.socket.recvfrom(70_000)
        except TimeoutError:
            return None
        return data

    def waiting_events(self) -> list:
        """Return the events of the datagrams already waiting, without blocking."""
        events = []
        # With a timeout set, Python waits for the socket to become readable
        # before each recv, whatever the flags: MSG_DONTWAIT alone would block.
        self.socket.setblocking(False)
        while True:
            try:
                data = self.socket.recv(70_000)
            except BlockingIOError:
                return events
            event = self.session.receive(data)
            if event is not None:
                events.append(event)

    def receive(self, timeout_s: float = RECEIVE_TIMEOUT_S):
        """Return the next event the session accepts, or None on timeout."""
        while True:
            data = self.receive_raw(timeout_s)
            if data is None:
                return None
            event = self.session.receive(data)
            if event is not None:
                return event

    def receive_all(self, quiet_s: float = 0.3) -> list:
        events = []
        while (event := self.receive(quiet_s)) is not None:
            events.append(event)
        return events

    def register(self) -> SessionEstablished:
        self.send(self.session.start_register())
        challenge = self.receive()
        assert isinstance(challenge, ChallengeReceived), challenge
        self.send(challenge.register)
        established = self.receive()
        assert isinstance(established, SessionEstablished), established
        return established

    def message(self, recipient, payload: bytes = b"sealed", **fields) -> bytes:
        recipient_id = recipient if isinstance(recipient, str) else recipient.user_id
        message_id = fields.get("message_id") or str(uuid.uuid4())
        return self.session.message(
            Message(message_id, recipient_id, fields.get("ttl_s", 0), payload)
        )
