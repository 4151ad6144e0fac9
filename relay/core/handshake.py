"""The cookie-replay set: what each accepted cookie has already produced."""

from dataclasses import dataclass


@dataclass(slots=True)
class CookieUse:
    """What a cookie led to: nothing yet, or the exact datagram answered."""

    signed_prefix: bytes  # the REGISTER's first 164 payload bytes
    expires_at_ms: int
    reply: bytes | None = None  # REGISTERED, or the ERROR that ended the attempt
    session_id: bytes | None = None


class CookieLedger:
    """Accepted cookies until they expire, so that a cookie makes one session.

    When full it rejects new cookies instead of forgetting old ones:
    forgetting would let a replayed REGISTER replace a live session.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._uses: dict[bytes, CookieUse] = {}

    def __len__(self) -> int:
        return len(self._uses)

    def get(self, cookie: bytes) -> CookieUse | None:
        return self._uses.get(cookie)

    def claim(
        self, cookie: bytes, signed_prefix: bytes, expires_at_ms: int
    ) -> CookieUse | None:
        """Record a cookie's first use; return None when the ledger is full."""
        if len(self._uses) >= self.max_entries:
            return None
        use = self._uses[cookie] = CookieUse(signed_prefix, expires_at_ms)
        return use

    def release(self, cookie: bytes) -> None:
        """Forget a cookie whose attempt failed before anything was decided."""
        self._uses.pop(cookie, None)

    def sweep(self, now_ms: int) -> int:
        expired = [c for c, use in self._uses.items() if use.expires_at_ms < now_ms]
        for cookie in expired:
            del self._uses[cookie]
        return len(expired)
