"""Driver failures as OpenNebula shows them: one human line on stderr, non-zero exit."""

from __future__ import annotations


class DriverError(Exception):
    """A failure with a one-line reason for the operator (str(exc) is that line)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code


class NotFound(DriverError):
    """The object a request names does not exist."""


class Conflict(DriverError):
    """The object to be made already exists."""


class Transient(DriverError):
    """A failure worth retrying (timeouts, busy, connection refused)."""
