"""SQL of one group-commit batch, run inside the transaction the writer opened.

The batch runs whole on the write connection's thread, from BEGIN to
COMMIT, with the connection's plain sqlite3 calls. Each step is
set-based: one statement covers every operation of its kind in the
batch, so the statements per batch do not grow with its size. Rows are
inserted with multi-row VALUES statements, not executemany. executemany
gives up the GIL for every row and must take it back from the event
loop, which while busy keeps it for up to the switch interval. So each
row of a batch could wait that long.

A step that needs more bound variables than one statement of the SQLite
library accepts (250,000 in Debian 12's build, 32,766 by default since
SQLite 3.32) is split into as few statements as that limit allows.

The writer is the only writer of the file, so a select followed by a write
in the same transaction decides atomically.
"""

import sqlite3
from collections.abc import Iterator, Sequence

from relay.protocol.constants import AckStatus
from relay.storage.base import Quotas, Receipt, StoredMessage, Sweep
from relay.storage.mailbox_index import SUMMARY_COLUMNS, MailboxIndex, MessageSummary
from relay.storage.operations import (
    AcknowledgeMessages,
    EnqueueMessage,
    EraseUser,
    ProbeWrite,
    RegisterUser,
    SweepExpired,
    WriteOperation,
)
from relay.storage.quota import QuotaCheck

_UPSERT_USER = """
INSERT INTO users (user_id, ed25519_public, x25519_public, registered_at_ms,
                   updated_at_ms)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (user_id) DO UPDATE
SET x25519_public = excluded.x25519_public, updated_at_ms = excluded.updated_at_ms
WHERE users.ed25519_public = excluded.ed25519_public
"""

_INSERT_MESSAGES = """
INSERT INTO mailbox_messages (recipient_id, sender_id, message_id, received_at_ms,
                              expires_at_ms, payload, trace_id)
VALUES {rows}
"""
# Lookup result of a message without a result row: new, to a registered user.
_NEW_MESSAGE = (None, None, True)

# Per (sender_id, message_id, recipient_id) of the batch: the stored copy's
# expiry, the dedup record's status and whether the recipient is registered.
# Only rows with news come back (a duplicate or an unknown recipient), so the
# common case of a new message to a known user costs no result row.
_LOOK_UP_MESSAGES = """
WITH batch (sender_id, message_id, recipient_id) AS (VALUES {rows})
SELECT b.sender_id, b.message_id, m.expires_at_ms, d.status, u.user_id IS NOT NULL
FROM batch AS b
LEFT JOIN mailbox_messages AS m
    ON m.sender_id = b.sender_id AND m.message_id = b.message_id
LEFT JOIN dedup_records AS d
    ON d.sender_id = b.sender_id AND d.message_id = b.message_id
LEFT JOIN users AS u ON u.user_id = b.recipient_id
WHERE m.expires_at_ms IS NOT NULL OR d.status IS NOT NULL OR u.user_id IS NULL
"""

_DELETE_ACKNOWLEDGED = f"""
WITH batch (recipient_id, sender_id, message_id) AS (VALUES {{rows}})
DELETE FROM mailbox_messages
WHERE seq IN (
    SELECT m.seq FROM batch AS b
    JOIN mailbox_messages AS m
        ON m.sender_id = b.sender_id AND m.message_id = b.message_id
        AND m.recipient_id = b.recipient_id
)
RETURNING message_id, trace_id, {SUMMARY_COLUMNS}
"""

_RECORD_OUTCOMES = """
INSERT OR REPLACE INTO dedup_records (sender_id, message_id, status, recorded_at_ms)
VALUES {rows}
"""

# Both take the oldest rows first, through the indexes by expiry and by age,
# and at most a given number, so that a sweep after a long stop or a mass
# expiry never loads or deletes everything in one transaction.
_DELETE_EXPIRED = f"""
DELETE FROM mailbox_messages WHERE seq IN (
    SELECT seq FROM mailbox_messages WHERE expires_at_ms <= ?
    ORDER BY expires_at_ms LIMIT ?
) RETURNING message_id, {SUMMARY_COLUMNS}
"""

_PURGE_DEDUP_RECORDS = """
DELETE FROM dedup_records WHERE (sender_id, message_id) IN (
    SELECT sender_id, message_id FROM dedup_records WHERE recorded_at_ms < ?
    ORDER BY recorded_at_ms LIMIT ?
)
"""

