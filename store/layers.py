"""Layer tars: a deterministic writer and a safe extractor, with OCI whiteout rules.

Writer guarantees: entries sorted by path (parents first), numeric uid/gid with empty user and
group names, mtimes clamped to ``clamp_mtime`` when given, PAX format, hardlinks always after
their target, xattrs as ``SCHILY.xattr.*`` records. The same entries always give the same bytes.

Extractor guarantees: nothing is ever created, changed or removed outside ``root``. Entry names
with ``..`` are refused; every parent path is resolved inside the root with symlinks evaluated as
if ``root`` were ``/`` (so a symlink to ``/etc`` in the layer leads to ``root/etc``); hardlink
targets must lie inside the root. Whiteouts are applied (``mode="apply"``: delete the lower
entry) or converted to overlayfs form (``mode="overlay"``: 0/0 character device, opaque xattr).
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import math
import os
import shutil
import stat
import struct
import tarfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Literal, Mapping

from pybuild.errors import DigestMismatch, InvalidArchive, UnsafeLayer
from pybuild.oci import Descriptor, Digest, MediaType
from pybuild.paths import TooManyLinks, resolve_in_root

from .content import ContentStore
from .snapshots import is_opaque

__all__ = [
    "Entry", "WHITEOUT_PREFIX", "OPAQUE_WHITEOUT", "entries_from_dir", "entries_from_tar", "entries_from_upper",
    "write_tar", "LayerResult", "write_layer", "open_decompressed", "extract_layer",
    "secure_join", "normalize_name", "ExtractStats", "extract_verified", "order_hardlinks",
    "xattrs_of", "set_xattrs",
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_CHUNK = 1 << 20
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")

EntryType = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]


@dataclass(frozen=True)
class Entry:
    """One layer entry. ``path`` is relative and ``/``-separated, without ``./`` or ``/`` prefix.

    ``open`` (for files) returns a stream of exactly ``size`` bytes.
    """

    path: str
    type: EntryType
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict, hash=False)
    open: Callable[[], BinaryIO] | None = field(default=None, compare=False, hash=False)
    digest: str | None = field(default=None, compare=False, hash=False)  # sha256 hex of the content, if known


def normalize_name(name: str) -> str:
    """Strip ``./`` and ``/`` prefixes and trailing slashes; collapse ``.`` and empty parts.

    Raises UnsafeLayer when a component is ``..`` (the entry would leave the root).
    """
    parts = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            raise UnsafeLayer(f"layer entry {name!r} escapes the root (contains '..')",
                              hint="the layer is malicious or broken; it was not extracted")
        parts.append(p)
    return "/".join(parts)


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def order_hardlinks(entries: list[Entry]) -> list[Entry]:
    """Reorder hardlink groups so that the first member in sorted order carries the content."""
    by_path = {e.path: e for e in entries}
    groups: dict[str, list[str]] = {}
    for e in entries:
        if e.type == "hardlink":
            target = e.linkname
            seen = set()
            while target in by_path and by_path[target].type == "hardlink" and target not in seen:
                seen.add(target)
                target = by_path[target].linkname
            if target not in by_path:
                raise InvalidArchive(f"hardlink {e.path!r} points at {e.linkname!r}, which is not in the layer")
            groups.setdefault(target, []).append(e.path)
    if not groups:
        return entries
    for target, links in groups.items():
        members = sorted([target] + links, key=_sort_key)
        first = members[0]
        if first == target:
            for link in links:
                by_path[link] = replace(by_path[link], linkname=target)
            continue
        body = by_path[target]
        by_path[first] = replace(body, path=first)
        for m in members[1:]:
            by_path[m] = Entry(path=m, type="hardlink", mode=body.mode, uid=body.uid, gid=body.gid,
                               mtime=body.mtime, linkname=first)
    return sorted(by_path.values(), key=lambda e: _sort_key(e.path))


def xattrs_of(path: str) -> dict[str, bytes]:
    """The extended attributes of ``path`` itself (not followed), overlayfs' own left out;
    empty when the file system has none or they cannot be read."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        if n.startswith(_OVERLAY_XATTRS):
            continue
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            continue
    return out


def _opener(path: str) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


