"""The build context: docker's ``.dockerignore`` rules, a one-pass index, safe reads, content hashes.

What this module guarantees
---------------------------
* **.dockerignore like docker/BuildKit.** Lines are read the way BuildKit's ``dockerignore.ReadAll``
  reads them (BOM stripped, ``#`` comments only at column 0, white space trimmed, ``!`` exceptions,
  ``path.Clean`` and a leading ``/`` dropped), and each pattern is matched the way
  ``moby/patternmatcher`` matches it (``**`` for any number of directories, ``*``/``?`` never cross
  ``/``, ``[...]`` classes, ``\\`` escapes, last matching pattern wins, a pattern matching a parent
  directory matches everything below it). The walk follows ``tonistiigi/fsutil``: an excluded
  directory is still entered when an exception could re-include something below it, and such a
  directory shows up in the index (with its real metadata) as soon as one of its descendants is
  included.
* **Which ignore file.** ``<Dockerfile name>.dockerignore`` next to the Dockerfile wins over the
  context's ``.dockerignore`` (BuildKit behaviour).
* **The Dockerfile and the ignore file are always read by the builder**, whatever the patterns say,
  but like docker they are part of the context only when no pattern excludes them: ``COPY . /app``
  copies ``.dockerignore`` and ``Dockerfile`` unless a pattern (``.dockerignore``, ``Dockerfile``,
  ``*``…) excludes them.
* **One walk.** The context is walked once into an in-memory index (relative path →
  :class:`ContextEntry`); excluded paths are not in it. Symlinks are recorded as links and never
  followed by the walk.
* **No escapes.** :meth:`BuildContext.resolve` and :meth:`BuildContext.open` resolve symlinks as if
  the context directory were ``/`` (an absolute target or ``..`` never leaves the context), and the
  final open goes component by component with ``O_NOFOLLOW`` relative to directory descriptors, so a
  symlink swapped in after the walk cannot redirect a read outside the context.
* **Content hashes with a stat cache.** :meth:`BuildContext.file_digest` is memoised in a persistent
  :class:`StatCache` keyed by (absolute path, device, inode, size, mtime_ns, ctime_ns), so a no-op
  rebuild hashes nothing. :meth:`BuildContext.tree_digest` — what COPY cache keys use — covers path,
  type, mode (with suid/sgid/sticky), uid, gid, content digest and link target, never timestamps.
* **Tar contexts** (plain, gzip, bzip2, xz, zstd; detected by content) are extracted into a private
  temporary directory; entries with absolute names or ``..`` escapes are refused, and nothing is
  ever written through a symlink outside the extraction root.

Known departures from docker (deliberate, for patterns nobody writes on purpose): inside a
``.dockerignore`` character class ``*`` and ``?`` are literal (moby turns them into regexp
fragments), and ``\\x`` always means the literal ``x`` (moby hands ``\\d`` to Go's regexp engine).

No I/O happens at import time or in any constructor; :func:`open_context` and the methods that say
so do the I/O.
"""
from __future__ import annotations

import errno
import hashlib
import io
from json.encoder import encode_basestring_ascii as _json_string
import os
import posixpath
import re
import shutil
import sqlite3
import stat
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

from pybuild.errors import InvalidArchive, NotFound, StoreError, UsageError, UserError

if TYPE_CHECKING:
    import tarfile

__all__ = [
    "DEFAULT_DOCKERFILE",
    "DOCKERIGNORE",
    "STATCACHE_FILENAME",
    "EntryType",
    "ContextKind",
    "ContextEntry",
    "DockerfileSource",
    "IgnorePattern",
    "IgnoreMatcher",
    "parse_dockerignore",
    "StatKey",
    "StatCache",
    "BuildContext",
    "open_context",
    "open_build_context",
    "clean_context_path",
    "ContextFS",
]

DEFAULT_DOCKERFILE = "Dockerfile"
DOCKERIGNORE = ".dockerignore"
#: Suggested file name for the stat cache inside the store's ``metadata/`` directory.
STATCACHE_FILENAME = "statcache.sqlite"

_CHUNK = 1 << 20
_READ_MIN = 4096
_KEEP_FILE_MAX = 64 << 10
"""Files up to this size keep the bytes hashed for a cache key until the step ends (see
:meth:`BuildContext.open` and :meth:`BuildContext.release_kept`), at most ``_KEEP_TOTAL_MAX``
bytes at a time."""
_KEEP_TOTAL_MAX = 64 << 20
_TREE_LIST_MAX = 100_000  # tree_entries lists kept per COPY tree, as the explain record's cap
_SrcStat: "type | None" = None  # builder.copy.SrcStat, once ContextFS.lstat has run
_MAX_SYMLINK_HOPS = 255
_TREE_DIGEST_HEADER = b"pybuild.context.tree/v1\n"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------

class EntryType(str, Enum):
    """The kind of a file-system entry in the context."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    SOCKET = "socket"
    CHAR = "char"
    BLOCK = "block"

    @classmethod
    def from_mode(cls, mode: int) -> "EntryType":
        """The entry type of an ``st_mode``; never raises for a mode returned by ``lstat``."""
        if stat.S_ISREG(mode):
            return cls.FILE
        if stat.S_ISDIR(mode):
            return cls.DIR
        if stat.S_ISLNK(mode):
            return cls.SYMLINK
        if stat.S_ISFIFO(mode):
            return cls.FIFO
        if stat.S_ISSOCK(mode):
            return cls.SOCKET
        if stat.S_ISCHR(mode):
            return cls.CHAR
        return cls.BLOCK


class ContextKind(str, Enum):
    """Where the context came from."""

    DIR = "dir"          # a directory on the host
    TAR = "tar"          # a tar archive (file or stdin), extracted into a private temp dir
    EMPTY = "empty"      # ``-`` with a Dockerfile on stdin: no files at all


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One entry of the context index, as ``lstat`` saw it during the walk.

    ``path`` is relative to the context root, ``/``-separated, without a leading ``./`` (the root
    itself is ``"."``). ``mode`` holds the permission bits including suid/sgid/sticky
    (``S_IMODE``); ``link_target`` is the raw ``readlink`` text of a symlink, else ``None``.
    """

    path: str
    type: EntryType
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    dev: int
    nlink: int = 1
    rdev: int = 0
    link_target: str | None = None

    @classmethod
    def from_stat(cls, path: str, st: os.stat_result, link_target: str | None = None) -> "ContextEntry":
        """Build an entry from an ``lstat`` result; pure, never raises."""
        kind = EntryType.from_mode(st.st_mode)
        return cls(
            path=path, type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
            size=st.st_size if kind in (EntryType.FILE, EntryType.SYMLINK) else 0,
            mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, inode=st.st_ino, dev=st.st_dev,
            nlink=st.st_nlink, rdev=st.st_rdev if kind in (EntryType.CHAR, EntryType.BLOCK) else 0,
            link_target=link_target,
        )


@dataclass(frozen=True, slots=True)
class DockerfileSource:
    """The Dockerfile of a build: its bytes, where they came from, and a name for error messages."""

    name: str
    data: bytes
    path: Path | None = None


# --------------------------------------------------------------------------------------------
# Path helpers
# --------------------------------------------------------------------------------------------

def _go_clean(p: str) -> str:
    """Go's ``path.Clean``: like ``posixpath.normpath`` but ``//x`` becomes ``/x``."""
    out = posixpath.normpath(p) if p else "."
    if out.startswith("//"):
        out = "/" + out.lstrip("/")
    return out


def clean_context_path(relpath: str | os.PathLike[str]) -> str:
    """Normalise a path inside the context as BuildKit does (``path.Join("/", p)`` then relative).

    Guarantees: the result has no leading ``/`` or ``./``, no ``..`` (it is clamped at the root as
    if the context were ``/``), no trailing slash, and is ``"."`` for the root. Never raises.
    """
    p = os.fspath(relpath)
    cleaned = _go_clean("/" + p).lstrip("/")
    return cleaned or "."


def _parent(path: str) -> str:
    head, _, _ = path.rpartition("/")
    return head or "."


def _join(parent: str, name: str) -> str:
    return name if parent in ("", ".") else f"{parent}/{name}"


# --------------------------------------------------------------------------------------------
# Go filepath.Match syntax (validation) and character classes
# --------------------------------------------------------------------------------------------

_GO_SPACE = " \t\n\v\f\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
            "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def _go_trim_space(s: str) -> str:
    return s.strip(_GO_SPACE)


def _class_esc(ch: str) -> str:
    return "\\" + ch if ch in "\\]^-[&~|" else ch


def _parse_class(p: str, i: int) -> tuple[str, int]:
    """Parse a Go character class starting just after ``[``; return (python regex, next index).

    Raises ValueError (bad pattern) exactly where Go's ``filepath.Match`` reports ErrBadPattern.
    """
    n = len(p)
    negated = False
    if i < n and p[i] == "^":
        negated = True
        i += 1
    ranges: list[tuple[str, str]] = []

    def get_esc(j: int) -> tuple[str, int]:
        if j >= n or p[j] in "-]":
            raise ValueError("syntax error in pattern")
        if p[j] == "\\":
            j += 1
            if j >= n:
                raise ValueError("syntax error in pattern")
        ch = p[j]
        j += 1
        if j >= n:  # a class running into the end of the pattern is unterminated
            raise ValueError("syntax error in pattern")
        return ch, j

    while True:
        if i < n and p[i] == "]" and ranges:
            i += 1
            break
        lo, i = get_esc(i)
        hi = lo
        if p[i] == "-":
            hi, i = get_esc(i + 1)
        ranges.append((lo, hi))
    parts = [(_class_esc(lo) if lo == hi else f"{_class_esc(lo)}-{_class_esc(hi)}")
             for lo, hi in ranges if lo <= hi]
    if not parts:  # only inverted ranges: Go matches nothing (or, negated, any one character)
        return ("(?s:.)" if negated else "(?!)"), i
    return "[" + ("^" if negated else "") + "".join(parts) + "]", i


