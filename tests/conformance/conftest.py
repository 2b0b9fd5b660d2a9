"""Harness of the build conformance suite: pybuild against buildah 1.28 as the oracle.

One case = one folder under testdata/conformance/ (see its README.md). For every case selected
in a session the harness

1. prepares the build context once in a temp dir (a copy of the case folder without case.json,
   plus what git cannot store: modes, owners, empty dirs, symlinks, hardlinks, tarballs,
   files served over HTTP), and both builders build from that same directory;
2. builds it with buildah in an isolated storage (``--root/--runroot`` under the session's temp
   dir, ``--storage-driver vfs``, a registries.conf without any registry so nothing reaches the
   network, ``--pull=never``), the busybox base having been put there from ``pybuild save`` with
   ``buildah pull oci-archive:…`` and ``buildah tag … docker.io/library/busybox:latest``;
   selected cases are built up front, a few in parallel; the flattened result is cached in
   ``$TMPDIR/pybuild-conformance-<uid>/`` keyed by everything that can change it (buildah
   version, base image digest, the prepared context, the command line), so a second session
   does not rebuild (``PYBUILD_CONFORMANCE_REBUILD=1`` forces a rebuild);
3. builds it with pybuild through the CLI contract (``pybuild --root R build -t conf-CASE …`` then
   ``pybuild --root R save conf-CASE -o FILE``) — that half runs in the test itself.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import PB  # tests/conftest.py (tests/ is on sys.path, as for tests/test_cli.py)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import flatten as fl  # noqa: E402

REPO = HERE.parent.parent
CASES_DIR = REPO / "testdata" / "conformance"
HARNESS_VERSION = "4"          # bump when the buildah command line or the cached format changes
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILDAH_FLAGS = ["--isolation", "chroot", "--pull=never", "--layers", "--format", "docker"]
REGISTRIES_CONF = """\
# pybuild conformance: no registry at all; "busybox" resolves to docker.io/library/busybox,
# which is already in the isolated storage, and --pull=never keeps buildah off the network.
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
"""


# ---------------------------------------------------------------------------------------------
# cases

@dataclass(frozen=True)
class Case:
    name: str
    dir: Path
    spec: dict[str, Any] = field(hash=False, compare=False)

    @property
    def oracle(self) -> str:
        return self.spec.get("oracle", "buildah")

    @property
    def tag(self) -> str:
        return f"conf-{self.name}"

    @property
    def dockerfile(self) -> str | None:
        return self.spec.get("dockerfile")

    @property
    def expect_error(self) -> bool:
        return bool(self.spec.get("expect_error"))

    def build_args(self, http_base: str | None) -> list[str]:
        out = []
        for k, v in self.spec.get("build_args", {}).items():
            if http_base is not None:
                v = v.replace("{http}", f"{http_base}/{self.name}")
            out.append(f"{k}={v}")
        return out

    def common_flags(self, http_base: str | None) -> list[str]:
        """Flags both builders take in the same spelling (docker's)."""
        flags: list[str] = []
        if self.dockerfile:
            flags += ["-f", self.dockerfile]
        for a in self.build_args(http_base):
            flags += ["--build-arg", a]
        if self.spec.get("target"):
            flags += ["--target", self.spec["target"]]
        for k, v in self.spec.get("labels", {}).items():
            flags += ["--label", f"{k}={v}"]
        return flags


def _load_cases() -> list[Case]:
    cases = []
    if not CASES_DIR.is_dir():
        return cases
    for d in sorted(CASES_DIR.iterdir()):
        if not d.is_dir() or d.name.startswith((".", "_")):
            continue
        spec = json.loads((d / "case.json").read_text()) if (d / "case.json").is_file() else {}
        cases.append(Case(d.name, d, spec))
    return cases


CASES = _load_cases()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", CASES, ids=[c.name for c in CASES])


# ---------------------------------------------------------------------------------------------
# build contexts (both builders use the very same directory)

def _tar_bytes(entries: list[dict[str, Any]], compression: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e["path"].rstrip("/"))
            ti.uid, ti.gid = e.get("uid", 0), e.get("gid", 0)
            ti.mtime = 1_600_000_000
            data = b""
            if "symlink" in e:
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, e["symlink"], 0o777
            elif "hardlink" in e:
                ti.type, ti.linkname, ti.mode = tarfile.LNKTYPE, e["hardlink"], int(e.get("mode", "0644"), 8)
            elif e["path"].endswith("/"):
                ti.type, ti.mode = tarfile.DIRTYPE, int(e.get("mode", "0755"), 8)
            else:
                data = e.get("content", "").encode()
                ti.type, ti.mode, ti.size = tarfile.REGTYPE, int(e.get("mode", "0644"), 8), len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)
    b = raw.getvalue()
    if compression in ("gz", "gzip"):
        import gzip
        return gzip.compress(b, mtime=0)
    if compression == "bz2":
        import bz2
        return bz2.compress(b)
    if compression == "xz":
        import lzma
        return lzma.compress(b)
    assert compression in ("", "none", "tar"), compression
    return b


