"""The up-to-date check (pybuild/uptodate.py): an unchanged rebuild is answered from its record
without loading the builder, prints exactly what the full no-op rebuild prints, and every input
that could change the result sends the rebuild back to the builder."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pybuild.builder.context import RACY_WINDOW_NS
from pybuild.uptodate import _stat_sig, parse_invocation

from conftest import PB

DOCKERFILE = """\
FROM busybox AS base
ARG VERSION=1
WORKDIR /app
COPY src/ ./src/
RUN echo "v$VERSION" > /app/version && cat /app/src/a.txt
FROM base
COPY keep/ /keep/
CMD ["cat", "/app/version"]
"""

# Runs the real entry point (as the `pybuild` script does) and says on stderr whether the CLI
# (and with it the builder) was loaded: it is not when the up-to-date check answered.
PROBE = ("import sys\n"
         "from pybuild.__main__ import main\n"
         "rc = main()\n"
         "sys.stderr.write('\\nLOADED-CLI=%s\\n' % ('pybuild.cli' in sys.modules))\n"
         "sys.exit(rc)\n")


class Run:
    def __init__(self, p: subprocess.CompletedProcess[str]) -> None:
        self.code = p.returncode
        self.out = p.stdout
        self.err = p.stderr
        assert "LOADED-CLI=" in p.stderr, p.stderr
        self.replayed = "LOADED-CLI=False" in p.stderr


def probe(pb: PB, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    p = subprocess.run([sys.executable, "-c", PROBE, "--root", str(pb.root), *args], capture_output=True,
                       text=True, env=env, cwd=cwd, timeout=300)
    return Run(p)


def settle() -> None:
    """Let the racy window pass: a file changed within it gets no record (see uptodate.record)."""
    time.sleep(RACY_WINDOW_NS / 1e9 + 0.05)


def make_ctx(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src/a.txt").write_text("a\n")
    (root / "src/b.txt").write_text("b\n")
    (root / "keep").mkdir()
    (root / "keep/k.txt").write_text("k\n")
    (root / "docs").mkdir()
    (root / "docs/x.md").write_text("x\n")
    (root / ".dockerignore").write_text("docs\n!docs/keep*\n")
    (root / "Dockerfile").write_text(DOCKERFILE)
    settle()
    return root


def records(pb: PB) -> list[Path]:
    d = pb.root / "metadata/uptodate"
    return sorted(d.iterdir()) if d.is_dir() else []


def build_args(ctx: Path, *extra: str) -> list[str]:
    return ["build", "--progress", "plain", "-t", "app", *extra, str(ctx)]


@pytest.fixture
def built(pb_busybox: PB, tmp_path: Path) -> tuple[PB, Path]:
    """A store where app was built from a settled context, and the build kept its record."""
    ctx = make_ctx(tmp_path / "ctx")
    first = probe(pb_busybox, *build_args(ctx))
    assert first.code == 0 and not first.replayed, first.err
    assert "DONE" in first.out and len(records(pb_busybox)) == 1
    return pb_busybox, ctx


def full_noop_output(pb: PB, *args: str, env: dict[str, str] | None = None) -> str:
    """What the builder prints for this no-op rebuild (the records are put aside meanwhile)."""
    keep = pb.root / "metadata/uptodate.keep"
    (pb.root / "metadata/uptodate").rename(keep)
    try:
        r = probe(pb, *args, env=env)
        assert r.code == 0 and not r.replayed, r.err
        return r.out
    finally:
        shutil.rmtree(pb.root / "metadata/uptodate", ignore_errors=True)
        keep.rename(pb.root / "metadata/uptodate")


def test_an_unchanged_rebuild_prints_what_the_builder_prints_without_loading_it(built: tuple[PB, Path]) -> None:
    pb, ctx = built
    again = probe(pb, *build_args(ctx))
    assert again.code == 0 and again.replayed, again.err
    assert again.err.strip() == "LOADED-CLI=False"
    full = full_noop_output(pb, *build_args(ctx))
    assert _times(again.out) == _times(full)  # byte for byte, but for how long FROM took
    assert "STEP 4/5: CACHED" in again.out and "Successfully tagged app:latest" in again.out
    assert "DONE" not in again.out.replace("STEP 1/5: DONE", "").replace("STEP 1/3: DONE", "")
    # the image is the one the builder made and still tagged
    image_id = again.out.strip().splitlines()[-1].removeprefix("--> ")
    assert json.loads(pb.run("inspect", "app").out)[0]["Id"] == image_id


def test_the_shorthand_and_the_default_progress_are_answered_too(built: tuple[PB, Path]) -> None:
    pb, ctx = built
    args = ["-t", "app", str(ctx)]  # `pybuild -t app DIR`, stdout not a terminal: plain
    first = probe(pb, *args)
    assert first.code == 0 and not first.replayed  # another invocation: its own record
    second = probe(pb, *args)
    assert second.code == 0 and second.replayed and _times(second.out) == _times(first.out)


def _times(out: str) -> str:
    """``out`` with the steps' durations (``DONE 0.01s``) made equal."""
    return re.sub(r"DONE \d+\.\d+s", "DONE <t>", out)


