"""RegistryClient against the real distribution registry, with faults injected by a proxy."""
from __future__ import annotations

import dataclasses
import io
import os
import time

import pytest

from pybuild.errors import DigestMismatch, NotFound, RegistryError
from pybuild.oci import Descriptor, Digest
from pybuild.registry import RegistryNotFound, RegistryUnavailable, RetryPolicy, transport_for
from pybuild.store.store import Store

from .conftest import FaultProxy, RegistryServer, client_for


def _blob(size: int) -> tuple[bytes, Descriptor]:
    data = os.urandom(size)
    return data, Descriptor("application/octet-stream", Digest.of(data), size)


def _fetch(client, repo: str, desc: Descriptor, tmp_path) -> bytes:
    store = Store(tmp_path / f"s-{desc.digest.short}")
    store.init()
    with store.content.ingest() as ing:
        client.fetch_blob(repo, desc, ing)
        ing.commit(desc.digest, desc.size)
    return store.content.read_blob(desc.digest)


# -- transport policy (unit) -------------------------------------------------------------------
@pytest.mark.parametrize("registry, env, scheme, api_host", [
    ("127.0.0.1:5000", {}, "http", "127.0.0.1:5000"),
    ("localhost:5000", {}, "http", "localhost:5000"),
    ("localhost", {}, "http", "localhost"),
    ("[::1]:5000", {}, "http", "[::1]:5000"),
    ("127.0.0.2:80", {}, "http", "127.0.0.2:80"),
    ("registry.example.com", {}, "https", "registry.example.com"),
    ("registry.example.com:5000", {}, "https", "registry.example.com:5000"),
    ("10.0.0.5:5000", {}, "https", "10.0.0.5:5000"),
    ("docker.io", {}, "https", "registry-1.docker.io"),
    ("registry.example.com:5000", {"PYBUILD_INSECURE_REGISTRIES": "other.io, registry.example.com:5000"},
     "http", "registry.example.com:5000"),
    ("registry.example.com:5000", {"PYBUILD_INSECURE_REGISTRIES": "registry.example.com"},
     "http", "registry.example.com:5000"),              # no port in the entry: any port
    ("registry.example.com:5001", {"PYBUILD_INSECURE_REGISTRIES": "registry.example.com:5000"},
     "https", "registry.example.com:5001"),
    ("myreg.local", {"PYBUILD_INSECURE_REGISTRIES": "http://myreg.local/"}, "http", "myreg.local"),
])
def test_transport_policy(registry: str, env: dict[str, str], scheme: str, api_host: str) -> None:
    t = transport_for(registry, env)
    assert (t.scheme, t.api_host, t.verify) == (scheme, api_host, True)
    assert t.base_url == f"{scheme}://{api_host}"


def test_ca_bundle_from_the_environment() -> None:
    t = transport_for("registry.example.com", {"PYBUILD_CA_BUNDLE": "/etc/pb/ca.pem"})
    assert t.verify == "/etc/pb/ca.pem" and t.scheme == "https"


def test_https_to_a_plain_http_registry_fails_with_a_hint(registry: RegistryServer) -> None:
    # what a plain-HTTP registry on a non-loopback host, not listed as insecure, runs into
    c = client_for(registry.host)
    c.transport = dataclasses.replace(c.transport, scheme="https")
    with pytest.raises(RegistryError) as e:
        c.ping()
    assert "PYBUILD_INSECURE_REGISTRIES" in (e.value.hint or "")


# -- blobs -------------------------------------------------------------------------------------
def test_monolithic_upload_head_and_verified_download(registry: RegistryServer, tmp_path, repo: str) -> None:
    c = client_for(registry.host)
    c.ping()
    data, desc = _blob(4096)
    assert c.blob_exists(repo, desc.digest) is None
    c.upload_blob(repo, desc, lambda: io.BytesIO(data))
    assert c.blob_exists(repo, desc.digest) == 4096
    assert _fetch(c, repo, desc, tmp_path) == data


def test_chunked_upload_keeps_the_location_query(registry: RegistryServer, make_proxy, tmp_path,
                                                 repo: str) -> None:
    proxy: FaultProxy = make_proxy(registry)
    c = client_for(proxy.host, chunk_size=64 << 10, monolithic_limit=64 << 10)
    data, desc = _blob(300 << 10)                     # 5 chunks: 4 × 64 KiB + 44 KiB
    c.upload_blob(repo, desc, lambda: io.BytesIO(data))
    patches = proxy.requests("PATCH", "/blobs/uploads/")
    assert len(patches) == 5 and all(s.status == 202 for s in patches)
    assert all("_state=" in s.path for s in patches)  # the registry's own query parameters kept
    final = proxy.requests("PUT", "/blobs/uploads/")
    assert len(final) == 1 and "digest=sha256" in final[0].path and "_state=" in final[0].path
    assert final[0].status == 201
    assert _fetch(client_for(registry.host), repo, desc, tmp_path) == data


