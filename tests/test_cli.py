"""The image commands through the real CLI: import, images, inspect, history, tag, rmi, prune,
save, load, and their errors."""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from pybuild.store.store import Store

from conftest import PB, tree_state


def test_import_images_inspect_history(pb_busybox: PB) -> None:
    out = pb_busybox.run("images").out.splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert out[1].split()[:2] == ["busybox", "latest"]
    info = json.loads(pb_busybox.run("inspect", "busybox:latest").out)[0]
    assert info["RepoTags"] == ["busybox:latest"] and info["Os"] == "linux"
    assert len(info["RootFS"]["Layers"]) == 1
    assert info["Manifest"]["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert info["Created"] == "1970-01-01T00:00:00Z"
    assert json.loads(pb_busybox.run("inspect", info["Id"][7:19]).out)[0]["Id"] == info["Id"]  # by id prefix
    hist = json.loads(pb_busybox.run("history", "busybox", "--format", "json").out)
    assert len(hist) == 1 and "import" in hist[0]["CreatedBy"] and hist[0]["Size"] > 0
    assert "IMAGE" in pb_busybox.run("history", "busybox").out
    rows = json.loads(pb_busybox.run("images", "--format", "json").out)
    assert rows[0]["ID"] == info["Id"]


def test_import_zstd(pb: PB, busybox_tar: Path) -> None:
    pb.run("import", "--compression", "zstd", str(busybox_tar), "bbz")
    info = json.loads(pb.run("inspect", "bbz").out)[0]
    assert info["Manifest"]["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"


def test_import_is_deterministic_across_stores(busybox_tar: Path, tmp_path: Path) -> None:
    a, b = PB(tmp_path / "a"), PB(tmp_path / "b")
    a.run("import", str(busybox_tar), "busybox")
    b.run("import", str(busybox_tar), "busybox")
    da = json.loads(a.run("inspect", "busybox").out)[0]["Digest"]
    db = json.loads(b.run("inspect", "busybox").out)[0]["Digest"]
    assert da == db


def test_import_honours_source_date_epoch(pb: PB, busybox_tar: Path) -> None:
    import os
    pb.run("import", str(busybox_tar), "bb", env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    assert json.loads(pb.run("inspect", "bb").out)[0]["Created"] == "2023-11-14T22:13:20Z"


def test_tag_rmi_prune(pb_busybox: PB) -> None:
    pb_busybox.run("tag", "busybox", "localhost:5000/team/bb:v1")
    info = json.loads(pb_busybox.run("inspect", "localhost:5000/team/bb:v1").out)[0]
    assert sorted(info["RepoTags"]) == ["busybox:latest", "localhost:5000/team/bb:v1"]
    r = pb_busybox.run("rmi", "busybox")
    assert "Untagged: busybox:latest" in r.out and "Deleted" not in r.out  # still used by the other tag
    r = pb_busybox.run("rmi", "localhost:5000/team/bb:v1")
    assert "Deleted: sha256:" in r.out
    s = Store(pb_busybox.root)
    assert list(s.content.iter_blobs()) == [] and s.entries() == []
    assert pb_busybox.run("prune").out.strip().endswith("0B")


def test_rmi_by_id_with_several_tags_needs_force(pb_busybox: PB) -> None:
    pb_busybox.run("tag", "busybox", "two")
    image_id = json.loads(pb_busybox.run("inspect", "busybox").out)[0]["Id"]
    r = pb_busybox.run("rmi", image_id, check=False)
    assert r.code == 1 and "2 tags" in r.err and "hint:" in r.err
    pb_busybox.run("rmi", "-f", image_id)
    assert Store(pb_busybox.root).entries() == []


def test_prune_removes_untagged_and_orphans(pb_busybox: PB, tmp_path: Path) -> None:
    s = Store(pb_busybox.root)
    s.content.write_blob(b"orphan")
    r = pb_busybox.run("prune")
    assert "Deleted: sha256:" in r.out
    assert pb_busybox.run("inspect", "busybox").code == 0


def test_save_load_both_formats_roundtrip(pb_busybox: PB, tmp_path: Path) -> None:
    info = json.loads(pb_busybox.run("inspect", "busybox").out)[0]
    oci, dock = tmp_path / "i.tar", tmp_path / "d.tar"
    pb_busybox.run("save", "busybox", "-o", str(oci))
    pb_busybox.run("save", "busybox", "-o", str(dock), "--format", "docker-archive")
    names = tarfile.open(oci).getnames()
    assert {"oci-layout", "index.json"} <= set(names)
    assert "manifest.json" in tarfile.open(dock).getnames()
    other = PB(tmp_path / "other")
    assert "Loaded image: busybox:latest" in other.run("load", "-i", str(oci)).out
    again = json.loads(other.run("inspect", "busybox").out)[0]
    assert again["Digest"] == info["Digest"] and again["Id"] == info["Id"]
    third = PB(tmp_path / "third")
    assert "Loaded image: busybox:latest" in third.run("load", "-i", str(dock)).out
    assert json.loads(third.run("inspect", "busybox").out)[0]["Id"] == info["Id"]  # same config
    assert (tmp_path / "i.tar").stat().st_size > 0 and not list(tmp_path.glob(".*.tmp"))


def test_load_refuses_a_lying_archive_and_keeps_the_store(pb_busybox: PB, tmp_path: Path) -> None:
    good = tmp_path / "g.tar"
    pb_busybox.run("save", "busybox", "-o", str(good))
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for m in src:
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.startswith("blobs/sha256/") and m.size > 100_000:
                data = data[:-1] + bytes([data[-1] ^ 1])  # the layer lies about its digest
            dst.addfile(m, None if data is None else __import__("io").BytesIO(data))
    fresh = PB(tmp_path / "fresh")
    fresh.run("import", str(pb_busybox.root / "oci-layout"), "x", check=False)  # creates the empty store
    before = tree_state(fresh.root)
    r = fresh.run("load", "-i", str(bad), check=False)
    assert r.code == 1 and "hashes to" in r.err
    assert tree_state(fresh.root) == before
    assert not list(Store(fresh.root).content.iter_blobs()) and Store(fresh.root).entries() == []


@pytest.mark.parametrize("args, words", [
    (["import", "/nonexistent/rootfs.tar", "x"], "no such file"),
    (["import", "NOTATAR", "x"], "not a tar"),
    (["inspect", "unknown-image"], "not in the store"),
    (["tag", "busybox", "UPPER:case"], "invalid reference"),
    (["inspect", "bad::ref"], "invalid reference"),
    (["load", "-i", "/nonexistent.tar"], "no such file"),
    (["save", "busybox", "-o", "/nonexistent-dir/x.tar"], "cannot write"),
])
def test_bad_input_gives_one_line_error_and_hint(pb_busybox: PB, tmp_path: Path, args: list[str],
                                                 words: str) -> None:
    notatar = tmp_path / "notatar"
    notatar.write_bytes(b"\x00garbage" * 1000)
    args = [str(notatar) if a == "NOTATAR" else a for a in args]
    before = tree_state(pb_busybox.root)
    r = pb_busybox.run(*args, check=False)
    assert r.code == 1, r
    lines = r.err.strip().splitlines()
    assert lines[0].startswith("error: ") and words in lines[0], r.err
    assert len(lines) <= 2 and all(l.startswith(("error: ", "hint: ")) for l in lines), r.err
    assert any(l.startswith("hint: ") for l in lines) or "cannot write" in words
    assert "Traceback" not in r.err
    assert tree_state(pb_busybox.root) == before


def test_usage_errors_exit_2(pb: PB) -> None:
    r = pb.run("import", check=False)
    assert r.code == 2 and "Missing argument" in r.err
    assert pb.run("nosuchcommand", check=False).code == 2


def test_help_lists_commands(pb: PB) -> None:
    out = pb.run("--help").out
    for cmd in ("import", "images", "inspect", "history", "tag", "rmi", "prune", "save", "load"):
        assert cmd in out


def test_empty_store_commands(pb: PB) -> None:
    assert pb.run("images").out.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    r = pb.run("inspect", "busybox", check=False)
    assert r.code == 1 and "no store" in r.err
    shutil.rmtree(pb.root, ignore_errors=True)


def test_corrupt_layer_fails_save_naming_the_blob(pb_busybox: PB, tmp_path: Path) -> None:
    info = json.loads(pb_busybox.run("inspect", "busybox").out)[0]
    layer = info["Manifest"]["layers"][0]["digest"]
    p = pb_busybox.root / "blobs" / "sha256" / layer.split(":")[1]
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    for fmt in ("oci-archive", "docker-archive"):
        out = tmp_path / f"{fmt}.tar"
        r = pb_busybox.run("save", "busybox", "-o", str(out), "--format", fmt, check=False)
        assert r.code == 1 and layer in r.err, r.err
        assert not out.exists()  # no half-written archive


def test_relative_root_works_for_run_steps(busybox_tar: Path, tmp_path: Path) -> None:
    import subprocess
    import sys
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo ok > /ok\n")
    base = [sys.executable, "-m", "pybuild", "--root", "./rel-store"]
    for args in (["import", str(busybox_tar), "busybox"], ["build", "-t", "rel", "."]):
        p = subprocess.run(base + args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
