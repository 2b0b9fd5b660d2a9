"""The copy ("vfs") snapshotter, for where overlayfs cannot be mounted.

A RUN step then runs on a full copy of its parent file system, and the change is computed by
comparing the copy with the parent afterwards, into an upper dir in overlayfs form (whiteouts as
0/0 character devices, opaque directories marked with the overlay xattr), so that the layer, the
snapshot and every step after it are exactly what the overlay driver gives:

- an entry whose type, mode, owner, size, mtime, link target, device or xattrs changed, or whose
  inode changed (deleted and made again), is in the upper dir, with the parents that hold it;
- an entry of the parent that is gone gets a whiteout (only the topmost gone directory);
- a directory with a new inode (``rm -rf d && mkdir d``) is opaque, like overlayfs makes it.

Comparing metadata is enough: any write changes the mtime. Content is never read twice.
"""
from __future__ import annotations

import array
import fcntl
import os
import shutil
import stat
from pathlib import Path

from pybuild.store.layers import _opaque_xattr, set_xattrs, xattrs_of
from pybuild.store.snapshots import StackView

__all__ = ["materialize", "diff_into_upper", "overlay_available"]

def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    os.lchown(dst, st.st_uid, st.st_gid)
    set_xattrs(dst, xattrs_of(src))
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_entry(src: str, dst: str, st: os.stat_result, links: dict[tuple[int, int], str]) -> None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            os.link(links[key], dst)
            return
        shutil.copyfile(src, dst, follow_symlinks=False)
        if st.st_nlink > 1:
            links[key] = dst
    elif stat.S_ISDIR(mode):
        os.mkdir(dst)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(dst, mode, st.st_rdev)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst)
    else:
        return
    _copy_meta(src, dst, st)


def materialize(lower_dirs: list[Path], dest: Path) -> dict[str, tuple[int, int]]:
    """Copy the merged view of ``lower_dirs`` into ``dest`` (which must exist). Returns the
    identity of every copied path (image path → inode, generation) for ``diff_into_upper``."""
    view = StackView(lower_dirs)
    links: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, str, os.stat_result]] = []
    for img, host, st in view.walk("/"):
        dst = str(dest) + img
        _copy_entry(str(host), dst, st, links)
        if stat.S_ISDIR(st.st_mode):
            dirs.append((str(host), dst, st))
    for _, dst, st in reversed(dirs):  # directory times after their contents
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    inodes = {}
    for root, dnames, fnames in os.walk(dest):
        for n in dnames + fnames:
            p = os.path.join(root, n)
            inodes["/" + os.path.relpath(p, dest)] = _identity(p, os.lstat(p))
    return inodes


_FS_IOC_GETVERSION = 0x80087601


def _identity(path: str, st: os.stat_result) -> tuple[int, int]:
    """(inode, generation): a freed inode number is soon reused, so a directory removed and
    made again is told apart by the inode generation the file system bumps on reuse."""
    gen = 0
    if stat.S_ISDIR(st.st_mode):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                buf = array.array("l", [0])
                fcntl.ioctl(fd, _FS_IOC_GETVERSION, buf, True)
                gen = buf[0]
            finally:
                os.close(fd)
        except OSError:
            pass
    return st.st_ino, gen


def _same(a: os.stat_result, b: os.stat_result, pa: str, pb: str) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode) or stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode):
        return False
    if (a.st_uid, a.st_gid) != (b.st_uid, b.st_gid):
        return False
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(pa) == os.readlink(pb)
    if stat.S_ISREG(a.st_mode) and a.st_size != b.st_size:
        return False
    if (stat.S_ISREG(a.st_mode) or stat.S_ISDIR(a.st_mode)) and a.st_mtime_ns != b.st_mtime_ns:
        return False  # overlayfs copies up a directory whose entries changed, even if back as before
    if (stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode)) and a.st_rdev != b.st_rdev:
        return False
    return xattrs_of(pa) == xattrs_of(pb)


