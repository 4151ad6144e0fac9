"""Reference client of the relay: identity, socket-free session, asyncio client, CLI."""

from relay.client.client import PollResult, RelayClient
from relay.client.errors import (
    ClientClosed,
    KeyConflict,
    NotRegistered,
    RegistrationForbidden,
    RegistrationRateLimited,
    RegistrationRejected,
    RelayClientError,
    RelayOverloaded,
    RelayTimeout,
)
from relay.client.identity import ContactCard, Identity, IdentityError
from relay.client.session import ClientSession

__all__ = [
    "ClientClosed",
    "ClientSession",
    "ContactCard",
    "Identity",
    "IdentityError",
    "KeyConflict",
    "NotRegistered",
    "PollResult",
    "RegistrationForbidden",
    "RegistrationRateLimited",
    "RegistrationRejected",
    "RelayClient",
    "RelayClientError",
    "RelayOverloaded",
    "RelayTimeout",
]
