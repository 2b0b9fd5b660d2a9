"""The blob store: content addressed by sha256, laid out as an OCI image layout.

Writes go to a temp file under ``ingest/`` while hashing; ``commit`` fsyncs, checks size and
digest, and renames into ``blobs/sha256/<hex>``. A blob is visible only once complete, so a
writer killed at any point leaves no partial blob (only an ingest file that GC removes). Reads
are verified: the digest (and size) is checked when the stream ends.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

from pybuild.errors import DigestMismatch, NotFound, StoreError
from pybuild.oci import Digest

from .fsutil import fsync_dir

__all__ = ["ContentStore", "Ingest", "VerifiedReader"]

_CHUNK = 1 << 20


class Ingest:
    """A blob being written. Use as a context manager; anything not committed is discarded.

    ``write`` hashes as it goes; ``commit`` makes the blob durable and visible.
    """

    def __init__(self, store: "ContentStore") -> None:
        self._store = store
        self._path = store.ingest_dir / f"{uuid.uuid4().hex}.tmp"
        self._file: BinaryIO | None = None
        self._hasher = hashlib.sha256()
        self.size = 0
        self._done = False
        self._closed = False

    @property
    def path(self) -> Path:
        """The temp file's path (readable after ``close_file``)."""
        return self._path

    def _open(self) -> BinaryIO:
        if self._file is None:
            f = open(self._path, "xb")
            # Held while we write: GC removes only ingest files whose lock it can take.
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file = f
        return self._file

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; returns the number of bytes written."""
        if self._done or self._closed:
            raise StoreError("write to a finished ingest")
        f = self._open()
        f.write(data)
        self._hasher.update(data)
        self.size += len(data)
        return len(data)

    def copy_from(self, src: BinaryIO) -> None:
        """Append everything ``src`` yields until EOF."""
        while chunk := src.read(_CHUNK):
            self.write(chunk)

    @property
    def digest(self) -> Digest:
        """The digest of what has been written so far."""
        return Digest("sha256", self._hasher.hexdigest())

    def verify(self, expected: Digest | None = None, size: int | None = None) -> Digest:
        """Check the written bytes against ``expected`` digest and ``size``.

        Raises DigestMismatch naming both digests (the ingest is then discarded).
        """
        actual = self.digest
        if size is not None and size != self.size:
            self.abort()
            raise DigestMismatch(f"blob {expected or actual}: expected {size} bytes, got {self.size}",
                                 expected=str(expected or ""), actual=str(actual))
        if expected is not None and expected != actual:
            self.abort()
            raise DigestMismatch(f"blob {expected}: content hashes to {actual}",
                                 expected=str(expected), actual=str(actual))
        return actual

    def commit(self, expected: Digest | None = None, size: int | None = None) -> Digest:
        """Verify, fsync and atomically move the blob into place; returns its digest.

        A blob that already exists is success (the temp file is dropped).
        Raises DigestMismatch when ``expected``/``size`` do not match.
        """
        digest = self.verify(expected, size)
        self.close_file()
        target = self._store.blob_path(digest)
        if target.exists():
            self.abort()
            return digest
        os.chmod(self._path, 0o644)
        os.replace(self._path, target)
        fsync_dir(target.parent)
        self._done = True
        return digest

    def close_file(self) -> None:
        """Flush, fsync and close the temp file (writes are over; ``commit`` may follow later).

        Used to hold many finished ingests without holding a file descriptor for each.
        """
        if self._closed:
            return
        f = self._open()  # an empty blob still needs its file
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._file = None
        self._closed = True

    def abort(self) -> None:
        """Discard the ingest (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        self._done = True

    def __enter__(self) -> "Ingest":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()


class VerifiedReader(io.RawIOBase):
    """A read-only stream over a blob that raises DigestMismatch when the bytes end wrong.

    Verification happens when EOF is read; call ``finish()`` to drain and verify a stream that
    was not read to the end (e.g. a tar reader that stops at the end-of-archive marker).
    """

    def __init__(self, f: BinaryIO, digest: Digest, size: int | None, name: str) -> None:
        super().__init__()
        self._f = f
        self._digest = digest
        self._size = size
        self._hasher = digest.new_hasher()
        self._read = 0
        self._verified = False
        self.name = name

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(b)  # type: ignore[attr-defined]
        if n:
            self._hasher.update(memoryview(b)[:n])
            self._read += n
            if self._size is not None and self._read > self._size:
                raise DigestMismatch(f"blob {self._digest}: more than the expected {self._size} bytes",
                                     expected=str(self._digest))
        elif not self._verified:
            self._check()
        return n or 0

    def _check(self) -> None:
        actual = Digest(self._digest.algorithm, self._hasher.hexdigest())
        if self._size is not None and self._read != self._size:
            raise DigestMismatch(f"blob {self._digest}: expected {self._size} bytes, read {self._read}",
                                 expected=str(self._digest), actual=str(actual),
                                 hint="the store is corrupt; run `pybuild prune` and pull/build again")
        if actual != self._digest:
            raise DigestMismatch(f"blob {self._digest} is corrupt: content hashes to {actual}",
                                 expected=str(self._digest), actual=str(actual),
                                 hint="the store is corrupt; remove the image and pull/build it again")
        self._verified = True

    def finish(self) -> None:
        """Read whatever is left and verify. Raises DigestMismatch."""
        while self.read(_CHUNK):
            pass
        if not self._verified:
            self._check()

    def close(self) -> None:
        self._f.close()
        super().close()


class ContentStore:
    """Blobs under ``root/blobs/<alg>/<hex>``, temp files under ``root/ingest``.

    The constructor does no I/O; ``ensure()`` creates the folders.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.ingest_dir = self.root / "ingest"

    def ensure(self) -> None:
        """Create the blob and ingest folders if missing."""
        (self.blobs_dir / "sha256").mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.algorithm / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.blob_path(digest).is_file()

    def size(self, digest: Digest) -> int:
        """Size of a stored blob. Raises NotFound."""
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store {self.root}") from None

    def ingest(self) -> Ingest:
        """Start writing a new blob."""
        return Ingest(self)

    def write_blob(self, data: bytes, expected: Digest | None = None) -> Digest:
        """Store ``data`` as one blob; returns its digest. Raises DigestMismatch."""
        if expected is None:
            expected = Digest.of(data)
        if self.has(expected):
            expected.verify(data, "blob")
            return expected
        with self.ingest() as w:
            w.write(data)
            return w.commit(expected, len(data))

    def open_blob(self, digest: Digest, size: int | None = None) -> VerifiedReader:
        """Open a blob for verified streaming reads. Raises NotFound, DigestMismatch (size)."""
        path = self.blob_path(digest)
        try:
            f = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store {self.root}",
                           hint="the image is incomplete; pull or build it again") from None
        actual = os.fstat(f.fileno()).st_size
        if size is not None and actual != size:
            f.close()
            raise DigestMismatch(f"blob {digest} is corrupt: {actual} bytes on disk, descriptor says {size}",
                                 expected=str(digest),
                                 hint="the store is corrupt; remove the image and pull/build it again")
        return VerifiedReader(f, digest, actual if size is None else size, str(path))  # type: ignore[arg-type]

    def read_blob(self, digest: Digest, size: int | None = None, limit: int = 64 << 20) -> bytes:
        """Read a small blob (manifest, config) whole and verify it.

        Raises NotFound, DigestMismatch, or StoreError when it is larger than ``limit``.
        """
        path = self.blob_path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store {self.root}",
                           hint="the image is incomplete; pull or build it again") from None
        if st.st_size > limit:
            raise StoreError(f"blob {digest} is {st.st_size} bytes, too large to read whole")
        data = path.read_bytes()
        if size is not None and len(data) != size:
            raise DigestMismatch(f"blob {digest} is corrupt: {len(data)} bytes on disk, descriptor says {size}",
                                 expected=str(digest))
        actual = Digest(digest.algorithm, hashlib.new(digest.algorithm, data).hexdigest())
        if actual != digest:
            raise DigestMismatch(f"blob {digest} is corrupt: content hashes to {actual}",
                                 expected=str(digest), actual=str(actual),
                                 hint="the store is corrupt; remove the image and pull/build it again")
        return data

    def iter_blobs(self) -> Iterator[Digest]:
        """Every committed blob's digest (names that are not digests are skipped)."""
        if not self.blobs_dir.is_dir():
            return
        for alg_dir in self.blobs_dir.iterdir():
            if not alg_dir.is_dir():
                continue
            for p in alg_dir.iterdir():
                try:
                    yield Digest.parse(f"{alg_dir.name}:{p.name}")
                except Exception:
                    continue

    def delete_blob(self, digest: Digest) -> bool:
        """Remove a blob; returns False when it was not there."""
        try:
            os.unlink(self.blob_path(digest))
            return True
        except FileNotFoundError:
            return False

    def sweep_ingests(self) -> int:
        """Remove ingest files no live writer holds (left by killed processes); returns the count."""
        n = 0
        if not self.ingest_dir.is_dir():
            return 0
        for p in self.ingest_dir.iterdir():
            try:
                fd = os.open(p, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                os.unlink(p)
                n += 1
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        return n
