"""Pure OCI value types: digests, descriptors, manifests, indexes, image configs.

Everything here is a frozen dataclass with no I/O. ``from_json`` parses bytes received or read;
``to_json`` produces canonical bytes (sorted keys, no insignificant white space) for values we
create. Rule of the house: a digest is always computed over the exact bytes written or received,
so code that *read* a manifest keeps its bytes and never re-serialises it to hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform as _platform
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pybuild.errors import DigestMismatch, InvalidArchive

__all__ = [
    "MediaType", "Digest", "Descriptor", "Platform", "Manifest", "Index", "ImageConfig",
    "ContainerConfig", "History", "canonical_json", "chain_id", "chain_ids",
    "ANNOTATION_REF_NAME", "ANNOTATION_CREATED",
]

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CREATED = "org.opencontainers.image.created"


class MediaType:
    """Media types we write (OCI) and read (OCI and Docker schema2)."""

    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    OCI_EMPTY = "application/vnd.oci.empty.v1+json"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

    MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
    INDEXES = frozenset({OCI_INDEX, DOCKER_LIST})
    CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})
    LAYERS = frozenset({OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_ND_GZIP,
                        DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN})

    @staticmethod
    def compression(media_type: str) -> str:
        """Return ``"gzip"``, ``"zstd"`` or ``""`` (uncompressed) for a layer media type."""
        if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
            return "zstd"
        if media_type.endswith("gzip"):
            return "gzip"
        return ""

    @staticmethod
    def layer_for(compression: str) -> str:
        """The OCI layer media type for ``compression`` ("gzip", "zstd" or "")."""
        return {"gzip": MediaType.OCI_LAYER_GZIP, "zstd": MediaType.OCI_LAYER_ZSTD,
                "": MediaType.OCI_LAYER}[compression]


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` as canonical JSON bytes: sorted keys, compact separators, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArchive(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidArchive(f"{what} is not a JSON object")
    return obj


_HEX = {"sha256": re.compile(r"^[a-f0-9]{64}$"), "sha512": re.compile(r"^[a-f0-9]{128}$")}


@dataclass(frozen=True, order=True)
class Digest:
    """A content digest such as ``sha256:ab…``; only sha256 and sha512 are accepted."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> "Digest":
        """Parse ``alg:hex``. Raises InvalidArchive (a UserError) when malformed."""
        alg, sep, hexpart = str(text).partition(":")
        if not sep or alg not in _HEX or not _HEX[alg].match(hexpart):
            raise InvalidArchive(f"invalid digest {text!r}",
                                 hint="digests look like sha256:<64 lowercase hex digits>")
        return cls(alg, hexpart)

    @classmethod
    def of(cls, data: bytes) -> "Digest":
        """The sha256 digest of ``data``."""
        return cls("sha256", hashlib.sha256(data).hexdigest())

    @classmethod
    def from_hasher(cls, hasher: "hashlib._Hash") -> "Digest":
        return cls(hasher.name, hasher.hexdigest())

    def new_hasher(self) -> "hashlib._Hash":
        return hashlib.new(self.algorithm)

    def verify(self, data: bytes, what: str = "content") -> None:
        """Raise DigestMismatch unless ``data`` hashes to this digest."""
        actual = Digest(self.algorithm, hashlib.new(self.algorithm, data).hexdigest())
        if actual != self:
            raise DigestMismatch(f"{what} {self}: content hashes to {actual}",
                                 expected=str(self), actual=str(actual))

    @property
    def short(self) -> str:
        """The first 12 hex digits, as docker shows image ids."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


@dataclass(frozen=True)
class Platform:
    """An OCI platform (os/architecture[/variant])."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    _ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
             "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le",
             "s390x": "s390x", "riscv64": "riscv64"}

    @classmethod
    def host(cls) -> "Platform":
        """The platform of this machine (linux, with the machine's architecture normalised)."""
        m = _platform.machine().lower()
        arch = cls._ARCH.get(m, m)
        variant = "v8" if arch == "arm64" else ("v7" if m == "armv7l" else "")
        return cls("linux", arch, variant)

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """Parse ``os/arch[/variant]`` (as in ``--platform linux/arm64/v8``)."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidArchive(f"invalid platform {text!r}", hint="use os/arch[/variant], e.g. linux/amd64")
        return cls(parts[0], cls._ARCH.get(parts[1], parts[1]), parts[2] if len(parts) == 3 else "")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Platform":
        return cls(os=str(d.get("os", "")), architecture=str(d.get("architecture", "")),
                   variant=str(d.get("variant", "")), os_version=str(d.get("os.version", "")),
                   os_features=tuple(d.get("os.features") or ()))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        if self.os_version:
            d["os.version"] = self.os_version
        if self.os_features:
            d["os.features"] = list(self.os_features)
        return d

    def matches(self, other: "Platform") -> bool:
        """True when ``other`` (an image's platform) can run where ``self`` is wanted."""
        if self.os != other.os or self.architecture != other.architecture:
            return False
        return not self.variant or not other.variant or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: media type, digest and size (plus optional extras)."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Descriptor":
        """Parse a descriptor object. Raises InvalidArchive when required fields are missing."""
        try:
            size = d["size"]
            if not isinstance(size, int) or size < 0:
                raise InvalidArchive(f"descriptor has invalid size {size!r}")
            return cls(media_type=str(d.get("mediaType", "")), digest=Digest.parse(d["digest"]),
                       size=size, annotations=dict(d.get("annotations") or {}),
                       platform=Platform.from_dict(d["platform"]) if d.get("platform") else None,
                       urls=tuple(d.get("urls") or ()), artifact_type=str(d.get("artifactType", "")))
        except (KeyError, TypeError) as e:
            raise InvalidArchive(f"malformed descriptor {dict(d)!r}: missing {e}") from None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = self.platform.to_dict()
        if self.urls:
            d["urls"] = list(self.urls)
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d

    def with_annotations(self, annotations: Mapping[str, str]) -> "Descriptor":
        """A copy with ``annotations`` (replacing the existing ones)."""
        return dataclasses.replace(self, annotations=dict(annotations))

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(ANNOTATION_REF_NAME)


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI, or Docker schema2 when read)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = MediaType.OCI_MANIFEST
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    subject: Descriptor | None = None
    artifact_type: str = ""

    @classmethod
    def from_json(cls, data: bytes, media_type: str = "") -> "Manifest":
        """Parse manifest bytes. Raises InvalidArchive for anything that is not an image manifest."""
        obj = _load_json(data, "manifest")
        mt = obj.get("mediaType") or media_type or MediaType.OCI_MANIFEST
        if mt not in MediaType.MANIFESTS or obj.get("schemaVersion") != 2:
            raise InvalidArchive(f"unsupported manifest (mediaType {mt!r}, schemaVersion "
                                 f"{obj.get('schemaVersion')!r})")
        if "config" not in obj or not isinstance(obj.get("layers", []), list):
            raise InvalidArchive("manifest lacks config or layers")
        return cls(config=Descriptor.from_dict(obj["config"]),
                   layers=tuple(Descriptor.from_dict(x) for x in obj.get("layers") or ()),
                   media_type=mt, annotations=dict(obj.get("annotations") or {}),
                   subject=Descriptor.from_dict(obj["subject"]) if obj.get("subject") else None,
                   artifact_type=str(obj.get("artifactType", "")))

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                             "config": self.config.to_dict(),
                             "layers": [x.to_dict() for x in self.layers]}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.subject:
            d["subject"] = self.subject.to_dict()
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return canonical_json(d)


