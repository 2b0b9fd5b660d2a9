"""Run one process in a sandbox: namespaces, an overlay root, pivot_root, a PID 1 that reaps.

Process tree::

    pybuild ──fork──▶ A: joins the cgroup, unshare(mount, pid, uts, ipc[, net]), fork
                        └──▶ B (PID 1 of the new pid namespace): mounts the overlay root
                             (lower = snapshots, upper = the step's fresh dir), /proc, a minimal
                             /dev, read-only /etc/hosts, /etc/resolv.conf, /etc/hostname; sets the
                             hostname; pivot_root; forks C and reaps every child until C exits
                               └──▶ C: groups, gid, uid, cwd, execvpe(argv, env)

Every mount lives in the sandbox's own mount namespace, so nothing is left mounted on the host
when the sandbox ends, however it ends. When B exits, the kernel kills every process left in the
pid namespace, so orphans never hang a step. A and B die with pybuild (PR_SET_PDEATHSIG).

Mount points the sandbox had to create (e.g. /etc/hosts in an image without one) are removed from
the upper dir afterwards, together with parent directories overlayfs copied up only for them, so
they never reach a layer.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import os
import platform
import select
import signal
import socket
import stat
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from pybuild.errors import BuildError, UserError
from pybuild.store.snapshots import StackView, is_opaque

from pybuild.userns import in_user_namespace

from .cgroups import Cgroup, Limits
from .security import Prepared, SecurityOpts, prepare

__all__ = ["SandboxSpec", "SandboxResult", "run_sandboxed", "cleanup_upper", "relink_lower_hardlinks",
           "mount_targets", "MOUNT_POINTS"]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)

# Mount points the sandbox provides; files vs dirs. They are not part of any layer.
MOUNT_POINTS: dict[str, str] = {"/proc": "dir", "/dev": "dir", "/sys": "dir", "/etc/hosts": "file",
                                "/etc/resolv.conf": "file", "/etc/hostname": "file"}
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(src.encode() if src else None, target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


@dataclass(frozen=True)
class SandboxSpec:
    """What to run and where. ``lower_dirs`` bottom first; ``upper``/``work`` on one file system."""

    lower_dirs: Sequence[Path]
    upper: Path
    work: Path
    scratch: Path                        # a private temp dir for the merged root and host files
    argv: Sequence[str]
    env: Sequence[str]
    cwd: str = "/"
    user: str = ""
    hostname: str = "pybuild"
    network: str = "host"                # host | none
    limits: Limits = field(default_factory=Limits)
    stdin: bool = False                  # attach pybuild's stdin (pybuild run)
    init: bool = False                   # a reaping PID 1 runs the command as its child
    binds: Sequence[tuple[str, str, bool]] = ()   # (host path, sandbox path, read-only)
    targets: dict[str, str] | None = None         # MOUNT_POINTS resolved in the image (mount_targets)
    security: SecurityOpts = field(default_factory=SecurityOpts)
    rootfs: Path | None = None                    # vfs driver: a full copy, bind-mounted as the root
    tmpfs: Sequence[tuple[str, str]] = ()         # (sandbox path, size option or "")


@dataclass(frozen=True)
class SandboxResult:
    """How the process ended: exit code (128+N for signal N), OOM kill, setup error text."""

    exit_code: int
    oom_killed: bool = False
    setup_error: str = ""


def _ifup_lo() -> None:
    """Bring the loopback interface up (ioctl SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, ifr))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))
    finally:
        s.close()


class _UnknownUser(LookupError):
    """A user or group name that the image's /etc/passwd or /etc/group does not list."""

    def __init__(self, kind: str, name: str) -> None:
        db = "/etc/passwd" if kind == "user" else "/etc/group"
        super().__init__(f"unable to find {kind} \"{name}\": no matching entries in the image's {db}")
        self.kind = kind


_USER_LOOKUP = "user lookup: "  # the prefix of an _UnknownUser report from the sandbox
_USER_HINTS = {
    "user": "create the user first (RUN adduser … in a step before USER) or use a numeric uid (USER 1000)",
    "group": "create the group first (RUN addgroup … in a step before USER) or use a numeric gid (USER name:1000)",
}


