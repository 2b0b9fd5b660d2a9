"""Why did the cache miss? ``pybuild build --explain-cache``.

Every build (cheaply, whether or not the flag is given) notes for each step what its cache key
was made of: the stage, the step's position, the instruction text before and after expansion,
the parent key, and the inputs the key hashes (build-args, the tree digest of the context files
it copies, the ``--from`` source, heredocs, downloads, RUN network and mounts, the base image).
After a successful build that record is kept per tag::

    metadata/explain/<sha256 of the tag>/record.json          the steps of the last build
    metadata/explain/<sha256 of the tag>/trees/<hex>.json     per-file listing of each COPY's tree

A tree listing is named by the tree digest the cache key already used, so it is written only
when the copied files changed: a no-op rebuild writes (and hashes) nothing. A listing has at
most ``MAX_FILES`` entries; a bigger tree keeps only its size. Listings no longer referenced by
the tag's record are removed when the record is replaced. Records survive ``prune`` and ``rmi``
(they hold no blobs), so a rebuild after a prune can still say that a step's inputs are equal
and only its cache record is gone.

With ``--explain-cache``, each step that misses the cache is matched against the previous
record of the same tag (same stage and position, else the nearest step with the same text) and
one line says why: the instruction text, a build-arg, files (changed, added, removed), the base
image, the ``--from`` source, or — when only the parent key differs — which earlier step missed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pybuild.errors import PybuildError
from pybuild.reference import parse_reference
from pybuild.store.fsutil import atomic_write

__all__ = ["Explainer", "MAX_FILES", "record_dir"]

VERSION = 1
MAX_FILES = 100_000     # per-step file listing cap
SHOW = 5                # paths named per line before "and K more"


def _familiar(tag: str) -> str:
    try:
        return parse_reference(tag).familiar
    except PybuildError:
        return tag


def record_dir(metadata_dir: Path, tag: str) -> Path:
    """Where the explain record of ``tag`` (any spelling: ``app`` = ``app:latest``) lives."""
    return metadata_dir / "explain" / hashlib.sha256(_familiar(tag).encode()).hexdigest()


@dataclass
class _Step:
    stage: str                 # stage name, else its index
    ordinal: int               # position in the stage: 0 is FROM, then every step (ONBUILD triggers too)
    prefix: str                # progress prefix, e.g. "[stage 1/2 base] STEP 3/7"
    short: str                 # e.g. "STEP 3"
    text: str                  # the instruction as written (logical line)
    parent: str
    key: str = ""
    canonical: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    explained: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "ordinal": self.ordinal, "text": self.text, "canonical": self.canonical,
                "parent": self.parent, "key": self.key, "inputs": self.inputs}


class _BadRecord(ValueError):
    pass


def _parse_record(data: bytes) -> list[dict[str, Any]]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _BadRecord(f"not JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("version") != VERSION or not isinstance(obj.get("steps"), list):
        raise _BadRecord("not a version-1 explain record")
    for s in obj["steps"]:
        if not isinstance(s, dict) or not isinstance(s.get("inputs"), dict) or not isinstance(s.get("ordinal"), int) \
                or not all(isinstance(s.get(k), str) for k in ("stage", "text", "canonical", "parent", "key")):
            raise _BadRecord("malformed step entry")
    return obj["steps"]


def _q(v: Any) -> str:
    return "unset" if v is None else json.dumps(v)


def _quote(text: str) -> str:
    return f"'{text}'" if '"' in text and "'" not in text else json.dumps(text, ensure_ascii=False)


def _pair(a: str, b: str, width: int = 80) -> str:
    """``"old" -> "new"``; long texts are cut to a window around their first difference."""
    if len(a) > width or len(b) > width:
        i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        start = max(0, i - 30)
        cut = (lambda t: ("…" if start else "") + t[start:start + width] + ("…" if len(t) > start + width else ""))
        a, b = cut(a), cut(b)
    return f"{_quote(a)} -> {_quote(b)}"


def _short_digest(d: Any) -> str:
    s = str(d)
    return s[:19] if s.startswith("sha256:") else s


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:SHOW])
    return shown + (f" and {len(paths) - SHOW} more" if len(paths) > SHOW else "")


class Explainer:
    """Notes every step's key inputs during a build; with ``opts.explain_cache`` explains misses.

    The build driver calls :meth:`begin` before a step, :meth:`add`/:meth:`keyed` when the key
    is known, :meth:`missed` when the cache missed, and :meth:`save` after a successful build.
    """

    def __init__(self, metadata_dir: Path, opts: Any, progress: Any) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.opts = opts
        self.progress = progress
        self.enabled = bool(getattr(opts, "explain_cache", False))
        self.tags = [_familiar(t) for t in opts.tags]
        self.steps: list[_Step] = []
        self.cur: _Step | None = None
        self._ordinals: dict[str, int] = {}
        self._paths: dict[str, list[str]] = {}       # tree digest -> the context paths it covers
        self._listings: dict[str, dict[str, Any]] = {}
        self._culprit: dict[str, tuple[_Step, str]] = {}   # stage -> nearest step that changed itself
        self._said_once = False
        self.prev: list[dict[str, Any]] | None = None
        self.prev_tag = ""
        self.no_prev = ""
        if self.enabled:
            self._load()

    # -- the previous record -------------------------------------------------------------------
    def _load(self) -> None:
        if not self.tags:
            self.no_prev = "no tag given (-t), so there is no earlier build to compare with"
            return
        self.no_prev = f"no earlier build of {self.tags[0]}"
        for tag in self.tags:
            path = record_dir(self.metadata_dir, tag) / "record.json"
            try:
                steps = _parse_record(path.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, _BadRecord) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                self.progress.warn(f"--explain-cache: ignoring the record of the last build of {tag} "
                                   f"({path}): {why}")
                self.no_prev = f"the record of the last build of {tag} is unreadable"
                continue
            self.prev, self.prev_tag = steps, tag
            break
        if self.prev is None:
            return
        self._by_pos: dict[tuple[str, int], dict[str, Any]] = {}
        self._by_stage: dict[str, list[dict[str, Any]]] = {}
        for s in self.prev:
            self._by_pos[(s["stage"], s["ordinal"])] = s
            self._by_stage.setdefault(s["stage"], []).append(s)

    def _match(self, cur: _Step) -> dict[str, Any] | None:
        cand = self._by_pos.get((cur.stage, cur.ordinal))
        if cand is not None and cand["text"] == cur.text:
            return cand
        same = [s for s in self._by_stage.get(cur.stage, ()) if s["text"] == cur.text]
        if same:
            return min(same, key=lambda s: abs(s["ordinal"] - cur.ordinal))
        return cand

    # -- hooks for the build driver --------------------------------------------------------------
    def begin(self, stage: Any, prefix: str, short: str, ins: Any, parent: str) -> None:
        sid = stage.name or str(stage.index)
        n = self._ordinals.get(sid, -1) + 1
        self._ordinals[sid] = n
        self.cur = _Step(sid, n, prefix, short, ins.logical, parent)
        self.steps.append(self.cur)

    def add(self, **inputs: Any) -> None:
        """More inputs of the current step's key (before :meth:`keyed`)."""
        if self.cur is not None:
            self.cur.inputs.update({k: v for k, v in inputs.items() if v is not None})

    def keyed(self, key: str, canonical: str, tree: tuple[str, list[str]] | None = None, **inputs: Any) -> None:
        """The current step's key is ``key``; ``tree`` is (tree digest, context paths) for COPY/ADD."""
        cur = self.cur
        if cur is None:
            return
        cur.key, cur.canonical = key, canonical
        if tree is not None:
            cur.inputs["tree"] = tree[0]
            self._paths.setdefault(tree[0], list(tree[1]))
        self.add(**inputs)
        if self.enabled and "base" in inputs and self.prev is not None:
            m = self._match(cur)
            if m is not None and m["key"] != key:
                reasons = self._safe_compare(m, cur)
                if reasons:
                    self._culprit[cur.stage] = (cur, "; ".join(reasons))

    def missed(self) -> None:
        """The current step missed the cache: say why (once per step; only with --explain-cache)."""
        cur = self.cur
        if not self.enabled or cur is None or cur.explained:
            return
        cur.explained = True
        msg = self._why(cur)
        if msg:
            self.progress.line(f"{cur.prefix}: cache miss: {msg}")

    # -- explaining -------------------------------------------------------------------------------
    def _why(self, cur: _Step) -> str | None:
        if self.opts.no_cache:
            return "--no-cache given"
        if self.prev is None:
            if not self.tags:
                if self._said_once:
                    return None
                self._said_once = True
            return self.no_prev
        m = self._match(cur)
        if m is None:
            return f"new step: the last build of {self.prev_tag} had nothing like it here"
        reasons = self._safe_compare(m, cur)
        if reasons:
            msg = "; ".join(reasons)
            self._culprit[cur.stage] = (cur, msg)
            return msg
        if cur.parent != m["parent"]:
            c = self._culprit.get(cur.stage)
            if c is None:
                return "parent layer changed"
            step, why = c
            if "base" in step.inputs:  # the FROM changed: the first step after it says how
                if not why.startswith("base "):
                    why = f"parent layer changed ({step.short} changed: {why})"
                self._culprit[cur.stage] = (cur, why)
                return why
            return f"parent layer changed ({step.short} missed)"
        if cur.key == m["key"]:
            return "cache record missing (pruned)"
        return "cache key changed, but none of its recorded inputs did (a different pybuild version?)"

    def _safe_compare(self, m: dict[str, Any], cur: _Step) -> list[str]:
        try:
            return self._compare(m, cur)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a hand-edited record
            return [f"cannot compare with the last build of {self.prev_tag} (malformed record: {e!r})"]

    def _compare(self, m: dict[str, Any], cur: _Step) -> list[str]:
        """The step's own inputs that differ from the matched step ``m`` of the last build."""
        if m["text"] != cur.text:
            return [f"instruction changed: {_pair(m['text'], cur.text)}"]
        old, new = m["inputs"], cur.inputs
        out: list[str] = []
        if "base" in new or "base" in old:
            out += self._compare_base(m, cur)
        oa, na = old.get("args") or {}, new.get("args") or {}
        for name in sorted(set(oa) | set(na)):
            if oa.get(name) != na.get(name):
                out.append(f"build-arg {name} changed: {_q(oa.get(name))} -> {_q(na.get(name))}")
        if m["canonical"] != cur.canonical and not out:
            out.append(f"instruction changed after expansion: {_pair(m['canonical'], cur.canonical)}")
        if old.get("tree") != new.get("tree"):
            out += self._compare_tree(old.get("tree"), new.get("tree"))
        if old.get("source") != new.get("source"):
            ref = new.get("from") or old.get("from") or "?"
            c = self._culprit.get(str(ref))
            out.append(f"--from={ref} changed" + (f" (stage {ref} {c[0].short} missed)" if c else ""))
        for what, k in (("heredoc", "heredocs"), ("download", "downloads")):
            oh, nh = old.get(k) or {}, new.get(k) or {}
            diff = sorted(n for n in set(oh) | set(nh) if oh.get(n) != nh.get(n))
            if diff:
                out.append(f"{what} changed: {_names(diff)}")
        if old.get("network") != new.get("network"):
            out.append(f"RUN network changed: {old.get('network')} -> {new.get('network')}")
        om, nm = old.get("mounts") or [], new.get("mounts") or []
        if om != nm:
            ospec, nspec = [x.split("|")[0] for x in om], [x.split("|")[0] for x in nm]
            if ospec == nspec:
                changed = [s for s, a, b in zip(nspec, om, nm) if a != b]
                out.append(f"files of --mount={_names(changed)} changed")
            else:
                out.append(f"RUN --mount changed: {_names(ospec) or 'none'} -> {_names(nspec) or 'none'}")
        return out

    def _compare_base(self, m: dict[str, Any], cur: _Step) -> list[str]:
        old, new = m["inputs"], cur.inputs
        out = []
        ob, nb = str(old.get("base", "")), str(new.get("base", ""))
        if ob != nb:
            if nb.startswith("stage:"):
                key = nb[len("stage:"):]
                src = next((s for s in reversed(self.steps) if s.key == key), None)
                c = self._culprit.get(src.stage) if src else None
                name = src.stage if src else "?"
                out.append(f"base stage {name} changed" + (f" (its {c[0].short} missed)" if c else ""))
            else:
                def show(b: str) -> str:
                    return "a stage" if b.startswith("stage:") else _short_digest(b) or "nothing"
                on, nn = (str(x).removeprefix("FROM ").strip() for x in (m["canonical"], cur.canonical))
                if on == nn:
                    out.append(f"base image{' ' + nn if nn != 'scratch' else ''} changed: {show(ob)} -> {show(nb)}")
                else:
                    out.append(f"base image changed: {on} {show(ob)} -> {nn} {show(nb)}")
        if old.get("platform") != new.get("platform"):
            out.append(f"platform changed: {old.get('platform')} -> {new.get('platform')}")
        return out

    def _compare_tree(self, old: Any, new: Any) -> list[str]:
        if not old or not new:
            return ["files changed"]
        a = self._read_listing(old)
        b = self._listing(new)
        if a is None:
            return ["files changed (the last build's file list is missing)"]
        if a.get("entries") is None or b.get("entries") is None:
            return [f"files changed (more than {MAX_FILES} files: no per-file list is kept)"]
        oe = {e[0]: e[1:] for e in a["entries"]}
        ne = {e[0]: e[1:] for e in b["entries"]}
        changed = sorted(p for p in ne if p in oe and ne[p] != oe[p])
        added = sorted(p for p in ne if p not in oe)
        removed = sorted(p for p in oe if p not in ne)
        out = []
        if changed:
            detail = ""
            if len(changed) == 1:
                (t0, m0, u0, g0, c0), (t1, m1, u1, g1, c1) = oe[changed[0]], ne[changed[0]]
                bits = []
                if t0 != t1:
                    bits.append(f"{t0} -> {t1}")
                if m0 != m1:
                    bits.append(f"mode {m0} -> {m1}")
                if (u0, g0) != (u1, g1):
                    bits.append(f"owner {u0}:{g0} -> {u1}:{g1}")
                if c0 != c1 and bits:
                    bits.append("content")
                detail = f" ({', '.join(bits)})" if bits else ""
            out.append(f"file{'s' if len(changed) > 1 else ''} changed: {_names(changed)}{detail}")
        if added:
            out.append(f"file{'s' if len(added) > 1 else ''} added: {_names(added)}")
        if removed:
            out.append(f"file{'s' if len(removed) > 1 else ''} removed: {_names(removed)}")
        return out or ["files changed"]

    # -- file listings ----------------------------------------------------------------------------
    def _listing(self, digest: str) -> dict[str, Any]:
        """The current build's listing of tree ``digest`` (file digests are memoised by the
        context: nothing is read again)."""
        got = self._listings.get(digest)
        if got is None:
            entries: list[list[Any]] | None = []
            count = 0
            for path, typ, mode, uid, gid, payload in self.opts.context.tree_entries(self._paths[digest]):
                count += 1
                if entries is not None:
                    if count > MAX_FILES:
                        entries = None
                        continue
                    if payload.startswith("sha256:"):
                        payload = payload[7:23]
                    entries.append([path, typ, mode, uid, gid, payload])
            got = {"count": count, "entries": entries}
            self._listings[digest] = got
        return got

    def _read_listing(self, digest: str) -> dict[str, Any] | None:
        path = record_dir(self.metadata_dir, self.prev_tag) / "trees" / f"{digest.split(':')[-1]}.json"
        try:
            obj = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            self.progress.warn(f"--explain-cache: ignoring the unreadable file list {path}: {e}")
            return None
        if not isinstance(obj, dict) or not (obj.get("entries") is None or isinstance(obj["entries"], list)):
            return None
        if obj["entries"] is not None and not all(isinstance(e, list) and len(e) == 6 for e in obj["entries"]):
            return None
        return obj

    # -- after the build --------------------------------------------------------------------------
    def save(self, tags: Iterable[str], manifest: Any) -> None:
        """Keep this build's record for every tag (a failure to write is a warning)."""
        steps = [s.to_json() for s in self.steps]
        trees = {s.inputs["tree"].split(":")[-1]: s.inputs["tree"] for s in self.steps if "tree" in s.inputs}
        for tag in tags:
            d = record_dir(self.metadata_dir, tag)
            try:
                (d / "trees").mkdir(parents=True, exist_ok=True)
                for hexd, digest in trees.items():
                    p = d / "trees" / f"{hexd}.json"
                    if not p.exists():
                        atomic_write(p, json.dumps(self._listing(digest), separators=(",", ":")).encode())
                data = json.dumps({"version": VERSION, "tag": _familiar(tag), "manifest": str(manifest),
                                   "steps": steps}, separators=(",", ":"), sort_keys=True).encode()
                rec = d / "record.json"
                try:
                    same = rec.read_bytes() == data
                except OSError:
                    same = False
                if not same:
                    atomic_write(rec, data)
                for p in (d / "trees").iterdir():
                    if p.suffix == ".json" and p.stem not in trees:
                        p.unlink(missing_ok=True)
            except OSError as e:
                self.progress.warn(f"could not keep the --explain-cache record of {tag} in {d}: "
                                   f"{e.strerror or e}")