def prepare_context(case: Case, dest: Path, http_root: Path | None) -> Path:
    """Copy the case folder to ``dest/ctx`` and apply what git cannot store; return the context."""
    s = case.spec
    ctx = dest / "ctx"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(case.dir, ctx, symlinks=True, ignore=shutil.ignore_patterns("case.json"))
    # normalise what the checkout left (umask, owner): 0755 dirs, 0644 files or 0755 if executable
    for dirpath, dirnames, filenames in os.walk(ctx):
        for n in dirnames:
            os.chmod(os.path.join(dirpath, n), 0o755)
        for n in filenames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.stat(p).st_mode & 0o100 else 0o644)
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), 0, 0)
    os.chmod(ctx, 0o755)
    for rel, content in s.get("files", {}).items():
        p = ctx / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        os.chmod(p, 0o644)
    for rel in s.get("mkdirs", []):
        (ctx / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(ctx / rel, 0o755)
    for rel, t in s.get("tarballs", {}).items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_bytes(_tar_bytes(t["entries"], t.get("compression", "gz")))
        os.chmod(ctx / rel, 0o644)
    for rel, target in s.get("symlinks", {}).items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, ctx / rel)
    for rel, existing in s.get("hardlinks", {}).items():
        os.link(ctx / existing, ctx / rel)
    for rel, mode in s.get("modes", {}).items():
        os.chmod(ctx / rel, int(mode, 8))
    for rel, owner in s.get("owners", {}).items():
        uid, _, gid = owner.partition(":")
        os.lchown(ctx / rel, int(uid), int(gid or uid))
    # Distinct mtimes for every file: buildah's vfs driver diffs layers naively (size + mtime),
    # so a same-size file replaced by another with the same mtime would silently drop out of
    # buildah's layer (seen with overwrite_files). Times are never compared.
    paths = sorted(p for p in ctx.rglob("*"))
    for i, p in enumerate(paths):
        os.utime(p, (1_600_000_000 + i, 1_600_000_000 + i), follow_symlinks=False)
    for rel, content in s.get("outside", {}).items():   # files next to (outside) the context
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(content)
    if http_root is not None:
        for rel, content in s.get("http", {}).items():
            p = http_root / case.name / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content.encode() if isinstance(content, str)
                          else _tar_bytes(content["entries"], content.get("compression", "gz")))
    return ctx


