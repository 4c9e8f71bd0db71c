"""parity's version (report.json's provenance records it)."""

__version__ = "0.1.0"