def test_a_failed_chunk_resumes_from_the_registry_offset(registry: RegistryServer, make_proxy, tmp_path,
                                                        repo: str) -> None:
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("status", "PATCH", "/blobs/uploads/", status=503, nth=3)   # the third chunk fails once
    c = client_for(proxy.host, chunk_size=64 << 10, monolithic_limit=64 << 10)
    data, desc = _blob(300 << 10)
    c.upload_blob(repo, desc, lambda: io.BytesIO(data))
    assert len(proxy.requests("GET", "/blobs/uploads/")) == 1          # asked where it stands
    assert len(proxy.requests("PATCH")) == 6                           # 5 chunks + the retried one
    assert _fetch(client_for(registry.host), repo, desc, tmp_path) == data


def test_a_corrupt_local_copy_is_never_completed(registry: RegistryServer, repo: str) -> None:
    c = client_for(registry.host, chunk_size=1024, monolithic_limit=1024)
    data, desc = _blob(4000)
    bad = data[:-1] + bytes([data[-1] ^ 1])
    for client in (c, client_for(registry.host)):        # chunked and monolithic
        with pytest.raises(DigestMismatch):
            client.upload_blob(repo, desc, lambda: io.BytesIO(bad))
    assert c.blob_exists(repo, desc.digest) is None


def test_an_interrupted_download_resumes_with_range(registry: RegistryServer, make_proxy, tmp_path,
                                                   repo: str) -> None:
    data, desc = _blob(1 << 20)
    client_for(registry.host).upload_blob(repo, desc, lambda: io.BytesIO(data))
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("cut", "GET", f"/blobs/{desc.digest}", after=300_000)
    assert _fetch(client_for(proxy.host), repo, desc, tmp_path) == data
    gets = proxy.requests("GET", f"/blobs/{desc.digest}")
    assert [g.range[:6] for g in gets] == ["", "bytes="] and gets[1].range.endswith("-")
    assert 0 < int(gets[1].range[6:-1]) <= 300_000          # from what had fully arrived
    assert gets[1].status == 206                                       # the registry honoured it


def test_a_server_ignoring_range_is_resumed_by_skipping(registry: RegistryServer, make_proxy, tmp_path,
                                                        repo: str) -> None:
    data, desc = _blob(600_000)
    client_for(registry.host).upload_blob(repo, desc, lambda: io.BytesIO(data))
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("cut", "GET", f"/blobs/{desc.digest}", after=200_000)
    proxy.add("strip_range", "GET", f"/blobs/{desc.digest}")
    assert _fetch(client_for(proxy.host), repo, desc, tmp_path) == data
    gets = proxy.requests("GET", f"/blobs/{desc.digest}")
    assert [g.status for g in gets] == [200, 200] and gets[1].range      # whole blob sent again


def test_relative_upload_locations_are_resolved(registry: RegistryServer, make_proxy, tmp_path,
                                                repo: str) -> None:
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("relative_location", path="/blobs/uploads/", times=-1)
    c = client_for(proxy.host, chunk_size=32 << 10, monolithic_limit=32 << 10)
    data, desc = _blob(100 << 10)
    c.upload_blob(repo, desc, lambda: io.BytesIO(data))
    assert all(s.status in (201, 202) for s in proxy.requests(path="/blobs/uploads/"))
    assert _fetch(client_for(registry.host), repo, desc, tmp_path) == data


def test_429_with_retry_after_then_success(registry: RegistryServer, make_proxy, repo: str) -> None:
    data, desc = _blob(100)
    client_for(registry.host).upload_blob(repo, desc, lambda: io.BytesIO(data))
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("status", "HEAD", "/blobs/", status=429, headers={"Retry-After": "1"})
    t0 = time.monotonic()
    assert client_for(proxy.host).blob_exists(repo, desc.digest) == 100
    assert time.monotonic() - t0 >= 0.95                                # Retry-After was honoured
    assert [s.status for s in proxy.requests("HEAD")] == [429, 200]