def context_digest(ctx: Path) -> str:
    """A digest of everything in the prepared context that a build can see."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(ctx):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, ctx)
            h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0{st.st_nlink}\0".encode())
            if os.path.islink(p):
                h.update(os.readlink(p).encode())
            elif os.path.isfile(p):
                h.update(hashlib.sha256(Path(p).read_bytes()).digest())
            h.update(b"\n")
    return h.hexdigest()


class Contexts:
    def __init__(self, root: Path, http_root: Path) -> None:
        self.root, self.http_root = root, http_root
        self._done: dict[str, Path] = {}
        self._lock = threading.Lock()

    def get(self, case: Case) -> Path:
        with self._lock:
            if case.name not in self._done:
                self._done[case.name] = prepare_context(case, self.root / case.name, self.http_root)
            return self._done[case.name]

    def outside_dir(self, case: Case) -> Path:
        return self.root / case.name


# ---------------------------------------------------------------------------------------------
# a loopback HTTP server for ADD <url> cases

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("conformance-http")
    handler = functools.partial(_QuietHandler, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.root = root  # type: ignore[attr-defined]
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"  # type: ignore[attr-defined]
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="session")
def contexts(tmp_path_factory: pytest.TempPathFactory, http_server: Any) -> Contexts:
    return Contexts(tmp_path_factory.mktemp("conformance-ctx"), http_server.root)


# ---------------------------------------------------------------------------------------------
# pybuild side: one store for the session, busybox imported once

@pytest.fixture(scope="session")
def pb_store(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> PB:
    pb = PB(tmp_path_factory.mktemp("conformance-pybuild") / "store")
    pb.run("import", str(busybox_tar), "busybox:latest")
    return pb


@pytest.fixture(scope="session")
def base_archive(pb_store: PB, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox:latest saved by pybuild: the base image both builders start from."""
    out = tmp_path_factory.mktemp("conformance-base") / "busybox.oci.tar"
    pb_store.run("save", "busybox:latest", "-o", str(out))
    return out


@pytest.fixture(scope="session")
def base_image(base_archive: Path) -> fl.Image:
    return fl.flatten(str(base_archive))


# ---------------------------------------------------------------------------------------------
# buildah side

def _run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


