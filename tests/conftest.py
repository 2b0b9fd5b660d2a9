"""Shared fixtures: a busybox rootfs made from Debian's busybox-static, store roots, a CLI runner."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTDATA = REPO / "testdata"


def _load_maker():
    spec = importlib.util.spec_from_file_location("make_busybox_rootfs", TESTDATA / "make_busybox_rootfs.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root file system tarball (made once per test session)."""
    return _load_maker().make_rootfs(tmp_path_factory.mktemp("busybox") / "busybox-rootfs.tar")


@dataclass
class Result:
    code: int
    out: str
    err: str


class PB:
    """Runs the real ``pybuild`` CLI in a subprocess against one store root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pybuild", "--root", str(self.root), *args]

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
            input: str | None = None) -> Result:
        p = subprocess.run(self.argv(*args), capture_output=True, text=True, env=env, input=input,
                           timeout=300)
        r = Result(p.returncode, p.stdout, p.stderr)
        if check and p.returncode != 0:
            raise AssertionError(f"pybuild {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
        return r


@pytest.fixture
def pb(tmp_path: Path) -> PB:
    """A CLI runner on a fresh, empty store root."""
    return PB(tmp_path / "store")


@pytest.fixture
def pb_busybox(pb: PB, busybox_tar: Path) -> PB:
    """A CLI runner whose store holds busybox:latest imported from the busybox rootfs."""
    pb.run("import", str(busybox_tar), "busybox:latest")
    return pb


def sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree_state(root: Path) -> dict[str, str]:
    """Every file below root with its sha256 (directories as 'dir'): to prove a store unchanged."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = Path(dirpath, f)
            if p.suffix == ".lock":
                continue
            out[os.path.relpath(p, root)] = sha256_file(p)
    return out