def _go_pattern_error(p: str) -> str | None:
    """The error Go's ``filepath.Match(p, ".")`` would report for a malformed pattern, else None."""
    i, n = 0, len(p)
    try:
        while i < n:
            c = p[i]
            if c == "\\":
                if i + 1 >= n:
                    return "syntax error in pattern (trailing backslash)"
                i += 2
            elif c == "[":
                _, i = _parse_class(p, i + 1)
            else:
                i += 1
    except ValueError:
        return "syntax error in pattern"
    return None


def _contains_wildcards(p: str) -> bool:
    """BuildKit's ``containsWildcards``: an unescaped ``*``, ``?`` or ``[``."""
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == "\\":
            i += 2
            continue
        if c in "*?[":
            return True
        i += 1
    return False


def _go_segment_regex(seg: str) -> re.Pattern[str]:
    """Compile one path segment with Go ``filepath.Match`` semantics; ValueError when malformed."""
    err = _go_pattern_error(seg)
    if err:
        raise ValueError(err)
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        if c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "\\":
            out.append(re.escape(seg[i + 1]))
            i += 2
        elif c == "[":
            cls, i = _parse_class(seg, i + 1)
            out.append(cls)
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


# --------------------------------------------------------------------------------------------
# .dockerignore
# --------------------------------------------------------------------------------------------

def parse_dockerignore(data: bytes | str) -> list[str]:
    """Read ignore-file text into patterns exactly as BuildKit's ``dockerignore.ReadAll`` does.

    Guarantees: a UTF-8 BOM on the first line is dropped; lines whose first character is ``#`` are
    comments (a ``#`` after leading blanks is *not* a comment); surrounding white space is trimmed;
    blank lines are dropped; ``!`` marks an exception (white space after it is trimmed too); each
    pattern is ``path.Clean``-ed and a leading ``/`` is removed (``/`` alone stays ``/``). Returned
    exceptions keep their ``!`` prefix. Never raises (undecodable bytes are kept as surrogates so
    that they match file names read with ``os.fsdecode``).
    """
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    out: list[str] = []
    for lineno, line in enumerate(text.split("\n")):
        if line.endswith("\r"):
            line = line[:-1]
        if lineno == 0 and line.startswith("\ufeff"):
            line = line[1:]
        if line.startswith("#"):
            continue
        pattern = _go_trim_space(line)
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = _go_trim_space(pattern[1:])
        if pattern:
            pattern = _go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return out


_EXACT, _PREFIX, _SUFFIX, _REGEX = "exact", "prefix", "suffix", "regexp"
_MOBY_ESCAPE = set(".+()|{}$")
_FSUTIL_PATTERN_CHARS = set("*[]?^\\")


@dataclass(frozen=True, slots=True)
class IgnorePattern:
    """One compiled ``.dockerignore`` pattern (moby/patternmatcher's four match kinds)."""

    text: str                      # cleaned pattern, without the ``!``
    exception: bool                # True for ``!pattern``
    kind: str                      # "exact" | "prefix" | "suffix" | "regexp"
    regex: re.Pattern[str] | None = None

    @classmethod
    def compile(cls, text: str, exception: bool = False) -> "IgnorePattern":
        """Compile a cleaned pattern. Raises ValueError when Go's ``filepath.Match`` would refuse it."""
        err = _go_pattern_error(text)
        if err:
            raise ValueError(err)
        body: list[str] = []
        kind = _EXACT
        i, n, step = 0, len(text), 0
        while i < n:
            ch = text[i]
            i += 1
            if ch == "*":
                if i < n and text[i] == "*":
                    i += 1
                    if i < n and text[i] == "/":
                        i += 1  # "**/" behaves like "**"
                    if i >= n:  # trailing "**": everything below
                        if kind == _EXACT:
                            kind = _PREFIX
                        else:
                            body.append(".*")
                            kind = _REGEX
                    else:
                        body.append("(.*/)?")
                        kind = _REGEX
                    if step == 0:
                        kind = _SUFFIX
                else:
                    body.append("[^/]*")
                    kind = _REGEX
            elif ch == "?":
                body.append("[^/]")
                kind = _REGEX
            elif ch in _MOBY_ESCAPE:
                body.append("\\" + ch)
            elif ch == "\\":
                if i < n:
                    body.append(re.escape(text[i]))
                    i += 1
                    kind = _REGEX
                else:
                    body.append("\\\\")
            elif ch == "[":
                cls_re, i = _parse_class(text, i)
                body.append(cls_re)
                kind = _REGEX
            elif ch == "]":
                body.append("\\]")
                kind = _REGEX
            elif ch == "^":
                body.append("^")  # moby passes it to the regexp engine unescaped: an anchor
            else:
                body.append(re.escape(ch))
            step += 1
        regex = re.compile("^" + "".join(body) + r"\Z", re.DOTALL) if kind == _REGEX else None
        return cls(text=text, exception=exception, kind=kind, regex=regex)

    def match(self, path: str) -> bool:
        """True when this pattern matches ``path`` itself (no parent-directory logic)."""
        if self.kind == _EXACT:
            return path == self.text
        if self.kind == _PREFIX:
            return path.startswith(self.text[:-2])
        if self.kind == _SUFFIX:
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        assert self.regex is not None
        return self.regex.match(path) is not None

    def without_trailing_glob(self) -> str:
        """fsutil's ``patternWithoutTrailingGlob``: drop one trailing ``/**``, then one ``/*``."""
        t = self.text
        if t.endswith("/**"):
            t = t[:-3]
        if t.endswith("/*"):
            t = t[:-2]
        return t


MatchInfo = tuple[bool, ...]


class IgnoreMatcher:
    """Decides which context paths are excluded, with docker's rules.

    ``patterns`` are ignore-file patterns (``!`` for exceptions), typically from
    :func:`parse_dockerignore`. Construction only compiles them (no I/O).
    """

    def __init__(self, patterns: Iterable[str], *, source: str = DOCKERIGNORE) -> None:
        """Compile ``patterns``. Raises UserError for ``!`` alone or a malformed pattern."""
        self.source = source
        compiled: list[IgnorePattern] = []
        for raw in patterns:
            p = _go_trim_space(raw)
            if not p:
                continue
            p = _go_clean(p)
            exception = p.startswith("!")
            if exception:
                if len(p) == 1:
                    raise UserError(f'{source}: illegal exclusion pattern: "!"',
                                    hint="an exception needs a path after the '!'")
                p = p[1:]
            try:
                compiled.append(IgnorePattern.compile(p, exception))
            except ValueError as e:
                raise UserError(f"{source}: invalid pattern {raw!r}: {e}",
                                hint="check the brackets and backslashes of the pattern "
                                     "(Go filepath.Match syntax)") from None
        self.patterns: tuple[IgnorePattern, ...] = tuple(compiled)
        self.has_exceptions = any(p.exception for p in self.patterns)
        self._exception_prefixes = tuple(
            p.without_trailing_glob() + "/" for p in self.patterns if p.exception)
        self._only_prefix_exceptions = all(
            not (_FSUTIL_PATTERN_CHARS & set(p.without_trailing_glob()))
            for p in self.patterns if p.exception)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"IgnoreMatcher({[('!' if p.exception else '') + p.text for p in self.patterns]!r})"

    def match_step(self, path: str, parent: MatchInfo | None) -> tuple[bool, MatchInfo]:
        """Is ``path`` excluded, given the match info of its parent directory?

        ``parent`` is what this method returned for the parent directory (``None`` for entries at
        the top of the context). This is moby's ``MatchesUsingParentResults``: a pattern counts as
        matching when it matched the parent (so a pattern that matches a directory matches all
        below it) or matches the path itself; the last matching pattern decides. Returns
        (excluded, info for children). Never raises.
        """
        matched = False
        info = [False] * len(self.patterns)
        for i, pat in enumerate(self.patterns):
            m = parent[i] if parent else False
            if not m:
                if pat.exception != matched:
                    continue  # cannot change the outcome (moby skips it, and records no match)
                m = pat.match(path)
            info[i] = m
            if m:
                matched = not pat.exception
        return matched, tuple(info)

    def excluded(self, relpath: str) -> bool:
        """True when ``relpath`` (relative to the context) is excluded; the root never is.

        Evaluates the chain of parent directories exactly as the context walk does. Never raises.
        """
        path = clean_context_path(relpath)
        if path == "." or not self.patterns:
            return False
        info: MatchInfo | None = None
        excluded = False
        parts = path.split("/")
        for k in range(1, len(parts) + 1):
            excluded, info = self.match_step("/".join(parts[:k]), info)
        return excluded

    def should_descend(self, dirpath: str) -> bool:
        """Must the walk enter the excluded directory ``dirpath`` (fsutil's rule)?

        No exceptions: never. Any exception with a wildcard (after dropping a trailing ``/**`` or
        ``/*``): always, since it might re-include something at any depth. Otherwise only when an
        exception lies below ``dirpath``. Never raises.
        """
        if not self.has_exceptions:
            return False
        if not self._only_prefix_exceptions:
            return True
        dir_slash = dirpath + "/"
        return any(p.startswith(dir_slash) for p in self._exception_prefixes)


