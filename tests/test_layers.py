"""Layer tars: deterministic writer, safe extractor, OCI whiteouts, links, xattrs, devices."""
from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from pybuild.errors import InvalidArchive, UnsafeLayer
from pybuild.oci import MediaType
from pybuild.store.layers import (Entry, entries_from_dir, entries_from_tar, extract_layer, open_decompressed,
                                  secure_join, write_layer, write_tar)
from pybuild.store.store import Store


def make_tar(members: list[tuple]) -> io.BytesIO:
    """members: (name, type, extra) where extra is content bytes / link target / None."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, typ, extra in members:
            ti = tarfile.TarInfo(name)
            ti.type = typ
            ti.mode = 0o755 if typ == tarfile.DIRTYPE else 0o644
            if typ == tarfile.REGTYPE:
                ti.size = len(extra)
                tf.addfile(ti, io.BytesIO(extra))
                continue
            if typ in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                ti.linkname = extra
            tf.addfile(ti)
    buf.seek(0)
    return buf


@pytest.fixture
def jail(tmp_path: Path) -> tuple[Path, Path]:
    """(root to extract into, canary file outside it)."""
    root = tmp_path / "jail" / "root"
    root.mkdir(parents=True)
    canary = tmp_path / "jail" / "outside"
    canary.write_text("canary")
    (tmp_path / "etc-outside").mkdir()
    return root, canary


def outside_untouched(tmp_path: Path, canary: Path) -> None:
    assert canary.read_text() == "canary"
    assert set(p.name for p in (tmp_path / "jail").iterdir()) == {"root", "outside"}
    assert not list((tmp_path / "etc-outside").iterdir())


def test_dotdot_entry_is_refused(jail: tuple[Path, Path], tmp_path: Path) -> None:
    root, canary = jail
    with pytest.raises(UnsafeLayer) as e:
        extract_layer(make_tar([("../outside", tarfile.REGTYPE, b"pwned")]), root)
    assert "escapes" in str(e.value) and e.value.hint
    with pytest.raises(UnsafeLayer):
        extract_layer(make_tar([("a/../../x", tarfile.REGTYPE, b"pwned")]), root)
    outside_untouched(tmp_path, canary)


def test_absolute_symlink_to_etc_is_confined(jail: tuple[Path, Path], tmp_path: Path) -> None:
    root, canary = jail
    target = str(tmp_path / "etc-outside")  # an absolute path that exists on the host
    extract_layer(make_tar([("etc", tarfile.SYMTYPE, target), ("etc/passwd", tarfile.REGTYPE, b"x"),
                            ("esc", tarfile.SYMTYPE, "../../.."), ("esc/outside", tarfile.REGTYPE, b"y")]), root)
    # The link is created as written, but writing through it lands inside the root.
    assert os.readlink(root / "etc") == target
    assert (root / target.lstrip("/") / "passwd").read_bytes() == b"x"
    assert (root / "outside").read_bytes() == b"y"
    outside_untouched(tmp_path, canary)


def test_hardlink_outside_is_refused(jail: tuple[Path, Path], tmp_path: Path) -> None:
    root, canary = jail
    with pytest.raises(UnsafeLayer):
        extract_layer(make_tar([("h", tarfile.LNKTYPE, "../../outside")]), root)
    with pytest.raises(InvalidArchive):
        extract_layer(make_tar([("h", tarfile.LNKTYPE, "/nonexistent-target")]), root)
    # A hardlink through a symlink that points outside resolves inside the root.
    extract_layer(make_tar([("d", tarfile.SYMTYPE, str(tmp_path / "jail")), ("f", tarfile.REGTYPE, b"in"),
                            ("d2", tarfile.DIRTYPE, None)]), root)
    outside_untouched(tmp_path, canary)


def test_whiteout_of_dotdot_is_refused(jail: tuple[Path, Path], tmp_path: Path) -> None:
    root, canary = jail
    (root / "a").mkdir()
    with pytest.raises(UnsafeLayer):
        extract_layer(make_tar([("a/.wh...", tarfile.REGTYPE, b"")]), root)
    outside_untouched(tmp_path, canary)


def test_whiteouts_apply(tmp_path: Path) -> None:
    root = tmp_path / "r"
    extract_layer(make_tar([("a", tarfile.DIRTYPE, None), ("a/keep", tarfile.REGTYPE, b"1"),
                            ("a/gone", tarfile.REGTYPE, b"2"), ("o", tarfile.DIRTYPE, None),
                            ("o/old", tarfile.REGTYPE, b"3"), ("o/sub", tarfile.DIRTYPE, None)]),
                  root if root.mkdir() is None else root)
    stats = extract_layer(make_tar([("a/.wh.gone", tarfile.REGTYPE, b""), ("o/.wh..wh..opq", tarfile.REGTYPE, b""),
                                    ("o/new", tarfile.REGTYPE, b"4")]), root)
    assert stats.whiteouts == 2
    assert sorted(p.name for p in (root / "a").iterdir()) == ["keep"]
    assert sorted(p.name for p in (root / "o").iterdir()) == ["new"]  # opaque: lower gone, own entries kept


def test_whiteouts_overlay_form(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("overlay whiteouts need root (mknod, trusted.* xattrs); the suite runs as root")
    root = tmp_path / "r"
    root.mkdir()
    extract_layer(make_tar([("a", tarfile.DIRTYPE, None), ("a/.wh.gone", tarfile.REGTYPE, b""),
                            ("o", tarfile.DIRTYPE, None), ("o/.wh..wh..opq", tarfile.REGTYPE, b"")]),
                  root, mode="overlay")
    st = os.lstat(root / "a/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(root / "o", "trusted.overlay.opaque") == b"y"


def test_links_modes_owners_xattrs_devices_roundtrip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f").write_bytes(b"content")
    os.link(src / "d/f", src / "a-link")  # sorts before d/f: the writer must reorder the pair
    os.symlink("d/f", src / "sym")
    (src / "suid").write_bytes(b"s")
    os.chmod(src / "suid", 0o4755)
    (src / "sticky").mkdir()
    os.chmod(src / "sticky", 0o1777)
    os.chown(src / "d/f", 1234, 5678)
    os.setxattr(src / "d/f", "user.test", b"\x00\xffbinary")
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(src / "fifo")
    buf = io.BytesIO()
    write_tar(entries_from_dir(src), buf)
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(buf.getvalue()))]
    assert names == sorted(names, key=lambda n: n.rstrip("/").split("/"))
    members = {m.name.rstrip("/"): m for m in tarfile.open(fileobj=io.BytesIO(buf.getvalue()))}
    assert members["a-link"].isfile() and members["d/f"].islnk() and members["d/f"].linkname == "a-link"
    assert members["d/f"].uname == "" and members["a-link"].uid == 1234
    out = tmp_path / "out"
    out.mkdir()
    buf.seek(0)
    extract_layer(buf, out)
    assert (out / "d/f").read_bytes() == b"content"
    assert os.stat(out / "d/f").st_ino == os.stat(out / "a-link").st_ino
    assert os.readlink(out / "sym") == "d/f"
    assert stat.S_IMODE(os.stat(out / "suid").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(out / "sticky").st_mode) == 0o1777
    assert (os.stat(out / "d/f").st_uid, os.stat(out / "d/f").st_gid) == (1234, 5678)
    assert os.getxattr(out / "d/f", "user.test") == b"\x00\xffbinary"
    assert os.stat(out / "null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.stat(out / "fifo").st_mode)


def test_device_nodes_skipped_when_not_permitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*a: object, **k: object) -> None:
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "mknod", deny)
    buf = io.BytesIO()
    write_tar([Entry("dev", "dir", 0o755), Entry("dev/null", "char", 0o666, devmajor=1, devminor=3),
               Entry("f", "file", 0o644, size=1, open=lambda: io.BytesIO(b"x"))], buf)
    buf.seek(0)
    out = tmp_path / "o"
    out.mkdir()
    stats = extract_layer(buf, out)
    assert stats.skipped_devices == ["dev/null"] and (out / "f").read_bytes() == b"x"


def test_writer_is_deterministic_and_clamps_mtimes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "b/x").write_text("x")
    (src / "a").write_text("a")
    os.utime(src / "a", (2_000_000_000, 2_000_000_000))
    s1, s2 = Store(tmp_path / "s1"), Store(tmp_path / "s2")
    s1.init(), s2.init()
    r1 = write_layer(s1.content, entries_from_dir(src), "gzip", clamp_mtime=100)
    os.utime(src / "b/x", (3_000_000_000, 3_000_000_000))  # later than the clamp: no change
    r2 = write_layer(s2.content, entries_from_dir(src), "gzip", clamp_mtime=100)
    assert r1 == r2
    blob = s1.content.blob_path(r1.descriptor.digest).read_bytes()
    assert blob[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        assert all(m.mtime <= 100 for m in tf)
    z = write_layer(s1.content, entries_from_dir(src), "zstd", clamp_mtime=100)
    assert z.descriptor.media_type == MediaType.OCI_LAYER_ZSTD and z.diff_id == r1.diff_id
    with open(s1.content.blob_path(z.descriptor.digest), "rb") as f:
        assert tarfile.open(fileobj=open_decompressed(f), mode="r|").getnames()


def test_entries_from_tar_normalises_sorts_and_dedups() -> None:
    tf = tarfile.open(fileobj=make_tar([("./z", tarfile.REGTYPE, b"old"), ("./", tarfile.DIRTYPE, None),
                                        ("/a", tarfile.REGTYPE, b"a"), ("z", tarfile.REGTYPE, b"new"),
                                        ("m/link", tarfile.LNKTYPE, "z")]))
    entries = entries_from_tar(tf)
    assert [(e.path, e.type) for e in entries] == [("a", "file"), ("m/link", "file"), ("z", "hardlink")]
    assert entries[1].open().read() == b"new" and entries[2].linkname == "m/link"


def test_secure_join_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    os.symlink("/", root / "up")
    os.symlink("../../../..", root / "rel")
    for rel in ("up/etc/passwd", "rel/etc", "../../x", "up/../../.."):
        assert str(secure_join(root, rel)).startswith(str(root))


def _tarfile_pax(entries: list[Entry], clamp: int | None) -> bytes:
    """The oracle: CPython's tarfile writing the same entries in PAX format (``w|`` mode)."""
    from pybuild.store.layers import _tarinfo
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for e in entries:
            ti = _tarinfo(e, clamp)
            tf.addfile(ti, e.open() if e.type == "file" else None)  # type: ignore[misc]
    return out.getvalue()


