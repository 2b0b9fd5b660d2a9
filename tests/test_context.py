"""The build context: .dockerignore semantics (docker/moby), walking, tar/stdin contexts, symlink
safety, content digests with the persistent stat cache, and COPY source globbing."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import sqlite3
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from pybuild.builder.context import (
    STATCACHE_FILENAME,
    BuildContext,
    ContextKind,
    EntryType,
    IgnoreMatcher,
    StatCache,
    StatKey,
    clean_context_path,
    open_build_context,
    open_context,
    parse_dockerignore,
)
from pybuild.builder import context as ctxmod
from pybuild.errors import InvalidArchive, NotFound, UsageError, UserError

# Files created by a test and hashed within the stat cache's racy window are (rightly) not cached;
# tests about cache hits wait this long after writing before the first hash.
SETTLE = 0.25


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def write_tree(root: Path, spec: dict[str, str | bytes | None]) -> Path:
    """Create ``spec`` below ``root``: a str/bytes value is file content, None a directory."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in spec.items():
        p = root / rel
        if content is None:
            p.mkdir(parents=True, exist_ok=True)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def make_ctx(tmp_path: Path, spec: dict[str, str | bytes | None], ignore: str | None = None,
             **kw: object) -> BuildContext:
    root = tmp_path / "ctx"
    spec = {"Dockerfile": "FROM scratch\n", **spec}
    if ignore is not None:
        spec[".dockerignore"] = ignore
    write_tree(root, spec)
    return open_context(root, **kw)  # type: ignore[arg-type]


