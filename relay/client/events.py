"""Events that a client session returns for the relay datagrams it accepts."""

from dataclasses import dataclass
from enum import Enum

from relay.protocol.codec import Entry, PollResponse
from relay.protocol.constants import AckStatus


@dataclass(frozen=True, slots=True)
class ChallengeReceived:
    """A CHALLENGE cookie, with the signed REGISTER to send in reply."""

    cookie: bytes
    register: bytes


@dataclass(frozen=True, slots=True)
class SessionEstablished:
    """A verified REGISTERED: the session keys are in place."""

    session_id: bytes
    server_time_ms: int
    session_timeout_s: int
    pending: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    server_time_ms: int
    pending: int


@dataclass(frozen=True, slots=True)
class PathChallengeReceived:
    """A PATH_CHALLENGE nonce, with the PING that echoes it."""

    nonce: bytes
    reply: bytes


@dataclass(frozen=True, slots=True)
class MessageAckReceived:
    message_id: str
    status: AckStatus


@dataclass(frozen=True, slots=True)
class EntryPushed:
    """A mailbox entry pushed by MESSAGE_DELIVER."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class PollResponseReceived:
    response: PollResponse


@dataclass(frozen=True, slots=True)
class UnregisteredReceived:
    """An UNREGISTERED; the session has ended and its keys are dropped."""

    flags: int


@dataclass(frozen=True, slots=True)
class DrainingReceived:
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class SessionErrorReceived:
    """An authenticated SESSION_ERROR."""

    code: int
    text: str


class ErrorTarget(Enum):
    """Kind of packet that a plain ERROR's echo matched."""

    REGISTER = "register"
    SESSION_PACKET = "session_packet"


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """A plain, unauthenticated ERROR whose echo matches a packet this client sent.

    For a session packet, `counter` is the counter of the packet it answers.
    """

    code: int
    text: str
    target: ErrorTarget
    counter: int | None = None


SessionEvent = (
    ChallengeReceived
    | SessionEstablished
    | PongReceived
    | PathChallengeReceived
    | MessageAckReceived
    | EntryPushed
    | PollResponseReceived
    | UnregisteredReceived
    | DrainingReceived
    | SessionErrorReceived
    | ErrorReceived
)
