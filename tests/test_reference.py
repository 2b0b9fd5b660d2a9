"""Reference parsing with docker's defaults."""
from __future__ import annotations

import pytest

from pybuild.errors import InvalidReference
from pybuild.reference import parse_reference

H = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, domain, path, tag, familiar", [
    ("busybox", "docker.io", "library/busybox", "latest", "busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", "busybox:1.36"),
    ("user/app", "docker.io", "user/app", "latest", "user/app:latest"),
    ("docker.io/library/busybox:x", "docker.io", "library/busybox", "x", "busybox:x"),
    ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", "busybox:latest"),
    ("localhost/app", "localhost", "app", "latest", "localhost/app:latest"),
    ("localhost:5000/a/b:v1", "localhost:5000", "a/b", "v1", "localhost:5000/a/b:v1"),
    ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", "127.0.0.1:5000/app:latest"),
    ("ghcr.io/o/r/deep/name:t-1.2_3", "ghcr.io", "o/r/deep/name", "t-1.2_3", "ghcr.io/o/r/deep/name:t-1.2_3"),
    ("Registry/app", "Registry", "app", "latest", "Registry/app:latest"),
    ("a__b/c.d-e", "docker.io", "a__b/c.d-e", "latest", "a__b/c.d-e:latest"),
])
def test_parse(text: str, domain: str, path: str, tag: str, familiar: str) -> None:
    r = parse_reference(text)
    assert (r.domain, r.path, r.tag, r.digest) == (domain, path, tag, None)
    assert r.familiar == familiar


def test_digest_reference_has_no_default_tag() -> None:
    r = parse_reference(f"busybox@{H}")
    assert r.tag == "" and str(r.digest) == H
    assert r.familiar == f"busybox@{H}"
    r2 = parse_reference(f"localhost:5000/app:v1@{H}")
    assert r2.tag == "v1" and str(r2) == f"localhost:5000/app:v1@{H}"


@pytest.mark.parametrize("bad", ["", " busybox", "Busybox", "busybox:", "busybox:-x", "a//b", "a/",
                                 "busybox@sha256:123", "-a", "a:b:c", "host:port/app", "x" * 5000,
                                 "busybox:" + "t" * 129, "a..b"])
def test_parse_rejects_with_hint(bad: str) -> None:
    with pytest.raises(InvalidReference) as e:
        parse_reference(bad)
    assert e.value.hint and "invalid reference" in e.value.message
