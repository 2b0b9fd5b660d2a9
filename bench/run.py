#!/usr/bin/env python3
"""Side-by-side benchmark: pybuild against buildah on the workloads of ../shared/bench/workloads.py.

    sudo python3 bench/run.py [--workloads app,smallfiles,multistage,deep,text] [--scale 1]
                              [--rounds 3] [--json OUT] [--profile DIR] [--workdir DIR] [--keep]

What it does (see bench/README.md):
  1. makes a busybox rootfs (testdata/make_busybox_rootfs.py), imports it with pybuild, starts a
     distribution registry (``docker-registry serve``) on a free 127.0.0.1 port and pushes it there
     as 127.0.0.1:PORT/library/busybox:latest: the base image both tools pull;
  2. writes the workload contexts with ``workloads.py OUT --base THAT --scale S --only …``;
  3. picks buildah's storage driver (overlay when a probe build works here, else vfs) and writes a
     registries.conf that marks the local registries insecure (CONTAINERS_REGISTRIES_CONF);
  4. for each round, for each workload, times five phases, pybuild then buildah for each phase
     (A B A B …): cold, noop, onefile, push, pull (fresh stores where the phase says so); then
     pybuild with --storage-driver vfs in rounds of its own (cold, noop, onefile);
  5. a dedicated run of each tool's cold build of ``text`` measures peak RSS
     (getrusage(RUSAGE_CHILDREN) in a wrapper process);
  6. prints medians, the ratio pybuild/buildah and the target per phase; ``--json`` writes the same
     plus every sample, CPU times, sub-steps and machine facts;
  7. with ``--profile DIR``, one more pybuild-only pass runs every pybuild command under cProfile
     (``python -m cProfile -o DIR/<workload>.<phase>.prof -m pybuild …``), after the timed rounds so
     it does not disturb them, and writes the top functions next to each profile.

Must run as root (buildah's overlay storage and pybuild's RUN sandbox). Standard library only; the
pybuild under test is ``--pybuild`` (default: the repository's .venv/bin/pybuild).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "testdata"))
from distribution_registry import DistributionRegistry, RegistryDidNotStart  # noqa: E402
from scratchfs import LoopExt4, ScratchFsError, is_mountpoint, mounts_at_or_below  # noqa: E402
ALL_WORKLOADS = ["app", "smallfiles", "multistage", "deep", "text"]
PHASES = ["cold", "noop", "onefile", "push", "pull"]
# ratio pybuild/buildah each phase must stay at or under (issue 6); deep cold has its own
TARGETS = {"cold": 0.5, "noop": 0.1, "onefile": 0.3, "push": 1.0, "pull": 0.5}
DEEP_COLD_TARGET = 0.3
RSS_TARGET_MIB = 150
# the context file each workload's onefile phase changes (one byte), relative to the context;
# None: the workload copies no context file (deep), so the phase does not apply
ONEFILE = {"app": "src/d01/f000.txt", "smallfiles": None, "multistage": "one/m00.txt",
           "deep": None, "text": "data/corpus.txt"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- helpers ---------------------------------------------------------------------------------------
def find_workloads_py(arg: str | None) -> Path:
    # The shared workloads live beside the repository (../shared/bench), as in CI.
    for cand in ([Path(arg)] if arg else [HERE.parent.parent / "shared/bench/workloads.py",
                                          Path("/work/shared/bench/workloads.py")]):
        if cand.is_file():
            return cand
    raise SystemExit("workloads.py not found: pass --workloads-py PATH")


def unmount_below(path: Path) -> None:
    """Lazily unmount everything mounted at or below ``path`` (buildah's overlay), deepest first."""
    for mp in mounts_at_or_below(path):
        subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rmtree(path: Path) -> None:
    """Remove ``path`` after lazily unmounting anything mounted below it (buildah's overlay)."""
    if not path.exists():
        return
    unmount_below(path)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():                      # e.g. immutable leftovers: say so, do not hide it
        subprocess.run(["rm", "-rf", str(path)], check=False)


def spread_subdirs(work: Path) -> bool:
    """Mark ``work`` as a top of directory hierarchies (``chattr +T``), so that ext4 places each
    directory made in it (every store, every registry) in a block group of its own choosing, as it
    does for directories made at the root of the file system, such as /var/lib/pybuild and
    /var/lib/containers. Without it every store lands in ``work``'s block group, and the files one
    tool deletes there (buildah removes each build container's files) tax every file the other tool
    creates in the next minute (see :class:`Trash`). True when the flag was set."""
    p = subprocess.run(["chattr", "+T", str(work)], capture_output=True, text=True)
    if p.returncode != 0:
        log(f"chattr +T {work} failed ({(p.stderr or p.stdout).strip()}): stores share one block group")
    return p.returncode == 0


class Trash:
    """Where trees the benchmark is done with go: deleted at once on the benchmark's own scratch
    file system (``delete=True``), renamed into ``trash/`` until the end of the run on the host's.

    Why delete on the scratch file system: everything the run writes stays in the page cache while
    its files exist. Kept to the end, a full run's stores (about 10 GiB) filled this VM's 24 GiB
    with cache by the second round, and writing into a full cache costs more here than on a
    physical machine: app cold took 2.1-2.5 s with 1.0-1.3 s of system time, against 1.4-1.5 s and
    0.35 s with the memory free, the time going to ``copy_folio_from_iter_atomic`` (the copy into a
    new cache page) while kswapd reclaimed, no direct reclaim. Deleting a store frees its cache, and
    on an ext4 with a journal deleting costs the next command nothing (below).

    Why not delete on the host's file system: on ext4 without a journal (this machine's root file system) a deleted inode's number is not
    reused for 60 s (300 s while its inode-table block is dirty), and every inode allocation in its
    block group steps over it (``recently_deleted()`` in fs/ext4/ialloc.c, seen with ``perf``:
    ``recently_deleted``/``find_get_block_common`` under ``ext4_create``). Deleting a store of
    thousands of files between phases taxed every file the next minute's builds created, whichever
    tool came next: app cold took 3.4-3.6 s (3.3 s system) right after deleting a store against
    2.2-2.5 s (0.8 s system) after moving it aside. A rename frees no inode; the trash goes with the
    scratch dir at the end of the run, after the timed rounds, the peak-RSS builds and the profiles.
    """

    def __init__(self, work: Path, delete: bool) -> None:
        self.dir = work / "trash"
        self.delete = delete
        self.n = 0

    def put(self, path: Path) -> None:
        """Delete ``path`` (if it exists) or move it into the trash, unmounting what is mounted
        below it first."""
        if not path.exists():
            return
        if self.delete:
            rmtree(path)
            return
        unmount_below(path)
        self.dir.mkdir(exist_ok=True)
        while True:  # a --workdir used before may hold a trash already
            self.n += 1
            dest = self.dir / f"{self.n:04d}-{path.name}"
            if not dest.exists():
                break
        os.rename(path, dest)


class Registry(DistributionRegistry):
    """testdata/distribution_registry.py's registry with its own empty storage in ``workdir``,
    started at once; exits the benchmark when it cannot start."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, access_log=False)
        self.dir = workdir
        try:
            self.start()
        except RegistryDidNotStart as e:
            raise SystemExit(str(e)) from None


class Runner:
    """Runs commands with output to a log file; returns wall seconds and child CPU seconds."""

    def __init__(self, logdir: Path, env: dict[str, str], cwd: Path) -> None:
        self.logdir = logdir
        self.env = env
        self.cwd = cwd          # never the repository: python would import its working tree from there
        self.n = 0

    def run(self, argv: list[str], label: str, cwd: Path | None = None, check: bool = True,
            settle: bool = True) -> dict[str, Any]:
        """``settle``: write back all dirty data first (untimed), so that a command does not pay
        for the writeback of what the previous command, often the other tool, left behind."""
        self.n += 1
        if settle:
            os.sync()
        logpath = self.logdir / f"{self.n:04d}-{label}.log"
        with open(logpath, "wb") as lf:
            lf.write((" ".join(argv) + "\n\n").encode())
            lf.flush()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            p = subprocess.run(argv, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=self.env, cwd=cwd or self.cwd)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        res = {"wall": wall, "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
               "cpu": cpu, "rc": p.returncode, "log": str(logpath)}
        if p.returncode != 0:
            tail = logpath.read_text(errors="replace")[-1500:]
            msg = f"FAILED ({p.returncode}): {' '.join(argv)}\n  log {logpath}:\n{tail}"
            if check:
                raise RuntimeError(msg)
            log(msg)
        return res


def peak_rss_kib(argv: list[str], env: dict[str, str], logpath: Path, cwd: Path) -> tuple[int, float, int]:
    """Run argv in a fresh wrapper process; return (peak RSS KiB of its largest descendant, wall, rc)."""
    code = ("import resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "rc = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1], 'ab'), stderr=subprocess.STDOUT).returncode\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t, rc)\n")
    out = subprocess.run([sys.executable, "-c", code, str(logpath), *argv], env=env, capture_output=True,
                         text=True, check=True, cwd=cwd).stdout.split()
    return int(out[0]), float(out[1]), int(out[2])


def flip_byte(path: Path) -> tuple[int, int, int]:
    """XOR one byte in the middle of ``path``; return (offset, mtime_ns, atime_ns) to undo it."""
    st = path.stat()
    off = st.st_size // 2
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x01]))
    return off, st.st_mtime_ns, st.st_atime_ns


def unflip_byte(path: Path, undo: tuple[int, int, int]) -> None:
    off, mtime, atime = undo
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x01]))
    os.utime(path, ns=(atime, mtime))


def onefile_target(ctx: Path, workload: str) -> Path | None:
    """The context file the onefile phase changes: the fixed choice, else the first non-empty file
    (sorted) under the context that is not the Dockerfile; None when the workload copies nothing."""
    if workload in ONEFILE:
        rel = ONEFILE[workload]
        if rel is None and workload == "deep":
            return None
        if rel is not None and (ctx / rel).is_file() and (ctx / rel).stat().st_size > 0:
            return ctx / rel
    for dp, dns, fns in sorted(os.walk(ctx)):
        dns.sort()
        for fn in sorted(fns):
            p = Path(dp) / fn
            if p.name != "Dockerfile" and p.stat().st_size > 0:
                return p
    return None


def machine_info(workdir: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"kernel": platform.release(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(workdir)], capture_output=True, text=True)
    info["workdir_fs"] = fs.stdout.strip()
    bv = subprocess.run(["buildah", "--version"], capture_output=True, text=True)
    info["buildah"] = bv.stdout.strip()
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    info["pybuild_git"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return info


def git_rev(rev: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", rev], capture_output=True,
                          text=True, check=True).stdout.strip()


def make_snapshot(rev: str, dest: Path, python: str) -> Path:
    """``git archive REV`` into dest/src, laid out as installed packages under dest/lib (the
    package-dir mapping of pyproject.toml: store/ -> pybuild/store …); returns dest/lib."""
    import tomllib
    rmtree(dest)
    src, lib = dest / "src", dest / "lib"
    src.mkdir(parents=True)
    arch = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=arch, check=True)
    cfg = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]
    pkgdir = cfg.get("package-dir", {})
    for pkg in sorted(cfg["packages"], key=lambda p: p.count(".")):
        d = src / pkgdir.get(pkg, pkg.replace(".", "/"))
        out = lib / pkg.replace(".", "/")
        out.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*.py"):
            shutil.copy2(f, out / f.name)
    subprocess.run([python, "-m", "compileall", "-q", str(lib)], check=False)
    return lib


def make_venv(dest: Path, python: str, lib: Path) -> str:
    """A venv that sees ``lib`` and the dependencies installed for ``python``, the way a
    ``pip install`` of pybuild does: the dependencies' folder is a plain path entry, so the
    development venv's editable-install finder (about 10 ms of start-up per command) is not
    loaded. Returns the venv's python."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(dest)], check=True)
    deps = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    vpy = str(dest / "bin" / "python")
    site = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "pybuild-bench.pth").write_text(f"{lib}\n{deps}\n")
    return vpy


