"""Crash safety and concurrency on one store (issue 7, parts 1 and 2): builds killed with
SIGKILL at many points leave a store that verifies and builds again; several builds and a prune
at once all succeed."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PB

DOCKERFILE = """FROM busybox
COPY big.bin /big.bin
RUN i=0; while [ $i -lt 300 ]; do echo $i > /f$i; i=$((i+1)); done
RUN rm -f /bin/vi && sleep 0.2
COPY small.txt /small.txt
RUN cat /small.txt > /copy
"""


def make_ctx(root: Path, n: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(n)
    (root / "big.bin").write_bytes(rng.randbytes(6 << 20))
    (root / "small.txt").write_text(f"variant {n}\n")
    (root / "Dockerfile").write_text(DOCKERFILE)
    return root


def store_verifies(pb: PB) -> None:
    images = pb.run("images", "--format", "json")
    for row in json.loads(images.out):
        name = f"{row['Repository']}:{row['Tag']}" if row["Repository"] != "<none>" else row["ID"]
        pb.run("inspect", name)
    r = pb.run("fsck", check=False)
    assert r.code == 0 and "store OK" in r.out, r.out + r.err
    assert not [p for p in (pb.root / "snapshots").iterdir() if p.name.startswith(".tmp")]
    assert not list((pb.root / "ingest").iterdir())


def leftover_mounts(root: Path) -> list[str]:
    return [l for l in Path("/proc/self/mounts").read_text().splitlines() if str(root) in l]


def test_builds_killed_at_twenty_points_leave_a_consistent_store(pb_busybox: PB, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "ctx")
    t0 = time.monotonic()
    full = subprocess.run(pb_busybox.argv("build", "--no-cache", "-t", "probe", str(ctx)), capture_output=True)
    assert full.returncode == 0, full.stderr
    duration = time.monotonic() - t0
    rng = random.Random(7)
    for i in range(20):
        (ctx / "small.txt").write_text(f"kill point {i}\n")  # every round has work left to do
        p = subprocess.Popen(pb_busybox.argv("build", "-t", f"k{i % 3}", str(ctx)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, duration * 1.1))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert leftover_mounts(pb_busybox.root) == []
        store_verifies(pb_busybox)  # fsck also sweeps what the dead build left
    pb_busybox.run("build", "-t", "after", str(ctx))
    assert pb_busybox.run("run", "after", "cat", "/copy").out == "kill point 19\n"
    store_verifies(pb_busybox)


def test_four_builds_and_a_prune_at_once(pb_busybox: PB, tmp_path: Path) -> None:
    ctxs = [make_ctx(tmp_path / f"ctx{n}", n) for n in range(4)]
    procs = [subprocess.Popen(pb_busybox.argv("build", "-t", f"c{n}", str(c)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for n, c in enumerate(ctxs)]
    time.sleep(0.5)
    pruner = subprocess.Popen(pb_busybox.argv("prune"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for p in procs + [pruner]:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    for n in range(4):
        assert pb_busybox.run("run", f"c{n}", "cat", "/copy").out == f"variant {n}\n"
    store_verifies(pb_busybox)


def test_fsck_reports_and_removes_a_corrupt_blob(pb_busybox: PB, tmp_path: Path) -> None:
    info = json.loads(pb_busybox.run("inspect", "busybox").out)[0]
    layer = pb_busybox.root / "blobs/sha256" / info["Manifest"]["layers"][0]["digest"].split(":")[1]
    raw = bytearray(layer.read_bytes())
    raw[100] ^= 1
    layer.write_bytes(bytes(raw))
    r = pb_busybox.run("fsck", "--no-repair", check=False)
    assert r.code == 1 and "corrupt blob" in r.out and "broken image: busybox:latest" in r.out
    assert layer.exists()
    r = pb_busybox.run("fsck", check=False)
    assert r.code == 1 and "(removed)" in r.out and not layer.exists()
