"""Build conformance: every case under testdata/conformance/ built by pybuild must give the image
buildah 1.28 gives (or, where buildah departs from docker's documented behaviour or cannot build
the case, the values the case states), and the archive must be readable by skopeo and umoci.

What is compared
- the flattened root file system (tests/conformance/flatten.py): every path with its type,
  permission bits incl. suid/sgid/sticky, numeric uid/gid, content sha256, symlink target,
  device numbers and xattrs; plus the hardlink groups;
- config fields: Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Volumes, Labels,
  StopSignal, Healthcheck, OnBuild, Shell, and the top-level author, os and architecture;
- history: the number of entries, and each entry's ``empty_layer`` marker; pybuild's non-empty
  entries must match its layer count.

What is ignored, and why
- times (file mtimes, ``created``), tar user/group names, entry order, tar format, compression,
  digests: they differ between any two builders and docker does not specify them;
- the root directory entry of a layer (``./``), which is optional in a layer tar;
- the label ``io.buildah.version`` (buildah's own);
- the mount-point stubs buildah 1.28 leaves in the first RUN layer of an image that lacks them
  (``--isolation chroot``): empty ``/etc/hostname``, ``/etc/hosts``, ``/etc/resolv.conf`` with
  mode 0755 and an empty ``/run`` directory. BuildKit removes the stubs it creates for a RUN's
  mounts (executor/stubs.go, MountStubsCleaner) and docker's classic builder keeps them in the
  container's init layer, so no docker image has them; they are dropped from buildah's side only
  when absent from the base and exactly of that shape (see ``drop_buildah_run_stubs``);
- history ``created_by``/``comment`` text (each builder writes its own), and the ``empty_layer``
  marker of WORKDIR entries: BuildKit commits a layer for WORKDIR (it mkdirs the directory),
  buildah 1.28 marks WORKDIR empty and creates the directory lazily in the next layer;
- empty values: ``[]``/``{}``/``""`` equal an absent field (buildah's docker config writes
  ``"Entrypoint": []``, ``"Volumes": {}`` where docker writes null);
- Healthcheck durations/retries that are zero (absent and 0 mean "default").
- per case, the paths, config fields and history entries its case.json lists under
  ``buildah_differs`` (``paths``, ``config``, ``history_drop``, ``history_empty``): there
  docker's documented behaviour wins and ``expect_files``/``expect_config``/``expect_hardlinks``
  give the values; a listed exception that buildah no longer needs fails the case as stale.
  ``paths_unstable`` lists paths buildah 1.28 gives one way on some runs and the other way on
  others (seen: whether it removes a cache mount's stub directory); they are left out of the
  buildah comparison without the staleness check, and ``expect_files``/``expect_absent`` still
  hold pybuild to docker's behaviour there.
  ``history_empty`` names buildah history entries (by ``created_by`` substring) whose layer is
  empty: buildah 1.28 commits an empty layer for a RUN that changes nothing, BuildKit's image
  exporter removes such a layer and marks the entry ``empty_layer`` (as pybuild does), so they
  are compared as empty.

Expected values (case.json ``expect_files``) may also describe ``fifo``, ``char`` and ``block``
entries (``"dev": [major, minor]`` for devices; give ``mode``), for cases buildah cannot build.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from conftest import PB

from .conftest import DEFAULT_PATH, Case, Contexts, fl

CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes",
                 "Labels", "StopSignal", "Healthcheck", "OnBuild", "Shell")
TOP_FIELDS = ("author", "os", "architecture")
MAX_LINES = 40


# ---------------------------------------------------------------------------------------------
# normalised views

def config_view(cfg: dict[str, Any]) -> dict[str, Any]:
    c = cfg.get("config") or {}
    v: dict[str, Any] = {}
    for k in CONFIG_FIELDS:
        val = c.get(k)
        if k in ("ExposedPorts", "Volumes"):
            val = sorted(val) if val else None
        elif k == "Labels":
            val = {a: b for a, b in (val or {}).items() if a != "io.buildah.version"} or None
        elif k == "Healthcheck" and val:
            val = {a: b for a, b in val.items() if b not in (0, None, [], "")} or None
        v[k] = val if val not in ([], {}, "", None) else None
    for k in TOP_FIELDS:
        v[k] = cfg.get(k) or None
    return v


def history_view(cfg: dict[str, Any]) -> list[tuple[bool, str]]:
    return [(bool(h.get("empty_layer")), h.get("created_by", "")) for h in cfg.get("history") or []]


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _clip(lines: list[str]) -> list[str]:
    return lines if len(lines) <= MAX_LINES else lines[:MAX_LINES] + [f"  … {len(lines) - MAX_LINES} more"]


def diff_files(want: dict[str, fl.Entry], got: dict[str, fl.Entry], ignore: list[str],
               want_name: str) -> list[str]:
    out: list[str] = []
    only_w = [p for p in sorted(set(want) - set(got)) if not _ignored(p, ignore)]
    only_g = [p for p in sorted(set(got) - set(want)) if not _ignored(p, ignore)]
    changed = [p for p in sorted(set(want) & set(got)) if want[p] != got[p] and not _ignored(p, ignore)]
    out += [f"  only in {want_name}: {p}  {want[p].describe()}" for p in only_w]
    out += [f"  only in pybuild: {p}  {got[p].describe()}" for p in only_g]
    for p in changed:
        out.append(f"  differs: {p}\n      {want_name:8}: {want[p].describe()}\n      pybuild : {got[p].describe()}")
    return _clip(out)


def diff_config(want: dict[str, Any], got: dict[str, Any], skip: list[str], want_name: str) -> list[str]:
    out = []
    for k in want:
        if k in skip:
            continue
        if want[k] != got.get(k):
            out.append(f"  {k}:\n      {want_name:8}: {json.dumps(want[k])}\n      pybuild : {json.dumps(got.get(k))}")
    return out


def diff_history(want: dict[str, Any], got: dict[str, Any], drop: list[str],
                 empty: list[str] | None = None) -> list[str]:
    hw = [(e or any(x in c for x in empty or []), c) for e, c in history_view(want)
          if not any(d in c for d in drop)]
    hg = history_view(got)
    if len(hw) != len(hg):
        lines = [f"  {len(hw)} history entries in buildah, {len(hg)} in pybuild"]
        lines += [f"      buildah: {'empty' if e else 'layer'}  {c[-90:]}" for e, c in hw]
        lines += [f"      pybuild: {'empty' if e else 'layer'}  {c[-90:]}" for e, c in hg]
        return _clip(lines)
    out = []
    for i, ((ew, cw), (eg, cg)) in enumerate(zip(hw, hg)):
        if "WORKDIR" in cw:      # BuildKit: a layer; buildah 1.28: empty (see module docstring)
            continue
        if ew != eg:
            out.append(f"  history[{i}] empty_layer: buildah={ew} ({cw[-70:]!r}) pybuild={eg} ({cg[-70:]!r})")
    return out


BUILDAH_RUN_STUBS = {"/etc/hostname": "file", "/etc/hosts": "file", "/etc/resolv.conf": "file",
                     "/run": "dir"}
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def drop_buildah_run_stubs(theirs: fl.Image, base: fl.Image) -> None:
    """Remove from buildah's flattened image the RUN mount-point stubs it leaves behind (see the
    module docstring): only paths the base lacks, of exactly the stub's shape."""
    for path, kind in BUILDAH_RUN_STUBS.items():
        e = theirs.files.get(path)
        if e is None or path in base.files or (e.type, e.uid, e.gid) != (kind, 0, 0):
            continue
        if kind == "file" and (e.mode, e.sha256) != (0o755, EMPTY_SHA256):
            continue
        if kind == "dir" and (e.mode != 0o755 or any(p.startswith(path + "/") for p in theirs.files)):
            continue
        del theirs.files[path]


