"""Flatten an OCI image archive into a comparable view: every path of the final root file system
with its metadata, the hardlink groups, and the image config.

Written over ``tarfile`` on purpose, sharing no code with pybuild (it is the oracle's reader): the
archive is read in memory, index.json → manifest → config and layers in order, each blob checked
against its digest and each uncompressed layer against its diff_id; the layers are applied with
the OCI whiteout rules (``.wh.NAME`` deletes NAME of the lower layers, ``.wh..wh..opq`` empties a
directory of what the lower layers put there). Nothing is extracted to disk.

What a file entry keeps (and therefore what is compared): type, permission bits including
suid/sgid/sticky, numeric uid and gid, sha256 of the content, symlink target, device numbers and
extended attributes. What it drops (must or may differ between builders): mtime/atime/ctime, user
and group *names* in the tar header (the ids are what count), the tar format and entry order,
and the root directory entry itself (``./`` is optional in layer tars). A hardlink is resolved to
the file it links to (same content and metadata) and recorded in ``hardlinks`` as a group of paths.

    python tests/conformance/flatten.py ARCHIVE.tar [--config] [--under /app]
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import sys
import tarfile
from dataclasses import dataclass, field
from typing import Any

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class FlattenError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    type: str                   # file | dir | symlink | char | block | fifo
    mode: int                   # st_mode & 0o7777
    uid: int
    gid: int
    sha256: str | None = None   # files only
    link: str | None = None     # symlink target
    dev: tuple[int, int] | None = None
    xattrs: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        s = f"{self.type} {self.mode:04o} {self.uid}:{self.gid}"
        if self.sha256 is not None:
            s += f" sha256:{self.sha256[:12]}"
        if self.link is not None:
            s += f" -> {self.link}"
        if self.dev is not None:
            s += f" dev {self.dev[0]},{self.dev[1]}"
        if self.xattrs:
            s += f" xattrs {dict(self.xattrs)}"
        return s

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "mode": f"{self.mode:04o}", "uid": self.uid,
                             "gid": self.gid}
        if self.sha256 is not None:
            d["sha256"] = self.sha256
        if self.link is not None:
            d["link"] = self.link
        if self.dev is not None:
            d["dev"] = list(self.dev)
        if self.xattrs:
            d["xattrs"] = dict(self.xattrs)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Entry":
        return cls(d["type"], int(d["mode"], 8), d["uid"], d["gid"], d.get("sha256"), d.get("link"),
                   tuple(d["dev"]) if d.get("dev") else None,
                   tuple(sorted(d.get("xattrs", {}).items())))


@dataclass
class Image:
    files: dict[str, Entry]                 # "/etc/passwd" → Entry ("/" itself is left out)
    hardlinks: list[list[str]]              # sorted groups of paths sharing one inode
    config: dict[str, Any]                  # the config blob, parsed
    manifest: dict[str, Any] = field(default_factory=dict)
    layer_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"files": {p: e.to_json() for p, e in sorted(self.files.items())},
                "hardlinks": self.hardlinks, "config": self.config, "manifest": self.manifest,
                "layer_count": self.layer_count}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Image":
        return cls({p: Entry.from_json(e) for p, e in d["files"].items()}, d["hardlinks"],
                   d["config"], d.get("manifest", {}), d.get("layer_count", 0))


def norm(name: str) -> str:
    """A tar member name as an absolute, clean path ("./a/b/" → "/a/b"; "." → "/")."""
    p = posixpath.normpath("/" + name.lstrip("/"))
    return "/" if p in ("/", "//") else p.replace("//", "/")


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top + "/")


class _Archive:
    """An OCI image layout inside a tar file, read into memory."""

    def __init__(self, path: str) -> None:
        self.members: dict[str, bytes] = {}
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if m.isfile():
                    f = tf.extractfile(m)
                    assert f is not None
                    self.members[norm(m.name).lstrip("/")] = f.read()
        if "oci-layout" not in self.members or "index.json" not in self.members:
            raise FlattenError(f"{path}: not an OCI archive (no oci-layout/index.json); "
                               f"members: {sorted(self.members)[:10]}")

    def blob(self, desc: dict[str, Any]) -> bytes:
        algo, _, hexd = desc["digest"].partition(":")
        data = self.members.get(f"blobs/{algo}/{hexd}")
        if data is None:
            raise FlattenError(f"blob {desc['digest']} missing from the archive")
        if algo != "sha256" or hashlib.sha256(data).hexdigest() != hexd:
            raise FlattenError(f"blob {desc['digest']}: content does not match its digest")
        if "size" in desc and desc["size"] != len(data):
            raise FlattenError(f"blob {desc['digest']}: size {len(data)} != descriptor {desc['size']}")
        return data


def _decompress(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


def _kind(m: tarfile.TarInfo) -> str:
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.ischr():
        return "char"
    if m.isblk():
        return "block"
    if m.isfifo():
        return "fifo"
    if m.isreg():
        return "file"
    raise FlattenError(f"{m.name}: unsupported tar entry type {m.type!r}")


def _xattrs(m: tarfile.TarInfo) -> tuple[tuple[str, str], ...]:
    out = []
    for k, v in (m.pax_headers or {}).items():
        if k.startswith("SCHILY.xattr."):
            out.append((k[len("SCHILY.xattr."):], v))
    return tuple(sorted(out))


class _Tree:
    def __init__(self) -> None:
        self.files: dict[str, Entry] = {}
        self.inode: dict[str, int] = {}     # path → inode id (regular files only)
        self._next = 0

    def _new_inode(self) -> int:
        self._next += 1
        return self._next

    def remove(self, path: str, keep: set[str]) -> None:
        for p in [p for p in self.files if _under(p, path) and p not in keep]:
            del self.files[p]
            self.inode.pop(p, None)

    def apply_layer(self, data: bytes, where: str) -> None:
        added: set[str] = set()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf:
                path = norm(m.name)
                parent, base = posixpath.split(path)
                if base == OPAQUE:
                    for p in [p for p in self.files if p.startswith(parent.rstrip("/") + "/")
                              and p not in added]:
                        del self.files[p]
                        self.inode.pop(p, None)
                    continue
                if base.startswith(WHITEOUT):
                    if base.startswith(".wh..wh."):
                        continue    # other AUFS metadata (.wh..wh.plnk …): no file
                    self.remove(posixpath.join(parent, base[len(WHITEOUT):]), added)
                    continue
                if path == "/":
                    continue
                kind = _kind(m)
                old = self.files.get(path)
                if old is not None and (old.type != "dir" or kind != "dir"):
                    self.remove(path, added - {path})   # a dir replaced by a non-dir loses its children
                if kind == "hardlink":
                    target = norm(m.linkname)
                    if target not in self.files or self.files[target].type != "file":
                        raise FlattenError(f"{where}: hardlink {path} -> {target}: no such file")
                    self.files[path] = self.files[target]
                    self.inode[path] = self.inode[target]
                elif kind == "file":
                    f = tf.extractfile(m)
                    assert f is not None
                    self.files[path] = Entry("file", m.mode & 0o7777, m.uid, m.gid,
                                             hashlib.sha256(f.read()).hexdigest(), None, None,
                                             _xattrs(m))
                    self.inode[path] = self._new_inode()
                else:
                    self.files[path] = Entry(
                        kind, m.mode & 0o7777, m.uid, m.gid, None,
                        m.linkname if kind == "symlink" else None,
                        (m.devmajor, m.devminor) if kind in ("char", "block") else None,
                        _xattrs(m))
                    self.inode.pop(path, None)
                added.add(path)

    def hardlink_groups(self) -> list[list[str]]:
        groups: dict[int, list[str]] = {}
        for p, i in self.inode.items():
            groups.setdefault(i, []).append(p)
        return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def _pick_manifest(arc: _Archive, ref: str | None) -> dict[str, Any]:
    index = json.loads(arc.members["index.json"])
    descs = index.get("manifests", [])
    if ref is not None:
        descs = [d for d in descs
                 if (d.get("annotations") or {}).get("org.opencontainers.image.ref.name") == ref]
    if len(descs) != 1:
        raise FlattenError(f"index.json: expected exactly one manifest{' named ' + ref if ref else ''}, "
                           f"found {len(descs)}")
    desc = descs[0]
    while desc.get("mediaType") in INDEX_TYPES:
        sub = json.loads(arc.blob(desc))["manifests"]
        sub = [d for d in sub if (d.get("platform") or {}).get("os", "linux") == "linux"]
        if not sub:
            raise FlattenError("nested index without a linux manifest")
        desc = sub[0]
    return json.loads(arc.blob(desc))


def flatten(path: str, ref: str | None = None) -> Image:
    """Read the OCI archive at ``path`` (one image, or the one named ``ref``) into an Image."""
    arc = _Archive(path)
    manifest = _pick_manifest(arc, ref)
    config = json.loads(arc.blob(manifest["config"]))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layers = manifest.get("layers") or []
    if len(diff_ids) != len(layers):
        raise FlattenError(f"{len(layers)} layers in the manifest but {len(diff_ids)} diff_ids")
    tree = _Tree()
    for i, (desc, diff_id) in enumerate(zip(layers, diff_ids)):
        raw = _decompress(arc.blob(desc))
        if "sha256:" + hashlib.sha256(raw).hexdigest() != diff_id:
            raise FlattenError(f"layer {i} ({desc['digest']}): uncompressed content does not match "
                               f"diff_id {diff_id}")
        tree.apply_layer(raw, f"layer {i}")
    return Image(tree.files, tree.hardlink_groups(), config, manifest, len(layers))


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="print the flattened file system of an OCI archive")
    ap.add_argument("archive")
    ap.add_argument("--config", action="store_true", help="print the config JSON too")
    ap.add_argument("--under", default="/", help="only paths below this one")
    a = ap.parse_args(argv)
    img = flatten(a.archive)
    for p, e in sorted(img.files.items()):
        if _under(p, a.under):
            print(f"{p}  {e.describe()}")
    for g in img.hardlinks:
        print("hardlinks:", " ".join(g))
    if a.config:
        print(json.dumps(img.config, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
