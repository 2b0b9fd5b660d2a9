"""One exception tree for everything pybuild raises on purpose.

Every error carries a message with context ("pushing layer sha256:… to …: …") and, where a user
can act on it, a ``hint``; each class has a ``default_hint`` for errors raised without one. The
CLI prints ``error: <message>`` (for a DockerfileError also the Dockerfile around the failing
line) and ``hint: <hint>`` and exits with ``exit_code`` (1, or 2 for usage errors); nothing below
the CLI prints or exits.
"""
from __future__ import annotations

import re

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
    "dockerfile_snippet",
]


class PybuildError(Exception):
    """Base of every error pybuild raises deliberately.

    ``message`` is one line; ``hint`` (optional) tells the user what to try next.
    """

    exit_code: int = 1
    default_hint: str | None = None  # printed when the error has no hint of its own

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UserError(PybuildError):
    """The input was wrong: a file, an argument, a reference, an archive."""

    default_hint = "check the arguments; `pybuild COMMAND --help` lists a command's options"


class UsageError(UserError):
    """The command line itself was wrong."""

    exit_code = 2
    default_hint = "see `pybuild COMMAND --help`"


class NotFound(UserError):
    """A named thing (image, blob, file, stage) does not exist."""

    default_hint = "check the name or path (`pybuild images` lists the images in the store)"


class InvalidReference(UserError):
    """An image reference could not be parsed."""

    default_hint = "references look like name[:tag][@sha256:digest], e.g. busybox:1.36 or localhost:5000/app:v1"


class InvalidArchive(UserError):
    """A tar, image archive or layer is malformed."""

    default_hint = "check that the file is complete and of the expected kind (tar, oci-archive, docker-archive)"


class DigestMismatch(PybuildError):
    """Bytes read or received do not hash to the digest (or size) they were addressed by."""

    default_hint = "the data is corrupt: `pybuild fsck` checks and repairs the store; fetch remote data again"

    def __init__(self, message: str, *, expected: str = "", actual: str = "",
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.expected = expected
        self.actual = actual


class StoreError(PybuildError):
    """The store is missing, unreadable or inconsistent."""

    default_hint = "check --root / $PYBUILD_ROOT; `pybuild fsck` checks and repairs the store"


class StoreLocked(StoreError):
    """A lock on the store could not be taken in time."""

    default_hint = "another pybuild is using the store; wait for it to finish"


class UnsafeLayer(InvalidArchive):
    """A layer entry or link would land outside the extraction root."""

    default_hint = "the layer is unsafe and was refused; do not use this image"


class DockerfileError(UserError):
    """A Dockerfile is malformed, or a step failed; carries the file, the 1-based line and the
    offending text (``reason`` is the message without ``file:line``)."""

    default_hint = "fix the marked line; the Dockerfile reference: https://docs.docker.com/reference/dockerfile/"

    def __init__(self, message: str, *, file: str = "Dockerfile", line: int = 0,
                 text: str = "", hint: str | None = None) -> None:
        where = f"{file}:{line}" if line else file
        if message.startswith(f"{where}: "):  # already said where (a wrapped step error)
            message = message[len(where) + 2:]
        full = f"{where}: {message}"
        if text:
            full += f"\n  {line:>4} | {text.rstrip()}" if line else f"\n  | {text.rstrip()}"
        super().__init__(full, hint=hint)
        self.file = file
        self.line = line
        self.text = text
        self.reason = message
        self.source: str | None = None  # the Dockerfile's text, when the caller has it (for a snippet)
        self.log: list[str] = []  # the failing step's output tail, when it is not on the screen already

    @property
    def headline(self) -> str:
        """``file:line: reason``: the first line of the message, without the quoted text."""
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason.splitlines()[0] if self.reason else ''}"

    def snippet(self, source: str | None = None, context: int = 2) -> list[str]:
        """The Dockerfile around the failing line, framed, with ``>>>`` on the failing instruction
        (all its continuation and heredoc lines); ``[]`` when ``source`` (default: ``self.source``)
        is unknown or does not contain the line."""
        return dockerfile_snippet(source if source is not None else self.source, self.line,
                                  name=self.file, context=context)


_MAX_MARKED = 10


def _instruction_end(lines: list[str], start: int, escape: str) -> int:
    """The index of the last line of the instruction starting at ``lines[start]``: continuation
    lines (ending in the escape character; comments and blank lines inside do not end it) and
    heredoc bodies up to their terminators."""
    i = start
    first = lines[start]
    terminators = [m.group(2) for m in re.finditer(r"<<(-?)[\"']?([A-Za-z_][A-Za-z0-9_]*)[\"']?", first)]
    while i + 1 < len(lines) and lines[i].rstrip().endswith(escape):
        i += 1
        while i + 1 < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
            i += 1
    for word in terminators:
        j = i + 1
        while j < len(lines) and lines[j].strip() != word:
            j += 1
        i = min(j, len(lines) - 1)
    return i


def dockerfile_snippet(source: str | None, line: int, *, name: str = "Dockerfile",
                       context: int = 2) -> list[str]:
    """Render ``source`` around 1-based ``line`` like BuildKit does::

         Dockerfile:3
        --------------------
           2 |     RUN make
           3 | >>> RUN exit 7
           4 |     CMD ["app"]
        --------------------
    """
    if not source or line < 1:
        return []
    lines = source.splitlines()
    if line > len(lines):
        return []
    m = re.match(r"(?:\s*#[^\n]*\n)*?\s*#\s*escape\s*=\s*(\S)", source)
    escape = m.group(1) if m else "\\"
    start = line - 1
    end = _instruction_end(lines, start, escape)
    lo, hi = max(0, start - context), min(len(lines) - 1, end + context)
    width = max(4, len(str(hi + 1)))
    rule = "-" * 20
    out = [f" {name}:{line}" + (f"-{end + 1}" if end > start else ""), rule]
    for i in range(lo, hi + 1):
        marked = start <= i <= end
        if marked and i - start == _MAX_MARKED and end - start > _MAX_MARKED:
            out.append(f"{'':>{width}} | >>> ...")
            continue
        if marked and i - start > _MAX_MARKED and i != end:
            continue
        text = lines[i].rstrip().expandtabs(4)
        out.append(f"{i + 1:>{width}} | {'>>>' if marked else '   '} {text}".rstrip())
    out.append(rule)
    return out


class BuildError(PybuildError):
    """A build step failed (after the Dockerfile was parsed)."""

    default_hint = "see the step's output above"


class RegistryError(PybuildError):
    """A registry answered with an error; ``code`` is the distribution-spec code when known."""

    default_hint = "check the registry address, the network and your credentials (`pybuild login`)"

    def __init__(self, message: str, *, code: str = "", status: int = 0,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.status = status
