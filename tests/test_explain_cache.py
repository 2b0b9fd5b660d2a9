"""`pybuild build --explain-cache`: real builds through the CLI, then the reason each missed step
gives for missing the cache (builder/explain.py)."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from pybuild.builder import explain
from pybuild.builder.build import BuildOptions, Progress, build
from pybuild.builder.context import open_build_context
from pybuild.store.store import Store

from conftest import PB

DOCKERFILE = """\
FROM busybox
ARG VERSION=1
COPY a.txt /a.txt
COPY src/ /src/
RUN echo v$VERSION > /v
CMD ["cat", "/v"]
"""

LINE = re.compile(r"^(\[stage [^\]]*\]) STEP (\d+)/\d+: (.*)$")


def make_ctx(root: Path, dockerfile: str = DOCKERFILE) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "src/app.py").write_text("print('app')\n")
    (root / "src/lib.py").write_text("print('lib')\n")
    (root / "Dockerfile").write_text(dockerfile)
    return root


def misses(out: str, stage: str = "") -> dict[int, str]:
    """Step number -> the explanation of its cache miss (of the stage whose label holds ``stage``)."""
    res = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m and stage in m.group(1) and m.group(3).startswith("cache miss: "):
            assert int(m.group(2)) not in res, f"two explanations for one step:\n{out}"
            res[int(m.group(2))] = m.group(3).removeprefix("cache miss: ")
    return res


def results(out: str) -> dict[int, str]:
    """Step number -> CACHED or DONE, FROM (step 1) left out."""
    res = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m and m.group(2) != "1" and (m.group(3) == "CACHED" or m.group(3).startswith("DONE")):
            res[int(m.group(2))] = m.group(3).split()[0]
    return res


def build_out(pb: PB, ctx: Path, *args: str, tag: str | None = "app") -> str:
    r = pb.run("build", "--explain-cache", "--progress", "plain", *args, *(["-t", tag] if tag else []), str(ctx))
    assert "Traceback" not in r.err, r.err
    return r.out


def record_path(pb: PB, tag: str = "app") -> Path:
    return explain.record_dir(pb.root / "metadata", tag) / "record.json"


def test_first_build_of_a_tag_has_no_earlier_build(pb_busybox: PB, tmp_path: Path) -> None:
    out = build_out(pb_busybox, make_ctx(tmp_path / "ctx"))
    assert misses(out) == {k: "no earlier build of app:latest" for k in range(2, 7)}, out
    assert record_path(pb_busybox).is_file()
    assert record_path(pb_busybox, "app:latest") == record_path(pb_busybox)  # one record per tag, any spelling


def test_changed_file_is_named_and_later_steps_say_their_parent_changed(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    pb_busybox.run("build", "-t", "app", str(ctx))  # recorded even without --explain-cache
    (ctx / "src/app.py").write_text("print('changed')\n")
    out = build_out(pb_busybox, ctx)
    assert results(out) == {2: "CACHED", 3: "CACHED", 4: "DONE", 5: "DONE", 6: "DONE"}, out
    assert misses(out) == {4: "file changed: src/app.py",
                           5: "parent layer changed (STEP 4 missed)",
                           6: "parent layer changed (STEP 4 missed)"}, out
    assert out.count("file changed") == 1


def test_added_and_removed_files_and_many_changes(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    build_out(pb_busybox, ctx)
    (ctx / "src/new.py").write_text("new\n")
    assert misses(build_out(pb_busybox, ctx))[4] == "file added: src/new.py"
    (ctx / "src/lib.py").unlink()
    assert misses(build_out(pb_busybox, ctx))[4] == "file removed: src/lib.py"
    for i in range(7):
        (ctx / f"src/m{i}.py").write_text(f"{i}\n")
    build_out(pb_busybox, ctx)
    for i in range(7):
        (ctx / f"src/m{i}.py").write_text(f"{i} changed\n")
    (ctx / "src/app.py").chmod(0o755)
    out = misses(build_out(pb_busybox, ctx))
    assert out[4] == "files changed: src/app.py, src/m0.py, src/m1.py, src/m2.py, src/m3.py and 3 more", out
    (ctx / "src/app.py").chmod(0o644)
    assert misses(build_out(pb_busybox, ctx))[4] == "file changed: src/app.py (mode 0755 -> 0644)"


def test_changed_build_arg(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    build_out(pb_busybox, ctx)
    out = build_out(pb_busybox, ctx, "--build-arg", "VERSION=2")
    assert misses(out) == {2: 'build-arg VERSION changed: "1" -> "2"',
                           3: "parent layer changed (STEP 2 missed)",
                           4: "parent layer changed (STEP 2 missed)",
                           5: 'build-arg VERSION changed: "1" -> "2"',  # RUN sees ARGs in its env: its own input
                           6: "parent layer changed (STEP 5 missed)"}, out


def test_changed_instruction_text(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    build_out(pb_busybox, ctx)
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("echo v$VERSION", "echo w$VERSION")
                                    .replace('CMD ["cat", "/v"]', 'CMD ["cat", "/v"]\nLABEL new=1'))
    out = build_out(pb_busybox, ctx)
    assert misses(out) == {5: 'instruction changed: "RUN echo v$VERSION > /v" -> "RUN echo w$VERSION > /v"',
                           6: "parent layer changed (STEP 5 missed)",
                           7: "new step: the last build of app:latest had nothing like it here"}, out


def test_changed_base_image(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    build_out(pb_busybox, ctx)
    old = json.loads(pb_busybox.run("inspect", "busybox").out)[0]["Digest"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "Dockerfile").write_text("FROM busybox\nRUN echo x > /x\n")
    pb_busybox.run("build", "-t", "other", str(other))
    pb_busybox.run("tag", "other", "busybox")
    new = json.loads(pb_busybox.run("inspect", "busybox").out)[0]["Digest"]
    assert old != new
    out = build_out(pb_busybox, ctx)
    assert misses(out) == {2: f"base image busybox changed: {old[:19]} -> {new[:19]}",
                           **{k: "parent layer changed (STEP 2 missed)" for k in (3, 4, 5, 6)}}, out


def test_no_op_rebuild_says_nothing_and_rewrites_nothing(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    build_out(pb_busybox, ctx)
    d = record_path(pb_busybox).parent
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.rglob("*.json")}
    assert len(before) == 3  # the record and the two COPY trees
    out = build_out(pb_busybox, ctx)
    assert set(results(out).values()) == {"CACHED"} and "cache miss" not in out, out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.rglob("*.json")} == before


def test_no_cache_and_no_tag(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    build_out(pb_busybox, ctx)
    out = build_out(pb_busybox, ctx, "--no-cache")
    assert misses(out) == {k: "--no-cache given" for k in range(2, 7)}, out
    (ctx / "a.txt").write_text("untagged\n")
    out = build_out(pb_busybox, ctx, tag=None)
    assert misses(out) == {3: "no tag given (-t), so there is no earlier build to compare with"}, out  # said once
    assert results(out)[4] == "DONE"


def test_record_survives_prune(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    build_out(pb_busybox, ctx)
    pb_busybox.run("prune")
    assert record_path(pb_busybox).is_file()
    out = build_out(pb_busybox, ctx)  # the tagged image keeps its cache records
    assert set(results(out).values()) == {"CACHED"}, out
    (ctx / "a.txt").write_text("after prune\n")
    assert misses(build_out(pb_busybox, ctx))[3] == "file changed: a.txt"
    # Without its tag, prune drops the cache records; the explain record stays and says so.
    pb_busybox.run("rmi", "app")
    pb_busybox.run("prune")
    assert record_path(pb_busybox).is_file()
    out = build_out(pb_busybox, ctx)
    assert misses(out) == {k: "cache record missing (pruned)" for k in range(2, 7)}, out


def test_corrupt_record_is_a_warning_and_is_replaced(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    build_out(pb_busybox, ctx)
    record_path(pb_busybox).write_text('{"version": 1, "steps": [')
    (ctx / "a.txt").write_text("x\n")
    out = build_out(pb_busybox, ctx)
    assert "[Warning] --explain-cache: ignoring the record of the last build of app:latest" in out, out
    assert misses(out)[3] == "the record of the last build of app:latest is unreadable", out
    # that build wrote a good record again; now break a file list instead
    for tree in record_path(pb_busybox).parent.glob("trees/*.json"):
        tree.write_bytes(b"\x00garbage")
    (ctx / "src/app.py").write_text("y\n")
    out = build_out(pb_busybox, ctx)
    assert "[Warning] --explain-cache: ignoring the unreadable file list" in out, out
    assert misses(out)[4] == "files changed (the last build's file list is missing)", out
    record_path(pb_busybox).write_text('{"version": 1, "steps": [{"stage": 0}]}')  # JSON, wrong shape
    (ctx / "a.txt").write_text("z\n")
    out = build_out(pb_busybox, ctx)
    assert "ignoring the record" in out and "unreadable" in misses(out)[3], out
    rec = json.loads(record_path(pb_busybox).read_bytes())  # right shape, wrong types inside
    for step in rec["steps"]:
        step["inputs"] = {"args": "x", "tree": 5, "mounts": 7}
    record_path(pb_busybox).write_text(json.dumps(rec))
    (ctx / "a.txt").write_text("w\n")
    out = build_out(pb_busybox, ctx)
    assert misses(out)[3].startswith("cannot compare with the last build of app:latest (malformed record"), out


def test_copy_from_stage_names_the_stage_that_changed(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("1\n")
    (ctx / "Dockerfile").write_text("FROM busybox AS base\nCOPY f /f\nFROM base AS mid\nRUN cat /f > /m\n"
                                    "FROM busybox\nCOPY --from=base /f /g\nCOPY --from=mid /m /m\n")
    build_out(pb_busybox, ctx)
    (ctx / "f").write_text("2\n")
    out = build_out(pb_busybox, ctx)
    assert misses(out, "base]") == {2: "file changed: f"}, out
    assert misses(out, "mid]") == {2: "base stage base changed (its STEP 2 missed)"}, out
    assert misses(out, "[stage 3/3]") == {2: "--from=base changed (stage base STEP 2 missed)",
                                          3: "--from=mid changed (stage mid STEP 2 missed)"}, out


def _lib_build(store: Store, ctx: Path, progress: Progress) -> None:
    with open_build_context(str(ctx), None, cache_dir=store.metadata_dir) as bc:
        build(store, BuildOptions(context=bc, dockerfile_text=bc.dockerfile_text, tags=("app",),
                                  explain_cache=True), progress=progress)


def test_tty_progress_prints_the_reason_on_its_own_line(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx", "FROM busybox\nCOPY src/ /src/\n")
    store = Store(pb_busybox.root)
    _lib_build(store, ctx, Progress("quiet"))
    (ctx / "src/app.py").write_text("tty\n")
    lines: list[str] = []
    stream = io.StringIO()
    _lib_build(store, ctx, Progress("tty", out=lines.append, stream=stream))
    assert lines == ["[stage 1/1] STEP 2/2: cache miss: file changed: src/app.py"], lines
    assert "COPY src/ /src/  DONE" in stream.getvalue()


def test_a_tree_above_the_cap_keeps_no_file_list(pb_busybox: PB, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explain, "MAX_FILES", 2)  # the real cap is 100 000 entries per step
    ctx = make_ctx(tmp_path / "ctx", "FROM busybox\nCOPY src/ /src/\n")  # src, app.py, lib.py: 3 entries
    store = Store(pb_busybox.root)
    _lib_build(store, ctx, Progress("quiet"))
    trees = list(explain.record_dir(store.metadata_dir, "app").glob("trees/*.json"))
    assert [json.loads(t.read_bytes()) for t in trees] == [{"count": 3, "entries": None}]
    (ctx / "src/app.py").write_text("big\n")
    lines: list[str] = []
    _lib_build(store, ctx, Progress("plain", out=lines.append))
    assert "[stage 1/1] STEP 2/2: cache miss: files changed (more than 2 files: no per-file list is kept)" in lines


def test_changed_run_heredoc_is_a_miss_and_is_explained(pb_busybox: PB, tmp_path: Path) -> None:
    """A RUN heredoc's body is part of the step's key (it once was not: the old result was
    reused), and the miss names the heredoc."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN <<EOF\necho one > /o\nEOF\n")
    build_out(pb_busybox, ctx)
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN <<EOF\necho two > /o\nEOF\n")
    out = build_out(pb_busybox, ctx)
    assert misses(out) == {2: "heredoc changed: EOF"}, out
    r = pb_busybox.run("run", "app", "cat", "/o")
    assert r.out.strip() == "two", r.out + r.err
