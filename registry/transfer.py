"""Pull and push between the store and a registry, and ``login``.

``pull`` fetches a manifest (by tag or digest); for an index or manifest list it picks the
platform's image manifest. It stores and tags **the platform's image manifest** (not the index):
the store's tags then point at a single-platform image, so ``store.load(desc)`` works for any
platform, and a later ``push`` sends exactly that image. Config and layers are fetched in
parallel (4 workers) into store ingests, each verified (digest and size), and only when every
one of them arrived intact are they committed, the manifest written and the tag set, all inside a
store lease. A failed pull therefore leaves the store as it was.

``push`` sends layers in parallel (a HEAD first: blobs the registry has are skipped; blobs that
this store pulled from or pushed to another repository of the same registry are cross-repo
mounted; the rest are uploaded), then the config, then the manifest with its exact stored bytes.
A tag that points at an index whose children are all in the store is pushed whole (children
first, the index last).

Where blobs came from is recorded in ``metadata/registry-sources.json`` (digest → list of
``host/repo``, newest last, at most 8), written atomically under a lock.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from pybuild.errors import InvalidReference, NotFound, UserError
from pybuild.oci import Descriptor, Digest, Index, Manifest, MediaType, Platform
from pybuild.reference import Reference, parse_reference
from pybuild.store.content import Ingest
from pybuild.store.fsutil import atomic_write
from pybuild.store.lock import file_lock
from pybuild.store.store import Store

from .auth import Credentials, save_login
from .client import Progress, ProgressEvent, RegistryClient
from .errors import RegistryError

__all__ = ["pull", "push", "login", "SourceRecord", "WORKERS"]

WORKERS = 4
_SOURCES_PER_BLOB = 8


class SourceRecord:
    """``metadata/registry-sources.json``: which ``host/repo`` each blob is known to live in.

    Used to pick a cross-repo mount source. Read without a lock (the file is replaced
    atomically); updated under ``metadata/registry-sources.lock``.
    """

    def __init__(self, store: Store) -> None:
        self.path = store.metadata_dir / "registry-sources.json"
        self.lock_path = store.metadata_dir / "registry-sources.lock"

    def read(self) -> dict[str, list[str]]:
        try:
            obj = json.loads(self.path.read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return {k: [str(x) for x in v] for k, v in obj.items() if isinstance(v, list)} \
            if isinstance(obj, dict) else {}

    def sources(self, digest: Digest) -> list[str]:
        """Every ``host/repo`` recorded for ``digest``, newest first."""
        return list(reversed(self.read().get(str(digest), [])))

    def add(self, pairs: Iterable[tuple[Digest, str]]) -> None:
        """Record that each ``(digest, "host/repo")`` exists there."""
        pairs = list(pairs)
        if not pairs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_path):
            data = self.read()
            for digest, where in pairs:
                entries = [x for x in data.get(str(digest), []) if x != where] + [where]
                data[str(digest)] = entries[-_SOURCES_PER_BLOB:]
            atomic_write(self.path, json.dumps(data, sort_keys=True, separators=(",", ":")).encode())


def _unique(descs: Iterable[Descriptor]) -> list[Descriptor]:
    seen: set[Digest] = set()
    out = []
    for d in descs:
        if d.digest not in seen:
            seen.add(d.digest)
            out.append(d)
    return out


def _emit(progress: Progress | None, action: str, desc: Descriptor) -> None:
    if progress is not None:
        progress(ProgressEvent(action, desc.digest, desc.size, desc.size))


# -- pull --------------------------------------------------------------------------------------
def _resolve_platform(client: RegistryClient, ref: Reference, desc: Descriptor, data: bytes,
                      platform: Platform | None) -> tuple[Descriptor, bytes]:
    """Follow an index to the image manifest for ``platform`` (the host's by default)."""
    if desc.media_type not in MediaType.INDEXES:
        return desc, data
    index = Index.from_json(data, desc.media_type)
    want = platform or Platform.host()
    child = index.select(want)
    if child is None:
        have = ", ".join(sorted({str(m.platform) for m in index.manifests if m.platform})) or "none"
        raise NotFound(f"{ref} has no image for platform {want} (it has: {have})",
                       hint="pass another platform, or pull an image built for this machine")
    cdesc, cdata = client.get_manifest(ref.path, str(child.digest))   # verified against the digest
    if cdesc.media_type in MediaType.INDEXES:
        raise UserError(f"{ref}: nested indexes are not supported ({child.digest})")
    if len(cdata) != child.size:
        raise RegistryError(f"pulling {ref}: manifest {child.digest} is {len(cdata)} bytes, "
                            f"the index says {child.size}")
    return Descriptor(child.media_type or cdesc.media_type, child.digest, child.size), cdata


def _fetch_all(store: Store, client: RegistryClient, repo: str, blobs: list[Descriptor],
               progress: Progress | None) -> list[tuple[Ingest, Descriptor]]:
    """Download ``blobs`` in parallel into verified, uncommitted ingests.

    On any failure every ingest is discarded and the first error is raised.
    """
    done: list[tuple[Ingest, Descriptor]] = []

    def fetch(d: Descriptor) -> tuple[Ingest, Descriptor]:
        ing = store.content.ingest()
        try:
            client.fetch_blob(repo, d, ing, progress)
            ing.close_file()
        except BaseException:
            ing.abort()
            raise
        return ing, d

    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="pybuild-pull") as pool:
        futures: list[Future[tuple[Ingest, Descriptor]]] = [pool.submit(fetch, d) for d in blobs]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            wait(futures)
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is None:
                done.append(f.result())
    if failed:
        for ing, _ in done:
            ing.abort()
        raise failed[0].exception()  # type: ignore[misc]
    return done


