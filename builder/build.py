"""Drive a build: Dockerfile → stages → steps (cached by content keys) → image in the store.

Each stage keeps a state (image config, layers, cache key, ARGs in scope). Metadata steps change
the config and add an ``empty_layer`` history entry; COPY/ADD/WORKDIR write an upper directory
over the stage's snapshots and turn it into one layer. A step's cache key is
``sha256(parent key, canonical expanded instruction, digest of its inputs)``; on a hit the cached
layer is reused without running the step. Only the stages the target needs are built.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from pybuild.errors import BuildError, DockerfileError, NotFound, PybuildError, UserError
from pybuild.oci import ContainerConfig, Descriptor, Digest, History, ImageConfig, Platform, chain_id, chain_ids
from pybuild.store.cache import CacheRecord
from pybuild.store.importer import rfc3339, source_date_epoch
from pybuild.store.snapshots import LayerRef, StackView
from pybuild.store.store import Image, Store
from pybuild.userns import in_user_namespace

from . import dockerfile as df
from .cgroups import Limits, sweep_stale
from .security import SecurityOpts
from .expand import ExpansionError, env_pairs_expand, expand_heredoc, expand_word, expand_words
from .explain import Explainer

# The step executors (copy planning, the layer writer, snapshot deltas, downloads, RUN mounts) are
# imported where a step runs: a build whose steps all hit the cache loads none of them, and a
# no-op rebuild is mostly Python start-up (docs/performance.md).
if TYPE_CHECKING:
    from pybuild.store.layers import Entry
    from .copy import CopyItem, SourceFS
    from .mounts import RunMount

__all__ = ["BuildOptions", "BuildResult", "build", "ImageResolver", "StoreResolver", "Progress"]

HEREDOC_PATH = "/dev/pipes/heredoc"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HISTORY_COMMENT = "pybuild.dockerfile.v0"
PREDEFINED_ARGS = {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
                   "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"}


class ImageResolver(Protocol):
    """Finds base images (FROM, COPY --from=image). The store is one; a registry pull is another."""

    def resolve(self, name: str, platform: Platform) -> Image: ...


class PullingResolver:
    """Base images from the store, else pulled from their registry (docker's default)."""

    def __init__(self, store: Store, progress: "Progress | None" = None) -> None:
        self.store = store
        self.progress = progress

    def resolve(self, name: str, platform: Platform) -> Image:
        try:
            _, desc = self.store.resolve(name)
            return self.store.load(desc, platform)
        except NotFound as local:
            from pybuild.registry import pull
            if self.progress:
                self.progress.line(f"pulling {name}")
            try:
                _, desc = pull(self.store, name, platform, getattr(self.progress, "transfer", None))
            except PybuildError as e:
                raise NotFound(f"{local.message}, and pulling it failed: {e.message}", hint=e.hint) from None
            return self.store.load(desc, platform)


class StoreResolver:
    """Base images from the local store only."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def resolve(self, name: str, platform: Platform) -> Image:
        _, desc = self.store.resolve(name)
        return self.store.load(desc, platform)


class Progress:
    """Build progress. ``plain``: stable line-by-line log (a line when a step starts, one when it
    ends: ``CACHED`` or ``DONE <seconds>``). ``tty``: one live line per step, updated in place
    with the elapsed time and collapsed to its result. ``quiet``: nothing."""

    def __init__(self, mode: str = "plain", out: Callable[[str], None] | None = None,
                 stream: Any = None) -> None:
        self.mode = mode
        self._out = out or (lambda s: print(s, flush=True))
        self._stream = stream
        self._live: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._partial = b""

    def line(self, text: str) -> None:
        if self.mode == "quiet":
            return
        with self._lock:
            self._clear_live()
            self._out(text)

    def warn(self, text: str) -> None:
        self.line(f"[Warning] {text}")

    def output(self, chunk: bytes) -> None:
        """Output of a running step, passed on line by line."""
        if self.mode == "quiet":
            return
        self._partial += chunk
        *lines, self._partial = self._partial.split(b"\n")
        for ln in lines:
            self.line(ln.decode(errors="replace"))

    def flush_output(self) -> None:
        if self._partial:
            rest, self._partial = self._partial, b""
            self.line(rest.decode(errors="replace"))

    def start(self, prefix: str, text: str) -> None:
        """A step begins."""
        if self.mode == "tty" and self._stream is not None:
            with self._lock:
                self._live = (f"{prefix} {text}", time.monotonic())
                self._draw()
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()
        else:
            self.line(f"{prefix} {text}")

    def finish(self, prefix: str, text: str, result: str) -> None:
        """A step ended with ``result`` (``CACHED`` or ``DONE 0.12s``)."""
        if self.mode == "tty" and self._stream is not None:
            with self._lock:
                self._live = None
                self._stream.write(f"\r\x1b[K{prefix} {text}  {result}\n")
                self._stream.flush()
        else:
            self.line(f"{prefix}: {result}")

    def _clear_live(self) -> None:
        if self._live is not None and self._stream is not None:
            self._stream.write("\r\x1b[K")

    def _draw(self) -> None:
        if self._live is None or self._stream is None:
            return
        text, t0 = self._live
        self._stream.write(f"\r\x1b[K{text}  {time.monotonic() - t0:.1f}s")
        self._stream.flush()

    def _tick(self) -> None:
        while True:
            time.sleep(0.1)
            with self._lock:
                self._draw()

    def close(self) -> None:
        """End a live line left open (a failing step)."""
        with self._lock:
            if self._live is not None and self._stream is not None:
                self._draw()
                self._stream.write("  ERROR\n")
                self._stream.flush()
                self._live = None


@dataclass(frozen=True)
class BuildOptions:
    """What ``pybuild build`` was asked to do."""

    context: Any                      # a builder.context build context
    dockerfile_text: str
    dockerfile_name: str = "Dockerfile"
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    compression: str = "gzip"
    platform: Platform = field(default_factory=Platform.host)
    network: str = "host"
    limits: Limits = field(default_factory=Limits)
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    cache_from: tuple[Any, ...] = ()   # registry caches (pybuild.registry.cache.RemoteCache)
    security: SecurityOpts = field(default_factory=SecurityOpts)
    storage_driver: str = "auto"       # overlay | vfs | auto (overlay when it can be mounted)
    explain_cache: bool = False        # say why each step missed the cache (builder/explain.py)


@dataclass(frozen=True)
class BuildResult:
    descriptor: Descriptor            # the manifest
    image_id: Digest                  # the config digest
    tags: tuple[str, ...]
    cached_steps: int
    total_steps: int
    cache_keys: tuple[str, ...] = ()
    executed_steps: int = 0            # steps that ran (not from the cache), ONBUILD triggers included
    remote_inputs: bool = False        # a step read from the network (ADD of a URL)


@dataclass
class _State:
    config: ImageConfig
    layers: list[LayerRef]
    key: str
    args: dict[str, str | None]
    cmd_set: bool = False
    base_desc: str = ""


_COPY_FROM_KEY = "xattrs"
"""In every COPY --from key since COPY --from keeps the source's xattrs (file capabilities):
layers cached before then, without them, are not reused."""


def _entries_digest(entries: list[Entry], clamp: int | None) -> str:
    """A digest of every entry's metadata as the layer writer writes it (not the file
    contents): path, type, mode, owner, mtime (clamped), size, link target, device numbers,
    xattrs."""
    h = hashlib.sha256()
    for e in entries:
        mtime = e.mtime if clamp is None or e.mtime <= clamp else clamp
        h.update(repr((e.path, e.type, e.mode, e.uid, e.gid, mtime, e.size, e.linkname, e.devmajor,
                       e.devminor, sorted(e.xattrs.items()))).encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _h(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


class _Builder:
    def __init__(self, store: Store, opts: BuildOptions, resolver: ImageResolver, progress: Progress) -> None:
        self.store = store
        self.opts = opts
        self.resolver = resolver
        self.progress = progress
        self.file = opts.dockerfile_name
        self.epoch = source_date_epoch()
        self.created = rfc3339(self.epoch or 0)
        self.clamp = self.epoch if self.epoch is not None else 0
        self.used_args: set[str] = set()
        self.keys: list[str] = []
        self.reuse_keys: list[str] = []   # layer-reuse records (see commit_entries), kept like step keys
        self.chains: list[Digest] = []
        self.cached = 0
        self.total = 0
        self.executed = 0
        self.remote_inputs = False
        self.platform = opts.platform
        self.escape = "\\"
        self._driver: str | None = None
        self.target_index = -1
        self.snapshot_wanted = True
        self.explain = Explainer(store.metadata_dir, opts, progress)

    # -- helpers ---------------------------------------------------------------------------------
    def err(self, instr: df.Instruction, message: str, hint: str | None = None) -> DockerfileError:
        return DockerfileError(message, file=self.file, line=instr.line,
                               text=instr.original.splitlines()[0] if instr.original else "", hint=hint)

    def expand(self, instr: df.Instruction, word: str, env: Mapping[str, str]) -> str:
        try:
            return expand_word(word, env, escape=self.escape)
        except ExpansionError as e:
            raise df.expansion_error(e, instr, self.file) from None

    def expand_list(self, instr: df.Instruction, text: str, env: Mapping[str, str]) -> list[str]:
        try:
            return expand_words(text, env, escape=self.escape)
        except ExpansionError as e:
            raise df.expansion_error(e, instr, self.file) from None

    def platform_args(self) -> dict[str, str]:
        p, b = self.platform, Platform.host()
        return {"TARGETPLATFORM": str(p), "TARGETOS": p.os, "TARGETARCH": p.architecture,
                "TARGETVARIANT": p.variant, "BUILDPLATFORM": str(b), "BUILDOS": b.os,
                "BUILDARCH": b.architecture, "BUILDVARIANT": b.variant}

    @staticmethod
    def env_of(state: _State) -> dict[str, str]:
        """Expansion environment: ARGs in scope, overridden by the image's ENV."""
        env = {k: v for k, v in state.args.items() if v is not None}
        env.update(state.config.config.env_dict())
        return env

    # -- the build -------------------------------------------------------------------------------
    def run(self, dockerfile: df.Dockerfile) -> BuildResult:
        self.escape = dockerfile.directives.escape
        global_args = self.eval_global_args(dockerfile)
        target_index = self.target_index = self.target_index_of(dockerfile)
        needed = self.needed_stages(dockerfile, target_index, global_args)
        states: dict[int, _State] = {}
        for n, idx in enumerate(needed, 1):
            stage = dockerfile.stages[idx]
            states[idx] = self.build_stage(dockerfile, stage, states, global_args, n, len(needed))
        final = states[target_index]
        self.warn_unused_args(dockerfile, needed)
        cfg = final.config
        if self.opts.labels:
            cc = dataclasses.replace(cfg.config, Labels={**cfg.config.Labels, **self.opts.labels})
            cfg = dataclasses.replace(cfg, config=cc)
        cfg = dataclasses.replace(cfg, created=self.created)
        desc = self.store.write_image(cfg, [x.descriptor for x in final.layers])
        tags = tuple(self.store.tag(t, desc) for t in self.opts.tags)
        if not tags:
            self.store.tags.add_untagged(desc)
        self.store.cache.link(desc.digest, self.keys + self.reuse_keys, self.chains)
        self.explain.save(tags, desc.digest)
        image_id = self.store.load(desc).id
        return BuildResult(desc, image_id, tags, self.cached, self.total, tuple(self.keys), self.executed,
                           self.remote_inputs)

    def eval_global_args(self, dockerfile: df.Dockerfile) -> dict[str, str | None]:
        env: dict[str, str | None] = dict(self.platform_args())
        for a in dockerfile.global_args:
            for name, default in a.pairs:
                if name in self.opts.build_args:
                    env[name] = self.opts.build_args[name]
                    self.used_args.add(name)
                elif default is not None:
                    env[name] = self.expand(a, default, {k: v for k, v in env.items() if v is not None})
                else:
                    env.setdefault(name, None)
        return env

    def target_index_of(self, dockerfile: df.Dockerfile) -> int:
        if not self.opts.target:
            return len(dockerfile.stages) - 1
        st = dockerfile.stage_named(self.opts.target)
        if st is None:
            names = [s.name for s in dockerfile.stages if s.name]
            raise UserError(f"target stage {self.opts.target!r} could not be found in {self.file}",
                            hint=f"stages: {', '.join(names) or '(none named)'}")
        return st.index

    def stage_refs(self, dockerfile: df.Dockerfile, stage: df.Stage,
                   global_args: dict[str, str | None]) -> list[int]:
        env = {k: v for k, v in global_args.items() if v is not None}
        refs: list[int] = []
        base = self.expand(stage.from_, stage.from_.image, env)
        r = dockerfile.resolve_stage(base, stage.index, line=stage.from_.line)
        if r is not None:
            refs.append(r)
        for ins in stage.instructions:
            froms: list[str] = []
            if isinstance(ins, df.Copy) and ins.from_:
                froms.append(self.expand(ins, ins.from_, env))
            if isinstance(ins, df.Run) and ins.mounts:
                from .mounts import parse_mount
                for spec in ins.mounts:
                    try:
                        froms.append(parse_mount(self.expand(ins, spec, env)).from_)
                    except UserError as e:
                        raise self.err(ins, e.message, e.hint) from None
            for val in froms:
                r = dockerfile.resolve_stage(val, stage.index, line=ins.line) if val else None
                if r is not None:
                    refs.append(r)
        return refs

    def needed_stages(self, dockerfile: df.Dockerfile, target: int,
                      global_args: dict[str, str | None]) -> list[int]:
        need: set[int] = set()
        todo = [target]
        while todo:
            i = todo.pop()
            if i in need:
                continue
            need.add(i)
            todo.extend(self.stage_refs(dockerfile, dockerfile.stages[i], global_args))
        return sorted(need)

    def warn_unused_args(self, dockerfile: df.Dockerfile, needed: list[int]) -> None:
        unused = sorted(k for k in self.opts.build_args if k not in self.used_args and k not in PREDEFINED_ARGS)
        if unused:
            self.progress.warn(f"one or more build-args {unused} were not consumed")

    # -- stages ----------------------------------------------------------------------------------
    def build_stage(self, dockerfile: df.Dockerfile, stage: df.Stage, states: dict[int, _State],
                    global_args: dict[str, str | None], n: int, m: int) -> _State:
        self.dockerfile, self.stage_index, self.states = dockerfile, stage.index, states
        total = 1 + len(stage.instructions)
        label = f"[stage {n}/{m}{' ' + stage.name if stage.name else ''}]"
        fr = stage.from_
        self.progress.start(f"{label} STEP 1/{total}:", fr.logical)
        t0 = time.monotonic()
        self.explain.begin(stage, f"{label} STEP 1/{total}", "STEP 1", fr, "")
        state = self.from_state(dockerfile, stage, states, global_args)
        self.progress.finish(f"{label} STEP 1/{total}", fr.logical, f"DONE {time.monotonic() - t0:.2f}s")
        triggers = list(state.config.config.OnBuild)
        if triggers:
            state.config = dataclasses.replace(state.config,
                                               config=dataclasses.replace(state.config.config, OnBuild=()))
            for raw in triggers:
                try:
                    ins = df.parse_instruction(raw, file=f"{self.file} (ONBUILD of {fr.image})", line=fr.line,
                                               escape=self.escape)
                except DockerfileError as e:
                    raise BuildError(f"{self.file}:{fr.line}: ONBUILD trigger {raw!r} of the base image is invalid: "
                                     f"{e.reason}") from None
                self.progress.line(f"{label} ONBUILD {ins.logical}")
                self.explain.begin(stage, f"{label} ONBUILD {ins.logical}", "ONBUILD trigger", ins, state.key)
                self.guarded_step(dockerfile, stage, ins, state, states)
        for k, ins in enumerate(stage.instructions, 2):
            # Will a later step read this one's file system? (another stage always may)
            self.snapshot_wanted = stage.index != self.target_index or any(
                isinstance(x, (df.Run, df.Copy, df.Add, df.Workdir)) for x in stage.instructions[k - 1:])
            self.progress.start(f"{label} STEP {k}/{total}:", ins.logical)
            t0 = time.monotonic()
            self.explain.begin(stage, f"{label} STEP {k}/{total}", f"STEP {k}", ins, state.key)
            cached = self.guarded_step(dockerfile, stage, ins, state, states)
            self.total += 1
            if cached:
                self.cached += 1
                self.progress.finish(f"{label} STEP {k}/{total}", ins.logical, "CACHED")
            else:
                self.progress.finish(f"{label} STEP {k}/{total}", ins.logical, f"DONE {time.monotonic() - t0:.2f}s")
        return state

    def from_state(self, dockerfile: df.Dockerfile, stage: df.Stage, states: dict[int, _State],
                   global_args: dict[str, str | None]) -> _State:
        fr = stage.from_
        env = {k: v for k, v in global_args.items() if v is not None}
        image = self.expand(fr, fr.image, env)
        if fr.platform:
            plat = self.expand(fr, fr.platform, env)
            try:
                Platform.parse(plat)
            except PybuildError as e:
                raise self.err(fr, f"invalid --platform: {e}") from None
        ref = dockerfile.resolve_stage(image, stage.index, line=fr.line)
        host = self.platform
        if ref is not None:
            src = states[ref]
            cfg = src.config
            state = _State(cfg, list(src.layers), _h("stage", src.key), {}, False, f"stage:{src.key}")
        elif image.lower() == "scratch":
            cfg = ImageConfig(architecture=host.architecture, os=host.os, variant=host.variant)
            state = _State(cfg, [], _h("scratch", str(host)), {}, False, "scratch")
        else:
            if not image:
                raise self.err(fr, "FROM names an empty image (an ARG without a value?)",
                               hint="give the ARG a default or pass --build-arg")
            try:
                img = self.resolver.resolve(image, host)
            except NotFound as e:
                raise DockerfileError(f"base image {image!r} not found: {e.message}", file=self.file, line=fr.line,
                                      text=fr.original.splitlines()[0], hint=e.hint) from None
            except PybuildError as e:
                if isinstance(e, DockerfileError):
                    raise
                raise DockerfileError(f"base image {image!r}: {e.message}", file=self.file, line=fr.line,
                                      text=fr.original.splitlines()[0], hint=e.hint) from None
            cfg = dataclasses.replace(img.config, created="")
            if len(img.manifest.layers) != len(cfg.diff_ids):
                raise BuildError(f"base image {image}: {len(img.manifest.layers)} layers but "
                                 f"{len(cfg.diff_ids)} diff_ids in its config")
            layers = [LayerRef(d, i) for d, i in zip(img.manifest.layers, cfg.diff_ids)]
            state = _State(cfg, layers, _h("image", str(img.descriptor.digest), str(host)), {}, False,
                           str(img.descriptor.digest))
        env_now = state.config.config.env_dict()
        if "PATH" not in env_now:
            cc = state.config.config
            state.config = dataclasses.replace(state.config, config=dataclasses.replace(
                cc, Env=cc.Env + (f"PATH={DEFAULT_PATH}",)))
        self.explain.keyed(state.key, f"FROM {image}", base=state.base_desc, platform=str(host))
        self.global_args = global_args
        return state

    # -- steps -----------------------------------------------------------------------------------
    def guarded_step(self, dockerfile: df.Dockerfile, stage: df.Stage, ins: df.Instruction, state: _State,
                     states: dict[int, _State]) -> bool:
        """Run one step; any error that does not already say where gets the step's file:line."""
        try:
            cached = self.step(dockerfile, stage, ins, state, states)
            if not cached:
                self.executed += 1
            return cached
        except DockerfileError:
            raise
        except (UserError, BuildError) as e:
            raise DockerfileError(e.message, file=self.file, line=ins.line,
                                  text=ins.original.splitlines()[0] if ins.original else "", hint=e.hint) from None
        finally:
            if self.opts.context is not None:
                self.opts.context.release_kept()  # the bytes a COPY's cache key read are used or not

    def record_meta(self, state: _State, ins: df.Instruction, canonical: str, history: bool = True) -> bool:
        """Advance the key for a metadata step; returns True when it was seen before (CACHED)."""
        state.key = _h(state.key, canonical)
        self.keys.append(state.key)
        self.explain.keyed(state.key, canonical)
        hit = self.cache_get(state.key) is not None
        if not hit:
            self.explain.missed()
            self.store.cache.put(state.key, CacheRecord())
        if history:
            state.config = state.config.with_history(History(created=self.created, created_by=canonical,
                                                             comment=HISTORY_COMMENT, empty_layer=True))
        return hit

    def set_config(self, state: _State, **changes: Any) -> None:
        state.config = dataclasses.replace(state.config, config=dataclasses.replace(state.config.config, **changes))

    def step(self, dockerfile: df.Dockerfile, stage: df.Stage, ins: df.Instruction, state: _State,
             states: dict[int, _State]) -> bool:
        env = self.env_of(state)
        cc = state.config.config
        if isinstance(ins, df.Arg):
            return self.step_arg(ins, state)
        if isinstance(ins, df.Env):
            try:
                pairs = env_pairs_expand(ins.pairs, env, escape=self.escape)
            except ExpansionError as e:
                raise df.expansion_error(e, ins, self.file) from None
            current = cc.env_dict()
            for k, v in pairs:
                current[k] = v
            self.set_config(state, Env=tuple(f"{k}={v}" for k, v in current.items()))
            return self.record_meta(state, ins, "ENV " + " ".join(f"{k}={v}" for k, v in pairs))
        if isinstance(ins, df.Label):
            try:
                pairs = env_pairs_expand(ins.pairs, env, escape=self.escape)
            except ExpansionError as e:
                raise df.expansion_error(e, ins, self.file) from None
            self.set_config(state, Labels={**cc.Labels, **dict(pairs)})
            return self.record_meta(state, ins, "LABEL " + " ".join(f"{k}={v}" for k, v in pairs))
        if isinstance(ins, df.Maintainer):
            state.config = dataclasses.replace(state.config, author=ins.maintainer)
            return self.record_meta(state, ins, f"MAINTAINER {ins.maintainer}")
        if isinstance(ins, df.Expose):
            ports = []
            for word in ins.ports:
                for p in self.expand_list(ins, word, env):
                    ports.extend(self.normalise_ports(ins, p))
            self.set_config(state, ExposedPorts=tuple(sorted(set(cc.ExposedPorts) | set(ports))))
            return self.record_meta(state, ins, "EXPOSE " + " ".join(ports))
        if isinstance(ins, df.Volume):
            vols = [self.expand(ins, p, env) for p in ins.paths]
            if any(not v.strip() for v in vols):
                raise self.err(ins, "VOLUME specified can not be an empty string")
            self.set_config(state, Volumes=tuple(sorted(set(cc.Volumes) | set(vols))))
            return self.record_meta(state, ins, "VOLUME " + json.dumps(vols))
        if isinstance(ins, df.User):
            user = self.expand(ins, ins.user, env)
            self.set_config(state, User=user)
            return self.record_meta(state, ins, f"USER {user}")
        if isinstance(ins, df.Stopsignal):
            sig = self.expand(ins, ins.signal, env)
            self.set_config(state, StopSignal=sig)
            return self.record_meta(state, ins, f"STOPSIGNAL {sig}")
        if isinstance(ins, df.Shell):
            self.set_config(state, Shell=tuple(ins.shell))
            return self.record_meta(state, ins, "SHELL " + json.dumps(ins.shell))
        if isinstance(ins, df.Cmd):
            cmd = self.command_list(ins.command, ins.shell_form, cc)
            self.set_config(state, Cmd=tuple(cmd))
            state.cmd_set = True
            return self.record_meta(state, ins, "CMD " + json.dumps(cmd))
        if isinstance(ins, df.Entrypoint):
            ep = self.command_list(ins.command, ins.shell_form, cc)
            changes: dict[str, Any] = {"Entrypoint": tuple(ep)}
            if not state.cmd_set:
                changes["Cmd"] = None  # ENTRYPOINT resets an inherited CMD
            self.set_config(state, **changes)
            return self.record_meta(state, ins, "ENTRYPOINT " + json.dumps(ep))
        if isinstance(ins, df.Healthcheck):
            hc = self.healthcheck(ins, cc)
            self.set_config(state, Healthcheck=hc)
            return self.record_meta(state, ins, "HEALTHCHECK " + json.dumps(hc, sort_keys=True))
        if isinstance(ins, df.Onbuild):
            self.set_config(state, OnBuild=cc.OnBuild + (ins.raw,))
            return self.record_meta(state, ins, f"ONBUILD {ins.raw}")
        if isinstance(ins, df.Workdir):
            return self.step_workdir(ins, state, env)
        if isinstance(ins, (df.Copy, df.Add)):
            return self.step_copy(dockerfile, stage, ins, state, states, env)
        if isinstance(ins, df.Run):
            return self.step_run(ins, state)
        raise self.err(ins, f"unsupported instruction {ins.cmd}")

    def step_arg(self, ins: df.Arg, state: _State) -> bool:
        parts = []
        for name, default in ins.pairs:
            env = self.env_of(state)
            if name in self.opts.build_args:
                value: str | None = self.opts.build_args[name]
                self.used_args.add(name)
            elif default is not None:
                value = self.expand(ins, default, env)
            elif name in self.global_args:
                value = self.global_args[name]
            else:
                value = None
            state.args[name] = value
            parts.append(f"{name}={value}" if value is not None else name)
        self.explain.add(args={name: state.args.get(name) for name, _ in ins.pairs})
        return self.record_meta(state, ins, "ARG " + " ".join(parts))

    def normalise_ports(self, ins: df.Instruction, word: str) -> list[str]:
        port, _, proto = word.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise self.err(ins, f"invalid proto {proto!r} in EXPOSE {word}", hint="use tcp, udp or sctp")
        if ":" in port:
            raise self.err(ins, f"EXPOSE {word}: publishing a host port is not possible in a Dockerfile",
                           hint="EXPOSE only takes a container port")
        lo, dash, hi = port.partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
            if not (0 < a <= 65535 and 0 < b <= 65535 and a <= b):
                raise ValueError
        except ValueError:
            raise self.err(ins, f"invalid port {word!r} in EXPOSE") from None
        return [f"{p}/{proto}" for p in range(a, b + 1)]

    @staticmethod
    def command_list(command: list[str] | str, shell_form: bool, cc: ContainerConfig) -> list[str]:
        if shell_form:
            shell = list(cc.Shell) or ["/bin/sh", "-c"]
            return shell + [str(command)]
        return list(command)

    def healthcheck(self, ins: df.Healthcheck, cc: ContainerConfig) -> dict[str, Any]:
        if ins.kind == "NONE":
            return {"Test": ["NONE"]}
        test = ins.test
        hc: dict[str, Any] = {"Test": test}
        for field_, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod"),
                            ("start_interval", "StartInterval")):
            v = getattr(ins, field_)
            if v:
                hc[key] = v
        if ins.retries:
            hc["Retries"] = ins.retries
        return hc

    # -- layer steps -----------------------------------------------------------------------------
    def lower_dirs(self, state: _State) -> list[Path]:
        return self.store.snapshots.ensure(state.layers)

    def commit_upper(self, ins: df.Instruction, state: _State, upper: Path, canonical: str,
                     lower: list[Path] | None = None) -> None:
        """Turn a RUN step's upper dir into a layer; the upper dir becomes its snapshot."""
        from pybuild.store.layers import entries_from_upper
        below = StackView(lower if lower is not None else [], cached=True)
        entries = entries_from_upper(upper, lambda p: below.lstat(p) is not None)
        chain = self.commit_entries(state, entries, canonical)
        if chain is None:
            shutil.rmtree(upper, ignore_errors=True)
        else:
            self.store.snapshots.commit(upper, chain)

    def commit_entries(self, state: _State, entries: list[Entry], canonical: str,
                       snapshot: bool = False, inputs: str | None = None) -> Digest | None:
        """Write ``entries`` as the step's layer (or record an empty step); returns the new
        chain id, or None for an empty step. With ``snapshot`` (a later step will read this
        layer) the snapshot is written straight from the entries, not extracted from the blob
        later; it is the same tree either way.

        ``inputs`` (COPY/ADD: a digest of the instruction and of every byte it reads) lets a
        step whose parent changed but whose layer did not reuse the layer blob an earlier build
        wrote: the blob is a function of the inputs, the entries' metadata (which is where the
        parent shows: destinations, copied-up parents, owners), the compression and the clamp."""
        if not entries:
            self.store.cache.put(state.key, CacheRecord())
            state.config = state.config.with_history(History(created=self.created, created_by=canonical,
                                                             comment=HISTORY_COMMENT, empty_layer=True))
            return None
        reuse = None if inputs is None else _h("layer", inputs, self.opts.compression, str(self.clamp),
                                                _entries_digest(entries, self.clamp))
        rec = None if reuse is None or self.opts.no_cache else self.store.cache.get(reuse)
        if rec is not None and rec.layer is not None and rec.diff_id is not None \
                and self.store.content.has(rec.layer.digest):
            ref = LayerRef(rec.layer, rec.diff_id)
        else:
            from pybuild.store.layers import write_layer
            result = write_layer(self.store.content, entries, self.opts.compression, clamp_mtime=self.clamp)
            ref = LayerRef(result.descriptor, result.diff_id)
            if reuse is not None:
                self.store.cache.put(reuse, CacheRecord(ref.descriptor, ref.diff_id))
        if reuse is not None:
            self.reuse_keys.append(reuse)
        chain = chain_id([x.diff_id for x in state.layers] + [ref.diff_id])
        assert chain is not None
        self.chains.append(chain)
        if snapshot and not self.store.snapshots.exists(chain):
            self.write_snapshot(entries, chain, canonical, chain_ids([x.diff_id for x in state.layers]))
        self.store.cache.put(state.key, CacheRecord(ref.descriptor, ref.diff_id))
        self.add_layer(state, ref, canonical)
        return chain

    def write_snapshot(self, entries: list[Entry], chain: Digest, canonical: str,
                       parents: list[Digest]) -> None:
        """Write the snapshot of a layer made from ``entries`` (``parents``: the chain ids
        below it): as a delta over the snapshot the last build of the same step wrote, when
        that one can serve (see builder/snapdelta) and is not in the stack below, else whole."""
        from .copy import materialize
        from .snapdelta import write_delta
        snaps = self.store.snapshots
        step = _h("snapshot-donor", canonical)
        donor = self.store.cache.donor(step)
        donor_dirs = snaps.dirs(Digest("sha256", donor)) if donor else None
        if donor_dirs and not set(donor_dirs).isdisjoint(snaps.known_dirs(parents)):
            donor_dirs = None
        snaps.write_sums(chain, {e.path: e.digest for e in entries if e.type == "file" and e.digest})
        tmp = snaps.prepare()
        try:
            if donor_dirs and write_delta(entries, tmp, donor_dirs, clamp_mtime=self.clamp,
                                          donor_sums=snaps.sums(Digest("sha256", donor))) is not None:
                snaps.commit_delta(tmp, chain, donor_dirs)
            else:
                shutil.rmtree(tmp)
                tmp = snaps.prepare()
                materialize(entries, tmp, clamp_mtime=self.clamp)
                snaps.commit(tmp, chain)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.store.cache.set_donor(step, chain)

    def add_layer(self, state: _State, ref: LayerRef, canonical: str) -> None:
        state.layers.append(ref)
        state.config = state.config.with_layer(ref.diff_id, History(created=self.created, created_by=canonical,
                                                                    comment=HISTORY_COMMENT))

    def cache_get(self, key: str) -> CacheRecord | None:
        """The cache record for ``key``: local first, then the ``--cache-from`` caches (whose
        layer, on a hit, is fetched into the store). None with ``--no-cache``."""
        if self.opts.no_cache:
            return None
        rec = self.store.cache.get(key)
        if rec is not None and (rec.layer is None or self.store.content.has(rec.layer.digest)):
            return rec
        for remote in self.opts.cache_from:
            rec = remote.get(self.store, key)
            if rec is not None:
                return rec
        return None

    def from_cache(self, state: _State, canonical: str) -> bool:
        hit = self._from_cache(state, canonical)
        if not hit:
            self.explain.missed()
        return hit

    def _from_cache(self, state: _State, canonical: str) -> bool:
        if self.opts.no_cache:
            return False
        rec = self.cache_get(state.key)
        if rec is None:
            return False
        if rec.layer is None:
            state.config = state.config.with_history(History(created=self.created, created_by=canonical,
                                                             comment=HISTORY_COMMENT, empty_layer=True))
            return True
        if not self.store.content.has(rec.layer.digest):
            return False
        self.add_layer(state, LayerRef(rec.layer, rec.diff_id), canonical)  # type: ignore[arg-type]
        chain = chain_id([x.diff_id for x in state.layers])
        if chain is not None:
            self.chains.append(chain)
        return True

    def step_workdir(self, ins: df.Workdir, state: _State, env: dict[str, str]) -> bool:
        path = self.expand(ins, ins.path, env)
        cur = state.config.config.WorkingDir or "/"
        new = posixpath.normpath(posixpath.join(cur, path)) if path else cur
        if new.startswith("//"):
            new = "/" + new.lstrip("/")
        self.set_config(state, WorkingDir=new)
        canonical = f"WORKDIR {new}"
        state.key = _h(state.key, canonical)
        self.keys.append(state.key)
        self.explain.keyed(state.key, canonical)
        if new == "/":
            return self.record_meta_keyed(state, canonical)
        if self.from_cache(state, canonical):
            return True
        from .copy import CopyItem, LayerPlan, SrcStat, resolve_owner
        view = StackView(self.lower_dirs(state), cached=True)
        if view.lstat(view.resolve(new)) is not None:
            return self.record_meta_keyed(state, canonical)
        user = state.config.config.User
        owner = None
        if user:
            try:
                owner = resolve_owner(user, view)
            except PybuildError:
                owner = None
        plan = LayerPlan(view, owner=owner)
        plan.add([CopyItem(new, SrcStat("dir", 0o755, 0, 0, 0, 0), data=None)])
        self.commit_entries(state, plan.entries(), canonical, snapshot=self.snapshot_wanted)
        return False

    def run_argv(self, ins: df.Run, cc: ContainerConfig, scratch_files: dict[str, bytes]) -> list[str]:
        """The process to start for a RUN: exec form as is; shell form through SHELL; heredocs as
        the shell script they are part of (a lone heredoc with a shebang runs as a file)."""
        shell = list(cc.Shell) or ["/bin/sh", "-c"]
        if not ins.shell_form:
            return list(ins.command)  # type: ignore[arg-type]
        cmd = str(ins.command)
        if ins.heredocs:
            only = len(ins.heredocs) == 1 and cmd.strip().lstrip("<-").strip("'\"") == ins.heredocs[0].name
            h = ins.heredocs[0]
            if only and h.content.startswith("#!"):
                scratch_files["heredoc"] = h.content.encode()
                return [HEREDOC_PATH]
            if only:
                return shell + [h.content]
            script = cmd + "\n" + "".join(x.body + ("" if x.body.endswith("\n") or not x.body else "\n")
                                          + x.name + "\n" for x in ins.heredocs)
            return shell + [script]
        return shell + [cmd]

    def step_run(self, ins: df.Run, state: _State) -> bool:
        cc = state.config.config
        files: dict[str, bytes] = {}
        argv = self.run_argv(ins, cc, files)
        image_env = cc.env_dict()
        arg_env = {k: v for k, v in state.args.items() if v is not None and k not in image_env}
        # Docker's predefined proxy ARGs reach RUN without an ARG line, and stay out of the key.
        proxy_env = {k: v for k, v in self.opts.build_args.items()
                     if k in PREDEFINED_ARGS and k not in image_env and k not in arg_env}
        self.used_args.update(proxy_env)
        env = {**proxy_env, **arg_env, **image_env}
        network = ins.network or self.opts.network
        if network not in ("host", "none", "default"):
            raise self.err(ins, f"unsupported RUN --network={network}", hint="use host or none")
        network = "host" if network == "default" else network
        canonical = "RUN " + (json.dumps(argv) if not ins.shell_form else str(ins.command))
        mounts = []
        if ins.mounts:
            from .mounts import parse_mount
            mounts = [parse_mount(self.expand(ins, m, self.env_of(state))) for m in ins.mounts]
        mount_keys = [self.mount_key(ins, m, state) for m in mounts]
        state.key = _h(state.key, canonical, json.dumps(sorted(arg_env.items())), network,
                       *[hashlib.sha256(b).hexdigest() for b in files.values()], *mount_keys,
                       *[hashlib.sha256(h.content.encode()).hexdigest() for h in ins.heredocs])
        self.keys.append(state.key)
        self.explain.keyed(state.key, canonical, args=arg_env, network=network, mounts=mount_keys,
                           heredocs={h.name: hashlib.sha256(h.content.encode()).hexdigest() for h in ins.heredocs})
        if self.from_cache(state, canonical):
            return True
        from .sandbox import SandboxSpec, cleanup_upper, relink_lower_hardlinks, run_sandboxed
        from .vfs import diff_into_upper, materialize as copy_snapshot
        lower = self.lower_dirs(state)
        snaps = self.store.snapshots
        upper, work = snaps.prepare(), snaps.prepare()
        scratch = snaps.prepare()
        binds: list[tuple[str, str, bool]] = []
        tmpfs: list[tuple[str, str]] = []
        locks: list[int] = []
        try:
            for i, m in enumerate(mounts):
                self.prepare_mount(ins, m, i, scratch, binds, tmpfs, locks, state)
        except BaseException:
            for d in (upper, work, scratch):
                shutil.rmtree(d, ignore_errors=True)
            for fd in locks:
                os.close(fd)
            raise
        if "heredoc" in files:
            hp = scratch / "heredoc-script"
            hp.write_bytes(files["heredoc"])
            hp.chmod(0o755)
            binds.append((str(hp), HEREDOC_PATH, True))
        try:
            rootfs = None
            if self.driver() == "vfs":
                rootfs = scratch / "rootfs"
                rootfs.mkdir()
                inodes = copy_snapshot(lower, rootfs)
            spec = SandboxSpec(lower_dirs=lower, upper=upper, work=work, scratch=scratch / "sb", argv=argv,
                               env=[f"{k}={v}" for k, v in env.items()], cwd=cc.WorkingDir or "/",
                               user=cc.User, hostname="pybuild", network=network, limits=self.opts.limits,
                               binds=binds, tmpfs=tmpfs, security=self.opts.security, rootfs=rootfs)
            result = run_sandboxed(spec, on_output=self.progress.output)
            self.progress.flush_output()
            if result.oom_killed:
                raise BuildError(f"RUN was killed: out of memory "
                                 f"(limit {self.opts.limits.memory} bytes)",
                                 hint="raise --memory, or make the step use less memory")
            if result.exit_code != 0:
                why = f": {result.setup_error}" if result.setup_error else ""
                raise BuildError(f"RUN {ins.logical.split(None, 1)[1] if ' ' in ins.logical else ''} "
                                 f"returned a non-zero code: {result.exit_code}{why}",
                                 hint="the command failed inside the build; see its output above")
            if rootfs is not None:
                diff_into_upper(lower, rootfs, inodes, upper)
            cleanup_upper(upper, lower, [b[1] for b in binds] + [t[0] for t in tmpfs])
            relink_lower_hardlinks(upper, lower)
            self.commit_upper(ins, state, upper, canonical, lower)
        except BaseException:
            shutil.rmtree(upper, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
            for fd in locks:
                os.close(fd)
        return False

    def driver(self) -> str:
        """The storage driver for RUN: as asked, or overlay when it mounts here, else vfs."""
        if self._driver is None:
            want = self.opts.storage_driver
            if want == "auto":
                from .vfs import overlay_available
                probe = self.store.snapshots.prepare()
                try:
                    want = "overlay" if overlay_available(probe) else "vfs"
                finally:
                    shutil.rmtree(probe, ignore_errors=True)
                if want == "vfs":
                    self.progress.warn("overlayfs cannot be mounted here: RUN steps use the copy (vfs) "
                                       "driver, which is slower")
            self._driver = want
        return self._driver

    def mount_source_fs(self, ins: df.Instruction, m: RunMount, state: _State) -> tuple[SourceFS, str, bool]:
        """Where a bind mount's files come from: (fs, digest for the cache key, keep owners)."""
        from .copy import ImageFS
        if not m.from_:
            ctx = self.opts.context
            paths = ctx.expand_sources([m.source or "."])
            return ctx.fs(), ctx.digest(paths), False
        idx = self.dockerfile.resolve_stage(m.from_, self.stage_index, line=ins.line)
        if idx is not None:
            src = self.states[idx]
            chain = chain_id([x.diff_id for x in src.layers])
            view = StackView(self.store.snapshots.ensure(src.layers), cached=True)
            return ImageFS(view), chain.hex if chain else "empty", True
        img = self.resolver.resolve(m.from_, self.platform)
        layers = [LayerRef(d, i) for d, i in zip(img.manifest.layers, img.config.diff_ids)]
        return ImageFS(StackView(self.store.snapshots.ensure(layers), cached=True)), str(img.descriptor.digest), True

    def mount_key(self, ins: df.Instruction, m: RunMount, state: _State) -> str:
        if m.type == "bind":
            return m.canonical() + "|" + self.mount_source_fs(ins, m, state)[1]
        return m.canonical()

    def prepare_mount(self, ins: df.Instruction, m: RunMount, i: int, scratch: Path,
                      binds: list[tuple[str, str, bool]], tmpfs: list[tuple[str, str]], locks: list[int],
                      state: _State) -> None:
        """Make the host side of one RUN --mount and add it to ``binds``/``tmpfs``."""
        from .copy import apply_items, plan_sources
        if m.type == "tmpfs":
            tmpfs.append((m.target, m.size))
        elif m.type == "secret":
            data = self.opts.secrets.get(m.id)
            if data is None:
                if m.required:
                    raise UserError(f"secret {m.id!r} is required but was not given",
                                    hint=f"pass --secret id={m.id},src=FILE")
                return
            f = scratch / f"secret-{i}"
            f.write_bytes(data)
            os.chmod(f, m.mode if m.mode is not None else 0o400)
            os.chown(f, m.uid or 0, m.gid or 0)
            binds.append((str(f), m.target, True))
        elif m.type == "cache":
            base = self.store.metadata_dir / "run-cache"
            d = base / hashlib.sha256(m.id.encode()).hexdigest()[:32]
            fresh = not d.exists()
            d.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(base / f"{d.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if m.sharing == "locked":
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            elif m.sharing == "private":
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    d = scratch / f"cache-{i}"  # someone else has it: a private, throw-away one
                    d.mkdir()
                    fresh = True
            else:
                fcntl.flock(lock_fd, fcntl.LOCK_SH)
            locks.append(lock_fd)
            if fresh:
                os.chmod(d, m.mode if m.mode is not None else 0o755)
                os.chown(d, m.uid or 0, m.gid or 0)
            binds.append((str(d), m.target, m.readonly))
        elif m.type == "bind":
            fs, _, keep = self.mount_source_fs(ins, m, state)
            d = scratch / f"bind-{i}"
            d.mkdir()
            items = plan_sources(fs, [m.source or "."], "/", "/", StackView([]),
                                 where=f"{self.file}:{ins.line}: ")
            apply_items(items, d, [], keep_owner=keep)
            src = d
            if items and items[-1].st.kind != "dir" and len(items) == 1:
                src = d / posixpath.basename(items[0].dest)
            binds.append((str(src), m.target, m.readonly))

    def record_meta_keyed(self, state: _State, canonical: str) -> bool:
        hit = self.cache_get(state.key) is not None
        if not hit:
            self.explain.missed()
            self.store.cache.put(state.key, CacheRecord())
        state.config = state.config.with_history(History(created=self.created, created_by=canonical,
                                                         comment=HISTORY_COMMENT, empty_layer=True))
        return hit

    def step_copy(self, dockerfile: df.Dockerfile, stage: df.Stage, ins: df.Copy | df.Add, state: _State,
                  states: dict[int, _State], env: dict[str, str]) -> bool:
        where = ""
        srcs = [self.expand(ins, s, env) for s in ins.sources]
        dest = self.expand(ins, ins.dest, env)
        if not dest:
            raise self.err(ins, f"{ins.cmd} has an empty destination")
        chown = self.expand(ins, ins.chown, env) if ins.chown else None
        chmod = None
        if ins.chmod:
            from .copy import parse_chmod
            chmod = parse_chmod(self.expand(ins, ins.chmod, env), where)
        excludes = [self.expand(ins, e, env) for e in ins.exclude]
        heredocs = []
        for h in ins.heredocs:
            body = h.content
            if h.expand:
                try:
                    body = expand_heredoc(body, env)
                except ExpansionError as e:
                    raise df.expansion_error(e, ins, self.file) from None
            heredocs.append((h.name, body.encode()))
        workdir = state.config.config.WorkingDir or "/"
        keep_owner = False
        fs: SourceFS
        src_layers: list[LayerRef] | None = None  # COPY --from: the source's layers
        input_digest: str
        from_ = ins.from_ if isinstance(ins, df.Copy) else None
        is_add = isinstance(ins, df.Add)
        urls: list[str] = []
        if is_add:
            import tempfile
            from .remote import download, is_url
            for s in srcs:
                if s.startswith("git@") or s.endswith(".git") or ("://" in s and not is_url(s)):
                    raise self.err(ins, f"ADD from {s}: git and non-HTTP sources are not supported",
                                   hint="clone or download into the context and COPY it")
            urls = [s for s in srcs if is_url(s)]
            srcs = [s for s in srcs if not is_url(s)]
            self.remote_inputs = self.remote_inputs or bool(urls)
            if urls and len(urls) + len(srcs) > 1 and not dest.endswith("/"):
                raise self.err(ins, "when adding several sources, the destination must be a directory "
                                    "and end with a /", hint=f"write {dest}/")
        checksum = self.expand(ins, ins.checksum, env) if isinstance(ins, df.Add) and ins.checksum else None
        if checksum and (len(urls) != 1 or srcs):
            raise self.err(ins, "--checksum needs exactly one HTTP source")
        downloads = []
        for u in urls:
            tmp = tempfile.mkdtemp(dir=self.store.snapshots_dir, prefix=".tmp-dl-")
            try:
                downloads.append((u, download(u, tmp, checksum)))
            except PybuildError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        if from_:
            ref = self.expand(ins, from_, env)
            idx = dockerfile.resolve_stage(ref, stage.index, line=ins.line)
            if idx is not None:
                src_layers = states[idx].layers
                input_digest = _h("stage", (chain_id([x.diff_id for x in src_layers]) or Digest.of(b"")).hex,
                                  _COPY_FROM_KEY)
            else:
                try:
                    img = self.resolver.resolve(ref, self.platform)
                except PybuildError as e:
                    raise DockerfileError(f"COPY --from={ref}: {e.message}", file=self.file, line=ins.line,
                                          text=ins.original.splitlines()[0], hint=e.hint) from None
                src_layers = [LayerRef(d, i) for d, i in zip(img.manifest.layers, img.config.diff_ids)]
                input_digest = _h("image", str(img.descriptor.digest), _COPY_FROM_KEY)
            keep_owner = True
            matched_paths: list[str] = []
        else:
            fs = self.opts.context.fs()
            matched_paths = self.opts.context.expand_sources(srcs)
            input_digest = self.opts.context.digest(matched_paths)
        canonical = (f"{ins.cmd} " + " ".join(
            ([f"--from={from_}"] if from_ else []) + ([f"--chown={chown}"] if chown else []) +
            ([f"--chmod={ins.chmod}"] if chmod is not None else []) + (["--link"] if ins.link else []) +
            (["--parents"] if getattr(ins, "parents", False) else []) +
            ([f"--checksum={checksum}"] if checksum else []) +
            [f"--exclude={e}" for e in excludes] + srcs + urls + [h for h, _ in heredocs] + [dest]))
        inputs = _h("copy-inputs", canonical, input_digest, *[hashlib.sha256(b).hexdigest() for _, b in heredocs],
                    *[d.sha256 for _, d in downloads])
        state.key = _h(state.key, canonical, input_digest, *[hashlib.sha256(b).hexdigest() for _, b in heredocs],
                       *[d.sha256 for _, d in downloads])
        self.keys.append(state.key)
        self.explain.keyed(state.key, canonical, tree=None if from_ else (input_digest, matched_paths),
                           source=input_digest if from_ else None, **{"from": from_ and ref},
                           heredocs={n: hashlib.sha256(b).hexdigest() for n, b in heredocs},
                           downloads={u: d.sha256 for u, d in downloads})
        tmpdirs: list[str] = [str(d.path.parent) for _, d in downloads]
        if self.from_cache(state, canonical):
            for t in tmpdirs:
                shutil.rmtree(t, ignore_errors=True)
            return True
        from .context_fs import DirFS
        from .copy import CopyItem, ImageFS, LayerPlan, SrcStat, plan_sources, resolve_owner
        if src_layers is not None:  # the source stage's or image's files, read only when the step runs
            fs = ImageFS(StackView(self.store.snapshots.ensure(src_layers), cached=True))
        lower = [] if ins.link else self.lower_dirs(state)
        view = StackView(lower, cached=True)
        exclude_fn = self.opts.context.exclude_matcher(excludes) if excludes else None
        items: list[CopyItem] = []
        try:
            for u, d in downloads:
                d_abs = dest if dest.startswith("/") else posixpath.join(workdir, dest)
                target = posixpath.join(d_abs, d.name) if dest.endswith("/") else d_abs
                st = SrcStat("file", 0o600, 0, 0, d.path.stat().st_size, d.mtime)
                items.append(CopyItem(posixpath.normpath(target), st, DirFS(d.path.parent), d.path.name))
            if srcs:
                where = f"{self.file}:{ins.line}: "
                try:
                    if is_add:
                        items = self.add_items(fs, srcs, dest, workdir, view, tmpdirs, exclude_fn, where)
                    else:
                        items = plan_sources(fs, srcs, dest, workdir, view,
                                             parents=bool(getattr(ins, "parents", False)),
                                             exclude=exclude_fn, where=where)
                except BuildError as e:
                    raise DockerfileError(e.message.removeprefix(where), file=self.file, line=ins.line,
                                          text=ins.original.splitlines()[0], hint=e.hint) from None
            for name, body in heredocs:
                d_abs = dest if dest.startswith("/") else posixpath.join(workdir, dest)
                target = posixpath.join(d_abs, name) if dest.endswith("/") else d_abs
                items.append(CopyItem(posixpath.normpath(target), SrcStat("file", 0o644, 0, 0, len(body), 0),
                                      data=body))
            owner_view = view if not ins.link else StackView(self.lower_dirs(state), cached=True)
            owner = resolve_owner(chown, owner_view, f"{self.file}:{ins.line}: ") if chown else None
            # The layer streams from the sources into the tar; its snapshot is extracted only
            # if a later step needs one.
            plan = LayerPlan(view, owner=owner, keep_owner=keep_owner, chmod=chmod,
                             skip_devices=os.geteuid() != 0 or in_user_namespace())
            plan.add(items)
            self.commit_entries(state, plan.entries(), canonical, snapshot=self.snapshot_wanted, inputs=inputs)
        finally:
            for t in tmpdirs:
                shutil.rmtree(t, ignore_errors=True)
        return False

    def add_items(self, fs: SourceFS, srcs: list[str], dest: str, workdir: str, view: StackView,
                  tmpdirs: list[str], exclude_fn: Any, where: str) -> list[CopyItem]:
        """ADD: like COPY, but local tar archives (by content) are extracted into ``dest``."""
        import tempfile
        from pybuild.store.layers import extract_layer, open_decompressed
        from .context_fs import DirFS
        from .copy import plan_sources
        plain: list[str] = []
        items: list[CopyItem] = []
        for s in srcs:
            archive = self.opts.context.archive_path(s)
            if archive is None:
                plain.append(s)
                continue
            tmp = tempfile.mkdtemp(dir=self.store.snapshots_dir, prefix=".tmp-add-")
            tmpdirs.append(tmp)
            with open(archive, "rb") as f:
                extract_layer(open_decompressed(f), tmp, mode="apply")  # type: ignore[arg-type]
            d = dest if dest.endswith("/") else dest + "/"
            items.extend(dataclasses.replace(it, keep_owner=True)
                         for it in plan_sources(DirFS(Path(tmp)), ["."], d, workdir, view, where=where))
        if plain:
            items[:0] = plan_sources(fs, plain, dest, workdir, view, exclude=exclude_fn, where=where)
        return items


def build(store: Store, opts: BuildOptions, resolver: ImageResolver | None = None,
          progress: Progress | None = None) -> BuildResult:
    """Build ``opts`` into ``store``. Raises DockerfileError (file:line), BuildError, UserError."""
    dockerfile = df.parse(opts.dockerfile_text, opts.dockerfile_name)
    progress = progress or Progress()
    sweep_stale()  # cgroups a killed pybuild left behind
    try:
        with store.lease():
            b = _Builder(store, opts, resolver or PullingResolver(store, progress), progress)
            return b.run(dockerfile)
    finally:
        progress.close()
