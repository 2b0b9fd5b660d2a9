"""Image archives: ``save`` to and ``load`` from oci-archive and docker-archive tars.

oci-archive: a tar of an OCI image layout (``oci-layout``, ``index.json``, ``blobs/…``), with the
familiar name in ``org.opencontainers.image.ref.name`` (what skopeo's ``oci-archive:`` reads).
docker-archive: ``manifest.json`` + config + uncompressed layer tars, as ``docker save`` writes.

Load is two-phase: every member is hashed into an ingest; only when the whole archive is read
and every manifest's references check out are the needed blobs committed and the tags set.
A bad archive therefore leaves the store exactly as it was.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from pybuild.errors import DigestMismatch, InvalidArchive, InvalidReference, NotFound, UserError
from pybuild.oci import (ANNOTATION_REF_NAME, Descriptor, Digest, ImageConfig, Index, Manifest,
                         MediaType, canonical_json)
from pybuild.reference import parse_reference

from .content import Ingest
from .fsutil import atomic_output
from .layers import open_decompressed
from .store import Store

__all__ = ["save", "load", "LoadResult"]

_BLOB_NAME = re.compile(r"^(?:\./)?blobs/(sha256|sha512)/([a-f0-9]+)$")
_CONTAINERD_NAME = "io.containerd.image.name"


# -- save ----------------------------------------------------------------------------------------

def _tarinfo(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if directory:
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755
    else:
        ti.mode = 0o644
    return ti


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    tf.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


#: ``progress(action, digest, size, done)``: ``saving`` (``done`` bytes of ``size`` read so far),
#: then ``saved``; for a docker-archive layer ``size`` is the compressed blob's.
SaveProgress = Callable[[str, Digest, int, int], None]


class _ProgressReader:
    """Passes reads through, reporting the bytes read (at most once per MiB)."""

    def __init__(self, f: Any, desc: Descriptor, progress: SaveProgress) -> None:
        self._f, self._desc, self._progress = f, desc, progress
        self._done = self._shown = 0
        progress("saving", desc.digest, desc.size, 0)

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._done += len(data)
        if self._done - self._shown >= 1 << 20:
            self._shown = self._done
            self._progress("saving", self._desc.digest, self._desc.size, self._done)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _add_blob(tf: tarfile.TarFile, store: Store, name: str, desc: Descriptor,
              progress: SaveProgress | None = None) -> None:
    reader = store.content.open_blob(desc.digest, desc.size)
    with reader:
        src = _ProgressReader(reader, desc, progress) if progress else reader
        tf.addfile(_tarinfo(name, desc.size), src)  # type: ignore[arg-type]
        reader.finish()
    if progress:
        progress("saved", desc.digest, desc.size, desc.size)


def _closure(store: Store, desc: Descriptor, out: dict[Digest, Descriptor]) -> None:
    """Every blob ``desc`` references (children of indexes, configs and layers)."""
    out[desc.digest] = desc
    data = store.content.read_blob(desc.digest, desc.size)
    mt = desc.media_type or json.loads(data).get("mediaType", "")
    if mt in MediaType.INDEXES:
        for child in Index.from_json(data, mt).manifests:
            if store.content.has(child.digest):
                _closure(store, child, out)
    else:
        m = Manifest.from_json(data, mt)
        out[m.config.digest] = m.config
        for layer in m.layers:
            out[layer.digest] = layer


def save(store: Store, names: list[str], out_path: str | os.PathLike[str],
         fmt: str = "oci-archive", progress: SaveProgress | None = None) -> list[str]:
    """Write the named images to ``out_path`` as ``oci-archive`` or ``docker-archive``.

    ``progress`` (optional) hears about every blob written (see :data:`SaveProgress`).
    The file appears only when complete. Returns the names saved. Raises NotFound,
    DigestMismatch (a corrupt blob), UserError (bad format or unwritable path).
    """
    if fmt not in ("oci-archive", "docker-archive"):
        raise UserError(f"unknown archive format {fmt!r}", hint="use oci-archive or docker-archive")
    resolved: list[tuple[str, Descriptor]] = []
    for n in names:
        tags, desc = store.resolve(n)
        ref = parse_reference(n) if not n.startswith("sha256:") else None
        shown = ref.familiar if ref is not None and ref.familiar in tags else n
        resolved.append((shown, desc))
    out = Path(out_path)
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: {out.parent} is not a directory")
    try:
        with atomic_output(out) as f:
            if fmt == "oci-archive":
                _save_oci(store, resolved, f, progress)
            else:
                _save_docker(store, resolved, f, progress)
    except PermissionError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    return [n for n, _ in resolved]


def _save_oci(store: Store, images: list[tuple[str, Descriptor]], f: BinaryIO,
              progress: SaveProgress | None = None) -> None:
    blobs: dict[Digest, Descriptor] = {}
    manifests = []
    for name, desc in images:
        _closure(store, desc, blobs)
        ann = {k: v for k, v in desc.annotations.items() if k != ANNOTATION_REF_NAME}
        if not name.startswith("sha256:") and not re.match(r"^[a-f0-9]{4,64}$", name):
            ann[ANNOTATION_REF_NAME] = name
        manifests.append(desc.with_annotations(ann).to_dict())
    index = canonical_json({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": manifests})
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tf, "index.json", index)
        tf.addfile(_tarinfo("blobs", directory=True))
        for alg in sorted({d.algorithm for d in blobs}):
            tf.addfile(_tarinfo(f"blobs/{alg}", directory=True))
        for dig in sorted(blobs):
            _add_blob(tf, store, f"blobs/{dig.algorithm}/{dig.hex}", blobs[dig], progress)


def _save_docker(store: Store, images: list[tuple[str, Descriptor]], f: BinaryIO,
                 progress: SaveProgress | None = None) -> None:
    entries = []
    written: set[str] = set()
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for name, desc in images:
            img = store.load(desc)
            cfg_name = f"{img.id.hex}.json"
            if cfg_name not in written:
                _add_bytes(tf, cfg_name, img.config_bytes)
                written.add(cfg_name)
            layer_names = []
            if len(img.manifest.layers) != len(img.config.diff_ids):
                raise InvalidArchive(f"image {name}: {len(img.manifest.layers)} layers but "
                                     f"{len(img.config.diff_ids)} diff_ids in its config")
            for layer, diff_id in zip(img.manifest.layers, img.config.diff_ids):
                lname = f"{diff_id.hex}/layer.tar"
                layer_names.append(lname)
                if lname not in written:
                    _add_uncompressed_layer(tf, store, lname, layer, diff_id, progress)
                    written.add(lname)
            tags = [] if re.match(r"^(sha256:)?[a-f0-9]{4,64}$", name) else [name]
            entries.append({"Config": cfg_name, "RepoTags": tags, "Layers": layer_names})
        _add_bytes(tf, "manifest.json", json.dumps(entries).encode())


def _add_uncompressed_layer(tf: tarfile.TarFile, store: Store, name: str, layer: Descriptor,
                            diff_id: Digest, progress: SaveProgress | None = None) -> None:
    """Decompress a layer into a temp file (verifying blob digest and diff_id), then add it."""
    with tempfile.TemporaryFile(dir=store.content.ingest_dir) as tmp:
        reader = store.content.open_blob(layer.digest, layer.size)
        with reader:
            counted = _ProgressReader(reader, layer, progress) if progress else reader
            src = open_decompressed(counted, layer.media_type)  # type: ignore[arg-type]
            h = hashlib.sha256()
            while chunk := src.read(1 << 20):
                h.update(chunk)
                tmp.write(chunk)
            reader.finish()
        if h.hexdigest() != diff_id.hex:
            raise DigestMismatch(f"layer {layer.digest} uncompresses to sha256:{h.hexdigest()}, "
                                 f"but the config says {diff_id}", expected=str(diff_id))
        size = tmp.tell()
        tmp.seek(0)
        tf.addfile(_tarinfo(name, size), tmp)
    if progress:
        progress("saved", layer.digest, layer.size, layer.size)


# -- load ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadResult:
    """One image loaded: its tag (None when untagged) and manifest descriptor."""

    name: str | None
    descriptor: Descriptor
    image_id: Digest


def _open_archive(path: Path) -> tarfile.TarFile:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file", hint="check the path given to -i") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not an archive") from None
    try:
        return tarfile.open(fileobj=open_decompressed(f), mode="r|")  # type: ignore[arg-type]
    except tarfile.TarError:
        f.close()
        raise InvalidArchive(f"{path}: not a tar archive",
                             hint="load takes an archive written by `pybuild save`, `docker save` or skopeo") from None


def _normalise_tag(name: str) -> str | None:
    try:
        ref = parse_reference(name)
    except InvalidReference:
        return None
    return ref.familiar if ref.digest is None else None


def load(store: Store, path: str | os.PathLike[str]) -> list[LoadResult]:
    """Load every image in an oci-archive or docker-archive into the store.

    Nothing is committed unless the whole archive verifies. Raises NotFound, InvalidArchive,
    DigestMismatch.
    """
    p = Path(path)
    pending: dict[str, Ingest] = {}
    with store.lease():
        tf = _open_archive(p)
        try:
            try:
                for m in tf:
                    if not m.isfile():
                        continue
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    src = tf.extractfile(m)
                    ing = store.content.ingest()
                    pending[name] = ing
                    if src is not None:
                        ing.copy_from(src)  # type: ignore[arg-type]
                    ing.close_file()
            except (tarfile.TarError, EOFError, OSError) as e:
                raise InvalidArchive(f"{p}: archive is truncated or corrupt: {e}") from None
            finally:
                tf.close()
            if "index.json" in pending:
                results, needed = _plan_oci(store, p, pending)
            elif "manifest.json" in pending:
                results, needed = _plan_docker(store, p, pending)
            else:
                raise InvalidArchive(f"{p}: neither an OCI archive (index.json) nor a docker archive "
                                     "(manifest.json)")
            for key in needed:
                pending.pop(key).commit()
            for r in results:
                if r.name:
                    store.tags.set(r.name, r.descriptor)
                else:
                    store.tags.add_untagged(r.descriptor)
            return results
        finally:
            for ing in pending.values():
                ing.abort()


def _read_pending(store: Store, ing: Ingest, what: str) -> bytes:
    """The bytes of a finished (closed) ingest; for small JSON members only."""
    with open(ing.path, "rb") as f:
        data = f.read(64 << 20 + 1)
    if len(data) > 64 << 20:
        raise InvalidArchive(f"{what} is too large")
    return data


def _plan_oci(store: Store, p: Path, pending: dict[str, Ingest]) -> tuple[list[LoadResult], list[str]]:
    blobs: dict[Digest, str] = {}
    for name, ing in pending.items():
        m = _BLOB_NAME.match(name)
        if m:
            d = Digest.parse(f"{m.group(1)}:{m.group(2)}")
            if d.algorithm == "sha256" and ing.digest != d:
                raise DigestMismatch(f"{p}: {name} hashes to {ing.digest}", expected=str(d),
                                     actual=str(ing.digest))
            blobs[d] = name
    index = Index.from_json(_read_pending(store, pending["index.json"], "index.json"))
    needed: set[str] = set()

    def blob_bytes(desc: Descriptor) -> bytes:
        if desc.digest in blobs:
            ing = pending[blobs[desc.digest]]
            if ing.size != desc.size:
                raise DigestMismatch(f"{p}: blob {desc.digest} is {ing.size} bytes, descriptor says {desc.size}")
            needed.add(blobs[desc.digest])
            return _read_pending(store, ing, str(desc.digest))
        if store.content.has(desc.digest):
            return store.content.read_blob(desc.digest, desc.size)
        raise InvalidArchive(f"{p}: blob {desc.digest} is referenced but missing from the archive")

    def require(desc: Descriptor) -> None:
        if desc.digest in blobs:
            if pending[blobs[desc.digest]].size != desc.size:
                raise DigestMismatch(f"{p}: blob {desc.digest} has the wrong size")
            needed.add(blobs[desc.digest])
        elif not store.content.has(desc.digest):
            raise InvalidArchive(f"{p}: blob {desc.digest} is referenced but missing from the archive")

    def walk(desc: Descriptor) -> Digest:
        data = blob_bytes(desc)
        mt = desc.media_type or json.loads(data).get("mediaType", "")
        if mt in MediaType.INDEXES:
            ids = [walk(c) for c in Index.from_json(data, mt).manifests]
            return ids[0] if ids else desc.digest
        man = Manifest.from_json(data, mt)
        cfg = ImageConfig.from_json(blob_bytes(man.config))
        if len(cfg.diff_ids) != len(man.layers):
            raise InvalidArchive(f"{p}: image {desc.digest} has {len(man.layers)} layers but "
                                 f"{len(cfg.diff_ids)} diff_ids")
        for layer in man.layers:
            require(layer)
        return man.config.digest

    results = []
    for desc in index.manifests:
        image_id = walk(desc)
        raw = desc.annotations.get(_CONTAINERD_NAME) or desc.annotations.get(ANNOTATION_REF_NAME)
        name = _normalise_tag(raw) if raw else None
        results.append(LoadResult(name, desc.with_annotations(
            {k: v for k, v in desc.annotations.items() if k not in (ANNOTATION_REF_NAME, _CONTAINERD_NAME)}),
            image_id))
    if not results:
        raise InvalidArchive(f"{p}: index.json lists no images")
    return results, sorted(needed)


def _plan_docker(store: Store, p: Path, pending: dict[str, Ingest]) -> tuple[list[LoadResult], list[str]]:
    try:
        entries = json.loads(_read_pending(store, pending["manifest.json"], "manifest.json"))
        assert isinstance(entries, list)
    except (ValueError, AssertionError):
        raise InvalidArchive(f"{p}: manifest.json is not a JSON list") from None
    results: list[LoadResult] = []
    needed: set[str] = set()
    for i, e in enumerate(entries):
        try:
            cfg_name, layer_names, tags = e["Config"], list(e["Layers"]), list(e.get("RepoTags") or [])
        except (KeyError, TypeError):
            raise InvalidArchive(f"{p}: manifest.json entry {i} lacks Config or Layers") from None
        if cfg_name not in pending:
            raise InvalidArchive(f"{p}: config {cfg_name} is missing from the archive")
        cing = pending[cfg_name]
        cbytes = _read_pending(store, cing, cfg_name)
        cfg = ImageConfig.from_json(cbytes)
        if len(cfg.diff_ids) != len(layer_names):
            raise InvalidArchive(f"{p}: {cfg_name} has {len(cfg.diff_ids)} diff_ids for "
                                 f"{len(layer_names)} layers")
        needed.add(cfg_name)
        layers = []
        for lname, diff_id in zip(layer_names, cfg.diff_ids):
            if lname not in pending:
                raise InvalidArchive(f"{p}: layer {lname} is missing from the archive")
            ing = pending[lname]
            layers.append(Descriptor(_docker_layer_type(store, p, lname, ing, diff_id), ing.digest, ing.size))
            needed.add(lname)
        man = Manifest(config=Descriptor(MediaType.OCI_CONFIG, cing.digest, cing.size), layers=tuple(layers))
        mbytes = man.to_json()
        mdig = store.content.write_blob(mbytes)
        desc = Descriptor(MediaType.OCI_MANIFEST, mdig, len(mbytes))
        names = [n for n in (_normalise_tag(t) for t in tags) if n]
        for n in names or [None]:
            results.append(LoadResult(n, desc, cing.digest))
    return results, sorted(needed)


def _docker_layer_type(store: Store, p: Path, lname: str, ing: Ingest, diff_id: Digest) -> str:
    """The media type of a docker-archive layer, after checking it against its diff_id."""
    if ing.digest == diff_id:
        return MediaType.OCI_LAYER
    with open(ing.path, "rb") as f:
        src = open_decompressed(f)
        if src is f:
            raise DigestMismatch(f"{p}: layer {lname} hashes to {ing.digest}, config says {diff_id}",
                                 expected=str(diff_id), actual=str(ing.digest))
        h = hashlib.sha256()
        try:
            while chunk := src.read(1 << 20):
                h.update(chunk)
        except Exception as e:
            raise InvalidArchive(f"{p}: layer {lname} is corrupt: {e}") from None
    if h.hexdigest() != diff_id.hex:
        raise DigestMismatch(f"{p}: layer {lname} uncompresses to sha256:{h.hexdigest()}, config says {diff_id}",
                             expected=str(diff_id))
    head = open(ing.path, "rb").read(4)
    return MediaType.OCI_LAYER_ZSTD if head == b"\x28\xb5\x2f\xfd" else MediaType.OCI_LAYER_GZIP

