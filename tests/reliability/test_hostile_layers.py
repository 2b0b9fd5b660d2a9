"""Issue 7, part 3: hostile layers through ``pybuild load`` and then ``pybuild build``.

Every case builds an oci-archive by hand (tarfile + hashlib), loads it, and builds FROM it in two
ways, because the two paths extract layers with different code:

* ``run``: ``FROM hostile`` + ``RUN …`` — the layers are extracted into snapshots (overlay form,
  diff_id verified) and the RUN checks from inside what the image holds;
* ``local``: ``FROM hostile`` + ``LABEL`` with ``--output type=local`` — the layers are applied
  one after the other into the destination (flatten).

A case is either *refused* (``load`` or ``build`` exits 1 with an ``error:`` line and no
traceback) or *confined* (it succeeds and everything lands inside the root where the test
expects it). Either way the jail proves the canary outside untouched and nothing created outside
the target roots, and the store stays usable (``images``, ``inspect`` of the other image, no
half-made snapshot or ingest left).
"""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from conftest import PB, tree_state

from .hostile import (LAYER_TAR, Jail, Layer, M, assert_clean_error, gzip_bomb_layer, sha, tar_bytes,
                      write_oci_archive)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="RUN and device nodes need root")

CONSUMERS = ["run", "local"]
OK_MARK = "HOSTILE-CHECKS-OK"


# -- expectations ----------------------------------------------------------------------------

@dataclass
class Expect:
    """What a confined case leaves in the image (absolute image paths, symlinks not followed)."""

    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)     # path -> b | c | p

    def shell(self) -> str:
        """The same checks as a busybox sh script, for the RUN consumer."""
        q = shlex.quote
        checks = []
        for p, data in self.files.items():
            checks.append(f"test -f {q(p)} && test ! -L {q(p)} && test \"$(cat {q(p)})\" = {q(data.decode())}")
        for p, target in self.links.items():
            checks.append(f"test -L {q(p)} && test \"$(readlink {q(p)})\" = {q(target)}")
        for p, kind in self.nodes.items():
            checks.append(f"test -{kind} {q(p)}")
        return " && ".join(checks) or "true"

    def check_dir(self, rootfs: Path) -> None:
        """The same checks on a ``--output type=local`` directory."""
        for p, data in self.files.items():
            hp = _inside(rootfs, p)
            assert hp.is_file() and not hp.is_symlink(), p
            assert hp.read_bytes() == data, p
        for p, target in self.links.items():
            hp = _inside(rootfs, p)
            assert hp.is_symlink() and os.readlink(hp) == target, p
        for p, kind in self.nodes.items():
            st = os.lstat(_inside(rootfs, p))
            assert {"b": stat.S_ISBLK, "c": stat.S_ISCHR, "p": stat.S_ISFIFO}[kind](st.st_mode), p


def _inside(rootfs: Path, image_path: str) -> Path:
    """The host path of an image path in rootfs; its parents must be real dirs inside rootfs."""
    hp = rootfs / image_path.lstrip("/")
    parent = os.path.realpath(hp.parent)
    assert parent == str(rootfs) or parent.startswith(str(rootfs) + os.sep), f"{image_path} leaves {rootfs}"
    return hp


# -- running a case --------------------------------------------------------------------------

@dataclass
class Outcome:
    stage: str          # "load" or "build"
    code: int
    out: str
    err: str


def consume(pb: PB, jail: Jail, base: Layer, layers: list[Layer], consumer: str,
            expect: Expect | None = None, **archive_kw) -> Outcome:
    """Write the archive (busybox below the hostile layers), load it, build FROM it."""
    archive = jail.work / "hostile.tar"
    write_oci_archive(archive, [base, *layers], "hostile:latest", **archive_kw)
    r = pb.run("load", "-i", str(archive), check=False)
    if r.code != 0:
        return Outcome("load", r.code, r.out, r.err)
    args = ["build", "--progress", "plain", "-t", "result"]
    if consumer == "run":
        script = f"{(expect or Expect()).shell()} && echo {OK_MARK}"
        (jail.ctx / "Dockerfile").write_text(f"FROM hostile\nRUN {script}\n")
    else:
        (jail.ctx / "Dockerfile").write_text("FROM hostile\nLABEL reliability=hostile\n")
        args += ["--output", f"type=local,dest={jail.out / 'rootfs'}"]
    r = pb.run(*args, str(jail.ctx), check=False)
    return Outcome("build", r.code, r.out, r.err)


