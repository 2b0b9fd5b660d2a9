"""RUN steps and `pybuild run` in real namespaces, overlayfs and cgroups (the suite runs as root)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PB

if os.geteuid() != 0:
    pytest.fail("the RUN tests need root (namespaces, overlayfs, cgroups); CI runs them as root", pytrace=False)


def build(pb: PB, tmp_path: Path, dockerfile: str, *args: str, check: bool = True, name: str = "ctx"):
    ctx = tmp_path / name
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    return pb.run("build", "--progress", "plain", *args, str(ctx), check=check)


def layer_names(pb: PB, image: str) -> list[list[str]]:
    import gzip
    import tarfile
    info = json.loads(pb.run("inspect", image).out)[0]
    out = []
    for layer in info["Manifest"]["layers"]:
        with gzip.open(pb.root / "blobs/sha256" / layer["digest"].split(":")[1]) as f:
            out.append([m.name for m in tarfile.open(fileobj=f)])
    return out


def _pybuild_cgroups() -> set[str]:
    """Empty pybuild cgroups: what a step that did not clean up leaves (a live build elsewhere on
    the machine has processes in its cgroup)."""
    out = set()
    for base, _, _ in os.walk("/sys/fs/cgroup"):
        if os.path.basename(base).startswith("pybuild-"):
            try:
                if not Path(base, "cgroup.procs").read_text().strip():
                    out.add(base)
            except OSError:
                continue
    return out


_BEFORE = _pybuild_cgroups()
_TEST_START = [0.0]


@pytest.fixture(autouse=True)
def _test_start() -> None:
    _TEST_START[0] = time.time() - 1


def leftover_cgroups() -> list[str]:
    """Empty pybuild cgroups this test's builds left: made since the test started, by a
    pybuild process that has exited. (Other pybuild processes on the machine may hold cgroups
    of their own, and builds killed by other tests leave theirs until the next sweep.)"""
    from pybuild.builder.cgroups import owner_alive

    def left() -> list[str]:
        out = []
        for c in _pybuild_cgroups() - _BEFORE:
            try:
                made = os.stat(c).st_mtime
            except OSError:
                continue
            if made >= _TEST_START[0] and not owner_alive(os.path.basename(c)):
                out.append(c)
        return sorted(out)
    for _ in range(100):
        found = left()
        if not found:
            return []
        time.sleep(0.05)
    return found


def overlay_mounts(root: Path) -> int:
    """Mounts that mention this store (a sandbox's mounts live in its own namespace, so none
    should ever be visible here)."""
    return sum(1 for line in Path("/proc/self/mounts").read_text().splitlines() if str(root) in line)


# What a build whose every step is cached must not load: the step executors (COPY planning, the
# layer writer and extractor, snapshot deltas, downloads, RUN mounts, the sandbox, the copy
# snapshotter), the modules only they need, and the registry client. A no-op rebuild is mostly
# Python start-up, so each of these is time on every rebuild (docs/performance.md).
STEP_ONLY_MODULES = {
    "pybuild.builder.copy", "pybuild.builder.context_fs", "pybuild.builder.snapdelta", "pybuild.builder.remote",
    "pybuild.builder.mounts", "pybuild.builder.sandbox", "pybuild.builder.vfs", "pybuild.store.layers",
    "pybuild.registry", "requests",
    "tarfile", "gzip", "ctypes", "subprocess", "csv",
}


def test_a_fully_cached_build_loads_no_step_executor(pb_busybox: PB, tmp_path: Path) -> None:
    df = ("FROM busybox AS src\nRUN echo s > /s\n"
          "FROM busybox\nWORKDIR /app\nCOPY a.txt ./\nCOPY --from=src /s /app/s\nRUN echo hi > /app/hi\n"
          "RUN echo two > /app/two\nENV X=1\nCMD [\"cat\", \"/app/hi\"]\n")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx/a.txt").write_text("a\n")
    first = build(pb_busybox, tmp_path, df, "-t", "lazy")
    assert "CACHED" not in first.out
    probe = tmp_path / "modules.json"
    code = ("import json, sys\nfrom pybuild.cli import main\n"
            f"rc = main(['--root', {str(pb_busybox.root)!r}, 'build', '--progress', 'plain', '-t', 'lazy', "
            f"{str(tmp_path / 'ctx')!r}])\n"
            f"open({str(probe)!r}, 'w').write(json.dumps({{'rc': rc, 'modules': sorted(sys.modules)}}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count(": CACHED") == 8, p.stdout  # src's RUN; WORKDIR, two COPYs, two RUNs, ENV, CMD
    got = json.loads(probe.read_text())
    assert got["rc"] == 0
    assert STEP_ONLY_MODULES.isdisjoint(got["modules"]), sorted(STEP_ONLY_MODULES & set(got["modules"]))


def test_run_step_is_isolated(pb_busybox: PB, tmp_path: Path) -> None:
    canary = tmp_path / "host-canary-file"
    canary.write_text("secret")
    r = build(pb_busybox, tmp_path, f"""FROM busybox