def test_writer_bytes_equal_tarfiles_pax_writer() -> None:
    """The fast header writer gives tarfile's exact bytes: plain entries, long and non-ASCII
    names and links (PAX records), xattrs, devices, numbers too big for octal fields."""
    import random
    rng = random.Random(7)
    for trial in range(200):
        entries = []
        for i in range(rng.randint(0, 25)):
            t = rng.choice(["file", "dir", "symlink", "hardlink", "char", "block", "fifo"])
            name = "/".join(rng.choice(["a", "bb", "ü", "x" * rng.choice([1, 99, 100, 101, 200])])
                            for _ in range(rng.randint(1, 3)))
            data = rng.randbytes(rng.choice([0, 1, 511, 512, 513, 3000]))
            big = rng.random() < 0.05
            entries.append(Entry(
                path=f"{i}/{name}", type=t, mode=rng.randint(0, 0o7777),
                uid=rng.choice([0, 1000, 8**7 - 1, 8**7] if big else [0, 1000]), gid=rng.choice([0, 65534]),
                mtime=rng.choice([0, 1_700_000_000, 8**11] if big else [0, 1_700_000_000]),
                size=len(data) if t == "file" else 0,
                linkname=rng.choice(["", "t", "ü", "y" * 120]) if t in ("symlink", "hardlink") else "",
                devmajor=rng.randint(0, 300) if t in ("char", "block") else 0,
                devminor=rng.randint(0, 300) if t in ("char", "block") else 0,
                xattrs={"user.k": b"v"} if rng.random() < 0.1 else {}, open=lambda d=data: io.BytesIO(d)))
        clamp = rng.choice([None, 0, 1_600_000_000])
        ours = io.BytesIO()
        write_tar(entries, ours, clamp)
        assert ours.getvalue() == _tarfile_pax(entries, clamp), f"trial {trial}"