def entries_from_dir(root: str | os.PathLike[str], prefix: str = "") -> list[Entry]:
    """Describe every file below ``root`` (not ``root`` itself) as sorted entries.

    Files sharing an inode become hardlinks to the first path in sorted order. ``prefix`` is
    prepended to each path.
    """
    out: list[Entry] = []
    seen_inodes: dict[tuple[int, int], str] = {}
    base = os.fspath(root)

    def walk(dirpath: str, rel: str) -> None:
        with os.scandir(dirpath) as it:
            names = sorted(it, key=lambda d: d.name)
        for d in names:
            r = f"{rel}/{d.name}" if rel else d.name
            st = d.stat(follow_symlinks=False)
            out.append(_entry_from_stat(d.path, (prefix + "/" + r) if prefix else r, st, seen_inodes))
            if stat.S_ISDIR(st.st_mode):
                walk(d.path, r)

    walk(base, "")
    return sorted(out, key=lambda e: _sort_key(e.path))


def _entry_from_stat(full: str, rel: str, st: os.stat_result,
                     seen_inodes: dict[tuple[int, int], str]) -> Entry:
    mode = stat.S_IMODE(st.st_mode)
    common = dict(path=rel, mode=mode, uid=st.st_uid, gid=st.st_gid, mtime=int(st.st_mtime),
                  xattrs=xattrs_of(full))
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFDIR:
        return Entry(type="dir", **common)  # type: ignore[arg-type]
    if fmt == stat.S_IFLNK:
        return Entry(type="symlink", linkname=os.readlink(full), **common)  # type: ignore[arg-type]
    if fmt == stat.S_IFREG:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            if key in seen_inodes:
                return Entry(type="hardlink", linkname=seen_inodes[key], **common)  # type: ignore[arg-type]
            seen_inodes[key] = rel
        return Entry(type="file", size=st.st_size, open=_opener(full), **common)  # type: ignore[arg-type]
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        return Entry(type="char" if fmt == stat.S_IFCHR else "block", devmajor=os.major(st.st_rdev),
                     devminor=os.minor(st.st_rdev), **common)  # type: ignore[arg-type]
    if fmt == stat.S_IFIFO:
        return Entry(type="fifo", **common)  # type: ignore[arg-type]
    raise InvalidArchive(f"{full}: unsupported file type (socket?)")


def entries_from_upper(upper: str | os.PathLike[str], exists_below: Callable[[str], bool]) -> list[Entry]:
    """The layer entries of an overlayfs upper dir, in OCI form.

    A whiteout (character device 0/0) becomes a ``.wh.<name>`` entry when ``name`` exists in
    the lower layers (``exists_below("/dir/name")``) and is dropped otherwise; an opaque
    directory (``trusted.overlay.opaque`` or ``user.overlay.opaque`` = ``y``) keeps its entry
    and gains ``.wh..wh..opq``. Everything else is as ``entries_from_dir`` gives it.
    """
    out: list[Entry] = []
    base = os.fspath(upper)
    for e in entries_from_dir(base):
        if e.type == "char" and e.devmajor == 0 and e.devminor == 0:
            if exists_below("/" + e.path):
                parent, _, name = e.path.rpartition("/")
                wh = f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name
                out.append(Entry(path=wh, type="file", mode=0o600, uid=0, gid=0, mtime=e.mtime, size=0,
                                 open=lambda: io.BytesIO(b"")))
            continue
        out.append(e)
        if e.type == "dir" and is_opaque(os.path.join(base, e.path)):
            out.append(Entry(path=f"{e.path}/{OPAQUE_WHITEOUT}", type="file", mode=0o600, uid=0, gid=0,
                             mtime=e.mtime, size=0, open=lambda: io.BytesIO(b"")))
    return sorted(out, key=lambda x: _sort_key(x.path))


def _opaque_xattr() -> str:
    """trusted.overlay.opaque as root; user.overlay.opaque in a user namespace (overlay's
    userxattr mode), where trusted.* cannot be set."""
    from pybuild.userns import in_user_namespace
    return "user.overlay.opaque" if in_user_namespace() else "trusted.overlay.opaque"


_TAR_TYPES: dict[bytes, EntryType] = {
    tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
}


