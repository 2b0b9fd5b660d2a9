"""`pybuild build`: determinism, the build cache, outputs, contexts and errors (no RUN)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from pybuild.builder.build import BuildOptions, Progress, build
from pybuild.builder.context import open_build_context
from pybuild.store.gc import collect
from pybuild.store.store import Store

from conftest import PB

DOCKERFILE = """\
FROM busybox AS base
ARG VERSION=1
ENV APP=/app
WORKDIR $APP
COPY a.txt ./
COPY dir/ ./dir/
LABEL version=$VERSION
FROM base
COPY b.txt /b.txt
CMD ["cat", "/app/a.txt"]
"""


def make_ctx(root: Path) -> Path:
    (root / "dir/sub").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "b.txt").write_text("b\n")
    (root / "dir/sub/c.txt").write_text("c\n")
    (root / "Dockerfile").write_text(DOCKERFILE)
    return root


def steps(out: str) -> list[tuple[str, str]]:
    """(step, result) for every finished step: result is CACHED or DONE."""
    res = []
    for line in out.splitlines():
        if ": CACHED" in line or ": DONE" in line:
            head, _, tail = line.rpartition(": ")
            res.append((head, tail.split()[0]))
    return res


def blobs(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs/sha256").iterdir()}


def test_same_context_twice_into_two_empty_stores_gives_the_same_digest(busybox_tar: Path,
                                                                         tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    digests = []
    for name in ("s1", "s2"):
        pb = PB(tmp_path / name)
        pb.run("import", str(busybox_tar), "busybox")
        pb.run("build", "-t", "app", str(ctx))
        digests.append(json.loads(pb.run("inspect", "app").out)[0]["Digest"])
        os.utime(ctx / "a.txt", (1e9, 1e9))  # mtimes never matter
    assert digests[0] == digests[1]


def test_rebuild_is_all_cached_and_writes_no_blob(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    first = pb_busybox.run("build", "--progress", "plain", "-t", "app", str(ctx)).out
    assert any(r == "DONE" for _, r in steps(first) if "STEP 1/" not in _)
    before = blobs(pb_busybox.root)

    def written() -> dict[str, tuple[int, int]]:
        """(inode, mtime) of index.json and the build's cache links: rewriting changes both."""
        files = [pb_busybox.root / "index.json", *(pb_busybox.root / "metadata/cache/images").iterdir()]
        return {str(f): (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}
    meta = written()
    second = pb_busybox.run("build", "--progress", "plain", "-t", "app", str(ctx)).out
    done = [s for s in steps(second) if "STEP 1/" not in s[0]]  # FROM lines are not cache steps
    assert done and all(r == "CACHED" for _, r in done), second
    assert blobs(pb_busybox.root) == before
    assert written() == meta  # nothing rewritten: no index.json, no cache link, no fsync


def test_one_changed_file_invalidates_exactly_its_step_and_later(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    pb_busybox.run("build", "-t", "app", str(ctx))
    (ctx / "dir/sub/c.txt").write_text("changed\n")
    out = pb_busybox.run("build", "--progress", "plain", "-t", "app", str(ctx)).out
    res = {head.split("] ")[-1]: r for head, r in steps(out) if "STEP 1/" not in head}
    stage1 = {k: v for k, v in res.items()}
    assert [r for _, r in steps(out) if True][1:5] == ["CACHED"] * 4  # ARG ENV WORKDIR COPY a.txt
    lines = [(h, r) for h, r in steps(out) if "STEP 1/" not in h]
    assert [r for _, r in lines] == ["CACHED", "CACHED", "CACHED", "CACHED", "DONE", "DONE", "DONE", "DONE"], out
    assert stage1


def test_no_op_rebuild_hashes_no_file(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    time.sleep(0.3)  # files changed within 100 ms of hashing are not trusted to the stat cache
    store = Store(pb_busybox.root)
    hashed = []
    for _ in range(2):
        with open_build_context(str(ctx), None, cache_dir=store.metadata_dir) as bc:
            r = build(store, BuildOptions(context=bc, dockerfile_text=bc.dockerfile_text, tags=("app",)),
                      progress=Progress("quiet"))
            hashed.append(bc.hashed_files)
    assert hashed == [3, 0]
    assert r.cached_steps == r.total_steps


def test_copy_layers_hold_the_hashed_bytes_and_nothing_stays_kept(pb_busybox: PB, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """COPY's layer and snapshot take small files' bytes from the hashing pass (one read per
    file); no step leaves them in memory after it."""
    ctx = make_ctx(tmp_path / "ctx")
    time.sleep(0.3)  # old enough for the stat cache: the rebuild reads nothing
    store = Store(pb_busybox.root)
    opened: list[str] = []
    real_open = os.open

    def counting_open(path, *a, **kw):  # type: ignore[no-untyped-def]
        opened.append(os.fspath(path))
        return real_open(path, *a, **kw)
    monkeypatch.setattr(os, "open", counting_open)
    for _ in range(2):
        with open_build_context(str(ctx), None, cache_dir=store.metadata_dir) as bc:
            r = build(store, BuildOptions(context=bc, dockerfile_text=bc.dockerfile_text, tags=("app",)),
                      progress=Progress("quiet"))
            assert not bc._kept and bc._kept_bytes == 0          # released after every step
    assert opened.count("a.txt") == 1 and opened.count("c.txt") == 1, opened  # hashed, tarred, snapshot: one read
    img = store.load(store.resolve("app")[1])
    files = {}
    for layer in img.manifest.layers:
        with tarfile.open(fileobj=io.BytesIO(store.content.read_blob(layer.digest))) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    files[m.name] = tf.extractfile(m).read()  # type: ignore[union-attr]
    assert any(k.endswith("a.txt") and v == b"a\n" for k, v in files.items()), sorted(files)
    assert r.cached_steps == r.total_steps


def _count_layer_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import pybuild.store.layers as layers  # build.py imports write_layer from here when a step writes
    calls: list[int] = []
    real = layers.write_layer

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(layers, "write_layer", counting)
    return calls


def _build_in_process(store: Store, ctx: Path) -> None:
    with open_build_context(str(ctx), None, cache_dir=store.metadata_dir) as bc:
        build(store, BuildOptions(context=bc, dockerfile_text=bc.dockerfile_text, tags=("app",)),
              progress=Progress("quiet"))


def test_a_copy_whose_inputs_did_not_change_reuses_its_layer_under_a_changed_parent(
        pb_busybox: PB, busybox_tar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """COPY b/ after a changed COPY a/: same inputs, same entries, so the blob an earlier build
    wrote is reused, not written again; a change that reaches the entries (the copied-up
    parent's metadata) writes a new layer. Either way the image is what a cold build gives."""
    ctx = tmp_path / "ctx"
    (ctx / "a").mkdir(parents=True)
    (ctx / "b").mkdir()
    (ctx / "a/one.txt").write_text("1\n")
    (ctx / "b/big.bin").write_bytes(os.urandom(1 << 20))
    (ctx / "c.txt").write_text("c\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY a/ /srv/\nCOPY b/ /opt/b/\nCOPY c.txt /srv/sub/\n")
    store = Store(pb_busybox.root)
    calls = _count_layer_writes(monkeypatch)
    _build_in_process(store, ctx)
    assert len(calls) == 3

    def cold_digest() -> str:
        fresh = PB(tmp_path / f"fresh{len(calls)}")
        fresh.run("import", str(busybox_tar), "busybox")
        fresh.run("build", "-t", "app", str(ctx))
        return json.loads(fresh.run("inspect", "app").out)[0]["Digest"]

    # the file changes, /srv keeps its metadata: COPY b/ and COPY c.txt (whose entries hold the
    # copied-up /srv) reuse their blobs
    (ctx / "a/one.txt").write_text("2\n")
    calls.clear()
    _build_in_process(store, ctx)
    assert len(calls) == 1
    assert json.loads(pb_busybox.run("inspect", "app").out)[0]["Digest"] == cold_digest()
    # /srv's owner changes: COPY c.txt /srv/sub/ copies /srv up with it, so its layer is new;
    # COPY b/ is still reused
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY --chown=5:5 a/ /srv/\nCOPY b/ /opt/b/\nCOPY c.txt /srv/sub/\n")
    calls.clear()
    _build_in_process(store, ctx)
    assert len(calls) == 2
    assert json.loads(pb_busybox.run("inspect", "app").out)[0]["Digest"] == cold_digest()
    # --no-cache writes every layer
    calls.clear()
    with open_build_context(str(ctx), None, cache_dir=store.metadata_dir) as bc:
        build(store, BuildOptions(context=bc, dockerfile_text=bc.dockerfile_text, tags=("app",), no_cache=True),
              progress=Progress("quiet"))
    assert len(calls) == 3


def test_no_cache_rebuilds_every_step(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    pb_busybox.run("build", "-t", "app", str(ctx))
    out = pb_busybox.run("build", "--no-cache", "--progress", "plain", "-t", "app", str(ctx)).out
    assert all(r == "DONE" for _, r in steps(out))


def test_cache_survives_prune_while_the_image_is_tagged(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    pb_busybox.run("build", "-t", "app", str(ctx))
    pb_busybox.run("prune")
    out = pb_busybox.run("build", "--progress", "plain", "-t", "app", str(ctx)).out
    assert all(r == "CACHED" for h, r in steps(out) if "STEP 1/" not in h)
    pb_busybox.run("rmi", "app")
    s = Store(pb_busybox.root)
    collect(s)
    assert s.cache.keys() == []  # untagged: its cache records went with it
    out = pb_busybox.run("build", "--progress", "plain", "-t", "app", str(ctx)).out
    assert all(r == "DONE" for h, r in steps(out) if "STEP 1/" not in h)


def test_build_arg_and_target_and_label_and_iidfile(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    iid = tmp_path / "iid"
    r = pb_busybox.run("build", "-t", "base:1", "--target", "BASE", "--build-arg", "VERSION=7",
                       "--build-arg", "UNUSED=1", "--label", "team=x", "--iidfile", str(iid), str(ctx))
    assert "UNUSED" in r.out and "not consumed" in r.out
    info = json.loads(pb_busybox.run("inspect", "base:1").out)[0]
    assert info["Config"]["Labels"] == {"version": "7", "team": "x"}
    assert iid.read_text() == info["Id"]
    assert "Cmd" not in info["Config"] or info["Config"]["Cmd"] != ["cat", "/app/a.txt"]
    assert not any(e.startswith("VERSION=") for e in info["Config"]["Env"])  # ARGs never land in Env


def test_outputs_oci_docker_local(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    o, d, loc = tmp_path / "o.tar", tmp_path / "d.tar", tmp_path / "rootfs"
    pb_busybox.run("build", "-t", "app", "--output", f"type=oci,dest={o}", "--output", f"type=docker,dest={d}",
                   "--output", f"type=local,dest={loc}", str(ctx))
    assert "index.json" in tarfile.open(o).getnames()
    assert "manifest.json" in tarfile.open(d).getnames()
    assert (loc / "app/a.txt").read_text() == "a\n" and (loc / "b.txt").read_text() == "b\n"
    assert (loc / "bin/busybox").is_file()


def test_quiet_prints_only_the_image_id(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    r = pb_busybox.run("-t", "app", "-q", str(ctx))  # docker-style shorthand for build
    assert r.out.strip().startswith("sha256:") and len(r.out.strip().splitlines()) == 1


def test_dockerfile_outside_context_and_stdin(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    other = tmp_path / "elsewhere.Dockerfile"
    other.write_text("FROM busybox\nCOPY b.txt /x\n")
    pb_busybox.run("build", "-t", "f", "-f", str(other), str(ctx))
    p = subprocess.run(pb_busybox.argv("build", "-t", "stdin", "-"), input=b"FROM busybox\nENV X=1\n",
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "X=1" in json.loads(pb_busybox.run("inspect", "stdin").out)[0]["Config"]["Env"]


def test_tar_context(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    t = tmp_path / "ctx.tar"
    with tarfile.open(t, "w:gz") as tf:
        tf.add(ctx, arcname=".")
    pb_busybox.run("build", "-t", "fromtar", str(t))
    assert json.loads(pb_busybox.run("inspect", "fromtar").out)[0]["Config"]["Cmd"] == ["cat", "/app/a.txt"]


@pytest.mark.parametrize("dockerfile, line, words", [
    ("FROM busybox\nCOPY missing.txt /x\n", 2, "not found"),
    ("FROM busybox\nCOPY a.txt b.txt /notadir\n", 2, "must be a directory"),
    ("FROM nosuchimage\n", 1, "not found"),
    ("FROM busybox\nCOPY --from=nosuchstage /x /y\n", 2, "nosuchstage"),
    ("FROM busybox\nRUN exit 3\n", 2, "non-zero code: 3"),
    ("FROM busybox\nCOPY --chown=nosuchuser a.txt /x\n", 2, "nosuchuser"),
    ("FROM busybox\nCOPY --chmod=99z a.txt /x\n", 2, "chmod"),
    ("FROM busybox\nFROOM x\n", 2, "unknown instruction"),
    ("FROM busybox\nEXPOSE 80/xyz\n", 2, "proto"),
])
def test_build_errors_name_the_dockerfile_line(pb_busybox: PB, tmp_path: Path, dockerfile: str, line: int,
                                               words: str) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    (ctx / "Dockerfile").write_text(dockerfile)
    before = blobs(pb_busybox.root)
    r = pb_busybox.run("build", "-t", "bad", str(ctx), check=False)
    assert r.code == 1, r
    assert f"Dockerfile:{line}" in r.err and words in r.err, r.err
    assert "Traceback" not in r.err
    assert blobs(pb_busybox.root) == before  # nothing written for a failing step
    assert pb_busybox.run("inspect", "bad", check=False).code == 1


def test_unknown_target_is_a_clear_error(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    r = pb_busybox.run("build", "--target", "nope", str(ctx), check=False)
    assert r.code == 1 and "nope" in r.err and "base" in r.err


def test_only_needed_stages_are_built(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    (ctx / "Dockerfile").write_text("FROM busybox AS unused\nCOPY missing /x\n"
                                    "FROM busybox AS used\nCOPY a.txt /a\nFROM used\nCOPY b.txt /b\n")
    out = pb_busybox.run("build", "--progress", "plain", "-t", "x", str(ctx)).out
    assert "unused" not in out and "[stage 2/2]" in out


@pytest.fixture
def http_dir(tmp_path: Path):
    """A real HTTP server on a free loopback port serving a folder."""
    import functools
    import http.server
    import threading
    d = tmp_path / "www"
    d.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(d))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield d, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_add_url_with_checksum_and_no_extraction(pb_busybox: PB, tmp_path: Path, http_dir) -> None:
    import gzip as gz
    import hashlib
    www, base = http_dir
    (www / "file.txt").write_text("remote\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("inner.txt")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    (www / "arch.tar.gz").write_bytes(gz.compress(buf.getvalue()))
    good = "sha256:" + hashlib.sha256(b"remote\n").hexdigest()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD --checksum={good} {base}/file.txt /r/\n"
                                    f"ADD {base}/arch.tar.gz /arch/\n")
    loc = tmp_path / "out"
    pb_busybox.run("build", "-t", "remote", "--output", f"type=local,dest={loc}", str(ctx))
    assert (loc / "r/file.txt").read_text() == "remote\n"
    assert oct((loc / "r/file.txt").stat().st_mode & 0o777) == "0o600"
    assert (loc / "arch/arch.tar.gz").is_file() and not (loc / "arch/inner.txt").exists()  # never extracted
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD --checksum=sha256:{'0' * 64} {base}/file.txt /r/\n")
    r = pb_busybox.run("build", "-t", "bad", str(ctx), check=False)
    assert r.code == 1 and "checksum mismatch" in r.err and "Dockerfile:2" in r.err
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD {base}/missing.txt /r/\n")
    r = pb_busybox.run("build", "-t", "bad", str(ctx), check=False)
    assert r.code == 1 and "404" in r.err and "Dockerfile:2" in r.err


def test_auto_progress_is_live_on_a_tty_and_plain_otherwise(pb_busybox: PB, tmp_path: Path) -> None:
    import shlex
    import shutil as sh
    ctx = make_ctx(tmp_path / "ctx")
    assert sh.which("script"), "util-linux's script is needed to run pybuild under a pseudo-terminal"
    cmd = " ".join(shlex.quote(a) for a in pb_busybox.argv("build", "-t", "tty", str(ctx)))
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, timeout=120)
    out = p.stdout.decode()
    assert p.returncode == 0, out
    assert "\r\x1b[K" in out  # lines are redrawn in place
    assert "COPY a.txt ./  DONE" in out and "--> sha256:" in out
    plain = pb_busybox.run("build", "-t", "tty", str(ctx)).out  # stdout is a pipe: plain log
    assert "\x1b" not in plain and "STEP 2/7: CACHED" in plain


def _tree(root: Path) -> dict[str, tuple]:
    """Everything a RUN step could observe of a snapshot dir: type, mode, owner, mtime, size,
    content, link target, and which names share an inode."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            body = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            link = os.readlink(p) if p.is_symlink() else ""
            first = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 and not p.is_dir() else ""
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, int(st.st_mtime), st.st_size, body, link, first)
    return out


@pytest.mark.parametrize("epoch", [None, "1700000000"])
def test_copy_snapshot_written_from_entries_equals_the_extracted_layer(busybox_tar: Path, tmp_path: Path,
                                                                       epoch: str | None) -> None:
    """A COPY layer's snapshot is written straight from its sources when a later step needs
    it; a RUN must see exactly what extracting the layer blob (as another store would) gives."""
    from pybuild.oci import chain_ids
    from pybuild.store.layers import extract_verified
    ctx = tmp_path / "ctx"
    (ctx / "d/e/empty").mkdir(parents=True)
    (ctx / "d/x.sh").write_text("#!/bin/sh\n")
    os.chmod(ctx / "d/x.sh", 0o4755)
    (ctx / "d/e/big").write_bytes(os.urandom(3 << 20))
    os.link(ctx / "d/e/big", ctx / "d/e/big2")
    (ctx / "d/link").symlink_to("x.sh")
    os.utime(ctx / "d/x.sh", (1e9, 1e9))
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY --chown=7:8 d/ /srv/d/\nCOPY --chmod=0640 d/x.sh /etc/\n"
                                    "RUN ls -l /srv/d > /listing\n")
    pb = PB(tmp_path / "s")
    pb.run("import", str(busybox_tar), "busybox")
    env = {**os.environ, **({"SOURCE_DATE_EPOCH": epoch} if epoch else {})}
    pb.run("build", "-t", "app", str(ctx), env=env)
    store = Store(pb.root)
    img = store.load(store.resolve("app")[1])
    chains = chain_ids(list(img.config.diff_ids))
    for i in (1, 2):  # the two COPY layers
        made = store.snapshots.path(chains[i])
        assert made.is_dir()
        fresh = tmp_path / f"extracted-{i}"
        fresh.mkdir()
        extract_verified(store.content, img.manifest.layers[i], img.config.diff_ids[i], fresh, mode="overlay")
        assert _tree(made) == _tree(fresh)


def test_the_demo_image_builds_and_runs(pb_busybox: PB) -> None:
    """What `make demo` does after importing busybox (README's first command)."""
    demo = Path(__file__).resolve().parent.parent / "testdata/demo"
    pb_busybox.run("build", "--progress", "plain", "-t", "pybuild-demo", str(demo))
    out = pb_busybox.run("run", "pybuild-demo").out
    assert out.splitlines()[0] == "hello from the pybuild demo image"
    assert out.splitlines()[1].startswith("built by pybuild on ")


def test_copy_plan_remakes_a_parent_a_later_item_replaced_with_a_file() -> None:
    """The plan remembers which parents it made; replacing one by a file must forget that."""
    from pybuild.builder.copy import CopyItem, LayerPlan, SrcStat
    from pybuild.store.snapshots import StackView

    def f(dest: str, data: bytes) -> CopyItem:
        return CopyItem(dest, SrcStat("file", 0o644, 0, 0, len(data), 0), data=data)

    plan = LayerPlan(StackView([], cached=True))
    plan.add([f("/a/b/f1", b"1"), f("/a", b"2"), f("/a/b/f2", b"3")])
    kinds = {e.path: e.type for e in plan.entries()}
    assert kinds == {"a": "dir", "a/b": "dir", "a/b/f2": "file"}
    plan.add([f("/a/b/f3", b"4")])                       # a made parent stays made
    assert {e.path for e in plan.entries()} == {"a", "a/b", "a/b/f2", "a/b/f3"}


def _layer_members(store: Store, ref: str) -> dict[str, tarfile.TarInfo]:
    img = store.load(store.resolve(ref)[1])
    out: dict[str, tarfile.TarInfo] = {}
    for layer in img.manifest.layers:
        with tarfile.open(fileobj=io.BytesIO(store.content.read_blob(layer.digest))) as tf:
            out.update({m.name: m for m in tf.getmembers()})
    return out


def test_copy_from_keeps_the_sources_xattrs(pb_busybox: PB, tmp_path: Path) -> None:
    """COPY --from keeps a file's and a directory's xattrs, file capabilities included (as
    BuildKit and buildah do), in the layer and in the snapshot a later RUN reads; the
    destination directory a directory source makes gets none."""
    cap = bytes([1, 0, 0, 2, 0, 0x20]) + bytes(14)  # cap_net_bind_service, effective
    src = tmp_path / "x.tar"
    with tarfile.open(src, "w", format=tarfile.PAX_FORMAT) as t:
        d = tarfile.TarInfo("d")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        d.pax_headers = {"SCHILY.xattr.user.dir": "D"}
        t.addfile(d)
        sub = tarfile.TarInfo("d/sub")
        sub.type, sub.mode = tarfile.DIRTYPE, 0o700
        sub.pax_headers = {"SCHILY.xattr.user.sub": "S"}
        t.addfile(sub)
        f = tarfile.TarInfo("d/bin")
        f.size, f.mode = 3, 0o755
        f.pax_headers = {"SCHILY.xattr.user.test": "v1",
                         "SCHILY.xattr.security.capability": cap.decode("latin-1")}
        t.addfile(f, io.BytesIO(b"abc"))
    pb_busybox.run("import", str(src), "xat:latest")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM xat:latest AS s\n"
                                    "FROM busybox:latest\n"
                                    "COPY --from=s /d/bin /one\n"
                                    "COPY --from=s /d /two/\n"
                                    "RUN cat /one /two/bin\n")
    pb_busybox.run("build", "-t", "out", str(ctx))
    store = Store(pb_busybox.root)
    members = _layer_members(store, "out")
    want = {"SCHILY.xattr.user.test": "v1", "SCHILY.xattr.security.capability": cap.decode("latin-1")}
    assert members["one"].pax_headers == want
    assert members["two/bin"].pax_headers == want
    assert members["two/sub"].pax_headers == {"SCHILY.xattr.user.sub": "S"}
    assert "SCHILY.xattr.user.dir" not in members["two"].pax_headers  # made, not copied
    snap = [p for p in Path(pb_busybox.root, "snapshots").rglob("one") if p.is_file()]
    assert snap, "no snapshot of the COPY layer"
    assert os.getxattr(snap[0], "user.test", follow_symlinks=False) == b"v1"
    assert os.getxattr(snap[0], "security.capability", follow_symlinks=False) == cap