def self_consistency(cfg: dict[str, Any], img: fl.Image) -> list[str]:
    non_empty = sum(1 for e, _ in history_view(cfg) if not e)
    if non_empty != img.layer_count:
        return [f"  pybuild history has {non_empty} non-empty entries but the image has {img.layer_count} layers"]
    return []


# ---------------------------------------------------------------------------------------------
# expected values (case.json) → Entries

DEFAULT_MODES = {"file": "0644", "dir": "0755", "symlink": "0777"}


def expected_entry(spec: dict[str, Any], ctx: Path) -> fl.Entry:
    typ = spec["type"]
    sha = None
    if typ == "file":
        if "content" in spec:
            sha = hashlib.sha256(spec["content"].encode()).hexdigest()
        elif "content_of" in spec:
            sha = hashlib.sha256((ctx / spec["content_of"]).read_bytes()).hexdigest()
        else:
            sha = spec["sha256"]
    return fl.Entry(typ, int(spec.get("mode", DEFAULT_MODES.get(typ, "0644")), 8), spec.get("uid", 0),
                    spec.get("gid", 0), sha, spec.get("link"),
                    tuple(spec["dev"]) if "dev" in spec else None)   # char/block: [major, minor]


def check_expected(case: Case, img: fl.Image, base: fl.Image, ctx: Path,
                   strict: bool) -> list[str]:
    """Check pybuild's image against the case's expected values. ``strict`` (cases buildah cannot
    build): every path that differs from the busybox base must be listed in expect_files (or
    expect_absent), and config fields not in expect_config must equal a plain busybox build's."""
    s = case.spec
    out: list[str] = []
    want = {p: expected_entry(e, ctx) for p, e in s.get("expect_files", {}).items()}
    for p, e in want.items():
        g = img.files.get(p)
        if g is None:
            out.append(f"  missing (expected): {p}  {e.describe()}")
        elif g != e:
            out.append(f"  differs from expected: {p}\n      expected: {e.describe()}\n      pybuild : {g.describe()}")
    for p in s.get("expect_absent", []):
        if p in img.files:
            out.append(f"  should not exist: {p}  {img.files[p].describe()}")
    if strict:
        changed = {p for p in set(img.files) | set(base.files) if img.files.get(p) != base.files.get(p)}
        extra = sorted(changed - set(want) - set(s.get("expect_absent", [])))
        out += [f"  unexpected change vs busybox: {p}  base={base.files[p].describe() if p in base.files else '-'}"
                f"  pybuild={img.files[p].describe() if p in img.files else '-'}" for p in extra]
    for group in s.get("expect_hardlinks", []):
        if sorted(group) not in img.hardlinks:
            out.append(f"  not hardlinked together: {group} (groups: {img.hardlinks})")
    got = config_view(img.config)
    exp_cfg = dict(s.get("expect_config", {}))
    if strict:
        base_view = {k: None for k in got}
        base_view.update({"Env": [DEFAULT_PATH], "os": "linux", "architecture": got.get("architecture")})
        base_view.update(exp_cfg)
        exp_cfg = base_view
    for k, v in exp_cfg.items():
        if k in ("ExposedPorts", "Volumes") and isinstance(v, dict):
            v = sorted(v)
        if got.get(k) != v:
            out.append(f"  config {k}:\n      expected: {json.dumps(v)}\n      pybuild : {json.dumps(got.get(k))}")
    if "expect_new_layers" in s:
        n = img.layer_count - base.layer_count
        if n != s["expect_new_layers"]:
            out.append(f"  {n} layers on top of busybox, expected {s['expect_new_layers']}")
    return _clip(out)