def _member_xattrs(m: tarfile.TarInfo) -> dict[str, bytes]:
    out = {}
    for k, v in m.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            out[k[len("SCHILY.xattr."):]] = v.encode("utf-8", "surrogateescape")
    return out


def entries_from_tar(tf: tarfile.TarFile) -> list[Entry]:
    """Normalise the members of a *seekable* tar into sorted, de-duplicated entries.

    The last member for a path wins; the root entry (``./``) is dropped; hardlink groups are
    re-ordered so the target comes first. Raises UnsafeLayer for ``..`` names and InvalidArchive
    for unsupported member types.
    """
    by_path: dict[str, Entry] = {}
    for m in tf.getmembers():
        path = normalize_name(m.name)
        if not path:
            continue
        typ = _TAR_TYPES.get(m.type)
        if typ is None:
            raise InvalidArchive(f"tar member {m.name!r} has unsupported type {m.type!r}")
        linkname = m.linkname
        if typ == "hardlink":
            linkname = normalize_name(linkname)
        opener = None
        if typ == "file":
            opener = (lambda mm=m: tf.extractfile(mm))  # type: ignore[misc]
        by_path[path] = Entry(path=path, type=typ, mode=m.mode & 0o7777, uid=m.uid, gid=m.gid,
                              mtime=int(m.mtime), size=m.size if typ == "file" else 0,
                              linkname=linkname, devmajor=m.devmajor, devminor=m.devminor,
                              xattrs=_member_xattrs(m), open=opener)
    entries = sorted(by_path.values(), key=lambda e: _sort_key(e.path))
    return order_hardlinks(entries)


def _tarinfo(e: Entry, clamp_mtime: int | None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(e.path)
    ti.mode = e.mode & 0o7777
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname = ti.gname = ""
    mtime = e.mtime
    if clamp_mtime is not None and mtime > clamp_mtime:
        mtime = clamp_mtime
    ti.mtime = max(0, mtime)
    ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
               "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
               "fifo": tarfile.FIFOTYPE}[e.type]
    if e.type == "file":
        ti.size = e.size
    if e.type in ("symlink", "hardlink"):
        ti.linkname = e.linkname
    if e.type in ("char", "block"):
        ti.devmajor, ti.devminor = e.devmajor, e.devminor
    if e.xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                          for k, v in sorted(e.xattrs.items())}
    return ti


_TYPEFLAG = {"file": b"0", "hardlink": b"1", "symlink": b"2", "char": b"3", "block": b"4", "dir": b"5",
             "fifo": b"6"}
_BLOCK = 512
_RECORD = 20 * _BLOCK
_ZEROS = bytes(_RECORD)


# name, mode, uid, gid, size, mtime, checksum (spaces while it is summed), type, link name,
# magic and version, user and group names (empty), device numbers, prefix and padding (empty)
_HEADER = (b"%s%07o\0%07o\0%07o\0%011o\0%011o\0        %s%sustar\x0000" + bytes(64) + b"%s" +
           bytes(155 + 12))
_NO_DEVS = bytes(16)
_MAX7 = 8 ** 7    # what an 8-byte octal field holds
_MAX11 = 8 ** 11  # what a 12-byte octal field holds


def _ustar_header(e: Entry, mtime: int) -> bytes | None:
    """The one-block header tarfile writes in PAX format for an entry that needs no PAX
    record (ASCII names of at most 100 bytes, no xattrs, numbers that fit); else None.

    Byte-for-byte what CPython 3.11's ``TarInfo.tobuf(PAX_FORMAT)`` gives for the same entry
    (tests/test_layers.py checks it), but without building a TarInfo per entry: one format
    operation and one checksum per header."""
    if e.xattrs:
        return None
    t = e.type
    name = e.path + "/" if t == "dir" else e.path
    link = e.linkname
    if len(name) > 100 or len(link) > 100 or not name.isascii() or not link.isascii():
        return None
    size = e.size if t == "file" else 0
    if not (0 <= e.uid < _MAX7 and 0 <= e.gid < _MAX7 and 0 <= size < _MAX11 and 0 <= mtime < _MAX11):
        return None
    if t == "char" or t == "block":
        if not (0 <= e.devmajor < _MAX7 and 0 <= e.devminor < _MAX7):
            return None
        devs = b"%07o\0%07o\0" % (e.devmajor, e.devminor)
    else:
        devs = _NO_DEVS
    buf = bytearray(_HEADER % (name.encode("ascii").ljust(100, b"\0"), e.mode & 0o7777, e.uid, e.gid, size,
                               mtime, _TYPEFLAG[t], link.encode("ascii").ljust(100, b"\0"), devs))
    buf[148:156] = b"%06o\0 " % _byte_sum(buf)
    return bytes(buf)