def store_consistent(pb: PB) -> None:
    """``images`` and ``inspect`` of the other image work; no half-made snapshot or ingest."""
    pb.run("images")
    info = json.loads(pb.run("inspect", "busybox").out)[0]
    assert info["RepoTags"] == ["busybox:latest"]
    snaps = pb.root / "snapshots"
    assert not list(snaps.glob(".tmp-*")) if snaps.is_dir() else True
    ingest = pb.root / "ingest"
    assert not (ingest.is_dir() and list(ingest.iterdir())), list(ingest.iterdir())
    json.loads(pb.run("images", "--format", "json").out)


def assert_refused(o: Outcome, *words: str) -> None:
    assert_clean_error(o, *words)


def assert_confined(o: Outcome, consumer: str, jail: Jail, expect: Expect) -> None:
    assert o.code == 0, f"{o.stage} failed:\n{o.err}"
    assert "Traceback" not in o.err
    if consumer == "run":
        assert OK_MARK in o.out + o.err, f"the RUN checks did not pass:\n{o.out}\n{o.err}"
    else:
        expect.check_dir(jail.out / "rootfs")


# -- refused cases ---------------------------------------------------------------------------

def _refused_cases(j: Jail) -> dict[str, tuple[list[M], tuple[str, ...]]]:
    A, T = j.abs_outside, j.token
    up = "../" * 12
    return {
        "dotdot_file": ([M(f"../{T}", data=b"x")], ("escapes",)),
        "dotdot_nested": ([M("a", "dir"), M(f"a/../../{T}", data=b"x")], ("escapes",)),
        "dotdot_dot_slash": ([M(f"./../../../{T}", data=b"x")], ("escapes",)),
        "dotdot_to_canary": ([M(f"{up}{A}/canary", data=b"pwned")], ("escapes",)),
        "dotdot_dir": ([M(f"../{T}", "dir")], ("escapes",)),
        "dotdot_symlink_name": ([M(f"../{T}", "symlink", link="/")], ("escapes",)),
        "hardlink_dotdot": ([M("h", "hardlink", link="../../../outside/canary")], ("escapes",)),
        "hardlink_absolute_outside": ([M("h", "hardlink", link=f"/{A}/canary")], ("hardlink",)),
        "hardlink_via_abs_symlink": ([M("s", "symlink", link=f"/{A}"), M("h", "hardlink", link="s/canary")],
                                     ("hardlink",)),
        "hardlink_via_dotdot_symlink": ([M("s", "symlink", link=up.rstrip("/")),
                                         M("h", "hardlink", link=f"s/{A}/canary")], ("hardlink",)),
        "whiteout_dotdot": ([M(".wh...")], ("whiteout",)),
        "whiteout_dot": ([M(".wh..")], ("whiteout",)),
        "whiteout_nested_dotdot": ([M("sub", "dir"), M("sub/.wh...")], ("whiteout",)),
        "whiteout_empty_name": ([M(".wh.")], ("whiteout",)),
    }


REFUSED = [
    "dotdot_file", "dotdot_nested", "dotdot_dot_slash", "dotdot_to_canary", "dotdot_dir",
    "dotdot_symlink_name", "hardlink_dotdot", "hardlink_absolute_outside", "hardlink_via_abs_symlink",
    "hardlink_via_dotdot_symlink", "whiteout_dotdot", "whiteout_dot", "whiteout_nested_dotdot",
    "whiteout_empty_name"]


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("case", REFUSED)
def test_hostile_layer_is_refused(case: str, consumer: str, jail: Jail, hpb: PB, base_layer: Layer) -> None:
    members, words = _refused_cases(jail)[case]
    o = consume(hpb, jail, base_layer, [Layer(tar_bytes(members))], consumer)
    assert_refused(o, *words)
    store_consistent(hpb)
    jail.check()