def tar_bytes(members: list[tuple[str, str, object]], compress: str | None = None) -> bytes:
    """A tar archive. Members: (name, kind, payload): kind file(payload bytes)|dir|symlink|hardlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            if kind == "file":
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                ti.size = len(data)
                ti.mode = 0o644
                tf.addfile(ti, io.BytesIO(data))
                continue
            if kind == "xfile":  # (bytes, mode)
                data, mode = payload  # type: ignore[misc]
                ti.size = len(data)
                ti.mode = mode
                tf.addfile(ti, io.BytesIO(data))
                continue
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
            elif kind == "symlink":
                ti.type = tarfile.SYMTYPE
                ti.linkname = str(payload)
            elif kind == "hardlink":
                ti.type = tarfile.LNKTYPE
                ti.linkname = str(payload)
            tf.addfile(ti)
    raw = buf.getvalue()
    if compress == "gzip":
        return gzip.compress(raw)
    if compress == "bzip2":
        return bz2.compress(raw)
    if compress == "xz":
        return lzma.compress(raw)
    if compress == "zstd":
        import zstandard
        return zstandard.ZstdCompressor().compress(raw)
    return raw


# --------------------------------------------------------------------------------------------
# .dockerignore matching: table of (patterns, path, excluded?)
# --------------------------------------------------------------------------------------------

IGNORE_CASES: list[tuple[list[str], str, bool]] = [
    # plain names and directories
    (["foo"], "foo", True),
    (["foo"], "foo/bar/baz", True),                       # a directory takes everything below it
    (["foo"], "foobar", False),
    (["foo"], "x/foo", False),                           # patterns are anchored at the root
    (["foo/"], "foo/bar", True),                          # trailing slash cleaned away
    (["/foo"], "foo/bar", True),                          # leading slash means the root
    (["./foo"], "foo", True),
    (["foo/../bar"], "bar", True),                        # path.Clean
    (["."], "anything", False),                           # "." never excludes the context
    # single-segment wildcards
    (["*"], "a/b/c", True),                               # top level matches, children follow
    (["*.md"], "README.md", True),
    (["*.md"], "docs/README.md", False),                  # * does not cross /
    (["*/temp*"], "somedir/temporary.txt", True),          # docker docs example
    (["*/temp*"], "temp.txt", False),
    (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
    (["temp?"], "tempa", True),
    (["temp?"], "temp", False),
    (["a?b"], "a/b", False),                              # ? does not match /
    (["a*b"], "a/b", False),
    ([".*"], ".foo", True),
    ([".*"], "foo", False),
    (["abc.def"], "abcdef", False),                       # . is literal
    (["a(b)c/def"], "a(b)c/def", True),                   # regexp characters are literal
    (["a.|)$(}+{bc"], "a.|)$(}+{bc", True),
    (["dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    # ** (any number of directories)
    (["**"], "file", True),
    (["**"], "dir/file", True),
    (["**/*.go"], "main.go", True),                       # zero directories
    (["**/*.go"], "a/b/c.go", True),
    (["**/*.go"], "a/b/c.gox", False),
    (["**/dir"], "dir/file", True),                       # parent match below **
    (["**/dir2/*"], "dir/dir2/file", True),
    (["**/dir2/**"], "dir/dir2/dir3/file", True),
    (["**/.git"], "sub/.git/HEAD", True),
    (["**/.foo"], "bar.foo", False),
    (["**/foo/bar"], "dir/dir2/foo/bar", True),
    (["**file"], "dir/dir/file", True),
    (["**/**/*.txt"], "file.txt", True),
    (["**/**/*.txt2"], "dir/dir/file.txt", False),
    (["a**/*.txt"], "a/dir/dir/file.txt", True),
    (["a/*.txt**"], "a/file.txt", True),
    (["dir/**"], "dir", False),                           # dir/** matches below dir, not dir
    (["dir/**"], "dir/sub/file", True),
    # character classes and escapes
    (["a[b-d]e"], "ace", True),
    (["a[b-d]e"], "aae", False),
    (["a[^b-d]e"], "aze", True),
    (["[a-ζ]*"], "α", True),
    (["\\[abc\\].txt"], "[abc].txt", True),              # escaped brackets are literal
    (["[abc].txt"], "b.txt", True),
    (["[abc].txt"], "[abc].txt", False),                  # unescaped: a class
    (["a\\*b"], "a*b", True),
    (["a\\*b"], "axb", False),
    (["a\\\\"], "a\\", True),
    # white space and comments are handled by the parser; the matcher trims too
    (["  foo  "], "foo", True),
    # exceptions; the last matching pattern wins
    (["*.go", "!main.go"], "main.go", False),
    (["!main.go", "*.go"], "main.go", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/other.md", True),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),  # docker docs
    (["*.md", "!README*.md", "README-secret.md"], "README.md", False),
    (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),  # docker docs
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["*", "!keep"], "keep/deep/file", False),
    (["*", "!keep"], "other/file", True),
    # moby's walk skips an inclusion pattern while the path is already excluded, so it records no
    # match for the directory and cannot pass one down: "x/y" stays included here (fsutil does this)
    (["x", "!x/y", "x"], "x/y", False),
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), IGNORE_CASES,
                         ids=[f"{'|'.join(p)}->{path}" for p, path, _ in IGNORE_CASES])
def test_dockerignore_matching(patterns: list[str], path: str, excluded: bool) -> None:
    # the real pipeline: ignore-file text -> BuildKit's reader -> moby's matcher
    matcher = IgnoreMatcher(parse_dockerignore("\n".join(patterns) + "\n"))
    assert matcher.excluded(path) is excluded


def test_dockerignore_table_is_large_enough() -> None:
    assert len(IGNORE_CASES) >= 35


@pytest.mark.parametrize("bad", ["[", "a[", "[^", "[]a]", "[-]", "[x-]", "[a-b-c]", "\\", "!"])
def test_malformed_patterns_are_user_errors(bad: str) -> None:
    with pytest.raises(UserError) as ei:
        IgnoreMatcher([bad])
    assert ei.value.hint


def test_root_is_never_excluded() -> None:
    assert IgnoreMatcher(["*", "**", "."]).excluded(".") is False


def test_parse_dockerignore_reads_like_buildkit() -> None:
    text = ("\ufeff# a comment\n"
            "  # not a comment: only a # in the first column starts one\n"
            "\n"
            "   \t\n"
            "/abs/path/\r\n"
            "./rel\n"
            "! spaced/exception  \n"
            "a/../b\n"
            "/\n")
    assert parse_dockerignore(text.encode()) == [
        "# not a comment: only a # in the first column starts one",
        "abs/path", "rel", "!spaced/exception", "b", "/"]


def test_should_descend_follows_fsutil() -> None:
    assert IgnoreMatcher(["docs"]).should_descend("docs") is False           # no exceptions
    m = IgnoreMatcher(["docs", "!docs/README.md"])                            # prefix exceptions
    assert m.should_descend("docs") is True
    assert m.should_descend("docs/sub") is False
    assert m.should_descend("other") is False
    assert IgnoreMatcher(["vendor", "!vendor/a/**"]).should_descend("vendor/a") is True
    assert IgnoreMatcher(["x", "!**/*.go"]).should_descend("anything") is True  # wildcard


# --------------------------------------------------------------------------------------------
# walking the context
# --------------------------------------------------------------------------------------------

def test_walk_indexes_metadata_and_leaves_excluded_out(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"app/main.py": "print(1)\n", "app/cache.pyc": "x", "README.md": "r",
                              "node_modules/x/y.js": "js", "empty": None},
                   ignore="**/*.pyc\nnode_modules\n")
    root = tmp_path / "ctx"
    os.chmod(root / "app/main.py", 0o4755)
    os.symlink("app/main.py", root / "link")
    with ctx:
        idx = ctx.walk()
        assert set(idx) == {"Dockerfile", ".dockerignore", "app", "app/main.py", "README.md",
                            "empty", "link"}
        e = idx["app/main.py"]
        st = os.lstat(root / "app/main.py")
        assert e.type is EntryType.FILE and e.mode == 0o4755 and e.size == 9
        assert (e.uid, e.gid, e.inode, e.dev) == (st.st_uid, st.st_gid, st.st_ino, st.st_dev)
        assert (e.mtime_ns, e.ctime_ns) == (st.st_mtime_ns, st.st_ctime_ns)
        assert idx["link"].type is EntryType.SYMLINK and idx["link"].link_target == "app/main.py"
        assert idx["empty"].type is EntryType.DIR
        assert ctx.walk() is not None and ctx.index.keys() == idx.keys()  # walked once, same index


def test_exception_reincludes_file_inside_excluded_dir(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"docs/README.md": "keep", "docs/other.md": "drop",
                              "docs/sub/deep.md": "drop"},
                   ignore="docs\n!docs/README.md\n")
    idx = ctx.walk()
    assert "docs/README.md" in idx
    assert "docs" in idx and idx["docs"].type is EntryType.DIR   # the parent comes along
    assert "docs/other.md" not in idx and "docs/sub" not in idx and "docs/sub/deep.md" not in idx
    assert ctx.read_bytes("docs/README.md") == b"keep"
    assert ctx.match_sources("docs/*") == ["docs/README.md"]


def test_wildcard_exception_reincludes_at_any_depth(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"vendor/a/b/c.go": "go", "vendor/a/b/c.txt": "txt", "vendor/d.go": "go"},
                   ignore="vendor\n!vendor/**/*.go\n")
    idx = ctx.walk()
    assert {"vendor", "vendor/a", "vendor/a/b", "vendor/a/b/c.go", "vendor/d.go"} <= set(idx)
    assert "vendor/a/b/c.txt" not in idx


def test_excluded_dirs_are_only_entered_when_an_exception_could_match(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(tmp_path, {"secret/a/b": "x", "docs/keep.md": "k", "docs/sub/x": "x", "ok": "ok"},
                   ignore="secret\ndocs\n!docs/keep.md\n")
    opened: list[str] = []
    real_open = os.open

    def spy(path: object, flags: int, *args: object, **kw: object) -> int:
        opened.append(os.fsdecode(path))  # type: ignore[arg-type]
        return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    idx = ctx.walk()
    monkeypatch.undo()
    assert "secret" not in opened                 # excluded, no exception below: never opened
    assert "docs" in opened and "sub" not in opened  # entered for docs/keep.md only
    assert set(idx) == {"Dockerfile", ".dockerignore", "ok", "docs", "docs/keep.md"}


def test_dockerfile_and_dockerignore_excluded_from_copy_but_still_read(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"app.txt": "a"}, ignore="Dockerfile\n.dockerignore\n")
    assert ctx.dockerfile.data == b"FROM scratch\n"
    assert ctx.ignore_patterns == ("Dockerfile", ".dockerignore")
    assert set(ctx.walk()) == {"app.txt"}
    with pytest.raises(NotFound) as ei:
        ctx.match_sources("Dockerfile")
    assert "excluded" in (ei.value.hint or "")
    assert ctx.match_sources("*") == ["app.txt"]


def test_dockerfile_and_dockerignore_are_copied_when_not_excluded(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"app.txt": "a"}, ignore="*.log\n")
    assert {"Dockerfile", ".dockerignore", "app.txt"} == set(ctx.walk())


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "ctx", {
        "build/app.Dockerfile": "FROM scratch\n",
        "build/app.Dockerfile.dockerignore": "*.log\n",
        ".dockerignore": "*.txt\n",
        "a.txt": "t", "b.log": "l"})
    ctx = open_context(root, dockerfile=root / "build/app.Dockerfile")
    assert ctx.ignore_file == str(root / "build/app.Dockerfile.dockerignore")
    assert "a.txt" in ctx.walk() and "b.log" not in ctx.walk()
    # without the Dockerfile-specific file the context's .dockerignore applies
    (root / "build/app.Dockerfile.dockerignore").unlink()
    ctx2 = open_context(root, dockerfile=root / "build/app.Dockerfile")
    assert ctx2.ignore_file == str(root / ".dockerignore")
    assert "a.txt" not in ctx2.walk() and "b.log" in ctx2.walk()


def test_dockerfile_may_live_outside_the_context(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "ctx", {"f": "x"})
    df = tmp_path / "elsewhere" / "My.Dockerfile"
    write_tree(df.parent, {"My.Dockerfile": "FROM busybox\n", "My.Dockerfile.dockerignore": "f\n"})
    ctx = open_context(root, dockerfile=df)
    assert ctx.dockerfile.data == b"FROM busybox\n" and ctx.dockerfile.path == df
    assert "f" not in ctx.walk()


def test_dockerfile_from_stdin_with_directory_context(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "ctx", {"f": "x"})
    ctx = open_context(root, dockerfile="-", stdin=io.BytesIO(b"FROM scratch\nCOPY f /\n"))
    assert ctx.kind is ContextKind.DIR and ctx.dockerfile_text.startswith("FROM scratch")
    assert ctx.match_sources("f") == ["f"]


def test_missing_dockerfile_and_context(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound) as ei:
        open_context(tmp_path / "empty")
    assert ei.value.hint
    with pytest.raises(NotFound):
        open_context(tmp_path / "nope")
    with pytest.raises(UserError):
        open_context("https://example.com/repo.git")


def test_bad_ignore_pattern_reports_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError) as ei:
        make_ctx(tmp_path, {}, ignore="ok\n[broken\n")
    assert ".dockerignore" in ei.value.message and "[broken" in ei.value.message


# --------------------------------------------------------------------------------------------
# stdin and tar contexts
# --------------------------------------------------------------------------------------------

def test_stdin_dockerfile_gives_an_empty_context() -> None:
    with open_context("-", stdin=io.BytesIO(b"FROM scratch\nLABEL a=b\n")) as ctx:
        assert ctx.kind is ContextKind.EMPTY and ctx.root is None
        assert ctx.dockerfile.data == b"FROM scratch\nLABEL a=b\n"
        assert dict(ctx.walk()) == {}
        assert ctx.match_sources(".") == ["."]
        assert ctx.tree_digest(["."]).startswith("sha256:")
        with pytest.raises(NotFound) as ei:
            ctx.match_sources("app.py")
        assert "stdin" in (ei.value.hint or "")


def test_stdin_for_both_context_and_dockerfile_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        open_context("-", dockerfile="-", stdin=io.BytesIO(b""))


def test_stdin_tar_is_a_context() -> None:
    data = tar_bytes([("Dockerfile", "file", b"FROM scratch\n"), ("app/x.txt", "file", b"x")], "gzip")
    with open_context("-", stdin=io.BytesIO(data)) as ctx:
        assert ctx.kind is ContextKind.TAR
        assert ctx.read_bytes("app/x.txt") == b"x"


@pytest.mark.parametrize("compress", [None, "gzip", "bzip2", "xz", "zstd"])
def test_tar_context_detected_by_content(tmp_path: Path, compress: str | None) -> None:
    data = tar_bytes([
        ("./", "dir", None),
        ("Dockerfile", "file", b"FROM scratch\n"),
        (".dockerignore", "file", b"**/*.log\n"),    # "*.log" would only match at the top
        ("src/", "dir", None),
        ("src/main.c", "file", b"int main;"),
        ("src/tool", "xfile", (b"#!/bin/sh\n", 0o4755)),
        ("src/debug.log", "file", b"noise"),
        ("src/link", "symlink", "main.c"),
        ("src/hard", "hardlink", "src/main.c"),
    ], compress)
    archive = tmp_path / "context.bin"           # the name says nothing: content decides
    archive.write_bytes(data)
    ctx = open_context(archive, temp_dir=tmp_path)
    root = ctx.root
    assert ctx.kind is ContextKind.TAR and root is not None and root.is_dir()
    assert ctx.dockerfile.data == b"FROM scratch\n"
    idx = ctx.walk()
    assert "src/debug.log" not in idx
    assert ctx.read_bytes("src/link") == b"int main;"
    assert idx["src/tool"].mode == 0o4755
    assert idx["src/hard"].inode == idx["src/main.c"].inode
    ctx.close()
    assert not root.exists()                      # extraction dir removed


def test_tar_context_with_dockerfile_path_inside_archive(tmp_path: Path) -> None:
    data = tar_bytes([("build/app.Dockerfile", "file", b"FROM x\n"),
                      ("build/app.Dockerfile.dockerignore", "file", b"secret\n"),
                      ("secret", "file", b"s"), ("public", "file", b"p")])
    (tmp_path / "c.tar").write_bytes(data)
    with open_context(tmp_path / "c.tar", dockerfile="build/app.Dockerfile") as ctx:
        assert ctx.dockerfile.data == b"FROM x\n"
        assert "secret" not in ctx.walk() and "public" in ctx.walk()


@pytest.mark.parametrize("members", [
    [("../evil", "file", b"pwned")],
    [("ok/../../evil", "file", b"pwned")],
    [("/evil", "file", b"pwned")],
    [("Dockerfile", "file", b"FROM x\n"), ("h", "hardlink", "../evil")],
], ids=["dotdot", "nested-dotdot", "absolute", "hardlink-escape"])
def test_tar_with_escaping_entries_is_refused(tmp_path: Path, members: list) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "evil.tar").write_bytes(tar_bytes(members))
    with pytest.raises(InvalidArchive):
        open_context(tmp_path / "evil.tar", temp_dir=work)
    assert not (tmp_path / "evil").exists() and not (work / "evil").exists()
    assert list(work.iterdir()) == []             # the partial extraction was cleaned up


def test_tar_never_writes_through_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    data = tar_bytes([("Dockerfile", "file", b"FROM x\n"),
                      ("link", "symlink", str(outside)),       # absolute link to a host dir
                      ("link/pwned", "file", b"gotcha"),
                      ("rel", "symlink", "../../../../../../.."),
                      ("rel/pwned2", "file", b"gotcha")])
    (tmp_path / "c.tar").write_bytes(data)
    with open_context(tmp_path / "c.tar", temp_dir=tmp_path) as ctx:
        assert list(outside.iterdir()) == []
        assert ctx.root is not None
        # the write landed inside the context, where the link points when the root is "/"
        assert ctx.read_bytes("link/pwned") == b"gotcha"
        assert (ctx.root / str(outside).lstrip("/") / "pwned").read_bytes() == b"gotcha"
        assert ctx.read_bytes("pwned2") == b"gotcha"


def test_a_file_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello, this is not a tar archive\n" * 40)
    with pytest.raises(UserError):
        open_context(tmp_path / "notes.txt")
    (tmp_path / "broken.tgz").write_bytes(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(InvalidArchive):
        open_context(tmp_path / "broken.tgz", temp_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# symlinks never lead out of the context
# --------------------------------------------------------------------------------------------

@pytest.fixture
def escape_ctx(tmp_path: Path) -> tuple[BuildContext, Path]:
    canary = tmp_path / "canary.txt"
    canary.write_text("TOP SECRET")
    outside = tmp_path / "outside"
    write_tree(outside, {"secret.txt": "TOP SECRET TOO"})
    root = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM x\n", "sub/real.txt": "inside"})
    os.symlink(str(canary), root / "abs_escape")                 # absolute host path
    os.symlink("../canary.txt", root / "rel_escape")             # relative, climbs out
    os.symlink("../../../../../../../../" + str(canary).lstrip("/"), root / "deep_escape")
    os.symlink(str(outside), root / "dir_escape")
    os.symlink("sub/real.txt", root / "good")                    # stays inside
    os.symlink("/sub/real.txt", root / "rooted")                 # absolute = context root
    os.symlink("../sub/real.txt", root / "sub/up")
    return open_context(root), canary


def test_symlinks_resolve_inside_the_context(escape_ctx: tuple[BuildContext, Path]) -> None:
    ctx, _ = escape_ctx
    assert ctx.read_bytes("good") == b"inside"
    assert ctx.read_bytes("rooted") == b"inside"                 # "/" is the context root
    assert ctx.read_bytes("sub/up") == b"inside"
    assert ctx.resolve("rooted") == "sub/real.txt"
    assert ctx.resolve("../../sub/real.txt") == "sub/real.txt"   # .. stops at the root


@pytest.mark.parametrize("name", ["abs_escape", "rel_escape", "deep_escape", "dir_escape/secret.txt"])
def test_symlink_outside_context_is_never_followed(escape_ctx: tuple[BuildContext, Path],
                                                   name: str) -> None:
    ctx, _ = escape_ctx
    for read in (ctx.read_bytes, ctx.file_digest):
        with pytest.raises(NotFound):
            read(name)
    entry = ctx.lstat(name.split("/")[0])
    assert entry.type is EntryType.SYMLINK                       # recorded as a link, that's all
    assert not any(p.startswith("dir_escape/") for p in ctx.walk())  # never walked through


def test_tree_digest_of_escaping_link_covers_the_link_only(escape_ctx: tuple[BuildContext, Path]) -> None:
    ctx, canary = escape_ctx
    before = ctx.tree_digest(["abs_escape", "dir_escape"])
    canary.write_text("changed")
    (canary.parent / "outside/secret.txt").write_text("changed too")
    after = open_context(ctx.root).tree_digest(["abs_escape", "dir_escape"])  # type: ignore[arg-type]
    assert before == after


def test_swapping_a_dir_for_an_outside_symlink_after_the_walk_does_not_escape(
        escape_ctx: tuple[BuildContext, Path], tmp_path: Path) -> None:
    ctx, _ = escape_ctx
    assert ctx.root is not None
    ctx.walk()
    # an attacker replaces sub/ by a link to a directory holding a file of the same name
    evil = write_tree(tmp_path / "evil", {"real.txt": "EVIL"})
    (ctx.root / "sub/real.txt").unlink()
    (ctx.root / "sub/up").unlink()
    (ctx.root / "sub").rmdir()
    os.symlink(str(evil), ctx.root / "sub")
    with pytest.raises(UserError):
        ctx.read_bytes("sub/real.txt")


# --------------------------------------------------------------------------------------------
# content digests and the stat cache
# --------------------------------------------------------------------------------------------

TREE = {"a.txt": "alpha", "dir/b.txt": "bravo", "dir/sub/c.bin": b"\x00\x01charlie", "dir/empty": None}


def cache_ctx(tmp_path: Path, cache_path: Path) -> BuildContext:
    return open_context(tmp_path / "ctx", stat_cache=StatCache(cache_path))


@pytest.fixture
def settled_tree(tmp_path: Path) -> Path:
    write_tree(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n", **TREE})
    time.sleep(SETTLE)
    return tmp_path / "ctx"


def test_rebuild_of_unchanged_tree_hashes_nothing(tmp_path: Path, settled_tree: Path) -> None:
    cache_path = tmp_path / "metadata" / STATCACHE_FILENAME
    with cache_ctx(tmp_path, cache_path) as ctx1:
        d1 = ctx1.tree_digest(["."])
        assert ctx1.hashed_files == 4                 # Dockerfile, a.txt, b.txt, c.bin
        assert ctx1.file_digest("a.txt") == ctx1.file_digest("a.txt")
        assert ctx1.hashed_files == 4                 # memoised within the build
    with cache_ctx(tmp_path, cache_path) as ctx2:    # a new process would see the same file
        assert ctx2.tree_digest(["."]) == d1
        assert ctx2.hashed_files == 0 and ctx2.hashed_bytes == 0


def test_changing_content_changes_the_digest(tmp_path: Path, settled_tree: Path) -> None:
    cache_path = tmp_path / "sc.sqlite"
    with cache_ctx(tmp_path, cache_path) as ctx1:
        d1 = ctx1.tree_digest(["dir"])
        f1 = ctx1.file_digest("dir/b.txt")
    (settled_tree / "dir/b.txt").write_text("BRAVO")    # same size, new content
    with cache_ctx(tmp_path, cache_path) as ctx2:
        assert ctx2.file_digest("dir/b.txt") != f1
        assert ctx2.tree_digest(["dir"]) != d1
        assert ctx2.hashed_files == 1


def test_chmod_changes_tree_digest(tmp_path: Path, settled_tree: Path) -> None:
    cache_path = tmp_path / "sc.sqlite"
    with cache_ctx(tmp_path, cache_path) as ctx1:
        d1 = ctx1.tree_digest(["."])
    os.chmod(settled_tree / "a.txt", 0o755)
    with cache_ctx(tmp_path, cache_path) as ctx2:
        d2 = ctx2.tree_digest(["."])
    assert d2 != d1
    os.chmod(settled_tree / "a.txt", 0o644 | stat.S_ISUID)       # suid counts too
    assert open_context(settled_tree).tree_digest(["."]) not in (d1, d2)
    os.chmod(settled_tree / "dir/empty", 0o700)                   # directories' modes count
    os.chmod(settled_tree / "a.txt", 0o644)
    assert open_context(settled_tree).tree_digest(["."]) != d1


def test_mtime_only_change_keeps_tree_digest(tmp_path: Path, settled_tree: Path) -> None:
    cache_path = tmp_path / "sc.sqlite"
    with cache_ctx(tmp_path, cache_path) as ctx1:
        d1 = ctx1.tree_digest(["."])
    os.utime(settled_tree / "a.txt", ns=(1_000_000_000, 1_000_000_000))
    os.utime(settled_tree / "dir", ns=(2_000_000_000, 2_000_000_000))
    time.sleep(SETTLE)
    with cache_ctx(tmp_path, cache_path) as ctx2:
        assert ctx2.tree_digest(["."]) == d1
        assert ctx2.hashed_files == 1                 # re-read (stat changed), same content


def test_symlink_target_change_changes_tree_digest(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM x\n", "x": "1", "y": "1"})
    os.symlink("x", root / "l")
    d1 = open_context(root).tree_digest(["l"])
    os.unlink(root / "l")
    os.symlink("y", root / "l")
    assert open_context(root).tree_digest(["l"]) != d1


def test_freshly_written_files_are_not_trusted_by_the_cache(tmp_path: Path) -> None:
    cache_path = tmp_path / "sc.sqlite"
    write_tree(tmp_path / "ctx", {"Dockerfile": "FROM x\n"})
    with cache_ctx(tmp_path, cache_path) as ctx1:           # hashed within the racy window
        ctx1.file_digest("Dockerfile")
    with cache_ctx(tmp_path, cache_path) as ctx2:
        ctx2.file_digest("Dockerfile")
        assert ctx2.hashed_files == 1                       # hashed again, not served stale
    time.sleep(SETTLE)
    with cache_ctx(tmp_path, cache_path) as ctx3:
        ctx3.file_digest("Dockerfile")                      # now old enough to cache
    with cache_ctx(tmp_path, cache_path) as ctx4:
        ctx4.file_digest("Dockerfile")
        assert ctx4.hashed_files == 0


def test_file_digest_reads_small_empty_and_multi_chunk_files_whole(tmp_path: Path) -> None:
    import hashlib
    big = os.urandom(ctxmod._CHUNK * 2 + 12345)          # three reads of at most 1 MiB
    ctx = make_ctx(tmp_path, {"small": b"x" * 100, "empty": b"", "big": big,
                              "exact": b"y" * ctxmod._READ_MIN})
    for name, data in (("small", b"x" * 100), ("empty", b""), ("big", big), ("exact", b"y" * ctxmod._READ_MIN)):
        assert ctx.file_digest(name) == "sha256:" + hashlib.sha256(data).hexdigest(), name
    assert ctx.hashed_bytes == 100 + len(big) + ctxmod._READ_MIN


def test_open_serves_the_bytes_a_small_file_was_hashed_over_until_released(tmp_path: Path) -> None:
    big = b"b" * (ctxmod._KEEP_FILE_MAX + 1)
    ctx = make_ctx(tmp_path, {"a.txt": "alpha", "big.bin": big, "empty": b""})
    ctx.tree_digest(["."])
    (tmp_path / "ctx/a.txt").write_text("ALPHA")           # changed after its digest was taken
    (tmp_path / "ctx/big.bin").write_bytes(b"B" * len(big))
    with ctx.open("a.txt") as f:
        assert f.read() == b"alpha"                        # what the cache key covers, not read again
    with ctx.open("empty") as f:
        assert f.read() == b""
    with ctx.open("big.bin") as f:                         # over the size limit: read from the context
        assert f.read() == b"B" * len(big)
    with ctx.open("a.txt") as f:                           # again: the layer and the snapshot agree
        assert f.read() == b"alpha"
    ctx.release_kept()                                     # after each step: nothing is kept
    assert ctx.read_bytes("a.txt") == b"ALPHA"


def test_open_reads_a_small_file_at_once_and_streams_a_big_one(tmp_path: Path) -> None:
    """A context file that was not hashed in this step (a stat-cache hit) is read into memory at
    once when it is small, and opened as a stream when it is bigger than 64 KiB; either way the
    bytes are the file's current ones."""
    small, edge = os.urandom(1000), os.urandom(ctxmod._KEEP_FILE_MAX)
    big = os.urandom(ctxmod._KEEP_FILE_MAX + 1)
    ctx = make_ctx(tmp_path, {"small": small, "edge": edge, "big": big, "empty": b""})
    for name, data, kind in (("small", small, io.BytesIO), ("edge", edge, io.BytesIO),
                             ("empty", b"", io.BytesIO), ("big", big, io.FileIO)):
        with ctx.open(name) as f:
            assert isinstance(f, kind), name
            assert f.read() == data, name
    assert ctx.hashed_files == 0 and not ctx._kept          # opening is not hashing


