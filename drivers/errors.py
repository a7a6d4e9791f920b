"""The drivers' errors: one root for scanners and keymaps."""


class DriverError(Exception):
    """Root of the drivers' errors."""


class ScannerError(DriverError):
    """A scanner path that cannot be read as an input-event source."""


class ScannerNoAccess(ScannerError):
    """The agent may not read the scanner's node (udev not done with it yet, or a group missing)."""


class ScannerGone(ScannerError):
    """The scanner went away while being read (unplugged)."""


class KeymapError(DriverError):
    """A layout that cannot be loaded."""