def pull(store: Store, ref_text: str, platform: Platform | None = None,
         progress: Progress | None = None, *, client: RegistryClient | None = None) -> tuple[str, Descriptor]:
    """Pull ``ref_text`` (``host/repo:tag`` or ``…@sha256:…``) into ``store``.

    Returns the stored name (``host/repo:tag``, or ``host/repo@sha256:…`` for a pull by digest)
    and the descriptor of the image manifest it points at. Blobs already in the store are not
    fetched. Raises InvalidReference, NotFound (no image for the platform), DigestMismatch (the
    store is then unchanged), RegistryError subclasses.
    """
    ref = parse_reference(ref_text)
    client = client or RegistryClient(ref.domain)
    repo = ref.path
    desc, data = client.get_manifest(repo, str(ref.digest) if ref.digest else ref.tag)
    desc, data = _resolve_platform(client, ref, desc, data, platform)
    manifest = Manifest.from_json(data, desc.media_type)
    blobs = _unique([manifest.config, *manifest.layers])
    with store.lease():
        missing = []
        for b in blobs:
            if store.content.has(b.digest):
                _emit(progress, "exists", b)
            else:
                missing.append(b)
        ingests = _fetch_all(store, client, repo, missing, progress)
        for ing, d in ingests:
            ing.commit(d.digest, d.size)
        store.content.write_blob(data, desc.digest)
        if ref.digest is not None:
            name = Reference(ref.domain, ref.path, "", ref.digest).familiar
            store.tags.set(name, desc)
        else:
            name = store.tag(str(ref), desc)
    SourceRecord(store).add((b.digest, client.where(repo)) for b in blobs)
    return name, desc


# -- push --------------------------------------------------------------------------------------
def _opener(store: Store, desc: Descriptor) -> Callable[[], BinaryIO]:
    path = store.content.blob_path(desc.digest)

    def open_blob() -> BinaryIO:
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {desc.digest} is not in the store {store.root}",
                           hint="the image is incomplete; pull or build it again") from None
    return open_blob


