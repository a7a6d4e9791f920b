"""Identity, activation and signed documents."""
