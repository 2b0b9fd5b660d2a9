"""SourceFS over a real directory (ADD archive contents, the build context's files).

Paths never leave the directory: symlinks are resolved as if the directory were ``/``, and
paths for which ``hidden`` answers True (e.g. .dockerignore'd) do not exist for the copy.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from pybuild.store.layers import secure_join

from .copy import SrcStat, stat_to_src

__all__ = ["DirFS"]


class DirFS:
    """A read-only SourceFS over ``root``; the constructor does no I/O."""

    def __init__(self, root: Path, hidden: Callable[[str], bool] | None = None) -> None:
        self.root = root
        self.hidden = hidden or (lambda p: False)
        self._all: list[str] | None = None

    def _host(self, path: str) -> Path:
        return self.root / path if path else self.root

    def lstat(self, path: str) -> SrcStat | None:
        if path and self.hidden(path):
            return None
        try:
            st = os.lstat(self._host(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return stat_to_src(st, os.readlink(self._host(path)) if stat.S_ISLNK(st.st_mode) else "")

    def resolve(self, path: str) -> str:
        rel = os.path.relpath(secure_join(self.root, path), self.root).replace(os.sep, "/")
        return "" if rel == "." else rel

    def children(self, path: str) -> list[str]:
        try:
            names = sorted(os.listdir(self._host(path)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [n for n in names if not self.hidden(f"{path}/{n}" if path else n)]

    def open(self, path: str) -> BinaryIO:
        p = self._host(path)
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return os.fdopen(fd, "rb")

    def all_paths(self) -> list[str]:
        if self._all is None:
            out: list[str] = []

            def walk(rel: str) -> None:
                for n in self.children(rel):
                    r = f"{rel}/{n}" if rel else n
                    out.append(r)
                    if stat.S_ISDIR(os.lstat(self._host(r)).st_mode):
                        walk(r)
            walk("")
            self._all = out
        return self._all
