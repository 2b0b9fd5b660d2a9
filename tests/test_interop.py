"""Interoperability with real skopeo and umoci (Debian packages, installed by .ci/run)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PB, sha256_file

for tool in ("skopeo", "umoci"):
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is required for the interop tests: apt-get install {tool}", pytrace=False)


def sh(*args: str) -> str:
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(args)} failed:\n{p.stderr}"
    return p.stdout


def test_saved_oci_archive_is_read_copied_and_unpacked(pb_busybox: PB, tmp_path: Path) -> None:
    x = tmp_path / "x.tar"
    pb_busybox.run("save", "busybox", "-o", str(x))
    digest = json.loads(pb_busybox.run("inspect", "busybox").out)[0]["Digest"]
    info = json.loads(sh("skopeo", "inspect", f"oci-archive:{x}"))
    assert info["Digest"] == digest and info["Os"] == "linux"
    sh("skopeo", "copy", f"oci-archive:{x}", f"oci:{tmp_path}/dir:busybox")
    sh("umoci", "unpack", "--image", f"{tmp_path}/dir:busybox", str(tmp_path / "bundle"))
    unpacked = tmp_path / "bundle/rootfs/bin/busybox"
    assert sha256_file(unpacked) == sha256_file(Path("/bin/busybox"))
    assert (tmp_path / "bundle/rootfs/bin/sh").is_symlink()
    assert (tmp_path / "bundle/rootfs/etc/passwd").read_text().startswith("root:x:0:0:")


def test_docker_archive_is_read_by_skopeo(pb_busybox: PB, tmp_path: Path) -> None:
    d = tmp_path / "d.tar"
    pb_busybox.run("save", "busybox", "-o", str(d), "--format", "docker-archive")
    info = json.loads(sh("skopeo", "inspect", f"docker-archive:{d}"))
    cfg_layers = json.loads(pb_busybox.run("inspect", "busybox").out)[0]["RootFS"]["Layers"]
    assert info["Layers"] == cfg_layers  # uncompressed layers: digest == diff_id
    assert "busybox:latest" in info["RepoTags"] or info["RepoTags"] == []
    sh("skopeo", "copy", f"docker-archive:{d}", f"oci:{tmp_path}/dir2:bb")


def test_load_of_a_skopeo_written_archive_saves_back_identically(pb_busybox: PB, tmp_path: Path) -> None:
    sh("skopeo", "copy", f"oci:{pb_busybox.root}:busybox:latest", f"oci:{tmp_path}/dir:busybox")
    sk = tmp_path / "sk.tar"
    sh("skopeo", "copy", f"oci:{tmp_path}/dir:busybox", f"oci-archive:{sk}")
    other = PB(tmp_path / "other")
    out = other.run("load", "-i", str(sk)).out
    assert out.startswith("Loaded image")
    sk_digest = json.loads(sh("skopeo", "inspect", f"oci-archive:{sk}"))["Digest"]
    listed = json.loads(other.run("images", "--format", "json").out)
    assert [r["Digest"] for r in listed] == [sk_digest]
    other.run("tag", listed[0]["ID"], "fromskopeo:1")
    again = tmp_path / "again.tar"
    other.run("save", "fromskopeo:1", "-o", str(again))
    assert json.loads(sh("skopeo", "inspect", f"oci-archive:{again}"))["Digest"] == sk_digest


def test_store_root_is_readable_by_skopeo_and_umoci(pb_busybox: PB, tmp_path: Path) -> None:
    info = json.loads(sh("skopeo", "inspect", f"oci:{pb_busybox.root}:busybox:latest"))
    assert info["Digest"] == json.loads(pb_busybox.run("inspect", "busybox").out)[0]["Digest"]
    sh("umoci", "unpack", "--image", f"{pb_busybox.root}:busybox:latest", str(tmp_path / "b"))
    assert sha256_file(tmp_path / "b/rootfs/bin/busybox") == sha256_file(Path("/bin/busybox"))