@dataclass(frozen=True)
class Index:
    """An image index / manifest list."""

    manifests: tuple[Descriptor, ...]
    media_type: str = MediaType.OCI_INDEX
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_json(cls, data: bytes, media_type: str = "") -> "Index":
        """Parse index bytes. Raises InvalidArchive when malformed."""
        obj = _load_json(data, "index")
        mt = obj.get("mediaType") or media_type or MediaType.OCI_INDEX
        if mt not in MediaType.INDEXES or obj.get("schemaVersion") != 2:
            raise InvalidArchive(f"unsupported index (mediaType {mt!r})")
        if not isinstance(obj.get("manifests", []), list):
            raise InvalidArchive("index 'manifests' is not a list")
        return cls(manifests=tuple(Descriptor.from_dict(x) for x in obj.get("manifests") or ()),
                   media_type=mt, annotations=dict(obj.get("annotations") or {}))

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                             "manifests": [m.to_dict() for m in self.manifests]}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return canonical_json(d)

    def select(self, want: Platform) -> Descriptor | None:
        """The first manifest whose platform matches ``want`` (exact variant preferred)."""
        cands = [m for m in self.manifests if m.platform and want.matches(m.platform)]
        exact = [m for m in cands if m.platform and m.platform.variant == want.variant]
        return (exact or cands or [None])[0]


