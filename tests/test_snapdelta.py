"""Delta snapshots: a rebuilt COPY layer's snapshot written as only what differs from the last
build of the same step, stacked on that one's dirs (builder/snapdelta.py, store/snapshots.py)."""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybuild.builder.copy import materialize
from pybuild.builder.snapdelta import write_delta
from pybuild.oci import Digest, chain_ids
from pybuild.store.gc import collect
from pybuild.store.layers import Entry, extract_verified, write_layer
from pybuild.store.snapshots import LayerRef, StackView
from pybuild.store.store import Store

from conftest import PB


def _file(path: str, data: bytes, mode: int = 0o644, mtime: int = 1000, uid: int = 0) -> Entry:
    return Entry(path, "file", mode, uid, 0, mtime, size=len(data), open=lambda: io.BytesIO(data))


def _layer(n_files: int = 80, size: int = 20000) -> list[Entry]:
    out = [Entry("app", "dir", 0o755, 0, 0, 500), Entry("app/src", "dir", 0o755, 0, 0, 500),
           Entry("app/src/d", "dir", 0o750, 0, 0, 600)]
    out += [_file(f"app/src/d/f{i:03d}", bytes([i % 251]) * size) for i in range(n_files)]
    out.append(Entry("app/src/link", "symlink", 0o777, 0, 0, 700, linkname="d/f000"))
    return sorted(out, key=lambda e: tuple(e.path.split("/")))


def merged_tree(dirs: list[Path]) -> dict[str, tuple]:
    """What a RUN sees of a stack of snapshot dirs: per image path, type, mode, owner, mtime,
    size, content, link target."""
    view = StackView(dirs)
    out = {}
    for path, host, stt in view.walk("/"):
        body = host.read_bytes() if stat.S_ISREG(stt.st_mode) else b""
        link = os.readlink(host) if stat.S_ISLNK(stt.st_mode) else ""
        out[path] = (stat.S_IFMT(stt.st_mode), stat.S_IMODE(stt.st_mode), stt.st_uid, stt.st_gid,
                     stt.st_mtime_ns, len(body), body, link)
    return out


def whole(entries: list[Entry], root: Path) -> Path:
    root.mkdir()
    materialize(entries, root)
    return root


# ---------------------------------------------------------------------------------------------
# write_delta against a real directory tree

CHANGES = st.lists(st.tuples(st.sampled_from(["content", "mode", "mtime", "owner", "add", "adddir", "link"]),
                             st.integers(0, 79)), min_size=0, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=CHANGES)
def test_donor_plus_delta_is_exactly_the_new_layer(tmp_path_factory: pytest.TempPathFactory,
                                                   changes: list[tuple[str, int]]) -> None:
    tmp = tmp_path_factory.mktemp("delta")
    old = _layer()
    new = {e.path: e for e in old}
    for what, i in changes:
        p = f"app/src/d/f{i:03d}"
        e = new[p]
        if what == "content":
            data = b"changed %d" % i * 300
            new[p] = _file(p, data, e.mode, e.mtime, e.uid)
        elif what == "mode":
            new[p] = Entry(p, "file", 0o600, e.uid, 0, e.mtime, size=e.size, open=e.open)
        elif what == "mtime":
            new[p] = Entry(p, "file", e.mode, e.uid, 0, e.mtime + 1, size=e.size, open=e.open)
        elif what == "owner":
            new[p] = Entry(p, "file", e.mode, 7, 0, e.mtime, size=e.size, open=e.open)
        elif what == "add":
            new[f"app/new{i}"] = _file(f"app/new{i}", b"new")
        elif what == "adddir":
            new[f"app/src/nd{i}"] = Entry(f"app/src/nd{i}", "dir", 0o700, 3, 3, 42)
            new[f"app/src/nd{i}/x"] = _file(f"app/src/nd{i}/x", b"x")
        elif what == "link":
            new["app/src/link"] = Entry("app/src/link", "symlink", 0o777, 0, 0, 700, linkname=f"d/f{i:03d}")
    entries = sorted(new.values(), key=lambda e: tuple(e.path.split("/")))
    donor = whole(old, tmp / "donor")
    delta = tmp / "delta"
    delta.mkdir()
    n = write_delta(entries, delta, [donor])
    assert n is not None
    assert merged_tree([donor, delta]) == merged_tree([whole(entries, tmp / "whole")])
    written = {str(p.relative_to(delta)) for p in delta.rglob("*")}
    assert len(written) == n
    if not changes:
        assert written == set()
    else:
        assert len(written) <= 3 + 2 * len(changes)   # the changes and their parents only


