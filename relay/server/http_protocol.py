"""HTTP connections of the ops API: uvicorn's h11 protocol with a deadline for requests.

uvicorn closes a keep-alive connection that stays idle after a response,
but a connection that sends part of a request and then nothing is kept
open for good. A few thousand of them used up the relay's file
descriptors, so /health stopped answering and the checkpointer could not
open the database. Here each connection must deliver a whole request head
within REQUEST_HEAD_TIMEOUT_S of opening or of its previous response.
"""

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# Long enough for a slow phone network or a health checker under load;
# short enough that a stalled connection frees its descriptor soon.
REQUEST_HEAD_TIMEOUT_S = 10.0


class DeadlineH11Protocol(H11Protocol):
    """Closes a connection that has not sent a whole request head in time."""

    request_head_timeout_s = REQUEST_HEAD_TIMEOUT_S
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        if not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(
                self.request_head_timeout_s, self._head_deadline_passed
            )

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        # IDLE: h11 has not yet parsed a request head since the deadline was set.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