def test_tree_digest_is_computed_once_for_the_same_paths(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that keeps an up-to-date record asks again for every COPY's digest in its silent
    second pass: the same paths are answered from the first computation."""
    ctx = make_ctx(tmp_path, {"a": "1", "d/b": "2", "d/c": "3"})
    first = ctx.tree_digest(["a", "d"])
    other = ctx.tree_digest(["d"])
    assert other != first
    monkeypatch.setattr(ctx, "tree_entries", lambda paths: pytest.fail(f"recomputed {paths}"))
    assert ctx.tree_digest(["a", "d"]) == first
    assert ctx.tree_digest(iter(["a", "d"])) == first       # any iterable of the same paths
    assert ctx.tree_digest(("d",)) == other


def test_tree_entries_after_tree_digest_come_from_its_list(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The build's explain record lists every COPY tree after the digest was taken: the entries
    are handed out again, not recomputed, unless the tree is over the cap."""
    ctx = make_ctx(tmp_path, {"a": "1", "d/b": "2", "d/c": "3"})
    fresh = list(ctx.tree_entries(["a", "d"]))
    ctx.tree_digest(["a", "d"])
    monkeypatch.setattr(ctx, "_tree_records", lambda paths: pytest.fail(f"recomputed {paths}"))
    assert list(ctx.tree_entries(["a", "d"])) == fresh
    assert list(ctx.tree_entries(["a", "d"])) == fresh        # as often as asked
    monkeypatch.undo()
    monkeypatch.setattr(ctxmod, "_TREE_LIST_MAX", 2)           # a tree of 4 entries is over it
    big = make_ctx(tmp_path / "big", {"a": "1", "d/b": "2", "d/c": "3"})
    big.tree_digest(["a", "d"])
    assert ("a", "d") not in big._tree_lists
    assert list(big.tree_entries(["a", "d"])) == fresh


def test_stat_cache_lookup_answers_like_get(tmp_path: Path) -> None:
    """``lookup`` (no key object, for preloaded rows) gives what ``get`` gives: a hit only for
    the same path, device, inode, size and times; pending writes and paths outside the
    preloaded directory are answered from there."""
    cache = StatCache(tmp_path / "sc.sqlite")
    d = "sha256:" + "ab" * 32
    key = StatKey("/ctx/a", 1, 2, 3, 4_000, 5_000)
    cache.put(key, d, hashed_at_ns=10_000_000_000)
    cache.flush()
    cache.put(StatKey("/ctx/p", 1, 9, 3, 4_000, 5_000), d, hashed_at_ns=10_000_000_000)  # still pending
    cache.put(StatKey("/other/o", 1, 8, 3, 4_000, 5_000), d, hashed_at_ns=10_000_000_000)
    cache.flush()
    cache.put(StatKey("/ctx/p", 1, 9, 3, 4_000, 5_000), d, hashed_at_ns=10_000_000_000)
    cache.preload("/ctx")
    probes = [("/ctx/a", 1, 2, 3, 4_000, 5_000), ("/ctx/a", 1, 2, 3, 4_001, 5_000), ("/ctx/a", 1, 2, 4, 4_000, 5_000),
              ("/ctx/a", 1, 7, 3, 4_000, 5_000), ("/ctx/a", 2, 2, 3, 4_000, 5_000), ("/ctx/a", 1, 2, 3, 4_000, 5_001),
              ("/ctx/missing", 1, 2, 3, 4_000, 5_000), ("/ctx/p", 1, 9, 3, 4_000, 5_000),
              ("/other/o", 1, 8, 3, 4_000, 5_000), ("/other/o", 1, 8, 3, 4_000, 6_000)]
    answers = [cache.lookup(*pr) for pr in probes]
    assert answers == [cache.get(StatKey(*pr)) for pr in probes]
    assert answers == [d, None, None, None, None, None, None, d, d, None]
    cache.close()


def test_kept_bytes_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctxmod, "_KEEP_TOTAL_MAX", 10)
    ctx = make_ctx(tmp_path, {"a": b"123456", "b": b"abcdef"})
    ctx.file_digest("a")
    ctx.file_digest("b")                                   # 12 bytes would pass the cap of 10
    (tmp_path / "ctx/a").write_bytes(b"AAAAAA")
    (tmp_path / "ctx/b").write_bytes(b"BBBBBB")
    assert ctx.read_bytes("a") == b"123456" and ctx.read_bytes("b") == b"BBBBBB"


