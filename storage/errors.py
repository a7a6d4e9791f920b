"""The store's errors: one root, so a caller catches one thing per package."""


class StorageError(Exception):
    """Root of the store's errors."""


class JournalError(StorageError):
    """The journal cannot be opened, read or written; the message says which and why."""


class JournalFull(JournalError):
    """The disk is full: nothing of the write was recorded (an event, an acknowledgement, a fold)."""


class EventTooLarge(JournalError):
    """An event bigger than any batch can carry: refused when recorded, so it can never block the uplink."""


class NoJournal(JournalError):
    """There is no journal yet (the agent has not run on this box)."""


class JournalInUse(JournalError):
    """Another agent holds the journal: one agent per journal."""


class DataKeyError(StorageError):
    """The data key is missing, malformed, or does not open the journal."""


class BackupError(StorageError):
    """A backup cannot be written, or a backup file cannot be opened or restored; the message says why."""
