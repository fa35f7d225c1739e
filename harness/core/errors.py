"""The harness's error types. Each message names the file (and line or id) and what was
expected, so the command line can print it as it is (`granalign: error: ...`)."""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error the command line reports as a one-line message, not a traceback."""


class DataError(HarnessError, ValueError):
    """Bad or missing input data; the message names the file, line or id."""


class DataFileMissing(DataError):
    """A benchmark file that the data root does not hold."""

    def __init__(self, path: object, dataset: str = "") -> None:
        self.path = str(path)
        self.dataset = dataset
        super().__init__(f"missing data file {path}")


class ConfigError(HarnessError, ValueError):
    """A config file, table spec, sweep space or override that does not fit its schema."""