def _byte_sum(block: bytearray) -> int:
    """``sum(block)`` of a 512-byte block, in C: Adler-32's low half is 1 + the sum of the
    bytes modulo 65521, and 256 bytes sum to at most 65,280, so each half's sum is exact
    (a Python-level ``sum`` over 512 bytes costs about as much as the rest of a header)."""
    mv = memoryview(block)
    return (zlib.adler32(mv[:256]) & 0xFFFF) + (zlib.adler32(mv[256:]) & 0xFFFF) - 2


_FLUSH_AT = 1 << 20  # write_tar hands the sink ~1 MiB at a time (fewer hash/compress calls)


def write_tar(entries: Iterable[Entry], out: BinaryIO, clamp_mtime: int | None = None) -> int:
    """Write ``entries`` (already sorted) as a PAX tar to ``out``; returns the entry count.

    The bytes are those of tarfile's PAX writer (``w|`` mode), handed to ``out.write`` about
    1 MiB at a time; a small file's header, content and padding go into that buffer together.
    Raises InvalidArchive when a file entry has no content or its source shrank while being
    read."""
    buf = bytearray()
    total = 0
    n = 0
    for e in entries:
        mtime = e.mtime
        if clamp_mtime is not None and mtime > clamp_mtime:
            mtime = clamp_mtime
        if mtime < 0:
            mtime = 0
        header = _ustar_header(e, mtime)
        if header is None:
            header = _tarinfo(e, clamp_mtime).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        buf += header
        if e.type == "file":
            if e.open is None:
                raise InvalidArchive(f"entry {e.path!r} has no content")
            size = left = e.size
            with e.open() as src:
                while left > 0:
                    chunk = src.read(left if left < _CHUNK else _CHUNK)
                    if not chunk:
                        raise InvalidArchive(f"{e.path} shrank while it was being archived")
                    buf += chunk
                    left -= len(chunk)
                    if len(buf) >= _FLUSH_AT:
                        total += len(buf)
                        out.write(bytes(buf))
                        buf.clear()
            pad = -size % _BLOCK
            if pad:
                buf += _ZEROS[:pad]
        if len(buf) >= _FLUSH_AT:
            total += len(buf)
            out.write(bytes(buf))
            buf.clear()
        n += 1
    buf += _ZEROS[:2 * _BLOCK]
    pad = -(total + len(buf)) % _RECORD
    if pad:
        buf += _ZEROS[:pad]
    out.write(bytes(buf))
    return n


GZIP_LEVEL = 1
"""Default gzip level of layers, on ISA-L's scale (0-3; ``isal`` package): its level 1 deflates
text at about 4.5x the speed of zlib level 4 on one core, for archives about 1.25x as large
(docs/performance.md). Levels above 3 use zlib (4-9) for users who want smaller archives."""

_GZ_CHUNK = 1 << 20
_GZ_WINDOW = 32 << 10
_GZ_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, OS unknown
_GZ_PROBE = 64 << 10
_ISAL_MAX_LEVEL = 3


def _deflater(level: int) -> "object":
    """The deflate module for ``level``: ISA-L for 1-3, zlib for 0 (stored) and 4-9. Both
    write standard raw deflate; which one is used depends only on the level."""
    if 1 <= level <= _ISAL_MAX_LEVEL:
        from isal import isal_zlib
        return isal_zlib
    return zlib


