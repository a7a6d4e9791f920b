"""The encrypted local store: one append-only journal, the box's single source of truth."""

from .journal import Event, Journal, JournalError, JournalFull
from .keys import DataKeyError, load_data_key

__all__ = ["DataKeyError", "Event", "Journal", "JournalError", "JournalFull", "load_data_key"]
