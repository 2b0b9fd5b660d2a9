"""Sandbox hardening (issue 9): seccomp, capabilities, no_new_privs, masked and read-only paths."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PB, TESTDATA

DENIED = ["keyctl", "add_key", "unshare_user", "mount", "swapoff", "bpf", "perf_event_open", "userfaultfd",
          "init_module", "kexec_load", "personality_norandom"]


@pytest.fixture(scope="module")
def syscalls_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert shutil.which("gcc"), "gcc (and libc6-dev) are needed to build the static syscall probe"
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(TESTDATA / "syscalls.c")], check=True)
    return out


def build_probe(pb: PB, tmp_path: Path, probe: Path, *flags: str) -> str:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    shutil.copy(probe, ctx / "probe")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY probe /probe\n"
                                    "RUN /probe && grep -E 'NoNewPrivs|Seccomp:|CapBnd' /proc/self/status\n")
    return pb.run("build", "--progress", "plain", "--no-cache", *flags, "-t", "probe", str(ctx)).out


def results(out: str) -> dict[str, str]:
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l and l.split("=")[0] in DENIED)


def test_default_profile_denies_dangerous_syscalls(pb_busybox: PB, tmp_path: Path, syscalls_bin: Path) -> None:
    out = build_probe(pb_busybox, tmp_path, syscalls_bin)
    got = results(out)
    assert got == {name: "Operation not permitted" for name in DENIED}, out
    assert "NoNewPrivs:\t1" in out and "Seccomp:\t2" in out
    assert "CapBnd:\t00000000a80425fb" in out  # docker's default bounding set, nothing more


def test_unconfined_gets_further(pb_busybox: PB, tmp_path: Path, syscalls_bin: Path) -> None:
    out = build_probe(pb_busybox, tmp_path, syscalls_bin, "--security-opt", "seccomp=unconfined")
    got = results(out)
    assert got["unshare_user"] == "ok" and "Seccomp:\t0" in out
    assert got["keyctl"] != "Operation not permitted"  # reaches the kernel: EINVAL for a bad command


def test_custom_profile_in_docker_format(pb_busybox: PB, tmp_path: Path, syscalls_bin: Path) -> None:
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}))
    got = results(build_probe(pb_busybox, tmp_path, syscalls_bin, "--security-opt", f"seccomp={prof}"))
    assert got["keyctl"] == "Permission denied" and got["unshare_user"] == "ok"


def test_capabilities_add_and_drop(pb_busybox: PB) -> None:
    out = pb_busybox.run("run", "--cap-drop", "ALL", "--cap-add", "CHOWN", "busybox", "grep", "CapBnd",
                         "/proc/self/status").out
    assert out.split() == ["CapBnd:", "0000000000000001"]
    r = pb_busybox.run("run", "--cap-add", "NOPE", "busybox", "true", check=False)
    assert r.code == 1 and "unknown capability" in r.err


def test_masked_and_read_only_paths(pb_busybox: PB) -> None:
    script = ("cat /proc/keys | wc -c; cat /proc/timer_list 2>/dev/null | wc -c; "
              "echo x > /proc/sys/kernel/hostname 2>/dev/null && echo WROTE || echo ro-proc-sys; "
              "echo x > /proc/sysrq-trigger 2>/dev/null && echo WROTE || echo ro-sysrq; "
              "touch /sys/x 2>/dev/null && echo WROTE || echo ro-sys; ls /sys/firmware | wc -l")
    out = pb_busybox.run("run", "busybox", "sh", "-c", script).out.split()
    assert out == ["0", "0", "ro-proc-sys", "ro-sysrq", "ro-sys", "0"]


@pytest.fixture
def host_listener():
    """A TCP server on the host's 127.0.0.1 that answers one line to whoever connects."""
    import socket
    import threading
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"reach\n")
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    srv.close()


def test_sandbox_boundaries(pb_busybox: PB, tmp_path: Path, host_listener: int) -> None:
    """A step sees no host process (not even /proc/1), not the store, cannot remount its root,
    and with --network none cannot reach a server on the host's loopback."""
    store = pb_busybox.root
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    port = host_listener
    (ctx / "Dockerfile").write_text(f"""FROM busybox
RUN ps -o pid,comm | tail -n +2 | wc -l; cat /proc/1/cmdline | tr '\\0' ' '; echo
RUN test ! -e {store} && echo store-invisible; ls /proc/1/root/ | head -3
RUN mount -o remount,rw / 2>&1 && echo REMOUNTED || echo remount-refused
RUN nc -w 3 127.0.0.1 {port} </dev/null && echo HOST-REACHED || echo loopback-blocked
RUN --network=none nc -w 3 127.0.0.1 {port} </dev/null && echo HOST-REACHED || echo loopback-blocked
""")
    out = pb_busybox.run("build", "--progress", "plain", "-t", "bounds", str(ctx)).out
    lines = out.splitlines()
    step2 = lines.index(next(l for l in lines if "STEP 2/" in l and "RUN ps" in l))
    assert int(lines[step2 + 1]) <= 4  # sh, ps, tail, wc: nothing of the host
    assert lines[step2 + 2].startswith("/bin/sh -c ps")  # PID 1 is the step itself
    assert "store-invisible" in lines and "REMOUNTED" not in lines and "remount-refused" in lines
    assert lines.count("reach") == 1 and lines.count("HOST-REACHED") == 1, out  # host network: reached …
    assert lines.count("loopback-blocked") == 1  # … --network none: not
