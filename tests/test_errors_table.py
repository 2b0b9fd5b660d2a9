"""Every user-facing failure through the real CLI (issue 8, point 2): a table of cases.

Each case checks the exit code (1 for failures, 2 for usage errors), that stderr starts with a
single ``error:`` headline naming the file:line and the cause, that a ``hint:`` line ends it,
that build errors quote the Dockerfile with ``>>>`` at the failing line (and only they do), and
that no Python traceback appears. ``--debug`` adds the traceback and keeps the exit code.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import PB


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]           # {ctx} = the case's context dir, {tmp} = a scratch dir
    code: int
    words: tuple[str, ...]          # all in the headline
    hint: str = ""                  # in the hint line ("" = any hint)
    dockerfile: str | None = None   # written to {ctx}/Dockerfile
    line: int = 0                   # the marked Dockerfile line (0: no snippet expected)
    marked: tuple[int, ...] = ()    # every line marked with >>> (default: just `line`)
    file: str = "Dockerfile"        # the name in the headline
    stdin: str | None = None
    store: str = "main"             # main (busybox + bb2 tag) | empty | corrupt
    extra: tuple[str, ...] = field(default=())  # more files in the context


OK_DF = "FROM busybox\nRUN true\n"
TEMPLATE_HINT = "{{"

CASES = [
    # -- usage errors: exit 2 -------------------------------------------------------------------
    Case("unknown-command", ("nosuchcommand",), 2, ("No such command",), "pybuild --help"),
    Case("build-without-context", ("build",), 2, ("Missing argument", "CONTEXT"), "pybuild build --help"),
    Case("bad-progress-choice", ("build", "--progress", "fancy", "{ctx}"), 2, ("--progress", "fancy"),
         "pybuild build --help", dockerfile=OK_DF),
    Case("unknown-option", ("images", "--bogus"), 2, ("No such option", "--bogus"), "pybuild images --help"),
    Case("bad-output-spec", ("build", "--output", "type=zip,dest=x", "{ctx}"), 2, ("invalid --output",),
         "type=oci|docker|local", dockerfile=OK_DF),
    Case("output-without-dest", ("build", "--output", "type=local", "{ctx}"), 2, ("invalid --output",),
         "dest=PATH", dockerfile=OK_DF),
    Case("bad-build-arg", ("build", "--build-arg", "=x", "{ctx}"), 2, ("invalid --build-arg",), "KEY=VALUE",
         dockerfile=OK_DF),
    Case("bad-label", ("build", "--label", "novalue", "{ctx}"), 2, ("invalid --label",), "KEY=VALUE",
         dockerfile=OK_DF),
    Case("bad-secret-spec", ("build", "--secret", "foo", "{ctx}"), 2, ("invalid --secret",), "id=ID",
         dockerfile=OK_DF),
    Case("zero-pids-limit", ("build", "--pids-limit", "0", "{ctx}"), 2, ("--pids-limit",), "--pids-limit 200",
         dockerfile=OK_DF),
    Case("login-without-password", ("login", "localhost:5000", "-u", "me"), 2, ("no password",),
         "--password-stdin", stdin=""),
    Case("context-and-dockerfile-on-stdin", ("build", "-f", "-", "-"), 2, ("both",), "-f FILE", stdin=""),
    Case("bad-inspect-template", ("inspect", "-f", "{{.Nope}}", "busybox"), 2, ("--format", "Nope"), TEMPLATE_HINT),
    # -- image and store errors: exit 1 ---------------------------------------------------------
    Case("inspect-unknown-image", ("inspect", "nosuch"), 1, ("nosuch", "not in the store"), "pybuild images"),
    Case("history-unknown-image", ("history", "nosuch"), 1, ("nosuch", "not in the store"), "pybuild images"),
    Case("rmi-unknown-image", ("rmi", "nosuch"), 1, ("nosuch", "not in the store"), "pybuild images"),
    Case("tag-unknown-source", ("tag", "nosuch", "x:1"), 1, ("nosuch", "not in the store"), "pybuild images"),
    Case("tag-invalid-target", ("tag", "busybox", "UPPER:case"), 1, ("invalid reference", "UPPER"), "name[:tag]"),
    Case("images-invalid-filter", ("images", "Bad_Name"), 1, ("invalid reference",), "name[:tag]"),
    Case("pull-invalid-reference", ("pull", "bad::ref"), 1, ("invalid reference",), "name[:tag]"),
    Case("import-missing-file", ("import", "/nonexistent/rootfs.tar", "x"), 1, ("/nonexistent/rootfs.tar",
                                                                                 "no such file")),
    Case("import-not-a-tar", ("import", "{tmp}/notatar", "x"), 1, ("not a tar",)),
    Case("load-missing-file", ("load", "-i", "/nonexistent.tar"), 1, ("/nonexistent.tar", "no such file")),
    Case("load-not-a-tar", ("load", "-i", "{tmp}/notatar"), 1, ("notatar", "not a tar archive"), "pybuild save"),
    Case("save-unwritable", ("save", "busybox", "-o", "/nonexistent-dir/x.tar"), 1, ("cannot write",)),
    Case("rmi-id-with-two-tags", ("rmi", "{busybox_id}"), 1, ("referenced by 2 tags",), "-f"),
    Case("no-store-yet", ("inspect", "busybox"), 1, ("no store",), "created by the first", store="empty"),
    Case("corrupt-layer", ("save", "busybox", "-o", "{tmp}/out.tar"), 1, ("{layer}", "corrupt"), "pull/build it again",
         store="corrupt"),
    # -- build errors: exit 1, the Dockerfile quoted ----------------------------------------------
    Case("unknown-instruction", ("build", "{ctx}"), 1, ("Dockerfile:2:", "unknown instruction", "FROBNICATE"),
         "end that line with '\\'; instructions are", dockerfile="FROM busybox\nFROBNICATE x\nRUN true\n", line=2),
    Case("copy-missing-source", ("build", "{ctx}"), 1, ("Dockerfile:3:", "missing.txt", "not found"),
         "relative to the build context", dockerfile="FROM busybox\nRUN true\nCOPY missing.txt /x\n", line=3),
    Case("run-fails", ("build", "{ctx}"), 1, ("Dockerfile:2:", "non-zero code: 3"), "output",
         dockerfile="FROM busybox\nRUN echo about to fail; exit 3\nCMD [\"sh\"]\n", line=2),
    Case("run-fails-multiline", ("build", "{ctx}"), 1, ("Dockerfile:3:", "non-zero code: 4"), "output",
         dockerfile="FROM busybox\nENV A=1\nRUN echo one && \\\n    echo two && \\\n    exit 4\nLABEL x=y\n",
         line=3, marked=(3, 4, 5)),
    Case("run-heredoc-fails", ("build", "{ctx}"), 1, ("Dockerfile:2:", "non-zero code: 5"), "output",
         dockerfile="FROM busybox\nRUN <<EOF\necho in heredoc\nexit 5\nEOF\n", line=2, marked=(2, 3, 4, 5)),
    Case("run-before-from", ("build", "{ctx}"), 1, ("Dockerfile:1:", "before the first FROM"), "starts with FROM",
         dockerfile="RUN true\nFROM busybox\n", line=1),
    Case("unknown-flag", ("build", "{ctx}"), 1, ("Dockerfile:2:", "unknown flag --bogus"), "--chown",
         dockerfile="FROM busybox\nCOPY --bogus=1 a /b\n", line=2),
    Case("unterminated-heredoc", ("build", "{ctx}"), 1, ("Dockerfile:2:", "unterminated heredoc"), "EOF",
         dockerfile="FROM busybox\nRUN <<EOF\necho hi\n", line=2, marked=(2, 3)),
    Case("expansion-error", ("build", "{ctx}"), 1, ("Dockerfile:2:", "x: unset"), "${VAR?message}",
         dockerfile="FROM busybox\nENV A=${x?unset}\n", line=2),
    Case("from-empty-arg", ("build", "{ctx}"), 1, ("Dockerfile:2:", "empty image"), "--build-arg",
         dockerfile="ARG IMG\nFROM $IMG\n", line=2),
    Case("expose-invalid-port", ("build", "{ctx}"), 1, ("Dockerfile:2:", "invalid port", "abc"),
         "docs.docker.com/reference/dockerfile", dockerfile="FROM busybox\nEXPOSE abc\n", line=2),
    Case("bad-duration", ("build", "{ctx}"), 1, ("Dockerfile:2:", "invalid duration"), "30s",
         dockerfile="FROM busybox\nHEALTHCHECK --interval=bad CMD x\n", line=2),
    Case("duplicate-stage", ("build", "{ctx}"), 1, ("Dockerfile:2:", "duplicate stage name"), "own name",
         dockerfile="FROM busybox AS a\nFROM busybox AS a\n", line=2),
    Case("chown-unknown-user", ("build", "{ctx}"), 1, ("Dockerfile:2:", "nouser"), "numeric uid",
         dockerfile="FROM busybox\nCOPY --chown=nouser Dockerfile /x\n", line=2),
    Case("run-unknown-user", ("build", "{ctx}"), 1,
         ("Dockerfile:3:", 'unable to find user "nosuchuser"', "no matching entries in the image's /etc/passwd"),
         "create the user first (RUN adduser", dockerfile="FROM busybox\nUSER nosuchuser\nRUN true\n", line=3),
    Case("run-unknown-group", ("build", "{ctx}"), 1,
         ("Dockerfile:3:", 'unable to find group "nosuchgroup"', "no matching entries in the image's /etc/group"),
         "numeric gid", dockerfile="FROM busybox\nUSER root:nosuchgroup\nRUN true\n", line=3),
    Case("workdir-without-path", ("build", "{ctx}"), 1, ("Dockerfile:2:", "WORKDIR requires"), "WORKDIR /path",
         dockerfile="FROM busybox\nWORKDIR\n", line=2),
    Case("copy-from-invalid-name", ("build", "{ctx}"), 1, ("Dockerfile:2:", "invalid reference", "Bad_Name"),
         "name[:tag]", dockerfile="FROM busybox\nCOPY --from=Bad_Name /x /y\n", line=2),
    Case("dockerfile-on-stdin", ("build", "-t", "x", "-"), 1, ("<stdin>:2:", "unknown instruction"),
         "instructions are", stdin="FROM busybox\nFROBNICATE\n", line=2, file="<stdin>"),
    Case("dockerfile-named-with-f", ("build", "-f", "{ctx}/build.Dockerfile", "{ctx}"), 1,
         ("build.Dockerfile:3:", "non-zero code: 6"), "output", dockerfile=OK_DF,
         extra=("build.Dockerfile", "FROM busybox\nENV A=1\nRUN exit 6\n"), line=3,
         file="{ctx}/build.Dockerfile"),
    Case("target-missing", ("build", "--target", "nosuch", "{ctx}"), 1, ("target stage", "nosuch"), "stages",
         dockerfile=OK_DF),
    Case("empty-dockerfile", ("build", "{ctx}"), 1, ("Dockerfile:1:", "no instructions"), "FROM <image>",
         dockerfile=""),
    Case("missing-dockerfile", ("build", "{tmp}"), 1, ("cannot find the Dockerfile",), "-f PATH"),
    Case("missing-context", ("build", "{tmp}/nonexistent-ctx"), 1, ("nonexistent-ctx",)),
    Case("invalid-tag", ("build", "-t", "UPPER", "{ctx}"), 1, ("invalid reference", "UPPER"), "name[:tag]",
         dockerfile=OK_DF),
    Case("invalid-platform", ("build", "--platform", "bad", "{ctx}"), 1, ("invalid platform",), "os/arch",
         dockerfile=OK_DF),
    Case("invalid-memory", ("build", "--memory", "abc", "{ctx}"), 1, ("invalid size", "abc"), "64m",
         dockerfile=OK_DF),
    Case("missing-seccomp-profile", ("build", "--security-opt", "seccomp=/nonexistent.json", "{ctx}"), 1,
         ("seccomp profile", "/nonexistent.json"), dockerfile=OK_DF),
    Case("missing-secret-file", ("build", "--secret", "id=a,src=/nonexistent", "{ctx}"), 1,
         ("--secret a", "/nonexistent"), "src=FILE", dockerfile=OK_DF),
    Case("invalid-cache-ref", ("build", "--cache-to", "BAD_REF", "{ctx}"), 1, ("invalid reference", "BAD_REF"),
         "name[:tag]", dockerfile=OK_DF),
]


@dataclass
class Env:
    tmp: Path
    main: PB
    empty: PB
    corrupt: PB
    busybox_id: str
    layer: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Env:
    import json
    base = tmp_path_factory.mktemp("errors")
    main = PB(base / "store")
    main.run("import", str(busybox_tar), "busybox")
    main.run("tag", "busybox", "bb2")
    info = json.loads(main.run("inspect", "busybox").out)[0]
    layer = info["Manifest"]["layers"][0]["digest"]
    corrupt = PB(base / "corrupt-store")
    shutil.copytree(main.root, corrupt.root, symlinks=True)
    blob = corrupt.root / "blobs" / "sha256" / layer.split(":")[1]
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    blob.write_bytes(bytes(raw))
    (base / "notatar").write_bytes(b"\x00garbage" * 1000)
    return Env(base, main, PB(base / "empty-store"), corrupt, info["Id"][7:19], layer)


def _fill(text: str, env: Env, ctx: Path) -> str:
    return (text.replace("{ctx}", str(ctx)).replace("{tmp}", str(env.tmp))
            .replace("{busybox_id}", env.busybox_id).replace("{layer}", env.layer))


def test_the_table_is_big_and_distinct() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.code for c in CASES} == {1, 2}
    assert sum(1 for c in CASES if c.line) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_case(env: Env, case: Case) -> None:
    ctx = env.tmp / "ctx" / case.id
    ctx.mkdir(parents=True, exist_ok=True)
    if case.dockerfile is not None:
        (ctx / "Dockerfile").write_text(case.dockerfile)
    if case.extra:
        (ctx / case.extra[0]).write_text(case.extra[1])
    pb = {"main": env.main, "empty": env.empty, "corrupt": env.corrupt}[case.store]
    r = pb.run(*[_fill(a, env, ctx) for a in case.args], check=False, input=case.stdin)

    assert r.code == case.code, r
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err
    err = r.err.splitlines()
    # one headline, first (after progress lines, for a transfer that failed), naming where and what
    assert sum(1 for ln in err if ln.startswith("error:")) == 1, r.err
    start = next(i for i, ln in enumerate(err) if ln.startswith("error: "))
    assert start == 0 or all(re.match(r"^(saving|saved) sha256:", ln) for ln in err[:start]), r.err
    lines = err[start:]
    for w in case.words:
        w = _fill(w, env, ctx)
        assert w.lower() in lines[0].lower(), f"{w!r} not in the headline: {lines[0]!r}"
    # a hint, last
    hints = [ln for ln in lines if ln.startswith("hint: ")]
    assert len(hints) == 1 and lines[-1] == hints[0], r.err
    assert case.hint in hints[0], r.err
    # the Dockerfile snippet with the marker, for build errors only
    if not case.line:
        assert ">>>" not in r.err, r.err
        return
    file = _fill(case.file, env, ctx)
    assert lines[0].startswith(f"error: {file}:{case.line}: "), lines[0]
    source = case.stdin if case.stdin is not None else \
        (ctx / case.extra[0]).read_text() if case.extra else case.dockerfile or ""
    src_lines = source.splitlines()
    rows = [ln for ln in lines if re.match(r"^\s*\d+ \| ", ln)]
    assert rows, r.err
    marked = {int(ln.split("|")[0]): ln.split("| ", 1)[1] for ln in rows if "| >>>" in ln}
    assert sorted(marked) == list(case.marked or (case.line,)), r.err
    for n, text in marked.items():
        assert text == f">>> {src_lines[n - 1]}".rstrip(), (n, text)
    assert lines[1].strip().startswith(f"{file}:{case.line}"), r.err  # the snippet's title
    frame = [i for i, ln in enumerate(lines) if set(ln) == {"-"}]
    assert len(frame) == 2 and frame[0] == 2 and frame[1] > frame[0] + len(marked), r.err
    # context: the line before the failing one is shown too, unmarked
    if case.line > 1:
        assert any(re.match(rf"^\s*{case.line - 1} \|     ", ln) for ln in rows), r.err


def test_debug_shows_the_traceback_and_keeps_the_exit_code(env: Env) -> None:
    r = env.main.run("--debug", "inspect", "nosuch", check=False)
    assert r.code == 1 and "Traceback (most recent call last)" in r.err and "NotFound" in r.err
    assert "error: image 'nosuch' is not in the store" in r.err
    ctx = env.tmp / "debug-ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(OK_DF)
    r = env.main.run("--debug", "build", "--pids-limit", "0", str(ctx), check=False)
    assert r.code == 2 and "Traceback" in r.err and "UsageError" in r.err
    r = env.main.run("inspect", "nosuch", check=False)
    assert r.code == 1 and "Traceback" not in r.err


def test_quiet_build_failure_still_shows_the_failing_output(env: Env) -> None:
    ctx = env.tmp / "quiet-ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo the-reason-it-failed; exit 9\n")
    r = env.main.run("build", "-q", str(ctx), check=False)
    assert r.code == 1 and r.out == ""
    lines = r.err.splitlines()
    assert lines[0] == "error: Dockerfile:2: RUN echo the-reason-it-failed; exit 9 returned a non-zero code: 9"
    assert lines[1:5] == ["------", " > output:", "   the-reason-it-failed", "------"]  # the log's tail
    assert lines[5] == " Dockerfile:2" and "   2 | >>> RUN echo the-reason-it-failed; exit 9" in lines
    assert lines[-1].startswith("hint: ")


def test_run_as_a_numeric_uid_missing_from_passwd_works(env: Env) -> None:
    """Like docker, a uid (and gid) the image's /etc/passwd does not list is used as given."""
    ctx = env.tmp / "numeric-user-ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text("FROM busybox\nUSER 4242\nRUN id\nUSER 4243:4244\nRUN id\n")
    r = env.main.run("build", "--progress", "plain", str(ctx), check=False)
    assert r.code == 0, r.err
    assert "uid=4242 gid=4242 groups=4242" in r.out and "uid=4243 gid=4244 groups=4244" in r.out, r.out