def _lookup_user(spec: str) -> tuple[int, int, list[int], str]:
    """uid, gid, supplementary groups and home for ``user[:group]`` from the (new) root's files.
    A name the files do not list raises _UnknownUser; a number needs no entry (as in docker)."""
    user, _, group = spec.partition(":")
    passwd = _read_db("/etc/passwd")
    groups = _read_db("/etc/group")
    uid, gid, name, home = 0, 0, "", "/"
    if not user and "root" in passwd:
        name, home = "root", _home(passwd["root"])
    if user:
        if user.isdigit():
            uid = int(user)
            match = [f for f in passwd.values() if f[2] == user]
            if match:
                name, gid, home = match[0][0], int(match[0][3]), _home(match[0])
            else:
                gid = uid if not group else 0
        elif user in passwd:
            f = passwd[user]
            name, uid, gid, home = user, int(f[2]), int(f[3]), _home(f)
        else:
            raise _UnknownUser("user", user)
    if group:
        if group.isdigit():
            gid = int(group)
        elif group in groups:
            gid = int(groups[group][2])
        else:
            raise _UnknownUser("group", group)
    members = {int(f[2]) for f in groups.values() if name and len(f) > 3 and name in f[3].split(",")}
    return uid, gid, [gid] + sorted(members - {gid}), home  # the primary group first, as docker


def _home(fields: list[str]) -> str:
    return fields[5] if len(fields) > 5 and fields[5] else "/"


def _read_db(path: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 3 and parts[0] and not parts[0].startswith("#") and parts[2].isdigit():
                    out.setdefault(parts[0], parts)
    except OSError:
        pass
    return out


def _overlay_options(spec: SandboxSpec, links: Path) -> str:
    """Mount options with short relative lower paths (the caller chdirs into ``links``)."""
    lowers = [str(i) for i in reversed(range(len(spec.lower_dirs)))] or ["empty"]
    opts = f"lowerdir={':'.join(lowers)},upperdir={spec.upper},workdir={spec.work},metacopy=off,index=off"
    # Renamed directories must be copied up whole (no redirect xattrs), so the upper dir is a
    # plain diff. Rootless overlay uses user.overlay.* xattrs and only allows "nofollow" there.
    if in_user_namespace():
        return opts + ",userxattr,redirect_dir=nofollow"
    return opts + ",redirect_dir=off"


def _prepare_scratch(spec: SandboxSpec) -> Path:
    """Short links to the lower dirs, the merged mount point and the host files to bind."""
    links = spec.scratch / "l"
    links.mkdir(parents=True)
    for i, d in enumerate(spec.lower_dirs):
        os.symlink(d, links / str(i))
    (links / "empty").mkdir()
    (spec.scratch / "merged").mkdir()
    etc = spec.scratch / "etc"
    etc.mkdir()
    (etc / "hostname").write_text(spec.hostname + "\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                               f"127.0.1.1\t{spec.hostname}\n")
    resolv = b""
    if spec.network != "none":
        try:
            resolv = Path("/etc/resolv.conf").read_bytes()
        except OSError:
            pass
    (etc / "resolv.conf").write_bytes(resolv)
    return links


def mount_targets(lower_dirs: Sequence[Path]) -> dict[str, str]:
    """Where each sandbox mount point really is in the image: a symlinked /etc/resolv.conf is
    mounted on its target (resolved inside the image), and the image's symlink stays."""
    view = StackView(lower_dirs)
    return {p: view.resolve(p) for p in MOUNT_POINTS}


def _ensure_mountpoint(root: str, path: str, kind: str) -> None:
    p = root + path
    if os.path.lexists(p):
        if os.path.islink(p):
            os.unlink(p)  # a link made after resolution (should not happen): never mount through it
        else:
            return
    os.makedirs(os.path.dirname(p), exist_ok=True)
    if kind == "dir":
        os.mkdir(p, 0o755)
    else:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))


MASKED_PATHS = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats", "acpi", "scsi")
READONLY_PATHS = ("sys", "sysrq-trigger", "irq", "bus", "asound", "fs")