# -- the two tools ---------------------------------------------------------------------------------
class Pybuild:
    name = "pybuild"

    def __init__(self, binary: list[str], python: str, root: Path) -> None:
        self.binary = binary
        self.python = python
        self.root = root

    def argv(self, store: Path, *args: str, profile: Path | None = None) -> list[str]:
        if profile is not None:
            return [self.python, "-P", "-m", "cProfile", "-o", str(profile), "-m", "pybuild", "--root", str(store),
                    *args]
        return [*self.binary, "--root", str(store), *args]

    def store(self, tag: str) -> Path:
        return self.root / tag

    def build(self, store: Path, tag: str, ctx: Path, **kw: Any) -> list[str]:
        return self.argv(store, "build", "-t", tag, "--progress", "plain", str(ctx), **kw)

    def save(self, store: Path, tag: str, out: Path, **kw: Any) -> list[str]:
        return self.argv(store, "save", tag, "-o", str(out), **kw)

    def push(self, store: Path, tag: str, ref: str, **kw: Any) -> list[str]:
        return self.argv(store, "push", tag, ref, **kw)

    def pull(self, store: Path, ref: str, **kw: Any) -> list[str]:
        return self.argv(store, "pull", ref, **kw)


class PybuildVfs(Pybuild):
    """pybuild with the copy (vfs) snapshotter for RUN steps: what the fallback costs."""
    name = "pybuild-vfs"

    def build(self, store: Path, tag: str, ctx: Path, **kw: Any) -> list[str]:
        return self.argv(store, "build", "--storage-driver", "vfs", "-t", tag, "--progress", "plain", str(ctx), **kw)


