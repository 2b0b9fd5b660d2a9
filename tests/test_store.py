"""The content store and tag index: atomic blobs, verified reads, crash safety, concurrency."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pybuild.errors import DigestMismatch, NotFound
from pybuild.oci import Descriptor, Digest, MediaType
from pybuild.store.gc import collect
from pybuild.store.store import Store

from conftest import PB, tree_state


def test_layout_is_an_oci_image_layout(tmp_path: Path) -> None:
    s = Store(tmp_path / "s")
    assert not (tmp_path / "s").exists()  # no I/O in the constructor
    s.init()
    assert json.loads((tmp_path / "s/oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((tmp_path / "s/index.json").read_text())["manifests"] == []
    assert (tmp_path / "s/blobs/sha256").is_dir()


def test_write_blob_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.init()
    d = s.content.write_blob(b"hello")
    assert d == Digest.of(b"hello")
    assert s.content.blob_path(d).read_bytes() == b"hello"
    assert s.content.write_blob(b"hello") == d  # existing blob = success
    assert list(s.content.iter_blobs()) == [d]
    assert not list(s.content.ingest_dir.iterdir())  # no temp files left


def test_commit_with_wrong_expected_digest_leaves_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.init()
    with pytest.raises(DigestMismatch):
        with s.content.ingest() as w:
            w.write(b"abc")
            w.commit(Digest.of(b"abd"))
    with pytest.raises(DigestMismatch):
        with s.content.ingest() as w:
            w.write(b"abc")
            w.commit(Digest.of(b"abc"), size=4)
    assert list(s.content.iter_blobs()) == []
    assert not list(s.content.ingest_dir.iterdir())


def test_flipped_byte_fails_every_read_naming_the_blob(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.init()
    data = os.urandom(300_000)
    d = s.content.write_blob(data)
    p = s.content.blob_path(d)
    raw = bytearray(p.read_bytes())
    raw[1234] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(DigestMismatch) as e:
        s.content.read_blob(d)
    assert str(d) in str(e.value)
    with pytest.raises(DigestMismatch) as e2:
        with s.content.open_blob(d, len(data)) as r:
            while r.read(65536):
                pass
    assert str(d) in str(e2.value)
    r = s.content.open_blob(d)
    r.read(10)
    with pytest.raises(DigestMismatch):
        r.finish()


def test_missing_blob_is_not_found(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.init()
    with pytest.raises(NotFound):
        s.content.read_blob(Digest.of(b"nope"))


WRITER = textwrap.dedent("""
    import sys, time
    from pybuild.store.store import Store
    s = Store(sys.argv[1]); s.init()
    with s.lease():
        w = s.content.ingest()
        w.write(b"x" * (1 << 20))
        print("writing", flush=True)
        while True:
            w.write(b"y" * 4096)
            time.sleep(0.001)
""")


def test_writer_killed_mid_write_leaves_no_partial_blob(pb_busybox: PB) -> None:
    root = pb_busybox.root
    before = set(Store(root).content.iter_blobs())
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    s = Store(root)
    assert set(s.content.iter_blobs()) == before  # nothing half-written became a blob
    for d in s.content.iter_blobs():
        s.content.read_blob(d, limit=1 << 30)  # every blob verifies
    assert len(list(s.content.ingest_dir.iterdir())) == 1  # the dead writer's temp file
    assert pb_busybox.run("inspect", "busybox").code == 0
    report = collect(s)  # the temp file is swept once its writer is gone
    assert report.ingests == 1 and report.blobs == []
    assert not list(s.content.ingest_dir.iterdir())


@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3, 0.5])
def test_import_killed_at_any_point_leaves_a_consistent_store(pb_busybox: PB, busybox_tar: Path,
                                                             delay: float) -> None:
    p = subprocess.Popen(pb_busybox.argv("import", str(busybox_tar), "other:1"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    s = Store(pb_busybox.root)
    for e in s.entries():
        img = s.load(e.descriptor)
        for layer in img.manifest.layers:
            with s.content.open_blob(layer.digest, layer.size) as r:
                r.finish()
    assert "busybox:latest" in json.loads(pb_busybox.run("inspect", "busybox").out)[0]["RepoTags"]
    pb_busybox.run("import", str(busybox_tar), "other:1")  # the next run succeeds
    assert pb_busybox.run("inspect", "other:1").code == 0


def test_eight_concurrent_tag_processes_keep_all_tags(pb_busybox: PB) -> None:
    procs = [subprocess.Popen(pb_busybox.argv("tag", "busybox", f"many:t{i}"), stderr=subprocess.PIPE)
             for i in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    names = {m["annotations"]["org.opencontainers.image.ref.name"]
             for m in json.loads((pb_busybox.root / "index.json").read_text())["manifests"]}
    assert names == {"busybox:latest"} | {f"many:t{i}" for i in range(8)}


def test_gc_keeps_tagged_and_sweeps_the_rest(pb_busybox: PB) -> None:
    s = Store(pb_busybox.root)
    stray = s.content.write_blob(b"stray")
    keep = set(s.content.iter_blobs()) - {stray}
    report = collect(s)
    assert report.blobs == [stray] and report.bytes_freed == 5
    assert set(s.content.iter_blobs()) == keep
    (s.snapshots_dir / ("0" * 64)).mkdir()
    assert collect(s).snapshots == ["0" * 64]


def test_gc_waits_for_leases(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.init()
    code = textwrap.dedent("""
        import sys
        from pybuild.store.store import Store
        from pybuild.store.gc import collect
        print(len(collect(Store(sys.argv[1])).blobs))
    """)
    with s.lease():
        d = s.content.write_blob(b"in flight")
        p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        assert p.poll() is None  # GC is blocked while the lease is held
        s.tags.set("held:latest", Descriptor(MediaType.OCI_EMPTY, d, 9))
    out, _ = p.communicate(timeout=60)
    assert out.strip() == "0" and s.content.has(d)


def test_store_unchanged_after_bad_input(pb_busybox: PB, tmp_path: Path) -> None:
    before = tree_state(pb_busybox.root)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar" * 100)
    for args in (["import", str(bad), "x:1"], ["load", "-i", str(bad)], ["import", str(tmp_path / "missing.tar"), "x"],
                 ["tag", "nosuch", "x:1"], ["tag", "busybox", "Bad Name"], ["rmi", "nosuch"],
                 ["inspect", "nosuch"], ["save", "nosuch", "-o", str(tmp_path / "o.tar")]):
        r = pb_busybox.run(*args, check=False)
        assert r.code != 0, args
        assert tree_state(pb_busybox.root) == before, args
