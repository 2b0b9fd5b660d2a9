"""The ``pybuild`` command line: each command parses its arguments, makes one library call, prints.

Errors from the library (``PybuildError``) are printed as ``error: …`` plus ``hint: …`` with the
error's exit code; a Python traceback appears only with ``--debug``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from pybuild.errors import PybuildError

__all__ = ["main", "cli"]


class Ctx:
    """Per-invocation state: the store root (the store itself is opened lazily)."""

    def __init__(self, root: str | None, debug: bool) -> None:
        self.root_arg = root
        self.debug = debug

    def store(self) -> "Any":
        from pybuild.store.store import Store, default_root
        # Absolute: the sandbox changes directory before it uses store paths.
        return Store(Path(self.root_arg).absolute() if self.root_arg else default_root())


pass_ctx = click.make_pass_decorator(Ctx)

_TRANSFER_PROGRESS_HELP = ("Progress on stderr: auto = live bars on a terminal, else plain; plain = a line "
                           "per blob started and finished; quiet = none.")


def _human_size(n: float) -> str:
    from pybuild.progress import human_size  # one definition, imported only when printing sizes
    return human_size(n)


def _human_age(created: str) -> str:
    from datetime import datetime
    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "N/A"
    d = time.time() - t
    for secs, unit in ((365 * 86400, "year"), (30 * 86400, "month"), (7 * 86400, "week"),
                       (86400, "day"), (3600, "hour"), (60, "minute")):
        if d >= secs:
            n = int(d // secs)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a minute ago"


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Quick start:
  pybuild import rootfs.tar busybox      # or: pybuild pull busybox
  pybuild -t app .                       # same as: pybuild build -t app .
  pybuild run app
  pybuild push app localhost:5000/app:1
\b
Exit codes: 0 success; 1 error (build failure, bad input, registry or store error: an
`error:` line says what, a `hint:` line what to do); 2 usage error; 130 interrupted;
`run` exits with the command's code. --debug adds the Python traceback.
See 'pybuild COMMAND --help' for a command's options.""")
@click.option("--root", envvar=None, metavar="DIR",
              help="Store root (default: $PYBUILD_ROOT, /var/lib/pybuild for root, else $XDG_DATA_HOME/pybuild).")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.version_option(package_name="pybuild")
@click.pass_context
def cli(ctx: click.Context, root: str | None, debug: bool) -> None:
    """pybuild: build OCI images from Dockerfiles, keep them in a content-addressed store,
    push and pull them, without a daemon. The command line follows docker's."""
    ctx.obj = Ctx(root, debug)


@cli.command("import", short_help="Import a rootfs tarball as a one-layer image.")
@click.argument("rootfs", type=click.Path(dir_okay=True, path_type=str))
@click.argument("name")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]), default="gzip", show_default=True,
              help="Layer compression.")
@pass_ctx
def import_cmd(c: Ctx, rootfs: str, name: str, compression: str) -> None:
    """Import a root file system tarball ROOTFS as a one-layer image NAME[:TAG].

    The layer is rewritten deterministically (sorted entries, numeric owners), and the image's
    created time is $SOURCE_DATE_EPOCH or 1970-01-01: the same tarball gives the same image id
    on every machine. Prints the image id."""
    from pybuild.store.importer import import_rootfs
    store = c.store()
    tag, desc = import_rootfs(store, rootfs, name, compression)
    img = store.load(desc)
    click.echo(str(img.id))


@cli.command("images", short_help="List images.")
@click.argument("repository", required=False, metavar="[REPOSITORY[:TAG]]")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table for people; json: an array of {Repository, Tag, ID, Digest, Created, Size} for scripts.")
@click.option("-q", "--quiet", is_flag=True, help="Only image ids (each once).")
@click.option("--digests", is_flag=True, help="Add a DIGEST column (the manifest digest).")
@click.option("--no-trunc", is_flag=True, help="Show full image ids.")
@pass_ctx
def images_cmd(c: Ctx, repository: str | None, fmt: str, quiet: bool, digests: bool, no_trunc: bool) -> None:
    """List images: repository, tag, image id (the config digest), age and size.

    SIZE is what the store holds for the image: its config and compressed layers. With
    REPOSITORY (e.g. busybox) only that repository's tags are listed; with REPOSITORY:TAG only
    that tag."""
    store = c.store()
    want = _image_filter(repository) if repository else None
    rows = []
    if store.exists():
        for e in store.entries():
            img = store.load(e.descriptor)
            repo, tag = "<none>", "<none>"
            if e.name:
                repo, _, tag = e.name.rpartition(":") if ":" in e.name.rsplit("/", 1)[-1] else (e.name, "", "<none>")
            if want is not None and not want(repo, tag):
                continue
            rows.append({"Repository": repo, "Tag": tag, "ID": str(img.id), "Digest": str(e.descriptor.digest),
                         "Created": img.config.created, "Size": img.size})
    if quiet:
        for r in dict.fromkeys(r["ID"] for r in rows):
            click.echo(r if no_trunc else r.split(":", 1)[1][:12])
        return
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    head = ["REPOSITORY", "TAG"] + (["DIGEST"] if digests else []) + ["IMAGE ID", "CREATED", "SIZE"]
    table = [head]
    for r in rows:
        table.append([r["Repository"], r["Tag"]] + ([r["Digest"]] if digests else [])
                     + [r["ID"] if no_trunc else r["ID"].split(":", 1)[1][:12], _human_age(r["Created"]),
                        _human_size(r["Size"])])
    _print_table(table)