def test_a_kernel_overlay_of_donor_and_delta_shows_the_new_layer(tmp_path: Path) -> None:
    """Not only our StackView: overlayfs itself, with the donor and the delta as lower dirs."""
    old = _layer()
    entries = [(_file(e.path, b"new bytes") if e.path == "app/src/d/f005" else e) for e in old]
    donor = whole(old, tmp_path / "donor")
    delta = tmp_path / "delta"
    delta.mkdir()
    assert write_delta(entries, delta, [donor]) == 4          # the file and its three parents
    ref = whole(entries, tmp_path / "whole")
    mnt, up, work = tmp_path / "mnt", tmp_path / "up", tmp_path / "work"
    for d in (mnt, up, work):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={delta}:{donor},upperdir={up},workdir={work},index=off,metacopy=off", str(mnt)],
                   check=True)
    try:
        got = {}
        for p in sorted(mnt.rglob("*")):
            s = p.lstat()
            got[str(p.relative_to(mnt))] = (s.st_mode, s.st_uid, s.st_mtime_ns,
                                             p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    want = {}
    for p in sorted(ref.rglob("*")):
        s = p.lstat()
        want[str(p.relative_to(ref))] = (s.st_mode, s.st_uid, s.st_mtime_ns,
                                          p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
    assert got == want


def test_recorded_digests_spare_reading_and_decide(tmp_path: Path) -> None:
    """With the donor's digests recorded, a file whose entry carries the same digest is not
    read (here the donor's bytes differ on purpose, so only the digests can say "same"), and
    one whose digest differs is written."""
    import hashlib
    old = _layer()
    donor = whole(old, tmp_path / "donor")
    digest = {e.path: hashlib.sha256(e.open().read()).hexdigest() for e in old if e.type == "file"}
    entries = [Entry(e.path, e.type, e.mode, e.uid, e.gid, e.mtime, size=e.size, linkname=e.linkname,
                     open=e.open, digest=digest.get(e.path)) for e in old]
    (donor / "app/src/d/f007").write_bytes(b"\xff" * 20000)   # same size, other bytes
    os.utime(donor / "app/src/d/f007", (1000, 1000))
    entries = [(Entry(e.path, "file", e.mode, 0, 0, e.mtime, size=e.size, open=e.open, digest="0" * 64)
                if e.path == "app/src/d/f009" else e) for e in entries]
    delta = tmp_path / "delta"
    delta.mkdir()
    assert write_delta(entries, delta, [donor], donor_sums=digest) is not None
    assert sorted(str(p.relative_to(delta)) for p in delta.rglob("*")) == \
        ["app", "app/src", "app/src/d", "app/src/d/f009"]
    # without the digests every byte is compared: f007 differs
    delta2 = tmp_path / "delta2"
    delta2.mkdir()
    assert write_delta(entries, delta2, [donor]) is not None
    assert "app/src/d/f007" in {str(p.relative_to(delta2)) for p in delta2.rglob("*")}


@pytest.mark.parametrize("case", ["removed", "type", "whiteout", "hardlink", "small", "most", "xattr",
                                  "opaque", "stack"])
def test_no_delta_where_stacking_would_not_be_exact(tmp_path: Path, case: str) -> None:
    old = _layer()
    entries = list(old)
    donor = whole(old, tmp_path / "donor")
    donors = [donor]
    if case == "removed":        # the donor has a path the new layer lacks: it would show through
        entries = [e for e in old if e.path != "app/src/d/f003"]
    elif case == "type":         # a file becomes a directory
        entries = [(Entry(e.path, "dir", 0o755, 0, 0, 1) if e.path == "app/src/d/f003" else e) for e in old]
    elif case == "whiteout":
        os.mknod(donor / "app/gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    elif case == "hardlink":
        os.link(donor / "app/src/d/f001", tmp_path / "elsewhere")
    elif case == "small":        # a layer cheaper to write whole than to compare
        old = _layer(n_files=3, size=10)
        entries = list(old)
        donors = [whole(old, tmp_path / "donor-small")]
    elif case == "most":         # more than half of it changed
        entries = [(_file(e.path, b"other") if e.type == "file" and e.path < "app/src/d/f060" else e)
                   for e in old]
    elif case == "xattr":
        entries = [(Entry(e.path, "file", e.mode, 0, 0, e.mtime, size=e.size, open=e.open,
                          xattrs={"user.x": b"1"}) if e.path == "app/src/d/f002" else e) for e in old]
    elif case == "opaque":
        os.setxattr(donor / "app/src", "trusted.overlay.opaque", b"y")
    elif case == "stack":        # too many dirs below already
        donors = [donor] * 5
    delta = tmp_path / "delta"
    delta.mkdir()
    assert write_delta(entries, delta, donors) is None
    assert list(delta.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# the store: sidecars, ensure, gc

def _commit_layer(store: Store, entries: list[Entry]) -> tuple[LayerRef, Digest]:
    res = write_layer(store.content, entries, "gzip")
    return LayerRef(res.descriptor, res.diff_id), chain_ids([res.diff_id])[0]


def test_store_stacks_a_delta_on_its_bases_and_replaces_it_when_a_base_is_gone(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.init()
    old = _layer()
    new = [(_file(e.path, b"v2") if e.path == "app/src/d/f010" else e) for e in old]
    with store.lease():
        ref_old, c_old = _commit_layer(store, old)
        ref_new, c_new = _commit_layer(store, new)
        d_old = store.snapshots.ensure([ref_old])
        assert d_old == [store.snapshots.path(c_old)]
        tmp = store.snapshots.prepare()
        assert write_delta(new, tmp, d_old) is not None
        store.snapshots.commit_delta(tmp, c_new, d_old)
        assert store.snapshots.dirs(c_new) == [store.snapshots.path(c_old), store.snapshots.path(c_new)]
        stack = store.snapshots.ensure([ref_new])
        assert stack == [store.snapshots.path(c_old), store.snapshots.path(c_new)]
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        extract_verified(store.content, ref_new.descriptor, ref_new.diff_id, fresh, mode="overlay")
        assert merged_tree(stack) == merged_tree([fresh])
    # the base goes (as if removed by hand): the delta alone is not the layer, so ensure
    # replaces it with the whole layer extracted from its blob
    store.snapshots.remove(store.snapshots.path(c_old))
    with store.lease():
        assert store.snapshots.dirs(c_new) is None
        stack = store.snapshots.ensure([ref_new])
    assert stack == [store.snapshots.path(c_new)]
    assert not (store.snapshots_dir / f"{c_new.hex}.base").exists()
    assert merged_tree(stack) == merged_tree([fresh])


def test_a_delta_whose_base_is_below_it_in_the_stack_is_replaced(tmp_path: Path) -> None:
    """overlayfs refuses a dir twice in lowerdir, so such a stack gets the whole layer."""
    store = Store(tmp_path / "s")
    store.init()
    old = _layer()
    new = [(_file(e.path, b"v2") if e.path == "app/src/d/f010" else e) for e in old]
    with store.lease():
        ref_old, c_old = _commit_layer(store, old)
        res = write_layer(store.content, new, "gzip")
        ref_new = LayerRef(res.descriptor, res.diff_id)
        c_top = chain_ids([ref_old.diff_id, ref_new.diff_id])[1]
        d_old = store.snapshots.ensure([ref_old])
        tmp = store.snapshots.prepare()
        write_delta(new, tmp, d_old)
        store.snapshots.commit_delta(tmp, c_top, d_old)
        stack = store.snapshots.ensure([ref_old, ref_new])
    assert stack == [store.snapshots.path(c_old), store.snapshots.path(c_top)]
    assert len(set(stack)) == len(stack)


def _build_ctx(ctx: Path, n: int = 80) -> None:
    for i in range(n):
        p = ctx / f"src/d{i % 4}/f{i:03d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(16000))
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY src/ /app/src/\n"
                                    "RUN cat /app/src/d1/f001.txt | md5sum > /sum && ls -R /app > /listing\n")


def _run_out(pb: PB, tag: str) -> str:
    return pb.run("run", "--rm", tag, "sh", "-c", "cat /sum; wc -l < /listing").out


@pytest.mark.parametrize("driver", ["overlay", "vfs"])
def test_rebuild_after_one_changed_file_writes_a_delta_and_runs_on_the_new_content(
        busybox_tar: Path, tmp_path: Path, driver: str) -> None:
    ctx = tmp_path / "ctx"
    _build_ctx(ctx)
    pb = PB(tmp_path / "s")
    pb.run("import", str(busybox_tar), "busybox")
    pb.run("build", "--storage-driver", driver, "-t", "app", str(ctx))
    snaps = pb.root / "snapshots"
    assert not list(snaps.glob("*.base"))
    for round_ in range(3):
        (ctx / "src/d1/f001.txt").write_bytes(b"round %d\n" % round_)
        pb.run("build", "--storage-driver", driver, "-t", "app", str(ctx))
        want = subprocess.run("md5sum", input=b"round %d\n" % round_, capture_output=True, check=True).stdout
        assert _run_out(pb, "app").split()[0] == want.decode().split()[0]
    sidecars = sorted(snaps.glob("*.base"))
    assert len(sidecars) == 3
    # every COPY snapshot records its files' digests (from the input digest), deltas included
    import hashlib
    for side in sidecars:
        sums = json.loads((snaps / (side.name.removesuffix(".base") + ".sums")).read_text())
        assert len(sums) == 80
        assert sums["app/src/d1/f001.txt"] in {hashlib.sha256(b"round %d\n" % r).hexdigest() for r in range(3)}
    deltas = [snaps / p.name.removesuffix(".base") for p in sidecars]
    for d in deltas:      # only the changed file and its parents were written
        assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == \
            ["app", "app/src", "app/src/d1", "app/src/d1/f001.txt"]
    # the image is the same as a cold build of the same context in an empty store
    fresh = PB(tmp_path / "fresh")
    fresh.run("import", str(busybox_tar), "busybox")
    fresh.run("build", "-t", "app", str(ctx))
    digest = lambda p: json.loads(p.run("inspect", "app").out)[0]["Digest"]  # noqa: E731
    assert digest(pb) == digest(fresh)
    # every delta's stack is the layer its blob holds
    store = Store(pb.root)
    img = store.load(store.resolve("app")[1])
    chains = chain_ids(list(img.config.diff_ids))
    with store.lease():
        stack = store.snapshots.dirs(chains[-2])
        assert stack is not None and len(stack) > 1
        fresh_dir = tmp_path / "x"
        fresh_dir.mkdir()
        extract_verified(store.content, img.manifest.layers[-2], img.config.diff_ids[-2], fresh_dir, mode="overlay")
        assert merged_tree(stack) == merged_tree([fresh_dir])
    # gc keeps the bases of the tagged image's delta and drops the sidecars of what it removes
    collect(store)
    assert store.snapshots.dirs(chains[-2]) == stack
    for p in snaps.glob("*.base"):
        assert (snaps / p.name.removesuffix(".base")).is_dir()
    pb.run("rmi", "app")
    collect(store)
    assert not list(snaps.glob("*.base")) and not list((pb.root / "metadata/cache/donors").glob("*"))
    assert not list(snaps.glob("*.sums"))