def stale_claims(case: Case, theirs: fl.Image, ctx: Path) -> list[str]:
    """A case that says buildah departs from docker on some path or config field must still see
    buildah do so; otherwise the exception is stale and hides a comparison."""
    s, out = case.spec, []
    differs = s.get("buildah_differs", {})
    for p in differs.get("paths", []):
        if p in s.get("expect_files", {}) and theirs.files.get(p) == expected_entry(s["expect_files"][p], ctx):
            out.append(f"  buildah_differs lists {p} but buildah now gives the expected value: drop it from the case")
    for p in differs.get("paths", []):
        if p in s.get("expect_absent", []) and p not in theirs.files:
            out.append(f"  buildah_differs lists {p} but buildah no longer has it either: drop it from the case")
    for group in s.get("expect_hardlinks", []):
        if any(p in differs.get("paths", []) for p in group) and sorted(group) in theirs.hardlinks:
            out.append(f"  buildah_differs lists a path of hardlink group {group} but buildah now "
                       f"links them: drop it from the case")
    for x in differs.get("history_empty", []):
        if any(e for e, c in history_view(theirs.config) if x in c):
            out.append(f"  buildah_differs.history_empty lists {x!r} but buildah now marks it empty: drop it")
    view = config_view(theirs.config)
    for k in differs.get("config", []):
        if k in s.get("expect_config", {}) and view.get(k) == s["expect_config"][k]:
            out.append(f"  buildah_differs lists config {k} but buildah now gives the expected value: drop it")
    return ["stale case.json:"] + out if out else []


