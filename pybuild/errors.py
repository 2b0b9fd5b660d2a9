"""One exception tree for everything pybuild raises on purpose.

Every error carries a message with context ("pushing layer sha256:… to …: …") and, where a user
can act on it, a ``hint``. The CLI prints ``error: <message>`` and ``hint: <hint>`` and exits with
``exit_code``; nothing below the CLI prints or exits.
"""
from __future__ import annotations

__all__ = [
    "PybuildError",
    "UserError",
    "UsageError",
    "NotFound",
    "InvalidReference",
    "InvalidArchive",
    "DigestMismatch",
    "StoreError",
    "StoreLocked",
    "UnsafeLayer",
    "DockerfileError",
    "BuildError",
    "RegistryError",
]


class PybuildError(Exception):
    """Base of every error pybuild raises deliberately.

    ``message`` is one line; ``hint`` (optional) tells the user what to try next.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UserError(PybuildError):
    """The input was wrong: a file, an argument, a reference, an archive."""


class UsageError(UserError):
    """The command line itself was wrong."""

    exit_code = 2


class NotFound(UserError):
    """A named thing (image, blob, file, stage) does not exist."""


class InvalidReference(UserError):
    """An image reference could not be parsed."""


class InvalidArchive(UserError):
    """A tar, image archive or layer is malformed."""


class DigestMismatch(PybuildError):
    """Bytes read or received do not hash to the digest (or size) they were addressed by."""

    def __init__(self, message: str, *, expected: str = "", actual: str = "",
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.expected = expected
        self.actual = actual


class StoreError(PybuildError):
    """The store is missing, unreadable or inconsistent."""


class StoreLocked(StoreError):
    """A lock on the store could not be taken in time."""


class UnsafeLayer(InvalidArchive):
    """A layer entry or link would land outside the extraction root."""


class DockerfileError(UserError):
    """A Dockerfile is malformed; carries the file, the 1-based line and the offending text."""

    def __init__(self, message: str, *, file: str = "Dockerfile", line: int = 0,
                 text: str = "", hint: str | None = None) -> None:
        where = f"{file}:{line}" if line else file
        full = f"{where}: {message}"
        if text:
            full += f"\n  {line:>4} | {text.rstrip()}" if line else f"\n  | {text.rstrip()}"
        super().__init__(full, hint=hint)
        self.file = file
        self.line = line
        self.text = text
        self.reason = message


class BuildError(PybuildError):
    """A build step failed (after the Dockerfile was parsed)."""


class RegistryError(PybuildError):
    """A registry answered with an error; ``code`` is the distribution-spec code when known."""

    def __init__(self, message: str, *, code: str = "", status: int = 0,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.status = status