class Buildah:
    name = "buildah"

    def __init__(self, root: Path, driver: str) -> None:
        self.root = root
        self.driver = driver

    def g(self, store: Path) -> list[str]:
        return ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"),
                "--storage-driver", self.driver]

    def build(self, store: Path, tag: str, ctx: Path) -> list[str]:
        return [*self.g(store), "bud", "--isolation", "chroot", "--layers", "--tls-verify=false", "-t", tag, str(ctx)]

    def save(self, store: Path, tag: str, out: Path) -> list[str]:
        return [*self.g(store), "push", tag, f"oci-archive:{out}"]

    def push(self, store: Path, tag: str, ref: str) -> list[str]:
        return [*self.g(store), "push", "--tls-verify=false", tag, f"docker://{ref}"]

    def pull(self, store: Path, ref: str) -> list[str]:
        return [*self.g(store), "pull", "--tls-verify=false", ref]



def probe_driver(work: Path, base: str, env: dict[str, str], want: str, trash: Trash) -> str:
    """overlay if a tiny buildah build (pull + RUN + commit) works with it here, else vfs."""
    if want != "auto":
        return want
    probe = work / "probe"
    ctx = probe / "ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN echo probe > /probe\n")
    b = Buildah(probe, "overlay")
    p = subprocess.run(b.build(probe / "s", "probe", ctx), env=env, capture_output=True, text=True)
    ok = p.returncode == 0
    if not ok:
        log(f"buildah overlay probe failed, using vfs:\n{(p.stdout + p.stderr)[-1500:]}")
    trash.put(probe)
    return "overlay" if ok else "vfs"


