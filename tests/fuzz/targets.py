"""The fuzz targets: one function per API, each checking one input against its contract.

A target raises ``AssertionError`` (or lets an unexpected exception through) when the contract is
broken; Hypothesis then shrinks the input. Contracts:

* ``parse`` / ``parse_instruction``: return a value whose ``to_dict()`` is JSON, or raise a
  ``PybuildError`` (``DockerfileError``) — never anything else (an ``ExpansionError`` leaking out
  of the parser would be a traceback at the CLI);
* ``expand_word`` / ``expand_words`` / ``expand_heredoc`` / ``env_pairs_expand``: return str /
  list of str, or raise ``ExpansionError``;
* ``parse_reference``: return a Reference, or raise ``InvalidReference``;
* ``normalize_name``: return a clean relative name (no ``..``, ``.``, empty parts, leading
  ``/``), or raise ``UnsafeLayer``;
* ``extract_layer``: raise nothing but ``PybuildError`` subclasses, and never create, change or
  remove anything outside the root, whatever the tar holds.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tempfile
from collections import Counter
from pathlib import Path

from pybuild.builder import dockerfile as df
from pybuild.builder.expand import ExpansionError, env_pairs_expand, expand_heredoc, expand_word, expand_words
from pybuild.errors import DockerfileError, InvalidReference, PybuildError, UnsafeLayer
from pybuild.reference import parse_reference
from pybuild.store.layers import extract_layer, normalize_name, open_decompressed

#: examples run per target (the long runner reports these)
COUNTS: Counter[str] = Counter()


def _json(value: object) -> None:
    json.dumps(value)


def check_parse(text: str) -> None:
    COUNTS["parse"] += 1
    try:
        result = df.parse(text, file="Dockerfile")
    except PybuildError as e:
        assert isinstance(e, DockerfileError), f"parse raised {type(e).__name__}, not DockerfileError: {e}"
        assert e.message and "Dockerfile" in e.message
        return
    _json(result.to_dict())
    assert result.stages, "parse returned no stage"


def check_parse_instruction(text: str, escape: str) -> None:
    COUNTS["parse_instruction"] += 1
    try:
        ins = df.parse_instruction(text, file="Dockerfile", line=7, escape=escape)
    except PybuildError as e:
        assert isinstance(e, DockerfileError), f"parse_instruction raised {type(e).__name__}: {e}"
        return
    _json(ins.to_dict())


def check_expand_word(word: str, env: dict[str, str], escape: str) -> None:
    COUNTS["expand_word"] += 1
    try:
        out = expand_word(word, env, escape=escape)
    except ExpansionError as e:
        assert str(e).startswith("failed to process")
        return
    assert isinstance(out, str)


def check_expand_words(text: str, env: dict[str, str], escape: str) -> None:
    COUNTS["expand_words"] += 1
    try:
        out = expand_words(text, env, escape=escape)
    except ExpansionError:
        return
    assert isinstance(out, list) and all(isinstance(w, str) and w for w in out), out


def check_expand_other(text: str, env: dict[str, str], escape: str) -> None:
    COUNTS["expand_heredoc/env_pairs"] += 1
    try:
        assert isinstance(expand_heredoc(text, env), str)
    except ExpansionError:
        pass
    try:
        pairs = env_pairs_expand([(text, text), ("k", text)], env, escape=escape)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs)
    except ExpansionError:
        pass


def check_parse_reference(text: str) -> None:
    COUNTS["parse_reference"] += 1
    try:
        ref = parse_reference(text)
    except InvalidReference:
        return
    assert ref.familiar and isinstance(str(ref), str)


def check_normalize_name(name: str) -> None:
    COUNTS["normalize_name"] += 1
    try:
        out = normalize_name(name)
    except UnsafeLayer:
        assert ".." in name.split("/")
        return
    parts = out.split("/") if out else []
    assert not out.startswith("/") and all(p not in ("", ".", "..") for p in parts), out


# -- extract_layer ---------------------------------------------------------------------------

def _state(base: Path, skip: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dp = Path(dirpath)
        dirnames[:] = [d for d in dirnames if dp / d != skip]
        for n in dirnames + filenames:
            p = dp / n
            st = os.lstat(p)
            out[str(p)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns,
                           os.readlink(p) if stat.S_ISLNK(st.st_mode) else None)
    return out


def _host_fz() -> set[str]:
    """Entries named like the fuzz names directly under / and /tmp (a write through ``/``)."""
    out = set()
    for top in ("/", "/tmp"):
        try:
            out |= {os.path.join(top, n) for n in os.listdir(top) if n.startswith(("fz", ".wh.fz"))}
        except OSError:
            pass
    return out


class ExtractWorld:
    """A scratch area: ``<area>/case/root`` is extracted into; ``<area>/case/outside`` holds a
    canary and a dir, which absolute link targets aim at."""

    def __init__(self) -> None:
        self.area = Path(tempfile.mkdtemp(prefix="pybuild-fuzz-"))
        self.case = self.area / "case"
        self.outside = self.case / "outside"

    def reset(self) -> Path:
        if self.case.exists():
            _rmtree(self.case)
        root = self.case / "root"
        root.mkdir(parents=True)
        self.outside.mkdir()
        (self.outside / "canary").write_text("canary\n")
        (self.outside / "dir").mkdir()
        return root

    def close(self) -> None:
        _rmtree(self.area)


def _rmtree(p: Path) -> None:
    """Remove a scratch tree; first make its real directories (never a symlink's target)
    writable, in case an extraction left mode-000 dirs and we are not root."""
    for dirpath, dirnames, _ in os.walk(p):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            try:
                if stat.S_ISDIR(os.lstat(full).st_mode):
                    os.chmod(full, 0o700)
            except OSError:
                pass
    shutil.rmtree(p, ignore_errors=True)


def check_extract_layer(world: ExtractWorld, data: bytes, mode: str) -> None:
    COUNTS["extract_layer"] += 1
    root = world.reset()
    before = _state(world.area, root)
    host_before = _host_fz()
    try:
        # As the store opens a layer: by media type (gzip'd or a plain tar).
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if data[:2] == b"\x1f\x8b" else "")
        stream = open_decompressed(io.BytesIO(data), media)  # type: ignore[arg-type]
        extract_layer(stream, root, mode=mode)  # type: ignore[arg-type]
    except PybuildError:
        pass
    finally:
        assert (world.outside / "canary").read_text() == "canary\n", "the canary outside the root changed"
        after = _state(world.area, root)
        assert after == before, (f"outside the root: created {sorted(set(after) - set(before))}, "
                                 f"removed {sorted(set(before) - set(after))}, "
                                 f"changed {sorted(k for k in after if k in before and after[k] != before[k])}")
        assert _host_fz() == host_before, f"names written on the host: {_host_fz() - host_before}"
        # Everything under root really is under root (no hardlink to an outside inode).
        outside_inodes = {os.lstat(world.outside / "canary").st_ino}
        for dirpath, dirnames, filenames in os.walk(root):
            for n in filenames:
                assert os.lstat(os.path.join(dirpath, n)).st_ino not in outside_inodes, "hardlink to the canary"