def _mask_proc(proc: str) -> None:
    """docker's masked and read-only /proc paths: masked files read as /dev/null, masked dirs as
    an empty read-only tmpfs; the read-only ones are bind-mounted read-only over themselves."""
    for name in MASKED_PATHS:
        p = f"{proc}/{name}"
        if not os.path.exists(p):
            continue
        if os.path.isdir(p):
            _mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
        else:
            _mount("/dev/null", p, None, MS_BIND)
    for name in READONLY_PATHS:
        p = f"{proc}/{name}"
        if not os.path.exists(p):
            continue
        _mount(p, p, None, MS_BIND | MS_REC)
        _mount(None, p, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _mask_sys(sys_at: str) -> None:
    fw = f"{sys_at}/firmware"
    if os.path.isdir(fw):
        _mount("tmpfs", fw, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")


def _setup_root(spec: SandboxSpec, links: Path) -> None:
    """In B: build the root file system and pivot into it (all in the new mount namespace)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    merged = str(spec.scratch / "merged")
    os.chdir(links)
    if spec.rootfs is not None:
        _mount(str(spec.rootfs), merged, None, MS_BIND | MS_REC)
        _mount(None, merged, None, MS_BIND | MS_REMOUNT | MS_NODEV)
    else:  # nodev: device nodes from layers (or mknod in a step) open nothing; /dev is separate
        _mount("overlay", merged, "overlay", MS_NODEV, _overlay_options(spec, links))
    at = spec.targets or {p: p for p in MOUNT_POINTS}
    for path, kind in MOUNT_POINTS.items():
        _ensure_mountpoint(merged, at[path], kind)
    _mount("proc", merged + at["/proc"], "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mask_proc(merged + at["/proc"])
    sys_at = merged + at["/sys"]
    try:
        _mount("sysfs", sys_at, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    except OSError:  # e.g. rootless with the host's network namespace: bind the host's /sys
        _mount("/sys", sys_at, None, MS_BIND | MS_REC)
        try:
            _mount(None, sys_at, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
        except OSError:
            pass  # locked flags in a user namespace; the host's /sys is not writable there anyway
    _mask_sys(sys_at)
    dev = merged + at["/dev"]
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
    for name in _DEVICES:
        os.close(os.open(f"{dev}/{name}", os.O_CREAT | os.O_WRONLY, 0o666))
        _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for d in ("pts", "shm", "mqueue"):
        os.mkdir(f"{dev}/{d}", 0o755)
    _mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    _mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.symlink("/proc/self/fd", f"{dev}/fd")
    for i, n in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{dev}/{n}")
    for name in ("hosts", "resolv.conf", "hostname"):
        target = merged + at[f"/etc/{name}"]
        _mount(str(spec.scratch / "etc" / name), target, None, MS_BIND)
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    for host, inside, ro in spec.binds:
        target = merged + inside
        kind = "dir" if os.path.isdir(host) else "file"
        _ensure_mountpoint(merged, inside, kind)
        _mount(host, target, None, MS_BIND | MS_REC)
        if ro:
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
    for inside, size in spec.tmpfs:
        _ensure_mountpoint(merged, inside, "dir")
        _mount("tmpfs", merged + inside, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}" if size else None)
    _check(_libc.sethostname(spec.hostname.encode(), len(spec.hostname.encode())), "sethostname")
    if spec.network == "none":
        _ifup_lo()
    os.chdir(merged)
    nr = _SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(nr, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


def _exec(spec: SandboxSpec, uid: int, gid: int, supp: list[int], env: dict[str, str], err_w: int,
          sec: Prepared) -> None:
    """Drop capabilities, become the user, load seccomp, exec the command; on failure report it on
    ``err_w`` and exit 126/127."""
    try:
        sec.apply_privileged()
        try:
            os.setgroups(supp)
        except PermissionError:
            if not _setgroups_denied():
                raise  # only a single-id user namespace may not set groups
        os.setgid(gid)
        os.setuid(uid)
        try:
            os.chdir(spec.cwd or "/")
        except OSError as e:
            raise OSError(e.errno, f"working directory {spec.cwd}: {e.strerror}") from None
        sec.apply_seccomp()
        os.execvpe(spec.argv[0], list(spec.argv), env)
    except OSError as e:
        if e.errno == errno.ENOENT and e.filename is not None and "/" not in spec.argv[0]:
            msg = f"executable file {spec.argv[0]!r} not found in $PATH"
        else:
            name = os.fsdecode(e.filename) if e.filename is not None else spec.argv[0]
            msg = f"{name}: {e.strerror}"
        os.write(err_w, f"exec: {msg}".encode())
        os._exit(127 if e.errno == errno.ENOENT else 126)
    os._exit(127)


def _setgroups_denied() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "deny"
    except OSError:
        return False


def _child_b(spec: SandboxSpec, links: Path, err_w: int, sec: Prepared) -> int:
    """PID 1 of the sandbox: set up the root, then either become the command (docker's default:
    ``echo $$`` prints 1; orphans die with the namespace) or, with ``spec.init``, start it as a
    child and reap every zombie until it exits. Returns the command's status."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _setup_root(spec, links)
    uid, gid, supp, home = _lookup_user(spec.user)
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in spec.env)
    env.setdefault("HOME", home)
    if not spec.init:
        _exec(spec, uid, gid, supp, env, err_w, sec)
    pid = os.fork()
    if pid == 0:
        _exec(spec, uid, gid, supp, env, err_w, sec)
    os.close(err_w)
    while True:
        try:
            wpid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
        if wpid == pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def run_sandboxed(spec: SandboxSpec, on_output: Callable[[bytes], None] | None = None) -> SandboxResult:
    """Run ``spec.argv`` in the sandbox; stream its stdout+stderr to ``on_output`` (or inherit
    the terminal when None). Returns the exit status. Raises UserError when the user or group to
    run as is a name the image does not list, BuildError when the sandbox cannot be set up (with
    the reason)."""
    if spec.targets is None:
        spec = dataclasses.replace(spec, targets=mount_targets(spec.lower_dirs))
    view = StackView(spec.lower_dirs)
    # Extra mount targets are resolved inside the image too: an image symlink on the way must
    # never lead a mount point (or the directories made for it) onto the host.
    spec = dataclasses.replace(spec, binds=tuple((h, view.resolve(t), ro) for h, t, ro in spec.binds),
                               tmpfs=tuple((view.resolve(t), size) for t, size in spec.tmpfs))
    sec = prepare(spec.security)  # before fork: the child only applies it
    links = _prepare_scratch(spec)
    cg = Cgroup.create_or_none(spec.limits)
    out_r, out_w = os.pipe() if on_output is not None else (-1, -1)
    err_r, err_w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # A
            code = 125
            try:
                os.close(err_r)
                if out_r >= 0:
                    os.close(out_r)
                    os.dup2(out_w, 1)
                    os.dup2(out_w, 2)
                    os.close(out_w)
                if not spec.stdin:
                    devnull = os.open("/dev/null", os.O_RDONLY)
                    os.dup2(devnull, 0)
                    os.close(devnull)
                _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                for f in (cg.procs_files() if cg else []):
                    with open(f, "w") as fh:
                        fh.write(str(os.getpid()))
                flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
                if spec.network == "none":
                    flags |= CLONE_NEWNET
                _check(_libc.unshare(flags), "unshare")
                bpid = os.fork()
                if bpid == 0:
                    try:
                        code = _child_b(spec, links, err_w, sec)
                    except _UnknownUser as e:
                        os.write(err_w, f"{_USER_LOOKUP}{e.kind}:{e}".encode())
                        code = 125
                    except BaseException as e:  # noqa: BLE001 - report anything, then exit
                        os.write(err_w, f"sandbox setup: {e}".encode())
                        code = 125
                    os._exit(code)
                os.close(err_w)
                _, status = os.waitpid(bpid, 0)
                code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
            except BaseException as e:  # noqa: BLE001
                try:
                    os.write(err_w, f"sandbox setup: {e}".encode())
                except OSError:
                    pass
            os._exit(code)
        os.close(err_w)
        err_w = -1
        if out_w >= 0:
            os.close(out_w)
            out_w = -1
            _pump(out_r, on_output)  # type: ignore[arg-type]
        _, status = _waitpid(pid)
        code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        err = b""
        while chunk := os.read(err_r, 65536):
            err += chunk
        text = err.decode(errors="replace")
        oom = cg.oom_killed() if cg else False
        if text.startswith(_USER_LOOKUP):
            kind, _, message = text[len(_USER_LOOKUP):].partition(":")
            raise UserError(message, hint=_USER_HINTS.get(kind))
        if text.startswith("sandbox setup:"):
            raise BuildError(text, hint="RUN needs root (or user namespaces), overlayfs and cgroups")
        return SandboxResult(code, oom, text)
    finally:
        for fd in (out_r, out_w, err_r, err_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if cg:
            cg.remove()


def _waitpid(pid: int) -> tuple[int, int]:
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:
            continue


def _pump(fd: int, on_output: Callable[[bytes], None]) -> None:
    while True:
        try:
            r, _, _ = select.select([fd], [], [])
        except InterruptedError:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        on_output(chunk)


def cleanup_upper(upper: Path, lower_dirs: Sequence[Path], extra: Sequence[str] = ()) -> None:
    """Remove from ``upper`` the mount points the sandbox created (absent from the lower dirs)
    and the directories made or copied up only to hold them (left empty, and absent below or
    with the same metadata as below)."""
    view = StackView(lower_dirs)
    for path in [view.resolve(p) for p in list(MOUNT_POINTS) + list(extra)]:
        p = upper / path.lstrip("/")
        if view.lstat(path) is None and os.path.lexists(p):
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                try:
                    p.rmdir()
                except OSError:
                    continue
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                p.unlink()
        parent = os.path.dirname(path)
        while parent not in ("/", ""):
            q = upper / parent.lstrip("/")
            low = view.lstat(parent)
            try:
                qst = os.lstat(q)
            except FileNotFoundError:
                break
            if not stat.S_ISDIR(qst.st_mode) or any(os.scandir(q)) or is_opaque(q):
                break
            if low is not None and ((stat.S_IMODE(low.st_mode), low.st_uid, low.st_gid)
                                    != (stat.S_IMODE(qst.st_mode), qst.st_uid, qst.st_gid)):
                break  # a directory the step really changed
            # Empty, and either made only to hold a mount point or copied up unchanged: drop it.
            q.rmdir()
            parent = os.path.dirname(parent)


def new_scratch(base: Path) -> Path:
    p = base / f".tmp-run-{uuid.uuid4().hex}"
    p.mkdir(parents=True)
    return p


def relink_lower_hardlinks(upper: Path, lower_dirs: Sequence[Path]) -> int:
    """Restore hardlinks that overlayfs copy-up broke (it copies up one name of a lower
    hardlinked file; the other names would keep the old content). For every regular file in
    ``upper`` whose lower version had several names, each other name that is still visible and
    still that lower file becomes a hardlink to the new copy. Returns the links made."""
    lower = StackView(lower_dirs, cached=True)
    merged = StackView(list(lower_dirs) + [upper])
    by_layer: dict[Path, dict[int, list[str]]] = {}
    made = 0
    for dirpath, _, files in os.walk(upper):
        for name in files:
            full = os.path.join(dirpath, name)
            if not stat.S_ISREG(os.lstat(full).st_mode):
                continue
            rel = os.path.relpath(full, upper)
            hp = lower.host_path("/" + rel, follow_final=False)
            if hp is None:
                continue
            lst = os.lstat(hp)
            if not stat.S_ISREG(lst.st_mode) or lst.st_nlink < 2:
                continue
            layer = next((d for d in lower_dirs if str(hp).startswith(str(d) + os.sep)), None)
            if layer is None:
                continue
            if layer not in by_layer:
                by_layer[layer] = _multi_link_files(layer)
            for sib in by_layer[layer].get(lst.st_ino, []):
                if sib == rel or os.path.lexists(upper / sib):
                    continue
                cur = merged.host_path("/" + sib, follow_final=False)
                if cur is None or os.lstat(cur).st_ino != lst.st_ino:
                    continue  # replaced or hidden above: not the same file any more
                parent = _copy_up_parents(upper, lower, os.path.dirname("/" + sib))
                os.link(full, parent / os.path.basename(sib))
                made += 1
    return made


def _copy_up_parents(upper: Path, lower: StackView, parent: str) -> Path:
    """Make the (resolved) image dir ``parent`` exist in ``upper``, each level copied up with
    its lower metadata as overlayfs would; returns it."""
    cur = upper
    img = ""
    for part in [p for p in parent.split("/") if p]:
        img += "/" + part
        cur = cur / part
        try:
            if stat.S_ISDIR(os.lstat(cur).st_mode):
                continue
            cur.unlink()  # a non-directory in upper where a directory is needed
        except FileNotFoundError:
            pass
        low = lower.lstat(img)
        os.mkdir(cur)
        if low is not None and stat.S_ISDIR(low.st_mode):
            os.chmod(cur, stat.S_IMODE(low.st_mode))
            os.lchown(cur, low.st_uid, low.st_gid)
            os.utime(cur, ns=(low.st_atime_ns, low.st_mtime_ns))
        else:
            os.chmod(cur, 0o755)
    return cur


def _multi_link_files(layer: Path) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for dirpath, _, files in os.walk(layer):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                out.setdefault(st.st_ino, []).append(os.path.relpath(p, layer))
    return out