def test_header_checksum_is_the_byte_sum_of_any_block() -> None:
    """The header checksum (Adler-32 halves, see store.layers._byte_sum) equals the plain byte
    sum for any 512-byte block, the all-0xFF one (the largest sum) included."""
    import random
    from pybuild.store.layers import _byte_sum
    rng = random.Random(11)
    blocks = [bytes(512), b"\xff" * 512, b"\xff" * 256 + bytes(256), bytes(256) + b"\xff" * 256]
    blocks += [rng.randbytes(512) for _ in range(500)]
    for b in blocks:
        assert _byte_sum(bytearray(b)) == sum(b)


def test_writer_streams_a_file_bigger_than_its_buffer() -> None:
    """A file of several MiB goes through the writer's 1 MiB buffer in pieces, byte for byte
    what tarfile writes, between small files on both sides."""
    big = os.urandom((3 << 20) + 777)
    entries = [Entry("a", "file", 0o644, size=3, mtime=5, open=lambda: io.BytesIO(b"abc")),
               Entry("b", "file", 0o600, size=len(big), mtime=6, open=lambda: io.BytesIO(big)),
               Entry("c", "file", 0o644, size=1, mtime=7, open=lambda: io.BytesIO(b"z"))]
    chunks: list[int] = []

    class Sink(io.BytesIO):
        def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
            chunks.append(len(b))
            return super().write(b)
    out = Sink()
    write_tar(entries, out)
    assert out.getvalue() == _tarfile_pax(entries, None)
    assert len(chunks) >= 4 and max(chunks) < (1 << 20) + (1 << 20) + 1024


