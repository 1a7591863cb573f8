"""remediator: turns alerts into bounded, audited, automatic remediations."""

__version__ = "0.1.0"
