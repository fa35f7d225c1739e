"""GranAlign harness: zero-shot video moment retrieval on cached model outputs."""

__version__ = "0.1.0"
