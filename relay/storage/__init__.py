"""Storage of the user registry, the mailboxes and the dedup records."""

from relay.config import Settings
from relay.storage.base import Quotas, Storage, StorageUnavailable
from relay.storage.sqlite import SqliteStorage

__all__ = ["SqliteStorage", "Storage", "StorageUnavailable", "open_storage"]


def open_storage(settings: Settings) -> SqliteStorage:
    """Build the SQLite storage the settings describe; the caller awaits open()."""
    quotas = Quotas(
        max_messages=settings.mailbox_max_messages,
        max_bytes=settings.mailbox_max_bytes,
        max_per_sender=settings.mailbox_max_per_sender,
        max_stored=settings.max_stored_messages,
    )
    return SqliteStorage(
        settings.database_path,
        quotas,
        settings.write_batch_max,
        check_timeout_s=settings.database_check_timeout_s,
    )
