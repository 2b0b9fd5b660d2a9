"""``RUN --mount=…`` specs (cache, secret, bind, tmpfs) and how they become sandbox mounts.

- ``type=cache,target=P[,id=I][,sharing=shared|private|locked][,mode,uid,gid][,ro]``: a host dir
  under ``metadata/run-cache/`` that persists across builds, keyed by id (default: target).
  ``locked`` holds an exclusive lock for the step; ``private`` uses a fresh dir when another build
  holds the shared one.
- ``type=secret,id=I[,target=P][,required][,mode,uid,gid]``: the file given with ``--secret
  id=I,src=F`` (or ``env=V``), read-only at P (default ``/run/secrets/<id>``); never in a layer, the
  history or the cache key.
- ``type=bind[,source=S][,target=P][,from=stage|image][,rw]``: a copy of S from the context (or a
  stage/image), read-only unless ``rw`` (writes are thrown away).
- ``type=tmpfs,target=P[,size=N]``: an empty tmpfs.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass

from pybuild.errors import UserError

__all__ = ["RunMount", "parse_mount"]

_KEYS = {"type", "target", "dst", "destination", "source", "src", "from", "id", "sharing", "mode", "uid", "gid",
         "ro", "readonly", "rw", "readwrite", "required", "size", "env"}


@dataclass(frozen=True)
class RunMount:
    type: str
    target: str
    source: str = ""
    from_: str = ""
    id: str = ""
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    readonly: bool = False
    required: bool = False
    size: str = ""

    def canonical(self) -> str:
        """The spec as it enters a cache key (secrets by id only, never content)."""
        return (f"type={self.type},target={self.target},source={self.source},from={self.from_},id={self.id},"
                f"sharing={self.sharing},mode={self.mode},uid={self.uid},gid={self.gid},ro={self.readonly}")


def _bool(v: str | None) -> bool:
    return v is None or v.lower() in ("", "true", "1", "yes")


def parse_mount(spec: str) -> RunMount:
    """Parse one ``--mount`` value (CSV ``k=v`` fields). Raises UserError with a hint."""
    try:
        fields = next(csv.reader([spec]))
    except (csv.Error, StopIteration):
        raise UserError(f"invalid --mount {spec!r}") from None
    kv: dict[str, str | None] = {}
    for f in fields:
        k, eq, v = f.partition("=")
        k = k.strip().lower()
        if k not in _KEYS:
            raise UserError(f"--mount: unknown field {k!r} in {spec!r}",
                            hint="fields: type, target, source, from, id, sharing, mode, uid, gid, ro, rw, required, size")
        kv[k] = v if eq else None
    typ = (kv.get("type") or "bind").lower()
    if typ not in ("bind", "cache", "secret", "tmpfs", "ssh"):
        raise UserError(f"--mount: unknown type {typ!r}", hint="use bind, cache, secret or tmpfs")
    if typ == "ssh":
        raise UserError("--mount=type=ssh is not supported", hint="use a secret mount instead")
    target = kv.get("target") or kv.get("dst") or kv.get("destination") or ""
    ident = kv.get("id") or ""
    if typ == "secret":
        if not ident and not target:
            raise UserError("--mount=type=secret needs an id", hint="--mount=type=secret,id=NAME")
        ident = ident or target.rstrip("/").rsplit("/", 1)[-1]
        target = target or f"/run/secrets/{ident}"
    if not target:
        raise UserError(f"--mount {spec!r} needs a target", hint="add target=/path")
    if not target.startswith("/"):
        raise UserError(f"--mount target {target!r} must be an absolute path")

    def num(key: str, base: int = 10) -> int | None:
        v = kv.get(key)
        if v is None or v == "":
            return None
        try:
            return int(v, base)
        except ValueError:
            raise UserError(f"--mount: {key}={v!r} is not a number") from None

    sharing = (kv.get("sharing") or "shared").lower()
    if sharing not in ("shared", "private", "locked"):
        raise UserError(f"--mount: sharing={sharing!r}", hint="use shared, private or locked")
    readonly = _bool(kv["ro"]) if "ro" in kv else _bool(kv["readonly"]) if "readonly" in kv else False
    if typ == "bind":
        readonly = not (("rw" in kv and _bool(kv["rw"])) or ("readwrite" in kv and _bool(kv["readwrite"])))
    if typ == "secret":
        readonly = True
    return RunMount(type=typ, target=target, source=kv.get("source") or kv.get("src") or "",
                    from_=kv.get("from") or "", id=ident or (target if typ == "cache" else ""),
                    sharing=sharing, mode=num("mode", 8), uid=num("uid"), gid=num("gid"), readonly=readonly,
                    required=_bool(kv["required"]) if "required" in kv else False, size=kv.get("size") or "")
