#!/usr/bin/env python3
"""Raw single-core rates of the primitives a builder spends its time in, on this machine.

    python3 bench/rates.py [--json OUT] [--mib N]

Measures, in this Python process (one core):
  sha256        hashlib.sha256 over a 256 MiB buffer
  zstd3         zstandard level 3 (the ``zstandard`` module, as pybuild uses it) on incompressible
                and on text-like data
  gzip6         zlib level 6 with a gzip header (wbits 31, as pybuild writes layers) on incompressible
                and on text-like data
  gzip1, gzip4  zlib levels 1 and 4 (text and incompressible)
  isal1         ISA-L level 1 (the ``isal`` module: what pybuild's layers are deflated with)
  gunzip        zlib decompression of the gzip6 output (what a pull/extract pays)
  tarfile       Python ``tarfile``: writing N small files (1 KiB) from disk into a tar, and
                extracting them again, per file

The text-like data is the generator of the ``text`` workload (bench/workloads.py). Needs only the
standard library; zstd is skipped when ``zstandard`` is not importable (run it with the venv's
python to get it).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 2 ** 20


def _load_workloads():
    for cand in (HERE / "workloads.py", Path("/work/shared/bench/workloads.py")):
        if cand.is_file():
            spec = importlib.util.spec_from_file_location("bench_workloads", cand)
            mod = importlib.util.module_from_spec(spec)
            assert spec.loader is not None
            spec.loader.exec_module(mod)
            return mod
    return None


def _text(n: int) -> bytes:
    wl = _load_workloads()
    rng = random.Random("pybuild-bench-rates")
    if wl is not None:
        return wl._text(rng, n)
    words = b"layer image digest manifest overlay namespace cgroup registry blob config".split()
    out, size = [], 0
    while size < n:
        line = b" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) + b"\n"
        out.append(line)
        size += len(line)
    return b"".join(out)[:n]


def _rate(nbytes: int, fn, min_time: float = 0.5) -> float:
    """MB/s (10^6 bytes per second) of fn() over nbytes, best of repeated calls for >= min_time."""
    best = float("inf")
    spent = 0.0
    while spent < min_time or best == float("inf"):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
    return nbytes / best / 1e6


def _chunks(buf: bytes, size: int = 1 * MiB):
    mv = memoryview(buf)
    for i in range(0, len(buf), size):
        yield mv[i:i + size]


def _gzip(buf: bytes, level: int = 6) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    out = [c.compress(ch) for ch in _chunks(buf)]
    out.append(c.flush())
    return b"".join(out)


def measure(mib: int = 64, files: int = 5000) -> dict:
    res: dict = {}
    rnd = os.urandom(256 * MiB)
    res["sha256_MBps"] = _rate(len(rnd), lambda: hashlib.sha256(rnd).digest(), min_time=1.0)
    inc = rnd[:mib * MiB]
    txt = _text(mib * MiB)
    del rnd
    try:
        import zstandard
        for name, data in (("incompressible", inc), ("text", txt)):
            def z(data=data):
                co = zstandard.ZstdCompressor(level=3).compressobj()
                for ch in _chunks(data):
                    co.compress(ch)
                co.flush()
            res[f"zstd3_{name}_MBps"] = _rate(len(data), z)
            out = zstandard.ZstdCompressor(level=3).compress(data)
            res[f"zstd3_{name}_ratio"] = len(out) / len(data)
    except ImportError:
        res["zstd3"] = "zstandard not importable"
    for name, data in (("incompressible", inc), ("text", txt)):
        res[f"gzip6_{name}_MBps"] = _rate(len(data), lambda data=data: _gzip(data), min_time=0.1)
        gz = _gzip(data)
        res[f"gzip6_{name}_ratio"] = len(gz) / len(data)
        res[f"gunzip_{name}_MBps"] = _rate(len(data), lambda gz=gz: zlib.decompress(gz, 47))
    for lvl in (1, 4):
        res[f"gzip{lvl}_text_MBps"] = _rate(len(txt), lambda: _gzip(txt, lvl), min_time=0.1)
        res[f"gzip{lvl}_incompressible_MBps"] = _rate(len(inc), lambda: _gzip(inc, lvl), min_time=0.1)
    res["gzip4_text_ratio"] = len(_gzip(txt, 4)) / len(txt)
    try:
        from isal import isal_zlib  # the deflater of pybuild's layers (level 1)
        for name, data in (("incompressible", inc), ("text", txt)):
            def ig(data=data):
                c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
                out = [c.compress(ch) for ch in _chunks(data)]
                out.append(c.flush())
                return b"".join(out)
            res[f"isal1_{name}_MBps"] = _rate(len(data), ig, min_time=0.1)
            res[f"isal1_{name}_ratio"] = len(ig()) / len(data)
    except ImportError:
        res["isal1"] = "isal not importable"

    tmp = Path(tempfile.mkdtemp(prefix="pybuild-rates-"))
    try:
        src = tmp / "src"
        for i in range(files):
            p = src / f"d{i % 50:02d}" / f"f{i:05d}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x" * 1024)
        t0 = time.perf_counter()
        with tarfile.open(tmp / "a.tar", "w", format=tarfile.PAX_FORMAT) as tf:
            tf.add(src, arcname="src")
        res["tarfile_write_ms_per_file"] = (time.perf_counter() - t0) / files * 1e3
        t0 = time.perf_counter()
        with tarfile.open(tmp / "a.tar") as tf:
            if hasattr(tarfile, "fully_trusted_filter"):
                tf.extractall(tmp / "out", filter="fully_trusted")
            else:
                tf.extractall(tmp / "out")
        res["tarfile_extract_ms_per_file"] = (time.perf_counter() - t0) / files * 1e3
        t0 = time.perf_counter()
        n = 0
        for dp, dn, fn in os.walk(src):
            for f in fn:
                with open(os.path.join(dp, f), "rb") as fh:
                    hashlib.sha256(fh.read()).digest()
                n += 1
        res["open_read_sha256_ms_per_file"] = (time.perf_counter() - t0) / n * 1e3
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="OUT")
    p.add_argument("--mib", type=int, default=64, help="MiB of data for the compression rates (default 64)")
    a = p.parse_args()
    res = measure(a.mib)
    for k, v in res.items():
        print(f"{k:34s} {v:10.3f}" if isinstance(v, float) else f"{k:34s} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
