"""Resolving a path inside a root, symlinks included, as if that root were ``/`` (pure)."""
from __future__ import annotations

from typing import Callable

__all__ = ["resolve_in_root", "TooManyLinks"]


class TooManyLinks(ValueError):
    """More than the allowed number of symlinks met while resolving (a loop, most likely)."""


def resolve_in_root(path: str, readlink: Callable[[list[str]], str | None], follow_final: bool = True,
                    limit: int = 255) -> list[str]:
    """The components of ``path`` with every symlink resolved within the root.

    ``readlink(components)`` returns the target when that path is a symlink, else None. Absolute
    targets restart at the root and ``..`` never climbs above it, so the result is always inside.
    With ``follow_final=False`` a final symlink is kept. Raises TooManyLinks past ``limit``.
    """
    todo = [p for p in reversed(path.split("/")) if p not in ("", ".")]
    cur: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if cur:
                cur.pop()
            continue
        target = readlink(cur + [part]) if (todo or follow_final) else None
        if target is None:
            cur.append(part)
            continue
        links += 1
        if links > limit:
            raise TooManyLinks(f"too many levels of symbolic links resolving {path!r}")
        if target.startswith("/"):
            cur = []
        todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
    return cur
