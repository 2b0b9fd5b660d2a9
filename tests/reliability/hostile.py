"""Helpers for the hostile-input tests: layer tars, OCI archives built by hand (tarfile +
hashlib, no pybuild code), and a "jail" that proves nothing outside the target roots changed.

Every hostile name carries a per-test token (``PBESC…``) so that an escape anywhere on the host
can be found afterwards by name, even while other test sessions run on the same machine.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


# -- layer tars ------------------------------------------------------------------------------

@dataclass
class M:
    """One tar member: ``kind`` is file, dir, symlink, hardlink, char, block, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    major: int = 0
    minor: int = 0
    size: int | None = None          # for a file whose content comes from ``stream``
    stream: io.RawIOBase | None = None


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def _info(m: M) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(m.name)
    ti.type = _TYPES[m.kind]
    ti.mode = m.mode if m.mode is not None else (0o755 if m.kind == "dir" else 0o644)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0
    if m.kind in ("symlink", "hardlink"):
        ti.linkname = m.link
    if m.kind in ("char", "block"):
        ti.devmajor, ti.devminor = m.major, m.minor
    if m.kind == "file":
        ti.size = m.size if m.size is not None else len(m.data)
    return ti


def write_tar(members: Iterable[M], out: io.RawIOBase | io.BufferedIOBase) -> None:
    """Members exactly in the order given (duplicates, odd names and all), PAX format."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[arg-type]
        for m in members:
            ti = _info(m)
            if m.kind == "file":
                tf.addfile(ti, m.stream if m.stream is not None else io.BytesIO(m.data))
            else:
                tf.addfile(ti)


def tar_bytes(members: Iterable[M]) -> bytes:
    buf = io.BytesIO()
    write_tar(members, buf)
    return buf.getvalue()


def gz(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


class Zeros(io.RawIOBase):
    """``n`` zero bytes, generated on the fly (for bombs without holding them in memory)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b):  # type: ignore[no-untyped-def]
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def gzip_bomb_layer(size: int, name: str = "bomb") -> tuple[bytes, str]:
    """A gzip'd layer tar holding one file of ``size`` zero bytes: (blob, diff_id hex).

    Streams: memory stays small whatever ``size`` is. The ratio is about 1000:1 (deflate's
    ceiling), so 256 MiB of zeros is a ~260 KiB blob."""
    class Tee(io.RawIOBase):
        def __init__(self) -> None:
            self.h = hashlib.sha256()
            self.out = io.BytesIO()
            self.z = gzip.GzipFile(fileobj=self.out, mode="wb", compresslevel=9, mtime=0)

        def writable(self) -> bool:
            return True

        def write(self, b):  # type: ignore[no-untyped-def]
            self.h.update(b)
            self.z.write(b)
            return len(b)

    t = Tee()
    write_tar([M(name, size=size, stream=Zeros(size))], t)  # type: ignore[arg-type]
    t.z.close()
    return t.out.getvalue(), t.h.hexdigest()


# -- OCI archives ----------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Layer:
    """A layer as it goes into an archive. ``tar`` is the uncompressed tar (for the diff_id);
    ``blob`` the bytes stored (defaults to gzip of ``tar``)."""

    tar: bytes
    blob: bytes | None = None
    media_type: str = LAYER_GZIP
    diff_id: str | None = None       # hex; defaults to sha256(tar)

    def blob_bytes(self) -> bytes:
        if self.blob is not None:
            return self.blob
        return gz(self.tar) if self.media_type == LAYER_GZIP else self.tar

    def diff_hex(self) -> str:
        return self.diff_id if self.diff_id is not None else sha(self.tar)


def config_json(diff_ids: list[str], env: list[str] | None = None) -> bytes:
    cfg = {
        "architecture": _goarch(), "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"layer {i}"}
                    for i in range(len(diff_ids))],
    }
    return json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()


def _goarch() -> str:
    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


@dataclass
class Archive:
    """What ``write_oci_archive`` wrote: names for checks."""

    path: Path
    manifest_digest: str
    config_digest: str
    layer_digests: list[str] = field(default_factory=list)


