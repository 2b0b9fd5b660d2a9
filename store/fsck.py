"""``pybuild fsck``: verify the whole store and remove what a crash can leave behind.

Checks, with the store held exclusively (no build or import runs meanwhile):
- every blob re-hashed: a blob whose bytes do not match its name is *corrupt* (reported; removed
  with ``repair`` so a pull or build can bring it back);
- every index.json entry: its manifest (and index children), config and layers exist and verify;
  an image missing a blob is *broken* (reported);
- snapshots: half-made ones (``.tmp-*``, from a killed step) are removed;
- ingest files of dead writers are removed; unreferenced blobs and snapshots (*orphans*) are
  removed like ``prune`` does.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field

from pybuild.errors import PybuildError
from pybuild.oci import Descriptor, Digest, ImageConfig, Index, Manifest, MediaType

from .gc import collect
from .lock import file_lock
from .store import Store

__all__ = ["FsckReport", "fsck"]


@dataclass
class FsckReport:
    """What fsck found and did."""

    blobs_checked: int = 0
    corrupt: list[Digest] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    half_made_snapshots: list[str] = field(default_factory=list)
    orphan_blobs: int = 0
    orphan_snapshots: int = 0
    dead_ingests: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing is corrupt or broken (what was swept does not count)."""
        return not self.corrupt and not self.broken_images


def _rehash(store: Store, d: Digest) -> bool:
    h = hashlib.new(d.algorithm)
    with open(store.content.blob_path(d), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest() == d.hex


def _check_image(store: Store, desc: Descriptor, bad: set[Digest]) -> str | None:
    """A problem with the image ``desc`` points at, or None."""
    def need(d: Descriptor) -> str | None:
        if d.digest in bad:
            return f"blob {d.digest} is corrupt"
        if not store.content.has(d.digest):
            return f"blob {d.digest} is missing"
        return None

    problem = need(desc)
    if problem:
        return problem
    try:
        data = store.content.read_blob(desc.digest, desc.size)
        mt = desc.media_type or json.loads(data).get("mediaType", "")
        if mt in MediaType.INDEXES:
            for child in Index.from_json(data, mt).manifests:
                if store.content.has(child.digest):
                    p = _check_image(store, child, bad)
                    if p:
                        return p
            return None
        m = Manifest.from_json(data, mt)
        for d in (m.config, *m.layers):
            p = need(d)
            if p:
                return p
        cfg = ImageConfig.from_json(store.content.read_blob(m.config.digest, m.config.size))
        if len(cfg.diff_ids) != len(m.layers):
            return f"{len(m.layers)} layers but {len(cfg.diff_ids)} diff_ids"
    except PybuildError as e:
        return e.message
    return None


def fsck(store: Store, repair: bool = True) -> FsckReport:
    """Verify ``store`` (see the module doc). With ``repair``, corrupt blobs, half-made
    snapshots, dead ingests and orphans are removed. Never touches a healthy image."""
    report = FsckReport()
    store.init()
    with store.exclusive():
        bad: set[Digest] = set()
        for d in list(store.content.iter_blobs()):
            report.blobs_checked += 1
            if not _rehash(store, d):
                bad.add(d)
                report.corrupt.append(d)
        with file_lock(store.tags.lock_path):
            for e in store.tags.read():
                problem = _check_image(store, e.descriptor, bad)
                if problem:
                    report.broken_images.append(f"{e.name or e.descriptor.digest}: {problem}")
        if store.snapshots_dir.is_dir():
            for p in store.snapshots_dir.glob(".tmp-*"):
                report.half_made_snapshots.append(p.name)
                if repair and p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                elif repair:
                    p.unlink(missing_ok=True)   # a delta's sidecar, written before its claim
        if repair:
            for d in bad:
                store.content.delete_blob(d)
    if repair:
        gc = collect(store)
        report.orphan_blobs = len(gc.blobs)
        report.orphan_snapshots = len(gc.snapshots)
        report.dead_ingests = gc.ingests
    return report