RUN echo "pid=$$" && hostname && ps -o pid,comm | wc -l && test ! -e {canary} && echo canary-invisible \\
    && cat /etc/hostname && ls /dev && ls /proc/1/exe >/dev/null && echo proc-ok
RUN --network=none ls /sys/class/net
""", "-t", "iso")
    out = r.out
    assert "pid=1" in out and "canary-invisible" in out and "proc-ok" in out
    lines = out.splitlines()
    assert lines[lines.index("pid=1") + 1] == "pybuild"  # the sandbox's hostname
    assert int(lines[lines.index("pid=1") + 2]) <= 4  # header + sh + ps (+ wc): only the build's processes
    assert "null" in out and "urandom" in out and "pts" in out
    step = next(i for i, l in enumerate(lines) if "RUN --network=none" in l)
    assert lines[step + 1] == "lo" and lines[step + 2].endswith("DONE " + lines[step + 2].split()[-1])
    assert leftover_cgroups() == [] and overlay_mounts(pb_busybox.root) == 0


def test_orphans_do_not_hang_the_step(pb_busybox: PB, tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = build(pb_busybox, tmp_path, "FROM busybox\nRUN (sleep 300 &) ; (sh -c 'sleep 300 &' &) ; echo left-orphans\n",
              "-t", "orph")
    assert "left-orphans" in r.out and time.monotonic() - t0 < 60


def test_whiteouts_and_opaque_dirs_in_run_layers(pb_busybox: PB, tmp_path: Path) -> None:
    build(pb_busybox, tmp_path, """FROM busybox
RUN mkdir -p /d/sub && echo 1 > /d/a && echo 2 > /d/sub/b && echo keep > /k
RUN rm -f /bin/vi && rm -rf /usr/sbin /d/sub && echo new > /n
RUN rm -rf /d && mkdir /d && echo 3 > /d/c
RUN touch /tmpfile && rm /tmpfile && rm -rf /nonexistent
""", "-t", "wh")
    layers = layer_names(pb_busybox, "wh")
    assert "bin/.wh.vi" in layers[2] and "usr/.wh.sbin" in layers[2] and "d/.wh.sub" in layers[2]
    assert "d/.wh..wh..opq" in layers[3] and "d/c" in layers[3]
    assert len(layers) == 4  # the last RUN changed nothing: no layer
    assert not any(n.startswith(("etc", "proc", "dev", "sys")) for l in layers[1:]
                   for n in l)  # the sandbox's own mount points never reach a layer
    loc = tmp_path / "flat"
    pb_busybox.run("build", "-t", "wh", "--output", f"type=local,dest={loc}", str(tmp_path / "ctx"))
    assert sorted(os.listdir(loc / "d")) == ["c"] and not (loc / "bin/vi").exists()
    assert (loc / "k").read_text() == "keep\n" and not (loc / "usr/sbin").exists()


def test_user_workdir_env_args_and_shell(pb_busybox: PB, tmp_path: Path) -> None:
    r = build(pb_busybox, tmp_path, """FROM busybox
RUN echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group \\
    && echo 'extra:x:3000:app' >> /etc/group && mkdir -p /home/app && chown app:app /home/app
