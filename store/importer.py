"""``pybuild import ROOTFS.tar NAME[:TAG]``: one root file system tarball → a one-layer image.

Like ``docker import``: the tarball's files become a single layer (re-written deterministically:
sorted, numeric ids, PAX), the config gets the host platform and one history entry. The image's
``created`` time is ``$SOURCE_DATE_EPOCH`` when set, else the Unix epoch, so the same tarball
always gives the same image digest.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from pybuild.errors import InvalidArchive, NotFound, UserError
from pybuild.oci import Descriptor, History, ImageConfig, Platform
from pybuild.reference import parse_reference

from .store import Store

__all__ = ["import_rootfs", "source_date_epoch", "rfc3339"]


def source_date_epoch() -> int | None:
    """``$SOURCE_DATE_EPOCH`` as an int, or None when unset. Raises UserError when malformed."""
    v = os.environ.get("SOURCE_DATE_EPOCH")
    if v is None or v == "":
        return None
    try:
        n = int(v)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        raise UserError(f"SOURCE_DATE_EPOCH={v!r} is not a non-negative integer") from None


def rfc3339(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def import_rootfs(store: Store, tarball: str | os.PathLike[str], name: str,
                  compression: str = "gzip") -> tuple[str, Descriptor]:
    """Import ``tarball`` (plain, gzip, zstd, bzip2 or xz) as image ``name``.

    Returns the stored tag and the manifest descriptor. Raises NotFound (no such file),
    InvalidArchive (not a tar / unsafe entries), InvalidReference (bad name). The store is
    unchanged when it raises (no tag is written before the image is complete).
    """
    import shutil
    import tarfile
    import tempfile
    # Imported here: a build imports this module only for rfc3339 and source_date_epoch.
    from .layers import entries_from_tar, open_decompressed, write_layer
    ref = parse_reference(name)  # validate before touching anything
    if ref.digest is not None:
        raise UserError(f"cannot import into a digest reference {name!r}", hint="use NAME[:TAG]")
    src = Path(tarball)
    if not src.exists():
        raise NotFound(f"{src}: no such file", hint="give the path of a root file system tarball")
    if src.is_dir():
        raise UserError(f"{src} is a directory", hint="make a tarball first: tar -C DIR -cf rootfs.tar .")
    epoch = source_date_epoch()
    with store.lease(), tempfile.TemporaryFile(dir=store.content.ingest_dir) as plain:
        # Decompress once into a seekable temp file so members can be read in sorted order.
        with open(src, "rb") as f:
            try:
                stream = open_decompressed(f)
                shutil.copyfileobj(stream, plain, 1 << 20)
            except Exception as e:
                raise InvalidArchive(f"{src}: cannot decompress: {e}") from None
        plain.seek(0)
        try:
            tf = tarfile.open(fileobj=plain, mode="r:", encoding="utf-8", errors="surrogateescape")
        except tarfile.TarError:
            raise InvalidArchive(f"{src}: not a tar archive",
                                 hint="import takes a tarball (plain, gzip, zstd, bzip2 or xz) of a root "
                                      "file system") from None
        with tf:
            try:
                entries = entries_from_tar(tf)
            except tarfile.TarError as e:
                raise InvalidArchive(f"{src}: tar archive is corrupt: {e}") from None
            layer = write_layer(store.content, entries, compression, clamp_mtime=epoch)
        created = rfc3339(epoch or 0)
        host = Platform.host()
        config = ImageConfig(architecture=host.architecture, os=host.os, variant=host.variant,
                             created=created).with_layer(
            layer.diff_id, History(created=created, created_by=f"pybuild import {src.name}",
                                   comment=f"Imported from {src.name}"))
        desc = store.write_image(config, [layer.descriptor])
        return store.tag(name, desc), desc
