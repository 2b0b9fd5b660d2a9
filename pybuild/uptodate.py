"""The up-to-date check: answer a rebuild whose inputs are all unchanged without loading the builder.

After a successful ``pybuild build``, the command line keeps a *record* of the invocation in
the store::

    metadata/uptodate/<key>.json    key = sha256 of the arguments, the working directory, the
                                    environment variables the build reads, the effective uid
                                    and where pybuild is installed

The record holds everything the result depended on, each in a form that is cheap to check:

- the ``lstat`` of every context entry the walk depended on (the root, every included path, and
  every excluded directory it looked into: an entry added, removed or renamed changes its
  directory's mtime and ctime, new content a file's, a chmod or chown its ctime);
- the sha256 of the Dockerfile and ignore file the build used, and the absence of each file
  that would have been used instead;
- the real path of the context directory;
- the sha256 of the store's ``index.json`` after the build (every tag; a pull, tag, rmi,
  import or another build changes it; ``prune`` removes all records), and the size of every
  blob of the image (a blob removed by hand or by ``fsck --repair`` is rebuilt normally);
- the ``lstat`` of every pybuild module the build loaded (a new pybuild version or any code
  change drops the record);
- what a rebuild that finds every step in the cache leaves on the screen, in the progress mode
  of the build (``plain``; ``tty``: the finished steps' lines, without the live block's
  redraws; ``quiet``: the image id), and that mode. The record is written only when such a
  rebuild was seen, or run just after the build to check it; see ``pybuild/cli.py``.

:func:`replay` runs before the command line loads (no click, no builder): when the record of
this exact invocation exists and every check holds, it prints the recorded output and the
command ends with 0, in the time it takes to ``lstat`` the context. Any difference or error
takes the normal path, which rebuilds from the step cache and writes a new record. There is no
record for an invocation with an option outside :data:`VALUE_OPTIONS` and :data:`FLAG_OPTIONS`
(``--no-cache``, ``--push``, ``--iidfile``…), a build with remote inputs (``ADD`` of a URL), or a context file whose
timestamps are as racy as the stat cache's rule says (``builder.context.is_racy``: within
0.1 s of the build's start, 2 s on whole-second file systems; a later change could leave the
same timestamps).

This module imports only the standard library: it is the first thing every ``pybuild`` runs.
"""
from __future__ import annotations

import hashlib
import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing would cost 2 ms on every command
if TYPE_CHECKING:
    from typing import Any, Iterable, Sequence

from pybuild.storeroot import UPTODATE_DIR, default_store_root

__all__ = ["Invocation", "parse_invocation", "replay", "record", "VALUE_OPTIONS"]

VERSION = 3  # 2: the record names its progress mode; 3: stat signatures without the size

# The build options an up-to-date invocation may have: these take a value, FLAG_OPTIONS none.
# Anything else — --no-cache, --push, --iidfile, --output, --secret, --cache-from, --debug … —
# takes the normal path and writes no record.
VALUE_OPTIONS = frozenset({"-t", "--tag", "-f", "--file", "--build-arg", "--target", "--label",
                           "--progress", "--compression", "--network", "--platform",
                           "--storage-driver", "--memory", "-m", "--pids-limit", "--cpus",
                           "--security-opt", "--cap-add", "--cap-drop"})
FLAG_OPTIONS = frozenset({"-q", "--quiet"})
# Environment variables the build reads (besides valueless --build-arg NAMEs, added per call).
ENVIRONMENT = ("PYBUILD_ROOT", "XDG_DATA_HOME", "HOME", "SOURCE_DATE_EPOCH", "PYBUILD_STORAGE_DRIVER",
               "PYBUILD_MAX_DECOMPRESSION_RATIO")


class Invocation:
    """A build invocation the up-to-date check can answer: where its store, context and record
    are. Made by :func:`parse_invocation` (no I/O here)."""

    __slots__ = ("root", "context", "progress", "key")

    def __init__(self, root: str, context: str, progress: str, key: str) -> None:
        self.root = root                # the store root
        self.context = context          # the CONTEXT argument, as given
        self.progress = progress        # plain | auto | quiet
        self.key = key

    @property
    def record_path(self) -> str:
        return os.path.join(self.root, UPTODATE_DIR, self.key + ".json")


def parse_invocation(argv: Sequence[str]) -> Invocation | None:
    """The invocation ``argv`` (without the program name) describes, when it is a directory build
    made only of :data:`VALUE_OPTIONS`; None for anything else (the normal path handles it).

    ``pybuild [--root DIR] [build] OPTIONS CONTEXT``, options as ``--opt VALUE`` or
    ``--opt=VALUE``. Pure apart from reading the environment and the working directory; never
    raises.
    """
    args = list(argv)
    root: str | None = None
    i = 0
    while i < len(args) and args[i].startswith("--root"):
        if args[i] == "--root" and i + 1 < len(args):
            root, i = args[i + 1], i + 2
        elif args[i].startswith("--root="):
            root, i = args[i][len("--root="):], i + 1
        else:
            return None
    if i < len(args) and args[i] == "build":
        i += 1
    elif i >= len(args) or not (args[i].startswith("-") or os.path.isdir(args[i])):
        return None  # another command (the shorthand `pybuild -t TAG DIR` is a build, as in cli.py)
    values: dict[str, list[str]] = {}
    positional: list[str] = []
    while i < len(args):
        a = args[i]
        if a in FLAG_OPTIONS:
            values.setdefault(a, []).append("")
        elif a.startswith("-") and a != "-":
            name, eq, value = a.partition("=")
            if name not in VALUE_OPTIONS or (eq and not name.startswith("--")):
                return None
            if not eq:
                if i + 1 >= len(args):
                    return None
                value, i = args[i + 1], i + 1
            values.setdefault(name, []).append(value)
        else:
            positional.append(a)
        i += 1
    if len(positional) != 1 or positional[0] == "-":
        return None
    files = values.get("-f", []) + values.get("--file", [])
    if len(files) > 1 or files == ["-"]:
        return None
    progress = (values.get("--progress") or ["auto"])[-1]
    if progress not in ("plain", "auto", "quiet"):
        return None
    if "-q" in values or "--quiet" in values:
        progress = "quiet"
    env_names = list(ENVIRONMENT)
    for a in values.get("--build-arg", []):
        if "=" not in a:
            env_names.append(a)  # the value comes from the environment
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    h = hashlib.sha256()
    for part in (str(VERSION), __file__, str(os.geteuid()), cwd, *args, "\0env", *env_names):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    for name in env_names:
        v = os.environ.get(name)
        h.update(b"-\0" if v is None else ("=" + v).encode("utf-8", "surrogateescape") + b"\0")
    return Invocation(root if root is not None else default_store_root(), positional[0], progress, h.hexdigest())


