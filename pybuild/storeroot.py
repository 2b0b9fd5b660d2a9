"""Where the store lives when ``--root`` is not given, and where in it the up-to-date records
are (standard library only: the up-to-date check in :mod:`pybuild.uptodate` reads this before
anything else loads)."""
from __future__ import annotations

import os

__all__ = ["default_store_root", "UPTODATE_DIR"]

UPTODATE_DIR = "metadata/uptodate"   # relative to the store root; removed by every garbage collection


def default_store_root() -> str:
    """``$PYBUILD_ROOT``, else /var/lib/pybuild for root, else ``$XDG_DATA_HOME/pybuild``."""
    env = os.environ.get("PYBUILD_ROOT")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/pybuild"
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(xdg, "pybuild")