def _image_filter(text: str) -> "Any":
    """``busybox`` → every tag of busybox; ``busybox:1`` → that tag (names as docker shows them)."""
    from pybuild.reference import parse_reference
    ref = parse_reference(text)
    has_tag = ":" in text.rsplit("/", 1)[-1]
    repo = ref.familiar_repository
    return lambda r, t: r == repo and (not has_tag or t == ref.tag)


def _print_table(table: list[list[str]]) -> None:
    """Columns padded to their widest cell, three spaces apart (as docker prints them)."""
    n = len(table[0])
    widths = [max(len(row[i]) for row in table) for i in range(n)]
    for row in table:
        click.echo("   ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip())


def _get_path(obj: "Any", path: str) -> "Any":
    for part in [p for p in path.split(".") if p]:
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            from pybuild.errors import UsageError
            raise UsageError(f"--format: no field {path!r}", hint="fields are the keys of the JSON output, "
                             "e.g. {{.Id}}, {{.Config.Env}}, {{json .RootFS}}")
    return obj


def _render_template(template: str, obj: "Any") -> str:
    """The part of Go templates that scripts use with docker inspect: ``{{.A.B}}`` and
    ``{{json .A}}``; lists print as ``[a b]``, maps and null as JSON."""
    import re

    def field(m: "re.Match[str]") -> str:
        value = _get_path(obj, m.group(2))
        if m.group(1) or isinstance(value, dict) or value is None:
            return json.dumps(value)
        if isinstance(value, list):
            return "[" + " ".join(str(v) for v in value) + "]"
        return str(value)
    out = re.sub(r"\{\{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*\}\}", field, template)
    if "{{" in out:
        from pybuild.errors import UsageError
        raise UsageError(f"--format: unsupported template {template!r}",
                         hint="use json, or {{.Field.Sub}} and {{json .Field}}")
    return out


@cli.command("inspect", short_help="Show images as JSON, like docker inspect.")
@click.argument("images", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", default="json", show_default=True, metavar="json|TEMPLATE",
              help="json, or a template such as '{{.Id}}' or '{{json .Config.Env}}' printed once per image.")
@pass_ctx
def inspect_cmd(c: Ctx, images: tuple[str, ...], fmt: str) -> None:
    """Show images as a JSON array, in docker's layout.

    Each entry has Id (the config digest), RepoTags, RepoDigests, Parent, Comment, Created,
    Author, Architecture, Variant, Os, Config, Size, RootFS and Metadata like docker inspect,
    plus Digest and MediaType (the manifest), History and Manifest."""
    store = c.store()
    store.check_exists()
    out = []
    for name in images:
        tags, desc = store.resolve(name)
        img = store.load(desc)
        cfg = json.loads(img.config_bytes)
        repos = dict.fromkeys(t.rsplit(":", 1)[0] if ":" in t.rsplit("/", 1)[-1] else t for t in tags)
        history = cfg.get("history") or []
        out.append({
            "Id": str(img.id), "RepoTags": tags,
            "RepoDigests": [f"{r}@{img.descriptor.digest}" for r in repos],
            "Parent": "", "Comment": cfg.get("comment") or (history[-1].get("comment", "") if history else ""),
            "Created": img.config.created, "DockerVersion": "",
            "Author": img.config.author, "Config": cfg.get("config") or {},
            "Architecture": img.config.architecture, "Variant": img.config.variant or None,
            "Os": img.config.os, "Size": img.size,
            "RootFS": {"Type": "layers", "Layers": [str(d) for d in img.config.diff_ids]},
            "Metadata": {"LastTagTime": ""},
            "Digest": str(img.descriptor.digest), "MediaType": img.descriptor.media_type,
            "History": history,
            "Manifest": json.loads(img.manifest_bytes),
        })
    if fmt == "json":
        click.echo(json.dumps(out, indent=4))
        return
    for obj in out:
        click.echo(_render_template(fmt, obj))


@cli.command("history", short_help="Show an image's history, newest first.")
@click.argument("image")
@click.option("--no-trunc", is_flag=True, help="Show full ids and CREATED BY texts.")
@click.option("-H", "--human/--no-human", default=True, show_default=True,
              help="Sizes and dates for people; --no-human prints bytes and RFC 3339 times.")
@click.option("-q", "--quiet", is_flag=True, help="Only the image id column.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table for people; json: an array of {ID, Created, CreatedBy, Size, Comment, EmptyLayer}.")
@pass_ctx
def history_cmd(c: Ctx, image: str, no_trunc: bool, human: bool, quiet: bool, fmt: str) -> None:
    """Show the history of an image, newest first, as docker history does.

    One row per history entry: the image id on the newest row and <missing> below it (pybuild
    keeps no intermediate images), when and by what instruction it was made, the size of its
    layer (compressed, as stored) and 0B for steps that only changed the config (empty layers)."""
    store = c.store()
    store.check_exists()
    _, desc = store.resolve(image)
    img = store.load(desc)
    layers = list(img.manifest.layers)
    history = list(img.config.history)
    rows = []
    for h in history:
        size = 0
        if not h.empty_layer and layers:
            size = layers.pop(0).size
        rows.append({"Created": h.created, "CreatedBy": h.created_by, "Size": size, "Comment": h.comment,
                     "EmptyLayer": h.empty_layer})
    for layer in layers:  # layers without a history entry (an image made without one): one row each
        rows.append({"Created": img.config.created, "CreatedBy": "", "Size": layer.size, "Comment": "",
                     "EmptyLayer": False})
    rows = [{"ID": str(img.id) if i == 0 else "<missing>", **r} for i, r in enumerate(reversed(rows))]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    ids = [r["ID"] if no_trunc or r["ID"] == "<missing>" else img.id.hex[:12] for r in rows]
    if quiet:
        for i in ids:
            click.echo(i)
        return
    table = [["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    for i, r in zip(ids, rows):
        by = " ".join(r["CreatedBy"].split()) if not no_trunc else r["CreatedBy"].replace("\n", " ")
        if not no_trunc and len(by) > 45:
            by = by[:44] + "…"
        table.append([i, _human_age(r["Created"]) if human else r["Created"], by,
                      _human_size(r["Size"]) if human else str(r["Size"]), r["Comment"]])
    _print_table(table)


@cli.command("tag", short_help="Add a tag to an image.")
@click.argument("source")
@click.argument("target")
@pass_ctx
def tag_cmd(c: Ctx, source: str, target: str) -> None:
    """Create a tag TARGET (NAME[:TAG]) that refers to the image SOURCE (a name or an id prefix)."""
    from pybuild.reference import parse_reference
    parse_reference(target)  # validate before reading anything
    store = c.store()
    store.check_exists()
    _, desc = store.resolve(source)
    store.tag(target, desc)


@cli.command("rmi", short_help="Remove images (tags), then unused blobs.")
@click.argument("images", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove every tag of an image given by id.")
@pass_ctx
def rmi_cmd(c: Ctx, images: tuple[str, ...], force: bool) -> None:
    """Remove images: each IMAGE given by name loses that tag; given by id, it loses all its
    tags (with -f when it has several). Blobs no remaining tag uses are deleted at once."""
    from pybuild.errors import UserError
    from pybuild.reference import parse_reference
    from pybuild.store.gc import collect
    store = c.store()
    store.check_exists()
    for name in images:
        tags, desc = store.resolve(name)
        by_name = None
        try:
            by_name = parse_reference(name).familiar
        except PybuildError:
            pass
        if by_name in tags:
            for e in store.tags.remove({by_name}):
                click.echo(f"Untagged: {e.name}")
        else:
            if len(tags) > 1 and not force:
                raise UserError(f"image {name} is referenced by {len(tags)} tags: {', '.join(tags)}",
                                hint="remove them by name, or use -f")
            for e in store.tags.remove_digest(str(desc.digest)):
                click.echo(f"Untagged: {e.name}" if e.name else f"Deleted: {e.descriptor.digest}")
    report = collect(store)
    for d in report.blobs:
        click.echo(f"Deleted: {d}")


@cli.command("prune", short_help="Remove untagged images and unused blobs.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@pass_ctx
def prune_cmd(c: Ctx, dry_run: bool) -> None:
    """Remove untagged images, and every blob and snapshot no tag uses.

    Build cache records (and their layers) are kept while the image they built is tagged."""
    from pybuild.store.gc import collect
    store = c.store()
    if not store.exists():
        click.echo("Total reclaimed space: 0B")
        return
    if not dry_run:
        store.tags.update(lambda entries: [e for e in entries if e.name])
    report = collect(store, dry_run=dry_run)
    verb = "Would delete" if dry_run else "Deleted"
    for d in report.blobs:
        click.echo(f"{verb}: {d}")
    for s in report.snapshots:
        click.echo(f"{verb} snapshot: {s}")
    click.echo(f"Total reclaimed space: {_human_size(report.bytes_freed)}")


@cli.command("save", short_help="Save images to an oci-archive or docker-archive.")
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", required=True, metavar="FILE", help="Archive to write (appears only when complete).")
@click.option("--format", "fmt", type=click.Choice(["oci-archive", "docker-archive"]), default="oci-archive",
              show_default=True, help="oci-archive: a tar of an OCI image layout (skopeo's oci-archive:); "
                                      "docker-archive: what docker save writes (docker load reads it).")
@click.option("--progress", type=click.Choice(["auto", "plain", "quiet"]), default="auto", show_default=True,
              help=_TRANSFER_PROGRESS_HELP)
@pass_ctx
def save_cmd(c: Ctx, images: tuple[str, ...], output: str, fmt: str, progress: str) -> None:
    """Save one or more images (names or id prefixes) to an archive file."""
    from pybuild.store.archive import save
    store = c.store()
    store.check_exists()
    with _transfers(progress, sys.stderr) as view:
        save(store, list(images), output, fmt, progress=view.event)


@cli.command("load", short_help="Load images from an archive.")
@click.option("-i", "--input", "input_", required=True, metavar="FILE", help="Archive to read.")
@pass_ctx
def load_cmd(c: Ctx, input_: str) -> None:
    """Load images from an oci-archive or docker-archive (gzip-compressed is fine).

    Every blob is verified before anything is committed: a bad archive leaves the store as it
    was. Images without a name in the archive load untagged (see `pybuild images`)."""
    from pybuild.store.archive import load
    store = c.store()
    for r in load(store, input_):
        click.echo(f"Loaded image: {r.name}" if r.name else f"Loaded image ID: {r.image_id}")


def _parse_kv(values: tuple[str, ...], what: str, from_env: bool = False) -> dict[str, str]:
    from pybuild.errors import UsageError
    out: dict[str, str] = {}
    for v in values:
        k, eq, val = v.partition("=")
        if not k:
            raise UsageError(f"invalid {what} {v!r}", hint=f"use {what} KEY=VALUE")
        if not eq:
            if not from_env:
                raise UsageError(f"invalid {what} {v!r}", hint=f"use {what} KEY=VALUE")
            if k not in os.environ:
                continue  # docker: a build-arg without value and not in the environment is ignored
            val = os.environ[k]
        out[k] = val
    return out


def _parse_output(spec: str) -> dict[str, str]:
    from pybuild.errors import UsageError
    fields: dict[str, str] = {}
    for part in spec.split(","):
        k, eq, v = part.partition("=")
        if not eq:
            if "type" not in fields and "," not in spec:
                fields = {"type": "local", "dest": spec}
                break
            raise UsageError(f"invalid --output {spec!r}", hint="use type=oci|docker|local,dest=PATH")
        fields[k.strip()] = v.strip()
    if fields.get("type") not in ("oci", "docker", "local") or not fields.get("dest"):
        raise UsageError(f"invalid --output {spec!r}", hint="use type=oci|docker|local,dest=PATH")
    return fields


@cli.command("build", short_help="Build an image from a Dockerfile.")
@click.argument("context", metavar="CONTEXT")
@click.option("-t", "--tag", "tags", multiple=True, metavar="TAG", help="Name (and tag) for the image; repeatable.")
@click.option("-f", "--file", "file", metavar="FILE", help="Dockerfile (default: CONTEXT/Dockerfile; - for stdin).")
@click.option("--build-arg", "build_args", multiple=True, metavar="K[=V]", help="Build-time variable; repeatable.")
@click.option("--target", metavar="STAGE", help="Build up to this stage.")
@click.option("--no-cache", is_flag=True, help="Do not use the build cache.")
@click.option("--explain-cache", is_flag=True,
              help="For each step that misses the cache, say which input changed since the last build of the tag.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Image label; repeatable.")
@click.option("--iidfile", metavar="FILE", help="Write the image id here.")
@click.option("--progress", type=click.Choice(["auto", "plain", "quiet"]), default="auto", show_default=True,
              help="auto: a live view on a terminal, else plain; plain: a stable line-by-line log (CI); "
                   "quiet: only the image id (the error of a failing step shows its output's tail).")
@click.option("-q", "--quiet", is_flag=True, help="Same as --progress quiet.")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]), default="gzip", show_default=True,
              help="Compression of the layers this build makes.")
@click.option("--output", "outputs", multiple=True, metavar="type=oci|docker|local,dest=PATH",
              help="Also export the image; repeatable.")
@click.option("--network", type=click.Choice(["host", "none"]), default="host", show_default=True,
              help="Network for RUN steps.")
@click.option("--platform", metavar="OS/ARCH", help="Target platform (default: the host's).")
@click.option("--memory", "-m", metavar="N", help="Memory limit for RUN steps (e.g. 512m, 2g).")
@click.option("--pids-limit", type=int, metavar="N", help="Process limit for RUN steps.")
@click.option("--cpus", type=float, metavar="N", help="CPU limit for RUN steps (e.g. 1.5).")
@click.option("--secret", "secrets", multiple=True, metavar="id=ID,src=FILE|env=VAR",
              help="A secret for RUN --mount=type=secret; repeatable.")
@click.option("--security-opt", "security_opt", multiple=True, metavar="seccomp=unconfined|PROFILE.json",
              help="seccomp profile for RUN/run (default: pybuild's docker-like profile).")
@click.option("--cap-add", multiple=True, metavar="CAP", help="Add a capability to the default set.")
@click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability (ALL for all).")
@click.option("--storage-driver", type=click.Choice(["auto", "overlay", "vfs"]),
              default=lambda: os.environ.get("PYBUILD_STORAGE_DRIVER", "auto"), show_default="auto",
              help="How RUN steps see their file system: overlayfs, or a full copy (vfs).")
@click.option("--push", "push_", is_flag=True, help="Push every tag after the build.")
@click.option("--cache-from", "cache_from", multiple=True, metavar="REF",
              help="Use a build cache exported to a registry with --cache-to; repeatable.")
@click.option("--cache-to", "cache_to", metavar="REF", help="Export this build's cache to a registry.")
@pass_ctx
def build_cmd(c: Ctx, context: str, tags: tuple[str, ...], file: str | None, build_args: tuple[str, ...],
              target: str | None, no_cache: bool, labels: tuple[str, ...], iidfile: str | None, progress: str,
              quiet: bool, compression: str, outputs: tuple[str, ...], network: str, platform: str | None,
              memory: str | None, pids_limit: int | None, cpus: float | None,
              secrets: tuple[str, ...], security_opt: tuple[str, ...], cap_add: tuple[str, ...],
              cap_drop: tuple[str, ...], storage_driver: str, push_: bool, cache_from: tuple[str, ...],
              cache_to: str | None, explain_cache: bool = False) -> None:
    """Build an image from a Dockerfile and a context.

    CONTEXT is a directory, a tar file (plain, gzip, bzip2, xz or zstd), or - for stdin: a
    tar context, or a Dockerfile alone (an empty context). `pybuild -t TAG CONTEXT` is short
    for `pybuild build -t TAG CONTEXT`. Build errors quote the Dockerfile with >>> at the
    failing line.

    \b
    Examples:
      pybuild build -t app .
      pybuild build -t app -f build/Dockerfile --build-arg VERSION=2 --target final .
      pybuild build -t reg.example.com/app:1 --push --cache-from reg.example.com/app:cache \\
          --cache-to reg.example.com/app:cache .
    """
    from pybuild.builder.build import BuildOptions, Progress, build
    from pybuild.builder.context import open_build_context
    from pybuild.errors import DockerfileError
    from pybuild.builder.security import parse_security_opt
    from pybuild.oci import Platform
    from pybuild.reference import parse_reference
    for t in tags:
        parse_reference(t)
    outs = [_parse_output(o) for o in outputs]
    mode = "quiet" if quiet else progress
    if mode == "auto":
        mode = "tty" if sys.stdout.isatty() else "plain"
    from pybuild.uptodate import parse_invocation
    # an invocation the up-to-date check can answer next time (see pybuild/uptodate.py)
    inv = parse_invocation(_argv) if _argv is not None else None
    started_ns = time.time_ns()
    store = c.store()
    store.init()
    if cache_to:
        parse_reference(cache_to)
    remotes = []
    if cache_from:
        from pybuild.registry.cache import import_cache
        for ref in cache_from:
            try:
                remotes.append(import_cache(store, ref))
            except PybuildError as e:  # like docker: a missing cache is a warning, not an error
                click.echo(f"[Warning] --cache-from {ref}: {e.message}", err=True)
    with open_build_context(context, file, stdin=sys.stdin.buffer, cache_dir=store.metadata_dir) as bc:
        opts = BuildOptions(context=bc, dockerfile_text=bc.dockerfile_text, dockerfile_name=bc.dockerfile_name,
                            tags=tags, build_args=_parse_kv(build_args, "--build-arg", from_env=True),
                            target=target, no_cache=no_cache, labels=_parse_kv(labels, "--label"),
                            compression=compression,
                            platform=Platform.parse(platform) if platform else Platform.host(),
                            network=network, limits=_limits(memory, pids_limit, cpus),
                            secrets=_secrets(secrets), cache_from=tuple(remotes),
                            security=parse_security_opt(security_opt, cap_add, cap_drop),
                            storage_driver=storage_driver, explain_cache=explain_cache)
        printed: list[str] = []
        prog = _build_progress(mode, Progress, tee=printed if inv is not None else None)
        index_before = _index_bytes(store) if inv is not None else None
        try:
            result = build(store, opts, progress=prog)
        except DockerfileError as e:
            e.source = bc.dockerfile_text  # the error shows the Dockerfile around the failing line
            e.log = getattr(prog, "failure", [])  # quiet: the failing step's output tail
            raise
        if inv is not None:
            _keep_uptodate_record(inv, mode, store, opts, bc, result, printed, index_before, started_ns)
    for o in outs:
        _export(store, result, o)
    if cache_to:
        from pybuild.registry.cache import export_cache
        digest = export_cache(store, list(result.cache_keys), cache_to)
        if mode != "quiet":
            click.echo(f"exported cache to {cache_to}@{digest}")
    if push_:
        from pybuild.registry import push
        for t in result.tags:
            with _transfers(mode, sys.stdout) as view:
                digest = push(store, t, progress=view)
            if mode != "quiet":
                click.echo(f"pushed {t}@{digest}")
    if iidfile:
        Path(iidfile).write_text(str(result.image_id))
    for line in _result_lines(result, mode):
        click.echo(line)


def _result_lines(result: "Any", mode: str) -> list[str]:
    """What a build prints last on stdout."""
    if mode == "quiet":
        return [str(result.image_id)]
    return [*(f"Successfully tagged {t}" for t in result.tags), f"--> {result.image_id}"]


def _build_progress(mode: str, progress_cls: "Any", tee: list[str] | None = None,
                    echo: bool = True) -> "Any":
    """The build's progress: the live view on a terminal (``tty``), the builder's own line log
    (``plain``), or only a failing step's output (``quiet``); FROM pulls report their transfers
    through it. Every line that stays on the screen (``plain``: every line; ``tty``: the finished
    steps) is also appended to ``tee``, if given; nothing is shown unless ``echo``."""
    import io
    from pybuild.progress import LiveBuildView, TransferView
    if mode == "tty":
        return LiveBuildView(sys.stdout if echo else io.StringIO(), tee=tee)
    if mode == "quiet":  # silent, but a failing step's output tail goes into the error message
        return LiveBuildView(sys.stderr, live=False)

    def out(line: str) -> None:
        if echo:
            click.echo(line, err=False)
        if tee is not None:
            tee.append(line)
    prog = progress_cls(mode, out=out, stream=sys.stdout)
    prog.transfer = TransferView(mode, out=prog.line)
    return prog


def _index_bytes(store: "Any") -> bytes | None:
    try:
        return (store.root / "index.json").read_bytes()
    except OSError:
        return None


def _keep_uptodate_record(inv: "Any", mode: str, store: "Any", opts: "Any", bc: "Any", result: "Any",
                          printed: list[str], index_before: bytes | None, started_ns: int) -> None:
    """Keep the up-to-date record of this build (pybuild/uptodate.py): what a rebuild that finds
    every step in the cache leaves on the screen in progress ``mode``, and the state of the inputs.

    When this build was such a rebuild (no step ran, nothing was pulled or re-tagged), its own
    output is recorded. Else the build runs once more, silently and without tags: that run must
    find every step in the cache and make the same image, and its output is recorded. Builds with remote inputs
    (ADD of a URL) get no record. A store or file error while keeping it is ignored: the record
    only saves time, and the build has succeeded.
    """
    import dataclasses
    from pybuild.builder.build import Progress, build
    from pybuild.uptodate import record
    if result.remote_inputs:
        return
    try:
        if result.executed_steps or index_before is None or _index_bytes(store) != index_before:
            printed = []
            # without tags: whatever this pass makes, the tags stay on the image just printed
            again = build(store, dataclasses.replace(opts, tags=()),
                          progress=_build_progress(mode, Progress, tee=printed, echo=False))
            if again.executed_steps or again.remote_inputs:
                return
            if again.descriptor != result.descriptor:  # the build is not reproducible from its cache: a bug
                click.echo(f"[Warning] a rebuild from the cache made {again.descriptor.digest}, not "
                           f"{result.descriptor.digest}: no up-to-date record kept; please report it", err=True)
                return
        # the tags as this build left them (not as a concurrent command may have changed them since)
        index = _index_bytes(store)
        tagged = {e.name: e.descriptor.digest for e in store.tags.read()}
        if index is None or _index_bytes(store) != index or \
                any(tagged.get(t) != result.descriptor.digest for t in result.tags):
            return
        output = "".join(f"{line}\n" for line in [*printed, *_result_lines(result, mode)])
        m = store.load(result.descriptor).manifest
        blobs = [(os.fspath(store.content.blob_path(d.digest)), d.size)
                 for d in (result.descriptor, m.config, *m.layers)]
        record(inv, mode=mode, context=bc, output=output, blobs=blobs, index=index, started_ns=started_ns)
    except (PybuildError, OSError):
        return


class _transfers:
    """``with _transfers(mode, stream) as view:`` a transfer progress callback for ``mode``
    (``auto`` = ``tty`` when ``stream`` is a terminal, else ``plain``); the live block is erased
    at the end."""

    def __init__(self, mode: str, stream: "Any") -> None:
        if mode == "auto":
            mode = "tty" if stream.isatty() else "plain"
        self.mode, self.stream = mode, stream

    def __enter__(self) -> "Any":
        from pybuild.progress import transfer_view
        self.view, self._end = transfer_view(self.mode, self.stream)
        return self.view

    def __exit__(self, *exc: object) -> None:
        self._end()


def _secrets(specs: tuple[str, ...]) -> dict[str, bytes]:
    """``--secret id=ID,src=FILE`` / ``id=ID,env=VAR`` → id → content."""
    from pybuild.errors import NotFound, UsageError
    out: dict[str, bytes] = {}
    for spec in specs:
        fields = dict(f.partition("=")[::2] for f in spec.split(","))
        sid = fields.get("id")
        src = fields.get("src") or fields.get("source")
        if not sid or not (src or fields.get("env")):
            raise UsageError(f"invalid --secret {spec!r}", hint="use --secret id=ID,src=FILE or id=ID,env=VAR")
        if src:
            try:
                out[sid] = Path(src).read_bytes()
            except OSError as e:
                raise NotFound(f"--secret {sid}: cannot read {src}: {e.strerror}",
                               hint="give a readable file: --secret id=ID,src=FILE") from None
        else:
            var = fields["env"]
            if var not in os.environ:
                raise NotFound(f"--secret {sid}: environment variable {var} is not set",
                               hint=f"export {var}, or use --secret id={sid},src=FILE")
            out[sid] = os.environ[var].encode()
    return out


def _limits(memory: str | None, pids: int | None, cpus: float | None) -> "Any":
    from pybuild.builder.cgroups import Limits, parse_size
    from pybuild.errors import UsageError
    if pids is not None and pids < 1:
        raise UsageError("--pids-limit must be at least 1", hint="e.g. --pids-limit 200")
    if cpus is not None and cpus <= 0:
        raise UsageError("--cpus must be more than 0", hint="e.g. --cpus 1.5")
    return Limits(parse_size(memory) if memory else None, pids, cpus)


def _export(store: "Any", result: "Any", o: dict[str, str]) -> None:
    from pybuild.store.archive import save
    if o["type"] in ("oci", "docker"):
        name = result.tags[0] if result.tags else str(result.image_id)
        save(store, [name], o["dest"], "oci-archive" if o["type"] == "oci" else "docker-archive")
        return
    from pybuild.store.flatten import flatten_image
    flatten_image(store, store.load(result.descriptor), Path(o["dest"]))


@cli.command("run", short_help="Run a command in an image.",
             context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--rm", is_flag=True, help="Accepted for docker compatibility: nothing is ever kept.")
@click.option("--network", type=click.Choice(["host", "none"]), default="host", show_default=True,
              help="host: the host's network; none: only a loopback interface.")
@click.option("--memory", "-m", metavar="N", help="Memory limit (e.g. 512m).")
@click.option("--pids-limit", type=int, metavar="N", help="Process limit.")
@click.option("--cpus", type=float, metavar="N", help="CPU limit.")
@click.option("--security-opt", "security_opt", multiple=True, metavar="seccomp=unconfined|PROFILE.json",
              help="seccomp profile for RUN/run (default: pybuild's docker-like profile).")
@click.option("--cap-add", multiple=True, metavar="CAP", help="Add a capability to the default set.")
@click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability (ALL for all).")
@click.option("--init", is_flag=True, help="Run an init as PID 1 that reaps zombies.")
@click.option("--entrypoint", metavar="CMD", help="Override the image's entrypoint.")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def run_cmd(c: Ctx, rm: bool, network: str, memory: str | None, pids_limit: int | None, cpus: float | None,
            security_opt: tuple[str, ...], cap_add: tuple[str, ...], cap_drop: tuple[str, ...],
            init: bool, entrypoint: str | None, image: str, command: tuple[str, ...]) -> None:
    """Run COMMAND (default: the image's entrypoint and cmd) in a new sandbox from IMAGE.

    The sandbox is removed when the command ends (pybuild keeps no containers); pybuild exits
    with the command's exit code. A missing IMAGE is pulled, as docker does.

    \b
    Example:
      pybuild run --rm busybox sh -c 'echo hello'
    """
    from pybuild.builder.run import run_image
    from pybuild.builder.security import parse_security_opt
    store = c.store()
    store.check_exists()
    code = run_image(store, image, command, network=network, limits=_limits(memory, pids_limit, cpus),
                     init=init, entrypoint=entrypoint,
                     security=parse_security_opt(security_opt, cap_add, cap_drop))
    raise click.exceptions.Exit(code)


@cli.command("fsck", short_help="Check the store; repair what is broken.")
@click.option("--no-repair", is_flag=True, help="Only report; remove nothing.")
@pass_ctx
def fsck_cmd(c: Ctx, no_repair: bool) -> None:
    """Verify every blob and image; remove corrupt blobs, orphans and half-made snapshots.

    Exits 1 when corrupt blobs or broken images remain to be dealt with."""
    from pybuild.errors import StoreError
    from pybuild.store.fsck import fsck
    store = c.store()
    store.check_exists()
    r = fsck(store, repair=not no_repair)
    click.echo(f"checked {r.blobs_checked} blobs")
    for d in r.corrupt:
        click.echo(f"corrupt blob: {d}" + ("" if no_repair else " (removed)"))
    for b in r.broken_images:
        click.echo(f"broken image: {b}")
    if r.half_made_snapshots:
        click.echo(f"half-made snapshots: {len(r.half_made_snapshots)}" + ("" if no_repair else " (removed)"))
    if not no_repair:
        click.echo(f"removed {r.orphan_blobs} orphan blobs, {r.orphan_snapshots} orphan snapshots, "
                   f"{r.dead_ingests} dead ingests")
    if not r.ok:
        raise StoreError(f"the store at {store.root} has {len(r.corrupt)} corrupt blobs and "
                         f"{len(r.broken_images)} broken images",
                         hint="remove the broken images (pybuild rmi) and pull or build them again")
    click.echo("store OK")


@cli.command("pull", short_help="Pull an image from a registry.")
@click.argument("reference")
@click.option("--platform", metavar="OS/ARCH", help="Platform to pick from a multi-platform image.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the stored name; no progress.")
@click.option("--progress", type=click.Choice(["auto", "plain", "quiet"]), default="auto", show_default=True,
              help=_TRANSFER_PROGRESS_HELP)
@pass_ctx
def pull_cmd(c: Ctx, reference: str, platform: str | None, quiet: bool, progress: str) -> None:
    """Pull an image from a registry into the store.

    REFERENCE is HOST[:PORT]/REPO[:TAG] or …@sha256:DIGEST (docker.io when no host is given).
    From a multi-platform index, the host's platform (or --platform's) is stored and tagged.
    Prints the stored name and the manifest digest."""
    from pybuild.oci import Platform
    from pybuild.registry import pull
    store = c.store()
    store.init()
    with _transfers("quiet" if quiet else progress, sys.stderr) as view:
        name, desc = pull(store, reference, Platform.parse(platform) if platform else None, view)
    click.echo(name if quiet else f"{name}\nDigest: {desc.digest}")


@cli.command("push", short_help="Push an image to a registry.")
@click.argument("image")
@click.argument("reference", required=False)
@click.option("-q", "--quiet", is_flag=True, help="No progress.")
@click.option("--progress", type=click.Choice(["auto", "plain", "quiet"]), default="auto", show_default=True,
              help=_TRANSFER_PROGRESS_HELP)
@pass_ctx
def push_cmd(c: Ctx, image: str, reference: str | None, quiet: bool, progress: str) -> None:
    """Push IMAGE to REFERENCE (default: IMAGE's own name) and print the pushed digest.

    Blobs the registry has are skipped; blobs known to live in another repository of the same
    registry are mounted, not uploaded. Log in first for a registry that needs credentials."""
    from pybuild.registry import push
    store = c.store()
    store.check_exists()
    with _transfers("quiet" if quiet else progress, sys.stderr) as view:
        digest = push(store, image, reference, progress=view)
    click.echo(f"{reference or image}: digest: {digest}")


@cli.command("login", short_help="Save registry credentials.")
@click.argument("registry")
@click.option("-u", "--username", required=True, help="User name on the registry.")
@click.option("-p", "--password", help="Prefer --password-stdin: a password on the command line is visible.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def login_cmd(registry: str, username: str, password: str | None, password_stdin: bool) -> None:
    """Check credentials against REGISTRY (HOST[:PORT]) and save them in docker's config.json
    ($DOCKER_CONFIG/config.json, else ~/.docker/config.json), where pybuild and docker find them.

    \b
    Example:
      echo "$TOKEN" | pybuild login ghcr.io -u me --password-stdin
    """
    from pybuild.errors import UsageError
    from pybuild.registry import login
    if password_stdin:
        password = sys.stdin.read().rstrip("\n")
    if not password:
        raise UsageError("no password given", hint="pipe it in: echo $TOKEN | pybuild login HOST -u USER --password-stdin")
    path = login(registry, username, password)
    click.echo(f"Login Succeeded (credentials saved in {path})")


_GLOBAL_WITH_VALUE = {"--root"}
_GLOBAL_FLAGS = {"--debug"}


_argv: list[str] | None = None  # the arguments main() was given: the key of the up-to-date record


def _insert_build(args: list[str]) -> list[str]:
    """``pybuild -t TAG CONTEXT`` means ``pybuild build -t TAG CONTEXT`` (docker's shorthand)."""
    i = 0
    while i < len(args):
        a = args[i]
        if a in _GLOBAL_WITH_VALUE:
            i += 2
            continue
        if a.split("=", 1)[0] in _GLOBAL_WITH_VALUE or a in _GLOBAL_FLAGS:
            i += 1
            continue
        break
    if i < len(args) and args[i] not in cli.commands and args[i] not in ("-h", "--help", "--version") \
            and (args[i].startswith("-") or os.path.isdir(args[i])):
        return args[:i] + ["build"] + args[i:]
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns PybuildError into a message and an exit code."""
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(_insert_build(list(_argv)))
    finally:
        _argv = None  # an in-process cli.main() call later (tests) must not see these arguments


def _main(args: list[str]) -> int:
    debug = "--debug" in args
    from pybuild.userns import reexec_in_user_namespace
    rc = reexec_in_user_namespace(args)  # not root: continue as root of a user namespace
    if rc is not None:
        return rc
    try:
        rv = cli.main(args=args, prog_name="pybuild", standalone_mode=False)
        return rv if isinstance(rv, int) else 0  # click returns Exit codes in this mode
    except PybuildError as e:
        _traceback(debug)
        _print_error(e)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_INTERRUPTED
    except click.UsageError as e:
        _traceback(debug)
        click.echo(f"error: {e.format_message()}", err=True)
        if e.ctx is not None:
            click.echo(e.ctx.get_usage(), err=True)
            click.echo(f"hint: see '{e.ctx.command_path} --help'", err=True)
        return EXIT_USAGE
    except click.ClickException as e:
        _traceback(debug)
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_BROKEN_PIPE
    except OSError as e:
        _traceback(debug)
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        click.echo(f"error:{where}: {e.strerror or e}", err=True)
        click.echo("hint: check the path and its permissions", err=True)
        return EXIT_ERROR
    except Exception as e:  # a bug: one line, and the traceback with --debug
        _traceback(debug)
        click.echo(f"error: internal error: {type(e).__name__}: {e}", err=True)
        click.echo("hint: this is a bug in pybuild; run again with --debug for the traceback and report it"
                   if not debug else "hint: this is a bug in pybuild; please report the traceback above", err=True)
        return EXIT_ERROR


#: Exit codes (documented in the README and ``pybuild --help``).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


def _traceback(debug: bool) -> None:
    """With ``--debug``, the Python traceback of the exception being handled, before the message."""
    if debug:
        import traceback
        traceback.print_exc()


def _print_error(e: PybuildError) -> None:
    """``error: <headline>``, more lines of the message (for a Dockerfile error: the Dockerfile
    around the failing line, ``>>>`` marking it), then ``hint: <hint>``; all on stderr."""
    from pybuild.errors import DockerfileError
    if isinstance(e, DockerfileError):
        click.echo(f"error: {e.headline}", err=True)
        rest = e.reason.splitlines()[1:]
        snippet = e.snippet(e.source if e.source is not None else _dockerfile_source(e))
        if not snippet and e.text:
            snippet = [f"  {e.line:>4} | {e.text.rstrip()}" if e.line else f"  | {e.text.rstrip()}"]
        lines = rest + e.log + snippet
    else:
        first, *lines = e.message.splitlines() or [""]
        click.echo(f"error: {first}", err=True)
    for ln in lines:
        click.echo(ln, err=True)
    hint = e.hint or e.default_hint
    if hint:
        click.echo(f"hint: {hint}", err=True)


def _dockerfile_source(e: "Any") -> str | None:
    """The text of the Dockerfile ``e`` names, if it can be read and its line ``e.line`` is the
    offending text ``e.text`` (so a same-named file elsewhere is never shown)."""
    if not e.file or e.file.startswith("<") or not e.line or not e.text:
        return None
    try:
        text = Path(e.file).read_bytes().decode("utf-8-sig", "replace")
    except OSError:
        return None
    lines = text.splitlines()
    if e.line > len(lines) or lines[e.line - 1].rstrip() != e.text.rstrip():
        return None
    return text


if __name__ == "__main__":
    sys.exit(main())