# -- the benchmark ---------------------------------------------------------------------------------
def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS),
                    help="comma-separated subset of " + ",".join(ALL_WORKLOADS))
    ap.add_argument("--scale", type=float, default=1.0, help="passed to workloads.py (default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, each tool once per phase (default 3)")
    ap.add_argument("--json", metavar="OUT", help="write results (medians, samples, machine) as JSON")
    ap.add_argument("--profile", metavar="DIR", help="after the rounds, profile every pybuild phase with cProfile into DIR")
    ap.add_argument("--workdir", metavar="DIR", help="scratch dir (default: a new dir under /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (contexts, logs)")
    ap.add_argument("--scratch-fs", choices=["ext4", "host"], default="ext4",
                    help="ext4 (default): a new ext4 with mkfs's defaults, journal on, in a sparse file "
                         "beside the scratch dir, loop-mounted on it for the run (see bench/scratchfs.py); "
                         "host: the scratch dir on the file system that holds it. A --workdir that is a "
                         "mount point is used as it is")
    ap.add_argument("--pybuild", default=str(REPO / ".venv/bin/pybuild"), help="pybuild executable under test")
    ap.add_argument("--python", default=None, help="python with pybuild importable (for --profile; default: "
                    "the pybuild executable's venv python)")
    ap.add_argument("--rev", default=None, metavar="GITREV",
                    help="bench this commit of the repository (git archive into the scratch dir, run with the "
                         "snapshot's own venv, see make_venv) instead of the working tree; e.g. --rev HEAD")
    ap.add_argument("--workloads-py", default=None, help="workloads.py (default: bench/workloads.py)")
    ap.add_argument("--storage-driver", default="auto", choices=["auto", "overlay", "vfs"],
                    help="buildah storage driver (default: overlay when it works, else vfs)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS run")
    ap.add_argument("--no-vfs", dest="vfs", action="store_false",
                    help="skip the pybuild --storage-driver vfs column (cold, noop, onefile)")
    ap.add_argument("--rates", action="store_true", help="also measure raw rates (bench/rates.py) into the JSON")
    a = ap.parse_args()

    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    bad = [w for w in workloads if w not in ALL_WORKLOADS]
    if bad:
        ap.error(f"unknown workloads {bad}; choose from {ALL_WORKLOADS}")
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    if os.geteuid() != 0:
        ap.error("run as root (buildah storage, pybuild RUN sandbox)")
    for tool in ("buildah", "docker-registry", "umount"):
        if shutil.which(tool) is None and not Path(f"/usr/bin/{tool}").exists():
            ap.error(f"{tool} not found: see bench/README.md for what to apt-get install")
    if not Path(a.pybuild).exists():
        ap.error(f"{a.pybuild} not found: make a venv and pip install -e . (see README.md)")
    python = a.python or str(Path(a.pybuild).parent / "python")

    started = time.time()
    work = Path(a.workdir).resolve() if a.workdir else Path(tempfile.mkdtemp(prefix="pybuild-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    scratch: LoopExt4 | None = None
    if a.scratch_fs == "ext4" and not is_mountpoint(work):
        scratch = LoopExt4(Path(str(work) + ".ext4"), work)
        try:
            scratch.mount()
        except ScratchFsError as e:
            raise SystemExit(f"scratch file system: {e}; --scratch-fs host runs on {work.parent}'s own file "
                             f"system instead (see bench/README.md)") from None
        log(f"scratch file system: {scratch.image} ({'new' if scratch.formatted else 'kept from a run before'}), "
            f"ext4 with a journal on {scratch.device}, mounted on {work}")
    topdir = spread_subdirs(work)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(work / "registries.conf"), "TMPDIR": str(tmp)}
    for k in ("PYBUILD_ROOT", "BUILDAH_LAYERS", "BUILDAH_FORMAT", "BUILDAH_ISOLATION", "SOURCE_DATE_EPOCH",
              "PYTHONDONTWRITEBYTECODE"):
        env.pop(k, None)  # an installed pybuild has its byte code compiled: so does the one under test
    pb_argv = [a.pybuild]
    rev_sha = ""
    if a.rev:
        # bench a fixed commit, not a working tree other people may be editing during the run;
        # -P and a cwd outside the repository keep python from importing the working tree instead
        rev_sha = git_rev(a.rev)
        lib = make_snapshot(rev_sha, work / "snapshot", python)
        python = make_venv(work / "snapshot" / "venv", python, lib)
        pb_argv = [python, "-P", "-m", "pybuild"]
    else:
        subprocess.run([python, "-m", "compileall", "-q", *(str(REPO / d) for d in ("pybuild", "builder", "store",
                                                                                     "registry"))], check=False)
    runner = Runner(logs, env, work)
    trash = Trash(work, delete=scratch is not None)
    registries: list[Registry] = []
    log(f"scratch dir: {work}")
    probe = subprocess.run([python, "-P", "-c", "import pybuild.builder.build as b; print(b.__file__)"], env=env,
                           cwd=work, capture_output=True, text=True)
    pybuild_module = probe.stdout.strip() or probe.stderr.strip()[-300:]
    log(f"pybuild under test: {a.rev + ' = ' + rev_sha if a.rev else 'working tree'}: {pybuild_module}")
    if a.rev and not pybuild_module.startswith(str(work / "snapshot")):
        raise SystemExit(f"the snapshot is not what python imports: {pybuild_module}")
    try:
        # 1. the base image in a local registry
        base_reg = Registry(work / "registry-base")
        registries.append(base_reg)
        base = f"{base_reg.host}/library/busybox:latest"
        rootfs = work / "busybox-rootfs.tar"
        subprocess.run([sys.executable, str(REPO / "testdata/make_busybox_rootfs.py"), str(rootfs)], check=True,
                       stdout=subprocess.DEVNULL)
        seed = work / "seed-store"
        runner.run([*pb_argv, "--root", str(seed), "import", str(rootfs), "busybox:latest"], "seed-import")
        runner.run([*pb_argv, "--root", str(seed), "push", "busybox:latest", base], "seed-push")
        trash.put(seed)

        def write_registries_conf(hosts: list[str]) -> None:
            (work / "registries.conf").write_text(
                "unqualified-search-registries = []\nshort-name-mode = \"permissive\"\n" +
                "".join(f'\n[[registry]]\nlocation = "{h}"\ninsecure = true\n' for h in hosts))
        write_registries_conf([base_reg.host])

        # 2. contexts
        wpy = find_workloads_py(a.workloads_py)
        ctxroot = work / "contexts"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(wpy), str(ctxroot), "--base", base, "--scale", str(a.scale),
                        "--only", *workloads], check=True, stderr=subprocess.DEVNULL)
        log(f"contexts ({', '.join(workloads)}, scale {a.scale}) written in {time.perf_counter() - t0:.1f}s")

        # 3. buildah storage driver
        driver = probe_driver(work, base, env, a.storage_driver, trash)
        log(f"buildah storage driver: {driver}")
        pb = Pybuild(pb_argv, python, work / "pb")
        bh = Buildah(work / "bh", driver)
        tools: list[Any] = [pb, bh]
        pbv = PybuildVfs(pb_argv, python, work / "pbv")
        build_tools: list[Any] = [pb, pbv, bh] if a.vfs else tools  # cold, noop, onefile (pbv after the rounds)

        samples: dict[str, dict[str, dict[str, list[Any]]]] = {
            w: {ph: {t.name: [] for t in build_tools} for ph in PHASES} for w in workloads}
        sizes: dict[str, dict[str, int]] = {w: {} for w in workloads}

        def record(w: str, ph: str, tool: str, steps: list[dict[str, Any]]) -> None:
            ok = all(s["rc"] == 0 for s in steps)
            wall = sum(s["wall"] for s in steps) if ok else None
            samples[w][ph][tool].append({"wall": wall, "cpu": sum(s["cpu"] for s in steps),
                                         "steps": [{k: s[k] for k in ("wall", "user", "sys", "rc")} for s in steps]})
            log(f"  {w:10s} {ph:8s} {tool:8s} {'FAILED' if wall is None else f'{wall:8.2f}s'}"
                f"  (cpu {sum(s['cpu'] for s in steps):.2f}s)")

        def build_phases(w: str, ctx: Path, tag: str, stores: dict[str, Path], which: list[Any]) -> None:
            """cold, noop and onefile of workload ``w`` for the tools ``which``, in turn."""
            # cold: empty store, build with no cache, export an OCI archive
            for t in which:
                out = work / f"{t.name}-{w}.oci.tar"
                out.unlink(missing_ok=True)
                s1 = runner.run(t.build(stores[t.name], tag, ctx), f"{t.name}-{w}-cold-build", check=False)
                s2 = runner.run(t.save(stores[t.name], tag, out), f"{t.name}-{w}-cold-save", check=False,
                                settle=False) \
                    if s1["rc"] == 0 else s1
                record(w, "cold", t.name, [s1, s2] if s2 is not s1 else [s1])
                if out.exists():
                    sizes[w][t.name] = out.stat().st_size
                    out.unlink()
            # noop: rebuild, nothing changed
            for t in which:
                record(w, "noop", t.name, [runner.run(t.build(stores[t.name], tag, ctx), f"{t.name}-{w}-noop",
                                                      check=False)])
            # onefile: one byte of one copied file changed, rebuild; then restore (untimed rebuild)
            target_file = onefile_target(ctx, w)
            if target_file is not None:
                for t in which:
                    undo = flip_byte(target_file)
                    try:
                        record(w, "onefile", t.name, [runner.run(t.build(stores[t.name], tag, ctx),
                                                                 f"{t.name}-{w}-onefile", check=False)])
                    finally:
                        unflip_byte(target_file, undo)
                    runner.run(t.build(stores[t.name], tag, ctx), f"{t.name}-{w}-restore", check=False)

        # 4. rounds
        def round_dirs(rnd: int, w: str) -> tuple[dict[str, Path], dict[str, Path], Path]:
            return ({pb.name: work / f"pb-r{rnd}-{w}", bh.name: work / f"bh-r{rnd}-{w}",
                     pbv.name: work / f"pbv-r{rnd}-{w}"},
                    {pb.name: work / f"pb-r{rnd}-{w}-pull", bh.name: work / f"bh-r{rnd}-{w}-pull"},
                    work / f"registry-r{rnd}-{w}")
        # Every store and registry directory of every round is made now, before anything is
        # deleted: ext4 picks a block group for each (see spread_subdirs) while none holds
        # recently deleted inodes. Made later, a store would be drawn to the group a tool had
        # just emptied (the fewest directories), and pay for its deleted inodes (see Trash).
        for rnd in range(1, a.rounds + 1):
            for w in workloads:
                st, pl, rg = round_dirs(rnd, w)
                for d in (*st.values(), *pl.values(), rg):
                    trash.put(d)  # left by an earlier run in the same --workdir
                    d.mkdir()
        for rnd in range(1, a.rounds + 1):
            log(f"round {rnd}/{a.rounds}")
            for w in workloads:
                ctx = ctxroot / w
                tag = f"bench-{w}:latest"
                stores, pulls, regdir = round_dirs(rnd, w)
                target = Registry(regdir)
                registries.append(target)
                write_registries_conf([base_reg.host, target.host])
                build_phases(w, ctx, tag, stores, tools)
                # push: to a fresh registry (nothing there yet, so every blob is uploaded)
                refs = {t.name: f"{target.host}/bench/{t.name}-{w}:r{rnd}" for t in tools}
                for t in tools:
                    record(w, "push", t.name, [runner.run(t.push(stores[t.name], tag, refs[t.name]),
                                                          f"{t.name}-{w}-push", check=False)])
                # pull: what the tool pushed, into an empty store
                for t in tools:
                    record(w, "pull", t.name, [runner.run(t.pull(pulls[t.name], refs[t.name]),
                                                          f"{t.name}-{w}-pull", check=False)])
                target.stop()
                registries.remove(target)
                for d in (target.dir, stores[pb.name], stores[bh.name], *pulls.values()):
                    trash.put(d)
        write_registries_conf([base_reg.host])

        # 4b. pybuild-vfs: the same build phases in rounds of their own, after the A/B rounds. Its
        # RUN steps copy the whole file system and delete the copy (app: ~11,000 files a build),
        # and on this file system deletions slow the next minute's file creations (see Trash): run
        # between pybuild and buildah, it taxed whichever came next.
        if a.vfs:
            for rnd in range(1, a.rounds + 1):
                log(f"pybuild-vfs round {rnd}/{a.rounds}")
                for w in workloads:
                    stores, _, _ = round_dirs(rnd, w)
                    build_phases(w, ctxroot / w, f"bench-{w}:latest", stores, [pbv])
                    trash.put(stores[pbv.name])

        # 5. peak RSS: a dedicated cold build of text (and of the others, for context)
        rss: dict[str, Any] = {}
        if not a.no_rss:
            for w in (["text"] if "text" in workloads else workloads[:1]):
                ctx = ctxroot / w
                for t in tools:
                    store = work / f"rss-{t.name}-{w}"
                    trash.put(store)
                    kib, wall, rc = peak_rss_kib(t.build(store, f"bench-{w}:latest", ctx), env,
                                                 logs / f"rss-{t.name}-{w}.log", work)
                    entry = {"build_peak_rss_mib": round(kib / 1024, 1), "build_wall": wall, "rc": rc}
                    kib, wall, rc = peak_rss_kib(t.save(store, f"bench-{w}:latest", work / "rss.oci.tar"), env,
                                                 logs / f"rss-{t.name}-{w}-save.log", work)
                    entry.update({"save_peak_rss_mib": round(kib / 1024, 1), "save_wall": wall, "save_rc": rc})
                    (work / "rss.oci.tar").unlink(missing_ok=True)
                    rss.setdefault(w, {})[t.name] = entry
                    log(f"peak RSS {w} {t.name}: build {entry['build_peak_rss_mib']} MiB, "
                        f"save {entry['save_peak_rss_mib']} MiB")
                    trash.put(store)

        # 6. profiles (pybuild only, after the timed rounds)
        profiles: dict[str, Any] = {}
        if a.profile:
            profiles = run_profiles(Path(a.profile).resolve(), pb, ctxroot, workloads, work, runner,
                                    base_reg, trash)

        rates: dict[str, Any] = {}
        if a.rates:
            # the venv's python: it has zstandard, as pybuild does
            subprocess.run([python, str(HERE / "rates.py"), "--json", str(work / "rates.json")], check=True,
                           stdout=subprocess.DEVNULL)
            rates = json.loads((work / "rates.json").read_text())

        # 7. report
        machine = machine_info(work)
        machine["workdir_topdir"] = topdir
        machine["scratch_fs"] = scratch.describe() if scratch else {"kind": "host"}
        if a.rev:
            machine["pybuild_git"] = f"{rev_sha} (snapshot of {a.rev})"
        machine["pybuild_module"] = pybuild_module
        report = summarize(samples, workloads, a, driver, sizes, rss, machine, started, rates, profiles)
        report["config"]["pybuild"] = " ".join(pb_argv)
        print(render(report))
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
            log(f"wrote {a.json}")
        return 0
    finally:
        for r in registries:
            r.stop()
        if scratch is not None:
            # nothing is deleted file by file: the whole file system goes with its image
            unmount_below(work)
            scratch.unmount()
            if a.keep:
                log(f"kept {scratch.image}: mount -o loop {scratch.image} {work} to look inside")
            else:
                scratch.image.unlink(missing_ok=True)
                if not any(work.iterdir()):
                    work.rmdir()
        elif not a.keep:
            for p in sorted(work.glob("bh*")) + sorted(work.glob("rss-*")):
                rmtree(p)
            rmtree(work)
        else:
            log(f"kept {work}")