def _deflate_chunk(level: int, chunk: bytes, window: bytes, last: bool) -> bytes:
    """Raw deflate of one chunk, primed with the previous 32 KiB, ending byte-aligned (sync
    flush) or final. A chunk whose first 64 KiB do not shrink by 3 % at level 1 is stored."""
    if level > 0 and len(chunk) >= _GZ_PROBE:
        probe = _deflater(1).compressobj(1, zlib.DEFLATED, -15)  # type: ignore[attr-defined]
        if len(probe.compress(chunk[:_GZ_PROBE]) + probe.flush()) > _GZ_PROBE * 0.97:
            level = 0
    mod = _deflater(level)
    c = mod.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY,  # type: ignore[attr-defined]
                        *((window,) if window else ()))
    return c.compress(chunk) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class _ParallelGzip:
    """A gzip stream made the way pigz makes one: the input is cut into 1 MiB chunks, each
    deflated on its own thread (ISA-L and zlib release the GIL) with the previous chunk's last 32 KiB as
    dictionary, then joined in order into one standard gzip member with a running CRC-32.

    The bytes depend only on the input and the level, never on timing or the number of cores.
    """

    def __init__(self, level: int) -> None:
        from concurrent.futures import ThreadPoolExecutor
        self.level = level
        self.workers = max(1, min(8, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="gzip") if self.workers > 1 else None
        self._buf = bytearray()
        self._window = b""
        self._crc = 0
        self._size = 0
        self._pending: list[object] = []
        self._started = False

    def _submit(self, chunk: bytes, last: bool) -> None:
        self._crc = zlib.crc32(chunk, self._crc)
        self._size += len(chunk)
        window, self._window = self._window, chunk[-_GZ_WINDOW:]
        if self._pool is None:
            self._pending.append(_deflate_chunk(self.level, chunk, window, last))
        else:
            self._pending.append(self._pool.submit(_deflate_chunk, self.level, chunk, window, last))

    def _drain(self, keep: int) -> bytes:
        out = [] if self._started else [_GZ_HEADER]
        self._started = True
        while len(self._pending) > keep:
            f = self._pending.pop(0)
            out.append(f if isinstance(f, bytes) else f.result())  # type: ignore[attr-defined]
        return b"".join(out)

    def compress(self, data: bytes) -> bytes:
        self._buf += data
        while len(self._buf) > _GZ_CHUNK:  # keep at least one byte back for the final chunk
            chunk = bytes(self._buf[:_GZ_CHUNK])
            del self._buf[:_GZ_CHUNK]
            self._submit(chunk, last=False)
        return self._drain(keep=2 * self.workers)

    def flush(self) -> bytes:
        self._submit(bytes(self._buf), last=True)
        self._buf.clear()
        try:
            return self._drain(keep=0) + struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


class _Compressor:
    """The layer compressor: parallel gzip (GZIP_LEVEL), zstd level 3 (zstd's own worker
    threads; its output does not depend on their number), or none (``""``)."""

    def __init__(self, kind: str, level: int | None) -> None:
        self.kind = kind
        self._c: object | None
        if kind == "gzip":
            self._c = _ParallelGzip(GZIP_LEVEL if level is None else level)
        elif kind == "zstd":
            import zstandard
            self._c = zstandard.ZstdCompressor(level=3 if level is None else level,
                                               threads=max(1, os.cpu_count() or 1)).compressobj()
        elif kind == "":
            self._c = None
        else:
            raise InvalidArchive(f"unknown compression {kind!r}", hint="use gzip or zstd")

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data) if self._c is not None else bytes(data)  # type: ignore[attr-defined]

    def flush(self) -> bytes:
        return self._c.flush() if self._c is not None else b""  # type: ignore[attr-defined]


class _LayerSink(io.RawIOBase):
    """Tar bytes in; diff_id hashed over them, compressed bytes into a store ingest."""

    def __init__(self, ingest: "object", compression: str, level: int | None) -> None:
        self._ingest = ingest
        self._comp = _Compressor(compression, level)
        self.diff_hasher = hashlib.sha256()
        self.uncompressed_size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.diff_hasher.update(b)
        self.uncompressed_size += len(b)
        out = self._comp.compress(bytes(b))
        if out:
            self._ingest.write(out)  # type: ignore[attr-defined]
        return len(b)

    def finish(self) -> None:
        tail = self._comp.flush()
        if tail:
            self._ingest.write(tail)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LayerResult:
    """A layer written to the store: its descriptor, diff_id and uncompressed size."""

    descriptor: Descriptor
    diff_id: Digest
    uncompressed_size: int