class Buildah:
    """buildah with an isolated storage under ``root``; the storage is made on first use."""

    def __init__(self, root: Path, base_archive: Path) -> None:
        self.root = root
        self.base_archive = base_archive
        self._ready = False
        self._lock = threading.Lock()
        self.env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
                    "TMPDIR": str(root / "tmp"), "BUILDAH_FORMAT": "docker"}
        self.env.pop("BUILDAH_LAYERS", None)

    @property
    def argv0(self) -> list[str]:
        return ["buildah", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                "--storage-driver", "vfs"]

    @functools.cached_property
    def version(self) -> str:
        return _run(["buildah", "--version"]).stdout.strip()

    def run(self, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = _run([*self.argv0, *args], env=self.env, cwd=cwd)
        if check and p.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        return p

    def ensure_ready(self) -> None:
        with self._lock:
            if self._ready:
                return
            if shutil.which("buildah") is None:
                pytest.fail("buildah is not installed (apt-get install buildah)", pytrace=False)
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
            (self.root / "registries.conf").write_text(REGISTRIES_CONF)
            self.run("pull", "--quiet", f"oci-archive:{self.base_archive}")
            img = self.run("images", "--quiet", "--no-trunc").stdout.split()[0]
            self.run("tag", img, "docker.io/library/busybox:latest")
            self._ready = True

    def cleanup(self) -> None:
        if self._ready:
            self.run("rmi", "--all", "--force", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def export(self, image: str, out: Path) -> dict[str, Any]:
        """Push ``image`` to an OCI archive at ``out``; return its docker-format config."""
        self.run("push", "--quiet", image, f"oci-archive:{out}")
        info = json.loads(self.run("inspect", "--type", "image", image).stdout)
        # The OCI config buildah writes drops Healthcheck, OnBuild and Shell; the docker config
        # (built with --format docker) keeps them, so that is what we compare with.
        return info["Docker"]

    def build(self, case: Case, ctx: Path, http_base: str | None, work: Path) -> dict[str, Any]:
        self.ensure_ready()
        argv = ["bud", *BUILDAH_FLAGS, "-t", case.tag, *case.common_flags(http_base), "."]
        p = self.run(*argv, cwd=ctx, check=False)
        log = (p.stdout + p.stderr)[-4000:]
        if p.returncode != 0:
            return {"ok": False, "argv": argv, "log": log}
        archive = work / f"{case.name}.buildah.oci.tar"
        docker_cfg = self.export(case.tag, archive)
        img = fl.flatten(str(archive))
        if (docker_cfg.get("rootfs") or {}).get("diff_ids") != img.config["rootfs"]["diff_ids"]:
            raise AssertionError(f"{case.name}: buildah's docker config and OCI archive disagree on layers")
        img.config = docker_cfg
        archive.unlink()     # the image stays: removing it could pull cached layers from under
                             # a concurrent build; the whole storage goes at the end of the session
        return {"ok": True, "argv": argv, "log": log, "image": img.to_json()}


@pytest.fixture(scope="session")
def buildah(tmp_path_factory: pytest.TempPathFactory, base_archive: Path) -> Any:
    b = Buildah(tmp_path_factory.mktemp("conformance-buildah"), base_archive)
    yield b
    b.cleanup()


def _cache_dir() -> Path:
    import tempfile
    d = Path(tempfile.gettempdir()) / f"pybuild-conformance-{os.getuid()}"
    d.mkdir(parents=True, exist_ok=True)
    return d


class BuildahResults:
    """buildah's flattened result per case; built for all selected cases on first use."""

    def __init__(self, buildah: Buildah, contexts: Contexts, http_base: str, base_digest: str,
                 work: Path, selected: list[Case]) -> None:
        self.buildah, self.contexts, self.http_base = buildah, contexts, http_base
        self.base_digest, self.work, self.selected = base_digest, work, selected
        self._results: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.timings: dict[str, float] = {}
        self.wall = 0.0

    def _key(self, case: Case, ctx: Path) -> str:
        h = hashlib.sha256()
        for part in (HARNESS_VERSION, self.buildah.version, self.base_digest, context_digest(ctx),
                     json.dumps(case.common_flags(None)),
                     json.dumps(case.spec.get("http", {}), sort_keys=True)):
            h.update(part.encode() + b"\0")
        return h.hexdigest()[:24]

    def _one(self, case: Case) -> dict[str, Any]:
        import time
        ctx = self.contexts.get(case)
        path = _cache_dir() / f"{case.name}-{self._key(case, ctx)}.json"
        if path.is_file() and not os.environ.get("PYBUILD_CONFORMANCE_REBUILD"):
            return json.loads(path.read_text())
        t0 = time.monotonic()
        res = self.buildah.build(case, ctx, self.http_base, self.work)
        self.timings[case.name] = time.monotonic() - t0
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res))
        tmp.replace(path)
        return res

    def prefetch(self) -> None:
        todo = [c for c in self.selected if c.oracle == "buildah" and c.name not in self._results]
        if not todo:
            return
        import time
        t0 = time.monotonic()
        workers = max(1, min(4, (os.cpu_count() or 1) + 1))
        with ThreadPoolExecutor(max_workers=workers) as ex:
            for case, res in zip(todo, ex.map(self._one, todo)):
                self._results[case.name] = res
        self.wall += time.monotonic() - t0

    def get(self, case: Case) -> dict[str, Any]:
        with self._lock:
            if case.name not in self._results:
                self.prefetch()
            if case.name not in self._results:
                self._results[case.name] = self._one(case)
            return self._results[case.name]


@pytest.fixture(scope="session")
def buildah_results(request: pytest.FixtureRequest, buildah: Buildah, contexts: Contexts,
                    http_server: Any, base_image: fl.Image,
                    tmp_path_factory: pytest.TempPathFactory) -> BuildahResults:
    selected = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and isinstance(callspec.params.get("case"), Case):
            selected.append(callspec.params["case"])
    base_digest = hashlib.sha256(json.dumps(base_image.manifest, sort_keys=True).encode()).hexdigest()
    res = BuildahResults(buildah, contexts, http_server.base, base_digest,
                         tmp_path_factory.mktemp("conformance-buildah-out"), selected)
    yield res
    _STATS.append((len(res.timings), res.wall, sum(res.timings.values()),
                   sum(1 for c in selected if c.oracle == "buildah")))


_STATS: list[tuple[int, float, float, int]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for built, wall, total, selected in _STATS:
        terminalreporter.write_line(
            f"conformance: buildah built {built} of {selected} selected case(s) in {wall:.1f}s wall time "
            f"({total:.1f}s of build time summed over workers); the rest came from the cache "
            f"(PYBUILD_CONFORMANCE_REBUILD=1 rebuilds)")
