"""Rootless builds: pybuild run by an unprivileged user, in a user namespace mapped through
/etc/subuid with newuidmap, gives the same image as a root build. The test (run as root) creates
the users. The unprivileged user runs Debian's /usr/bin/python3 with the venv's site-packages,
since the venv's interpreter may live in a folder only root can enter."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import site
import subprocess
import sysconfig
import uuid
from pathlib import Path

import pytest

from conftest import PB

USER = "pybuild-rl"
NOSUB = "pybuild-rl-nosub"

if os.geteuid() != 0:
    pytest.fail("the rootless tests are driven by root (they create an unprivileged user)", pytrace=False)
for tool in ("useradd", "runuser", "newuidmap", "newgidmap"):
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is required (Debian packages passwd, util-linux, uidmap)", pytrace=False)
if not Path("/usr/bin/python3").exists():
    pytest.fail("/usr/bin/python3 (Debian python3) is required for the unprivileged user", pytrace=False)

DOCKERFILE = """FROM busybox
RUN mkdir -p /d/sub && echo 1 > /d/a && echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd
RUN rm -f /bin/vi && rm -rf /d/sub && chown 1000:1000 /d/a && chmod 4755 /d/a && mkdir /o && touch /o/x
RUN rm -rf /o && mkdir /o && echo new > /o/y && cat /proc/self/uid_map
COPY --chown=app Dockerfile /df
"""


def ensure_user(name: str, subids: bool) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    for f in ("/etc/subuid", "/etc/subgid"):
        lines = Path(f).read_text().splitlines() if Path(f).exists() else []
        kept = [l for l in lines if not l.startswith(f"{name}:")]
        if subids:
            kept.append(f"{name}:{200000 if name == USER else 300000}:65536")
        Path(f).write_text("".join(l + "\n" for l in kept))


class UserPB:
    """The pybuild CLI run as an unprivileged user."""

    def __init__(self, user: str, root: Path) -> None:
        self.user, self.root = user, root
        self.site = sysconfig.get_paths()["purelib"]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        code = (f"import site,sys; site.addsitedir({self.site!r}); "
                "from pybuild.cli import main; sys.exit(main())")
        p = subprocess.run(["runuser", "-u", self.user, "--", "/usr/bin/python3", "-c", code, "--root",
                            str(self.root), *args], capture_output=True, text=True, timeout=300,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": f"/home/{self.user}"})
        if check:
            assert p.returncode == 0, p.stderr + p.stdout
        return p


@pytest.fixture
def shared_dir(busybox_tar: Path):
    d = Path(f"/tmp/pybuild-rootless-{uuid.uuid4().hex[:8]}")
    d.mkdir(mode=0o755)
    shutil.copy(busybox_tar, d / "busybox.tar")
    (d / "ctx").mkdir()
    (d / "ctx/Dockerfile").write_text(DOCKERFILE)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_rootless_build_matches_the_root_build(shared_dir: Path, tmp_path: Path) -> None:
    ensure_user(USER, subids=True)
    shutil.chown(shared_dir, USER)
    u = UserPB(USER, shared_dir / "store")
    u.run("import", str(shared_dir / "busybox.tar"), "busybox")
    r = u.run("build", "--progress", "plain", "-t", "app", str(shared_dir / "ctx"))
    uid = pwd.getpwnam(USER).pw_uid
    assert f"0 {uid} 1" in " ".join(r.stdout.split()) and "1 200000 65536" in " ".join(r.stdout.split())
    assert "[Warning]" not in r.stderr
    st = os.stat(shared_dir / "store/index.json")
    assert st.st_uid == uid  # the store belongs to the user, not to root
    rootless = json.loads(u.run("inspect", "app").stdout)[0]

    pb = PB(tmp_path / "rootstore")
    pb.run("import", str(shared_dir / "busybox.tar"), "busybox")
    pb.run("build", "-t", "app", str(shared_dir / "ctx"))
    rooted = json.loads(pb.run("inspect", "app").out)[0]
    assert rootless["Digest"] == rooted["Digest"]  # byte-identical image: ownership is the image's

    loc = tmp_path / "flat"
    pb.run("build", "-t", "app", "--output", f"type=local,dest={loc}", str(shared_dir / "ctx"))
    a = os.lstat(loc / "d/a")
    assert (a.st_uid, a.st_gid, oct(a.st_mode & 0o7777)) == (1000, 1000, "0o4755")
    assert os.lstat(loc / "df").st_uid == 1000 and sorted(os.listdir(loc / "o")) == ["y"]
    assert not (loc / "bin/vi").exists() and not (loc / "d/sub").exists()


def test_rootless_without_subordinate_ids_warns_and_maps_one_id(shared_dir: Path) -> None:
    ensure_user(NOSUB, subids=False)
    shutil.chown(shared_dir, NOSUB)
    (shared_dir / "ctx/Dockerfile").write_text("FROM busybox\nRUN echo hi > /hi && rm /bin/vi\n")
    u = UserPB(NOSUB, shared_dir / "store")
    p = u.run("import", str(shared_dir / "busybox.tar"), "busybox")
    assert "[Warning]" in p.stderr and "subuid" in p.stderr
    u.run("build", "-t", "one", str(shared_dir / "ctx"))
    assert u.run("run", "one", "cat", "/hi").stdout == "hi\n"
