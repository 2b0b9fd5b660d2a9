"""A build cache shared through a registry (``--cache-to`` / ``--cache-from``).

The cache is an OCI artifact at a tag: an image manifest whose ``artifactType`` is
``application/vnd.pybuild.cache.v1``, whose config blob maps step cache keys to the layer each
step made (or to nothing, for metadata steps), and whose layers are those layer blobs. Cache keys
depend only on content (base manifest digest, instruction after expansion, digests of the files
read), never on a machine, so another machine's build computes the same keys and finds them here.
Layers are fetched only when a step actually hits.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from pybuild.errors import InvalidArchive, UserError
from pybuild.oci import Descriptor, Digest, Manifest, MediaType, canonical_json
from pybuild.reference import parse_reference
from pybuild.store.cache import CacheRecord
from pybuild.store.store import Store

from .client import RegistryClient
from .transfer import _Pusher

__all__ = ["CACHE_ARTIFACT", "CACHE_CONFIG", "export_cache", "RemoteCache", "import_cache"]

CACHE_ARTIFACT = "application/vnd.pybuild.cache.v1"
CACHE_CONFIG = "application/vnd.pybuild.cache.config.v1+json"


def export_cache(store: Store, keys: list[str], ref_text: str, *, client: RegistryClient | None = None) -> Digest:
    """Push the local records of ``keys`` (and their layers) as a cache artifact to ``ref_text``.

    Returns the artifact manifest's digest. Raises RegistryError subclasses, NotFound.
    """
    ref = parse_reference(ref_text)
    records = {}
    for k in dict.fromkeys(keys):
        rec = store.cache.get(k)
        if rec is not None:
            records[k] = json.loads(rec.to_json())
    cbytes = canonical_json({"records": records})
    layers: dict[Digest, Descriptor] = {}
    for r in records.values():
        if r.get("layer"):
            d = Descriptor.from_dict(r["layer"])
            layers[d.digest] = d
    with store.lease():
        cdig = store.content.write_blob(cbytes)
        manifest = Manifest(config=Descriptor(CACHE_CONFIG, cdig, len(cbytes)), layers=tuple(layers.values()),
                            artifact_type=CACHE_ARTIFACT)
        mbytes = manifest.to_json()
        store.content.write_blob(mbytes)
        client = client or RegistryClient(ref.domain)
        pusher = _Pusher(store, client, ref.path, None)
        return pusher.image(mbytes, MediaType.OCI_MANIFEST, str(ref.digest) if ref.digest else ref.tag)


@dataclass
class RemoteCache:
    """Cache records read from a registry; layers are fetched into the store on a hit."""

    client: RegistryClient
    repo: str
    records: dict[str, CacheRecord]
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, store: Store, key: str) -> CacheRecord | None:
        """The record for ``key`` with its layer now in ``store`` (fetched and verified), or None."""
        rec = self.records.get(key)
        if rec is None:
            return None
        if rec.layer is not None and not store.content.has(rec.layer.digest):
            with self._lock:
                ing = store.content.ingest()
                try:
                    self.client.fetch_blob(self.repo, rec.layer, ing)
                    ing.commit(rec.layer.digest, rec.layer.size)
                except BaseException:
                    ing.abort()
                    raise
        store.cache.put(key, rec)
        return rec


def import_cache(store: Store, ref_text: str, *, client: RegistryClient | None = None) -> RemoteCache:
    """Read the cache artifact at ``ref_text``. Raises RegistryNotFound, InvalidArchive (not a
    pybuild cache), DigestMismatch."""
    ref = parse_reference(ref_text)
    client = client or RegistryClient(ref.domain)
    desc, mbytes = client.get_manifest(ref.path, str(ref.digest) if ref.digest else ref.tag)
    manifest = Manifest.from_json(mbytes, desc.media_type)
    if manifest.config.media_type != CACHE_CONFIG:
        raise UserError(f"{ref_text} is not a pybuild build cache (config {manifest.config.media_type})",
                        hint="--cache-from takes what --cache-to wrote")
    with store.lease():
        ing = store.content.ingest()
        try:
            client.fetch_blob(ref.path, manifest.config, ing)
            ing.close_file()
            data = ing.path.read_bytes()
        finally:
            ing.abort()
    try:
        raw = json.loads(data)["records"]
        records = {k: CacheRecord.from_json(canonical_json(v)) for k, v in raw.items()}
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidArchive(f"{ref_text}: malformed cache config: {e}") from None
    return RemoteCache(client, ref.path, records)
