#!/usr/bin/env python3
"""Make a minimal busybox root file system tarball from Debian's busybox-static.

    python3 testdata/make_busybox_rootfs.py OUT.tar [--busybox /bin/busybox]

The tarball holds /bin/busybox, a symlink for every applet busybox lists (``--list-full``),
/etc/passwd and /etc/group with root and nobody, and the usual empty folders (/tmp with mode
1777). Every entry has uid/gid 0 and mtime 0 and the entries are sorted, so the same busybox
binary always gives the same bytes. Needs only the standard library.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
from pathlib import Path

PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\nnobody:x:65534:\n"
DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o555, "root": 0o700,
        "sbin": 0o755, "sys": 0o555, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
        "var": 0o755, "var/tmp": 0o1777}


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, link
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0
    return ti


def make_rootfs(out: Path, busybox: Path = Path("/bin/busybox")) -> Path:
    """Write the tarball to ``out`` (atomically) and return it. Raises FileNotFoundError when
    busybox is missing (install Debian's busybox-static)."""
    if not busybox.is_file():
        raise FileNotFoundError(f"{busybox} not found: apt-get install busybox-static")
    applets = subprocess.run([str(busybox), "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    files: dict[str, tuple[bytes, int, bytes | str]] = {}
    for d, mode in DIRS.items():
        files[d] = (tarfile.DIRTYPE, mode, b"")
    files["bin/busybox"] = (tarfile.REGTYPE, 0o755, busybox.read_bytes())
    files["etc/passwd"] = (tarfile.REGTYPE, 0o644, PASSWD)
    files["etc/group"] = (tarfile.REGTYPE, 0o644, GROUP)
    for a in applets:
        a = a.strip("/")
        if a and a != "bin/busybox":
            parent = a.rsplit("/", 1)[0] if "/" in a else ""
            if parent and parent not in files:
                files[parent] = (tarfile.DIRTYPE, 0o755, b"")
            files[a] = (tarfile.SYMTYPE, 0o777, "/bin/busybox")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(files, key=lambda p: p.split("/")):
            kind, mode, data = files[name]
            if kind == tarfile.SYMTYPE:
                tf.addfile(_info(name, kind, mode, link=str(data)))
            elif kind == tarfile.DIRTYPE:
                tf.addfile(_info(name, kind, mode))
            else:
                assert isinstance(data, bytes)
                tf.addfile(_info(name, kind, mode, len(data)), io.BytesIO(data))
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("out", type=Path)
    ap.add_argument("--busybox", type=Path, default=Path("/bin/busybox"))
    a = ap.parse_args(argv)
    try:
        print(make_rootfs(a.out, a.busybox))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