def write_layer(content: ContentStore, entries: Iterable[Entry], compression: str = "gzip",
                clamp_mtime: int | None = None, level: int | None = None) -> LayerResult:
    """Write ``entries`` as one compressed layer blob, hashing both streams in one pass."""
    with content.ingest() as ing:
        sink = _LayerSink(ing, compression, level)
        write_tar(entries, sink, clamp_mtime)  # type: ignore[arg-type]
        sink.finish()
        digest = ing.commit()
        size = ing.size
    return LayerResult(Descriptor(MediaType.layer_for(compression), digest, size),
                       Digest("sha256", sink.diff_hasher.hexdigest()), sink.uncompressed_size)


def open_decompressed(f: BinaryIO, media_type: str = "") -> BinaryIO:
    """Wrap ``f`` so that it yields the uncompressed tar, by media type or by magic bytes."""
    kind = MediaType.compression(media_type) if media_type else ""
    if not kind:
        peekable = io.BufferedReader(f) if not hasattr(f, "peek") else f  # type: ignore[arg-type]
        head = peekable.peek(4)[:4]  # type: ignore[attr-defined]
        f = peekable
        if head[:2] == b"\x1f\x8b":
            kind = "gzip"
        elif head == b"\x28\xb5\x2f\xfd":
            kind = "zstd"
        elif head[:3] == b"BZh":
            import bz2
            return bz2.BZ2File(f)  # type: ignore[return-value]
        elif head == b"\xfd7zX":
            import lzma
            return lzma.LZMAFile(f)  # type: ignore[return-value]
    if kind == "gzip":
        counted = _CountingReader(f)
        return _ratio_limited(gzip.GzipFile(fileobj=counted, mode="rb"), counted)  # type: ignore[arg-type]
    if kind == "zstd":
        import zstandard
        counted = _CountingReader(f)
        return _ratio_limited(zstandard.ZstdDecompressor().stream_reader(counted, read_across_frames=True),
                              counted)  # type: ignore[arg-type]
    return f


MAX_RATIO = int(os.environ.get("PYBUILD_MAX_DECOMPRESSION_RATIO", "100"))
RATIO_FLOOR = 64 << 20  # below this much output no ratio is too high


class _TeeReader(io.RawIOBase):
    """Reads through ``f``, handing every chunk to ``seen`` (to count or hash it)."""

    def __init__(self, f: BinaryIO, seen: Callable[[bytes], object]) -> None:
        self._f, self._seen = f, seen

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        self._seen(data)
        return n


