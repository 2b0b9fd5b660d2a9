"""The benchmark's scratch file system: a new ext4, made by ``mkfs.ext4`` with its defaults
(journal on, as on a laptop or a CI runner), in a sparse file on a loop device, mounted as the
scratch dir for one run.

Why a file system of its own: the file system a machine's /var/tmp sits on may be set up in ways
no user's is. This machine's root ext4 has no journal, and without one ext4 does not reuse a
deleted inode's number for 60 s and makes every inode allocation in its block group step over it
(``recently_deleted()`` in fs/ext4/ialloc.c): 20,000 files made after 30,000 were deleted took
1.7-2.7 s there against 0.22 s on a default ext4, where the same test takes 0.22 s either way.
With a journal ext4 makes no such check. On the root file system, whichever tool deleted files
(buildah removes its build containers) taxed the other tool's next command, so the ratio of a
phase depended on what ran before it. The loop device uses direct I/O (``losetup --direct-io=on``)
so the file system's data is not cached twice, in its own pages and in the backing file's.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

# ext4 sees this much; the host only stores what is written (about 10 GiB at scale 1)
IMAGE_SIZE = "48G"
MIN_FREE_GIB = 16


class ScratchFsError(Exception):
    """The scratch file system could not be made or mounted; the message says which command failed."""


def _run(argv: list[str]) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise ScratchFsError(f"{' '.join(argv)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()}")
    return p.stdout.strip()


def mounts_at_or_below(path: Path) -> list[str]:
    """The mount points at ``path`` or below it (from /proc/self/mountinfo), deepest first."""
    p = str(path.resolve())
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == p or mp.startswith(p + "/"):
                mounts.append(mp)
    return sorted(mounts, key=len, reverse=True)


def is_mountpoint(path: Path) -> bool:
    return str(path.resolve()) in mounts_at_or_below(path)


class LoopExt4:
    """A sparse image file at ``image``, formatted on first use, mounted at ``mountpoint``.

    Nothing happens in the constructor; :meth:`mount` does the work and :meth:`unmount` undoes it.
    An image that exists already (a run with ``--keep``) is mounted as it is, not formatted again.
    """

    def __init__(self, image: Path, mountpoint: Path) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.device: str | None = None
        self.formatted = False

    def mount(self) -> None:
        """Format (when new), attach with direct I/O and mount. Raises ScratchFsError, with nothing
        left attached or mounted, when a step fails or the host has less than MIN_FREE_GIB free."""
        host = self.image.parent
        free_gib = shutil.disk_usage(host).free / 2**30
        if free_gib < MIN_FREE_GIB:
            raise ScratchFsError(f"{host} has {free_gib:.1f} GiB free; the scratch file system needs about "
                                 f"{MIN_FREE_GIB} GiB")
        if not self.image.exists():
            _run(["truncate", "-s", IMAGE_SIZE, str(self.image)])
            # inode tables and journal zeroed now, not by ext4lazyinit in the background of the rounds
            try:
                _run(["mkfs.ext4", "-q", "-F", "-L", "pybuild-bench", "-E",
                      "lazy_itable_init=0,lazy_journal_init=0", str(self.image)])
            except ScratchFsError:
                self.image.unlink()
                raise
            self.formatted = True
        self.device = _run(["losetup", "--direct-io=on", "--find", "--show", str(self.image)])
        try:
            self.mountpoint.mkdir(parents=True, exist_ok=True)
            _run(["mount", "-t", "ext4", self.device, str(self.mountpoint)])
        except ScratchFsError:
            subprocess.run(["losetup", "-d", self.device], capture_output=True, check=False)
            self.device = None
            raise

    def unmount(self) -> None:
        """Unmount (lazily when busy) and detach; the image stays. Never raises."""
        if self.device is None:
            return
        if subprocess.run(["umount", str(self.mountpoint)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", self.device], capture_output=True, check=False)  # autoclear when still busy
        self.device = None

    def describe(self) -> dict[str, Any]:
        """What the JSON report records about the file system (features as dumpe2fs prints them)."""
        info: dict[str, Any] = {"kind": "loop-ext4", "image": str(self.image), "size": IMAGE_SIZE,
                                "device": self.device}
        p = subprocess.run(["dumpe2fs", "-h", str(self.device or self.image)], capture_output=True, text=True, check=False)
        for line in p.stdout.splitlines():
            if line.startswith("Filesystem features:"):
                info["features"] = line.split(":", 1)[1].split()
        if self.device:
            dio = Path(f"/sys/block/{os.path.basename(self.device)}/loop/dio")
            info["direct_io"] = dio.exists() and dio.read_text().strip() == "1"
        return info