def _write(p: Path, text: str) -> None:
    p.write_text(text)


# Each change must send the rebuild to the builder; `expect` is a line the builder then prints.
CHANGES = {
    "file content, same size": (lambda ctx: _write(ctx / "src/a.txt", "z\n"), "STEP 4/5: DONE"),
    "file mode": (lambda ctx: os.chmod(ctx / "src/a.txt", 0o600), "STEP 4/5: DONE"),
    "file added": (lambda ctx: _write(ctx / "src/new.txt", "n\n"), "STEP 4/5: DONE"),
    "file removed": (lambda ctx: os.unlink(ctx / "src/b.txt"), "STEP 4/5: DONE"),
    "ignore file": (lambda ctx: _write(ctx / ".dockerignore", "docs\nkeep/k.txt\n"), "STEP 2/3: DONE"),
    "Dockerfile": (lambda ctx: _write(ctx / "Dockerfile", DOCKERFILE.replace("VERSION=1", "VERSION=2")),
                   "STEP 5/5: DONE"),
    "a Dockerfile-specific ignore file appears":
        (lambda ctx: _write(ctx / "Dockerfile.dockerignore", "keep/k.txt\n"), "STEP 2/3: DONE"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_input_is_rebuilt_by_the_builder(built: tuple[PB, Path], change: str) -> None:
    pb, ctx = built
    apply, expect = CHANGES[change]
    apply(ctx)
    r = probe(pb, *build_args(ctx))
    assert r.code == 0 and not r.replayed, r.err
    assert expect in r.out, r.out


def test_a_file_re_included_below_an_excluded_directory_is_seen(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "docs").mkdir(parents=True)
    (ctx / "docs/x.md").write_text("x\n")
    (ctx / ".dockerignore").write_text("docs\n!docs/keep*\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx/\n")
    settle()
    assert probe(pb_busybox, *build_args(ctx)).code == 0
    assert probe(pb_busybox, *build_args(ctx)).replayed
    (ctx / "docs/keep.md").write_text("kept\n")  # docs itself is excluded; its mtime is what changed
    r = probe(pb_busybox, *build_args(ctx))
    assert not r.replayed and "STEP 2/2: DONE" in r.out, r.out
    assert pb_busybox.run("run", "app", "cat", "/ctx/docs/keep.md").out == "kept\n"


def test_the_store_and_the_environment_are_inputs(built: tuple[PB, Path], busybox_tar: Path,
                                                  tmp_path: Path) -> None:
    pb, ctx = built
    assert probe(pb, *build_args(ctx)).replayed
    # the tag moved elsewhere: the builder puts it back
    pb.run("tag", "busybox", "app")
    r = probe(pb, *build_args(ctx))
    assert not r.replayed and r.code == 0 and "STEP 4/5: CACHED" in r.out
    assert probe(pb, *build_args(ctx)).replayed
    # SOURCE_DATE_EPOCH changes the image: a different invocation, built by the builder
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    r = probe(pb, *build_args(ctx), env=env)
    assert not r.replayed and r.code == 0
    # a build-arg taken from the environment
    env = {**os.environ, "VERSION": "7"}
    assert not probe(pb, *build_args(ctx, "--build-arg", "VERSION"), env=env).replayed
    assert probe(pb, *build_args(ctx, "--build-arg", "VERSION"), env=env).replayed
    env["VERSION"] = "8"
    r = probe(pb, *build_args(ctx, "--build-arg", "VERSION"), env=env)
    assert not r.replayed and "STEP 5/5: DONE" in r.out
    assert pb.run("run", "app", "cat", "/app/version").out == "v8\n"


def test_a_lost_blob_and_prune_send_the_rebuild_to_the_builder(built: tuple[PB, Path]) -> None:
    pb, ctx = built
    assert probe(pb, *build_args(ctx)).replayed
    pb.run("prune")
    assert records(pb) == []
    r = probe(pb, *build_args(ctx))
    assert not r.replayed and r.code == 0
    assert probe(pb, *build_args(ctx)).replayed
    manifest = json.loads(pb.run("inspect", "app").out)[0]["Digest"].split(":")[1]
    (pb.root / "blobs/sha256" / manifest).unlink()
    r = probe(pb, *build_args(ctx))
    assert not r.replayed and r.code == 0, r.err
    assert (pb.root / "blobs/sha256" / manifest).exists()


def test_a_retargeted_context_symlink_is_followed(built: tuple[PB, Path], tmp_path: Path) -> None:
    pb, ctx = built
    other = tmp_path / "other"
    shutil.copytree(ctx, other)
    (other / "src/a.txt").write_text("other\n")
    link = tmp_path / "link"
    link.symlink_to(ctx)
    settle()
    assert not probe(pb, *build_args(link)).replayed
    assert probe(pb, *build_args(link)).replayed
    link.unlink()
    link.symlink_to(other)
    r = probe(pb, *build_args(link))
    assert not r.replayed and "other" in r.out, r.out


def test_a_racy_file_gets_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pybuild.builder.context import open_build_context
    from pybuild.uptodate import record
    monkeypatch.chdir(tmp_path)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY a.txt /\n")
    (ctx / "a.txt").write_text("a\n")
    stats = [os.lstat(p) for p in (ctx, ctx / "a.txt", ctx / "Dockerfile")]
    newest = max(max(st.st_ctime_ns, st.st_mtime_ns) for st in stats)
    inv = parse_invocation(["--root", str(tmp_path / "store"), "build", "-t", "a", "ctx"])
    assert inv is not None
    with open_build_context(ctx) as bc:
        # a build that looked at the context within the window after the last change: no record
        assert not record(inv, mode="plain", context=bc, output="x\n", blobs=[], index=b"{}",
                          started_ns=newest + RACY_WINDOW_NS - 1)
        assert not os.path.exists(inv.record_path)
        # one that looked later may keep it
        assert record(inv, mode="plain", context=bc, output="x\n", blobs=[], index=b"{}",
                      started_ns=newest + RACY_WINDOW_NS)
        assert os.path.exists(inv.record_path)


def test_a_changed_module_of_pybuild_drops_the_record(built: tuple[PB, Path], tmp_path: Path) -> None:
    pb, ctx = built
    [rec_path] = records(pb)
    rec = json.loads(rec_path.read_bytes())
    assert any(p.endswith("builder/build.py") for p, _ in rec["code"])
    # stand in for an upgrade: point one entry at a file we may touch
    fake = tmp_path / "module.py"
    fake.write_text("# v1\n")
    rec["code"].append([str(fake), _stat_sig(str(fake))])
    rec_path.write_text(json.dumps(rec))
    assert probe(pb, *build_args(ctx)).replayed
    fake.write_text("# v2 \n")
    assert not probe(pb, *build_args(ctx)).replayed


@pytest.mark.parametrize("extra", [["--no-cache"], ["--iidfile", "IIDFILE"], ["--explain-cache"]])
def test_other_options_take_the_builder_every_time(built: tuple[PB, Path], tmp_path: Path,
                                                  extra: list[str]) -> None:
    pb, ctx = built
    extra = [str(tmp_path / "iid") if x == "IIDFILE" else x for x in extra]
    for _ in range(2):
        r = probe(pb, "build", "-t", "app", *extra, str(ctx))
        assert r.code == 0 and not r.replayed, r.err
    assert len(records(pb)) == 1  # only the fixture's


@pytest.mark.parametrize("quiet", [["-q"], ["--progress", "quiet"]])
def test_a_quiet_rebuild_prints_the_image_id(built: tuple[PB, Path], quiet: list[str]) -> None:
    pb, ctx = built
    first = probe(pb, "build", "-t", "app", *quiet, str(ctx))
    assert first.code == 0 and not first.replayed, first.err
    again = probe(pb, "build", "-t", "app", *quiet, str(ctx))
    assert again.code == 0 and again.replayed and again.out == first.out
    assert again.out == json.loads(pb.run("inspect", "app").out)[0]["Id"] + "\n"


def _on_a_terminal(pb: PB, *args: str) -> tuple[int, str, bool]:
    """Run the probe with stdout on a pseudo-terminal: (exit code, what stays on the screen,
    replayed). What stays: each line's text after its last erase-line sequence (the live block's
    redraws are erased by the finished step's line)."""
    import pty
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-c", PROBE, "--root", str(pb.root), *args], stdout=slave,
                             stderr=subprocess.PIPE, text=True)
        os.close(slave)
        raw = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            raw += chunk
        err = p.communicate(timeout=300)[1]
    finally:
        os.close(master)
    screen = [ln.rsplit("\x1b[K", 1)[-1].strip("\r") for ln in raw.decode().split("\n")]
    return p.returncode, "\n".join(ln for ln in screen if ln), "LOADED-CLI=False" in err


def test_a_rebuild_on_a_terminal_leaves_what_the_live_view_leaves(built: tuple[PB, Path]) -> None:
    pb, ctx = built
    args = ["-t", "app", str(ctx)]  # --progress auto, on a terminal: the live view
    code, first, replayed = _on_a_terminal(pb, *args)
    assert code == 0 and not replayed  # a new record, for the tty mode
    code, again, replayed = _on_a_terminal(pb, *args)
    assert code == 0 and replayed
    assert _times(again) == _times(first)
    assert "STEP 4/5 COPY src/ ./src/  CACHED" in again and "Successfully tagged app:latest" in again
    # piped, the same arguments print the plain log: the record of the other mode is not used
    piped = probe(pb, *args)
    assert not piped.replayed and "STEP 4/5: CACHED" in piped.out


def test_a_build_with_a_url_gets_no_record(pb_busybox: PB, tmp_path: Path) -> None:
    import functools
    import http.server
    import threading
    www = tmp_path / "www"
    www.mkdir()
    (www / "f.txt").write_text("remote\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM busybox\nADD http://127.0.0.1:{srv.server_port}/f.txt /f.txt\n")
        settle()
        for _ in range(2):
            r = probe(pb_busybox, *build_args(ctx))
            assert r.code == 0 and not r.replayed, r.err
        assert records(pb_busybox) == []
    finally:
        srv.shutdown()


def test_a_failed_build_keeps_no_record(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN exit 3\n")
    settle()
    for _ in range(2):
        r = probe(pb_busybox, *build_args(ctx))
        assert r.code != 0 and not r.replayed
    assert records(pb_busybox) == []


@pytest.mark.parametrize("argv, root, progress", [
    (["build", "-t", "a", "CTX"], None, "auto"),
    (["--root", "/r", "-t", "a", "--progress=plain", "CTX"], "/r", "plain"),
    (["--root=/r", "build", "CTX", "--build-arg", "A=1", "-f", "CTX/D"], "/r", "auto"),
    (["build", "-q", "CTX"], None, "quiet"),
    (["build", "--progress=plain", "--quiet", "CTX"], None, "quiet"),
])
def test_parse_invocation_reads_the_build_forms(tmp_path: Path, argv: list[str], root: str | None,
                                                progress: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYBUILD_ROOT", "/default")
    (tmp_path / "CTX").mkdir()
    inv = parse_invocation(argv)
    assert inv is not None
    assert (inv.context, inv.root, inv.progress) == ("CTX", root or "/default", progress)


@pytest.mark.parametrize("argv", [
    ["images"], ["build"], ["build", "-"], ["build", "-f", "-", "CTX"], ["build", "--no-cache", "CTX"],
    ["build", "-tapp", "CTX"], ["build", "--progress", "tty", "CTX"], ["build", "--push", "CTX"],
    ["build", "--iidfile", "f", "CTX"], ["build", "-qt", "a", "CTX"],
    ["build", "CTX", "CTX"], ["--debug", "build", "CTX"], ["build", "--", "CTX"], ["push", "a", "b"],
])
def test_parse_invocation_leaves_everything_else_to_the_cli(tmp_path: Path, argv: list[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "CTX").mkdir()
    assert parse_invocation(argv) is None


def test_the_key_covers_arguments_directory_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "CTX").mkdir()
    (tmp_path / "sub").mkdir()
    base = parse_invocation(["build", "-t", "a", "CTX"])
    assert base is not None
    keys = {base.key}
    for argv in (["build", "-t", "b", "CTX"], ["build", "-t", "a", "--build-arg", "X=1", "CTX"]):
        inv = parse_invocation(argv)
        assert inv is not None
        keys.add(inv.key)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")
    keys.add(parse_invocation(["build", "-t", "a", "CTX"]).key)  # type: ignore[union-attr]
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    monkeypatch.chdir(tmp_path / "sub")
    (tmp_path / "sub/CTX").mkdir()
    keys.add(parse_invocation(["build", "-t", "a", "CTX"]).key)  # type: ignore[union-attr]
    assert len(keys) == 5
    monkeypatch.chdir(tmp_path)
    assert parse_invocation(["build", "-t", "a", "CTX"]).key == base.key  # type: ignore[union-attr]


def test_a_second_pass_that_makes_another_image_moves_no_tag_and_keeps_no_record(
        pb_busybox: PB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The check's second pass must not change what the build did: were the build ever not
    reproducible from its cache, the tag stays on the image the build printed, and no record is kept."""
    import dataclasses

    import pybuild.builder.build as b
    from pybuild.cli import main
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY a.txt /a.txt\n")
    settle()
    real, calls = b.build, []

    def second_differs(store, opts, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(opts.tags)
        if len(calls) == 2:  # the check's pass: every step cached, but another config
            opts = dataclasses.replace(opts, labels={"perturbed": "yes"})
        return real(store, opts, *a, **kw)
    monkeypatch.setattr(b, "build", second_differs)
    rc = main(["--root", str(pb_busybox.root), "build", "--progress", "plain", "-t", "app", str(ctx)])
    out, err = capsys.readouterr()
    assert rc == 0 and len(calls) == 2 and calls[1] == ()
    printed = out.strip().splitlines()[-1].removeprefix("--> ")
    assert json.loads(pb_busybox.run("inspect", "app").out)[0]["Id"] == printed
    assert "a rebuild from the cache made" in err
    assert records(pb_busybox) == []
