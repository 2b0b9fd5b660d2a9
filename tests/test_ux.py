"""Issue 8: progress (live view on a terminal, checked on a real tmux screen; plain logs checked
against golden files with timings masked; transfer progress for pull, push, save and FROM pulls
against the real registry), docker-like history/inspect/images, complete help, and the docs."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conftest import PB, REPO, TESTDATA

GOLDEN = TESTDATA / "ux"
UPDATE = os.environ.get("PYBUILD_UPDATE_GOLDEN") == "1"


# -- helpers -----------------------------------------------------------------------------------
def mask(text: str, *paths: Path) -> str:
    """Timings, digests and sizes (they change with the busybox package) and temp paths masked."""
    for p in paths:
        text = text.replace(str(p), "<TMP>")
    text = re.sub(r"\b\d+\.\d+s\b", "<T>s", text)
    text = re.sub(r"sha256:[0-9a-f]{64}", "sha256:<DIGEST>", text)
    text = re.sub(r"sha256:[0-9a-f]{12}\b", "sha256:<ID>", text)
    text = re.sub(r"\b\d+(\.\d+)?(B|kB|MB|GB)\b", "<SIZE>", text)
    return text


def golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"missing golden file {path} (PYBUILD_UPDATE_GOLDEN=1 writes it)"
    assert actual == path.read_text(), f"{name} differs from the golden file:\n{actual}"


class Tmux:
    """One tmux server on a private socket: a real terminal emulator whose screen we read."""

    def __init__(self, cols: int = 120, rows: int = 40) -> None:
        assert shutil.which("tmux"), "tmux is needed to check the live progress on a real terminal"
        self.sock = f"pybuild-ux-{uuid.uuid4().hex[:8]}"
        self.cols, self.rows = cols, rows

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def start(self, argv: list[str], cwd: Path) -> None:
        cmd = " ".join(shlex.quote(a) for a in argv)
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", str(self.cols), "-y", str(self.rows), "-s", "ux",
                  "-c", str(cwd), f"{cmd}; echo EXIT=$?; sleep 120")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", "ux")

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if re.search(pattern, s, re.M):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} never appeared on the screen:\n{s}")
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=30)
        self.sock = f"pybuild-ux-{uuid.uuid4().hex[:8]}"  # a next start gets a server of its own


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    yield t
    t.close()


def exit_code(screen: str) -> int:
    return int(re.search(r"^EXIT=(\d+)", screen, re.M).group(1))  # type: ignore[union-attr]


# -- the build's live view on a terminal -------------------------------------------------------
LIVE_DOCKERFILE = """FROM busybox
ENV GREETING=hello
COPY a.txt /a.txt
RUN for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo out-line-$i; done; echo marker-running; sleep 2; echo last-words
LABEL done=yes
"""


def test_live_view_shows_the_running_step_and_collapses_finished_ones(pb_busybox: PB, tmp_path: Path,
                                                                      tmux: Tmux) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a\n")
    (ctx / "Dockerfile").write_text(LIVE_DOCKERFILE)
    env_argv = ["env", "TERM=xterm"] + pb_busybox.argv("build", "-t", "live", str(ctx))
    tmux.start(env_argv, tmp_path)
    # while RUN sleeps: its header with the elapsed time, then the last lines of its output
    s = tmux.wait_for(r"^\s+marker-running$")
    lines = s.splitlines()
    head = next(i for i, ln in enumerate(lines) if "STEP 4/5: RUN" in ln)
    assert re.search(r"\s\d+\.\ds$", lines[head].rstrip()), lines[head]
    tail = [ln.strip() for ln in lines[head + 1:] if ln.strip()]
    assert tail == ["out-line-8", "out-line-9", "out-line-10", "out-line-11", "out-line-12", "marker-running"], s
    assert not re.search(r"^\s*out-line-[1-7]$", s, re.M)  # only the tail is live
    assert re.search(r"STEP 3/5 COPY a.txt /a.txt  (DONE|CACHED)", s)  # finished steps: one line each
    # later the elapsed time has moved on
    time.sleep(0.5)
    later = tmux.screen()
    if "STEP 4/5: RUN" in later:
        t0 = float(re.search(r"(\d+\.\d)s$", lines[head].rstrip()).group(1))  # type: ignore[union-attr]
        now = re.search(r"STEP 4/5: RUN.*\s(\d+\.\d)s$", later, re.M)
        assert now and float(now.group(1)) > t0, later
    # at the end the RUN step collapsed to one line: its output is gone from the screen
    s = tmux.wait_for(r"^EXIT=\d+")
    assert exit_code(s) == 0, s
    assert not re.search(r"^\s*(out-line-\d+|marker-running|last-words)$", s, re.M), s
    for k, what in enumerate(["FROM busybox", "ENV GREETING=hello", "COPY a.txt /a.txt", "RUN for i in",
                              "LABEL done=yes"], 1):
        found = [ln for ln in s.splitlines() if f"STEP {k}/5 {what}" in ln]
        assert len(found) == 1 and re.search(r"  (DONE \d+\.\d+s|CACHED)$", found[0].rstrip()), s
    assert "Successfully tagged live:latest" in s and re.search(r"--> sha256:[0-9a-f]{64}", s)
    assert "\x1b" not in s and "STEP 4/5: RUN" not in s  # no live line left over


def test_live_view_leaves_the_tail_of_a_failing_step(pb_busybox: PB, tmp_path: Path, tmux: Tmux) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN for i in $(seq 1 30); do echo fail-line-$i; done; "
                                    "exit 3\nLABEL never=reached\n")
    tmux.start(["env", "TERM=xterm"] + pb_busybox.argv("build", str(ctx)), tmp_path)
    s = tmux.wait_for(r"^EXIT=\d+")
    assert exit_code(s) == 1, s
    lines = [ln.rstrip() for ln in s.splitlines()]
    err = next(i for i, ln in enumerate(lines) if re.search(r"STEP 2/3: RUN .*  ERROR after \d+\.\d+s$", ln))
    assert lines[err + 1] == "------" and lines[err + 2] == " > last 20 of 30 lines:"
    assert [ln.strip() for ln in lines[err + 3:err + 23]] == [f"fail-line-{i}" for i in range(11, 31)]
    assert lines[err + 23] == "------"
    assert "fail-line-10" not in s
    rest = lines[err + 24:]
    assert rest[0] == "error: Dockerfile:2: RUN for i in $(seq 1 30); do echo fail-line-$i; done; exit 3 " \
                      "returned a non-zero code: 3"
    assert any(re.match(r"^\s+2 \| >>> RUN for i in", ln) for ln in rest) and \
        any(re.match(r"^\s+3 \|     LABEL never=reached", ln) for ln in rest)
    assert any(ln.startswith("hint: ") for ln in rest) and "Traceback" not in s


# -- plain logs: golden files ------------------------------------------------------------------
GOLDEN_DOCKERFILE = """FROM busybox AS base
ARG NAME=world
ENV GREETING="hello ${NAME}"
WORKDIR /app
COPY a.txt ./
RUN echo "$GREETING" > greeting && cat greeting && echo second line

