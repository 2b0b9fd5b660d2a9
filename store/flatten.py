"""Flatten an image into a plain directory (``--output type=local``).

The layers are applied (whiteouts included) in a private directory next to ``dest``, each one
checked against its blob digest and its diff_id, and the result is then merged onto ``dest``:
files of the image replace same-named ones, nothing else in ``dest`` is touched (a whiteout only
hides lower layers, never the user's files).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from pybuild.errors import DigestMismatch

from .layers import extract_layer, open_decompressed
from .store import Image, Store

__all__ = ["flatten_image"]


class _Hashing:
    def __init__(self, f: object) -> None:
        self._f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)  # type: ignore[attr-defined]
        self.h.update(data)
        return data


def flatten_image(store: Store, image: Image, dest: Path) -> None:
    """Write ``image``'s file system into ``dest`` (created if missing). Raises DigestMismatch
    (blob or diff_id), InvalidArchive, UnsafeLayer; ``dest`` is untouched when it raises."""
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".pybuild-output-", dir=dest.parent))
    try:
        for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids):
            with store.content.open_blob(layer.digest, layer.size) as blob:
                hashing = _Hashing(open_decompressed(blob, layer.media_type))
                extract_layer(hashing, work, mode="apply")  # type: ignore[arg-type]
                while hashing.read(1 << 20):
                    pass
                blob.finish()
            if hashing.h.hexdigest() != diff_id.hex:
                raise DigestMismatch(f"layer {layer.digest} uncompresses to sha256:{hashing.h.hexdigest()}, "
                                     f"but the image config says {diff_id}", expected=str(diff_id))
        _merge(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _merge(src: Path, dest: Path) -> None:
    """Move ``src``'s entries onto ``dest``: directories merge, anything else replaces."""
    for name in sorted(os.listdir(src)):
        s, d = src / name, dest / name
        if s.is_dir() and not s.is_symlink() and d.is_dir() and not d.is_symlink():
            _merge(s, d)
            st = os.lstat(s)
            os.chmod(d, st.st_mode & 0o7777)
            try:
                os.lchown(d, st.st_uid, st.st_gid)
            except PermissionError:
                pass
            continue
        if os.path.lexists(d):
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
            else:
                d.unlink()
        os.rename(s, d)