@dataclass(frozen=True)
class History:
    """One entry of an image config's history."""

    created: str = ""
    created_by: str = ""
    author: str = ""
    comment: str = ""
    empty_layer: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "History":
        return cls(created=str(d.get("created", "")), created_by=str(d.get("created_by", "")),
                   author=str(d.get("author", "")), comment=str(d.get("comment", "")),
                   empty_layer=bool(d.get("empty_layer", False)))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k in ("created", "created_by", "author", "comment"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        if self.empty_layer:
            d["empty_layer"] = True
        return d


@dataclass(frozen=True)
class ContainerConfig:
    """The ``config`` object of an image config (what a container starts with)."""

    User: str = ""
    ExposedPorts: tuple[str, ...] = ()
    Env: tuple[str, ...] = ()
    Entrypoint: tuple[str, ...] | None = None
    Cmd: tuple[str, ...] | None = None
    Volumes: tuple[str, ...] = ()
    WorkingDir: str = ""
    Labels: Mapping[str, str] = field(default_factory=dict, compare=True, hash=False)
    StopSignal: str = ""
    Healthcheck: Mapping[str, Any] | None = field(default=None, hash=False)
    OnBuild: tuple[str, ...] = ()
    Shell: tuple[str, ...] = ()
    ArgsEscaped: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ContainerConfig":
        d = d or {}

        def strs(key: str) -> tuple[str, ...] | None:
            v = d.get(key)
            return None if v is None else tuple(str(x) for x in v)

        return cls(User=str(d.get("User") or ""),
                   ExposedPorts=tuple(sorted((d.get("ExposedPorts") or {}).keys())),
                   Env=tuple(d.get("Env") or ()), Entrypoint=strs("Entrypoint"), Cmd=strs("Cmd"),
                   Volumes=tuple(sorted((d.get("Volumes") or {}).keys())),
                   WorkingDir=str(d.get("WorkingDir") or ""), Labels=dict(d.get("Labels") or {}),
                   StopSignal=str(d.get("StopSignal") or ""), Healthcheck=d.get("Healthcheck"),
                   OnBuild=tuple(d.get("OnBuild") or ()), Shell=tuple(d.get("Shell") or ()),
                   ArgsEscaped=bool(d.get("ArgsEscaped", False)))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.User:
            d["User"] = self.User
        if self.ExposedPorts:
            d["ExposedPorts"] = {p: {} for p in self.ExposedPorts}
        if self.Env:
            d["Env"] = list(self.Env)
        if self.Entrypoint is not None:
            d["Entrypoint"] = list(self.Entrypoint)
        if self.Cmd is not None:
            d["Cmd"] = list(self.Cmd)
        if self.Volumes:
            d["Volumes"] = {v: {} for v in self.Volumes}
        if self.WorkingDir:
            d["WorkingDir"] = self.WorkingDir
        if self.Labels:
            d["Labels"] = dict(self.Labels)
        if self.StopSignal:
            d["StopSignal"] = self.StopSignal
        if self.Healthcheck is not None:
            d["Healthcheck"] = dict(self.Healthcheck)
        if self.OnBuild:
            d["OnBuild"] = list(self.OnBuild)
        if self.Shell:
            d["Shell"] = list(self.Shell)
        if self.ArgsEscaped:
            d["ArgsEscaped"] = True
        return d

    def env_dict(self) -> dict[str, str]:
        """Env as an ordered mapping (later entries win)."""
        out: dict[str, str] = {}
        for item in self.Env:
            k, _, v = item.partition("=")
            out[k] = v
        return out


@dataclass(frozen=True)
class ImageConfig:
    """An image configuration (``application/vnd.oci.image.config.v1+json``)."""

    architecture: str
    os: str
    config: ContainerConfig = field(default_factory=ContainerConfig)
    diff_ids: tuple[Digest, ...] = ()
    history: tuple[History, ...] = ()
    created: str = ""
    author: str = ""
    variant: str = ""
    os_version: str = ""

    @classmethod
    def from_json(cls, data: bytes) -> "ImageConfig":
        """Parse config bytes. Raises InvalidArchive when malformed."""
        obj = _load_json(data, "image config")
        rootfs = obj.get("rootfs") or {}
        if not isinstance(rootfs, dict) or rootfs.get("type", "layers") != "layers":
            raise InvalidArchive("image config rootfs.type is not 'layers'")
        try:
            return cls(architecture=str(obj.get("architecture", "")), os=str(obj.get("os", "")),
                       config=ContainerConfig.from_dict(obj.get("config")),
                       diff_ids=tuple(Digest.parse(x) for x in rootfs.get("diff_ids") or ()),
                       history=tuple(History.from_dict(h) for h in obj.get("history") or ()),
                       created=str(obj.get("created") or ""), author=str(obj.get("author") or ""),
                       variant=str(obj.get("variant") or ""),
                       os_version=str(obj.get("os.version") or ""))
        except (TypeError, AttributeError) as e:
            raise InvalidArchive(f"malformed image config: {e}") from None

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os,
                             "config": self.config.to_dict(),
                             "rootfs": {"type": "layers", "diff_ids": [str(x) for x in self.diff_ids]}}
        if self.history:
            d["history"] = [h.to_dict() for h in self.history]
        if self.created:
            d["created"] = self.created
        if self.author:
            d["author"] = self.author
        if self.variant:
            d["variant"] = self.variant
        if self.os_version:
            d["os.version"] = self.os_version
        return canonical_json(d)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant, self.os_version)

    def with_layer(self, diff_id: Digest, history: History) -> "ImageConfig":
        """A new config with one more layer and its history entry."""
        return dataclasses.replace(self, diff_ids=self.diff_ids + (diff_id,),
                                   history=self.history + (history,))

    def with_history(self, history: History) -> "ImageConfig":
        """A new config with one more (empty-layer) history entry."""
        return dataclasses.replace(self, history=self.history + (history,))


def chain_ids(diff_ids: Iterable[Digest]) -> list[Digest]:
    """The chain id of every prefix of ``diff_ids`` (OCI image-spec "ChainID")."""
    out: list[Digest] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append(Digest.of(f"{out[-1]} {d}".encode()))
    return out


def chain_id(diff_ids: Iterable[Digest]) -> Digest | None:
    """The chain id of the whole stack, or None for no layers."""
    ids = chain_ids(diff_ids)
    return ids[-1] if ids else None