def _sig(dev: int, ino: int, mtime_ns: int, ctime_ns: int) -> str:
    # No size, mode or owner: every change to them (a write, a truncate, chmod, chown) sets the
    # ctime, and a replaced file is another inode.
    return f"{dev}:{ino}:{mtime_ns}:{ctime_ns}"


def _stat_sig(path: str) -> str:
    st = os.lstat(path)
    return _sig(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _file_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def _entries_digest(sigs: Iterable[str]) -> str:
    h = hashlib.sha256()
    for s in sigs:
        h.update(s.encode())
        h.update(b"\n")
    return h.hexdigest()


def _check(rec: dict[str, Any], inv: Invocation) -> bool:
    """True when everything ``rec`` depended on is as it was. Raises OSError, KeyError,
    ValueError, TypeError on anything unexpected (the caller takes the normal path)."""
    if rec.get("version") != VERSION:
        return False
    for path, sig in rec["code"]:
        if _stat_sig(path) != sig:
            return False
    if os.path.realpath(inv.context) != rec["root"]:
        return False
    for path, digest in rec["inputs"]:
        if _file_sha256(path) != digest:
            return False
    if _file_sha256(os.path.join(inv.root, "index.json")) != rec["index"]:
        return False
    for path, size in rec["blobs"]:
        if os.stat(path).st_size != size:
            return False
    root = rec["root"]
    sigs = (_stat_sig(root if p == "." else root + "/" + p) for p in rec["paths"])
    return _entries_digest(sigs) == rec["entries"]


def replay(argv: Sequence[str]) -> int | None:
    """Answer ``pybuild argv`` from its record when nothing it depended on changed: print the
    recorded output and return 0. Returns None (and prints nothing) in every other case,
    errors included: the caller then runs the command normally."""
    try:
        if os.geteuid() != 0:  # rootless: the command first re-executes in a user namespace
            return None
        inv = parse_invocation(argv)
        if inv is None:
            return None
        mode = inv.progress if inv.progress != "auto" else "tty" if sys.stdout.isatty() else "plain"
        try:
            with open(inv.record_path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        import json
        rec = json.loads(data)
        if rec.get("mode") != mode or not _check(rec, inv):
            return None
        out = rec["output"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeError):
        return None
    try:
        sys.stdout.write(out)
        sys.stdout.flush()
    except BrokenPipeError:
        return 141
    return 0


def record(inv: Invocation, *, mode: str, context: Any, output: str, blobs: Sequence[tuple[str, int]],
           index: bytes, started_ns: int) -> bool:
    """Keep the record of ``inv``: a build of ``context`` (a builder BuildContext, still open)
    whose fully cached rebuild leaves ``output`` on the screen in progress ``mode`` (plain, tty
    or quiet), whose image is made of ``blobs`` (path and
    size of its manifest, config and layers), and after which the store's ``index.json`` holds
    ``index`` (checked by the caller to tag that image). ``started_ns`` is ``time.time_ns()``
    from before the context was opened.

    Writes nothing and returns False when the context is not a host
    directory or a context entry's timestamps are racy at ``started_ns`` (a later change could
    keep the same timestamps; see ``builder.context.is_racy``). Raises OSError when the record
    cannot be written.
    """
    if context.dockerfile.path is None:
        return False
    entries = context.walked_entries()
    if not entries:
        return False
    from pybuild.builder.context import is_racy  # loaded already: the build used it
    if any(is_racy(e.mtime_ns, e.ctime_ns, started_ns) for e in entries):
        return False
    root = os.fspath(context.root)
    code = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and (name == "pybuild" or name.startswith("pybuild.")):
            code.append((f, _stat_sig(f)))
    rec = {
        "version": VERSION,
        "mode": mode,
        "code": sorted(code),
        "root": root,
        "inputs": [list(x) for x in context.host_inputs],
        "index": hashlib.sha256(index).hexdigest(),
        "blobs": [list(b) for b in blobs],
        "paths": [e.path for e in entries],
        "entries": _entries_digest(_sig(e.dev, e.inode, e.mtime_ns, e.ctime_ns) for e in entries),
        "output": output,
    }
    import json
    from pybuild.store.fsutil import atomic_write
    path = inv.record_path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, json.dumps(rec, separators=(",", ":")).encode("utf-8", "surrogateescape"))
    return True