def run_profiles(outdir: Path, pb: Pybuild, ctxroot: Path, workloads: list[str], work: Path, runner: Runner,
                 base_reg: Registry, trash: Trash) -> dict[str, Any]:
    import pstats
    outdir.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    for w in workloads:
        ctx = ctxroot / w
        tag = f"bench-{w}:latest"
        target = Registry(work / f"registry-prof-{w}")
        store, pulled = work / f"prof-{w}", work / f"prof-{w}-pull"
        trash.put(store)
        trash.put(pulled)
        steps: list[tuple[str, list[str]]] = [
            ("cold-build", pb.build(store, tag, ctx, profile=outdir / f"{w}.cold-build.prof")),
            ("cold-save", pb.save(store, tag, work / "prof.oci.tar", profile=outdir / f"{w}.cold-save.prof")),
            ("noop", pb.build(store, tag, ctx, profile=outdir / f"{w}.noop.prof")),
        ]
        tf = onefile_target(ctx, w)
        try:
            for name, argv in steps:
                r = runner.run(argv, f"prof-{w}-{name}", check=False)
                done[f"{w}.{name}"] = r["wall"]
            if tf is not None:
                undo = flip_byte(tf)
                try:
                    r = runner.run(pb.build(store, tag, ctx, profile=outdir / f"{w}.onefile.prof"),
                                   f"prof-{w}-onefile", check=False)
                    done[f"{w}.onefile"] = r["wall"]
                finally:
                    unflip_byte(tf, undo)
                runner.run(pb.build(store, tag, ctx), f"prof-{w}-restore", check=False)
            ref = f"{target.host}/bench/prof-{w}:latest"
            r = runner.run(pb.push(store, tag, ref, profile=outdir / f"{w}.push.prof"), f"prof-{w}-push", check=False)
            done[f"{w}.push"] = r["wall"]
            r = runner.run(pb.pull(pulled, ref, profile=outdir / f"{w}.pull.prof"), f"prof-{w}-pull", check=False)
            done[f"{w}.pull"] = r["wall"]
        finally:
            target.stop()
            for d in (target.dir, store, pulled):
                trash.put(d)
            (work / "prof.oci.tar").unlink(missing_ok=True)
    for prof in sorted(outdir.glob("*.prof")):
        with open(prof.with_suffix(".txt"), "w") as f:
            st = pstats.Stats(str(prof), stream=f)
            st.strip_dirs()
            f.write(f"== {prof.name}: top 25 by cumulative time\n")
            st.sort_stats("cumulative").print_stats(25)
            f.write(f"== {prof.name}: top 25 by own time\n")
            st.sort_stats("tottime").print_stats(25)
    log(f"profiles in {outdir}")
    return {"dir": str(outdir), "walls": done}