# ---------------------------------------------------------------------------------------------
# pybuild half

def pybuild_build(pb: PB, case: Case, ctx: Path, http_base: str) -> subprocess.CompletedProcess[str]:
    argv = pb.argv("build", "-t", case.tag, *case.common_flags(http_base), ".")
    return subprocess.run(argv, cwd=ctx, capture_output=True, text=True, timeout=300)


def interop_checks(archive: Path, img: fl.Image, work: Path) -> list[str]:
    """skopeo reads the archive; umoci unpacks it, and its rootfs agrees with our flattening."""
    out = []
    p = subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}"], capture_output=True, text=True)
    if p.returncode != 0:
        out.append(f"  skopeo inspect oci-archive:{archive} failed: {p.stderr.strip()[-500:]}")
    layout, bundle = work / "layout", work / "bundle"
    with tarfile.open(archive) as tf:
        tf.extractall(layout, filter="tar")  # the archive (an OCI layout), not an image rootfs
    index = json.loads((layout / "index.json").read_text())
    refs = [(m.get("annotations") or {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]]
    image_arg = f"{layout}:{refs[0]}" if refs and refs[0] else str(layout)
    p = subprocess.run(["umoci", "unpack", "--image", image_arg, str(bundle)], capture_output=True, text=True)
    rootfs = bundle / "rootfs"
    if p.returncode != 0 and "cannot parse user spec" in p.stderr:
        # umoci unpack also writes a runtime config.json and needs USER in the image's
        # /etc/passwd (a readable file); docker does not. Unpack the file system alone then
        # (into a fresh, existing bundle dir: umoci raw unpack does not create parents).
        shutil.rmtree(bundle, ignore_errors=True)
        bundle.mkdir()
        p = subprocess.run(["umoci", "raw", "unpack", "--image", image_arg, str(rootfs)],
                           capture_output=True, text=True)
    if p.returncode != 0:
        return out + [f"  umoci unpack --image {image_arg} failed: {p.stderr.strip()[-500:]}"]
    seen: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            seen["/" + os.path.relpath(full, rootfs)] = os.lstat(full)
    if set(seen) != set(img.files):
        out.append(f"  umoci's rootfs and the flattened map disagree: only umoci "
                   f"{sorted(set(seen) - set(img.files))[:10]}, only flattened {sorted(set(img.files) - set(seen))[:10]}")
    for path, st in seen.items():
        e = img.files.get(path)
        if e is not None and e.type != "symlink" and (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (e.mode, e.uid, e.gid):
            out.append(f"  umoci unpacked {path} as {st.st_mode & 0o7777:04o} {st.st_uid}:{st.st_gid}, "
                       f"flattened {e.describe()}")
    return _clip(out)


# ---------------------------------------------------------------------------------------------
# tests

def test_busybox_base_matches_buildah(base_archive: Path, base_image: fl.Image, buildah: Any,
                                      tmp_path: Path) -> None:
    """Smoke check of the harness: the busybox base that pybuild saved, put into buildah's storage
    and pushed back out by buildah, flattens to the same files and config."""
    buildah.ensure_ready()
    out = tmp_path / "bb-buildah.oci.tar"
    buildah.run("push", "--quiet", "docker.io/library/busybox:latest", f"oci-archive:{out}")
    theirs = fl.flatten(str(out))
    assert len(base_image.files) > 100 and "/bin/busybox" in base_image.files
    problems = diff_files(theirs.files, base_image.files, [], "buildah")
    problems += diff_config(config_view(theirs.config), config_view(base_image.config), [], "buildah")
    assert theirs.hardlinks == base_image.hardlinks
    assert not problems, "busybox differs between buildah's copy and pybuild's:\n" + "\n".join(problems)
    problems = interop_checks(base_archive, base_image, tmp_path / "interop")
    assert not problems, "\n".join(problems)


def test_case(case: Case, contexts: Contexts, buildah_results: Any, pb_store: PB,
              base_image: fl.Image, http_server: Any, tmp_path: Path) -> None:
    s = case.spec
    ref = buildah_results.get(case) if case.oracle == "buildah" else None
    ctx = contexts.get(case)
    why = s.get("why", "")

    if ref is not None and not ref["ok"] and not case.expect_error:
        pytest.fail(f"buildah could not build case {case.name!r} (harness or case bug):\n"
                    f"buildah {' '.join(ref['argv'])}\n{ref['log']}")
    if ref is not None and ref["ok"] and case.expect_error:
        pytest.fail(f"case {case.name!r} expects an error but buildah built it; make it oracle=expected")

    p = pybuild_build(pb_store, case, ctx, http_server.base)
    if case.expect_error:
        assert p.returncode != 0, f"pybuild built {case.name!r} but it must fail ({why})\n{p.stderr[-2000:]}"
        assert "Traceback" not in p.stderr, f"pybuild crashed instead of reporting an error:\n{p.stderr[-3000:]}"
        if s.get("expect_error_match"):
            import re
            assert re.search(s["expect_error_match"], p.stderr), (
                f"pybuild's error does not match {s['expect_error_match']!r}:\n{p.stderr[-2000:]}")
        return
    assert p.returncode == 0, (f"pybuild build failed for {case.name!r} ({p.returncode}):\n"
                               f"{p.stdout[-1500:]}\n{p.stderr[-3000:]}")
    archive = tmp_path / f"{case.name}.oci.tar"
    pb_store.run("save", case.tag, "-o", str(archive))
    img = fl.flatten(str(archive))

    problems: list[str] = []
    if case.name.startswith("run_"):
        # The copy (vfs) snapshotter must give the very same image as overlayfs.
        vfs_tag = case.tag + "-vfs"
        argv = pb_store.argv("build", "--no-cache", "--storage-driver", "vfs", "-t", vfs_tag,
                             *case.common_flags(http_server.base), ".")
        v = subprocess.run(argv, cwd=ctx, capture_output=True, text=True, timeout=300)
        if v.returncode != 0:
            problems += [f"the vfs driver failed:\n{v.stderr[-2000:]}"]
        else:
            want = json.loads(pb_store.run("inspect", case.tag).out)[0]["Digest"]
            got = json.loads(pb_store.run("inspect", vfs_tag).out)[0]["Digest"]
            if want != got:
                problems += [f"the vfs driver built {got}, overlayfs {want}"]
    interop = interop_checks(archive, img, tmp_path / "interop")
    if interop:
        problems += ["interop (skopeo/umoci):"] + interop
    differs = s.get("buildah_differs", {})
    if ref is not None:
        theirs = fl.Image.from_json(ref["image"])
        drop_buildah_run_stubs(theirs, base_image)
        skip = differs.get("paths", []) + differs.get("paths_unstable", [])
        d = diff_files(theirs.files, img.files, skip, "buildah")
        if d:
            problems += ["file system differs from buildah's:"] + d
        hl_w = [g for g in theirs.hardlinks if not any(_ignored(p, skip) for p in g)]
        hl_g = [g for g in img.hardlinks if not any(_ignored(p, skip) for p in g)]
        if hl_w != hl_g:
            problems += [f"hardlink groups differ:\n  buildah: {hl_w}\n  pybuild: {hl_g}"]
        d = diff_config(config_view(theirs.config), config_view(img.config), differs.get("config", []), "buildah")
        if d:
            problems += ["config differs from buildah's:"] + d
        problems += stale_claims(case, theirs, ctx)
        if not s.get("skip_history"):
            d = diff_history(theirs.config, img.config, differs.get("history_drop", []),
                             differs.get("history_empty", []))
            if d:
                problems += ["history differs from buildah's:"] + d
    d = self_consistency(img.config, img)
    if d:
        problems += ["pybuild's image is inconsistent:"] + d
    d = check_expected(case, img, base_image, ctx, strict=ref is None)
    if d:
        problems += ["expected values (case.json) not met:"] + d
    if problems:
        head = f"case {case.name!r}" + (f" — {why}" if why else "")
        pytest.fail(head + "\n" + "\n".join(problems), pytrace=False)


def _layer(entries: list[tuple[str, str, str]]) -> bytes:
    """A layer tar from (name, kind, data): kind is file, dir, symlink (data = target) or
    hardlink (data = target)."""
    import io
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif kind in ("symlink", "hardlink"):
                ti.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                ti.linkname, ti.mode = data, 0o777 if kind == "symlink" else 0o644
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data.encode()))
    return buf.getvalue()


