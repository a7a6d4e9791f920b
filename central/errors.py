"""Central's errors: one root for rejections, the registry and conflicts."""


class CentralError(Exception):
    """Root of central's errors."""


class Rejected(CentralError):
    """A batch that central will not store; the message is the logged reason."""


class SeqConflict(Rejected):
    """A batch reuses sequence numbers for other events: never stored, never acknowledged."""


class JournalReplaced(SeqConflict):
    """A batch from another journal than the one central holds under the device's id: never stored, never
    acknowledged."""


class ForeignJournal(Rejected):
    """A batch naming a journal central holds from a box of another shop: a shop's journal goes on only at a
    box of that shop (its events would take the other shop's shelf for its own). Never stored or acknowledged."""


class UnheldBase(Rejected):
    """A batch counting its journal's events up to ``base_seq`` as delivered by another device, past what
    central holds of that journal from another device: never stored, never acknowledged."""


class Busy(CentralError):
    """Central's database: another transaction held a lock this one waited for past the time allowed (a peer
    central frozen mid-transaction, an operator's open session). Nothing was written; a box sends again what
    was not acknowledged."""


class RegistryError(CentralError):
    """A device registration that conflicts with what central holds, or cannot be read."""


class ActivationRefused(Rejected):
    """An activation request central will not honour; the reason goes back to the box."""


class AccessControlSilent(CentralError):
    """The broker's dynamic security plugin did not answer: a broker down, or one without the plugin (the
    development broker)."""
