"""Garbage collection: mark from every index.json entry, sweep unmarked blobs and snapshots.

Runs with the store held exclusively (no lease alive, see ``Store.exclusive``) and the tag
index locked, so nothing is referenced or written while it sweeps.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field

from pybuild.errors import PybuildError
from pybuild.oci import Descriptor, Digest, ImageConfig, Index, Manifest, MediaType, chain_ids
from pybuild.storeroot import UPTODATE_DIR

from .lock import file_lock
from .snapshots import BASE_SUFFIX, SIDECARS
from .store import Store

__all__ = ["collect", "GCReport", "mark"]


@dataclass
class GCReport:
    """What a collection removed."""

    blobs: list[Digest] = field(default_factory=list)
    bytes_freed: int = 0
    snapshots: list[str] = field(default_factory=list)
    ingests: int = 0
    cache_records: int = 0


def _walk(store: Store, desc: Descriptor, blobs: set[Digest], chains: set[str]) -> None:
    if desc.digest in blobs:
        return
    blobs.add(desc.digest)
    if not store.content.has(desc.digest):
        return
    try:
        data = store.content.read_blob(desc.digest, desc.size)
    except PybuildError:
        return  # a corrupt blob is kept for fsck to report, and its children stay marked no further
    mt = desc.media_type
    if not mt:
        try:
            mt = json.loads(data).get("mediaType", "")
        except ValueError:
            return
    if mt in MediaType.INDEXES:
        for child in Index.from_json(data, mt).manifests:
            _walk(store, child, blobs, chains)
    elif mt in MediaType.MANIFESTS:
        m = Manifest.from_json(data, mt)
        blobs.add(m.config.digest)
        blobs.update(x.digest for x in m.layers)
        try:
            cfg = ImageConfig.from_json(store.content.read_blob(m.config.digest, m.config.size))
            chains.update(c.hex for c in chain_ids(cfg.diff_ids))
        except PybuildError:
            pass


def mark(store: Store, extra_roots: list[Descriptor] = ()) -> tuple[set[Digest], set[str]]:  # type: ignore[assignment]
    """Every blob and snapshot (chain id hex) reachable from the tags and ``extra_roots``."""
    blobs: set[Digest] = set()
    chains: set[str] = set()
    for e in store.tags.read():
        _walk(store, e.descriptor, blobs, chains)
    for d in extra_roots:
        _walk(store, d, blobs, chains)
    return blobs, chains


def _cache_chains(store: Store, tagged: set[Digest]) -> set[str]:
    """Snapshots of layers that only kept cache records use (e.g. builder stages) stay too."""
    return set(store.cache.kept_chains(tagged))


def _delta_bases(store: Store, chains: set[str]) -> set[str]:
    """The snapshots the kept delta snapshots lie on (each sidecar lists its whole stack)."""
    out: set[str] = set()
    for h in chains:
        try:
            out.update((store.snapshots_dir / f"{h}{BASE_SUFFIX}").read_text().split())
        except (FileNotFoundError, UnicodeDecodeError):
            continue
    return out


def collect(store: Store, dry_run: bool = False) -> GCReport:
    """Remove every blob and snapshot no tag reaches, and dead ingest files.

    Waits for running builds/imports (their leases) to finish first.
    """
    report = GCReport()
    with store.exclusive(), file_lock(store.tags.lock_path):
        if not dry_run:  # a record may name cache entries this sweep removes: rebuild them normally
            shutil.rmtree(store.root / UPTODATE_DIR, ignore_errors=True)
        tagged = {e.descriptor.digest for e in store.tags.read()}
        cache_roots, report.cache_records = store.cache.sweep(tagged, dry_run=dry_run)
        blobs, chains = mark(store)
        blobs.update(d.digest for d in cache_roots)
        chains.update(_cache_chains(store, tagged))
        for d in list(store.content.iter_blobs()):
            if d in blobs:
                continue
            try:
                size = store.content.blob_path(d).stat().st_size
            except FileNotFoundError:
                continue
            if not dry_run and store.content.delete_blob(d):
                report.bytes_freed += size
            report.blobs.append(d)
        if store.snapshots_dir.is_dir():
            chains |= _delta_bases(store, chains)
            for p in store.snapshots_dir.iterdir():
                side = next((x for x in SIDECARS if p.name.endswith(x) and not p.name.startswith(".")), None)
                if side is not None:
                    if p.name[:-len(side)] not in chains and not dry_run:
                        p.unlink(missing_ok=True)   # a sidecar goes with its snapshot
                    continue
                if p.name in chains:
                    continue
                report.snapshots.append(p.name)
                if not dry_run and p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                elif not dry_run:
                    p.unlink(missing_ok=True)   # a temp sidecar of a killed writer
        if not dry_run:
            report.ingests = store.content.sweep_ingests()
            store.cache.sweep_donors(lambda h: (store.snapshots_dir / h).is_dir())
    return report