def test_resolve_of_an_index_key_that_is_a_symlink_still_follows_it(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM x\n", "d/x": "1"})
    os.symlink("d", root / "l")
    os.symlink("../Dockerfile", root / "d/up")
    ctx = open_context(root)
    assert ctx.resolve("l") == "d" and ctx.resolve("l", follow_final=False) == "l"
    assert ctx.resolve("d/up") == "Dockerfile" and ctx.resolve("d/x") == "d/x"
    assert ctx.resolve("l/x") == "d/x"


def test_tar_contexts_do_not_pollute_the_stat_cache(tmp_path: Path) -> None:
    (tmp_path / "c.tar").write_bytes(tar_bytes([("Dockerfile", "file", b"FROM x\n")]))
    cache = StatCache(tmp_path / "sc.sqlite")
    with open_context(tmp_path / "c.tar", stat_cache=cache, temp_dir=tmp_path) as ctx:
        ctx.file_digest("Dockerfile")
    assert cache._pending == {}


def test_stat_cache_roundtrip_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "meta" / "statcache.sqlite"
    cache = StatCache(path)
    assert not path.parent.exists()                 # the constructor does no I/O
    key = StatKey("/x/y", 1, 2**63 + 5, 10, 1_000, 2_000)   # inodes above 2**63 are fine
    digest = "sha256:" + "ab" * 32
    assert cache.get(key) is None
    assert cache.put(key, digest) is True
    assert cache.get(key) == digest                 # visible before the flush
    assert cache.flush() is True
    cache.close()
    other = StatCache(path)
    assert other.get(key) == digest
    assert other.get(StatKey("/x/y", 1, 2**63 + 5, 10, 1_001, 2_000)) is None
    other.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError):
        StatCache(path).put(key, "md5:abc")


