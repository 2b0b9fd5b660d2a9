"""push and pull against the real distribution registry (docker-registry on a loopback port)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pybuild.errors import DigestMismatch, NotFound
from pybuild.oci import Descriptor, Digest, Index, Manifest, MediaType, Platform, canonical_json
from pybuild.registry import SourceRecord, pull, push
from pybuild.store.store import Store

from conftest import tree_state

from .conftest import Counter, FaultProxy, RegistryServer, client_for


def _copy_store(src: Path, dst: Path) -> Store:
    shutil.copytree(src, dst)
    return Store(dst)


def _blob_writes(counter: Counter) -> list[tuple[str, str, int]]:
    return [c for c in counter.calls if c[0] in ("POST", "PATCH") or
            (c[0] == "PUT" and "/blobs/uploads/" in c[1])]


def test_push_then_pull_into_an_empty_store_gives_the_same_image(
        registry: RegistryServer, busybox_store: Path, tmp_path: Path, repo: str) -> None:
    src = _copy_store(busybox_store, tmp_path / "a")
    local = src.load(src.resolve("busybox")[1])
    ref = f"{registry.host}/{repo}:v1"

    digest = push(src, "busybox", ref, client=client_for(registry.host))
    assert digest == local.descriptor.digest

    dst = Store(tmp_path / "b")           # empty: not even initialised
    events: list[str] = []
    name, desc = pull(dst, ref, client=client_for(registry.host), progress=lambda e: events.append(e.action))
    assert name == f"{registry.host}/{repo}:v1"
    assert desc.digest == digest
    img = dst.load(dst.resolve(name)[1])
    assert img.manifest_bytes == local.manifest_bytes and img.config_bytes == local.config_bytes
    for layer in img.manifest.layers:
        dst.content.open_blob(layer.digest, layer.size).finish()   # every blob is there, intact
    assert "downloaded" in events

    # an independent client reads what we pushed
    info = json.loads(subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True, text=True, check=True, timeout=60).stdout)
    assert info["Digest"] == str(digest) and info["Os"] == "linux"

    # pulling again fetches no blob; pull by digest stores a digest name
    counter = Counter()
    c = counter.attach(client_for(registry.host))
    name2, desc2 = pull(dst, f"{registry.host}/{repo}@{digest}", client=c)
    assert name2 == f"{registry.host}/{repo}@{digest}" and desc2.digest == digest
    assert not counter.matching("GET", "/blobs/")
    assert dst.resolve(name2)[1].digest == digest


def test_pushing_again_uploads_no_blob_and_a_second_repo_mounts(
        registry: RegistryServer, busybox_store: Path, tmp_path: Path, repo: str) -> None:
    store = _copy_store(busybox_store, tmp_path / "a")
    ref = f"{registry.host}/{repo}:v1"
    first = Counter()
    push(store, "busybox", ref, client=first.attach(client_for(registry.host)))
    assert _blob_writes(first), "the first push uploads"
    assert SourceRecord(store).sources(store.load(store.resolve("busybox")[1]).id) == [f"{registry.host}/{repo}"]

    again = Counter()
    push(store, "busybox", ref, client=again.attach(client_for(registry.host)))
    assert _blob_writes(again) == []                                  # HEAD hits only
    assert len(again.matching("HEAD", "/blobs/")) == 2                 # config + one layer
    assert again.matching("PUT", "/manifests/")

    other = Counter()
    push(store, "busybox", f"{registry.host}/{repo}-copy:v1", client=other.attach(client_for(registry.host)))
    mounts = other.matching("POST", r"mount=sha256")
    assert mounts and all(status == 201 for _, _, status in mounts)   # 201 Created = mounted
    assert all("from=" + repo.replace("/", "%2F") in p for _, p, _ in mounts)
    assert not other.matching("PATCH") and not other.matching("PUT", "/blobs/uploads/")
    assert 'http.request.method=POST' in registry.log() and "mount=sha256" in registry.log()


def test_mount_refused_falls_back_to_upload_in_the_offered_session(
        registry: RegistryServer, busybox_store: Path, tmp_path: Path, repo: str) -> None:
    store = _copy_store(busybox_store, tmp_path / "a")
    img = store.load(store.resolve("busybox")[1])
    # record a source repository that does not hold the blobs: the registry answers 202
    SourceRecord(store).add((d.digest, f"{registry.host}/{repo}-nowhere")
                            for d in [img.manifest.config, *img.manifest.layers])
    c = Counter()
    push(store, "busybox", f"{registry.host}/{repo}:v1", client=c.attach(client_for(registry.host)))
    assert [s for _, _, s in c.matching("POST", "mount=")] == [202, 202]
    assert not c.matching("POST", r"uploads/$")          # the 202's session was used, no new POST
    assert len(c.matching("PUT", r"/blobs/uploads/.*digest=")) == 2


def test_pull_picks_the_platform_from_an_index_and_docker_media_types(
        registry: RegistryServer, busybox_store: Path, tmp_path: Path, repo: str) -> None:
    store = _copy_store(busybox_store, tmp_path / "a")
    img = store.load(store.resolve("busybox")[1])
    c = client_for(registry.host)
    push(store, "busybox", f"{registry.host}/{repo}:plain", client=c)
    # the same blobs as a Docker schema2 manifest, and a Docker manifest list over it
    docker_manifest = Manifest(
        config=Descriptor(MediaType.DOCKER_CONFIG, img.manifest.config.digest, img.manifest.config.size),
        layers=tuple(Descriptor(MediaType.DOCKER_LAYER_GZIP, x.digest, x.size) for x in img.manifest.layers),
        media_type=MediaType.DOCKER_MANIFEST).to_json()
    dm = c.put_manifest(repo, "docker", docker_manifest, MediaType.DOCKER_MANIFEST)
    host = Platform.host()
    other = Platform("linux", "s390x" if host.architecture != "s390x" else "ppc64le")
    index = Index((Descriptor(MediaType.DOCKER_MANIFEST, dm, len(docker_manifest), platform=other),
                   Descriptor(MediaType.DOCKER_MANIFEST, dm, len(docker_manifest), platform=host)),
                  media_type=MediaType.DOCKER_LIST).to_json()
    list_digest = c.put_manifest(repo, "multi", index, MediaType.DOCKER_LIST)

    dst = Store(tmp_path / "b")
    name, desc = pull(dst, f"{registry.host}/{repo}:multi", client=c)
    assert desc == Descriptor(MediaType.DOCKER_MANIFEST, dm, len(docker_manifest))  # the platform's manifest
    loaded = dst.load(dst.resolve(name)[1])
    assert loaded.manifest.media_type == MediaType.DOCKER_MANIFEST and loaded.manifest_bytes == docker_manifest
    assert not dst.content.has(list_digest)          # the index itself is not stored (documented)

    with pytest.raises(NotFound, match="no image for platform linux/mips64le"):
        pull(Store(tmp_path / "c"), f"{registry.host}/{repo}@{list_digest}", Platform("linux", "mips64le"),
             client=c)


def test_a_corrupted_blob_is_a_digest_mismatch_and_the_store_is_unchanged(
        registry: RegistryServer, make_proxy, busybox_store: Path, tmp_path: Path, repo: str) -> None:
    store = _copy_store(busybox_store, tmp_path / "a")
    push(store, "busybox", f"{registry.host}/{repo}:v1", client=client_for(registry.host))
    layer = store.load(store.resolve("busybox")[1]).manifest.layers[0]
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("corrupt", "GET", f"/blobs/{layer.digest}", times=-1)
    dst = Store(tmp_path / "b")
    dst.init()
    before = tree_state(dst.root)
    with pytest.raises(DigestMismatch, match=str(layer.digest)):
        pull(dst, f"{proxy.host}/{repo}:v1", client=client_for(proxy.host))
    assert tree_state(dst.root) == before                 # no blob, no tag, no ingest file left
    assert proxy.requests("GET", "/blobs/")


def test_a_wrong_manifest_is_refused(registry: RegistryServer, make_proxy, busybox_store: Path,
                                     tmp_path: Path, repo: str) -> None:
    store = _copy_store(busybox_store, tmp_path / "a")
    digest = push(store, "busybox", f"{registry.host}/{repo}:v1", client=client_for(registry.host))
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("corrupt", "GET", "/manifests/", times=-1)
    c = client_for(proxy.host)
    with pytest.raises(DigestMismatch):
        c.get_manifest(repo, str(digest))        # by digest: the bytes must hash to it
    with pytest.raises(DigestMismatch):
        c.get_manifest(repo, "v1")               # by tag: to Docker-Content-Digest


def test_push_by_digest_and_missing_image(registry: RegistryServer, busybox_store: Path,
                                          tmp_path: Path, repo: str) -> None:
    store = _copy_store(busybox_store, tmp_path / "a")
    d = store.resolve("busybox")[1].digest
    assert push(store, "busybox", f"{registry.host}/{repo}@{d}", client=client_for(registry.host)) == d
    assert client_for(registry.host).head_manifest(repo, str(d)).digest == d
    with pytest.raises(NotFound):
        push(store, "nosuchimage", f"{registry.host}/{repo}:x", client=client_for(registry.host))
    # a manifest whose blob is missing locally: a NotFound naming the blob, nothing half-pushed
    img = store.load(store.resolve("busybox")[1])
    store.content.delete_blob(img.manifest.layers[0].digest)
    (store.metadata_dir / "registry-sources.json").unlink()   # (else it would be mounted)
    with pytest.raises(NotFound, match=str(img.manifest.layers[0].digest)):
        push(store, "busybox", f"{registry.host}/{repo}-broken:v1", client=client_for(registry.host))
    assert client_for(registry.host).head_manifest(f"{repo}-broken", "v1") is None


def test_pull_of_an_index_by_digest_verifies_and_names_by_digest(
        registry: RegistryServer, busybox_store: Path, tmp_path: Path, repo: str) -> None:
    store = _copy_store(busybox_store, tmp_path / "a")
    c = client_for(registry.host)
    m = push(store, "busybox", f"{registry.host}/{repo}:v1", client=c)
    msize = store.content.size(m)
    index = Index((Descriptor(MediaType.OCI_MANIFEST, m, msize, platform=Platform.host()),)).to_json()
    idig = c.put_manifest(repo, "idx", index, MediaType.OCI_INDEX)
    assert idig == Digest.of(index) and canonical_json(json.loads(index)) == index
    name, desc = pull(Store(tmp_path / "b"), f"{registry.host}/{repo}@{idig}", client=c)
    assert name == f"{registry.host}/{repo}@{idig}" and desc.digest == m


def test_a_tagged_index_is_pushed_whole(registry: RegistryServer, busybox_store: Path, tmp_path: Path,
                                        repo: str) -> None:
    store = _copy_store(busybox_store, tmp_path / "a")
    m = store.resolve("busybox")[1]
    index = Index((Descriptor(MediaType.OCI_MANIFEST, m.digest, m.size, platform=Platform.host()),)).to_json()
    idesc = Descriptor(MediaType.OCI_INDEX, store.content.write_blob(index), len(index))
    store.tag("multi:latest", idesc)
    c = client_for(registry.host)
    assert push(store, "multi", f"{registry.host}/{repo}:idx", client=c) == idesc.digest
    got, data = c.get_manifest(repo, "idx")
    assert got.digest == idesc.digest and data == index and got.media_type == MediaType.OCI_INDEX
    assert c.head_manifest(repo, str(m.digest)).digest == m.digest        # the child went first