def write_oci_archive(path: Path, layers: list[Layer], name: str | None, *,
                      diff_ids: list[str] | None = None,
                      manifest_layer_digests: list[str] | None = None,
                      blob_names: dict[str, str] | None = None,
                      manifest_layer_sizes: list[int] | None = None,
                      gzip_archive: bool = False) -> Archive:
    """An oci-archive (``oci-layout``, ``index.json``, ``blobs/sha256/…``) of one image.

    Lies on request: ``diff_ids`` replaces the config's diff_ids; ``manifest_layer_digests`` /
    ``manifest_layer_sizes`` replace what the manifest says of the layers; ``blob_names`` maps a
    true digest hex to the name the blob is stored under.
    """
    blobs: dict[str, bytes] = {}
    descs = []
    for i, layer in enumerate(layers):
        b = layer.blob_bytes()
        d = sha(b)
        blobs[d] = b
        descs.append({"mediaType": layer.media_type,
                      "digest": "sha256:" + (manifest_layer_digests[i] if manifest_layer_digests else d),
                      "size": manifest_layer_sizes[i] if manifest_layer_sizes else len(b)})
    cfg = config_json(diff_ids if diff_ids is not None else [x.diff_hex() for x in layers])
    blobs[sha(cfg)] = cfg
    man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + sha(cfg), "size": len(cfg)},
                      "layers": descs}, sort_keys=True, separators=(",", ":")).encode()
    blobs[sha(man)] = man
    mdesc: dict = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + sha(man), "size": len(man)}
    if name:
        mdesc["annotations"] = {REF_NAME: name}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [mdesc]},
                       sort_keys=True, separators=(",", ":")).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(n: str, data: bytes) -> None:
            ti = tarfile.TarInfo(n)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            tf.addfile(ti, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for d, data in blobs.items():
            add(f"blobs/sha256/{(blob_names or {}).get(d, d)}", data)
    data = raw.getvalue()
    path.write_bytes(gz(data) if gzip_archive else data)
    return Archive(path, sha(man), sha(cfg), [sha(x.blob_bytes()) for x in layers])


# -- the jail --------------------------------------------------------------------------------

def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple]:
    """Every entry below ``root`` (not entering ``skip``) with type, mode and content hash."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dp = Path(dirpath)
        dirnames[:] = [d for d in dirnames if dp / d not in skip]
        for n in dirnames + filenames:
            p = dp / n
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_mode, sha(p.read_bytes()) if st.st_size < (64 << 20) else st.st_size)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            else:
                out[rel] = ("other", st.st_mode, st.st_rdev)
    return out


# Directories of the host searched (not recursively below depth 2) for the token after a test.
HOST_DIRS = ("/", "/tmp", "/etc", "/root", "/var/tmp", "/usr", "/dev", "/run")


def _host_hits(token: str, skip: Iterable[Path]) -> list[str]:
    skip = [str(s) for s in skip]
    hits = []
    for top in HOST_DIRS:
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for n in names:
            p = os.path.join(top, n)
            if token in n:
                hits.append(p)
            if os.path.isdir(p) and not os.path.islink(p) and not any(p.startswith(s) for s in skip) \
                    and top in ("/tmp", "/etc", "/root", "/var/tmp", "/run"):
                try:
                    hits += [os.path.join(p, c) for c in os.listdir(p) if token in c]
                except OSError:
                    pass
    return hits


class Jail:
    """A test's world: ``base`` holds the target roots (store, outputs, contexts) and an
    ``outside`` folder with a canary file; everything else in ``base`` is recorded first.

    ``check()`` proves the canary unchanged, nothing created, changed or removed in ``base``
    outside the target roots, and no file named with ``token`` anywhere in HOST_DIRS."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.token = "PBESC" + uuid.uuid4().hex[:12]
        self.outside = base / "outside"
        self.outside.mkdir()
        self.canary = self.outside / "canary"
        self.canary.write_text("canary\n")
        (self.outside / "dir").mkdir()
        (self.outside / "secret").write_text("OUTSIDE-SECRET\n")
        self.store = base / "store"
        self.out = base / "out"
        self.ctx = base / "ctx"
        self.ctx.mkdir()
        self.work = base / "work"          # the test's own artefacts (archives, tars)
        self.work.mkdir()
        self.roots = {self.store, self.out, self.ctx, self.work}
        self._before = _snapshot(base, self.roots)

    @property
    def abs_outside(self) -> str:
        """The outside folder as an absolute path without the leading ``/`` (for tar names)."""
        return str(self.outside).lstrip("/")

    checked = False

    def check(self) -> None:
        self.checked = True
        assert self.canary.read_text() == "canary\n", "the canary outside the root was changed"
        after = _snapshot(self.base, self.roots)
        created = sorted(set(after) - set(self._before))
        removed = sorted(set(self._before) - set(after))
        changed = sorted(k for k in after if k in self._before and after[k] != self._before[k])
        assert not created and not removed and not changed, \
            f"outside the target roots: created {created}, removed {removed}, changed {changed}"
        hits = _host_hits(self.token, [self.base])
        assert not hits, f"hostile names landed on the host: {hits}"


def assert_clean_error(r, *words: str) -> None:  # type: ignore[no-untyped-def]
    """Exit 1, an ``error:`` line, no traceback, and each of ``words`` in the message."""
    assert r.code == 1, f"expected exit 1, got {r.code}\nstdout: {r.out}\nstderr: {r.err}"
    assert "Traceback" not in r.err, r.err
    assert any(line.startswith("error:") for line in r.err.splitlines()), r.err
    low = r.err.lower()
    for w in words:
        assert w.lower() in low, f"{w!r} not in the error:\n{r.err}"