# -- confined cases --------------------------------------------------------------------------

def _confined_cases(j: Jail) -> dict[str, tuple[list[list[M]], Expect]]:
    A, T = j.abs_outside, j.token
    up = "../" * 12
    return {
        # Absolute names land inside the root.
        "absolute_paths": ([[M(f"/etc/{T}", data=b"abs"), M(f"/{A}/canary", data=b"pwned"),
                             M(f"//{A}/{T}-dbl", data=b"dbl")]],
                           Expect(files={f"/etc/{T}": b"abs", f"/{A}/canary": b"pwned", f"/{A}/{T}-dbl": b"dbl"})),
        # a -> ../../.., a/b -> /, then files written through the chain.
        "symlink_chain": ([[M("a", "symlink", link=up.rstrip("/")), M("a/b", "symlink", link="/"),
                            M(f"a/b/{A}/canary", data=b"pwned"), M(f"a/b/etc/{T}", data=b"chain"),
                            M("c", "symlink", link=f"a/b/{A}"), M(f"c/{T}", data=b"c")]],
                          Expect(files={f"/{A}/canary": b"pwned", f"/etc/{T}": b"chain", f"/{A}/{T}": b"c"},
                                 links={"/a": up.rstrip("/"), "/b": "/"})),
        # A symlink to an outside dir (absolute and relative), then files and dirs through it.
        "symlink_then_file": ([[M("s", "symlink", link=f"/{A}/dir"), M(f"s/{T}", data=b"s"),
                                M("r", "symlink", link="../../outside"), M(f"r/{T}", data=b"r"),
                                M("d", "symlink", link=f"/{A}"), M("d/canary", data=b"pwned"),
                                M("d/newdir", "dir"), M("d/newdir/f", data=b"nd"),
                                M("k", "symlink", link=f"/{A}/canary")]],
                              Expect(files={f"/{A}/dir/{T}": b"s", f"/outside/{T}": b"r", f"/{A}/canary": b"pwned",
                                            f"/{A}/newdir/f": b"nd"},
                                     links={"/s": f"/{A}/dir", "/r": "../../outside", "/k": f"/{A}/canary"})),
        # A hardlink to a symlink that points at the canary: a second symlink, nothing followed.
        "hardlink_to_symlink": ([[M("s", "symlink", link=f"/{A}/canary"), M("h", "hardlink", link="s")]],
                                Expect(links={"/s": f"/{A}/canary", "/h": f"/{A}/canary"})),
        # Device nodes and a fifo (root may create them); one through a symlink to outside.
        "device_nodes": ([[M(f"{T}-blk", "block", major=7, minor=200), M(f"{T}-chr", "char", major=1, minor=3),
                           M(f"{T}-fifo", "fifo"), M("s", "symlink", link=f"/{A}"),
                           M(f"s/{T}-dev", "char", major=1, minor=3)]],
                         Expect(nodes={f"/{T}-blk": "b", f"/{T}-chr": "c", f"/{T}-fifo": "p",
                                       f"/{A}/{T}-dev": "c"})),
        # The same path several times: the last entry wins, nothing follows an earlier symlink out.
        "duplicate_paths": ([[M("x", data=b"first"), M("x", "symlink", link=f"/{A}/canary"), M("x", data=b"last"),
                              M("d", "dir"), M("d", "symlink", link=f"/{A}"), M("d/f", data=b"df"),
                              M("y", "symlink", link=f"/{A}/dir"), M("y", "dir"), M("y/z", data=b"yz"),
                              M("w", "symlink", link=f"/{A}/canary"), M("w", "hardlink", link="x")]],
                            Expect(files={"/x": b"last", f"/{A}/f": b"df", "/y/z": b"yz", "/w": b"last"},
                                   links={"/d": f"/{A}"})),
        # Layer 1 plants symlinks to the outside; layer 2 whiteouts through them (and an opaque
        # whiteout below one): only the root's own entries may go.
        "whiteouts_through_symlinks": ([[M("s", "symlink", link=f"/{A}"), M("q", "symlink", link=up + "outside")],
                                        [M("s/.wh.canary"), M("s/.wh.dir"), M("s/.wh.secret"), M("q/.wh.canary"),
                                         M("s/.wh..wh..opq")]],
                                       Expect()),
        # Layer 1 plants a symlink to the outside; layer 2 writes a file and a dir through it.
        "later_layer_through_symlink": ([[M("s", "symlink", link=f"/{A}"), M("t", "symlink", link=up.rstrip("/"))],
                                         [M(f"s/{T}", data=b"l2"), M(f"t/{A}/canary", data=b"pwned")]],
                                        Expect()),
    }


