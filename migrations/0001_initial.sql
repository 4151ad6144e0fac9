-- Registry, mailboxes and dedup records of protocol v1.
-- Plain SQLite types only: operators read this file with the sqlite3 tool.

-- One row per registered user. The first REGISTER binds user_id to its
-- Ed25519 key for good (trust on first use); the X25519 key may change.
CREATE TABLE users (
    user_id          TEXT PRIMARY KEY,
    ed25519_public   BLOB NOT NULL,
    x25519_public    BLOB NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per message waiting for its recipient. seq is the mailbox order.
CREATE TABLE mailbox_messages (
    seq            INTEGER PRIMARY KEY,
    recipient_id   TEXT NOT NULL,
    sender_id      TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    payload        BLOB NOT NULL,
    trace_id       TEXT NOT NULL,
    UNIQUE (sender_id, message_id)
);
CREATE INDEX mailbox_messages_by_recipient ON mailbox_messages (recipient_id, seq);
CREATE INDEX mailbox_messages_by_expiry ON mailbox_messages (expires_at_ms);

-- What became of a message after it left its mailbox, so that a repeated
-- MESSAGE is answered DELIVERED (1) or EXPIRED (2) during the dedup window.
CREATE TABLE dedup_records (
    sender_id     TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    status        INTEGER NOT NULL CHECK (status IN (1, 2)),
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (sender_id, message_id)
) WITHOUT ROWID;
CREATE INDEX dedup_records_by_age ON dedup_records (recorded_at_ms);