ARG GREETING=hello
ENV WHO=world
WORKDIR /home/app
USER app
RUN id && pwd && echo "$GREETING $WHO HOME=$HOME" && touch mine
USER root
SHELL ["/bin/sh", "-ec"]
RUN ["/bin/sh", "-c", "echo exec-form $WHO"]
RUN echo shell-form
""", "-t", "ctxt", "--build-arg", "GREETING=hi")
    assert "uid=1000(app) gid=1000(app) groups=1000(app),3000(extra)" in r.out
    assert "/home/app" in r.out and "hi world HOME=/home/app" in r.out and "exec-form world" in r.out
    info = json.loads(pb_busybox.run("inspect", "ctxt").out)[0]
    assert not any(e.startswith("GREETING") for e in info["Config"]["Env"])
    loc = tmp_path / "flat"
    pb_busybox.run("build", "-t", "ctxt", "--build-arg", "GREETING=hi", "--output", f"type=local,dest={loc}",
                   str(tmp_path / "ctx"))
    st = os.lstat(loc / "home/app/mine")
    assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_failing_run_names_the_line_and_leaves_nothing(pb_busybox: PB, tmp_path: Path) -> None:
    before = set((pb_busybox.root / "blobs/sha256").iterdir())
    r = build(pb_busybox, tmp_path, "FROM busybox\nRUN echo partial > /p\nRUN echo oops && exit 7\n", "-t", "f",
              check=False)
    assert r.code == 1 and "Dockerfile:3" in r.err and "non-zero code: 7" in r.err and "oops" in r.out
    snaps = pb_busybox.root / "snapshots"
    assert not [p for p in snaps.iterdir() if p.name.startswith(".tmp")]  # no half-made snapshot
    r = build(pb_busybox, tmp_path, "FROM busybox\nRUN nosuchcommand-xyz\n", "-t", "f", check=False)
    assert r.code == 1 and "Dockerfile:2" in r.err and "127" in r.err
    assert leftover_cgroups() == []
    assert before <= set((pb_busybox.root / "blobs/sha256").iterdir())


def test_memory_limit_reports_oom(pb_busybox: PB, tmp_path: Path) -> None:
    r = build(pb_busybox, tmp_path, 'FROM busybox\nRUN x=$(head -c 209715200 /dev/zero | tr "\\0" a); echo ${#x}\n',
              "--memory", "64m", "-t", "oom", check=False)
    assert r.code == 1 and "out of memory" in r.err and "Dockerfile:2" in r.err
    assert leftover_cgroups() == []


def test_pids_limit_stops_a_fork_bomb(pb_busybox: PB, tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = build(pb_busybox, tmp_path, "FROM busybox\nRUN bomb() { bomb | bomb & }; bomb; sleep 2; echo survived\n",
              "--pids-limit", "20", "-t", "bomb", check=False)
    assert time.monotonic() - t0 < 60
    assert "can't fork" in r.out or "Resource temporarily unavailable" in r.out, r.out + r.err
    assert leftover_cgroups() == []


def test_seventy_run_steps(pb_busybox: PB, tmp_path: Path) -> None:
    steps = "".join(f"RUN echo {i} > /f{i}\n" for i in range(70))
    build(pb_busybox, tmp_path, "FROM busybox\n" + steps + "RUN ls / | grep -c '^f'\n", "-t", "deep")
    assert len(layer_names(pb_busybox, "deep")) == 71
    r = pb_busybox.run("run", "deep", "cat", "/f0", "/f69")
    assert r.out == "0\n69\n"


def test_run_cache_and_args_in_key(pb_busybox: PB, tmp_path: Path) -> None:
    df = "FROM busybox\nARG V=1\nRUN echo v=$V > /v\n"
    build(pb_busybox, tmp_path, df, "-t", "c")
    r = build(pb_busybox, tmp_path, df, "-t", "c")
    assert r.out.count("CACHED") == 2
    r = build(pb_busybox, tmp_path, df, "-t", "c", "--build-arg", "V=2")
    assert "echo v=$V > /v\n[stage 1/1] STEP 3/3: DONE" in r.out or r.out.count("CACHED") == 0
    assert pb_busybox.run("run", "c", "cat", "/v").out == "v=2\n"


def test_pybuild_run(pb_busybox: PB, tmp_path: Path) -> None:
    r = pb_busybox.run("run", "busybox", "echo", "hi")
    assert r.code == 0 and r.out == "hi\n"
    assert pb_busybox.run("run", "busybox", "sh", "-c", "exit 3", check=False).code == 3
    p = subprocess.run(pb_busybox.argv("run", "--rm", "busybox", "cat"), input="from stdin", capture_output=True,
                       text=True, timeout=60)
    assert p.stdout == "from stdin"
    assert pb_busybox.run("run", "--init", "busybox", "sh", "-c", "echo $$").out.strip() != "1"
    r = pb_busybox.run("run", "busybox", "no-such-binary", check=False)
    assert r.code == 127 and "not found" in r.err
    assert pb_busybox.run("run", "--network", "none", "busybox", "ls", "/sys/class/net").out.split() == ["lo"]
    assert leftover_cgroups() == [] and overlay_mounts(pb_busybox.root) == 0


def test_crun_runs_an_image_built_with_run(pb_busybox: PB, tmp_path: Path) -> None:
    for tool in ("crun", "umoci", "unshare"):
        assert shutil.which(tool), f"{tool} is required (apt-get install crun umoci util-linux)"
    build(pb_busybox, tmp_path, """FROM busybox