def test_stat_cache_racy_entries_are_dropped(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "sc.sqlite", racy_window_ns=1_000_000_000)
    now = time.time_ns()
    digest = "sha256:" + "cd" * 32
    assert cache.put(StatKey("/a", 1, 1, 1, now - 10, now - 10), digest, hashed_at_ns=now) is False
    assert cache.put(StatKey("/b", 1, 1, 1, now - 5 * 10**9 + 1, now - 5 * 10**9 + 1), digest,
                     hashed_at_ns=now) is True
    # whole-second timestamps (coarse file systems) need a two-second margin
    assert cache.put(StatKey("/c", 1, 1, 1, (now // 10**9 - 1) * 10**9, (now // 10**9 - 1) * 10**9),
                     digest, hashed_at_ns=now) is False


def test_stat_cache_shared_by_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "sc.sqlite"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            c = StatCache(path)
            for i in range(50):
                c.put(StatKey(f"/w{n}/{i}", 1, i, i, i, i), "sha256:" + f"{n:02x}" * 32)
                if i % 10 == 9:
                    assert c.flush()
            c.close()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = StatCache(path)
    assert all(check.get(StatKey(f"/w{n}/{i}", 1, i, i, i, i)) for n in range(4) for i in range(50))


def test_corrupt_stat_cache_is_a_store_error_with_hint(tmp_path: Path) -> None:
    from pybuild.errors import StoreError
    path = tmp_path / "sc.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError) as ei:
        StatCache(path).get(StatKey("/a", 1, 1, 1, 1, 1))
    assert "remove" in (ei.value.hint or "")


def test_open_build_context_owns_its_cache(tmp_path: Path, settled_tree: Path) -> None:
    meta = tmp_path / "metadata"
    with open_build_context(settled_tree, cache_dir=meta) as ctx:
        d1 = ctx.digest(ctx.expand_sources(["."]))
        assert ctx.dockerfile_name == "Dockerfile" and ctx.dockerfile_text == "FROM scratch\n"
    assert (meta / STATCACHE_FILENAME).exists()
    with open_build_context(settled_tree, None, cache_dir=meta) as ctx:
        assert ctx.digest(["."]) == d1 and ctx.hashed_files == 0


# --------------------------------------------------------------------------------------------
# COPY sources
# --------------------------------------------------------------------------------------------

@pytest.fixture
def src_ctx(tmp_path: Path) -> BuildContext:
    ctx = make_ctx(tmp_path, {
        "a.txt": "a", "b.txt": "b", "c.md": "c", ".hidden.txt": "h", "[ab].txt": "literal",
        "sub/x.txt": "x", "sub/y.log": "y", "sub/deep/z.txt": "z", "other/x.txt": "ox",
        "skip.txt": "s", "weird*name": "w"}, ignore="skip.txt\n")
    os.symlink("sub", tmp_path / "ctx" / "linkdir")
    return ctx


@pytest.mark.parametrize(("pattern", "expected"), [
    ("*.txt", [".hidden.txt", "[ab].txt", "a.txt", "b.txt"]),   # * matches dot files; no skip.txt
    ("?.txt", ["a.txt", "b.txt"]),
    ("sub/*.txt", ["sub/x.txt"]),                               # * does not cross /
    ("*/x.txt", ["other/x.txt", "sub/x.txt"]),
    ("sub/*/z.txt", ["sub/deep/z.txt"]),
    ("[ab].txt", ["a.txt", "b.txt"]),                           # always a glob, as in docker
    ("[[]ab].txt", ["[ab].txt"]),                               # docker's documented escape
    ("[^a].txt", ["b.txt"]),
    ("weird[*]name", ["weird*name"]),
    ("nothing*", []),                                           # empty wildcard is allowed
    ("/a.txt", ["a.txt"]),
    ("./sub/../a.txt", ["a.txt"]),
    ("../../a.txt", ["a.txt"]),                                 # clamped at the context root
    ("sub/", ["sub"]),
    (".", ["."]),
    ("linkdir/*.log", ["sub/y.log"]),                           # base dir resolved via symlink
    ("linkdir", ["linkdir"]),
])
def test_match_sources(src_ctx: BuildContext, pattern: str, expected: list[str]) -> None:
    assert src_ctx.match_sources(pattern) == expected


def test_match_sources_errors(src_ctx: BuildContext) -> None:
    with pytest.raises(NotFound):
        src_ctx.match_sources("missing.txt")
    with pytest.raises(NotFound) as ei:
        src_ctx.match_sources("skip.txt")
    assert "excluded" in (ei.value.hint or "")
    with pytest.raises(NotFound):
        src_ctx.match_sources("nodir/*.txt")
    with pytest.raises(UserError):
        src_ctx.match_sources("sub/[")
    # BuildKit: escaped wildcard characters make no wildcard, so the path is taken literally,
    # backslashes included (the Dockerfile's own escape processing happens before this)
    with pytest.raises(NotFound):
        src_ctx.match_sources("\\[ab\\].txt")


def test_a_pattern_is_a_glob_even_with_no_literal_file(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"a.txt": "a", "b.txt": "b"})
    assert ctx.match_sources("[ab].txt") == ["a.txt", "b.txt"]


def test_tree_digest_covers_subtree_and_symlinked_source(src_ctx: BuildContext, tmp_path: Path) -> None:
    d_sub = src_ctx.tree_digest(["sub"])
    assert src_ctx.tree_digest(["linkdir"]) != d_sub           # the link itself is part of it
    (tmp_path / "ctx/sub/deep/z.txt").write_text("Z")
    assert open_context(tmp_path / "ctx").tree_digest(["sub"]) != d_sub
    assert open_context(tmp_path / "ctx").tree_digest(["linkdir"]) != src_ctx.tree_digest(["linkdir"])
    with pytest.raises(NotFound):
        src_ctx.tree_digest(["skip.txt"])


def test_tree_digest_is_order_independent_and_deterministic(src_ctx: BuildContext) -> None:
    assert src_ctx.tree_digest(["a.txt", "sub"]) == src_ctx.tree_digest(["sub", "a.txt", "a.txt"])
    assert src_ctx.tree_digest(["a.txt"]) != src_ctx.tree_digest(["b.txt"])


def test_clean_context_path() -> None:
    assert clean_context_path("/") == "."
    assert clean_context_path("") == "."
    assert clean_context_path("./a//b/") == "a/b"
    assert clean_context_path("../../x") == "x"
    assert clean_context_path("a/../../b") == "b"


def test_context_fs_adapter(src_ctx: BuildContext) -> None:
    fs = src_ctx.fs()
    assert fs.lstat("skip.txt") is None and fs.lstat("missing") is None
    st = fs.lstat("a.txt")
    assert st is not None and st.kind == "file" and st.size == 1   # type: ignore[attr-defined]
    assert fs.resolve("linkdir/x.txt") == "sub/x.txt"
    assert fs.resolve("") == ""
    assert "skip.txt" not in fs.children("") and "a.txt" in fs.children("")
    assert fs.children("sub") == ["deep", "x.txt", "y.log"]
    with fs.open("sub/x.txt") as f:
        assert f.read() == b"x"
    assert "sub/deep/z.txt" in fs.all_paths()
    excl = src_ctx.exclude_matcher(["*.log"])
    assert excl("sub/y.log") is False and excl("y.log") is True


def test_archive_path_detects_tars_by_content(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"bundle.bin": tar_bytes([("f", "file", b"x")], "gzip"),
                              "plain.tar": tar_bytes([("f", "file", b"x")]),
                              "notes.tar": "not really a tar"})
    assert ctx.archive_path("bundle.bin") == tmp_path.resolve() / "ctx/bundle.bin"
    assert ctx.archive_path("plain.tar") is not None
    assert ctx.archive_path("notes.tar") is None
    assert ctx.archive_path("missing.tar") is None
    assert ctx.archive_path("*.tar") is None