def summarize(samples: dict[str, Any], workloads: list[str], a: argparse.Namespace, driver: str,
              sizes: dict[str, Any], rss: dict[str, Any], machine: dict[str, Any], started: float,
              rates: dict[str, Any], profiles: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for w in workloads:
        for ph in PHASES:
            s = samples[w][ph]
            if not s["pybuild"] and not s["buildah"]:
                rows.append({"workload": w, "phase": ph, "applies": False})
                continue
            pm = median([x["wall"] for x in s["pybuild"]])
            bm = median([x["wall"] for x in s["buildah"]])
            target = DEEP_COLD_TARGET if (w == "deep" and ph == "cold") else TARGETS[ph]
            ratio = pm / bm if pm is not None and bm else None
            vs = s.get("pybuild-vfs") or []
            vm = median([x["wall"] for x in vs]) if vs else None
            rows.append({"workload": w, "phase": ph, "applies": True,
                         "pybuild_vfs_median_s": vm, "pybuild_vfs_ratio": vm / bm if vm is not None and bm else None,
                         "pybuild_median_s": pm, "buildah_median_s": bm, "ratio": ratio, "target": target,
                         "met": (ratio is not None and ratio <= target),
                         "pybuild_cpu_median_s": median([x["cpu"] for x in s["pybuild"]]),
                         "buildah_cpu_median_s": median([x["cpu"] for x in s["buildah"]]),
                         "pybuild_samples_s": [x["wall"] for x in s["pybuild"]],
                         "buildah_samples_s": [x["wall"] for x in s["buildah"]]})
    rss_row = None
    if "text" in rss and "pybuild" in rss["text"]:
        v = rss["text"]["pybuild"]["build_peak_rss_mib"]
        rss_row = {"pybuild_text_build_peak_rss_mib": v, "target_mib": RSS_TARGET_MIB, "met": v < RSS_TARGET_MIB}
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": machine,
        "config": {"workloads": workloads, "scale": a.scale, "rounds": a.rounds,
                   "buildah_storage_driver": driver, "pybuild": a.pybuild,
                   "order": "pybuild then buildah, per phase; pybuild-vfs in rounds of its own after them",
                   "deletions": ("a store is deleted when its phases are done (own ext4 with a journal)"
                                 if machine.get("scratch_fs", {}).get("kind") == "loop-ext4" else "none during the rounds (trash dir)") + "; stores made first, spread by chattr +T",
                   "scratch_fs": a.scratch_fs},
        "rows": rows,
        "oci_archive_bytes": sizes,
        "peak_rss": rss,
        "rss_target": rss_row,
        "samples": samples,
        "rates": rates,
        "profiles": profiles,
    }


