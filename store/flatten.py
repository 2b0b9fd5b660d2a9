"""Flatten an image into a plain directory (``--output type=local``).

The layers are applied (whiteouts included) in a private directory next to ``dest``, each one
checked against its blob digest and its diff_id, and the result is then merged onto ``dest``:
files of the image replace same-named ones, nothing else in ``dest`` is touched (a whiteout only
hides lower layers, never the user's files).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .layers import extract_verified
from .store import Image, Store

__all__ = ["flatten_image"]


def flatten_image(store: Store, image: Image, dest: Path) -> None:
    """Write ``image``'s file system into ``dest`` (created if missing). Raises DigestMismatch
    (blob or diff_id), InvalidArchive, UnsafeLayer; ``dest`` is untouched when it raises."""
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".pybuild-output-", dir=dest.parent))
    try:
        for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids):
            extract_verified(store.content, layer, diff_id, work, mode="apply")
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