class _CountingReader(_TeeReader):
    """Counts the compressed bytes read through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.count = 0
        super().__init__(f, self._add)

    def _add(self, data: bytes) -> None:
        self.count += len(data)


def extract_verified(content: ContentStore, layer: Descriptor, diff_id: Digest, root: str | os.PathLike[str],
                     mode: Literal["apply", "overlay"] = "apply") -> ExtractStats:
    """Extract the layer blob ``layer`` into ``root``, verifying the blob (digest, size) and the
    uncompressed stream against ``diff_id``. Raises DigestMismatch, InvalidArchive, UnsafeLayer;
    on a mismatch the caller discards ``root``."""
    h = hashlib.sha256()
    with content.open_blob(layer.digest, layer.size) as blob:
        tee = _TeeReader(open_decompressed(blob, layer.media_type), h.update)  # type: ignore[arg-type]
        stats = extract_layer(tee, root, mode=mode)  # type: ignore[arg-type]
        while tee.read(1 << 20):
            pass
        blob.finish()
    if h.hexdigest() != diff_id.hex:
        raise DigestMismatch(f"layer {layer.digest} uncompresses to sha256:{h.hexdigest()}, "
                             f"but the image config says {diff_id}", expected=str(diff_id),
                             actual=f"sha256:{h.hexdigest()}")
    return stats


def _ratio_limited(inner: BinaryIO, counted: _CountingReader) -> BinaryIO:
    """``inner`` (a decompressor reading through ``counted``), refusing a decompression bomb:
    output past RATIO_FLOOR bytes must stay within MAX_RATIO times the compressed input read so
    far (raises InvalidArchive)."""
    out = 0

    def check(data: bytes) -> None:
        nonlocal out
        out += len(data)
        if out > RATIO_FLOOR and out > MAX_RATIO * max(1, counted.count):
            raise InvalidArchive(f"layer expands more than {MAX_RATIO}:1 ({counted.count} compressed bytes "
                                 f"gave {out}): refused as a decompression bomb",
                                 hint="set PYBUILD_MAX_DECOMPRESSION_RATIO to allow it")
    return _TeeReader(inner, check)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Extraction


def secure_join(root: Path, rel: str, follow_final: bool = True) -> Path:
    """Resolve ``rel`` under ``root`` as if ``root`` were ``/``; the result is inside ``root``.

    Symlinks met on the way are followed within the root (absolute targets restart at ``root``,
    ``..`` never climbs above it). Missing components are kept as they are. Raises UnsafeLayer
    for a symlink loop.
    """
    def readlink(parts: list[str]) -> str | None:
        p = root.joinpath(*parts)
        return os.readlink(p) if p.is_symlink() else None

    try:
        return root.joinpath(*resolve_in_root(rel, readlink, follow_final))
    except TooManyLinks as e:
        raise UnsafeLayer(str(e)) from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _mkdirs(root: Path, rel: str) -> Path:
    """Create the directory ``rel`` (and missing parents, mode 0755) inside root; return it.

    ``secure_join`` resolves every existing component (symlinks included) inside the root, so
    what remains to create are plain missing names. Raises InvalidArchive when a component is a
    file.
    """
    target = secure_join(root, rel)
    if not target.exists():
        target.mkdir(mode=0o755, parents=True)
    elif not target.is_dir():
        raise InvalidArchive(f"cannot create directory {rel!r}: {os.path.relpath(target, root)} is not a directory")
    return target


@dataclass
class ExtractStats:
    """What an extraction did: counts and the device nodes skipped for lack of permission."""

    entries: int = 0
    whiteouts: int = 0
    skipped_devices: list[str] = field(default_factory=list)


def extract_layer(stream: BinaryIO, root: str | os.PathLike[str], *,
                  mode: Literal["apply", "overlay"] = "apply",
                  same_owner: bool | None = None) -> ExtractStats:
    """Extract an uncompressed layer tar from ``stream`` into ``root`` (which must exist).

    Raises UnsafeLayer for entries that would leave the root, InvalidArchive for malformed
    tars. ``same_owner`` (default: running as root) applies the entries' uid/gid.
    """
    root_p = Path(root).resolve()
    if same_owner is None:
        same_owner = os.geteuid() == 0
    stats = ExtractStats()
    created: set[str] = set()
    dir_times: list[tuple[Path, int]] = []
    try:
        tf = tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape")
    except tarfile.TarError as e:
        raise InvalidArchive(f"layer is not a tar archive: {e}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InvalidArchive(f"layer is truncated or corrupt: {e}") from None
    try:
        for m in tf:
            try:
                _extract_member(tf, m, root_p, mode, same_owner, stats, created, dir_times)
            except (ValueError, OverflowError) as e:
                raise InvalidArchive(f"layer entry {m.name!r} is malformed: {e}") from None
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
                    raise  # the machine's problem, not the layer's
                raise InvalidArchive(f"layer entry {m.name!r} cannot be extracted: {e.strerror}",
                                     hint="the layer is malformed") from None
    except tarfile.TarError as e:
        raise InvalidArchive(f"layer tar is malformed: {e}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InvalidArchive(f"layer is truncated or corrupt: {e}") from None
    except Exception as e:
        if type(e).__name__ == "ZstdError":
            raise InvalidArchive(f"layer is truncated or corrupt: {e}") from None
        raise
    for p, t in reversed(dir_times):
        try:
            os.utime(p, (t, t), follow_symlinks=False)
        except (OSError, ValueError, OverflowError):
            pass
    return stats


def _extract_member(tf: tarfile.TarFile, m: tarfile.TarInfo, root: Path, mode: str, same_owner: bool,
                    stats: ExtractStats, created: set[str], dir_times: list[tuple[Path, int]]) -> None:
    rel = normalize_name(m.name)
    if not rel:
        return  # the root entry itself
    stats.entries += 1
    parent_rel, _, base = rel.rpartition("/")
    parent = _mkdirs(root, parent_rel) if parent_rel else root
    if base.startswith(WHITEOUT_PREFIX):
        stats.whiteouts += 1
        _whiteout(root, parent, base, mode, created, rel)
        return
    target = parent / base
    created.add(os.path.relpath(target, root))
    typ = _TAR_TYPES.get(m.type)
    if typ is None:
        raise InvalidArchive(f"layer entry {m.name!r} has unsupported type {m.type!r}")
    if os.path.lexists(target) and not (typ == "dir" and target.is_dir() and not target.is_symlink()):
        _remove(target)
    if typ == "dir":
        if not target.exists():
            target.mkdir(mode=0o700)
    elif typ == "file":
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            src = tf.extractfile(m)
            if src is not None:
                shutil.copyfileobj(src, out, _CHUNK)
    elif typ == "symlink":
        os.symlink(m.linkname, target)
    elif typ == "hardlink":
        link_rel = normalize_name(m.linkname)
        src_path = secure_join(root, link_rel, follow_final=False)
        if not os.path.lexists(src_path):
            raise InvalidArchive(f"hardlink {m.name!r} points at {m.linkname!r}, which does not exist")
        os.link(src_path, target, follow_symlinks=False)
        return  # a hardlink shares the target's metadata
    elif typ in ("char", "block", "fifo"):
        try:
            if typ == "fifo":
                os.mkfifo(target, 0o600)
            else:
                kind = stat.S_IFCHR if typ == "char" else stat.S_IFBLK
                os.mknod(target, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        except PermissionError:
            stats.skipped_devices.append(rel)
            return
    _apply_metadata(target, m, typ, same_owner, dir_times)


def set_xattrs(target: "str | Path | int", xattrs: Mapping[str, bytes]) -> None:
    """Set ``xattrs`` on ``target`` (a path, not followed, or a descriptor). One the process may
    not set (security.* without privilege, a file system without xattrs) is left out, as when a
    layer is extracted. Call it after any chown: a chown clears security.capability."""
    for k, v in xattrs.items():
        try:
            if isinstance(target, int):
                os.setxattr(target, k, v)
            else:
                os.setxattr(target, k, v, follow_symlinks=False)
        except OSError:
            pass


def _apply_metadata(target: Path, m: tarfile.TarInfo, typ: str, same_owner: bool,
                    dir_times: list[tuple[Path, int]]) -> None:
    if same_owner:
        try:
            os.chown(target, m.uid, m.gid, follow_symlinks=False)
        except OSError:
            pass
    set_xattrs(target, _member_xattrs(m))
    if typ != "symlink":
        os.chmod(target, m.mode & 0o7777)
    if not math.isfinite(m.mtime):
        raise InvalidArchive(f"layer entry {m.name!r} has an invalid mtime {m.mtime!r}")
    if typ == "dir":
        dir_times.append((target, int(m.mtime)))
    else:
        try:
            os.utime(target, (int(m.mtime), int(m.mtime)), follow_symlinks=False)
        except OSError:
            pass


def _whiteout(root: Path, parent: Path, base: str, mode: str, created: set[str], rel: str) -> None:
    if base == OPAQUE_WHITEOUT:
        if mode == "overlay":
            os.setxattr(parent, _opaque_xattr(), b"y")
            return
        for child in list(parent.iterdir()):
            if os.path.relpath(child, root) not in created:
                _remove(child)
        return
    name = base[len(WHITEOUT_PREFIX):]
    if name in ("", ".", "..") or "/" in name:
        raise UnsafeLayer(f"layer whiteout {rel!r} names {name!r}, which is not a file name",
                          hint="the layer is malicious or broken; it was not extracted")
    victim = parent / name
    if mode == "overlay":
        if os.path.lexists(victim):
            _remove(victim)
        os.mknod(victim, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        return
    if os.path.lexists(victim):
        _remove(victim)


def iter_tar_paths(stream: BinaryIO) -> Iterator[tarfile.TarInfo]:
    """Iterate the members of an uncompressed tar stream (for inspection and tests)."""
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        yield from tf
