"""Tags: ``index.json`` of the OCI layout, one manifest descriptor per tag.

A tag is the descriptor's ``org.opencontainers.image.ref.name`` annotation holding the familiar
reference (``busybox:latest``, ``localhost:5000/app:v1``), so ``skopeo inspect
oci:ROOT:busybox:latest`` finds it. Untagged images (e.g. loaded without a name) are entries with
no ref name. Every update is read-modify-write under an exclusive flock and lands with an atomic
rename, so concurrent pybuild processes never lose a tag and readers never see a torn file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pybuild.errors import StoreError
from pybuild.oci import ANNOTATION_REF_NAME, Descriptor, Index, MediaType, canonical_json

from .fsutil import atomic_write
from .lock import file_lock

__all__ = ["TagIndex", "TagEntry"]


@dataclass(frozen=True)
class TagEntry:
    """One entry of index.json: ``name`` is None for an untagged image."""

    name: str | None
    descriptor: Descriptor


class TagIndex:
    """Reads and updates ``root/index.json``. The constructor does no I/O."""

    def __init__(self, root: str | os.PathLike[str], lock_path: str | os.PathLike[str]) -> None:
        self.path = Path(root) / "index.json"
        self.lock_path = Path(lock_path)

    def read(self) -> list[TagEntry]:
        """All entries, in file order. Raises StoreError when index.json is unreadable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            idx = Index.from_json(data)
        except Exception as e:
            raise StoreError(f"{self.path} is corrupt: {e}",
                             hint="restore it from a backup or re-create the store") from None
        return [TagEntry(d.ref_name, d) for d in idx.manifests]

    def get(self, name: str) -> Descriptor | None:
        for e in self.read():
            if e.name == name:
                return e.descriptor
        return None

    def _write(self, entries: list[TagEntry]) -> None:
        manifests = []
        for e in entries:
            ann = {k: v for k, v in e.descriptor.annotations.items() if k != ANNOTATION_REF_NAME}
            if e.name:
                ann[ANNOTATION_REF_NAME] = e.name
            manifests.append(e.descriptor.with_annotations(ann).to_dict())
        atomic_write(self.path, canonical_json({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX,
                                                "manifests": manifests}))

    def update(self, fn: Callable[[list[TagEntry]], list[TagEntry]]) -> list[TagEntry]:
        """Apply ``fn`` to the entries under the lock and write the result atomically (nothing
        is written when the entries did not change)."""
        with file_lock(self.lock_path):
            old = self.read()
            new = fn(list(old))
            if new != old:
                self._write(new)
            return new

    def set(self, name: str, desc: Descriptor) -> None:
        """Point tag ``name`` at ``desc`` (replacing any previous target).

        An untagged entry for the same digest is dropped: it is now reachable by name.
        """
        def fn(entries: list[TagEntry]) -> list[TagEntry]:
            kept = [e for e in entries
                    if e.name != name and not (e.name is None and e.descriptor.digest == desc.digest)]
            if len(kept) == len(entries) - 1 and TagEntry(name, desc) in entries:
                return entries  # already so: keep the order, write nothing
            return kept + [TagEntry(name, desc)]
        self.update(fn)

    def add_untagged(self, desc: Descriptor) -> None:
        """Record an image with no name (like docker's ``<none>:<none>``), unless already present."""
        def fn(entries: list[TagEntry]) -> list[TagEntry]:
            if any(e.descriptor.digest == desc.digest for e in entries):
                return entries
            return entries + [TagEntry(None, desc)]
        self.update(fn)

    def remove(self, names: set[str]) -> list[TagEntry]:
        """Remove the named tags; returns the entries that were removed."""
        removed: list[TagEntry] = []

        def fn(entries: list[TagEntry]) -> list[TagEntry]:
            removed.extend(e for e in entries if e.name in names)
            return [e for e in entries if e.name not in names]
        self.update(fn)
        return removed

    def remove_digest(self, digest_str: str) -> list[TagEntry]:
        """Remove every entry (tagged or not) pointing at the manifest ``digest_str``."""
        removed: list[TagEntry] = []

        def fn(entries: list[TagEntry]) -> list[TagEntry]:
            removed.extend(e for e in entries if str(e.descriptor.digest) == digest_str)
            return [e for e in entries if str(e.descriptor.digest) != digest_str]
        self.update(fn)
        return removed