def test_flatten_applies_whiteouts_and_hardlinks(tmp_path: Path) -> None:
    """The oracle's reader on a hand-made archive: whiteouts, an opaque directory, a file
    replacing a directory, hardlinks (no build case can make whiteouts without RUN)."""
    import gzip
    import io
    layers = [
        _layer([("a/", "dir", ""), ("a/x", "file", "x"), ("a/y", "file", "y"), ("b/", "dir", ""),
                ("b/old", "file", "old"), ("c/", "dir", ""), ("c/in", "file", "in"), ("h1", "file", "same"),
                ("h2", "hardlink", "h1"), ("gone", "file", "g")]),
        _layer([("a/.wh.x", "file", ""), ("b/", "dir", ""), ("b/.wh..wh..opq", "file", ""),
                ("b/new", "file", "new"), ("c", "file", "now a file"), (".wh.gone", "file", ""),
                ("l", "symlink", "h1")]),
    ]
    blobs: dict[str, bytes] = {}

    def add(b: bytes) -> dict[str, Any]:
        d = hashlib.sha256(b).hexdigest()
        blobs[d] = b
        return {"digest": "sha256:" + d, "size": len(b)}

    layer_descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **add(gzip.compress(l))}
                   for l in layers]
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]}}
    cfg_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", **add(json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg_desc, "layers": layer_descs}
    man_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **add(json.dumps(manifest).encode())}
    index = {"schemaVersion": 2, "manifests": [man_desc]}
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tf:
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps(index).encode()),
                           *[(f"blobs/sha256/{d}", b) for d, b in blobs.items()]]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    img = fl.flatten(str(archive))
    assert sorted(img.files) == ["/a", "/a/y", "/b", "/b/new", "/c", "/h1", "/h2", "/l"]
    assert img.files["/c"].type == "file" and img.files["/l"] == fl.Entry("symlink", 0o777, 0, 0, None, "h1")
    assert img.files["/h1"] == img.files["/h2"] and img.hardlinks == [["/h1", "/h2"]]
    assert img.layer_count == 2
    # a corrupt blob is caught
    bad = tmp_path / "bad.tar"
    with tarfile.open(archive) as src, tarfile.open(bad, "w") as dst:
        for m in src:
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == "blobs/sha256/" + layer_descs[1]["digest"][7:]:
                data = gzip.compress(layers[0])
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(fl.FlattenError, match="does not match"):
        fl.flatten(str(bad))
