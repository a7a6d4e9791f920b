"""The encrypted local store: one append-only journal, the box's single source of truth."""

from .errors import DataKeyError, EventTooLarge, JournalError, JournalFull, NoJournal, StorageError
from .journal import Event, Journal, remove_journal
from .keys import destroy_secret, load_data_key
from .store import Store

__all__ = ["DataKeyError", "Event", "EventTooLarge", "Journal", "JournalError", "JournalFull", "NoJournal",
           "StorageError", "Store", "destroy_secret", "load_data_key", "remove_journal"]
