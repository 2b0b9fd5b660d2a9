"""Image references with docker's defaults.

``busybox`` → ``docker.io/library/busybox:latest``; ``host:5000/a/b:tag@sha256:…``. The first path
component is a registry host when it contains ``.`` or ``:`` or is ``localhost``. Names are
lower-case; tags are ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pybuild.errors import InvalidReference
from pybuild.oci import Digest

__all__ = ["Reference", "parse_reference", "DEFAULT_REGISTRY", "DEFAULT_TAG"]

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_REGISTRIES = {"index.docker.io", "registry-1.docker.io"}

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DOMAIN = re.compile(
    r"^(?:(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*"
    r"[A-Za-z0-9]))*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$")
_HINT = "references look like name[:tag][@sha256:digest], e.g. busybox:1.36 or localhost:5000/team/app:v1"


@dataclass(frozen=True)
class Reference:
    """A parsed image reference; ``tag`` defaults to ``latest`` unless a digest is given."""

    domain: str
    path: str
    tag: str = ""
    digest: Digest | None = None

    @property
    def repository(self) -> str:
        """``domain/path`` (e.g. ``docker.io/library/busybox``)."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_repository(self) -> str:
        """The repository as docker shows it: ``busybox``, ``user/app``, ``host:5000/app``."""
        if self.domain == DEFAULT_REGISTRY:
            return self.path[len("library/"):] if self.path.startswith("library/") else self.path
        return self.repository

    @property
    def familiar(self) -> str:
        """The short name used as the store's tag: ``busybox:latest``, ``app@sha256:…``."""
        return self._render(self.familiar_repository)

    def _render(self, repo: str) -> str:
        s = repo
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def with_tag(self, tag: str) -> "Reference":
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid tag {tag!r}", hint=_HINT)
        return Reference(self.domain, self.path, tag, None)

    def __str__(self) -> str:
        return self._render(self.repository)


def parse_reference(text: str) -> Reference:
    """Parse ``text`` with docker's normalisation rules.

    Raises InvalidReference (with a hint) when the text is not a valid reference.
    """
    if not text or text != text.strip() or len(text) > 4096:
        raise InvalidReference(f"invalid reference format: {text!r}", hint=_HINT)
    rest, at, dig = text.partition("@")
    digest = None
    if at:
        try:
            digest = Digest.parse(dig)
        except Exception:
            raise InvalidReference(f"invalid reference format: {text!r}: bad digest", hint=_HINT) from None
    name, tag = rest, ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid reference format: {text!r}: bad tag {tag!r}", hint=_HINT)
    parts = name.split("/")
    domain = DEFAULT_REGISTRY
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"
                           or parts[0] != parts[0].lower()):
        domain, parts = parts[0], parts[1:]
        if not _DOMAIN.match(domain):
            raise InvalidReference(f"invalid reference format: {text!r}: bad registry {domain!r}", hint=_HINT)
        if domain in _LEGACY_REGISTRIES:
            domain = DEFAULT_REGISTRY
    for p in parts:
        if not _COMPONENT.match(p):
            if p.lower() != p and _COMPONENT.match(p.lower()):
                raise InvalidReference(f"invalid reference format: {text!r}: repository name must be lowercase",
                                       hint=_HINT)
            raise InvalidReference(f"invalid reference format: {text!r}", hint=_HINT)
    path = "/".join(parts)
    if domain == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if len(path) > 255:
        raise InvalidReference(f"invalid reference format: {text!r}: name longer than 255 characters", hint=_HINT)
    if not tag and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)