def render(rep: dict[str, Any]) -> str:
    m, c = rep["machine"], rep["config"]
    out = [f"pybuild vs buildah — {rep['date']} — {m.get('cpu', '?')} x{m.get('cpus')} , "
           f"{m.get('mem_gib')} GiB, kernel {m.get('kernel')}, {m.get('workdir_fs')}",
           f"{m.get('buildah')} (storage driver {c['buildah_storage_driver']}, isolation chroot); "
           f"pybuild {m.get('pybuild_git')}; scale {c['scale']}, {c['rounds']} round(s), medians of wall seconds",
           "",
           f"{'workload':11s} {'phase':8s} {'pybuild':>9s} {'buildah':>9s} {'ratio':>7s} {'target':>7s}  met"
           f"  {'pb-vfs':>8s} {'vfs/bh':>7s}",
           "-" * 78]
    for r in rep["rows"]:
        if not r["applies"]:
            out.append(f"{r['workload']:11s} {r['phase']:8s} {'—':>9s} {'—':>9s} {'—':>7s} {'':>7s}  n/a")
            continue
        f = lambda v, d=2: "FAIL" if v is None else f"{v:.{d}f}"  # noqa: E731
        vfs = (f"  {f(r['pybuild_vfs_median_s']):>8s} {f(r['pybuild_vfs_ratio'], 3):>7s}"
               if r.get("pybuild_vfs_median_s") is not None else "")
        out.append(f"{r['workload']:11s} {r['phase']:8s} {f(r['pybuild_median_s']):>9s} {f(r['buildah_median_s']):>9s} "
                   f"{f(r['ratio'], 3):>7s} {'≤' + str(r['target']):>7s}  {'yes' if r['met'] else 'NO '}{vfs}")
    if rep["peak_rss"]:
        out.append("")
        for w, per in rep["peak_rss"].items():
            for tool, e in per.items():
                out.append(f"peak RSS {tool} build {w}: {e['build_peak_rss_mib']} MiB "
                           f"(save {e['save_peak_rss_mib']} MiB)")
        if rep["rss_target"]:
            r = rep["rss_target"]
            out.append(f"target: pybuild text build < {r['target_mib']} MiB: {'yes' if r['met'] else 'NO'}")
    met = sum(1 for r in rep["rows"] if r["applies"] and r["met"])
    total = sum(1 for r in rep["rows"] if r["applies"])
    out.append(f"\n{met}/{total} phase targets met; run took {rep['duration_s']:.0f}s")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
