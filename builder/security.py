"""What a sandboxed process may do: capabilities, no_new_privs, and a seccomp filter.

- Capabilities: docker's default bounding set (CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD, NET_RAW,
  SETGID, SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE), changed by
  ``--cap-add``/``--cap-drop``; everything else is dropped from the bounding set, so no process in
  the sandbox can ever hold it.
- ``no_new_privs`` is always set.
- seccomp (through libseccomp, with the ``pyseccomp`` binding): the default profile answers EPERM
  to what docker's default profile refuses a container without CAP_SYS_ADMIN: loading kernels and
  modules, reboot, swap, keyrings, bpf, perf events, userfaultfd, handle-based opens, clock and
  time changes, accounting, quotas, mounts, pivot_root, namespaces (unshare, setns, clone with
  namespace flags; clone3 answers ENOSYS so libcs fall back to clone), dangerous personality
  flags, the new mount API, io_uring. ``seccomp=unconfined`` loads nothing; ``seccomp=FILE``
  loads a profile in docker's JSON format.
"""
from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pybuild.errors import UserError

__all__ = ["SecurityOpts", "DEFAULT_CAPS", "CAPS", "parse_security_opt", "prepare", "Prepared"]

CAPS = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
        "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
        "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
        "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
        "CHECKPOINT_RESTORE"]
DEFAULT_CAPS = frozenset({"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
                          "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"})

_DENY = ["kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "init_module", "finit_module",
         "delete_module", "create_module", "get_kernel_syms", "query_module", "keyctl", "add_key", "request_key",
         "bpf", "perf_event_open", "userfaultfd", "open_by_handle_at", "name_to_handle_at", "clock_settime",
         "clock_adjtime", "settimeofday", "stime", "adjtimex", "acct", "quotactl", "quotactl_fd", "lookup_dcookie",
         "mount", "umount", "umount2", "pivot_root", "unshare", "setns", "move_mount", "open_tree", "fsopen",
         "fsconfig", "fsmount", "fspick", "mount_setattr", "syslog", "vm86", "vm86old", "iopl", "ioperm",
         "uselib", "nfsservctl", "vhangup", "fanotify_init", "io_uring_setup", "io_uring_enter",
         "io_uring_register", "ustat", "sysfs", "_sysctl", "kcmp", "process_vm_readv", "process_vm_writev"]
_NS_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
             "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
             "CLONE_NEWNET": 0x40000000}
_BAD_PERSONALITY = (0x0040000, 0x0400000)   # ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24


@dataclass(frozen=True)
class SecurityOpts:
    """``seccomp``: "default", "unconfined", or a profile's JSON text; capability changes."""

    seccomp: str = "default"
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()

    def capabilities(self) -> frozenset[str]:
        """The bounding set after --cap-add/--cap-drop (``ALL`` accepted). Raises UserError."""
        def norm(c: str) -> str:
            n = c.upper().removeprefix("CAP_")
            if n != "ALL" and n not in CAPS:
                raise UserError(f"unknown capability {c!r}", hint="e.g. --cap-add NET_ADMIN")
            return n
        caps = set(DEFAULT_CAPS)
        drops = {norm(c) for c in self.cap_drop}
        adds = {norm(c) for c in self.cap_add}
        if "ALL" in drops:
            caps.clear()
        caps -= drops
        caps |= set(CAPS) if "ALL" in adds else adds
        return frozenset(caps)


def parse_security_opt(values: tuple[str, ...], cap_add: tuple[str, ...] = (),
                       cap_drop: tuple[str, ...] = ()) -> SecurityOpts:
    """``--security-opt seccomp=unconfined|PROFILE.json`` (docker's form). Raises UserError."""
    seccomp = "default"
    for v in values:
        key, sep, val = v.partition("=") if "=" in v else v.partition(":")
        if key != "seccomp" or not sep or not val:
            raise UserError(f"unsupported --security-opt {v!r}", hint="pybuild takes seccomp=unconfined or "
                                                                      "seccomp=PROFILE.json")
        if val == "unconfined":
            seccomp = "unconfined"
        else:
            try:
                seccomp = Path(val).read_text()
                json.loads(seccomp)
            except OSError as e:
                raise UserError(f"seccomp profile {val}: {e.strerror}") from None
            except ValueError as e:
                raise UserError(f"seccomp profile {val} is not valid JSON: {e}") from None
    opts = SecurityOpts(seccomp, tuple(cap_add), tuple(cap_drop))
    opts.capabilities()  # validate early
    return opts