# --------------------------------------------------------------------------------------------
# Stat cache
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StatKey:
    """Identifies one state of one file: if any field differs, the cached digest is not trusted."""

    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, path: str, st: os.stat_result) -> "StatKey":
        return cls(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


RACY_WINDOW_NS = 100_000_000
"""How close to the moment a file was looked at its timestamps may be before they are not trusted."""


def is_racy(mtime_ns: int, ctime_ns: int, at_ns: int, window_ns: int = RACY_WINDOW_NS) -> bool:
    """True when a file with these timestamps, looked at from ``at_ns`` (``time.time_ns()``) on,
    could change again without its timestamps changing (git's "racily clean" problem): one of
    them is within ``window_ns`` of ``at_ns``, or within two seconds on a file system with
    whole-second timestamps. Pure."""
    if mtime_ns % 1_000_000_000 == 0 and ctime_ns % 1_000_000_000 == 0:
        window_ns = max(window_ns, 2_000_000_000)
    return max(mtime_ns, ctime_ns) > at_ns - window_ns


def _i64(v: int) -> int:
    """Map an unsigned 64-bit number (st_ino, st_dev) into sqlite's signed INTEGER range."""
    return v - (1 << 64) if v >= (1 << 63) else v


class StatCache:
    """A persistent map from a file's stat identity to the sha256 of its content.

    Backed by an sqlite database in WAL mode (several processes may share it; writers wait up to
    ``timeout`` seconds for each other). Writes are buffered in memory until :meth:`flush`. The
    constructor does no I/O: the database (and its parent directory) is created on first use.

    Racy entries are never stored: a digest computed while the file's mtime or ctime was within
    ``racy_window_ns`` of the moment hashing started could belong to content that changes again
    within the same timestamp tick (git's "racily clean" problem), so :meth:`put` drops it when
    told when hashing started. File systems with whole-second timestamps get a two-second window.
    """

    def __init__(self, path: str | os.PathLike[str], *, racy_window_ns: int = RACY_WINDOW_NS,
                 timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.racy_window_ns = racy_window_ns
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._pending: dict[str, tuple[StatKey, str]] = {}
        self._preloaded: dict[str, tuple[tuple[int, ...], str]] | None = None  # fsdecoded paths
        self._preload_prefix = ""
        self._lock = threading.RLock()

    # -- connection --------------------------------------------------------------------------
    def _hint(self) -> str:
        return f"{self.path} is only a cache: remove it and build again"

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(os.fspath(self.path), timeout=self.timeout,
                                   isolation_level=None, check_same_thread=False)
            try:
                try:
                    conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per database
                except sqlite3.OperationalError as e:
                    if not _is_busy(e):  # busy: another process is switching it right now
                        raise
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS statcache ("
                    " path BLOB PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
                    " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
                    " digest TEXT NOT NULL) WITHOUT ROWID")
            except BaseException:
                conn.close()
                raise
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"opening stat cache {self.path}: {e}", hint=self._hint()) from e
        self._conn = conn
        return conn

    # -- API ---------------------------------------------------------------------------------
    def preload(self, prefix: str) -> None:
        """Read every entry under the directory ``prefix`` in one query, so that :meth:`get`
        for those paths needs no query of its own. Best effort: a busy database is skipped."""
        lo = os.fsencode(prefix.rstrip("/") + "/")
        hi = lo[:-1] + b"0"  # "/" + 1: the end of the key range
        with self._lock:
            try:
                rows = self._connect().execute(
                    "SELECT path, dev, ino, size, mtime_ns, ctime_ns, digest FROM statcache"
                    " WHERE path >= ? AND path < ?", (lo, hi)).fetchall()
            except sqlite3.Error:
                return
            # keyed by the fsdecoded path (a bijection), rows with a malformed digest left out
            match = _DIGEST_RE.fullmatch
            self._preloaded = {os.fsdecode(bytes(r[0])): ((r[1], r[2], r[3], r[4], r[5]), r[6]) for r in rows
                               if isinstance(r[6], str) and match(r[6])}
            self._preload_prefix = os.fsdecode(lo)

    def get(self, key: StatKey) -> str | None:
        """The digest stored for exactly this ``key``, else None (see :meth:`lookup`)."""
        return self.lookup(key.path, key.dev, key.ino, key.size, key.mtime_ns, key.ctime_ns)

    def lookup(self, path: str, dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> str | None:
        """The digest stored for exactly ``StatKey(path, dev, ino, size, mtime_ns, ctime_ns)``,
        else None; taking the fields, so that the once-per-context-file lookup in the preloaded
        rows makes no key object.

        Raises StoreError when the database is unreadable (not when it is merely busy: then None).
        """
        with self._lock:
            pending = self._pending.get(path)
            if pending is not None:
                k = pending[0]
                same = (k.dev, k.ino, k.size, k.mtime_ns, k.ctime_ns) == (dev, ino, size, mtime_ns, ctime_ns)
                return pending[1] if same else None
            if self._preloaded is not None and path.startswith(self._preload_prefix):
                hit = self._preloaded.get(path)
                if hit is None or hit[0] != (_i64(dev), _i64(ino), size, mtime_ns, ctime_ns):
                    return None
                return hit[1]
            conn = self._connect()
            try:
                row = conn.execute(
                    "SELECT digest FROM statcache WHERE path=? AND dev=? AND ino=? AND size=?"
                    " AND mtime_ns=? AND ctime_ns=?",
                    (os.fsencode(path), _i64(dev), _i64(ino), size, mtime_ns, ctime_ns)).fetchone()
            except sqlite3.OperationalError as e:
                if _is_busy(e):
                    return None
                raise StoreError(f"reading stat cache {self.path}: {e}", hint=self._hint()) from e
            except sqlite3.Error as e:
                raise StoreError(f"reading stat cache {self.path}: {e}", hint=self._hint()) from e
        if row is None or not isinstance(row[0], str) or not _DIGEST_RE.fullmatch(row[0]):
            return None
        return row[0]

    def is_racy(self, key: StatKey, hashed_at_ns: int) -> bool:
        """True when the file's timestamps are too close to ``hashed_at_ns`` to trust them."""
        return is_racy(key.mtime_ns, key.ctime_ns, hashed_at_ns, self.racy_window_ns)

    def put(self, key: StatKey, digest: str, *, hashed_at_ns: int | None = None) -> bool:
        """Remember ``digest`` for ``key`` (buffered until :meth:`flush`).

        When ``hashed_at_ns`` (``time.time_ns()`` taken before reading the file) is given and the
        entry is racy, nothing is stored. Returns True when the entry was buffered. Raises
        ValueError for a malformed digest.
        """
        if not _DIGEST_RE.fullmatch(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        if hashed_at_ns is not None and self.is_racy(key, hashed_at_ns):
            return False
        with self._lock:
            self._pending[key.path] = (key, digest)
        return True

    def flush(self) -> bool:
        """Write buffered entries in one transaction.

        Returns True when everything was written (or nothing was pending), False when another
        process held the database longer than ``timeout`` (the entries stay buffered for the next
        flush). Raises StoreError when the database is unusable.
        """
        with self._lock:
            if not self._pending:
                return True
            conn = self._connect()
            rows = [(os.fsencode(k.path), _i64(k.dev), _i64(k.ino), k.size, k.mtime_ns,
                     k.ctime_ns, d) for k, d in self._pending.values()]
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT OR REPLACE INTO statcache VALUES (?,?,?,?,?,?,?)", rows)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                if _is_busy(e):
                    return False
                raise StoreError(f"writing stat cache {self.path}: {e}", hint=self._hint()) from e
            except sqlite3.Error as e:
                raise StoreError(f"writing stat cache {self.path}: {e}", hint=self._hint()) from e
            self._pending.clear()
            return True

    def close(self) -> None:
        """Flush and close the database. Raises StoreError like :meth:`flush`."""
        with self._lock:
            try:
                self.flush()
            finally:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

    def __enter__(self) -> "StatCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


# --------------------------------------------------------------------------------------------
# Opening files beneath a root (symlinks resolved as if the root were "/")
# --------------------------------------------------------------------------------------------

_O_PATH = getattr(os, "O_PATH", 0)
_DIR_FLAGS = (_O_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _resolve_beneath(root_fd: int, rel: str, *, follow_final: bool,
                     create_dirs: bool = False) -> tuple[int, str, str]:
    """Walk ``rel`` below the directory ``root_fd`` on disk, symlinks resolved inside the root.

    Returns (parent directory fd — the caller closes it, final name — ``""`` for the root itself,
    resolved relative path — ``"."`` for the root). The final component may not exist. With
    ``create_dirs`` missing intermediate directories are created (mode 0755). Raises OSError:
    ENOENT/ENOTDIR for a missing or non-directory intermediate, ELOOP after too many symlinks or
    when a component turns into a symlink while we look at it.
    """
    parts = deque(p for p in rel.split("/") if p not in ("", "."))
    stack: list[tuple[int, str]] = []
    hops = 0

    def cur() -> int:
        return stack[-1][0] if stack else root_fd

    try:
        while parts:
            c = parts.popleft()
            if c == "..":
                if stack:
                    os.close(stack.pop()[0])
                continue
            last = not parts
            try:
                st = os.stat(c, dir_fd=cur(), follow_symlinks=False)
            except FileNotFoundError:
                if last:
                    return os.dup(cur()), c, _join("/".join(n for _, n in stack), c)
                if not create_dirs:
                    raise
                os.mkdir(c, 0o755, dir_fd=cur())
                st = os.stat(c, dir_fd=cur(), follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) and (not last or follow_final):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", rel)
                target = os.readlink(c, dir_fd=cur())
                if target.startswith("/"):
                    while stack:
                        os.close(stack.pop()[0])
                parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if last:
                return os.dup(cur()), c, _join("/".join(n for _, n in stack), c)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, "not a directory", c)
            stack.append((os.open(c, _DIR_FLAGS, dir_fd=cur()), c))
        # rel resolved to a directory reached through the stack (or the root itself)
        if stack:
            fd, name = stack.pop()
            os.close(fd)
            return os.dup(cur()), name, _join("/".join(n for _, n in stack), name)
        return os.dup(root_fd), "", "."
    finally:
        while stack:
            os.close(stack.pop()[0])


def _open_dir_beneath(root_fd: int, rel: str, *, create: bool = False) -> tuple[int, str]:
    """Open (creating with ``create``) the directory ``rel`` below ``root_fd``; (fd, resolved)."""
    pfd, name, resolved = _resolve_beneath(root_fd, rel, follow_final=True, create_dirs=create)
    try:
        if not name:
            return os.dup(pfd), resolved
        if create:
            try:
                os.mkdir(name, 0o755, dir_fd=pfd)
            except FileExistsError:
                pass
        return os.open(name, _DIR_FLAGS, dir_fd=pfd), resolved
    finally:
        os.close(pfd)


def _open_file_beneath(root_fd: int, rel: str) -> tuple[int, str]:
    """Open the regular file ``rel`` below ``root_fd`` for reading; (fd, resolved path).

    Raises OSError (ENOENT, ELOOP, …) and IsADirectoryError/OSError(EINVAL) for non-files.
    """
    pfd, name, resolved = _resolve_beneath(root_fd, rel, follow_final=True)
    try:
        if not name:
            raise IsADirectoryError(errno.EISDIR, "is a directory", rel)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
    finally:
        os.close(pfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", rel)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, resolved


# --------------------------------------------------------------------------------------------
# Tar contexts
# --------------------------------------------------------------------------------------------

class _PrefixedReader(io.RawIOBase):
    """A raw stream that replays ``head`` and then reads from ``rest``."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        if not data:
            return 0
        b[:len(data)] = data
        return len(data)


def _read_head(f: BinaryIO, n: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        data = f.read(n - got)
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def _compression(head: bytes) -> str | None:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


def _looks_like_tar(head: bytes) -> bool:
    """True when ``head`` starts with a tar header whose checksum is right."""
    if len(head) < 512:
        return False
    block = head[:512]
    field = block[148:156].replace(b"\x00", b" ").strip()
    try:
        expected = int(field, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum((x - 256 if x > 127 else x) for x in block[:148] + block[156:]) + 8 * 32
    return expected in (unsigned, signed)


def _decompressed(raw: BinaryIO, kind: str | None) -> BinaryIO:
    # Imported here, as tarfile is in _extract_tar: only ADD of a local archive needs them.
    import bz2
    import gzip
    import lzma
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    if kind == "zstd":
        import zstandard  # imported lazily: only zstd contexts need it
        return zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[return-value]
    return raw


def _member_name(name: str, what: str) -> str:
    """Normalise a tar member name; refuse absolute names and ``..`` escapes (InvalidArchive)."""
    if name.startswith("/"):
        raise InvalidArchive(f"build context archive: {what} {name!r} is an absolute path",
                             hint="create the archive with relative names (tar -C DIR -c .)")
    cleaned = posixpath.normpath(name) if name else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise InvalidArchive(f"build context archive: {what} {name!r} escapes the context",
                             hint="the archive is unsafe; entries may not contain '..' escapes")
    return "" if cleaned == "." else cleaned


def _remove_existing(pfd: int, name: str, keep_dir: bool) -> bool:
    """Remove ``name`` in ``pfd`` unless it is a directory and ``keep_dir``; True if a dir stays."""
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return True
        shutil.rmtree(name, dir_fd=pfd)
    else:
        os.unlink(name, dir_fd=pfd)
    return False


def _extract_tar(stream: BinaryIO, dest: Path) -> None:
    """Extract a tar stream into the empty directory ``dest``; raises InvalidArchive.

    Guarantees: nothing is created outside ``dest`` (parents are resolved inside ``dest`` with
    symlinks evaluated as if ``dest`` were ``/``; the entry itself is never followed); modes
    (with suid/sgid/sticky), mtimes and — when running as root — owners are applied; device nodes
    are skipped.
    """
    import tarfile
    as_root = os.geteuid() == 0
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dirs: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for m in tf:
                rel = _member_name(m.name, "entry")
                if not rel:
                    if m.isdir():
                        dirs["."] = m
                    continue
                parent, _, name = rel.rpartition("/")
                try:
                    pfd, parent_resolved = _open_dir_beneath(root_fd, parent, create=True)
                except OSError as e:
                    raise InvalidArchive(f"build context archive: cannot create parent of {rel!r}: "
                                         f"{e.strerror or e}") from e
                try:
                    _extract_member(tf, m, pfd, name, root_fd, as_root)
                    if m.isdir():
                        dirs[_join(parent_resolved, name)] = m
                finally:
                    os.close(pfd)
        # directories last (deepest first): a read-only directory must not block its children
        for path in sorted(dirs, key=lambda p: (p.count("/"), p), reverse=True):
            _apply_dir_metadata(root_fd, path, dirs[path], as_root)
    except tarfile.TarError as e:
        raise InvalidArchive(f"build context archive is not a valid tar: {e}",
                             hint="pass a directory, or a tar/tar.gz/tar.bz2/tar.xz/tar.zst file") from e
    except _decompress_errors() as e:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES,
                                                  errno.EPERM, errno.EROFS):
            raise UserError(f"extracting build context archive: {e}") from e
        raise InvalidArchive(f"build context archive is damaged: {e}",
                             hint="check that the archive is complete") from e
    finally:
        os.close(root_fd)


def _decompress_errors() -> tuple[type[BaseException], ...]:
    import lzma
    import zlib
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, lzma.LZMAError)
    zstd = sys.modules.get("zstandard")
    if zstd is not None:
        errors += (zstd.ZstdError,)
    return errors


def _try_chown(fn: Callable[[], None]) -> None:
    try:
        fn()
    except PermissionError:
        pass


def _apply_dir_metadata(root_fd: int, path: str, m: tarfile.TarInfo, as_root: bool) -> None:
    """Set mode, owner (as root) and mtime of an extracted directory; best effort."""
    mtime_ns = int(m.mtime * 1e9)
    mode = stat.S_IMODE(m.mode)
    if path == ".":
        if as_root:
            _try_chown(lambda: os.fchown(root_fd, m.uid, m.gid))
        os.fchmod(root_fd, mode | 0o700)  # the context root must stay readable to us
        os.utime(root_fd, ns=(mtime_ns, mtime_ns))
        return
    try:
        pfd, name, _ = _resolve_beneath(root_fd, path, follow_final=False)
    except OSError:
        return
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            return
        if as_root:
            _try_chown(lambda: os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False))
        os.chmod(name, mode, dir_fd=pfd)
        os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=pfd, follow_symlinks=False)
    except OSError:
        pass
    finally:
        os.close(pfd)


def _extract_member(tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, name: str,
                    root_fd: int, as_root: bool) -> None:
    mode = stat.S_IMODE(m.mode)
    mtime_ns = int(m.mtime * 1e9)
    if m.isdir():
        if not _remove_existing(pfd, name, keep_dir=True):
            os.mkdir(name, 0o700, dir_fd=pfd)
        return
    if m.ischr() or m.isblk():
        return
    _remove_existing(pfd, name, keep_dir=False)
    if m.issym():
        os.symlink(m.linkname, name, dir_fd=pfd)
    elif m.islnk():
        target = _member_name(m.linkname, "hard link target")
        try:
            tpfd, tname, _ = _resolve_beneath(root_fd, target, follow_final=False)
        except OSError as e:
            raise InvalidArchive(f"build context archive: hard link {m.name!r} → {m.linkname!r}: "
                                 f"{e.strerror or e}") from e
        try:
            st = os.stat(tname, dir_fd=tpfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise InvalidArchive(f"build context archive: hard link {m.name!r} points to a "
                                     f"directory")
            os.link(tname, name, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError as e:
            raise InvalidArchive(f"build context archive: hard link {m.name!r} points to missing "
                                 f"{m.linkname!r}") from e
        finally:
            os.close(tpfd)
        return  # a hard link shares the target's metadata
    elif m.isfifo():
        os.mkfifo(name, 0o600, dir_fd=pfd)
        os.chmod(name, mode, dir_fd=pfd)
    else:  # regular file (tarfile maps unknown types to regular files)
        src = tf.extractfile(m)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=pfd)
        try:
            if src is not None:
                with os.fdopen(os.dup(fd), "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            if as_root:
                _try_chown(lambda: os.fchown(fd, m.uid, m.gid))
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    if as_root and not m.isreg():
        _try_chown(lambda: os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False))
    os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=pfd, follow_symlinks=False)


def _rmtree_force(path: Path) -> None:
    """Remove a tree even when the archive made some directories read-only."""
    def onerror(func: object, p: str, exc: object) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p, onerror=onerror)  # type: ignore[arg-type]
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass

    shutil.rmtree(path, onerror=onerror)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The build context
# --------------------------------------------------------------------------------------------

class BuildContext:
    """A build context: the files COPY/ADD may use, the Dockerfile and the ignore rules.

    Create one with :func:`open_context`. The index is built by the first method that needs it
    (:meth:`walk`), once; all methods are safe to call from several threads.
    """

    def __init__(self, *, kind: ContextKind, root: Path | None, dockerfile: DockerfileSource,
                 ignore_file: str | None = None, ignore_patterns: Sequence[str] = (),
                 stat_cache: StatCache | None = None, cleanup_dir: Path | None = None,
                 owns_stat_cache: bool = False,
                 host_inputs: Sequence[tuple[str, str | None]] = ()) -> None:
        """Assemble a context from prepared parts (no I/O). Raises UserError for bad patterns.

        With ``owns_stat_cache`` :meth:`close` also closes ``stat_cache`` (else it only flushes).
        ``host_inputs`` are the host files that decided the Dockerfile and the ignore rules, as
        ``(absolute path, sha256 hex of the bytes used, or None when the file was absent)``.
        """
        self.kind = kind
        self.root = root
        self.dockerfile = dockerfile
        self.ignore_file = ignore_file
        self.ignore_patterns: tuple[str, ...] = tuple(ignore_patterns)
        self.matcher = IgnoreMatcher(self.ignore_patterns, source=ignore_file or DOCKERIGNORE)
        self.stat_cache = stat_cache
        self._owns_stat_cache = owns_stat_cache
        self._cleanup_dir = cleanup_dir
        self.host_inputs: tuple[tuple[str, str | None], ...] = tuple(host_inputs)
        self._lock = threading.RLock()
        self._index: dict[str, ContextEntry] | None = None
        self._index_view: Mapping[str, ContextEntry] | None = None  # read-only view, once walked
        self._looked_into: list[ContextEntry] = []   # excluded directories the walk descended
        self._children: dict[str, list[str]] = {}
        self._root_entry: ContextEntry | None = None
        self._digests: dict[str, str] = {}
        self._tree_digests: dict[tuple[str, ...], str] = {}  # paths -> tree_digest, once computed
        self._tree_lists: dict[tuple[str, ...], list[tuple[str, str, str, int, int, str]]] = {}  # its entries
        self._kept: dict[str, bytes] = {}  # resolved path -> the bytes its digest was computed over
        self._kept_bytes = 0
        self._resolved: dict[tuple[str, bool], str] = {}
        self._cache_preloaded = False
        self._abs_prefix: str | None = None
        self._dir_fds: OrderedDict[str, int] = OrderedDict()
        self.hashed_files = 0
        self.hashed_bytes = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"BuildContext(kind={self.kind.value}, root={str(self.root) if self.root else None!r})"

    # -- lifecycle ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Write pending stat-cache entries (see :meth:`StatCache.flush`)."""
        if self.stat_cache is not None:
            self.stat_cache.flush()

    def close(self) -> None:
        """Flush the stat cache and remove the temporary extraction directory, if any.

        Idempotent. Raises StoreError when the stat cache cannot be written.
        """
        if self.closed:
            return
        self.closed = True
        with self._lock:
            while self._dir_fds:
                os.close(self._dir_fds.popitem()[1])
        try:
            if self.stat_cache is not None and self._owns_stat_cache:
                self.stat_cache.close()
            else:
                self.flush()
        finally:
            if self._cleanup_dir is not None:
                _rmtree_force(self._cleanup_dir)
                self._cleanup_dir = None

    def __enter__(self) -> "BuildContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the walk ----------------------------------------------------------------------------
    def walk(self) -> Mapping[str, ContextEntry]:
        """Walk the context once (later calls return the same index) and return it.

        The mapping goes from relative path to entry and holds every non-excluded path (not the
        root; see :meth:`lstat`). Raises UserError when an included directory cannot be read and
        NotFound when the context directory disappeared.
        """
        view = self._index_view
        if view is None:
            with self._lock:
                if self._index is None:
                    self._build_index()
                assert self._index is not None
                view = self._index_view = MappingProxyType(self._index)
        return view

    @property
    def index(self) -> Mapping[str, ContextEntry]:
        """The index (walking first if needed); see :meth:`walk`."""
        return self.walk()

    def _build_index(self) -> None:
        index: dict[str, ContextEntry] = {}
        if self.root is None:
            self._root_entry = ContextEntry(".", EntryType.DIR, 0o755, 0, 0, 0, 0, 0, 0, 0, 1)
            self._index, self._children = index, {".": []}
            return
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise NotFound(f"build context {self.root} no longer exists") from e
        except OSError as e:
            raise UserError(f"cannot read build context {self.root}: {e.strerror or e}") from e
        deferred: dict[str, ContextEntry] = {}
        matcher = self.matcher if self.matcher else None

        def include(rel: str, entry: ContextEntry) -> None:
            # an excluded directory we descended into appears once something below it is included
            anc = _parent(rel)
            missing: list[str] = []
            while anc != "." and anc not in index:
                missing.append(anc)
                anc = _parent(anc)
            for a in missing:
                if a in deferred:
                    index[a] = deferred[a]
            index[rel] = entry

        def visit(dir_fd: int, rel_dir: str, parent_info: MatchInfo | None, dir_excluded: bool) -> None:
            try:
                with os.scandir(dir_fd) as it:
                    items = list(it)
            except FileNotFoundError:
                return
            except OSError as e:
                if dir_excluded:
                    return  # like fsutil: an unreadable excluded directory is skipped quietly
                raise UserError(f"cannot read build context directory {rel_dir or '.'}: "
                                f"{e.strerror or e}",
                                hint=f"make it readable or exclude it in {self.ignore_file or DOCKERIGNORE}"
                                ) from e
            for de in items:
                rel = _join(rel_dir, de.name)
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if matcher is not None:
                    excluded, info = matcher.match_step(rel, parent_info)
                else:
                    excluded, info = False, None
                if excluded and not (is_dir and matcher is not None and matcher.should_descend(rel)):
                    continue
                target = None
                if stat.S_ISLNK(st.st_mode):
                    try:
                        target = os.readlink(de.name, dir_fd=dir_fd)
                    except FileNotFoundError:
                        continue
                entry = ContextEntry.from_stat(rel, st, target)
                if excluded:
                    deferred[rel] = entry
                else:
                    include(rel, entry)
                if is_dir:
                    try:
                        sub = os.open(de.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                      | os.O_CLOEXEC, dir_fd=dir_fd)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    except OSError as e:
                        if excluded:
                            continue
                        if e.errno == errno.ELOOP:  # became a symlink under our feet
                            continue
                        raise UserError(f"cannot read build context directory {rel}: "
                                        f"{e.strerror or e}",
                                        hint="make it readable or exclude it in "
                                             f"{self.ignore_file or DOCKERIGNORE}") from e
                    try:
                        visit(sub, rel, info, excluded)
                    finally:
                        os.close(sub)

        try:
            self._root_entry = ContextEntry.from_stat(".", os.fstat(root_fd))
            visit(root_fd, "", None, False)
        finally:
            os.close(root_fd)
        children: dict[str, list[str]] = {".": []}
        for path, entry in index.items():
            children.setdefault(_parent(path), []).append(path.rpartition("/")[2])
            if entry.type is EntryType.DIR:
                children.setdefault(path, [])
        for names in children.values():
            names.sort()
        self._index, self._children = index, children
        self._looked_into = [e for p, e in deferred.items() if p not in index]

    def walked_entries(self) -> list[ContextEntry]:
        """Every entry whose ``lstat`` the index depends on, as the walk saw it (walking first if
        needed): the root, every included path, and every excluded directory the walk looked
        into for exceptions below it.

        Any change that can change the index changes one of these entries' stat: new content
        changes a file's mtime and ctime, a chmod or chown its ctime, and an entry added, removed
        or renamed changes its directory's. Empty for a context that is not a host directory.
        Raises what :meth:`walk` raises.
        """
        if self.kind is not ContextKind.DIR:
            return []
        self.walk()
        assert self._root_entry is not None and self._index is not None
        return [self._root_entry, *self._index.values(), *self._looked_into]

    # -- lookups -----------------------------------------------------------------------------
    def is_excluded(self, relpath: str) -> bool:
        """True when the ignore rules exclude ``relpath`` (no I/O; the root is never excluded)."""
        return self.matcher.excluded(relpath)

    def lstat(self, relpath: str) -> ContextEntry:
        """The index entry of ``relpath`` itself (symlinks not followed, parents are).

        Raises NotFound when it is missing or excluded.
        """
        resolved = self.resolve(relpath, follow_final=False)
        return self._entry(resolved)

    def _entry(self, resolved: str) -> ContextEntry:
        index = self.walk()
        if resolved == ".":
            assert self._root_entry is not None
            return self._root_entry
        return index[resolved]

    def exists(self, relpath: str) -> bool:
        """True when ``relpath`` is in the (non-excluded) context; symlinks themselves count."""
        try:
            self.resolve(relpath, follow_final=False)
            return True
        except (NotFound, UserError):
            return False

    def _not_found(self, relpath: str, why: str = "not found") -> NotFound:
        clean = clean_context_path(relpath)
        if self.matcher.excluded(clean):
            hint = (f"{clean} is excluded by {self.ignore_file or DOCKERIGNORE}; remove the pattern "
                    f"or add an exception such as '!{clean}'")
        elif self.kind is ContextKind.EMPTY:
            hint = "the Dockerfile came from stdin, so the build context is empty; pass a directory"
        else:
            hint = f"paths are relative to the build context {self.root}"
        return NotFound(f'"{relpath}": {why} in the build context', hint=hint)

    def resolve(self, relpath: str, *, follow_final: bool = True) -> str:
        """Resolve ``relpath`` against the index with symlinks evaluated as if the context were ``/``.

        Guarantees: the result is the index path of an existing, non-excluded entry (``"."`` for
        the root) and never leaves the context (absolute link targets start again at the context
        root; ``..`` stops there). With ``follow_final=False`` a final symlink is returned as is.
        Raises NotFound (missing, excluded, or a non-directory used as a directory) and UserError
        (more than 255 symlinks).
        """
        hit = self._resolved.get((relpath, follow_final))
        if hit is not None:
            return hit
        index = self.walk()
        entry = index.get(relpath)
        if entry is not None and not (follow_final and entry.type is EntryType.SYMLINK):
            # An index key is a clean path whose parents are real directories of the index (the
            # walk does not follow links), so it resolves to itself.
            return relpath
        parts = deque(p for p in clean_context_path(relpath).split("/") if p not in ("", "."))
        resolved: list[str] = []
        hops = 0
        while parts:
            c = parts.popleft()
            if c == "..":
                if resolved:
                    resolved.pop()
                continue
            cand = "/".join(resolved + [c])
            entry = index.get(cand)
            if entry is None:
                raise self._not_found(relpath)
            if entry.type is EntryType.SYMLINK and (parts or follow_final):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise UserError(f'"{relpath}": too many levels of symbolic links in the build '
                                    f"context")
                target = entry.link_target or ""
                if target.startswith("/"):
                    resolved = []
                parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if parts and entry.type is not EntryType.DIR:
                raise self._not_found(relpath, "not a directory")
            resolved.append(c)
        out = "/".join(resolved) or "."
        self._resolved[(relpath, follow_final)] = out  # the index never changes once walked
        return out

    def open(self, relpath: str) -> BinaryIO:
        """Open the regular file ``relpath`` of the context for reading (symlinks followed safely).

        Guarantees: the file read is the one the index resolves ``relpath`` to, inside the
        context, never an excluded file and never anything reached through a symlink that points
        outside (every component is opened with ``O_NOFOLLOW`` below a directory descriptor).
        A small file hashed since the last :meth:`release_kept` is served from the bytes its
        digest was computed over (no second read for the layer or the snapshot, and the content
        matches the cache key); another file of up to 64 KiB is read at once into memory; a
        bigger one is opened unbuffered (callers read whole files or 1 MiB chunks).
        Raises NotFound (missing/excluded), UserError (not a regular file, unreadable, or the
        context changed since the walk).
        """
        resolved = self.resolve(relpath)
        entry = self._entry(resolved)
        if entry.type is not EntryType.FILE:
            raise UserError(f'"{relpath}": not a regular file in the build context '
                            f"({entry.type.value})")
        kept = self._kept.get(resolved)
        if kept is not None:
            return io.BytesIO(kept)
        fd, st = self._open_resolved(relpath, resolved)
        if st.st_size > _KEEP_FILE_MAX:
            return os.fdopen(fd, "rb", buffering=0)  # callers read whole files or 1 MiB chunks
        try:  # a small file is read at once: cheaper than a file object per file
            data = os.read(fd, st.st_size + 1)
            while len(data) <= st.st_size:
                more = os.read(fd, st.st_size + 1 - len(data))
                if not more:
                    break
                data += more
        except OSError as e:
            raise UserError(f'"{relpath}": reading from the build context failed: {e.strerror or e}'
                            ) from e
        finally:
            os.close(fd)
        return io.BytesIO(data)

    def release_kept(self) -> None:
        """Forget the small files' bytes kept since they were hashed (see :meth:`open`); a later
        :meth:`open` reads them from the context again. Called after each build step."""
        with self._lock:
            self._kept.clear()
            self._kept_bytes = 0

    def _dir_fd(self, resolved_dir: str) -> int:
        """A descriptor of the context directory ``resolved_dir``, opened component by component
        with O_NOFOLLOW below the root (kept open, at most 64 at a time, until :meth:`close`).
        Raises OSError, or UserError when the directory no longer resolves to itself."""
        with self._lock:
            fd = self._dir_fds.get(resolved_dir)
            if fd is not None:
                self._dir_fds.move_to_end(resolved_dir)
                return fd
            assert self.root is not None
            try:
                root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise UserError(f"cannot open build context {self.root}: {e.strerror or e}") from e
            try:
                fd, on_disk = _open_dir_beneath(root_fd, resolved_dir)
            finally:
                os.close(root_fd)
            if on_disk != (resolved_dir or "."):
                os.close(fd)
                raise UserError(f'"{resolved_dir}": the build context changed during the build',
                                hint="do not modify the context while building; build again")
            self._dir_fds[resolved_dir] = fd
            while len(self._dir_fds) > 64:
                os.close(self._dir_fds.popitem(last=False)[1])
            return fd

    def _open_resolved(self, relpath: str, resolved: str) -> tuple[int, os.stat_result]:
        """Open the regular file at the index path ``resolved``: the final component with
        O_NOFOLLOW below its directory's descriptor (see :meth:`_dir_fd`). Returns the
        descriptor and its ``fstat``."""
        if self.root is None:
            raise self._not_found(relpath)
        parent, _, name = resolved.rpartition("/")
        try:
            with self._lock:  # the descriptor must stay open while we use it
                dfd = self._dir_fd(parent)
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", relpath)
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
        except FileNotFoundError as e:
            raise NotFound(f'"{relpath}": removed from the build context during the build') from e
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(f'"{relpath}": the build context changed during the build',
                                hint="do not modify the context while building; build again") from e
            raise UserError(f'"{relpath}": cannot read from the build context: {e.strerror or e}',
                            hint="was the context changed during the build?") from e
        return fd, st

    def read_bytes(self, relpath: str) -> bytes:
        """The content of the regular file ``relpath`` (same guarantees and errors as :meth:`open`)."""
        with self.open(relpath) as f:
            return f.read()

    def iter_tree(self, relpath: str = ".") -> Iterator[ContextEntry]:
        """Entries of ``relpath`` and, for a directory, everything below it, parents first.

        Children are visited in sorted name order. ``relpath``'s parents are resolved; a final
        symlink is yielded as a link (not followed). Raises NotFound like :meth:`lstat`.
        """
        resolved = self.resolve(relpath, follow_final=False)
        top = self._entry(resolved)
        yield top
        if top.type is not EntryType.DIR:
            return
        index = self._index
        assert index is not None
        stack: list[Iterator[str]] = [iter(self._children.get(resolved, ()))]
        dirs = [resolved]
        while stack:
            name = next(stack[-1], None)
            if name is None:
                stack.pop()
                dirs.pop()
                continue
            p = _join(dirs[-1], name)
            e = index[p]
            yield e
            if e.type is EntryType.DIR:
                stack.append(iter(self._children.get(p, ())))
                dirs.append(p)

    # -- hashing -----------------------------------------------------------------------------
    def _abs(self, resolved: str) -> str:
        assert self.root is not None
        prefix = self._abs_prefix
        if prefix is None:
            prefix = self._abs_prefix = os.path.join(os.fspath(self.root), "")
        return os.fspath(self.root) if resolved == "." else prefix + resolved

    def file_digest(self, relpath: str) -> str:
        """``sha256:<hex>`` of the content of the regular file ``relpath`` (symlinks followed).

        Guarantees: each file is hashed at most once per context; with a stat cache, a file whose
        (path, dev, inode, size, mtime_ns, ctime_ns) is unchanged since an earlier build is not
        read at all. :attr:`hashed_files` counts the files actually read. Raises NotFound and
        UserError like :meth:`open`.
        """
        resolved = self.resolve(relpath)
        cached = self._digests.get(resolved)
        if cached is not None:
            return cached
        return self._digest_of(relpath, resolved, self._entry(resolved))

    def _digest_of(self, relpath: str, resolved: str, entry: ContextEntry) -> str:
        """:meth:`file_digest` of the index entry ``entry`` at the resolved path ``resolved``."""
        cached = self._digests.get(resolved)
        if cached is not None:
            return cached
        if entry.type is not EntryType.FILE:
            raise UserError(f'"{relpath}": not a regular file in the build context '
                            f"({entry.type.value})")
        cache = self.stat_cache if self.kind is ContextKind.DIR else None
        if cache is not None:
            if not self._cache_preloaded:
                self._cache_preloaded = True
                cache.preload(os.fspath(self.root))  # one query for the whole context
            hit = cache.lookup(self._abs(resolved), entry.dev, entry.inode, entry.size,
                               entry.mtime_ns, entry.ctime_ns)
            if hit is not None:
                self._digests[resolved] = hit
                return hit
        started = time.time_ns()
        fd, before = self._open_resolved(relpath, resolved)
        try:
            h = hashlib.sha256()
            total = 0
            first = b""
            while True:
                # sized to what is left (plus one byte to see the end): a small file is one read
                # of its size and one short read, without a 1 MiB buffer per file
                chunk = os.read(fd, min(_CHUNK, max(_READ_MIN, before.st_size - total + 1)))
                if not chunk:
                    break
                if not total:
                    first = chunk
                h.update(chunk)
                total += len(chunk)
            after = os.fstat(fd)
        except OSError as e:
            raise UserError(f'"{relpath}": reading from the build context failed: {e.strerror or e}'
                            ) from e
        finally:
            os.close(fd)
        digest = "sha256:" + h.hexdigest()
        with self._lock:
            self.hashed_files += 1
            self.hashed_bytes += total
            self._digests[resolved] = digest
            if len(first) == total <= _KEEP_FILE_MAX and self._kept_bytes + total <= _KEEP_TOTAL_MAX:
                self._kept[resolved] = first
                self._kept_bytes += total
        stable = (before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino) == \
                 (after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino) and \
                 total == before.st_size
        if cache is not None and stable:
            cache.put(StatKey.from_stat(self._abs(resolved), before), digest, hashed_at_ns=started)
        return digest

    def _tree_records(self, paths: Iterable[str]) -> dict[str, ContextEntry]:
        records: dict[str, ContextEntry] = {}
        for p in paths:
            for e in self.iter_tree(p):
                records[e.path] = e
            top = self.lstat(p)
            if top.type is EntryType.SYMLINK:  # COPY follows a source that is itself a symlink
                try:
                    target = self.resolve(p)
                except NotFound:
                    continue
                for e in self.iter_tree(target):
                    records[e.path] = e
        return records

    def tree_digest(self, paths: Iterable[str]) -> str:
        """``sha256:<hex>`` over ``paths`` and everything below them, for COPY/ADD cache keys.

        For every entry, in sorted path order, it covers: the path relative to the context root,
        the type, the mode (incl. suid/sgid/sticky), uid, gid, the content digest of files, the
        target of symlinks and the device number of device nodes — never timestamps, inode or
        size of directories. A top-level path that is a symlink also brings in what it points to.
        The same paths give the same digest for the life of the context, computed once: the
        index and the file digests it covers never change once taken (the silent second pass of
        a build that keeps an up-to-date record asks again for every COPY).
        Raises NotFound when a path is missing or excluded, UserError like :meth:`open`.
        """
        key = tuple(paths)
        done = self._tree_digests.get(key)
        if done is not None:
            return done
        h = hashlib.sha256(_TREE_DIGEST_HEADER)
        q, update = _json_string, h.update
        listing: list[tuple[str, str, str, int, int, str]] | None = []  # kept unless over the cap
        for entry in self._tree_entries(key):
            path, kind, mode, uid, gid, payload = entry
            # the line is json.dumps(list(fields), ensure_ascii=True, separators=(",", ":"))
            update(f"[{q(path)},{q(kind)},{q(mode)},{uid:d},{gid:d},{q(payload)}]\n".encode("ascii"))
            if listing is not None:
                listing.append(entry)
                if len(listing) > _TREE_LIST_MAX:
                    listing = None
        if listing is not None:
            self._tree_lists[key] = listing
        digest = self._tree_digests[key] = "sha256:" + h.hexdigest()
        return digest

    def tree_entries(self, paths: Iterable[str]) -> Iterator[tuple[str, str, str, int, int, str]]:
        """What :meth:`tree_digest` hashes, entry by entry in sorted path order: ``(path, type,
        mode as 4 octal digits, uid, gid, payload)``; the payload is a file's ``sha256:`` content
        digest, a symlink's target, a device's ``major,minor``, else empty. File digests are
        memoised, so after :meth:`tree_digest` over the same paths no file is read again; for a
        tree of at most 100,000 entries the list itself is kept by :meth:`tree_digest` and handed
        out again (the build's ``--explain-cache`` record lists every COPY tree).
        """
        key = tuple(paths)
        done = self._tree_lists.get(key)
        return iter(done) if done is not None else self._tree_entries(key)

    def _tree_entries(self, paths: tuple[str, ...]) -> Iterator[tuple[str, str, str, int, int, str]]:
        records = self._tree_records(paths)
        for path in sorted(records):
            e = records[path]
            if e.type is EntryType.FILE:
                payload = self._digest_of(path, path, e)  # an index entry: already resolved
            elif e.type is EntryType.SYMLINK:
                payload = e.link_target or ""
            elif e.type in (EntryType.CHAR, EntryType.BLOCK):
                payload = f"{os.major(e.rdev)},{os.minor(e.rdev)}"
            else:
                payload = ""
            yield (path, e.type.value, f"{e.mode:04o}", e.uid, e.gid, payload)

    # -- COPY sources ------------------------------------------------------------------------
    def match_sources(self, pattern: str) -> list[str]:
        """The context paths a COPY/ADD source names, with docker's wildcard rules.

        Guarantees: the pattern is cleaned like BuildKit (leading ``/``, ``./`` and ``..`` above
        the root dropped; ``"."`` is the whole context). A pattern with wildcard characters is
        always a glob, as in docker (name ``arr[0].txt`` as ``arr[[]0].txt``). The leading segments without
        wildcards are resolved (symlinks followed inside the context) and the rest is matched
        segment by segment with Go ``filepath.Match`` semantics (``*``/``?`` never cross ``/``,
        ``[...]`` classes, ``\\`` escapes, dot files are not special) against non-excluded
        entries; the sorted matches are returned and may be empty (BuildKit allows an empty
        wildcard). Raises NotFound for a literal path (or a wildcard's literal base directory)
        that does not exist or is excluded, UserError for a malformed pattern.
        """
        cleaned = clean_context_path(pattern)
        if cleaned == ".":
            return ["."]
        if not _contains_wildcards(cleaned):
            if self.exists(cleaned):
                return [cleaned]
            raise self._not_found(pattern)
        segments = cleaned.split("/")
        first = next(i for i, s in enumerate(segments) if _contains_wildcards(s))
        base_rel = "/".join(segments[:first]) or "."
        try:
            regexes = [_go_segment_regex(s) for s in segments[first:]]
        except ValueError as e:
            raise UserError(f"invalid source pattern {pattern!r}: {e}",
                            hint="check the brackets and backslashes (Go filepath.Match syntax)"
                            ) from None
        base = self.resolve(base_rel) if base_rel != "." else "."
        if self._entry(base).type is not EntryType.DIR:
            return []
        current = [base]
        for depth, rx in enumerate(regexes):
            last = depth == len(regexes) - 1
            nxt: list[str] = []
            for d in current:
                for name in self._children.get(d, ()):
                    if rx.match(name) is None:
                        continue
                    p = _join(d, name)
                    if last or self._index[p].type is EntryType.DIR:  # type: ignore[index]
                        nxt.append(p)
            current = nxt
        return sorted(current)


    # -- conveniences for the build driver (builder/build.py) and the CLI ---------------------
    @property
    def dockerfile_text(self) -> str:
        """The Dockerfile decoded as UTF-8 (a BOM dropped, undecodable bytes replaced)."""
        return self.dockerfile.data.decode("utf-8-sig", "replace")

    @property
    def dockerfile_name(self) -> str:
        """The Dockerfile's name for error messages (``file:line``)."""
        return self.dockerfile.name

    def expand_sources(self, patterns: Iterable[str]) -> list[str]:
        """:meth:`match_sources` over several COPY sources; duplicates dropped, order kept."""
        out: dict[str, None] = {}
        for p in patterns:
            for m in self.match_sources(p):
                out.setdefault(m, None)
        return list(out)

    def digest(self, paths: Iterable[str]) -> str:
        """Same as :meth:`tree_digest`."""
        return self.tree_digest(paths)

    def exclude_matcher(self, patterns: Iterable[str]) -> Callable[[str], bool]:
        """A predicate for ``COPY --exclude=…`` patterns (same syntax as ``.dockerignore``).

        Raises UserError for a malformed pattern.
        """
        return IgnoreMatcher(patterns, source="COPY --exclude").excluded

    def archive_path(self, src: str) -> Path | None:
        """For ADD: the host path of ``src`` when it is a local tar archive (by content), else None.

        Wildcards, directories, missing or excluded paths give None. The path is resolved inside
        the context (no symlinks left in it).
        """
        if self.root is None or _contains_wildcards(clean_context_path(src)):
            return None
        try:
            resolved = self.resolve(src)
            if self._entry(resolved).type is not EntryType.FILE:
                return None
            fd, _ = self._open_resolved(src, resolved)
        except UserError:
            return None
        with os.fdopen(fd, "rb") as f:
            head = _read_head(f, 512)
            kind = _compression(head)
            if kind is not None:
                # A compressed file is extracted only when what it holds is a tar (docker).
                f.seek(0)
                try:
                    head = _read_head(_decompressed(f, kind), 512)
                except _decompress_errors():
                    return None
        if not _looks_like_tar(head):
            return None
        return Path(self._abs(resolved))

    def fs(self) -> "ContextFS":
        """This context as a copy source (``builder.copy.SourceFS``)."""
        return ContextFS(self)


class ContextFS:
    """Adapter: a :class:`BuildContext` seen as a ``builder.copy.SourceFS`` (root is ``""``).

    Everything goes through the context's index (so excluded paths do not exist) and its safe
    :meth:`BuildContext.open`. The constructor does no I/O.
    """

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx

    def lstat(self, path: str) -> "object | None":
        """A ``SrcStat`` for ``path`` itself, or None when it is missing or excluded."""
        global _SrcStat
        if _SrcStat is None:
            from .copy import SrcStat as _SrcStat  # the copy engine's value type, imported when first used
        try:
            e = self.ctx.lstat(path or ".")
        except UserError:
            return None
        kind = e.type.value if e.type is not EntryType.SOCKET else "other"
        return _SrcStat(kind, e.mode, e.uid, e.gid, e.size, e.mtime_ns / 1e9, e.link_target or "",
                       e.rdev, (e.dev, e.inode) if e.nlink > 1 and e.type is not EntryType.DIR else None)

    def resolve(self, path: str) -> str:
        """``path`` with symlinks resolved inside the context (``""`` for the root).

        A path that cannot be resolved comes back cleaned, so ``lstat`` then reports it missing.
        """
        try:
            r = self.ctx.resolve(path or ".")
        except UserError:
            r = clean_context_path(path or ".")
        return "" if r == "." else r

    def children(self, path: str) -> list[str]:
        """Sorted names of the non-excluded entries of directory ``path``."""
        self.ctx.walk()
        return list(self.ctx._children.get(clean_context_path(path or "."), ()))

    def open(self, path: str) -> BinaryIO:
        """See :meth:`BuildContext.open`."""
        return self.ctx.open(path)

    def known_digest(self, path: str) -> str | None:
        """The sha256 (hex, no prefix) of the regular file ``path`` if this build already has
        it (the step's input digest computed it), else None; never reads the file."""
        try:
            d = self.ctx._digests.get(self.ctx.resolve(path))
        except UserError:
            return None
        return d[7:] if d is not None and d.startswith("sha256:") else None

    def all_paths(self) -> list[str]:
        """Every non-excluded path of the context, sorted."""
        return sorted(self.ctx.walk())

    def match(self, pattern: str) -> list[str]:
        """See :meth:`BuildContext.match_sources` (``""`` for the whole context)."""
        return ["" if m == "." else m for m in self.ctx.match_sources(pattern)]


# --------------------------------------------------------------------------------------------
# Opening a context
# --------------------------------------------------------------------------------------------

_REMOTE_PREFIXES = ("http://", "https://", "git://", "git@", "github.com/", "ssh://")


def _read_host_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise NotFound(f"{what} {path} not found") from e
    except IsADirectoryError as e:
        raise UserError(f"{what} {path} is a directory") from e
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from e


def _read_in_root(root: Path, rel: str) -> bytes | None:
    """Read ``rel`` inside ``root`` with symlinks resolved inside it; None when missing."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd, _ = _open_file_beneath(root_fd, rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise UserError(f"cannot read {rel} in the build context archive: {e.strerror or e}"
                            ) from e
    finally:
        os.close(root_fd)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _read_stdin(stdin: BinaryIO | None) -> BinaryIO:
    if stdin is not None:
        return stdin
    return sys.stdin.buffer


def open_context(source: str | os.PathLike[str], *, dockerfile: str | os.PathLike[str] | None = None,
                 stdin: BinaryIO | None = None, stat_cache: StatCache | None = None,
                 temp_dir: str | os.PathLike[str] | None = None) -> BuildContext:
    """Open a build context the way ``docker build [-f FILE] SOURCE`` does.

    ``source`` is a directory, a tar file (plain, gzip, bzip2, xz or zstd; detected by content),
    or ``-``: stdin holds either a tar archive (the context) or a Dockerfile (empty context).
    ``dockerfile`` is ``-f``: for a directory context a host path (relative to the current
    directory, may lie outside the context; default ``<context>/Dockerfile``), for a tar context a
    path inside the archive (default ``Dockerfile``); ``-`` reads the Dockerfile from stdin.
    The ignore file is ``<Dockerfile>.dockerignore`` next to the Dockerfile when it exists, else
    the context's ``.dockerignore``. ``stat_cache`` memoises file digests of directory contexts;
    ``temp_dir`` is where tar contexts are extracted (removed by :meth:`BuildContext.close`).

    Raises UsageError (stdin asked for twice), NotFound (missing context or Dockerfile),
    InvalidArchive (bad or unsafe archive), UserError (remote context, unreadable files, bad
    ignore patterns).
    """
    src = os.fspath(source)
    df = os.fspath(dockerfile) if dockerfile is not None else None
    if src == "-":
        if df == "-":
            raise UsageError("cannot read both the build context and the Dockerfile from stdin",
                             hint="pass a context directory, or give the Dockerfile with -f FILE")
        stream = _read_stdin(stdin)
        head = _read_head(stream, 512)
        comp = _compression(head)
        if comp is not None or _looks_like_tar(head):
            reader = io.BufferedReader(_PrefixedReader(head, stream), _CHUNK)
            return _open_tar_context(reader, comp, "-", df, stdin, stat_cache, temp_dir)
        data = head + stream.read()
        # like docker, -f is meaningless when stdin is the Dockerfile itself
        return BuildContext(kind=ContextKind.EMPTY, root=None,
                            dockerfile=DockerfileSource("<stdin>", data, None))
    if src.startswith(_REMOTE_PREFIXES):
        raise UserError(f"remote build contexts are not supported: {src}",
                        hint="clone or download it and pass the directory or tar file")
    path = Path(src)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(f'unable to prepare context: path "{src}" not found',
                       hint="pass an existing directory, a tar file or '-'") from None
    except OSError as e:
        raise UserError(f"unable to prepare context {src}: {e.strerror or e}") from e
    if stat.S_ISDIR(st.st_mode):
        return _open_dir_context(path, df, stdin, stat_cache)
    if stat.S_ISREG(st.st_mode):
        try:
            f = open(path, "rb")
        except OSError as e:
            raise UserError(f"cannot read build context {src}: {e.strerror or e}") from e
        with f:
            head = _read_head(f, 512)
            comp = _compression(head)
            if comp is None and not _looks_like_tar(head):
                raise UserError(f"unable to prepare context: {src} is neither a directory nor a tar "
                                f"archive",
                                hint="pass a directory, or a tar/tar.gz/tar.bz2/tar.xz/tar.zst file")
            f.seek(0)
            return _open_tar_context(f, comp, src, df, stdin, stat_cache, temp_dir)
    raise UserError(f"unable to prepare context: {src} is not a directory or a regular file")


def open_build_context(source: str | os.PathLike[str], dockerfile: str | os.PathLike[str] | None = None,
                       *, stdin: BinaryIO | None = None,
                       cache_dir: str | os.PathLike[str] | None = None,
                       temp_dir: str | os.PathLike[str] | None = None) -> BuildContext:
    """:func:`open_context` with a stat cache at ``cache_dir/statcache.sqlite`` (the store's
    ``metadata/`` directory) owned — and closed — by the returned context.

    Use it as a context manager. Raises what :func:`open_context` raises.
    """
    cache = StatCache(Path(cache_dir) / STATCACHE_FILENAME) if cache_dir is not None else None
    try:
        ctx = open_context(source, dockerfile=dockerfile, stdin=stdin, stat_cache=cache,
                           temp_dir=temp_dir)
    except BaseException:
        if cache is not None:
            cache.close()
        raise
    ctx._owns_stat_cache = cache is not None
    return ctx


def _ignore_for(dockerfile_path: Path | None, reader: Callable[[Path], bytes | None],
                context_ignore: Path) -> tuple[str | None, list[str]]:
    if dockerfile_path is not None:
        specific = dockerfile_path.with_name(dockerfile_path.name + DOCKERIGNORE)
        data = reader(specific)
        if data is not None:
            return os.fspath(specific), parse_dockerignore(data)
    data = reader(context_ignore)
    if data is not None:
        return os.fspath(context_ignore), parse_dockerignore(data)
    return None, []


def _open_dir_context(path: Path, df: str | None, stdin: BinaryIO | None,
                      stat_cache: StatCache | None) -> BuildContext:
    root = Path(os.path.realpath(path))
    if df == "-":
        source = DockerfileSource("<stdin>", _read_stdin(stdin).read(), None)
    else:
        if df is None:
            df_path = root / DEFAULT_DOCKERFILE
            if not df_path.exists() and (root / DEFAULT_DOCKERFILE.lower()).exists():
                df_path = root / DEFAULT_DOCKERFILE.lower()
            if not df_path.exists():
                raise NotFound(f"cannot find the Dockerfile: {path / DEFAULT_DOCKERFILE} does not exist",
                               hint="create a Dockerfile in the context or pass -f PATH")
        else:
            df_path = Path(os.path.abspath(df))
        name = df if df is not None else df_path.name
        source = DockerfileSource(name, _read_host_file(df_path, "Dockerfile"), df_path)

    inputs: list[tuple[str, str | None]] = []  # what decided the Dockerfile and the ignore rules
    if df is None and df_path.name != DEFAULT_DOCKERFILE:
        inputs.append((os.fspath(root / DEFAULT_DOCKERFILE), None))
    if source.path is not None:
        inputs.append((os.fspath(source.path), hashlib.sha256(source.data).hexdigest()))

    def reader(p: Path) -> bytes | None:
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            inputs.append((os.fspath(p), None))
            return None
        except OSError as e:
            raise UserError(f"cannot read ignore file {p}: {e.strerror or e}") from e
        inputs.append((os.fspath(p), hashlib.sha256(data).hexdigest()))
        return data

    ignore_file, patterns = _ignore_for(source.path, reader, root / DOCKERIGNORE)
    return BuildContext(kind=ContextKind.DIR, root=root, dockerfile=source, ignore_file=ignore_file,
                        ignore_patterns=patterns, stat_cache=stat_cache, host_inputs=inputs)


def _open_tar_context(stream: BinaryIO, comp: str | None, label: str, df: str | None,
                      stdin: BinaryIO | None, stat_cache: StatCache | None,
                      temp_dir: str | os.PathLike[str] | None) -> BuildContext:
    tmp = Path(tempfile.mkdtemp(prefix="pybuild-context-", dir=temp_dir))
    try:
        root = tmp / "context"
        root.mkdir(mode=0o755)
        _extract_tar(_decompressed(stream, comp), root)
        if df == "-":
            source = DockerfileSource("<stdin>", _read_stdin(stdin).read(), None)
            df_rel: str | None = None
        else:
            df_rel = clean_context_path(df or DEFAULT_DOCKERFILE)
            data = _read_in_root(root, df_rel)
            if data is None and df is None:
                alt = _read_in_root(root, DEFAULT_DOCKERFILE.lower())
                if alt is not None:
                    data, df_rel = alt, DEFAULT_DOCKERFILE.lower()
            if data is None:
                raise NotFound(f"cannot find the Dockerfile {df_rel} in the build context archive "
                               f"{label}", hint="pass -f PATH relative to the archive root")
            source = DockerfileSource(df_rel, data, None)

        ignore_file: str | None = None
        patterns: list[str] = []
        if df_rel is not None:
            data = _read_in_root(root, df_rel + DOCKERIGNORE)
            if data is not None:
                ignore_file, patterns = f"{label}:{df_rel}{DOCKERIGNORE}", parse_dockerignore(data)
        if ignore_file is None:
            data = _read_in_root(root, DOCKERIGNORE)
            if data is not None:
                ignore_file, patterns = f"{label}:{DOCKERIGNORE}", parse_dockerignore(data)
        return BuildContext(kind=ContextKind.TAR, root=Path(os.path.realpath(root)),
                            dockerfile=source, ignore_file=ignore_file, ignore_patterns=patterns,
                            stat_cache=stat_cache, cleanup_dir=tmp)
    except BaseException:
        _rmtree_force(tmp)
        raise
