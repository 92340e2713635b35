"""User-facing errors: each is reported as one line naming the problem, with exit status 2."""

from __future__ import annotations


class ClipkitError(Exception):
    """A problem in the user's input (config, data, checkpoint), not a bug in clipkit."""


class ConfigError(ClipkitError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key


class DataError(ClipkitError):
    pass


class CheckpointError(ClipkitError):
    pass


class ExportError(ClipkitError):
    """A model that the requested export format cannot express."""