# A write probe inserts and deletes this dedup record in one transaction. The
# commit appends pages to the WAL like any batch, and leaves no row behind.
# No user has an empty id, so the key cannot meet a real record. The 64 KiB
# message id, larger than any MESSAGE payload, makes the probe fail where a
# large message would, since on a nearly full disk small commits can still
# fit in space that a failed batch left allocated in the WAL file.
_PROBE_KEY = ("", "storage-write-probe-" + "x" * 65_536)
_INSERT_PROBE = """
INSERT OR REPLACE INTO dedup_records (sender_id, message_id, status, recorded_at_ms)
VALUES (?, ?, 1, 0)
"""
_DELETE_PROBE = "DELETE FROM dedup_records WHERE sender_id = ? AND message_id = ?"

# The two AckStatus values that dedup_records.status stores, as plain integers.
_STATUS_DELIVERED = int(AckStatus.DELIVERED)
_STATUS_EXPIRED = int(AckStatus.EXPIRED)


class IndexChanges:
    """Changes a batch made to the mailboxes, applied to the index after commit."""

    def __init__(self) -> None:
        self.added: list[MessageSummary] = []
        self.removed: list[MessageSummary] = []
        self.dropped: list[str] = []
        self.unwritten = 0  # messages acknowledged in the batch that admitted them

    def apply(self, index: MailboxIndex) -> None:
        # Same order as the batch: enqueues come before acknowledgements and
        # sweeps, and an erasure is alone in its batch.
        for message in self.added:
            index.add(message)
        for message in self.removed:
            index.remove(message)
        for recipient_id in self.dropped:
            index.drop(recipient_id)