CONFINED = ["absolute_paths", "symlink_chain", "symlink_then_file", "hardlink_to_symlink", "device_nodes",
            "duplicate_paths", "whiteouts_through_symlinks", "later_layer_through_symlink"]


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("case", CONFINED)
def test_hostile_layer_is_confined(case: str, consumer: str, jail: Jail, hpb: PB, base_layer: Layer) -> None:
    layers, expect = _confined_cases(jail)[case]
    o = consume(hpb, jail, base_layer, [Layer(tar_bytes(ms)) for ms in layers], consumer, expect)
    assert_confined(o, consumer, jail, expect)
    store_consistent(hpb)
    json.loads(hpb.run("inspect", "hostile").out)
    jail.check()


# -- malformed layers (found by tests/fuzz) -------------------------------------------------

def _pax_tar(kind: str, pax: dict[str, str]) -> bytes:
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("fz")
        ti.type = tarfile.DIRTYPE if kind == "dir" else tarfile.REGTYPE
        ti.pax_headers = dict(pax)
        tf.addfile(ti, io.BytesIO(b""))
    return buf.getvalue()


def _malformed_layers() -> dict[str, Layer]:
    from .hostile import gz
    good = tar_bytes([M("a", data=b"x" * 4096), M("b", data=b"y" * 4096)])
    return {
        "truncated_gzip_header": Layer(b"", blob=b"\x1f\x8b", diff_id="0" * 64),
        "gzip_cut_mid_stream": Layer(good, blob=gz(good)[: len(gz(good)) // 2]),
        "pax_mtime_nan_file": Layer(_pax_tar("file", {"mtime": "nan"})),
        "pax_mtime_nan_dir": Layer(_pax_tar("dir", {"mtime": "nan"})),
        "pax_mtime_inf": Layer(_pax_tar("file", {"mtime": "inf"})),
        "empty_symlink_target": Layer(tar_bytes([M("l", "symlink", link="")])),
        "hardlink_to_root_dir": Layer(tar_bytes([M("h", "hardlink", link=".")])),
        "hardlink_to_dir": Layer(tar_bytes([M("d", "dir"), M("h", "hardlink", link="d")])),
        "not_a_tar": Layer(b"this is not a tar archive" * 40, media_type=LAYER_TAR),
        "empty_blob": Layer(b"", media_type=LAYER_TAR),
    }


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("case", ["truncated_gzip_header", "gzip_cut_mid_stream", "pax_mtime_nan_file",
                                  "pax_mtime_nan_dir", "pax_mtime_inf", "empty_symlink_target",
                                  "hardlink_to_root_dir", "hardlink_to_dir", "not_a_tar", "empty_blob"])
def test_malformed_layer_is_refused_cleanly(case: str, consumer: str, jail: Jail, hpb: PB,
                                            base_layer: Layer) -> None:
    """A layer that is not a well-formed tar (cut gzip, PAX mtime=nan, …) is refused with exit 1,
    an ``error:`` line and no traceback (not "Aborted." and exit 130, not a ValueError)."""
    o = consume(hpb, jail, base_layer, [_malformed_layers()[case]], consumer)
    assert_refused(o)
    store_consistent(hpb)
    jail.check()


# -- lies in the archive ---------------------------------------------------------------------

def _evil_layer(j: Jail) -> Layer:
    return Layer(tar_bytes([M(f"{j.token}", data=b"evil")]))


@pytest.mark.parametrize("lie", ["blob_bytes_do_not_match_name", "digest_not_in_archive", "size_too_small",
                                 "size_too_large"])
def test_manifest_layer_digest_lie_is_refused_by_load(lie: str, jail: Jail, hpb: PB, base_layer: Layer) -> None:
    evil = _evil_layer(jail)
    real = sha(evil.blob_bytes())
    fake = sha(b"something else entirely")
    kw: dict = {}
    if lie == "blob_bytes_do_not_match_name":      # blobs/sha256/<fake> holds the evil bytes
        kw = dict(manifest_layer_digests=[sha(base_layer.blob_bytes()), fake], blob_names={real: fake})
    elif lie == "digest_not_in_archive":           # the manifest names a blob that is not there
        kw = dict(manifest_layer_digests=[sha(base_layer.blob_bytes()), fake])
    elif lie == "size_too_small":
        kw = dict(manifest_layer_sizes=[len(base_layer.blob_bytes()), len(evil.blob_bytes()) - 1])
    else:
        kw = dict(manifest_layer_sizes=[len(base_layer.blob_bytes()), len(evil.blob_bytes()) + 1])
    before = tree_state(hpb.root)
    o = consume(hpb, jail, base_layer, [evil], "run", **kw)
    assert o.stage == "load", "an archive whose manifest lies about a layer must not load"
    assert_refused(o)
    assert tree_state(hpb.root) == before, "a refused load changed the store"
    store_consistent(hpb)
    assert hpb.run("inspect", "hostile", check=False).code == 1
    jail.check()


def test_config_diff_id_count_mismatch_is_refused_by_load(jail: Jail, hpb: PB, base_layer: Layer) -> None:
    before = tree_state(hpb.root)
    o = consume(hpb, jail, base_layer, [_evil_layer(jail)], "run", diff_ids=[base_layer.diff_hex()])
    assert o.stage == "load"
    assert_refused(o, "diff_ids")
    assert tree_state(hpb.root) == before
    store_consistent(hpb)
    jail.check()


@pytest.mark.parametrize("consumer", CONSUMERS)
def test_config_diff_ids_that_lie_are_refused(consumer: str, jail: Jail, hpb: PB, base_layer: Layer) -> None:
    """The config's diff_ids do not hash the layers' tars: ``load`` or the build must refuse the
    image (the run path verifies diff_ids when it extracts; ``--output type=local`` must too)."""
    evil = _evil_layer(jail)
    o = consume(hpb, jail, base_layer, [evil], consumer, diff_ids=[base_layer.diff_hex(), "0" * 64])
    assert_refused(o, "sha256:" + "0" * 64)
    assert not (jail.out / "rootfs" / jail.token).exists(), "the lying layer was written to the output"
    store_consistent(hpb)
    jail.check()


def test_uncompressed_layer_whose_diff_id_lies_is_refused(jail: Jail, hpb: PB, base_layer: Layer) -> None:
    """An uncompressed layer: its blob digest *is* its diff_id; a config saying otherwise must fail."""
    evil = Layer(tar_bytes([M(jail.token, data=b"evil")]), media_type=LAYER_TAR)
    o = consume(hpb, jail, base_layer, [evil], "run", diff_ids=[base_layer.diff_hex(), "1" * 64])
    assert_refused(o)
    store_consistent(hpb)
    jail.check()


# -- gzip bombs ------------------------------------------------------------------------------

BOMB = 256 << 20   # 256 MiB of zeros in a ~260 KiB gzip: ratio ~1000:1 (a 2 GiB one is the same file x8)


def _biggest_file(root: Path) -> int:
    big = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                big = max(big, os.lstat(os.path.join(dirpath, f)).st_size)
            except OSError:
                pass
    return big


@pytest.fixture(scope="module")
def bomb_layer() -> Layer:
    blob, diff = gzip_bomb_layer(BOMB, "bomb")
    assert len(blob) < BOMB // 500
    return Layer(b"", blob=blob, diff_id=diff)


@pytest.mark.parametrize("consumer", CONSUMERS)
def test_gzip_bomb_layer_is_refused(consumer: str, jail: Jail, hpb: PB, base_layer: Layer,
                                    bomb_layer: Layer) -> None:
    """A layer whose gzip expands ~1000:1 (issue 7 wants a ratio limit) must be refused with a
    clear error instead of being written out in full."""
    o = consume(hpb, jail, base_layer, [bomb_layer], consumer)
    written = max(_biggest_file(jail.store), _biggest_file(jail.out))
    assert o.code == 1 and written < BOMB, \
        (f"a {len(bomb_layer.blob_bytes())}-byte gzip layer was expanded to a {written}-byte file "
         f"({o.stage} exit {o.code}); it must be refused by a ratio limit")
    assert_refused(o)
    store_consistent(hpb)
    jail.check()


def test_gzip_bomb_archive_is_refused_by_load(jail: Jail, hpb: PB, base_layer: Layer) -> None:
    """``load -i`` of a gzip'd archive whose one layer blob (uncompressed tar) is 256 MiB of
    zeros packed ~1000:1."""
    import gzip as _gzip
    import io
    import tarfile

    from .hostile import Zeros, write_tar
    # The layer tar is written to disk once (256 MiB), then packed with the rest, streaming.
    layer_path = jail.work / "layer.tar"
    import hashlib
    h = hashlib.sha256()

    class HashingFile(io.RawIOBase):
        def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
            self.f = f

        def writable(self) -> bool:
            return True

        def write(self, b):  # type: ignore[no-untyped-def]
            h.update(b)
            return self.f.write(b)

    with open(layer_path, "wb") as f:
        write_tar([M("bomb", size=BOMB, stream=Zeros(BOMB))], HashingFile(f))  # type: ignore[arg-type]
    diff = h.hexdigest()
    size = layer_path.stat().st_size
    from .hostile import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, REF_NAME, config_json
    cfg = config_json([base_layer.diff_hex(), diff])
    base_blob = base_layer.blob_bytes()
    man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + sha(cfg), "size": len(cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                  "digest": "sha256:" + sha(base_blob), "size": len(base_blob)},
                                 {"mediaType": LAYER_TAR, "digest": "sha256:" + diff, "size": size}]}).encode()
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + sha(man), "size": len(man),
         "annotations": {REF_NAME: "hostile:latest"}}]}).encode()
    archive = jail.work / "bomb.tar.gz"
    with _gzip.open(archive, "wb", compresslevel=9) as gzf, tarfile.open(fileobj=gzf, mode="w|") as tf:
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                           (f"blobs/sha256/{sha(cfg)}", cfg), (f"blobs/sha256/{sha(man)}", man),
                           (f"blobs/sha256/{sha(base_blob)}", base_blob)]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo(f"blobs/sha256/{diff}")
        ti.size = size
        with open(layer_path, "rb") as lf:
            tf.addfile(ti, lf)
    layer_path.unlink()
    assert archive.stat().st_size < BOMB // 200
    r = hpb.run("load", "-i", str(archive), check=False)
    written = _biggest_file(jail.store)
    assert r.code == 1 and written < BOMB, \
        (f"load of a {archive.stat().st_size}-byte gzip'd archive wrote a {written}-byte blob into the "
         f"store (exit {r.code}); it must be refused by a ratio limit")
    assert_clean_error(r)
    store_consistent(hpb)
    jail.check()