RUN mkdir /d && echo 1 > /d/old && rm /bin/vi
RUN rm -rf /d && mkdir /d && echo made-by-run > /d/new
""", "-t", "forcrun")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{pb_busybox.root}:forcrun:latest", str(bundle)], check=True,
                   capture_output=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/sh", "-c", "cat /d/*; ls /d; test -e /bin/vi || echo vi-whited-out"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    # crun 1.8 refuses hybrid cgroup set-ups: hide the unified hierarchy in a private mount namespace.
    script = ("umount -l /sys/fs/cgroup/unified 2>/dev/null; "
              f"exec crun run --bundle {bundle} pybuild-test-{os.getpid()}")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["made-by-run", "new", "vi-whited-out"]


def test_run_mounts_secret_cache_bind_tmpfs(pb_busybox: PB, tmp_path: Path) -> None:
    secret = tmp_path / "token.txt"
    secret.write_text("s3cr3t-value")
    ctx = tmp_path / "ctx"
    (ctx / "conf").mkdir(parents=True)
    (ctx / "conf/app.conf").write_text("from-context\n")
    df = """FROM busybox AS tools
RUN echo tool > /tool
FROM busybox
RUN --mount=type=secret,id=tok cat /run/secrets/tok && echo && ls -l /run/secrets/tok
RUN --mount=type=secret,id=tok,target=/etc/tok.txt,mode=0440 cut -c1-2 /etc/tok.txt
RUN --mount=type=cache,target=/cache echo run >> /cache/log && wc -l < /cache/log
RUN --mount=type=bind,source=conf,target=/mnt/conf cat /mnt/conf/app.conf && ! touch /mnt/conf/x 2>/dev/null
RUN --mount=type=bind,from=tools,source=/tool,target=/t cat /t
RUN --mount=type=tmpfs,target=/scratch echo x > /scratch/y && cat /scratch/y
"""
    r = build(pb_busybox, tmp_path, df, "-t", "mnt", "--secret", f"id=tok,src={secret}")
    assert "s3cr3t-value" in r.out and "-r--------" in r.out and "from-context" in r.out and "\ntool\n" in r.out
    assert "\n1\n" in r.out  # the cache mount's first use
    r2 = build(pb_busybox, tmp_path, df.replace("wc -l", "wc -l "), "-t", "mnt", "--secret", f"id=tok,src={secret}")
    assert "\n2\n" in r2.out  # the cache mount kept its content across builds
    blobs = list((pb_busybox.root / "blobs/sha256").iterdir())
    assert not any(b"s3cr3t-value" in _maybe_gunzip(b.read_bytes()) for b in blobs)  # in no layer, config, history
    for name in layer_names(pb_busybox, "mnt")[1:]:
        assert not any(n.startswith(("run", "etc", "mnt", "t", "scratch", "cache")) for n in name), name
    r = build(pb_busybox, tmp_path, "FROM busybox\nRUN --mount=type=secret,id=missing,required cat /run/secrets/missing\n",
              "-t", "nosecret", check=False)
    assert r.code == 1 and "missing" in r.err and "Dockerfile:2" in r.err


def _maybe_gunzip(data: bytes) -> bytes:
    import gzip
    try:
        return gzip.decompress(data)
    except OSError:
        return data


def test_sweep_removes_cgroups_of_dead_builds_only() -> None:
    """A killed build's empty cgroup goes at the next start; a live build's (made, not yet
    joined) stays, whatever its age."""
    from pybuild.builder.cgroups import _ROOT, _own_path, sweep_stale
    dead = subprocess.Popen(["true"])
    dead.wait()
    base = _ROOT / "pids" / _own_path("pids")
    gone, live = base / f"pybuild-{dead.pid}-deadbeef", base / f"pybuild-{os.getpid()}-5eed5eed"
    gone.mkdir()
    live.mkdir()
    try:
        sweep_stale()
        assert not gone.exists()
        assert live.exists()
    finally:
        for d in (gone, live):
            if d.exists():
                d.rmdir()