def test_tree_digest_is_the_json_lines_of_tree_entries(tmp_path: Path) -> None:
    """The cache key of a COPY source tree is sha256 over one json.dumps line per entry (the
    fast encoder must give the same bytes: existing caches keep their keys), including names
    with quotes, backslashes, control characters, non-ASCII and non-UTF-8 bytes."""
    import hashlib
    import json
    from pybuild.builder.context import _TREE_DIGEST_HEADER
    root = tmp_path / "ctx"
    (root / "d é").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\n")
    for name in ['q"uote', "back\\slash", "tab\tnl\nx", "snow\u2603", "plain.txt"]:
        (root / "d é" / name).write_text(name)
    os.symlink("../d é/snow\u2603", root / "link")
    os.mkdir(os.fsencode(root) + b"/raw\xff")
    with open(os.fsencode(root) + b"/raw\xff/f", "wb") as f:
        f.write(b"x")
    os.chmod(root / "d é" / "plain.txt", 0o4751)
    ctx = open_context(root)
    entries = list(ctx.tree_entries(["."]))
    assert len(entries) >= 9 and any("\udcff" in e[0] for e in entries)
    h = hashlib.sha256(_TREE_DIGEST_HEADER)
    for fields in entries:
        h.update(json.dumps(list(fields), ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n")
    assert open_context(root).tree_digest(["."]) == "sha256:" + h.hexdigest()
