"""The local build cache: step cache keys → the layer the step produced (or none).

Records live in ``metadata/cache/<key>.json``. After a build, the keys it used are linked to the
final image (``metadata/cache/images/<manifest hex>.json``); garbage collection keeps the records
(and their layer blobs) of every tagged image's build and drops the rest, so cache entries
survive ``prune`` while their image is tagged. ``donors/<step>`` remembers the snapshot last
written for a COPY step, so the next build of it can write its snapshot as a delta.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pybuild.oci import Descriptor, Digest, canonical_json

from .fsutil import atomic_write

__all__ = ["BuildCache", "CacheRecord"]

_KEY = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class CacheRecord:
    """What a cached step produced: a layer (descriptor + diff_id) or nothing (metadata step)."""

    layer: Descriptor | None = None
    diff_id: Digest | None = None

    def to_json(self) -> bytes:
        if self.layer is None:
            return canonical_json({"layer": None})
        return canonical_json({"layer": self.layer.to_dict(), "diff_id": str(self.diff_id)})

    @classmethod
    def from_json(cls, data: bytes) -> "CacheRecord":
        obj = json.loads(data)
        if obj.get("layer") is None:
            return cls()
        return cls(Descriptor.from_dict(obj["layer"]), Digest.parse(obj["diff_id"]))


class BuildCache:
    """Cache records under ``dir``. The constructor does no I/O."""

    def __init__(self, dir: str | os.PathLike[str]) -> None:
        self.dir = Path(dir)
        self.links = self.dir / "images"
        self.donors = self.dir / "donors"

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"bad cache key {key!r}")
        return self.dir / f"{key}.json"

    def get(self, key: str) -> CacheRecord | None:
        """The record for ``key``, or None (a missing or unreadable record is a miss)."""
        try:
            return CacheRecord.from_json(self._path(key).read_bytes())
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, record: CacheRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(key), record.to_json())

    def link(self, manifest: Digest, keys: Iterable[str], chains: Iterable[Digest] = ()) -> None:
        """Record that the image ``manifest`` was built with these step keys, and which snapshots
        (chain ids, of every stage) the build produced."""
        path = self.links / f"{manifest.hex}.json"
        new_keys, new_chains = set(keys), {c.hex for c in chains}
        try:
            old = json.loads(path.read_bytes())
            old_keys, old_chains = set(old["keys"]), set(old["chains"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            old_keys, old_chains = set(), set()
        # The same image built again (a no-op rebuild makes no snapshot): keep what is known.
        if new_keys <= old_keys and new_chains <= old_chains:
            return
        self.links.mkdir(parents=True, exist_ok=True)
        atomic_write(path, canonical_json({"keys": sorted(new_keys | old_keys),
                                           "chains": sorted(new_chains | old_chains)}))

    def _linked(self, tagged: set[Digest], field: str) -> set[str]:
        out: set[str] = set()
        for d in tagged:
            try:
                out.update(json.loads((self.links / f"{d.hex}.json").read_bytes())[field])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                continue
        return out

    def kept_chains(self, tagged: set[Digest]) -> set[str]:
        """Snapshot chain ids (hex) produced by the builds of the ``tagged`` manifests."""
        return self._linked(tagged, "chains")

    def donor(self, step: str) -> str | None:
        """The chain id (hex) of the snapshot last written for the step named ``step`` (a hex
        digest of what the step is, without its inputs), or None. Advisory: the snapshot may be
        gone, and the caller checks every byte it reuses."""
        try:
            text = (self.donors / step).read_text().strip()
        except (FileNotFoundError, ValueError, OSError):
            return None
        return text if _KEY.match(text) and _KEY.match(step) else None

    def set_donor(self, step: str, chain: Digest) -> None:
        """Remember ``chain`` as the snapshot of ``step`` (no fsync: a lost hint costs speed only)."""
        if not _KEY.match(step):
            raise ValueError(f"bad step name {step!r}")
        self.donors.mkdir(parents=True, exist_ok=True)
        tmp = self.donors / f".{step}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(chain.hex + "\n")
        os.replace(tmp, self.donors / step)

    def sweep_donors(self, alive: Callable[[str], bool]) -> None:
        """Drop the hints whose snapshot is gone (``alive(chain hex)`` is False)."""
        if not self.donors.is_dir():
            return
        for p in self.donors.iterdir():
            h = self.donor(p.name)
            if h is None or not alive(h):
                p.unlink(missing_ok=True)

    def keys(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return [p.stem for p in self.dir.glob("*.json") if _KEY.match(p.stem)]

    def kept_keys(self, tagged: set[Digest]) -> set[str]:
        """Keys linked to any of the ``tagged`` manifest digests."""
        return self._linked(tagged, "keys")

    def sweep(self, tagged: set[Digest], dry_run: bool = False) -> tuple[list[Descriptor], int]:
        """Drop records and links not kept by ``tagged``; returns the kept records' layers (GC
        roots) and the number of records removed."""
        kept = self.kept_keys(tagged)
        roots: list[Descriptor] = []
        removed = 0
        for k in self.keys():
            if k in kept:
                rec = self.get(k)
                if rec and rec.layer:
                    roots.append(rec.layer)
                continue
            removed += 1
            if not dry_run:
                self._path(k).unlink(missing_ok=True)
        if self.links.is_dir() and not dry_run:
            for p in self.links.glob("*.json"):
                if not any(p.stem == d.hex for d in tagged):
                    p.unlink(missing_ok=True)
        return roots, removed
