"""The store root: an OCI image layout (readable by skopeo and umoci) plus private folders.

::

    ROOT/oci-layout, ROOT/index.json, ROOT/blobs/sha256/…   the OCI layout (tags = ref names)
    ROOT/ingest/        blobs being written (temp files; swept by GC when their writer died)
    ROOT/snapshots/     extracted layers by chain id (RUN steps)
    ROOT/metadata/      locks, caches

Concurrency: index.json updates take ``metadata/index.lock``; every operation that writes blobs
before referencing them holds a *lease* (a shared lock on ``metadata/gc.lock``), and garbage
collection takes that lock exclusively, so it never sweeps a blob a live operation still needs.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pybuild.errors import InvalidReference, NotFound, StoreError
from pybuild.oci import (Descriptor, Digest, ImageConfig, Index, Manifest, MediaType, Platform,
                         canonical_json)
from pybuild.reference import parse_reference
from pybuild.storeroot import default_store_root

from .cache import BuildCache
from .content import ContentStore
from .fsutil import atomic_write
from .images import TagEntry, TagIndex
from .lock import file_lock
from .snapshots import Snapshots

__all__ = ["Store", "Image", "default_root"]

_OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
_HEX_PREFIX = re.compile(r"^(sha256:)?[a-f0-9]{4,64}$")


def default_root() -> Path:
    """``$PYBUILD_ROOT``, else /var/lib/pybuild for root, else ``$XDG_DATA_HOME/pybuild``."""
    return Path(default_store_root())


@dataclass(frozen=True)
class Image:
    """A resolved single-platform image: the manifest and config with their exact bytes."""

    descriptor: Descriptor          # of the manifest
    manifest: Manifest
    manifest_bytes: bytes
    config: ImageConfig
    config_bytes: bytes

    @property
    def id(self) -> Digest:
        """The image id, as docker defines it: the config digest."""
        return self.manifest.config.digest

    @property
    def size(self) -> int:
        """Bytes stored for this image: config plus compressed layers."""
        return self.manifest.config.size + sum(x.size for x in self.manifest.layers)


class Store:
    """Facade over one store root. The constructor does no I/O; call ``init()`` before writing."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.content = ContentStore(self.root)
        self.metadata_dir = self.root / "metadata"
        self.snapshots_dir = self.root / "snapshots"
        self.tags = TagIndex(self.root, self.metadata_dir / "index.lock")
        self.snapshots = Snapshots(self.snapshots_dir, self.content)
        self.cache = BuildCache(self.metadata_dir / "cache")

    # -- layout ------------------------------------------------------------------------------
    def init(self) -> None:
        """Create the layout if missing (idempotent). Raises StoreError when root is unusable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.content.ensure()
            self.metadata_dir.mkdir(exist_ok=True)
            self.snapshots_dir.mkdir(exist_ok=True)
            layout = self.root / "oci-layout"
            if not layout.exists():
                atomic_write(layout, _OCI_LAYOUT)
            index = self.root / "index.json"
            if not index.exists():
                with file_lock(self.metadata_dir / "index.lock"):
                    if not index.exists():
                        atomic_write(index, canonical_json({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX,
                                                            "manifests": []}))
        except OSError as e:
            raise StoreError(f"cannot initialise store at {self.root}: {e.strerror or e}",
                             hint="pass a writable --root or set PYBUILD_ROOT") from None

    def exists(self) -> bool:
        return (self.root / "oci-layout").is_file()

    # -- leases --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Protect blobs written inside the ``with`` body from garbage collection."""
        self.init()
        with file_lock(self.metadata_dir / "gc.lock", shared=True):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Wait for every lease to end and block new ones (used by garbage collection)."""
        self.init()
        with file_lock(self.metadata_dir / "gc.lock"):
            yield

    # -- reading images ------------------------------------------------------------------------
    def read_manifest(self, desc: Descriptor, platform: Platform | None = None) -> tuple[Descriptor, bytes]:
        """Follow ``desc`` (through an index, choosing ``platform``) to an image manifest.

        Returns the manifest's descriptor and exact bytes. Raises NotFound, DigestMismatch.
        """
        data = self.content.read_blob(desc.digest, desc.size)
        mt = desc.media_type or json.loads(data).get("mediaType", "")
        if mt in MediaType.INDEXES:
            want = platform or Platform.host()
            child = Index.from_json(data, mt).select(want)
            if child is None:
                raise NotFound(f"image {desc.digest} has no manifest for platform {want}")
            return self.read_manifest(child, platform)
        return desc, data

    def load(self, desc: Descriptor, platform: Platform | None = None) -> Image:
        """Load the image a tag descriptor points at. Raises NotFound, DigestMismatch, InvalidArchive."""
        mdesc, mbytes = self.read_manifest(desc, platform)
        manifest = Manifest.from_json(mbytes, mdesc.media_type)
        cbytes = self.content.read_blob(manifest.config.digest, manifest.config.size)
        return Image(mdesc, manifest, mbytes, ImageConfig.from_json(cbytes), cbytes)

    def entries(self) -> list[TagEntry]:
        return self.tags.read()

    def resolve(self, name: str) -> tuple[list[str], Descriptor]:
        """Find an image by tag (``busybox``, ``busybox:latest``, ``host:5000/a:b``) or by id prefix.

        Returns the names that point at it and its descriptor. Raises NotFound or
        InvalidReference (with hints).
        """
        entries = self.tags.read()
        ref = None
        try:
            ref = parse_reference(name)
        except InvalidReference:
            if not _HEX_PREFIX.match(name):
                raise
        if ref is not None:
            for e in entries:
                if e.name == ref.familiar:
                    return [x.name for x in entries if x.name and x.descriptor.digest == e.descriptor.digest], e.descriptor
        if _HEX_PREFIX.match(name):
            hexpart = name.split(":", 1)[-1]
            matches: dict[str, Descriptor] = {}
            for e in entries:
                ids = {e.descriptor.digest.hex}
                try:
                    ids.add(self.load(e.descriptor).id.hex)
                except Exception:
                    pass
                if any(i.startswith(hexpart) for i in ids):
                    matches[str(e.descriptor.digest)] = e.descriptor
            if len(matches) == 1:
                desc = next(iter(matches.values()))
                return [x.name for x in entries if x.name and x.descriptor.digest == desc.digest], desc
            if len(matches) > 1:
                raise NotFound(f"image id prefix {name!r} is ambiguous ({len(matches)} images)",
                               hint="give more digits of the id")
        raise NotFound(f"image {name!r} is not in the store {self.root}",
                       hint="see `pybuild images`; import, load, pull or build it first")

    # -- writing images ------------------------------------------------------------------------
    def write_image(self, config: ImageConfig, layers: list[Descriptor],
                    annotations: dict[str, str] | None = None) -> Descriptor:
        """Write the config and an OCI manifest over existing layer blobs; returns the manifest's
        descriptor. Call inside a lease; the layers must already be in the store.
        """
        for layer in layers:
            if not self.content.has(layer.digest):
                raise NotFound(f"layer {layer.digest} is not in the store")
        cbytes = config.to_json()
        cdig = self.content.write_blob(cbytes)
        manifest = Manifest(config=Descriptor(MediaType.OCI_CONFIG, cdig, len(cbytes)),
                            layers=tuple(layers), annotations=annotations or {})
        mbytes = manifest.to_json()
        mdig = self.content.write_blob(mbytes)
        return Descriptor(MediaType.OCI_MANIFEST, mdig, len(mbytes))

    def tag(self, name: str, desc: Descriptor) -> str:
        """Point the tag for reference ``name`` at ``desc``; returns the stored (familiar) name."""
        ref = parse_reference(name)
        if ref.digest is not None:
            raise InvalidReference(f"cannot tag with a digest reference: {name!r}",
                                   hint="use name:tag")
        self.tags.set(ref.familiar, desc)
        return ref.familiar

    def check_exists(self) -> None:
        """Raise NotFound when the store root has not been created yet."""
        if not self.exists():
            raise StoreError(f"no store at {self.root}",
                             hint="it is created by the first import, load, pull or build")
