"""OCI value types: digests, descriptors, manifests, configs, chain ids, canonical JSON."""
from __future__ import annotations

import hashlib
import json

import pytest

from pybuild.errors import DigestMismatch, InvalidArchive
from pybuild.oci import (ContainerConfig, Descriptor, Digest, History, ImageConfig, Index, Manifest,
                         MediaType, Platform, canonical_json, chain_id, chain_ids)

A = Digest.of(b"a")
B = Digest.of(b"b")


def test_digest_parse_and_str_roundtrip() -> None:
    d = Digest.parse(f"sha256:{hashlib.sha256(b'x').hexdigest()}")
    assert str(d) == f"sha256:{hashlib.sha256(b'x').hexdigest()}"
    assert d.short == d.hex[:12]


@pytest.mark.parametrize("bad", ["", "sha256", "sha256:", "sha256:ABC", "md5:" + "0" * 32,
                                 "sha256:" + "0" * 63, "sha256:" + "g" * 64])
def test_digest_parse_rejects(bad: str) -> None:
    with pytest.raises(InvalidArchive):
        Digest.parse(bad)


def test_digest_verify() -> None:
    A.verify(b"a")
    with pytest.raises(DigestMismatch) as e:
        A.verify(b"b", "layer")
    assert str(A) in str(e.value) and str(B) in str(e.value)


def test_chain_id_follows_the_image_spec() -> None:
    assert chain_id([]) is None
    assert chain_id([A]) == A
    ab = Digest("sha256", hashlib.sha256(f"{A} {B}".encode()).hexdigest())
    assert chain_ids([A, B]) == [A, ab]
    c = Digest.of(b"c")
    abc = Digest("sha256", hashlib.sha256(f"{ab} {c}".encode()).hexdigest())
    assert chain_id([A, B, c]) == abc


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == b'{"a":[1,{"c":3,"d":2}],"b":1}'


def test_manifest_roundtrip_and_media_types() -> None:
    cfg = Descriptor(MediaType.OCI_CONFIG, A, 1)
    layer = Descriptor(MediaType.OCI_LAYER_GZIP, B, 2, annotations={"k": "v"})
    m = Manifest(cfg, (layer,))
    data = m.to_json()
    obj = json.loads(data)
    assert obj["schemaVersion"] == 2 and obj["mediaType"] == MediaType.OCI_MANIFEST
    again = Manifest.from_json(data)
    assert again == m and again.layers[0].annotations == {"k": "v"}
    assert again.to_json() == data


def test_docker_schema2_manifest_is_read() -> None:
    data = json.dumps({"schemaVersion": 2, "mediaType": MediaType.DOCKER_MANIFEST,
                       "config": {"mediaType": MediaType.DOCKER_CONFIG, "digest": str(A), "size": 5},
                       "layers": [{"mediaType": MediaType.DOCKER_LAYER_GZIP, "digest": str(B), "size": 9}]}).encode()
    m = Manifest.from_json(data)
    assert m.media_type == MediaType.DOCKER_MANIFEST
    assert MediaType.compression(m.layers[0].media_type) == "gzip"


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"schemaVersion":1}',
                                  b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}',
                                  b'{"schemaVersion":2,"config":{"digest":"sha256:zz","size":1}}'])
def test_manifest_rejects_garbage(data: bytes) -> None:
    with pytest.raises(InvalidArchive):
        Manifest.from_json(data)


def test_index_selects_platform() -> None:
    amd = Descriptor(MediaType.OCI_MANIFEST, A, 1, platform=Platform("linux", "amd64"))
    arm = Descriptor(MediaType.OCI_MANIFEST, B, 1, platform=Platform("linux", "arm64", "v8"))
    idx = Index.from_json(Index((amd, arm)).to_json())
    assert idx.select(Platform("linux", "arm64", "v8")).digest == B
    assert idx.select(Platform("linux", "amd64")).digest == A
    assert idx.select(Platform("linux", "s390x")) is None


def test_platform_parse_and_host() -> None:
    assert Platform.parse("linux/x86_64") == Platform("linux", "amd64")
    assert str(Platform.parse("linux/arm64/v8")) == "linux/arm64/v8"
    assert Platform.host().os == "linux"
    with pytest.raises(InvalidArchive):
        Platform.parse("linux")


def test_image_config_roundtrip_with_history() -> None:
    cfg = ImageConfig("amd64", "linux", ContainerConfig(Env=("PATH=/bin",), Cmd=("sh",),
                                                        ExposedPorts=("80/tcp",), Labels={"a": "b"}),
                      created="1970-01-01T00:00:00Z")
    cfg = cfg.with_layer(A, History(created_by="import")).with_history(History(created_by="CMD", empty_layer=True))
    data = cfg.to_json()
    obj = json.loads(data)
    assert obj["rootfs"] == {"type": "layers", "diff_ids": [str(A)]}
    assert obj["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert obj["history"][1] == {"created_by": "CMD", "empty_layer": True}
    again = ImageConfig.from_json(data)
    assert again == cfg and again.to_json() == data
    assert again.config.env_dict() == {"PATH": "/bin"}


def test_values_are_frozen() -> None:
    with pytest.raises(Exception):
        A.hex = "0"  # type: ignore[misc]