def test_writer_refuses_a_file_that_shrank() -> None:
    e = Entry(path="f", type="file", size=10, open=lambda: io.BytesIO(b"short"))
    with pytest.raises(InvalidArchive, match="shrank"):
        write_tar([e], io.BytesIO())


@pytest.mark.parametrize("level", [1, 3, 4])
@pytest.mark.parametrize("kind", ["text", "random", "mixed", "tiny", "empty"])
def test_parallel_gzip_is_standard_and_deterministic(kind: str, level: int) -> None:
    """Layers are one standard gzip member (gzip/zlib read them back), the same bytes however
    the input is fed, and incompressible chunks are stored rather than deflated; at ISA-L's
    levels (1-3, the default 1) as at zlib's (4-9)."""
    import random
    from pybuild.store.layers import GZIP_LEVEL, _ParallelGzip
    assert GZIP_LEVEL == 1
    rng = random.Random(3)
    text = b"".join(b" ".join(rng.choice([b"layer", b"blob", b"tar", b"digest"]) for _ in range(9)) + b"\n"
                    for _ in range(90_000))
    noise = rng.randbytes(3 << 20)
    data = {"text": text, "random": noise, "mixed": noise[:1 << 20] + text + noise, "tiny": b"abc",
            "empty": b""}[kind]

    def run(step: int) -> bytes:
        g = _ParallelGzip(level)
        out = b"".join(g.compress(data[i:i + step]) for i in range(0, len(data), step))
        return out + g.flush()

    a, b = run(1 << 20), run(777_777)
    assert a == b
    assert gzip.decompress(a) == data
    if kind == "random":
        assert len(a) < len(data) + 1000  # stored: no deflate expansion, little framing
    if kind == "text":
        assert len(a) < len(data) // 4
