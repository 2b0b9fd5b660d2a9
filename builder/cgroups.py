"""A cgroup per sandboxed process tree: memory, pids and cpu limits; OOM detection; removal.

cgroup v2 is used when the unified hierarchy offers the memory and pids controllers; otherwise
the v1 hierarchies (``/sys/fs/cgroup/<controller>``). Each cgroup is created below the cgroup
pybuild itself runs in, named ``pybuild-<id>``, and removed by ``remove()``.
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pybuild.errors import BuildError, UserError

__all__ = ["Limits", "Cgroup", "parse_size"]

_ROOT = Path("/sys/fs/cgroup")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``64m``, ``1g``, ``512k``, ``64mb``, ``1048576`` → bytes (docker's binary units).
    Raises UserError."""
    t = text.strip().lower()
    if len(t) > 1 and t.endswith("b") and t[-2] in "kmgt":
        t = t[:-1]
    num, unit = (t[:-1], t[-1]) if t and t[-1] in "bkmgt" else (t, "")
    try:
        value = int(float(num) * _UNITS[unit])
        if value <= 0:
            raise ValueError
        return value
    except (ValueError, KeyError):
        raise UserError(f"invalid size {text!r}", hint="use a number with an optional unit: 64m, 1g") from None


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandbox: bytes of memory, max processes, CPUs (fractional)."""

    memory: int | None = None
    pids: int | None = None
    cpus: float | None = None


def _own_path(controller: str) -> str:
    """This process's cgroup path in a v1 hierarchy (or the v2 one for ``""``)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if (controller == "" and ctrls == "") or controller in ctrls.split(","):
                return path.lstrip("/")
    except OSError:
        pass
    return ""


def _v2_root() -> Path | None:
    for p in (_ROOT, _ROOT / "unified"):
        ctl = p / "cgroup.controllers"
        try:
            have = set(ctl.read_text().split())
        except OSError:
            continue
        if {"memory", "pids"} <= have:
            return p
    return None


@dataclass
class Cgroup:
    """One created cgroup (one dir per v1 controller, or one v2 dir)."""

    dirs: list[Path]
    version: int
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def create(cls, limits: Limits) -> "Cgroup":
        """Create the cgroup and set ``limits``. Raises BuildError when cgroups are unusable."""
        name = f"pybuild-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # the owner's pid: see sweep_stale
        v2 = _v2_root()
        try:
            if v2 is not None:
                d = v2 / _own_path("") / name
                d.mkdir()
                cg = cls([d], 2, limits)
                if limits.memory:
                    (d / "memory.max").write_text(str(limits.memory))
                    if (d / "memory.swap.max").exists():
                        (d / "memory.swap.max").write_text("0")
                if limits.pids:
                    (d / "pids.max").write_text(str(limits.pids))
                if limits.cpus:
                    (d / "cpu.max").write_text(f"{int(limits.cpus * 100000)} 100000")
                return cg
            dirs: list[Path] = []
            cg = cls(dirs, 1, limits)
            for ctrl in ("memory", "pids", "cpu"):
                if ctrl == "cpu" and not limits.cpus:
                    continue
                base = _ROOT / ctrl
                if not base.is_dir():
                    if ctrl == "cpu" or (ctrl == "memory" and not limits.memory) or (ctrl == "pids" and not limits.pids):
                        continue
                    raise BuildError(f"cgroup controller {ctrl} is not available", hint="run without that limit")
                d = base / _own_path(ctrl) / name
                d.mkdir()
                dirs.append(d)
                if ctrl == "memory" and limits.memory:
                    (d / "memory.limit_in_bytes").write_text(str(limits.memory))
                    sw = d / "memory.memsw.limit_in_bytes"
                    if sw.exists():
                        sw.write_text(str(limits.memory))
                if ctrl == "pids" and limits.pids:
                    (d / "pids.max").write_text(str(limits.pids))
                if ctrl == "cpu" and limits.cpus:
                    (d / "cpu.cfs_period_us").write_text("100000")
                    (d / "cpu.cfs_quota_us").write_text(str(int(limits.cpus * 100000)))
            return cg
        except OSError as e:
            raise BuildError(f"cannot create a cgroup: {e}",
                             hint="run as root, or without --memory/--pids-limit/--cpus") from None

    @classmethod
    def create_or_none(cls, limits: Limits) -> "Cgroup | None":
        """``create``, except that without limits a failure (e.g. rootless, no delegation)
        gives None: the process then simply runs in pybuild's own cgroup."""
        if limits.memory or limits.pids or limits.cpus:
            return cls.create(limits)
        try:
            return cls.create(limits)
        except BuildError:
            return None

    def procs_files(self) -> list[str]:
        """Files a process writes its pid to, to join the cgroup."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def oom_killed(self) -> bool:
        """True when the kernel's OOM killer killed a process in this cgroup."""
        for d in self.dirs:
            for f, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                try:
                    for line in (d / f).read_text().splitlines():
                        k, _, v = line.partition(" ")
                        if k == key and int(v) > 0:
                            return True
                except (OSError, ValueError):
                    continue
        return False

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                continue
        return sorted(out)

    def remove(self) -> None:
        """Kill whatever is left inside and remove the cgroup directories."""
        for _ in range(50):
            left = self.pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def owner_alive(name: str) -> bool | None:
    """Whether the pybuild process that made the cgroup ``pybuild-<pid>-<id>`` still runs
    (None for a name without a pid)."""
    parts = name.split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(min_age: float = 30.0) -> int:
    """Remove empty ``pybuild-*`` cgroups whose owner process is gone, or (names without an
    owner pid) older than ``min_age`` seconds: what a killed pybuild left. A live build's empty
    cgroup (made, not yet joined) is left alone. Returns how many were removed."""
    removed = 0
    bases = [_ROOT / c / _own_path(c) for c in ("memory", "pids", "cpu")]
    v2 = _v2_root()
    if v2 is not None:
        bases.append(v2 / _own_path(""))
    now = time.time()
    for base in bases:
        try:
            entries = [p for p in base.iterdir() if p.name.startswith("pybuild-") and p.is_dir()]
        except OSError:
            continue
        for d in entries:
            try:
                if (d / "cgroup.procs").read_text().strip():
                    continue
                alive = owner_alive(d.name)
                if alive or (alive is None and now - d.stat().st_mtime < min_age):
                    continue
                d.rmdir()
                removed += 1
            except OSError:
                continue
    return removed
