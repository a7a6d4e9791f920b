"""Identity and signing errors: one root, so a caller catches one thing for this package."""


class ProvisioningError(Exception):
    """Root of identity, signing and protocol errors."""


class IdentityError(ProvisioningError):
    """A key file or public key that cannot be used."""


class ProtocolError(ProvisioningError):
    """A message that breaks the wire contract (docs/protocol.md): refused, with the reason."""


class SignatureError(ProtocolError):
    """A token that is malformed, names another algorithm, or whose signature does not verify."""
