"""The encrypted local store: one append-only journal, the box's single source of truth."""

from .backup import backup, restore
from .chain import Broken, Verification
from .errors import (BackupError, DataKeyError, EventTooLarge, JournalError, JournalFull, JournalInUse, NoJournal,
                     StorageError)
from .journal import DAMAGED, Event, Journal, check_path, remove_copies_left, remove_journal, verify_journal
from .keys import destroy_secret, load_data_key
from .owner import agent_lock
from .schema import SCHEMA_VERSION
from .store import Store

__all__ = ["DAMAGED", "BackupError", "Broken", "DataKeyError", "Event", "EventTooLarge", "Journal", "JournalError", "JournalFull", "JournalInUse",
           "NoJournal", "SCHEMA_VERSION", "StorageError", "Store", "Verification", "agent_lock", "destroy_secret", "load_data_key",
           "backup", "check_path", "remove_copies_left", "remove_journal", "restore", "verify_journal"]
