"""Issue 7, part 4: a hostile build context (``pybuild build``).

* symlinks in the context that point outside it are copied as links, never followed out;
* ``COPY ../x`` and ``COPY /etc/passwd`` name files of the context, whatever the host has;
* ``.dockerignore`` cannot be bypassed: no ``--from`` names the context, and neither a bind mount,
  a symlink, a wildcard, a stage nor a path trick reaches an excluded file;
* a tar context with escaping entries is refused or confined.

Each build exports ``--output type=local`` so the test can search the whole result for the
secret markers; the jail proves nothing outside the context, store and output changed.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from conftest import PB

from .hostile import Jail, assert_clean_error

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="RUN needs root")

OUTSIDE_SECRET = "OUTSIDE-SECRET"


def build(pb: PB, jail: Jail, dockerfile: str, *extra: str):  # type: ignore[no-untyped-def]
    (jail.ctx / "Dockerfile").write_text(dockerfile)
    return pb.run("build", "--progress", "plain", "-t", "result", *extra,
                  "--output", f"type=local,dest={jail.out / 'rootfs'}", str(jail.ctx), check=False)


def files_containing(root: Path, marker: str) -> list[str]:
    """Regular files below root (symlinks not followed) whose content holds ``marker``."""
    hits = []
    if not root.exists():
        return hits
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            if p.is_symlink() or not p.is_file():
                continue
            if marker.encode() in p.read_bytes():
                hits.append(str(p.relative_to(root)))
    return hits


def assert_ok_or_clean_error(r) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in r.err, r.err
    if r.code != 0:
        assert_clean_error(r)


# -- symlinks pointing out of the context ----------------------------------------------------

def _plant_links(jail: Jail) -> None:
    d = jail.ctx / "dir"
    d.mkdir()
    (d / "plain").write_text("plain\n")
    os.symlink(str(jail.outside / "secret"), d / "abs")                # absolute, to a host file
    os.symlink("../../outside/secret", d / "rel")                      # relative, climbing out
    os.symlink(str(jail.outside), d / "dirlink")                       # absolute, to a host dir
    os.symlink("../" * 12 + jail.abs_outside, d / "updir")             # ../../… to the host dir


def test_context_symlinks_are_copied_as_links(jail: Jail, hpb: PB) -> None:
    _plant_links(jail)
    r = build(hpb, jail, "FROM busybox\nCOPY dir /dst/\n"
                         "RUN test -L /dst/abs && test -L /dst/rel && test -L /dst/dirlink && test -L /dst/updir "
                         "&& ! cat /dst/abs /dst/rel /dst/dirlink/secret /dst/updir/secret 2>/dev/null "
                         "&& echo LINKS-OK\n")
    assert r.code == 0, r.err
    assert "LINKS-OK" in r.out
    rootfs = jail.out / "rootfs"
    assert os.readlink(rootfs / "dst" / "abs") == str(jail.outside / "secret")
    assert os.readlink(rootfs / "dst" / "rel") == "../../outside/secret"
    assert os.readlink(rootfs / "dst" / "dirlink") == str(jail.outside)
    assert os.readlink(rootfs / "dst" / "updir") == "../" * 12 + jail.abs_outside
    assert (rootfs / "dst" / "plain").read_text() == "plain\n"
    assert not files_containing(rootfs, OUTSIDE_SECRET)
    assert OUTSIDE_SECRET not in r.out + r.err
    jail.check()


@pytest.mark.parametrize("src", ["dir/abs", "dir/rel", "dir/dirlink/secret", "dir/dirlink/", "dir/updir/secret",
                                 "dir/updir", "dir/dirlink/../outside/secret"])
def test_symlink_named_as_source_is_resolved_inside_the_context(src: str, jail: Jail, hpb: PB) -> None:
    """A symlink named as a COPY source is followed — inside the context (as if it were /)."""
    _plant_links(jail)
    r = build(hpb, jail, f"FROM busybox\nCOPY {src} /got\n")
    assert_ok_or_clean_error(r)
    assert not files_containing(jail.out / "rootfs", OUTSIDE_SECRET), "a host file was copied into the image"
    assert OUTSIDE_SECRET not in r.out + r.err
    jail.check()


def test_symlink_source_gets_the_contexts_own_file(jail: Jail, hpb: PB) -> None:
    """When the context holds a file at the link's target path, that file is what is copied."""
    _plant_links(jail)
    own = jail.ctx / jail.abs_outside
    own.mkdir(parents=True)
    (own / "secret").write_text("context's own copy\n")
    r = build(hpb, jail, "FROM busybox\nCOPY dir/abs /a\nCOPY dir/dirlink/secret /b\n")
    assert r.code == 0, r.err
    rootfs = jail.out / "rootfs"
    assert (rootfs / "a").read_text() == "context's own copy\n"
    assert (rootfs / "b").read_text() == "context's own copy\n"
    assert not files_containing(rootfs, OUTSIDE_SECRET)
    jail.check()