@dataclass
class Prepared:
    """Made in the parent before fork; ``apply_*`` run in the child right before exec."""

    keep: frozenset[int]
    filter: Any = None
    last_cap: int = 40
    _libc: Any = field(default=None, repr=False)

    def apply_privileged(self) -> None:
        """no_new_privs and the bounding set; needs CAP_SETPCAP, so before dropping root."""
        import ctypes  # a dictionary lookup here: prepare() imported it in the parent, before the fork
        libc = self._libc
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        for cap in range(self.last_cap + 1):
            if cap not in self.keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                e = ctypes.get_errno()
                if e != errno.EINVAL:  # a capability this kernel does not know
                    raise OSError(e, f"prctl(PR_CAPBSET_DROP, {cap}): {os.strerror(e)}")

    def apply_seccomp(self) -> None:
        """Load the filter (last thing before exec)."""
        if self.filter is not None:
            self.filter.load()


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return len(CAPS) - 1


def prepare(opts: SecurityOpts) -> Prepared:
    """Build the capability set and seccomp filter for ``opts``. Raises UserError for a bad
    profile."""
    keep = frozenset(CAPS.index(c) for c in opts.capabilities())
    flt = None
    if opts.seccomp == "default":
        flt = _default_filter()
    elif opts.seccomp != "unconfined":
        flt = _profile_filter(opts.seccomp)
    import ctypes  # here, not at import: a build whose RUN steps are all cached never loads it
    return Prepared(keep, flt, _last_cap(), ctypes.CDLL(None, use_errno=True))


def _add(flt: Any, action: Any, name: str, *args: Any) -> None:
    import pyseccomp as sc
    try:
        flt.add_rule(action, name, *args)
    except (ValueError, RuntimeError, OSError):
        try:
            sc.resolve_syscall(sc.Arch.NATIVE, name)  # unknown here: nothing to filter
        except Exception:
            return
        raise


def _default_filter() -> Any:
    import pyseccomp as sc
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in _DENY:
        _add(flt, sc.ERRNO(errno.EPERM), name)
    for flag in _NS_FLAGS.values():
        _add(flt, sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    _add(flt, sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in _BAD_PERSONALITY:
        _add(flt, sc.ERRNO(errno.EPERM), "personality", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    return flt


_ACTIONS = {"SCMP_ACT_ALLOW": "ALLOW", "SCMP_ACT_ERRNO": "ERRNO", "SCMP_ACT_KILL": "KILL",
            "SCMP_ACT_KILL_THREAD": "KILL", "SCMP_ACT_KILL_PROCESS": "KILL_PROCESS", "SCMP_ACT_TRAP": "TRAP",
            "SCMP_ACT_LOG": "LOG"}
_OPS = {"SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE", "SCMP_CMP_EQ": "EQ", "SCMP_CMP_GE": "GE",
        "SCMP_CMP_GT": "GT", "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}


def _action(name: str, errno_ret: int | None) -> Any:
    import pyseccomp as sc
    kind = _ACTIONS.get(name)
    if kind is None:
        raise UserError(f"seccomp profile: unsupported action {name!r}")
    if kind == "ERRNO":
        return sc.ERRNO(errno_ret if errno_ret is not None else errno.EPERM)
    return getattr(sc, kind)


def _profile_filter(text: str) -> Any:
    """A filter from docker's seccomp JSON (defaultAction, syscalls[names, action, args,
    errnoRet]). Entries conditioned on capabilities or architectures (``includes``/``excludes``)
    are applied when the condition holds for the default capability set on this machine."""
    import pyseccomp as sc
    prof = json.loads(text)
    try:
        flt = sc.SyscallFilter(_action(prof["defaultAction"], prof.get("defaultErrnoRet")))
    except KeyError:
        raise UserError("seccomp profile: no defaultAction") from None
    caps = {f"CAP_{c}" for c in DEFAULT_CAPS}
    for entry in prof.get("syscalls") or []:
        inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
        if inc.get("caps") and not set(inc["caps"]) <= caps:
            continue
        if exc.get("caps") and set(exc["caps"]) & caps:
            continue
        action = _action(entry.get("action", ""), entry.get("errnoRet"))
        args = [sc.Arg(a["index"], getattr(sc, _OPS[a["op"]]), a.get("value", 0), a.get("valueTwo", 0))
                for a in entry.get("args") or []]
        names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
        for name in names:
            try:
                flt.add_rule(action, name, *args)
            except Exception:
                continue  # a syscall this architecture lacks, or a rule equal to the default
    return flt