# -- device nodes: no access to the host's disk ----------------------------------------------

@pytest.fixture
def host_disk(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A stand-in for the host's disk: a loop device over a file holding a secret marker.

    (The VM's real disk refuses reads even to the host's root here, so a loop device is used:
    the host can read it, which is what a build must not be able to do.)"""
    img = tmp_path_factory.mktemp("hostdisk") / "disk.img"
    marker = b"HOST-DISK-SECRET-" + os.urandom(6).hex().encode()
    img.write_bytes(marker + bytes((1 << 20) - len(marker)))
    p = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"no loop device for the host-disk test: {p.stderr.strip()} (needs root and loop support)", pytrace=False)
    dev = p.stdout.strip()
    try:
        with open(dev, "rb") as f:
            assert f.read(len(marker)) == marker
        st = os.stat(dev)
        yield os.major(st.st_rdev), os.minor(st.st_rdev), marker
    finally:
        subprocess.run(["losetup", "-d", dev])


def test_block_device_in_layer_gives_no_access_to_host_disk(jail: Jail, hpb: PB, base_layer: Layer,
                                                           host_disk) -> None:  # type: ignore[no-untyped-def]
    """A layer ships ``/hostdisk``, a world-readable block device node with the major:minor of
    a disk of the host. Root may create the node, but a RUN must not be able to read the host's
    disk through it (docker denies it with the devices cgroup)."""
    major, minor, marker = host_disk
    layer = Layer(tar_bytes([M("hostdisk", "block", mode=0o666, major=major, minor=minor)]))
    archive = jail.work / "hostile.tar"
    write_oci_archive(archive, [base_layer, layer], "hostile:latest")
    hpb.run("load", "-i", str(archive))
    (jail.ctx / "Dockerfile").write_text(
        "FROM hostile\n"
        "RUN ls -l /hostdisk; if head -c 64 /hostdisk > /tmp/leak 2>/dev/null && test -s /tmp/leak; then "
        "echo LEAKED: $(head -c 40 /tmp/leak); else echo NO-ACCESS; fi\n")
    r = hpb.run("build", "--progress", "plain", "-t", "result", str(jail.ctx), check=False)
    text = r.out + r.err
    assert marker.decode() not in text and not any(l.startswith("LEAKED") for l in text.splitlines()), \
        f"a RUN read the host's disk through a device node from a layer:\n{text}"
    store_consistent(hpb)
    jail.check()


def test_run_cannot_mknod_and_read_host_disk(jail: Jail, hpb: PB, host_disk) -> None:  # type: ignore[no-untyped-def]
    """Companion of the test above: without a hostile layer, RUN keeps CAP_MKNOD (docker's
    default set) and makes the node itself. Docker keeps CAP_MKNOD too but its devices cgroup
    denies opening such a node; so must pybuild's sandbox, or the layer check above is moot."""
    major, minor, marker = host_disk
    (jail.ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        f"RUN mknod /tmp/d b {major} {minor} 2>/dev/null; if head -c 64 /tmp/d > /tmp/leak 2>/dev/null "
        "&& test -s /tmp/leak; then echo LEAKED: $(head -c 40 /tmp/leak); else echo NO-ACCESS; fi; rm -f /tmp/d\n")
    r = hpb.run("build", "--progress", "plain", "-t", "result", str(jail.ctx), check=False)
    text = r.out + r.err
    assert marker.decode() not in text and not any(l.startswith("LEAKED") for l in text.splitlines()), \
        f"a RUN made a device node of a host disk and read it:\n{text}"
    store_consistent(hpb)
    jail.check()


def test_device_nodes_in_local_output_are_confined(jail: Jail, hpb: PB, base_layer: Layer,
                                                   host_disk) -> None:  # type: ignore[no-untyped-def]
    """Documents what ``--output type=local`` does with a block device node of a host disk: the
    node is created (as root) inside the destination only, with the layer's mode."""
    major, minor, _ = host_disk
    layer = Layer(tar_bytes([M("hostdisk", "block", mode=0o600, major=major, minor=minor)]))
    o = consume(hpb, jail, base_layer, [layer], "local")
    assert o.code == 0, o.err
    st = os.lstat(jail.out / "rootfs" / "hostdisk")
    assert stat.S_ISBLK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert os.major(st.st_rdev) == major and os.minor(st.st_rdev) == minor
    store_consistent(hpb)
    jail.check()


# -- build steps that pass through a layer's symlinks ----------------------------------------

STEPS: dict[str, Callable[[str], str]] = {
    "copy": lambda p: f"COPY f {p}/TOKEN-copy",
    "copy_into_dir": lambda p: f"COPY f {p}/",
    "add_tar": lambda p: f"ADD f.tar {p}/",
    "workdir": lambda p: f"WORKDIR {p}/TOKEN-workdir",
    "run_write": lambda p: f"RUN echo pwned > {p}/TOKEN-run",
    "mount_tmpfs": lambda p: f"RUN --mount=type=tmpfs,target={p}/TOKEN-tmpfs/sub true",
    "mount_cache": lambda p: f"RUN --mount=type=cache,target={p}/TOKEN-cache true",
    "mount_bind": lambda p: f"RUN --mount=type=bind,target={p}/TOKEN-bind true",
    "mount_bind_file": lambda p: f"RUN --mount=type=bind,source=f,target={p}/TOKEN-bindfile true",
    "mount_secret": lambda p: f"RUN --mount=type=secret,id=s,target={p}/TOKEN-secret true",
}


@pytest.mark.parametrize("via", ["abs_symlink", "dotdot_symlink"])
@pytest.mark.parametrize("step", list(STEPS))
def test_build_step_through_layer_symlink_stays_inside(step: str, via: str, jail: Jail, hpb: PB,
                                                       base_layer: Layer) -> None:
    """The base image has ``/esc -> <outside dir>`` (absolute) or ``/esc -> ../../…/<outside
    dir>``; a COPY/ADD/WORKDIR/RUN or a RUN --mount target under ``/esc`` must act inside the
    image (or fail cleanly), never on the host."""
    A = jail.abs_outside
    link = f"/{A}/dir" if via == "abs_symlink" else "../" * 12 + f"{A}/dir"
    archive = jail.work / "hostile.tar"
    write_oci_archive(archive, [base_layer, Layer(tar_bytes([M("esc", "symlink", link=link)]))], "hostile:latest")
    hpb.run("load", "-i", str(archive))
    (jail.ctx / "f").write_text("from the context\n")
    import tarfile
    with tarfile.open(jail.ctx / "f.tar", "w") as tf:
        tf.add(jail.ctx / "f", arcname=f"{jail.token}-added")
    (jail.work / "secret").write_text("s3cret\n")
    line = STEPS[step]("/esc").replace("TOKEN", jail.token)
    (jail.ctx / "Dockerfile").write_text(f"FROM hostile\n{line}\nRUN ls -la /esc/ /{A}/dir/ 2>&1 || true\n")
    r = hpb.run("build", "--progress", "plain", "-t", "result", "--secret", f"id=s,src={jail.work / 'secret'}",
                "--output", f"type=local,dest={jail.out / 'rootfs'}", str(jail.ctx), check=False)
    assert "Traceback" not in r.err, r.err
    if r.code != 0:
        assert_clean_error(r)
    store_consistent(hpb)
    jail.check()


# -- --output type=local into a directory that already has files -----------------------------

def test_local_output_whiteouts_do_not_delete_existing_files_in_dest(jail: Jail, hpb: PB,
                                                                     base_layer: Layer) -> None:
    """A whiteout in the image's layers hides a file of a *lower layer*; it must not delete the
    user's files already in the ``--output type=local`` destination (BuildKit's local exporter
    copies the result over dest and never deletes there unless asked with mode=delete)."""
    dest = jail.out / "rootfs"
    dest.mkdir(parents=True)
    (dest / "keep-me").write_text("user data\n")
    (dest / "sub").mkdir()
    (dest / "sub" / "also-keep").write_text("user data\n")
    layer = Layer(tar_bytes([M(".wh.keep-me"), M("sub/.wh..wh..opq"), M(f"{jail.token}", data=b"x")]))
    o = consume(hpb, jail, base_layer, [layer], "local")
    assert o.code == 0, o.err
    assert (dest / jail.token).read_bytes() == b"x"
    assert (dest / "keep-me").exists(), "a whiteout in the image deleted a file the user had in dest"
    assert (dest / "sub" / "also-keep").exists(), "an opaque whiteout emptied a user's directory in dest"
    store_consistent(hpb)
    jail.check()