def diff_into_upper(lower_dirs: list[Path], copy: Path, inodes: dict[str, tuple[int, int]], upper: Path) -> None:
    """Write into ``upper`` (empty) what the step changed in ``copy`` relative to ``lower_dirs``.

    Entries are moved out of ``copy`` (which is thrown away afterwards)."""
    view = StackView(lower_dirs)
    opaque = _opaque_xattr()

    def ensure_parent(img: str) -> str:
        parent = os.path.dirname(img)
        up = str(upper) + parent
        if not os.path.isdir(up):
            ensure_parent(parent)
            src = str(copy) + parent
            os.mkdir(up)
            _copy_meta(src, up, os.lstat(src))
        return up

    def walk(img_dir: str, fresh: bool) -> None:
        """Compare the directory ``img_dir`` (``fresh``: all of it is new)."""
        cdir = str(copy) + img_dir.rstrip("/")
        names = sorted(os.listdir(cdir or "/"))
        lower_names = [] if fresh else view.listdir(img_dir)
        for name in lower_names:
            if name not in names:  # gone: a whiteout
                img = img_dir.rstrip("/") + "/" + name
                ensure_parent(img)
                os.mknod(str(upper) + img, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        for name in names:
            img = img_dir.rstrip("/") + "/" + name
            cpath = str(copy) + img
            cst = os.lstat(cpath)
            low = None if fresh else view.host_path(img, follow_final=False)
            lst = os.lstat(low) if low is not None else None
            new_inode = inodes.get(img) != _identity(cpath, cst)
            if stat.S_ISDIR(cst.st_mode):
                is_new = lst is None or not stat.S_ISDIR(lst.st_mode) or new_inode
                changed = is_new or not _same(cst, lst, cpath, str(low))  # type: ignore[arg-type]
                if changed:
                    ensure_parent(img)
                    up = str(upper) + img
                    if not os.path.isdir(up):
                        os.mkdir(up)
                    _copy_meta(cpath, up, cst)
                    if lst is not None and (not stat.S_ISDIR(lst.st_mode) or new_inode):
                        os.setxattr(up, opaque, b"y")  # made where something else was: hides it, as overlay
                walk(img, fresh or is_new)
                continue
            if lst is not None and not new_inode and _same(cst, lst, cpath, str(low)):
                if stat.S_ISREG(cst.st_mode) and cst.st_nlink > 1:
                    unchanged_links.setdefault(cst.st_ino, []).append(img)
                continue
            ensure_parent(img)
            os.rename(cpath, str(upper) + img)  # hardlinks moved together keep sharing the inode
            if stat.S_ISREG(cst.st_mode) and cst.st_nlink > 1:
                moved_links.add(cst.st_ino)

    unchanged_links: dict[int, list[str]] = {}
    moved_links: set[int] = set()
    walk("/", False)
    # A new name linked to an unchanged lower file: overlayfs copies that file up, so both names
    # are one inode in the layer. Move the unchanged names of such files too.
    for ino in moved_links & set(unchanged_links):
        for img in unchanged_links[ino]:
            ensure_parent(img)
            os.rename(str(copy) + img, str(upper) + img)


def overlay_available(scratch: Path) -> bool:
    """Whether an overlay mount works here (probed in a throw-away mount namespace)."""
    import subprocess
    import sys
    for d in ("l", "u", "w", "m"):
        (scratch / d).mkdir(parents=True, exist_ok=True)
    code = ("import ctypes,sys; libc=ctypes.CDLL(None,use_errno=True); "
            "assert libc.unshare(0x00020000)==0; "
            "libc.mount(None,b'/',None,16384|(1<<18),None); "
            f"o=b'lowerdir={scratch}/l,upperdir={scratch}/u,workdir={scratch}/w'; "
            "from pybuild.userns import in_user_namespace; "
            "o += b',userxattr' if in_user_namespace() else b''; "
            f"sys.exit(0 if libc.mount(b'overlay',b'{scratch}/m',b'overlay',0,o)==0 else 1)")
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