FROM base
LABEL stage=final
RUN test -f /app/greeting
CMD ["cat", "/app/greeting"]
"""


def test_plain_build_log_matches_the_golden_files(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a\n")
    (ctx / "Dockerfile").write_text(GOLDEN_DOCKERFILE)
    first = pb_busybox.run("build", "--progress", "plain", "-t", "golden", str(ctx))
    golden("build-plain.txt", mask(first.out, ctx))
    assert first.err == ""
    again = pb_busybox.run("build", "-t", "golden", str(ctx))  # stdout is a pipe: auto means plain
    golden("build-plain-cached.txt", mask(again.out, ctx))
    quiet = pb_busybox.run("build", "--progress", "quiet", "-t", "golden", str(ctx))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", quiet.out) and quiet.err == ""
    assert quiet.out.strip() == first.out.strip().rsplit("--> ", 1)[1]


def test_plain_failure_log_matches_the_golden_file(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nENV A=1\nRUN echo first && \\\n    echo second && \\\n"
                                    "    exit 7\nCMD [\"sh\"]\n")
    r = pb_busybox.run("build", "--progress", "plain", str(ctx), check=False)
    assert r.code == 1
    golden("build-plain-failure.stdout.txt", mask(r.out, ctx))
    golden("build-plain-failure.stderr.txt", mask(r.err, ctx))


# -- transfers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from registry_client.conftest import RegistryServer
    srv = RegistryServer(tmp_path_factory.mktemp("ux-registry")).start()
    yield srv
    srv.stop()


def test_transfers_log_plain_lines(registry: object, pb_busybox: PB, tmp_path: Path) -> None:
    host = registry.host  # type: ignore[attr-defined]
    ref = f"{host}/ux/plain:1"
    r = pb_busybox.run("push", "busybox", ref)
    assert r.out.startswith(f"{ref}: digest: sha256:")
    ups = [ln for ln in r.err.splitlines()]
    layer = json.loads(pb_busybox.run("inspect", "busybox").out)[0]["Manifest"]["layers"][0]
    short = layer["digest"][:19]
    assert any(re.fullmatch(rf"uploading {short} \d\S*B", ln) for ln in ups), r.err
    assert any(re.fullmatch(rf"uploaded {short} \S+B in \d+\.\d\ds", ln) for ln in ups), r.err
    again = pb_busybox.run("push", "busybox", ref).err
    assert f"{short} already exists" in again and "uploading" not in again
    # pull into a fresh store
    other = PB(tmp_path / "other")
    r = other.run("pull", ref)
    assert r.out.splitlines()[0] == ref and r.out.splitlines()[1].startswith("Digest: sha256:")
    assert re.search(rf"^downloading {short} \S+B$", r.err, re.M) and \
        re.search(rf"^downloaded {short} \S+B in \d+\.\d\ds$", r.err, re.M), r.err
    assert other.run("pull", "-q", ref).err == "" and other.run("push", "--progress", "quiet", ref).err == ""
    # a FROM pull reports its transfers in the build log
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {host}/ux/plain:1\nLABEL a=b\n")
    third = PB(tmp_path / "third")
    out = third.run("build", "--progress", "plain", "-t", "fromreg", str(ctx)).out
    assert f"pulling {host}/ux/plain:1" in out
    assert re.search(rf"^downloaded {short} \S+B in \d+\.\d\ds$", out, re.M), out
    # save: a line per blob
    r = pb_busybox.run("save", "busybox", "-o", str(tmp_path / "b.tar"))
    assert re.search(rf"^saving {short} \S+B$", r.err, re.M) and re.search(rf"^saved {short} ", r.err, re.M)
    r = pb_busybox.run("save", "--progress", "quiet", "busybox", "-o", str(tmp_path / "b.tar"))
    assert r.err == ""


def test_transfers_draw_live_bars_on_a_terminal(registry: object, pb_busybox: PB, tmp_path: Path,
                                                tmux: Tmux) -> None:
    host = registry.host  # type: ignore[attr-defined]
    ref = f"{host}/ux/live:1"
    layer = json.loads(pb_busybox.run("inspect", "busybox").out)[0]["Manifest"]["layers"][0]
    short = layer["digest"][:19]
    # the raw terminal output: bars redrawn in place
    cmd = " ".join(shlex.quote(a) for a in pb_busybox.argv("push", "busybox", ref))
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, timeout=120)
    raw = p.stdout.decode()
    assert p.returncode == 0, raw
    assert re.search(rf"\r\x1b\[K  {re.escape(short)}  uploading +\[[=> ]{{20}}\] \S+/\S+B  \d+\.\ds", raw), raw
    assert f"uploaded {short}" in raw
    # the screen after a pull: one collapsed line per blob, no bars left
    other = PB(tmp_path / "other")
    tmux.start(["env", "TERM=xterm"] + other.argv("pull", ref), tmp_path)
    s = tmux.wait_for(r"^EXIT=\d+")
    assert exit_code(s) == 0, s
    assert len([ln for ln in s.splitlines() if ln.startswith(f"downloaded {short} ")]) == 1, s
    assert "[" not in s and "downloading" not in s, s
    assert ref in s and "Digest: sha256:" in s
    tmux.close()
    tmux.start(["env", "TERM=xterm"] + other.argv("save", ref, "-o", str(tmp_path / "x.tar")),
               tmp_path)
    s = tmux.wait_for(r"^EXIT=\d+")
    assert exit_code(s) == 0 and f"saved {short} " in s and "[" not in s, s


def test_big_transfers_log_milestones_in_plain_mode() -> None:
    from pybuild.progress import TransferView
    lines: list[str] = []
    v = TransferView("plain", out=lines.append)
    d = "sha256:" + "ab" * 32
    for done in range(0, 20_000_001, 1_000_000):
        v.event("downloading", d, 20_000_000, done)
    v.event("downloaded", d, 20_000_000, 20_000_000)
    assert [mask(ln) for ln in lines] == [
        "downloading sha256:<ID> <SIZE>",
        "downloading sha256:<ID> 25% (<SIZE>/<SIZE>)",
        "downloading sha256:<ID> 50% (<SIZE>/<SIZE>)",
        "downloading sha256:<ID> 75% (<SIZE>/<SIZE>)",
        "downloaded sha256:<ID> <SIZE> in <T>s",
    ]
    assert lines[2] == "downloading sha256:abababababab 50% (10MB/20MB)"


# -- history, inspect, images ------------------------------------------------------------------
def test_history_inspect_images_print_like_docker(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nENV A=1\nRUN echo hi > /hi\nLABEL x=y\n")
    iid = pb_busybox.run("build", "-q", "-t", "app:v1", str(ctx)).out.strip()
    table = pb_busybox.run("history", "app:v1").out.splitlines()
    assert re.split(r"\s{3,}", table[0]) == ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
    rows = [re.split(r"\s{3,}", ln) for ln in table[1:]]
    assert [r[0] for r in rows] == [iid[7:19], "<missing>", "<missing>", "<missing>"]
    assert [r[2] for r in rows][:3] == ["LABEL x=y", "RUN echo hi > /hi", "ENV A=1"]
    assert rows[0][3] == "0B" and rows[2][3] == "0B"  # empty layers
    assert re.fullmatch(r"\d+B", rows[1][3]) and re.fullmatch(r"\d+(\.\d+)?[kM]B", rows[3][3])
    assert all(r[1].endswith(" ago") for r in rows)
    raw = [re.split(r"\s{3,}", ln) for ln in pb_busybox.run("history", "--no-human", "app:v1").out.splitlines()[1:]]
    assert raw[0][1] == "1970-01-01T00:00:00Z" and raw[0][3] == "0" and raw[1][3].isdigit()
    assert pb_busybox.run("history", "-q", "--no-trunc", "app:v1").out.split() == [iid] + ["<missing>"] * 3
    js = json.loads(pb_busybox.run("history", "--format", "json", "app:v1").out)
    assert [h["ID"] for h in js] == [iid] + ["<missing>"] * 3
    assert [h["EmptyLayer"] for h in js] == [True, False, True, False] and js[0]["Size"] == 0
    assert js[1]["Size"] == int(raw[1][3])
    # a long CREATED BY is cut at 45 characters, unless --no-trunc
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo " + "x" * 60 + " > /long\n")
    pb_busybox.run("build", "-q", "-t", "long", str(ctx))
    cut = re.split(r"\s{3,}", pb_busybox.run("history", "long").out.splitlines()[1])[2]
    assert len(cut) == 45 and cut.endswith("…")
    assert "x" * 60 in pb_busybox.run("history", "--no-trunc", "long").out

    info = json.loads(pb_busybox.run("inspect", "app:v1").out)
    assert isinstance(info, list) and len(info) == 1
    i = info[0]
    for key in ("Id", "RepoTags", "RepoDigests", "Parent", "Comment", "Created", "DockerVersion", "Author",
                "Config", "Architecture", "Os", "Size", "RootFS", "Metadata"):
        assert key in i, key
    assert i["Id"] == iid and i["RepoTags"] == ["app:v1"] and i["RepoDigests"] == [f"app@{i['Digest']}"]
    assert i["Config"]["Env"][-1] == "A=1" and i["Config"]["Labels"] == {"x": "y"}
    assert i["RootFS"]["Type"] == "layers" and len(i["RootFS"]["Layers"]) == 2
    assert i["Size"] == sum(x["size"] for x in i["Manifest"]["layers"]) + i["Manifest"]["config"]["size"]
    out = pb_busybox.run("inspect", "-f", "{{.Id}} {{.Os}} {{json .Config.Labels}} {{.RepoTags}}", "app:v1").out
    assert out == f'{iid} linux {{"x": "y"}} [app:v1]\n'

    head, *lines = pb_busybox.run("images").out.splitlines()
    assert re.split(r"\s{3,}", head) == ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    app = next(re.split(r"\s{3,}", ln) for ln in lines if ln.startswith("app "))
    assert app[:3] == ["app", "v1", iid[7:19]] and app[3].endswith("ago") and app[4].endswith("MB")
    only = pb_busybox.run("images", "app").out.splitlines()
    assert len(only) == 2 and only[1].startswith("app ")
    assert len(pb_busybox.run("images", "app:v2").out.splitlines()) == 1
    dig = pb_busybox.run("images", "--digests", "--no-trunc", "app:v1").out.splitlines()
    assert re.split(r"\s{3,}", dig[0])[2] == "DIGEST" and re.split(r"\s{3,}", dig[1])[2:4] == [i["Digest"], iid]
    rows_js = json.loads(pb_busybox.run("images", "--format", "json", "app").out)
    assert rows_js == [{"Repository": "app", "Tag": "v1", "ID": iid, "Digest": i["Digest"],
                        "Created": "1970-01-01T00:00:00Z", "Size": i["Size"]}]


# -- help and docs -----------------------------------------------------------------------------
def test_every_command_and_option_has_help(pb: PB) -> None:
    import click
    from pybuild.cli import cli
    top = pb.run("--help").out
    assert "Exit codes" in top and "Quick start" in top
    for name, cmd in cli.commands.items():
        assert re.search(rf"^  {name}\s+\S", top, re.M), name
        assert cmd.help and len(cmd.help.split()) >= 5, name
        out = pb.run(name, "--help").out
        assert out.startswith(f"Usage: pybuild {name} ")
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert p.help and len(p.help.split()) >= 2, (name, p.opts)
                assert p.opts[-1] in out, (name, p.opts)
            else:
                assert (p.metavar or p.name.upper()).split("...")[0].strip("[]").split("[")[0] in cmd.help + out, \
                    (name, p.name)


def test_readme_and_docs_cover_the_cli() -> None:
    import click
    from pybuild.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, cli
    readme = (REPO / "README.md").read_text()
    for heading in ("## Quick start", "## Commands", "## Exit codes", "## Differences from docker build"):
        assert heading in readme, heading
    commands = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    for name, cmd in cli.commands.items():
        assert re.search(rf"^\s+{name}\b", commands, re.M), f"{name} missing from the README's command list"
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert any(re.search(rf"[\[ |]{re.escape(o)}\b", commands) for o in p.opts + p.secondary_opts), \
                    f"{name} {p.opts} missing from the README's command list"
    codes = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in (EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED):
        assert re.search(rf"^\| {code} \|", codes, re.M), code
    layout = (REPO / "docs/store-layout.md").read_text()
    for word in ("oci-layout", "index.json", "blobs/sha256", "ingest/", "snapshots/", "metadata/cache",
                 "statcache.sqlite", "registry-sources.json", "run-cache"):
        assert word in layout, word
    ci = (REPO / "docs/ci-cache.md").read_text()
    assert "GitHub Actions" in ci and "GitLab" in ci and "--cache-from" in ci and "--cache-to" in ci
    assert ".github/workflows" in ci and ".gitlab-ci.yml" in ci and "--password-stdin" in ci
    assert "docs/store-layout.md" in readme and "docs/ci-cache.md" in readme


def test_cli_import_stays_light() -> None:
    code = ("import sys, pybuild.cli; heavy = [m for m in ('requests', 'pybuild.builder.build', "
            "'pybuild.store.store', 'pybuild.registry', 'pybuild.progress') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