class _Pusher:
    """Pushes one store's blobs and manifests to one repository."""

    def __init__(self, store: Store, client: RegistryClient, repo: str, progress: Progress | None) -> None:
        self.store = store
        self.client = client
        self.repo = repo
        self.progress = progress
        self.where = client.where(repo)
        self.sources = SourceRecord(store)
        self.pushed: list[tuple[Digest, str]] = []
        self.actions: dict[Digest, str] = {}     # digest → exists | mounted | uploaded

    def blob(self, desc: Descriptor) -> str:
        """Make sure ``desc`` is in the repository; returns what it took."""
        if self.client.blob_exists(self.repo, desc.digest) is not None:
            action = "exists"
        else:
            action = self._mount_or_upload(desc)
        _emit(self.progress, action, desc)
        self.actions[desc.digest] = action
        self.pushed.append((desc.digest, self.where))
        return action

    def _mount_or_upload(self, desc: Descriptor) -> str:
        location = None
        prefix = f"{self.client.registry}/"
        for src in self.sources.sources(desc.digest):
            if not src.startswith(prefix) or src == self.where:
                continue
            try:
                location = self.client.mount_blob(self.repo, desc.digest, src[len(prefix):])
            except RegistryError:
                continue             # no access to the source: try the next, or upload
            if location is None:
                return "mounted"
            break
        if not self.store.content.has(desc.digest):
            raise NotFound(f"pushing {self.where}: blob {desc.digest} is not in the store {self.store.root}",
                           hint="the image is incomplete; pull or build it again")
        self.client.upload_blob(self.repo, desc, _opener(self.store, desc), location=location,
                                progress=self.progress)
        return "uploaded"

    def blobs(self, descs: list[Descriptor]) -> None:
        """Push ``descs`` in parallel; raises the first failure."""
        if not descs:
            return
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="pybuild-push") as pool:
            futures = [pool.submit(self.blob, d) for d in descs]
            wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and f.exception() is not None:
                    for g in futures:
                        g.cancel()
                    raise f.exception()  # type: ignore[misc]
            for f in futures:
                f.result()

    def image(self, mbytes: bytes, media_type: str, reference: str) -> Digest:
        """Push one image manifest's layers, then its config, then the manifest itself."""
        manifest = Manifest.from_json(mbytes, media_type)
        layers = [d for d in _unique(manifest.layers)
                  if not (d.urls and not self.store.content.has(d.digest))]   # foreign layers stay
        self.blobs([d for d in layers if d.digest != manifest.config.digest])
        self.blob(manifest.config)
        return self.client.put_manifest(self.repo, reference, mbytes, media_type or manifest.media_type)


def _index_children(store: Store, desc: Descriptor) -> list[tuple[Descriptor, bytes]] | None:
    """The child manifests of index ``desc`` when every one is in the store, else None."""
    data = store.content.read_blob(desc.digest, desc.size)
    children = []
    for child in Index.from_json(data, desc.media_type).manifests:
        if child.media_type not in MediaType.MANIFESTS or not store.content.has(child.digest):
            return None
        children.append((child, store.content.read_blob(child.digest, child.size)))
    return children


def push(store: Store, image_name: str, ref_text: str | None = None, progress: Progress | None = None,
         *, client: RegistryClient | None = None) -> Digest:
    """Push the stored image ``image_name`` to ``ref_text`` (default: its own name).

    Returns the digest of the manifest (or index) pushed, as the registry confirmed it.
    Raises NotFound (no such image, or a blob missing from the store), InvalidReference,
    DigestMismatch (a corrupt local blob), RegistryError subclasses.
    """
    names, desc = store.resolve(image_name)
    try:
        target = parse_reference(ref_text or image_name)
    except InvalidReference:
        raise InvalidReference(f"cannot push {image_name!r}: it is not a name",
                               hint="give the destination: pybuild push IMAGE HOST/REPO:TAG") from None
    client = client or RegistryClient(target.domain)
    pusher = _Pusher(store, client, target.path, progress)
    reference = str(target.digest) if target.digest else target.tag
    with store.lease():
        if desc.media_type in MediaType.INDEXES:
            children = _index_children(store, desc)
            if children is not None:
                for child, cbytes in children:
                    pusher.image(cbytes, child.media_type, str(child.digest))
                data = store.content.read_blob(desc.digest, desc.size)
                digest = client.put_manifest(target.path, reference, data, desc.media_type)
                SourceRecord(store).add(pusher.pushed)
                return digest
        image = store.load(desc)
        mt = image.descriptor.media_type or image.manifest.media_type
        if target.digest is not None and target.digest != image.descriptor.digest:
            raise UserError(f"cannot push {image_name} as {target}: its manifest is {image.descriptor.digest}",
                            hint="push by tag, or give the image's own digest")
        digest = pusher.image(image.manifest_bytes, mt, reference)
    SourceRecord(store).add(pusher.pushed)
    return digest


# -- login -------------------------------------------------------------------------------------
def login(registry: str, user: str, password: str, *, env: dict[str, str] | None = None,
          client: RegistryClient | None = None) -> Path:
    """Check ``user``/``password`` against ``registry``'s ``/v2/`` and save them in docker's
    config.json (``auths``, mode 0600). Returns the config path.

    Raises RegistryAuthError (wrong credentials, with a hint), RegistryUnavailable, UserError.
    """
    client = client or RegistryClient(registry, credentials=Credentials(user, password), env=env)
    client.ping()
    return save_login(registry, user, password, env=env if env is not None else os.environ)