def test_503_bursts_then_success(registry: RegistryServer, make_proxy, tmp_path, repo: str) -> None:
    data, desc = _blob(50_000)
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("status", "POST", "/blobs/uploads/", status=503, times=2)
    proxy.add("status", "GET", "/blobs/sha256", status=502, times=3)
    c = client_for(proxy.host)
    c.upload_blob(repo, desc, lambda: io.BytesIO(data))
    assert _fetch(c, repo, desc, tmp_path) == data
    assert [s.status for s in proxy.requests("POST")] == [503, 503, 202]
    assert [s.status for s in proxy.requests("GET", "/blobs/sha256")] == [502, 502, 502, 200]


def test_a_permanent_500_ends_in_a_clear_error(registry: RegistryServer, make_proxy, repo: str) -> None:
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("status", "GET", "/manifests/", status=500, times=-1,
              body=b'{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}')
    with pytest.raises(RegistryUnavailable) as e:
        client_for(proxy.host).get_manifest(repo, "v1")
    msg = str(e.value)
    assert msg.startswith(f"pulling manifest v1 from {proxy.host}/{repo}: giving up after 5 tries")
    assert "HTTP 500" in msg and "disk on fire" in msg
    assert e.value.status == 500 and e.value.hint
    assert len(proxy.requests("GET")) == 5


def test_an_unreachable_registry_is_a_clear_error() -> None:
    from .conftest import free_port
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(RegistryUnavailable, match=f"contacting {host}: giving up after 2 tries") as e:
        client_for(host, retry=RetryPolicy(tries=2, base_delay=0.01)).ping()
    assert e.value.hint


# -- manifests, errors, listings ---------------------------------------------------------------
def test_registry_errors_are_parsed(registry: RegistryServer, repo: str) -> None:
    c = client_for(registry.host)
    with pytest.raises(RegistryNotFound) as e:
        c.get_manifest(repo, "nope")
    assert isinstance(e.value, NotFound)
    assert e.value.code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN") and e.value.status == 404
    assert str(e.value).startswith(f"pulling manifest nope from {registry.host}/{repo}: ")
    assert e.value.hint
    assert c.head_manifest(repo, "nope") is None
    with pytest.raises(RegistryError) as e2:
        c.put_manifest(repo, "bad", b'{"schemaVersion":2}', "application/vnd.oci.image.manifest.v1+json")
    assert e2.value.code in ("MANIFEST_INVALID", "DIGEST_INVALID") and e2.value.status == 400
    assert str(e2.value).startswith("pushing manifest sha256:")
    assert f"to {registry.host}/{repo}:bad: {e2.value.code}: " in str(e2.value) and e2.value.hint


def test_an_upload_error_names_the_blob_and_the_code(registry: RegistryServer, make_proxy, repo: str) -> None:
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("status", "PUT", "/blobs/uploads/", status=400, headers={"Content-Type": "application/json"},
              body=b'{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"blob upload invalid",'
                   b'"detail":"offset mismatch"}]}')
    data, desc = _blob(1000)
    with pytest.raises(RegistryError) as e:
        client_for(proxy.host).upload_blob(repo, desc, lambda: io.BytesIO(data))
    assert str(e.value) == (f"pushing blob {desc.digest} to {proxy.host}/{repo}: "
                            "BLOB_UPLOAD_INVALID: blob upload invalid (offset mismatch)")
    assert e.value.code == "BLOB_UPLOAD_INVALID" and e.value.status == 400 and e.value.hint


def test_tag_listing_follows_link_pages(registry: RegistryServer, make_proxy, repo: str) -> None:
    c = client_for(registry.host)
    data, desc = _blob(10)
    c.upload_blob(repo, desc, lambda: io.BytesIO(data))
    cfg = Descriptor("application/vnd.oci.image.config.v1+json", desc.digest, desc.size)
    from pybuild.oci import Manifest
    mbytes = Manifest(cfg, ()).to_json()
    tags = ["a", "b", "c", "d", "e"]
    for t in tags:
        c.put_manifest(repo, t, mbytes, "application/vnd.oci.image.manifest.v1+json")
    assert sorted(c.list_tags(repo)) == tags
    # distribution 2.8 paginates only the catalog: the proxy adds n/last/Link paging to the
    # registry's real tag list (a protocol test of the client's Link handling)
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("paginate_tags", "GET", "/tags/list", times=-1)
    assert client_for(proxy.host).list_tags(repo, page_size=2) == tags
    assert len(proxy.requests("GET", "/tags/list")) == 3
    # the catalog's pagination is the registry's own (relative Link header)
    all_repos = c.list_repositories()
    assert repo in all_repos
    assert c.list_repositories(page_size=2) == all_repos
