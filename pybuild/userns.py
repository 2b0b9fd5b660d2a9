"""Rootless operation: re-run pybuild inside a user namespace in which it is root.

A non-root ``pybuild`` forks a child that unshares a user namespace; the parent maps the child's
uid 0 to the user and uids 1…N to the user's ``/etc/subuid`` range with ``newuidmap`` (gids
likewise with ``newgidmap``); the child then re-executes pybuild, which runs as root of that
namespace: it can own files as any mapped uid, mount overlayfs (with ``userxattr``), proc and
tmpfs. Without subordinate ranges (or without uidmap's tools) only the user's own id is mapped,
with a warning: every file in a layer then belongs to root.

Files in layers keep the ids the build asked for (uid 0 in the image), because inside the
namespace they *are* those ids.
"""
from __future__ import annotations

import os
import pwd
import sys

__all__ = ["in_user_namespace", "reexec_in_user_namespace", "subordinate_range"]

CLONE_NEWUSER = 0x10000000
_ENV = "_PYBUILD_IN_USERNS"


def in_user_namespace() -> bool:
    """True when this process runs in a user namespace other than the initial one."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def subordinate_range(path: str, user: str, uid: int) -> tuple[int, int] | None:
    """The first ``start, count`` range for ``user`` (or its uid) in /etc/subuid or /etc/subgid."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (user, str(uid)) and parts[1].isdigit() and parts[2].isdigit():
                    return int(parts[1]), int(parts[2])
    except OSError:
        pass
    return None


def _map_ids(pid: int, uid: int, gid: int, user: str) -> str | None:
    """Write the child's id maps; returns a warning when only a single id could be mapped."""
    import shutil
    import subprocess
    subuid = subordinate_range("/etc/subuid", user, uid)
    subgid = subordinate_range("/etc/subgid", user, uid)
    tools = shutil.which("newuidmap") and shutil.which("newgidmap")
    if subuid and subgid and tools:
        try:
            subprocess.run(["newuidmap", str(pid), "0", str(uid), "1", "1", str(subuid[0]), str(subuid[1])],
                           check=True, capture_output=True)
            subprocess.run(["newgidmap", str(pid), "0", str(gid), "1", "1", str(subgid[0]), str(subgid[1])],
                           check=True, capture_output=True)
            return None
        except subprocess.CalledProcessError as e:
            why = e.stderr.decode(errors="replace").strip()
            warning = f"newuidmap/newgidmap failed ({why}); mapping only uid {uid}"
    else:
        missing = "no range in /etc/subuid and /etc/subgid" if tools else "newuidmap/newgidmap not installed"
        warning = f"rootless: {missing} for {user}; mapping only uid {uid} to root (files will all belong to root)"
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {gid} 1")
    return warning


def reexec_in_user_namespace(argv: list[str]) -> int | None:
    """When not root (and not already re-executed), run this same pybuild command again in a
    user namespace and return its exit code; returns None when nothing needs doing (root)."""
    if os.geteuid() == 0 or os.environ.get(_ENV):
        return None
    import ctypes  # only here: every command calls this, and root never gets past the test above
    uid, gid = os.getuid(), os.getgid()
    user = pwd.getpwuid(uid).pw_name
    libc = ctypes.CDLL(None, use_errno=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        if libc.unshare(CLONE_NEWUSER) != 0:
            e = ctypes.get_errno()
            os.write(2, f"error: cannot create a user namespace: {os.strerror(e)}\n"
                        "hint: rootless pybuild needs unprivileged user namespaces\n".encode())
            os._exit(1)
        os.write(ready_w, b"1")
        os.close(ready_w)
        if os.read(go_r, 1) != b"1":
            os._exit(1)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        env = dict(os.environ)
        env[_ENV] = "1"
        env.setdefault("PYBUILD_ROOT", _default_root(uid))
        # Start again exactly as we were started (console script, -m pybuild, or -c …).
        os.execve(sys.executable, list(sys.orig_argv), env)
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) != b"1":
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    warning = _map_ids(pid, uid, gid, user)
    if warning:
        print(f"[Warning] {warning}", file=sys.stderr)
    os.write(go_w, b"1")
    os.close(go_w)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except KeyboardInterrupt:
            continue  # the child gets the same SIGINT and ends
    return os.waitstatus_to_exitcode(status)


def _default_root(uid: int) -> str:
    """The non-root store default, fixed before the namespace makes us look like root."""
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(pwd.getpwuid(uid).pw_dir, ".local", "share")
    return os.path.join(xdg, "pybuild")
