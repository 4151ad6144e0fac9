"""Exceptions of the reference client."""

import re

from relay.protocol.constants import ErrorCode


class RelayClientError(Exception):
    """Base class of every error the client raises on purpose."""


class NotRegistered(RelayClientError):
    """The operation needs a session, and there is none: call register() first."""


class ClientClosed(RelayClientError):
    """The client was closed while the operation waited."""


class RelayTimeout(RelayClientError):
    """No reply from the relay after the last retransmission."""


class RegistrationRejected(RelayClientError):
    """The relay rejected a REGISTER with a plain ERROR."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(
            f"relay rejected the registration: {_code_name(code)}{_suffix(text)}"
        )


class RelayOverloaded(RegistrationRejected):
    """The relay is at its session limit or draining: use another relay or wait."""


class RegistrationForbidden(RegistrationRejected):
    """The relay rejected the cookie, the signature or a low-order key."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        if text == "invalid signature":
            # The signature covers the relay's public key as the client
            # pinned it, so a wrong pinned key fails here first.
            self.args = (
                f"{self.args[0]}; check the pinned relay key against "
                "relay_public_key in the relay's /version",
            )


class KeyConflict(RegistrationRejected):
    """The user id is bound to another Ed25519 key on this relay."""


class RegistrationRateLimited(RegistrationRejected):
    """Too many REGISTERs from this address; retry after `retry_after_ms` (or None)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.retry_after_ms = parse_retry_after_ms(text)


_RETRY_AFTER = re.compile(r"retry_after_ms=(\d{1,10})\Z")

_REGISTRATION_ERRORS: dict[int, type[RegistrationRejected]] = {
    ErrorCode.OVERLOADED: RelayOverloaded,
    ErrorCode.FORBIDDEN: RegistrationForbidden,
    ErrorCode.KEY_CONFLICT: KeyConflict,
    ErrorCode.RATE_LIMITED: RegistrationRateLimited,
}


def parse_retry_after_ms(text: str) -> int | None:
    """Return N from a RATE_LIMITED text `retry_after_ms=N`, or None if absent."""
    match = _RETRY_AFTER.match(text.strip())
    return int(match.group(1)) if match else None


def registration_error(code: int, text: str) -> RegistrationRejected:
    """Return the exception for a plain ERROR sent in reply to our REGISTER."""
    return _REGISTRATION_ERRORS.get(code, RegistrationRejected)(code, text)


def _code_name(code: int) -> str:
    try:
        return f"{ErrorCode(code).name} ({code:#06x})"
    except ValueError:
        return f"error code {code:#06x}"


def _suffix(text: str) -> str:
    return f": {text}" if text else ""
