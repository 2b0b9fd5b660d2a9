"""A COPY layer's snapshot written as a delta over the snapshot of an earlier build of it.

When one context file of a big ``COPY`` changes, the new layer differs from the last one in that
file only, but a later RUN needs the whole layer on disk as an overlay lower dir. Writing every
file again costs a file creation each (the disk, not Python, is the bound). ``write_delta``
writes only the entries that differ from a *donor* stack (the snapshot dirs of the earlier
layer); the donor dirs plus the delta, stacked, are then exactly the new layer's diff.

That holds only when stacking cannot show something the new layer lacks, so a delta is made
only when:

- the new entries are directories, regular files and symlinks, without xattrs or hardlinks;
- the donor holds no whiteout, no opaque directory, no file with several links, and every donor
  path is a path of the new layer, of the same type (overlay merges a directory with the one
  below it, and a file or symlink hides what is below it);
- at most half of the new layer differs, counting each file as its size plus 16 KiB (its
  creation), and the layer is worth it (at least 1 MiB by that count); otherwise a whole
  snapshot is about as cheap and keeps the stack short.

An entry is unchanged when its type, mode, owner, mtime, size (files), target (symlinks) and,
for files, the content match the donor's: the sha256 when both sides know it (the entry from the
step's input digest, the donor from the ``.sums`` its build recorded), else every byte. Directories that differ, or that hold a written
entry, are written with the new layer's metadata (the top copy of a directory wins in overlay).
"""
from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from pybuild.store.layers import Entry
from pybuild.store.snapshots import is_opaque, is_whiteout

from .copy import materialize

__all__ = ["write_delta", "MIN_COST", "MAX_STACK"]

FILE_COST = 16 << 10  # what creating a file costs, in bytes written (measured: 0.07-0.5 ms)
MIN_COST = 1 << 20    # a layer cheaper than this to write gets a whole snapshot
MAX_STACK = 4         # donor dirs at most (a delta over a delta over ...), then a whole snapshot
_CHUNK = 1 << 20


def _donor_tree(dirs: Sequence[Path]) -> dict[str, tuple[str, os.stat_result]] | None:
    """Merged donor entries: relative path -> (host path, lstat), top dir winning. None when
    the donor has something a delta cannot lie on (whiteout, opaque dir, multi-link file, a
    path whose type changes between donor dirs)."""
    out: dict[str, tuple[str, os.stat_result]] = {}
    for d in dirs:
        base = str(d)
        cut = len(base) + 1
        stack = [base]
        while stack:
            cur = stack.pop()
            with os.scandir(cur) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    rel = e.path[cut:]
                    if is_whiteout(st) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
                        return None
                    prev = out.get(rel)
                    if prev is not None and stat.S_IFMT(prev[1].st_mode) != stat.S_IFMT(st.st_mode):
                        return None
                    if stat.S_ISDIR(st.st_mode):
                        if is_opaque(e.path):
                            return None
                        stack.append(e.path)
                    elif not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                        return None
                    out[rel] = (e.path, st)
    return out


def _same_bytes(e: Entry, host: str) -> bool:
    assert e.open is not None
    with e.open() as a, open(host, "rb") as b:
        left = e.size
        while left > 0:
            x = a.read(min(left, _CHUNK))
            if not x or x != b.read(len(x)):
                return False
            left -= len(x)
        return not b.read(1)


def _unchanged(e: Entry, found: tuple[str, os.stat_result], donor_sum: str | None) -> bool:
    host, st = found
    if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) != (e.mode, e.uid, e.gid, e.mtime * 10**9):
        return False
    if e.type == "dir":
        return True
    if e.type == "symlink":
        return os.readlink(host) == e.linkname
    if st.st_size != e.size:
        return False
    if e.digest is not None and donor_sum is not None:
        return e.digest == donor_sum
    return _same_bytes(e, host)


def write_delta(entries: Sequence[Entry], root: Path, donor: Sequence[Path],
                clamp_mtime: int | None = None, donor_sums: Mapping[str, str] | None = None) -> int | None:
    """Write into ``root`` (an empty directory) the entries of a layer that differ from the
    donor stack ``donor`` (snapshot dirs, bottom first), so that ``donor + [root]`` is the
    layer's snapshot. Returns the number of entries written, or None (``root`` untouched) when
    the conditions in the module docstring do not hold: the caller then writes a whole snapshot.
    ``entries`` are sorted, parents first, as a LayerPlan gives them; mtimes are clamped to
    ``clamp_mtime`` as the layer writer clamps them. ``donor_sums`` (path -> sha256 hex of the
    donor layer's files) spares reading a file whose entry carries the same digest."""
    sums = donor_sums or {}
    if not donor or len(donor) > MAX_STACK:
        return None
    todo = [replace(e, mtime=clamp_mtime) if clamp_mtime is not None and e.mtime > clamp_mtime else e
            for e in entries]
    cost = 0
    for e in todo:
        if e.type not in ("dir", "file", "symlink") or e.xattrs:
            return None
        if e.type == "file":
            cost += FILE_COST + e.size
    if cost < MIN_COST:
        return None
    tree = _donor_tree(donor)
    if tree is None:
        return None
    paths = {e.path.rstrip("/") for e in todo}
    if any(p not in paths for p in tree):
        return None
    kind = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK}
    write: set[str] = set()
    changed = 0
    for e in todo:
        p = e.path.rstrip("/")
        found = tree.get(p)
        if found is not None and stat.S_IFMT(found[1].st_mode) != kind[e.type]:
            return None
        if found is None or not _unchanged(e, found, sums.get(p)):
            write.add(p)
            if e.type == "file":
                changed += FILE_COST + e.size
                if 2 * changed > cost:
                    return None
    # every written entry's parents go too, with the new layer's metadata (a parent that is
    # not an entry would get made with default metadata, which would then hide the donor's)
    for p in list(write):
        parent = os.path.dirname(p)
        while parent and parent not in write:
            if parent not in paths:
                return None
            write.add(parent)
            parent = os.path.dirname(parent)
    return materialize([e for e in todo if e.path.rstrip("/") in write], root)
