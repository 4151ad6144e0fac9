"""Episodes of a full relay, logged once at their start and once at their end.

An episode starts when the live sessions reach MAX_CONNECTIONS or a
REGISTER is refused with OVERLOADED, and ends after QUIET_PERIOD_S with
room again and no such refusal. Checking once a second from the relay's
tick keeps the per-datagram path free of logging.
"""

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from relay.core.relay import RelayCore

log = structlog.get_logger("relay.overload")

QUIET_PERIOD_S = 30.0


class OverloadWatch:
    def __init__(
        self,
        core: "RelayCore",
        quiet_period_s: float = QUIET_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.quiet_period_s = quiet_period_s
        self.clock = clock
        self.in_episode = False
        self.episodes = 0
        self._seen_refusals = self._refusals()
        self._episode_started = 0.0
        self._last_full = 0.0
        self._episode_refusals = 0
        self._peak_sessions = 0

    def _refusals(self) -> int:
        return self.core.stats.register_refusals["overloaded"]

    def check(self) -> None:
        """Compare the session count and refusals with the last check; log changes."""
        if self.core.draining:
            return  # a draining relay refuses everyone on purpose
        now = self.clock()
        refusals = self._refusals()
        new_refusals = refusals - self._seen_refusals
        self._seen_refusals = refusals
        sessions = len(self.core.sessions)
        limit = self.core.settings.max_connections
        full = sessions >= limit or new_refusals > 0
        if full and not self.in_episode:
            self._start(now, sessions, limit, new_refusals)
        elif self.in_episode:
            self._episode_refusals += new_refusals
            self._peak_sessions = max(self._peak_sessions, sessions)
            if full:
                self._last_full = now
            elif now - self._last_full >= self.quiet_period_s:
                self._end(now, sessions, limit)

    def _start(self, now: float, sessions: int, limit: int, refusals: int) -> None:
        self.in_episode = True
        self.episodes += 1
        self._episode_started = self._last_full = now
        self._episode_refusals = refusals
        self._peak_sessions = sessions
        log.warning(
            "session_limit_reached",
            active_connections=sessions,
            max_connections=limit,
            refused_registrations=refusals,
        )

    def _end(self, now: float, sessions: int, limit: int) -> None:
        self.in_episode = False
        log.info(
            "session_limit_cleared",
            active_connections=sessions,
            max_connections=limit,
            peak_connections=self._peak_sessions,
            refused_registrations=self._episode_refusals,
            duration_ms=round((now - self._episode_started) * 1000),
        )
