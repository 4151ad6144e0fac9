"""HTTP connections of the ops API: uvicorn's h11 protocol with deadlines.

uvicorn closes a keep-alive connection that stays idle after a response,
but not one that sends part of a request and then trickles or stops, nor
one whose client never reads the responses. A few thousand of them used up
the relay's file descriptors, so /health went silent and the
checkpointer could not open the database. Here a connection must deliver
each whole request, head and body, within REQUEST_TIMEOUT_S of opening or
of its previous response. A response whose writing is held up by an
unread socket for WRITE_STALL_TIMEOUT_S ends the connection, and so does
a response still unsent at the request deadline. uvicorn itself closes a
connection idle for 5 s after a response (timeout_keep_alive).
"""

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# Long enough for a slow phone network or a health checker under load;
# short enough that a stalled connection frees its descriptor soon.
REQUEST_TIMEOUT_S = 10.0
WRITE_STALL_TIMEOUT_S = 10.0

# The client's states in which a request is still on its way.
_RECEIVING = (h11.IDLE, h11.SEND_BODY)


class DeadlineH11Protocol(H11Protocol):
    """An h11 connection, closed when slow to send a request or to read a response."""

    request_timeout_s = REQUEST_TIMEOUT_S
    write_stall_timeout_s = WRITE_STALL_TIMEOUT_S
    _request_deadline: asyncio.TimerHandle | None = None
    _write_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_request_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_request_deadline()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(
                self.write_stall_timeout_s, self._write_stalled
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        _cancel(self._write_deadline)
        self._write_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        _cancel(self._request_deadline)
        _cancel(self._write_deadline)
        self._request_deadline = self._write_deadline = None
        super().connection_lost(exc)

    def _arm_request_deadline(self) -> None:
        # Armed on a closing connection too: its close may wait for ever to
        # flush a response that an unread socket does not take.
        _cancel(self._request_deadline)
        self._request_deadline = self.loop.call_later(
            self.request_timeout_s, self._request_overdue
        )

    def _request_overdue(self) -> None:
        self._request_deadline = None
        if self.transport.get_write_buffer_size():
            # Responses still unsent after the deadline: the client is not
            # reading, and a close would wait to flush them.
            self.transport.abort()
        elif self.conn.their_state in _RECEIVING and not self.transport.is_closing():
            self.transport.close()

    def _write_stalled(self) -> None:
        # abort, not close: close would wait to flush what the client never reads.
        self._write_deadline = None
        self.transport.abort()


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()
