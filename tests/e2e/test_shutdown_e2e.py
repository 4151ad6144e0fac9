"""SIGTERM under load: DRAINING for every session, no acknowledged message lost."""

import contextlib
import signal
import sqlite3
import subprocess
import time

import pytest

from relay.client.events import DrainingReceived
from relay.protocol.constants import AckStatus
from relay.testing import RelayProcess
from tests.e2e.phone import UdpPhone
from tests.e2e.traffic import Sender, drain_mailbox, wait_for_queued

pytestmark = pytest.mark.e2e

SHUTDOWN_TIMEOUT_S = 5
SENDERS = 4


def test_sigterm_under_load_keeps_every_queued_message(relay_factory, tmp_path):
    relay = relay_factory(
        tmp_path / "relay",
        SHUTDOWN_TIMEOUT_S=SHUTDOWN_TIMEOUT_S,
        RATE_MESSAGE_PER_USER=1_000_000,
        MAILBOX_MAX_MESSAGES=1_000_000,
        MAILBOX_MAX_PER_SENDER=1_000_000,
    )
    recipients = [UdpPhone(relay.udp_address, relay.relay_public_key) for _ in range(2)]
    for recipient in recipients:
        recipient.register()
        recipient.send(recipient.session.unregister())
        recipient.receive()
    idle = UdpPhone(relay.udp_address, relay.relay_public_key)
    idle.register()
    phones = [
        UdpPhone(relay.udp_address, relay.relay_public_key) for _ in range(SENDERS)
    ]
    for phone in phones:
        phone.register()
    senders = [
        Sender(phone, recipients[i % 2].user_id, window=16, max_seconds=60)
        for i, phone in enumerate(phones)
    ]
    for sender in senders:
        sender.start()

    wait_for_queued(senders, 400)
    relay.signal(signal.SIGTERM)
    # A bound against a hang, not a timing: the relay's own deadline is
    # SHUTDOWN_TIMEOUT_S, and interpreter exit on a loaded machine adds some.
    code = relay.wait(SHUTDOWN_TIMEOUT_S + 15)
    for sender in senders:
        sender.stopping.set()
    for sender in senders:
        sender.join(30)
    idle_events = idle.receive_all()

    assert code == 0
    (stopped,) = relay.events("relay_stopped")
    assert stopped["storage_closed"] is True
    (draining,) = relay.events("relay_draining")
    assert draining["sessions_told"] == SENDERS + 1
    assert all(sender.drainings == 1 for sender in senders)
    assert [type(e) for e in idle_events] == [DrainingReceived]
    # The final checkpoint left no write-ahead log behind.
    wal = relay.database.with_name(relay.database.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    check = subprocess.run(
        ["sqlite3", str(relay.database), "PRAGMA integrity_check;"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.stdout.strip() == "ok"

    queued = set().union(*(sender.queued() for sender in senders))
    sent = set().union(*(sender.sent for sender in senders))
    statuses = set().union(*(sender.statuses() for sender in senders))
    assert statuses <= {AckStatus.QUEUED, AckStatus.UNAVAILABLE}
    with sqlite3.connect(relay.database) as connection:
        (rows,) = connection.execute("SELECT count(*) FROM mailbox_messages").fetchone()
    assert rows >= len(queued)

    relay.restart()
    delivered: set[str] = set()
    for recipient in recipients:
        recipient.relay_address = relay.udp_address
        recipient.register()
        delivered |= drain_mailbox(recipient)
    for phone in [*recipients, *phones, idle]:
        phone.close()
    assert len(queued) >= 400
    assert queued <= delivered
    assert delivered <= sent


def test_repeated_sigterm_still_closes_cleanly(relay_factory):
    relay = relay_factory(SHUTDOWN_TIMEOUT_S=SHUTDOWN_TIMEOUT_S)
    phone = UdpPhone(relay.udp_address, relay.relay_public_key)
    phone.register()
    relay.signal(signal.SIGTERM)
    relay.signal(signal.SIGTERM)
    relay.signal(signal.SIGUSR1)
    relay.signal(signal.SIGINT)
    assert relay.wait(SHUTDOWN_TIMEOUT_S + 15) == 0
    assert len(relay.events("relay_stopped")) == 1
    assert relay.events("relay_stopped")[0]["storage_closed"] is True
    phone.close()


@pytest.mark.parametrize("repeated", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_signals_until_exit_still_exit_cleanly(relay_factory, repeated):
    for _ in range(3):
        relay = relay_factory(SHUTDOWN_TIMEOUT_S=SHUTDOWN_TIMEOUT_S)
        relay.signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S + 10
        # Without pause up to the last moment of the process, as an
        # impatient supervisor or a looping script does.
        while relay.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                relay.signal(repeated)
        assert relay.wait(5) == 0
        assert len(relay.events("relay_stopped")) == 1
        assert len(relay.events("shutdown_in_progress")) <= 2


def test_sigint_drains_like_sigterm(relay_factory):
    relay = relay_factory()
    phone = UdpPhone(relay.udp_address, relay.relay_public_key)
    phone.register()
    started = time.monotonic()
    relay.signal(signal.SIGINT)
    assert relay.wait(30) == 0
    assert isinstance(phone.receive(), DrainingReceived)
    (stopped,) = relay.events("relay_stopped")
    assert stopped["reason"] == "SIGINT"
    assert stopped["duration_ms"] <= (time.monotonic() - started) * 1000
    phone.close()


def make_large_mailboxes(database, messages: int) -> None:
    """Fill the mailboxes of a new database with the sqlite3 tool's SQL, fast."""
    RelayProcess(database.parent).start().stop()
    connection = sqlite3.connect(database)
    connection.execute(
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO mailbox_messages (recipient_id, sender_id, message_id,
            received_at_ms, expires_at_ms, payload, trace_id)
        SELECT printf('recipient-%d', i % 1000), printf('sender-%d', i % 997),
               printf('%036d', i), 1, 9e15, x'00', printf('%016x', i)
        FROM n
        """,
        (messages,),
    )
    connection.commit()
    connection.close()


def test_sigterm_while_mailboxes_load_stops_at_once(tmp_path):
    directory = tmp_path / "relay"
    make_large_mailboxes(directory / "yaok_relay.db", 600_000)
    relay = RelayProcess(directory, SHUTDOWN_TIMEOUT_S=SHUTDOWN_TIMEOUT_S)
    relay.start(wait=False)
    try:
        assert relay.wait_for(lambda: relay.events("storage_opening"), 30)
        signalled = time.monotonic()
        relay.signal(signal.SIGTERM)
        assert relay.wait(SHUTDOWN_TIMEOUT_S + 10) == 0
        stopped_after_s = time.monotonic() - signalled
    finally:
        relay.kill()
    assert stopped_after_s < SHUTDOWN_TIMEOUT_S
    (abandoned,) = relay.events("storage_open_abandoned")
    assert abandoned["reason"] == "SIGTERM"
    assert relay.events("storage_opened") == []
    assert relay.events("relay_stopped")[0]["reason"] == "SIGTERM"