class BatchTransaction:
    """The statements of one batch, run inside the transaction the writer opened."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        index: MailboxIndex,
        quotas: Quotas,
        max_variables: int,
    ) -> None:
        self._db = connection
        self._index = index
        self._quotas = quotas
        self._max_variables = max_variables
        self.changes = IndexChanges()

    def run(self, operations: Sequence[WriteOperation]) -> None:
        """Run the operations and fill in their outcomes, without committing.

        Registrations run first, so that a message to a user registering in
        the same batch finds that user. Enqueues follow, then
        acknowledgements, sweeps, erasures and write probes. A message that
        an ACK in the same batch names is recorded as delivered and never
        inserted: the relay pushes a new message as it arrives, so the
        recipient's ACK often reaches the writer before the message's batch
        has begun.
        """
        registrations, enqueues, acknowledgements, sweeps, erasures, probes = _by_kind(
            operations
        )
        if registrations:
            self._register(registrations)
        admitted: dict[tuple[str, str, str], EnqueueMessage] = {}
        if enqueues:
            admitted = self._enqueue(enqueues)
        if acknowledgements:
            self._acknowledge(acknowledgements, admitted)
        if admitted:
            self._insert([op.message for op in admitted.values()])
        for sweep in sweeps:
            self._sweep(sweep)
        for erasure in erasures:
            self._erase(erasure)
        if probes:
            self._db.execute(_INSERT_PROBE, _PROBE_KEY)
            self._db.execute(_DELETE_PROBE, _PROBE_KEY)

    # --- registrations ---------------------------------------------------------------

    def _register(self, operations: list[RegisterUser]) -> None:
        user_ids = list(dict.fromkeys(op.user_id for op in operations))
        bound = self._bound_keys(user_ids)
        rows: dict[str, tuple] = {}
        for op in operations:
            key = bound.setdefault(op.user_id, op.ed25519_public)
            if key != op.ed25519_public:
                op.key_conflict = True
                continue
            # A user registering twice in one batch keeps the first time.
            earlier = rows.get(op.user_id)
            registered_at_ms = op.now_ms if earlier is None else earlier[3]
            rows[op.user_id] = (
                op.user_id,
                op.ed25519_public,
                op.x25519_public,
                registered_at_ms,
                op.now_ms,
            )
        if rows:
            self._db.executemany(_UPSERT_USER, list(rows.values()))

    def _bound_keys(self, user_ids: list[str]) -> dict[str, bytes]:
        """Return the Ed25519 key of each of these users already registered."""
        bound = {}
        for chunk in _chunks(user_ids, self._rows_per_statement(1)):
            sql = (
                "SELECT user_id, ed25519_public FROM users "
                f"WHERE user_id IN (VALUES {_placeholders(len(chunk), 1)})"
            )
            for user_id, key in self._db.execute(sql, chunk).fetchall():
                bound[user_id] = key
        return bound

    # --- enqueues --------------------------------------------------------------------

    def _enqueue(
        self, operations: list[EnqueueMessage]
    ) -> dict[tuple[str, str, str], EnqueueMessage]:
        """Decide each message's status; return the admitted ones, not yet inserted.

        The result maps (recipient_id, sender_id, message_id) to the
        operation, so that acknowledgements in the same batch can find them.
        """
        # The first copy of a (sender_id, message_id) decides; later copies
        # in the same batch get its status.
        firsts: dict[tuple[str, str], EnqueueMessage] = {}
        copies: list[tuple[EnqueueMessage, EnqueueMessage]] = []
        for op in operations:
            key = (op.message.sender_id, op.message.message_id)
            first = firsts.setdefault(key, op)
            if first is not op:
                copies.append((op, first))

        found = self._look_up([op.message for op in firsts.values()])
        quota = QuotaCheck(self._index, self._quotas)
        admitted = {}
        for key, op in firsts.items():
            stored_expiry, recorded_status, recipient_known = found.get(
                key, _NEW_MESSAGE
            )
            op.status = _duplicate_status(op.message, stored_expiry, recorded_status)
            if op.status is not None:
                continue
            if not recipient_known:
                op.status = AckStatus.UNKNOWN_RECIPIENT
            elif quota.relay_full():
                op.status = AckStatus.UNAVAILABLE
            elif not quota.admit(op.message):
                op.status = AckStatus.MAILBOX_FULL
            else:
                op.status = AckStatus.QUEUED
                op.stored = True
                admitted[op.message.recipient_id, key[0], key[1]] = op
        for copy, first in copies:
            copy.status = first.status
        return admitted

    def _insert(self, messages: list[StoredMessage]) -> None:
        self._insert_rows(_INSERT_MESSAGES, [_message_row(m) for m in messages])
        self.changes.added.extend(_summary(m) for m in messages)

    def _look_up(
        self, messages: list[StoredMessage]
    ) -> dict[tuple[str, str], tuple[int | None, int | None, bool]]:
        """Return what the database has of each duplicate or unknown recipient.

        Maps (sender_id, message_id) to (stored expiry, dedup status,
        recipient registered). Messages absent from the result are new and
        go to registered users.
        """
        found = {}
        triples = [(m.sender_id, m.message_id, m.recipient_id) for m in messages]
        for chunk in _chunks(triples, self._rows_per_statement(3)):
            sql = _LOOK_UP_MESSAGES.format(rows=_placeholders(len(chunk), 3))
            rows = self._db.execute(sql, _flatten(chunk)).fetchall()
            for sender_id, message_id, expiry, status, recipient_known in rows:
                found[sender_id, message_id] = (expiry, status, bool(recipient_known))
        return found

    # --- acknowledgements ------------------------------------------------------------

    def _acknowledge(
        self,
        operations: list[AcknowledgeMessages],
        admitted: dict[tuple[str, str, str], EnqueueMessage],
    ) -> None:
        """Delete acknowledged messages, and take those admitted in this batch out.

        A message admitted in this batch and acknowledged by its recipient
        is removed from `admitted`, so it is never inserted. It gets a dedup
        record and a receipt as a deleted one would.
        """
        named = dict.fromkeys(
            (op.recipient_id, sender_id, message_id)
            for op in operations
            for sender_id, message_id in op.keys
        )
        unwritten = {key: admitted.pop(key) for key in named if key in admitted}
        self.changes.unwritten += len(unwritten)
        stored = [key for key in named if key not in unwritten]
        deleted = self._delete_acknowledged(stored) if stored else {}
        records = []
        # Operations in batch order, so the first ACK naming a message gets it.
        for op in operations:
            for sender_id, message_id in op.keys:
                key = (op.recipient_id, sender_id, message_id)
                enqueue = unwritten.pop(key, None)
                if enqueue is not None:
                    enqueue.stored = False  # delivered, never written
                    message = enqueue.message
                    records.append(_unwritten_outcome(op, message))
                    if message.expires_at_ms > op.now_ms:
                        op.receipts.append(_receipt(message))
                    continue
                row = deleted.pop(key, None)
                if row is None:
                    continue
                summary, trace_id = row
                self.changes.removed.append(summary)
                if summary.expires_at_ms <= op.now_ms:
                    records.append((sender_id, message_id, _STATUS_EXPIRED, op.now_ms))
                    continue
                records.append((sender_id, message_id, _STATUS_DELIVERED, op.now_ms))
                op.receipts.append(
                    Receipt(sender_id, message_id, trace_id, summary.received_at_ms)
                )
        if records:
            self._insert_rows(_RECORD_OUTCOMES, records)

    def _delete_acknowledged(
        self, triples: list[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], tuple[MessageSummary, str]]:
        """Delete the named messages from their recipients' mailboxes.

        Returns, per (recipient_id, sender_id, message_id) deleted, the
        message's summary and trace id.
        """
        deleted = {}
        for chunk in _chunks(triples, self._rows_per_statement(3)):
            sql = _DELETE_ACKNOWLEDGED.format(rows=_placeholders(len(chunk), 3))
            rows = self._db.execute(sql, _flatten(chunk)).fetchall()
            for message_id, trace_id, *columns in rows:
                summary = MessageSummary._make(columns)
                key = (summary.recipient_id, summary.sender_id, message_id)
                deleted[key] = (summary, trace_id)
        return deleted

    # --- sweeps and erasures ---------------------------------------------------------

    def _sweep(self, op: SweepExpired) -> None:
        cutoff_ms = op.now_ms - op.dedup_window_ms
        purge = self._db.execute(_PURGE_DEDUP_RECORDS, (cutoff_ms, op.limit))
        purged = purge.rowcount
        rows = self._db.execute(_DELETE_EXPIRED, (op.now_ms, op.limit)).fetchall()
        records = []
        for message_id, *columns in rows:
            summary = MessageSummary._make(columns)
            self.changes.removed.append(summary)
            records.append((summary.sender_id, message_id, _STATUS_EXPIRED, op.now_ms))
        if records:
            self._insert_rows(_RECORD_OUTCOMES, records)
        op.outcome = Sweep(expired_messages=len(rows), purged_dedup_records=purged)

    def _erase(self, op: EraseUser) -> None:
        user = (op.user_id,)
        self._db.execute("DELETE FROM users WHERE user_id = ?", user)
        self._db.execute("DELETE FROM mailbox_messages WHERE recipient_id = ?", user)
        self._db.execute("DELETE FROM dedup_records WHERE sender_id = ?", user)
        self.changes.dropped.append(op.user_id)

    def _rows_per_statement(self, width: int) -> int:
        return max(1, self._max_variables // width)

    def _insert_rows(self, template: str, rows: list[tuple]) -> None:
        """Insert rows with as few multi-row statements as the variable limit allows."""
        width = len(rows[0])
        for chunk in _chunks(rows, self._rows_per_statement(width)):
            sql = template.format(rows=_placeholders(len(chunk), width))
            self._db.execute(sql, _flatten(chunk))


def _by_kind(operations: Sequence[WriteOperation]) -> tuple[list, ...]:
    kinds = (
        RegisterUser,
        EnqueueMessage,
        AcknowledgeMessages,
        SweepExpired,
        EraseUser,
        ProbeWrite,
    )
    groups: dict[type, list] = {kind: [] for kind in kinds}
    for op in operations:
        groups[type(op)].append(op)
    return tuple(groups[kind] for kind in kinds)


def _duplicate_status(
    message: StoredMessage, stored_expiry: int | None, recorded_status: int | None
) -> AckStatus | None:
    """Return the state of an earlier copy of this message, or None if new."""
    if stored_expiry is not None:
        if stored_expiry <= message.received_at_ms:
            return AckStatus.EXPIRED
        return AckStatus.QUEUED
    if recorded_status is not None:
        return AckStatus(recorded_status)
    return None


def _unwritten_outcome(op: AcknowledgeMessages, message: StoredMessage) -> tuple:
    """Return the dedup record of a message acknowledged before it was written."""
    expired = message.expires_at_ms <= op.now_ms
    status = _STATUS_EXPIRED if expired else _STATUS_DELIVERED
    return (message.sender_id, message.message_id, status, op.now_ms)


def _receipt(message: StoredMessage) -> Receipt:
    return Receipt(
        message.sender_id, message.message_id, message.trace_id, message.received_at_ms
    )


def _message_row(message: StoredMessage) -> tuple:
    return (
        message.recipient_id,
        message.sender_id,
        message.message_id,
        message.received_at_ms,
        message.expires_at_ms,
        message.payload,
        message.trace_id,
    )


def _summary(message: StoredMessage) -> MessageSummary:
    return MessageSummary(
        message.recipient_id,
        message.sender_id,
        len(message.payload),
        message.expires_at_ms,
        message.received_at_ms,
    )


def _placeholders(rows: int, width: int) -> str:
    row = "(" + ", ".join(["?"] * width) + ")"
    return ", ".join([row] * rows)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _flatten(rows: list[tuple]) -> list:
    return [value for row in rows for value in row]