# -- paths that try to leave the context -----------------------------------------------------

@pytest.mark.parametrize("src", ["../outside/secret", "../../outside/secret", "./../outside/secret",
                                 "sub/../../outside/secret", "/../outside/secret", "sub/../../../"])
def test_copy_dotdot_stays_inside_the_context(src: str, jail: Jail, hpb: PB) -> None:
    """``../outside/secret`` from the context is cleaned to the context's ``outside/secret``."""
    (jail.ctx / "sub").mkdir()
    (jail.ctx / "outside").mkdir()
    (jail.ctx / "outside" / "secret").write_text("context outside/secret\n")
    r = build(hpb, jail, f"FROM busybox\nCOPY {src} /got/\n")
    assert_ok_or_clean_error(r)
    rootfs = jail.out / "rootfs"
    assert not files_containing(rootfs, OUTSIDE_SECRET), "COPY ../ read a file outside the context"
    if r.code == 0 and src.endswith("secret"):
        assert (rootfs / "got" / "secret").read_text() == "context outside/secret\n"
    jail.check()


def test_copy_absolute_source_means_the_context(jail: Jail, hpb: PB) -> None:
    (jail.ctx / "etc").mkdir()
    (jail.ctx / "etc" / "passwd").write_text("context passwd\n")
    r = build(hpb, jail, "FROM busybox\nCOPY /etc/passwd /p\n")
    assert r.code == 0, r.err
    assert (jail.out / "rootfs" / "p").read_text() == "context passwd\n"
    # An absolute path that exists only on the host is not found in the context.
    r = build(hpb, jail, f"FROM busybox\nCOPY /{jail.abs_outside}/secret /s\n")
    assert_clean_error(r)
    assert not files_containing(jail.out / "rootfs", OUTSIDE_SECRET)
    jail.check()


# -- .dockerignore cannot be bypassed --------------------------------------------------------

def _ignored_context(jail: Jail) -> str:
    marker = "IGNORED-SECRET-" + jail.token
    (jail.ctx / "secret.txt").write_text(marker + "\n")
    (jail.ctx / "private").mkdir()
    (jail.ctx / "private" / "key").write_text(marker + "-key\n")
    (jail.ctx / "dir").mkdir()
    (jail.ctx / "dir" / "ok").write_text("ok\n")
    os.symlink("secret.txt", jail.ctx / "alias")
    os.symlink("/secret.txt", jail.ctx / "alias_abs")
    os.symlink("private", jail.ctx / "privlink")
    (jail.ctx / ".dockerignore").write_text("secret.txt\nprivate/\n")
    return marker


BYPASSES = {
    "from_dot": "FROM busybox\nCOPY --from=. secret.txt /s\n",
    "from_context_image": "FROM busybox\nCOPY --from=context secret.txt /s\n",
    "from_context_dir": "FROM busybox\nCOPY --from=context / /all/\n",
    "from_empty": "FROM busybox\nCOPY --from= secret.txt /s\n",
    "stage_copy_all": "FROM busybox AS st\nCOPY . /c/\nFROM busybox\nCOPY --from=st /c/ /all/\n",
    "copy_all": "FROM busybox\nCOPY . /all/\n",
    "copy_direct": "FROM busybox\nCOPY secret.txt /s\n",
    "copy_json": 'FROM busybox\nCOPY ["secret.txt", "/s"]\n',
    "copy_dot_slash": "FROM busybox\nCOPY ./secret.txt /s\n",
    "copy_dotdot": "FROM busybox\nCOPY dir/../secret.txt /s\n",
    "copy_wildcard": "FROM busybox\nCOPY secret.tx? s* /w/\n",
    "copy_class": "FROM busybox\nCOPY privat[e]/ /p/\n",
    "copy_private_file": "FROM busybox\nCOPY private/key /k\n",
    "copy_private_dotdot": "FROM busybox\nCOPY private/../secret.txt /s\n",
    "copy_symlink": "FROM busybox\nCOPY alias /s\n",
    "copy_symlink_abs": "FROM busybox\nCOPY alias_abs /s\n",
    "copy_symlink_dir": "FROM busybox\nCOPY privlink/key /k\n",
    "add": "FROM busybox\nADD secret.txt /s\n",
    "bind_file": "FROM busybox\nRUN --mount=type=bind,source=secret.txt,target=/s cat /s > /leak || true\n",
    "bind_whole": "FROM busybox\nRUN --mount=type=bind,target=/c cat /c/secret.txt /c/private/key > /leak || true\n",
    "bind_symlink": "FROM busybox\nRUN --mount=type=bind,source=alias,target=/s cat /s > /leak || true\n",
    "bind_dir": "FROM busybox\nRUN --mount=type=bind,source=private,target=/p cat /p/key > /leak || true\n",
    "bind_dirlink": "FROM busybox\nRUN --mount=type=bind,source=privlink,target=/p cat /p/key > /leak || true\n",
    "bind_from_dot": "FROM busybox\nRUN --mount=type=bind,from=.,source=secret.txt,target=/s cat /s > /leak || true\n",
    "bind_from_context": "FROM busybox\nRUN --mount=type=bind,from=context,source=secret.txt,target=/s "
                         "cat /s > /leak || true\n",
    "bind_dotdot": "FROM busybox\nRUN --mount=type=bind,source=dir/../secret.txt,target=/s cat /s > /leak || true\n",
}


