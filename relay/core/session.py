"""Live sessions, the sessions that recently ended, and their lookup tables."""

from collections import deque

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from relay.protocol.replay import WINDOW_SIZE

WINDOW_MASK = (1 << WINDOW_SIZE) - 1
# Sessions whose cipher objects stay built: about 4.5 KiB each.
HOT_SESSIONS = 1024

Address = tuple[str, int]
# A user's rate limits: the full-at times of MESSAGE, POLL, ACK and PING.
Limits = tuple[float, float, float, float]


class Session:
    """One registered phone: its keys, counters, address and liveness.

    `keys` is k_c2s followed by k_s2c. `ciphers` contains the cipher objects
    built from them (inbound, outbound) while the session table's
    CipherCache lets it keep them, and None otherwise. `highest` and `seen`
    are the replay window of the counters received, as in
    protocol.replay.ReplayWindow, kept in the session so that the hot path
    needs no second object.

    `address` is where replies go. After a move to a new address it is
    unvalidated until a PING echoes `path_nonce`; meanwhile `path_budget`
    is how many more bytes the relay may send there.

    The four `*_full_at` fields are the user's rate limits, each the time in
    milliseconds at which that bucket is full again (see `ratelimit.admit`;
    0.0 means full). The user's next session takes them over (see
    SessionTable), so that registering again does not refill them. Four
    fields use 32 bytes less per session than a separate object.
    """

    __slots__ = (
        "ack_full_at",
        "address",
        "ciphers",
        "highest",
        "keys",
        "last_seen_ms",
        "message_full_at",
        "path_budget",
        "path_nonce",
        "ping_full_at",
        "poll_full_at",
        "seen",
        "send_counter",
        "session_id",
        "user_id",
    )

    def __init__(
        self,
        session_id: bytes,
        user_id: str,
        address: Address,
        keys: bytes,
        now_ms: int,
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.address = address
        self.keys = keys
        self.ciphers: tuple[ChaCha20Poly1305, ChaCha20Poly1305] | None = None
        self.message_full_at = self.poll_full_at = 0.0
        self.ack_full_at = self.ping_full_at = 0.0
        self.highest = 0
        self.seen = 1  # counter 0 counts as used
        self.send_counter = 1  # REGISTERED is packet 1
        self.last_seen_ms = now_ms
        self.path_nonce: bytes | None = None
        self.path_budget = 0

    def limits(self) -> Limits:
        return (
            self.message_full_at,
            self.poll_full_at,
            self.ack_full_at,
            self.ping_full_at,
        )

    def take_limits(self, limits: Limits) -> None:
        """Continue the rate limits of the user's earlier session."""
        (
            self.message_full_at,
            self.poll_full_at,
            self.ack_full_at,
            self.ping_full_at,
        ) = limits

    @property
    def validated(self) -> bool:
        return self.path_nonce is None

    def next_counter(self) -> int:
        self.send_counter += 1
        return self.send_counter


class CipherCache:
    """Builds sessions' ChaCha20-Poly1305 objects and keeps the newest ones.

    A cipher object keeps OpenSSL contexts of about 2 KiB, so keeping two
    per session would cost more than the rest of the session. Building
    one takes about a microsecond, so only the `max_sessions` sessions
    that needed them most recently keep theirs, in `Session.ciphers`; the
    oldest holder loses its pair when a new one is built.
    """

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._holders: deque[Session] = deque()
        self.builds = 0

    def __len__(self) -> int:
        return len(self._holders)

    def build(self, session: Session) -> tuple[ChaCha20Poly1305, ChaCha20Poly1305]:
        """Build (inbound, outbound) for a session and keep them in it."""
        keys = session.keys
        pair = (ChaCha20Poly1305(keys[:32]), ChaCha20Poly1305(keys[32:]))
        session.ciphers = pair
        self.builds += 1
        holders = self._holders
        holders.append(session)
        if len(holders) > self.max_sessions:
            holders.popleft().ciphers = None
        return pair


class EndedSession:
    """A session ended by UNREGISTER, kept so that a retried UNREGISTER is answered."""

    __slots__ = ("ended_at_ms", "flags", "session")

    def __init__(self, session: Session, flags: int, now_ms: int) -> None:
        self.session = session
        self.flags = flags
        self.ended_at_ms = now_ms


class SessionTable:
    """Live sessions by session id and by user, plus recently ended ones.

    A user's rate limits outlive the session: a new session takes them over
    from the one it replaces, or from `carried_limits`, where a session that
    ended or timed out leaves them until every bucket is full again.
    """

    def __init__(self, timeout_ms: int, linger_ms: int, max_ended: int) -> None:
        self.timeout_ms = timeout_ms
        self.linger_ms = linger_ms
        self.max_ended = max_ended
        self.by_id: dict[bytes, Session] = {}
        self.by_user: dict[str, Session] = {}
        self.ended: dict[bytes, EndedSession] = {}
        # Capped at max_ended as well. When full, the oldest entry goes, and
        # that user's next session starts with full buckets.
        self.carried_limits: dict[str, Limits] = {}
        self.ciphers = CipherCache(HOT_SESSIONS)

    def __len__(self) -> int:
        return len(self.by_id)

    def add(self, session: Session) -> Session | None:
        """Add a session and return the one it replaces for the same user, if any.

        The new session continues the user's rate limits.
        """
        user_id = session.user_id
        old = self.by_user.get(user_id)
        if old is not None:
            del self.by_id[old.session_id]
            session.take_limits(old.limits())
        else:
            limits = self.carried_limits.pop(user_id, None)
            if limits is not None:
                session.take_limits(limits)
        self.by_id[session.session_id] = session
        self.by_user[user_id] = session
        return old

    def live(self, session_id: bytes, now_ms: int) -> Session | None:
        """Return the session if it exists and has not timed out."""
        session = self.by_id.get(session_id)
        if session is not None and now_ms - session.last_seen_ms > self.timeout_ms:
            self.remove(session, now_ms)
            return None
        return session

    def of_user(self, user_id: str, now_ms: int) -> Session | None:
        session = self.by_user.get(user_id)
        if session is None:
            return None
        return self.live(session.session_id, now_ms)

    def remove(self, session: Session, now_ms: int) -> None:
        """Remove a live session, keeping its rate limits while they refill."""
        if self.by_id.get(session.session_id) is session:
            del self.by_id[session.session_id]
        if self.by_user.get(session.user_id) is not session:
            return
        del self.by_user[session.user_id]
        limits = session.limits()
        if max(limits) > now_ms:
            _put_capped(self.carried_limits, session.user_id, limits, self.max_ended)

    def end(self, session: Session, flags: int, now_ms: int) -> None:
        """Remove a session after UNREGISTER and keep its keys for the linger time."""
        self.remove(session, now_ms)
        ended = EndedSession(session, flags, now_ms)
        _put_capped(self.ended, session.session_id, ended, self.max_ended)

    def sweep(self, now_ms: int) -> list[Session]:
        """Drop timed-out sessions, lingering ones past their time, and refilled limits.

        Returns the sessions that timed out.
        """
        timed_out = [
            session
            for session in self.by_id.values()
            if now_ms - session.last_seen_ms > self.timeout_ms
        ]
        for session in timed_out:
            self.remove(session, now_ms)
        # Entries are in the order their sessions ended, and a bucket is full
        # within a minute of its last use, so the scan stops at the first
        # entry not yet full instead of reading a table an attacker filled.
        refilled = []
        for user_id, limits in self.carried_limits.items():
            if max(limits) > now_ms:
                break
            refilled.append(user_id)
        for user_id in refilled:
            del self.carried_limits[user_id]
        gone = [
            session_id
            for session_id, ended in self.ended.items()
            if now_ms - ended.ended_at_ms > self.linger_ms
        ]
        for session_id in gone:
            del self.ended[session_id]
        return timed_out


def _put_capped(table: dict, key: object, value: object, cap: int) -> None:
    """Insert an entry, first dropping the oldest when the table is at its cap."""
    if len(table) >= cap:
        # Dicts keep insertion order, so the first entry is the oldest.
        del table[next(iter(table))]
    table[key] = value
