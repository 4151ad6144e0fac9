"""The cookie-replay set: what each accepted cookie has already produced."""

from dataclasses import dataclass
from hashlib import blake2b

# 128 bits: a different REGISTER matching a recorded digest would take a
# second preimage, and the digest takes a quarter of the signed bytes' memory.
_DIGEST_SIZE = 16


def register_digest(signed_fields: bytes) -> bytes:
    """Return the digest that distinguishes a retried REGISTER from a different one."""
    return blake2b(signed_fields, digest_size=_DIGEST_SIZE).digest()


@dataclass(slots=True)
class CookieUse:
    """What a cookie led to: nothing yet, or the exact datagram answered."""

    digest: bytes  # register_digest() of the REGISTER's signed fields
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
        self, cookie: bytes, digest: bytes, expires_at_ms: int
    ) -> CookieUse | None:
        """Record a cookie's first use; return None when the ledger is full."""
        if len(self._uses) >= self.max_entries:
            return None
        use = self._uses[cookie] = CookieUse(digest, expires_at_ms)
        return use

    def release(self, cookie: bytes) -> None:
        """Forget a cookie whose attempt failed before anything was decided."""
        self._uses.pop(cookie, None)

    def sweep(self, now_ms: int) -> int:
        expired = [c for c, use in self._uses.items() if use.expires_at_ms < now_ms]
        for cookie in expired:
            del self._uses[cookie]
        return len(expired)