@pytest.mark.parametrize("case", list(BYPASSES))
def test_dockerignore_cannot_be_bypassed(case: str, jail: Jail, hpb: PB) -> None:
    """Excluded files must not be reachable by any means; builds fail cleanly or succeed without
    them. (``context`` is tagged in the store as an image, so ``--from=context`` resolves
    locally: it names that image, never the build context, and nothing reaches the network.)"""
    marker = _ignored_context(jail)
    hpb.run("tag", "busybox", "context")
    r = build(hpb, jail, BYPASSES[case])
    assert_ok_or_clean_error(r)
    leaks = files_containing(jail.out / "rootfs", marker)
    assert not leaks, f"excluded files reached the image: {leaks}"
    assert marker not in r.out + r.err, "an excluded file's content reached the build output"
    jail.check()


def test_dockerignore_exclusion_is_reported_not_silently_copied(jail: Jail, hpb: PB) -> None:
    """Naming an excluded file is an error that says so (docker: "not found")."""
    _ignored_context(jail)
    r = build(hpb, jail, "FROM busybox\nCOPY secret.txt /s\n")
    assert_clean_error(r, "secret.txt")
    jail.check()


# -- a hostile tar as the context ------------------------------------------------------------

def _tar(members: list[tuple[str, str, str | bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, extra in members:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o644
            if kind == "file":
                data = extra if isinstance(extra, bytes) else extra.encode()
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
            ti.linkname = extra if isinstance(extra, str) else ""
            tf.addfile(ti)
    return buf.getvalue()


def _tar_cases(j: Jail) -> dict[str, list[tuple[str, str, str | bytes]]]:
    A, T = j.abs_outside, j.token
    return {
        "dotdot": [(f"../{T}", "file", "x")],
        "dotdot_canary": [("../" * 12 + f"{A}/canary", "file", "pwned")],
        "absolute": [(f"/{A}/canary", "file", "pwned"), (f"/{A}/{T}", "file", "abs")],
        "symlink_then_file": [("l", "symlink", f"/{A}"), (f"l/{T}", "file", "x"), ("l/canary", "file", "pwned")],
        "dotdot_symlink_then_file": [("l", "symlink", "../" * 12 + A), (f"l/{T}", "file", "x")],
        "hardlink_outside": [("h", "hardlink", f"/{A}/canary")],
        "hardlink_dotdot": [("h", "hardlink", "../outside/canary")],
        "symlink_dir_then_dir": [("l", "symlink", f"/{A}/dir"), (f"l/{T}", "dir", ""), (f"l/{T}/f", "file", "x")],
    }


@pytest.mark.parametrize("case", ["dotdot", "dotdot_canary", "absolute", "symlink_then_file",
                                  "dotdot_symlink_then_file", "hardlink_outside", "hardlink_dotdot",
                                  "symlink_dir_then_dir"])
def test_hostile_tar_context_is_refused_or_confined(case: str, jail: Jail, hpb: PB) -> None:
    members = [("Dockerfile", "file", "FROM busybox\nCOPY . /ctx/\n")] + _tar_cases(jail)[case]
    ctx_tar = jail.work / "ctx.tar"
    ctx_tar.write_bytes(_tar(members))
    r = hpb.run("build", "--progress", "plain", "-t", "result",
                "--output", f"type=local,dest={jail.out / 'rootfs'}", str(ctx_tar), check=False)
    assert_ok_or_clean_error(r)
    assert not files_containing(jail.out / "rootfs", OUTSIDE_SECRET)
    jail.check()
