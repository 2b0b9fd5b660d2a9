"""Snapshots: each layer extracted once into ``snapshots/<chain id hex>/``, in overlayfs form.

A snapshot directory holds one layer's diff with whiteouts as overlayfs expects them (0/0
character devices, ``trusted.overlay.opaque=y`` on opaque directories), so a stack of snapshots
can be mounted as overlay lower dirs as it is. Extraction verifies the blob digest and the diff_id
and happens in a temp directory renamed into place, so a half-made snapshot is never visible.
``prepare`` gives a fresh upper directory; ``commit`` renames it into place under its chain id
(the committed upper dir *is* the next lower dir: nothing is re-extracted).

A snapshot may be a *delta*: a directory holding only what differs from another snapshot of
the same kind of layer (the previous build of the same COPY), with a sidecar ``<chain hex>.base``
listing, bottom first, the snapshot dirs it lies on. Together they are the layer's diff as an
overlay stack (see ``dirs``); ``ensure`` returns the whole stack, and garbage collection keeps a
delta's bases while the delta is kept. A delta never holds whiteouts and its bases never hold a
path the layer lacks (the builder checks both before making one), so stacking is exact.

``StackView`` reads a stack of snapshot dirs as one merged tree without mounting anything.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from pybuild.errors import InvalidArchive
from pybuild.oci import Descriptor, Digest, chain_ids
from pybuild.paths import TooManyLinks, resolve_in_root

from .content import ContentStore
from .fsutil import atomic_write, fsync_dir

__all__ = ["LayerRef", "Snapshots", "StackView", "is_whiteout", "is_opaque", "BASE_SUFFIX", "SUMS_SUFFIX",
           "SIDECARS"]

BASE_SUFFIX = ".base"   # a delta snapshot's bases
SUMS_SUFFIX = ".sums"   # the layer's file digests, where the builder knew them
SIDECARS = (BASE_SUFFIX, SUMS_SUFFIX)
_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class LayerRef:
    """A layer of an image: the blob descriptor and the uncompressed diff_id."""

    descriptor: Descriptor
    diff_id: Digest


class Snapshots:
    """Snapshot directories under ``root``. The constructor does no I/O."""

    def __init__(self, root: str | os.PathLike[str], content: ContentStore) -> None:
        self.root = Path(root)
        self.content = content

    def path(self, chain: Digest) -> Path:
        return self.root / chain.hex

    def exists(self, chain: Digest) -> bool:
        return self.path(chain).is_dir()

    def bases(self, chain: Digest) -> list[str] | None:
        """The chain ids (hex, bottom first) a delta snapshot lies on: [] for a whole snapshot,
        None when the sidecar is unreadable or names a snapshot that is gone (the delta alone
        is not the layer then)."""
        try:
            text = (self.root / f"{chain.hex}{BASE_SUFFIX}").read_text()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError):
            return None
        names = text.split()
        if not names or not all(_HEX.match(h) and (self.root / h).is_dir() for h in names):
            return None
        return names

    def dirs(self, chain: Digest) -> list[Path] | None:
        """The directories that make up the snapshot of ``chain``, bottom first (one for a whole
        snapshot); None when there is no usable snapshot."""
        p = self.path(chain)
        if not p.is_dir():
            return None
        bases = self.bases(chain)
        if bases is None:
            return None
        return [self.root / h for h in bases] + [p]

    def ensure(self, layers: Sequence[LayerRef]) -> list[Path]:
        """Extract every layer of the stack that is not extracted yet; return the dirs, bottom
        first (a delta snapshot contributes its bases too, so there may be more dirs than layers).

        Raises DigestMismatch when a blob or its diff_id does not verify, InvalidArchive/UnsafeLayer
        for bad tars. Call inside a store lease.
        """
        out: list[Path] = []
        out_set: set[Path] = set()
        for ref, chain in zip(layers, chain_ids([x.diff_id for x in layers])):
            dirs = self.dirs(chain)
            # overlayfs refuses a dir named twice in one lowerdir list: a delta whose base is
            # already in the stack is replaced by the whole layer, like one whose base is gone
            if dirs is None or (len(dirs) > 1 and not out_set.isdisjoint(dirs)):
                p = self.path(chain)
                if p.is_dir():
                    self._discard(chain)
                self._extract(ref, p)
                dirs = [p]
            out.extend(dirs)
            out_set.update(dirs)
        return out

    def known_dirs(self, chains: Sequence[Digest]) -> list[Path]:
        """The dirs ``ensure`` would give for a stack with these chain ids, without extracting
        anything (a chain without a snapshot counts as its future whole snapshot)."""
        out: list[Path] = []
        for c in chains:
            out.extend(self.dirs(c) or [self.path(c)])
        return out

    def _discard(self, chain: Digest) -> None:
        p = self.path(chain)
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        try:
            os.rename(p, tmp)
        except FileNotFoundError:
            pass
        (self.root / f"{chain.hex}{BASE_SUFFIX}").unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)

    def _extract(self, ref: LayerRef, dest: Path) -> None:
        from .layers import extract_verified  # the tar reader loads only when a layer is extracted
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            extract_verified(self.content, ref.descriptor, ref.diff_id, tmp, mode="overlay")
            os.chmod(tmp, 0o755)
            self._publish(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _publish(self, tmp: Path, dest: Path) -> None:
        try:
            os.rename(tmp, dest)
        except OSError:
            if dest.is_dir():  # another process made it first: same content by construction
                shutil.rmtree(tmp, ignore_errors=True)
                return
            raise
        fsync_dir(self.root)

    def prepare(self) -> Path:
        """A fresh, empty upper directory (not visible as a snapshot until ``commit``)."""
        p = self.root / f".tmp-{uuid.uuid4().hex}"
        p.mkdir(parents=True, mode=0o755)
        os.chmod(p, 0o755)
        return p

    def commit(self, upper: Path, chain: Digest) -> Path:
        """Make ``upper`` the snapshot for ``chain`` (dropping it if one exists already)."""
        dest = self.path(chain)
        if dest.is_dir():
            shutil.rmtree(upper, ignore_errors=True)
            return dest
        self._publish(upper, dest)
        return dest

    def sums(self, chain: Digest) -> dict[str, str]:
        """Path -> sha256 hex of the regular files of the layer ``chain`` names, as far as the
        builder knew them when it wrote the snapshot ({} when unknown or unreadable)."""
        try:
            data = json.loads((self.root / f"{chain.hex}{SUMS_SUFFIX}").read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and _HEX.match(v)
                                                 for k, v in data.items()):
            return {}
        return data

    def write_sums(self, chain: Digest, sums: Mapping[str, str]) -> None:
        """Record the layer's file digests beside its snapshot. Not fsynced: a torn or missing
        file reads as {} (unknown), which only costs a byte comparison later."""
        if not sums:
            return
        tmp = self.root / f".tmp-{uuid.uuid4().hex}{SUMS_SUFFIX}"
        tmp.write_bytes(json.dumps(dict(sums), sort_keys=True).encode())
        os.replace(tmp, self.root / f"{chain.hex}{SUMS_SUFFIX}")

    def commit_delta(self, upper: Path, chain: Digest, bases: Sequence[Path]) -> Path:
        """Make ``upper`` the snapshot for ``chain`` as a delta over the snapshot dirs ``bases``
        (bottom first, all under this store). The sidecar is written (fsynced) before the
        directory appears, so a visible delta always knows its bases."""
        dest = self.path(chain)
        names = [b.name for b in bases]
        if not names or any(not _HEX.match(n) or b.parent != self.root for n, b in zip(names, bases)):
            raise ValueError(f"bad delta bases {names!r}")
        if dest.is_dir():
            shutil.rmtree(upper, ignore_errors=True)
            return dest
        # The sidecar is claimed with link(2), which fails when it exists: of two processes
        # making a delta for one chain, one publishes. A leftover sidecar (a process killed before
        # its rename) is harmless under a whole snapshot: its bases hold only paths of the layer,
        # all of which the whole snapshot covers.
        side = self.root / f"{chain.hex}{BASE_SUFFIX}"
        tmp = self.root / f".tmp-{uuid.uuid4().hex}{BASE_SUFFIX}"
        atomic_write(tmp, ("\n".join(names) + "\n").encode())
        try:
            os.link(tmp, side)
        except FileExistsError:
            shutil.rmtree(upper, ignore_errors=True)
            return dest
        finally:
            tmp.unlink(missing_ok=True)
        self._publish(upper, dest)
        return dest

    def remove(self, p: Path) -> None:
        shutil.rmtree(p, ignore_errors=True)

    def sweep_temps(self) -> int:
        """Remove half-made snapshots (``.tmp-*``); call only while holding the store exclusively."""
        n = 0
        if self.root.is_dir():
            for p in self.root.glob(".tmp-*"):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                n += 1
            for suffix in SIDECARS:
                for p in self.root.glob(f"*{suffix}"):
                    if not p.name.startswith(".") and not (self.root / p.name[:-len(suffix)]).is_dir():
                        p.unlink(missing_ok=True)   # its snapshot never appeared, or went
                        n += 1
        return n


def is_whiteout(st: os.stat_result) -> bool:
    """An overlayfs whiteout: a character device 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str | os.PathLike[str]) -> bool:
    """An overlayfs opaque directory (lower entries below it are hidden): the opaque xattr is
    ``y``, as ``trusted.overlay.opaque`` (root) or ``user.overlay.opaque`` (a user namespace)."""
    for n in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(path, n, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


class StackView:
    """A read-only merged view of snapshot dirs (``dirs`` bottom first), with overlay rules.

    Paths are absolute image paths (``/etc/passwd``). Symlinks are resolved inside the image.
    """

    def __init__(self, dirs: Sequence[Path], *, cached: bool = False) -> None:
        """``cached=True`` memoises each directory's merged entries: only for stacks of
        committed (immutable) snapshots, never for a stack that includes a live upper dir."""
        self.top_first = list(reversed(dirs))
        self._children: dict[tuple[str, ...], dict[str, tuple[Path, os.stat_result] | None]] | None = \
            {} if cached else None

    def _lookup(self, parts: list[str]) -> tuple[Path, os.stat_result] | None:
        """The topmost real entry for a path whose parents contain no symlinks."""
        if self._children is not None and parts:
            return self.children_of(tuple(parts[:-1])).get(parts[-1])
        for d in self.top_first:
            # Is some parent hidden in this layer (whiteout, non-dir, or opaque below which we stop)?
            cur = d
            blocked = False
            for i, part in enumerate(parts):
                p = cur / part
                try:
                    st = os.lstat(p)
                except (FileNotFoundError, NotADirectoryError):
                    st = None
                if st is None:
                    break
                if i == len(parts) - 1:
                    if is_whiteout(st):
                        return None
                    return p, st
                if not stat.S_ISDIR(st.st_mode):
                    return None  # a file/whiteout in this layer hides everything below the path
                cur = p
                if is_opaque(p):
                    blocked = True
            else:
                if not parts:
                    return d, os.lstat(d)
            if blocked:
                # The path's parent in this layer is opaque (or an ancestor): lower layers are hidden.
                return None
        return None

    def children_of(self, parts: tuple[str, ...]) -> dict[str, tuple[Path, os.stat_result] | None]:
        """The merged entries of the directory ``parts`` (no symlinks in it): name -> (backing
        file, lstat), or None for a name a whiteout hides. Memoised when the view is cached."""
        memo = self._children
        if memo is not None:
            hit = memo.get(parts)
            if hit is not None:
                return hit
        out: dict[str, tuple[Path, os.stat_result] | None] = {}
        for d in self.top_first:
            cur, stop, present = d, False, True
            for part in parts:
                cur = cur / part
                try:
                    st = os.lstat(cur)
                except (FileNotFoundError, NotADirectoryError):
                    present = False
                    break
                if not stat.S_ISDIR(st.st_mode):
                    stop, present = True, False  # a file or whiteout here hides the lower layers
                    break
                if is_opaque(cur):
                    stop = True
            if present:
                try:
                    with os.scandir(cur) as it:
                        for e in it:
                            if e.name not in out:
                                est = e.stat(follow_symlinks=False)
                                out[e.name] = None if is_whiteout(est) else (Path(e.path), est)
                except (FileNotFoundError, NotADirectoryError):
                    pass
            if stop:
                break
        if memo is not None:
            memo[parts] = out
        return out

    def lstat(self, path: str) -> os.stat_result | None:
        """lstat of an image path without following a final symlink (None when absent)."""
        found = self._lookup(self._parts(self.resolve(path, follow_final=False)))
        return found[1] if found else None

    def host_path(self, path: str, follow_final: bool = True) -> Path | None:
        """The file in a snapshot dir that backs ``path`` (None when absent)."""
        found = self._lookup(self._parts(self.resolve(path, follow_final=follow_final)))
        return found[0] if found else None

    @staticmethod
    def _parts(path: str) -> list[str]:
        return [p for p in path.split("/") if p and p != "."]

    def resolve(self, path: str, follow_final: bool = True) -> str:
        """Resolve symlinks in ``path`` inside the image (as if its root were ``/``).

        Raises InvalidArchive for a symlink loop."""
        def readlink(parts: list[str]) -> str | None:
            found = self._lookup(parts)
            return os.readlink(found[0]) if found and stat.S_ISLNK(found[1].st_mode) else None

        try:
            return "/" + "/".join(resolve_in_root(path, readlink, follow_final))
        except TooManyLinks as e:
            raise InvalidArchive(f"{e} in the image") from None

    def listdir(self, path: str) -> list[str]:
        """Merged directory listing (sorted), honouring whiteouts and opaque directories — an
        opaque ancestor hides the lower layers' copies of everything below it, too."""
        parts = tuple(self._parts(self.resolve(path)))
        return sorted(n for n, found in self.children_of(parts).items() if found is not None)

    def read_bytes(self, path: str, limit: int = 16 << 20) -> bytes | None:
        """Content of a regular file (following symlinks), or None when absent / not a file."""
        hp = self.host_path(path)
        if hp is None or not hp.is_file():
            return None
        with open(hp, "rb") as f:
            return f.read(limit)

    def walk(self, path: str) -> Iterator[tuple[str, Path, os.stat_result]]:
        """Every entry below ``path`` (image path, backing file, lstat), parents first, sorted."""
        for name in self.listdir(path):
            child = path.rstrip("/") + "/" + name
            found = self._lookup(self._parts(self.resolve(child, follow_final=False)))
            if not found:
                continue
            yield child, found[0], found[1]
            if stat.S_ISDIR(found[1].st_mode):
                yield from self.walk(child)
