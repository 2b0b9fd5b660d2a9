"""Registry faults (issue 7, point 6) injected by ``FaultProxy`` into real traffic to the real
distribution registry: TCP resets in the middle of an upload and of a download, a registry that
stalls, and the rule that a manifest is never pushed before its blobs.

Each push or pull must either complete correctly (the registry, or the store, then holds blobs
with the right digests: fetched back and re-hashed) or fail with a clear one-line error in
bounded time; a failed pull leaves the store as it was, a failed push leaves no manifest.

(500/503 bursts, 429, a clean cut of a download and a wrong blob are in test_client.py and
test_transfer.py.)
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from pybuild.errors import UserError
from pybuild.oci import Descriptor, Digest, Index, Manifest, MediaType, Platform
from pybuild.registry import RegistryClient, RegistryUnavailable, RetryPolicy, pull, push
from pybuild.registry.client import DEFAULT_TIMEOUT, MANIFEST_ACCEPT, TIMEOUT_ENV, timeout_from_env
from pybuild.store.layers import entries_from_dir, write_layer
from pybuild.store.store import Store

from conftest import PB, tree_state

from .conftest import FAST_RETRY, FaultProxy, RegistryServer, Seen, client_for

NO_DOCKER_CONFIG = "/nonexistent-pbtest"
STALL = 1.0                                  # the client's timeout in the stall tests, seconds
FEW_TRIES = RetryPolicy(tries=2, base_delay=0.05, max_delay=0.2, total=20.0)


# -- helpers -----------------------------------------------------------------------------------
def bounded(fn: Callable[[], Any], limit: float = 30.0) -> tuple[Any, float]:
    """Run ``fn`` in a daemon thread; fail the test (instead of hanging it) after ``limit`` s.

    Returns (result, seconds taken); re-raises what ``fn`` raised.
    """
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:       # handed to the test thread
            out["error"] = e

    t0 = time.monotonic()
    t = threading.Thread(target=run, daemon=True, name="bounded")
    t.start()
    t.join(limit)
    took = time.monotonic() - t0
    if t.is_alive():
        pytest.fail(f"still running after {limit:.0f}s: the client hangs", pytrace=False)
    if "error" in out:
        raise out["error"]
    return out.get("result"), took


def stall_client(host: str, retry: RetryPolicy = FAST_RETRY, **kw: Any) -> RegistryClient:
    """A client whose timeouts come from $PYBUILD_REGISTRY_TIMEOUT (STALL seconds)."""
    return client_for(host, retry=retry, env={"DOCKER_CONFIG": NO_DOCKER_CONFIG, TIMEOUT_ENV: str(STALL)},
                      **kw)


def cli(root: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess (killed after ``timeout`` s: a hang fails the test)."""
    e = {**os.environ, "DOCKER_CONFIG": NO_DOCKER_CONFIG, **env}
    return subprocess.run(PB(root).argv(*args), capture_output=True, text=True, env=e, timeout=timeout)


def assert_clean_failure(p: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 with exactly one ``error:`` line (after any progress lines), followed by a
    ``hint:`` line, and no traceback; returns the error line."""
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    errors = [i for i, x in enumerate(lines) if x.startswith("error: ")]
    assert len(errors) == 1, p.stderr
    assert lines[errors[0] + 1:] and lines[errors[0] + 1].startswith("hint: ") and \
        len(lines) == errors[0] + 2, p.stderr
    return lines[errors[0]]


def rehash_store(root: Path) -> int:
    """Re-hash every blob file of a store; asserts each matches its name. Returns the count."""
    n = 0
    for f in (root / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name, f"corrupt blob in the store: {f}"
        n += 1
    return n


def registry_manifest_status(registry: RegistryServer, repo: str, reference: str) -> int:
    """The status of GET /v2/<repo>/manifests/<reference>, asked of the registry directly."""
    r = requests.get(f"http://{registry.host}/v2/{repo}/manifests/{reference}",
                     headers={"Accept": MANIFEST_ACCEPT}, timeout=10)
    return r.status_code


def fetch_from_registry(registry: RegistryServer, repo: str, desc: Descriptor, tmp_path: Path) -> bytes:
    """Blob ``desc`` fetched from the registry directly (no proxy), verified against its digest."""
    store = Store(tmp_path / f"check-{desc.digest.short}-{time.monotonic_ns()}")
    store.init()
    with store.content.ingest() as ing:
        client_for(registry.host).fetch_blob(repo, desc, ing)
        ing.commit(desc.digest, desc.size)
    return store.content.read_blob(desc.digest)


def _copy_store(src: Path, dst: Path) -> Store:
    shutil.copytree(src, dst)
    return Store(dst)


def _pushed_behind_proxy(registry: RegistryServer, make_proxy: Any, multi_store: Path, tmp_path: Path,
                        repo: str) -> tuple[Any, Descriptor, FaultProxy]:
    """The multi-layer image pushed straight to ``registry`` as ``repo:v1``; its biggest layer and
    a fault proxy in front of the registry, for a pull to go through."""
    src = _copy_store(multi_store, tmp_path / "a")
    img = src.load(src.resolve("multi")[1])
    push(src, "multi", f"{registry.host}/{repo}:v1", client=client_for(registry.host))
    return img, max(img.manifest.layers, key=lambda d: d.size), make_proxy(registry)


def _blob(size: int) -> tuple[bytes, Descriptor]:
    data = os.urandom(size)
    return data, Descriptor("application/octet-stream", Digest.of(data), size)


def _hex_in(digest: Digest, path: str) -> bool:
    return digest.hex in path


def _exists_evidence(log: list[Seen], repo: str, digest: Digest) -> list[Seen]:
    """Requests after whose answer blob ``digest`` was known to be in ``repo``: a HEAD answered
    200, an upload completed (PUT …digest=… answered 201) or a mount answered 201."""
    out = []
    for s in log:
        if f"/v2/{repo}/" not in s.path or not _hex_in(digest, s.path):
            continue
        if s.action in ("reset", "reset_request", "stall", "stall_body"):
            continue                               # the client never saw that answer
        if (s.method == "HEAD" and "/blobs/sha256:" in s.path and s.status == 200) or \
                (s.method == "PUT" and "/blobs/uploads/" in s.path and s.status == 201) or \
                (s.method == "POST" and "mount=" in s.path and s.status == 201):
            out.append(s)
    return out


def assert_blobs_before_manifest(proxy: FaultProxy, repo: str, manifest: Manifest) -> Seen:
    """Every manifest PUT to ``repo`` (whatever its answer) was sent only after the registry had
    confirmed every blob ``manifest`` names, and the last one was accepted; returns that one."""
    puts = proxy.requests("PUT", f"/v2/{repo}/manifests/")
    assert puts and puts[-1].status == 201, "no manifest was pushed"
    for blob in [manifest.config, *manifest.layers]:
        evidence = _exists_evidence(proxy.log, repo, blob.digest)
        assert evidence, f"blob {blob.digest} was never confirmed in the registry"
        first = min(e.end for e in evidence)
        for put in puts:
            assert first < put.start, f"manifest PUT {put.path} sent before blob {blob.digest} existed"
    return puts[-1]


# -- a multi-layer image (and an index over it) in a store -------------------------------------
@pytest.fixture(scope="session")
def multi_store(tmp_path_factory: pytest.TempPathFactory, busybox_store: Path) -> Path:
    """A store holding ``multi:latest`` (busybox's layer plus three layers of 150-250 KB of
    random bytes, so each layer is its own upload) and ``multiidx:latest``, an OCI index over
    that image (host platform) and busybox (another platform)."""
    root = tmp_path_factory.mktemp("multi") / "store"
    shutil.copytree(busybox_store, root)
    store = Store(root)
    bb_desc = store.resolve("busybox")[1]
    base = store.load(bb_desc)
    layers, diff_ids = list(base.manifest.layers), list(base.config.diff_ids)
    with store.lease():
        for i, size in enumerate((150_000, 250_000, 200_000)):
            d = tmp_path_factory.mktemp(f"layer{i}")
            (d / f"data{i}.bin").write_bytes(os.urandom(size))
            res = write_layer(store.content, entries_from_dir(d))
            layers.append(res.descriptor)
            diff_ids.append(res.diff_id)
        config = dataclasses.replace(base.config, diff_ids=tuple(diff_ids), history=())
        mdesc = store.write_image(config, layers)
        store.tag("multi:latest", mdesc)
        host = Platform.host()
        other = Platform("linux", "s390x" if host.architecture != "s390x" else "ppc64le")
        index = Index((Descriptor(MediaType.OCI_MANIFEST, mdesc.digest, mdesc.size, platform=host),
                       Descriptor(MediaType.OCI_MANIFEST, bb_desc.digest, bb_desc.size, platform=other))).to_json()
        store.tag("multiidx:latest", Descriptor(MediaType.OCI_INDEX, store.content.write_blob(index), len(index)))
    return root


# -- the timeout setting -----------------------------------------------------------------------
def test_the_timeouts_come_from_the_environment() -> None:
    assert DEFAULT_TIMEOUT == (10.0, 60.0)
    assert timeout_from_env({}) == DEFAULT_TIMEOUT and timeout_from_env({TIMEOUT_ENV: " "}) == DEFAULT_TIMEOUT
    assert timeout_from_env({TIMEOUT_ENV: "2"}) == (2.0, 2.0)
    assert timeout_from_env({TIMEOUT_ENV: "3,120.5"}) == (3.0, 120.5)
    for bad in ("abc", "0", "-1", "1,2,3", "inf", "nan", "1,"):
        with pytest.raises(UserError, match=TIMEOUT_ENV) as e:
            timeout_from_env({TIMEOUT_ENV: bad})
        assert TIMEOUT_ENV in (e.value.hint or "")
    env = {"DOCKER_CONFIG": NO_DOCKER_CONFIG}
    assert RegistryClient("127.0.0.1:1", env=env).timeout == DEFAULT_TIMEOUT
    c = RegistryClient("127.0.0.1:1", env={**env, TIMEOUT_ENV: "4,7"})
    assert c.timeout == (4.0, 7.0) and c.auth._timeout == (4.0, 7.0)      # token requests too
    assert RegistryClient("127.0.0.1:1", env={**env, TIMEOUT_ENV: "4"}, timeout=(1, 2)).timeout == (1, 2)
    with pytest.raises(UserError):
        RegistryClient("127.0.0.1:1", env={**env, TIMEOUT_ENV: "soon"})


# -- manifest never before its blobs -----------------------------------------------------------
def test_a_manifest_and_an_index_are_put_only_after_everything_they_name_exists(
        registry: RegistryServer, make_proxy, multi_store: Path, tmp_path: Path, repo: str) -> None:
    store = _copy_store(multi_store, tmp_path / "s")
    img = store.load(store.resolve("multi")[1])
    assert len(img.manifest.layers) == 4
    proxy: FaultProxy = make_proxy(registry)
    # the biggest layer's upload is slow and the first try of another is reset, so uploads end
    # out of order: a client that did not wait for every blob would put the manifest too early
    big = max(img.manifest.layers, key=lambda d: d.size)
    small = min(img.manifest.layers[1:], key=lambda d: d.size)
    proxy.add("delay", "PUT", rf"/blobs/uploads/.*{big.digest.hex}", seconds=0.5)
    proxy.add("reset_request", "PUT", rf"/blobs/uploads/.*{small.digest.hex}", after=10_000)

    digest = bounded(lambda: push(store, "multi", f"{proxy.host}/{repo}:v1", client=client_for(proxy.host)))[0]
    assert digest == img.descriptor.digest
    put = assert_blobs_before_manifest(proxy, repo, img.manifest)
    assert put.path.endswith("/manifests/v1")
    assert [s.action for s in proxy.requests("PUT", f"/blobs/uploads/.*{small.digest.hex}")] == ["reset_request", ""]
    assert registry_manifest_status(registry, repo, "v1") == 200
    for layer in img.manifest.layers:
        fetch_from_registry(registry, repo, layer, tmp_path)          # each one verified

    # an index: each child's blobs, then the child manifest (by digest), then the index
    idesc = store.resolve("multiidx")[1]
    index = Index.from_json(store.content.read_blob(idesc.digest), idesc.media_type)
    irepo = f"{repo}-idx"
    assert bounded(lambda: push(store, "multiidx", f"{proxy.host}/{irepo}:v1",
                                client=client_for(proxy.host)))[0] == idesc.digest
    iput = proxy.requests("PUT", f"/v2/{irepo}/manifests/v1$")
    assert [s.status for s in iput] == [201]
    for child in index.manifests:
        child_manifest = Manifest.from_json(store.content.read_blob(child.digest), child.media_type)
        cput = proxy.requests("PUT", f"/v2/{irepo}/manifests/{child.digest}$")
        assert [s.status for s in cput] == [201] and cput[0].end < iput[0].start, "the index went up before a child"
        for b in [child_manifest.config, *child_manifest.layers]:
            evidence = _exists_evidence(proxy.log, irepo, b.digest)
            assert evidence and min(e.end for e in evidence) < cput[0].start, f"{b.digest} came late"
    assert any("mount=" in s.path and s.status == 201 for s in proxy.requests("POST", f"/v2/{irepo}/"))


@pytest.mark.parametrize("image", ["multi", "multiidx"])
def test_a_blob_that_cannot_be_uploaded_means_no_manifest_at_all(
        registry: RegistryServer, make_proxy, multi_store: Path, tmp_path: Path, repo: str, image: str) -> None:
    store = _copy_store(multi_store, tmp_path / "s")
    img = store.load(store.resolve("multi")[1])
    victim = img.manifest.layers[2]
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("reset_request", "PUT", rf"/blobs/uploads/.*{victim.digest.hex}", after=20_000, times=-1)

    with pytest.raises(RegistryUnavailable) as e:
        bounded(lambda: push(store, image, f"{proxy.host}/{repo}:v1", client=client_for(proxy.host)))
    msg = str(e.value)
    assert msg.startswith(f"pushing blob {victim.digest} to {proxy.host}/{repo}: giving up after 5 tries"), msg
    assert "\n" not in msg and e.value.hint
    tries = proxy.requests("PUT", rf"/blobs/uploads/.*{victim.digest.hex}")
    assert len(tries) == 5 and all(s.action == "reset_request" for s in tries)
    assert proxy.requests("PUT", "/manifests/") == []              # neither the manifest nor an index
    assert registry_manifest_status(registry, repo, "v1") == 404
    assert registry_manifest_status(registry, repo, str(img.descriptor.digest)) == 404


# -- connection reset in the middle of an upload -----------------------------------------------
def test_a_reset_mid_upload_is_retried_and_the_registry_holds_the_right_blob(
        registry: RegistryServer, make_proxy, tmp_path: Path, repo: str) -> None:
    proxy: FaultProxy = make_proxy(registry)
    # monolithic: the PUT's body is cut after 50 KB by a reset
    data, desc = _blob(200_000)
    proxy.add("reset_request", "PUT", rf"/blobs/uploads/.*{desc.digest.hex}", after=50_000)
    bounded(lambda: client_for(proxy.host).upload_blob(repo, desc, lambda: io.BytesIO(data)))
    assert [(s.action, s.status) for s in proxy.requests("PUT", desc.digest.hex)] == \
        [("reset_request", 0), ("", 201)]
    assert fetch_from_registry(registry, repo, desc, tmp_path) == data

    # chunked: the third PATCH breaks off after 30 KB, and the registry sees it break off (it
    # got those bytes); the upload resumes from what the registry reports, or starts over
    data2, desc2 = _blob(300 << 10)
    proxy.add("reset_request", "PATCH", "/blobs/uploads/", nth=3, after=30_000, forward=True)
    c = client_for(proxy.host, chunk_size=64 << 10, monolithic_limit=64 << 10)
    bounded(lambda: c.upload_blob(repo, desc2, lambda: io.BytesIO(data2)))
    patches = proxy.requests("PATCH")
    assert [s.action for s in patches].count("reset_request") == 1 and patches[2].action == "reset_request"
    assert proxy.requests("GET", "/blobs/uploads/")                     # asked where it stands
    assert [s.status for s in proxy.requests("PUT", desc2.digest.hex)] == [201]
    assert fetch_from_registry(registry, repo, desc2, tmp_path) == data2

    # every PATCH reset: a clear error, and the registry has no such blob
    data3, desc3 = _blob(200 << 10)
    proxy.rules.clear()
    proxy.add("reset_request", "PATCH", "/blobs/uploads/", after=10_000, times=-1)
    c = client_for(proxy.host, chunk_size=64 << 10, monolithic_limit=64 << 10, retry=FEW_TRIES)
    with pytest.raises(RegistryUnavailable) as e:
        bounded(lambda: c.upload_blob(repo, desc3, lambda: io.BytesIO(data3)))
    assert str(e.value) == (f"pushing blob {desc3.digest} to {proxy.host}/{repo}: giving up after 2 tries; "
                            f"last: the connection to http://{proxy.host} broke: the connection was reset")
    assert "keeps breaking" in (e.value.hint or "")
    assert proxy.requests("PUT", desc3.digest.hex) == []               # never completed
    assert client_for(registry.host).blob_exists(repo, desc3.digest) is None


@pytest.mark.parametrize("chunked", [False, True])
def test_an_upload_whose_answer_is_lost_is_done_when_the_registry_has_the_blob(
        registry: RegistryServer, make_proxy, tmp_path: Path, repo: str, chunked: bool) -> None:
    # the registry receives the completing PUT whole and stores the blob; the client's
    # connection is then reset before it sees the 201
    proxy: FaultProxy = make_proxy(registry)
    data, desc = _blob(150_000)
    proxy.add("reset_request", "PUT", rf"/blobs/uploads/.*{desc.digest.hex}", after=1 << 30, forward=True)
    kw = {"chunk_size": 64 << 10, "monolithic_limit": 64 << 10} if chunked else {}
    bounded(lambda: client_for(proxy.host, **kw).upload_blob(repo, desc, lambda: io.BytesIO(data)))
    puts = proxy.requests("PUT", desc.digest.hex)
    assert [(s.action, s.status) for s in puts] == [("reset_request", 201)]   # stored, answer lost
    heads = proxy.requests("HEAD", desc.digest.hex)
    assert heads and heads[-1].status == 200 and heads[-1].start > puts[0].end   # checked, then done
    assert fetch_from_registry(registry, repo, desc, tmp_path) == data


@pytest.mark.parametrize("times", [1, -1])
def test_cli_push_with_a_reset_mid_upload(registry: RegistryServer, make_proxy, busybox_store: Path,
                                          tmp_path: Path, repo: str, times: int) -> None:
    store = _copy_store(busybox_store, tmp_path / "s")
    img = store.load(store.resolve("busybox")[1])
    layer = img.manifest.layers[0]
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("reset_request", "PUT", "/blobs/uploads/", after=100_000, times=times)
    ref = f"{proxy.host}/{repo}:v1"
    p = cli(store.root, "push", "busybox", ref)
    resets = [s for s in proxy.requests("PUT", "/blobs/uploads/") if s.action == "reset_request"]
    if times == 1:                     # once: retried, and the push is complete and correct
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == f"{ref}: digest: {img.descriptor.digest}"
        assert len(resets) == 1
        assert registry_manifest_status(registry, repo, "v1") == 200
        assert fetch_from_registry(registry, repo, layer, tmp_path)
        assert fetch_from_registry(registry, repo, img.manifest.config, tmp_path) == img.config_bytes
        assert_blobs_before_manifest(proxy, repo, img.manifest)
    else:                              # always: a clear error, and no manifest
        line = assert_clean_failure(p)
        assert line.startswith(f"error: pushing blob {layer.digest} to {proxy.host}/{repo}: giving up after 5 tries")
        assert len(resets) == 5
        assert proxy.requests("PUT", "/manifests/") == []
        assert registry_manifest_status(registry, repo, "v1") == 404


# -- connection reset in the middle of a download ----------------------------------------------
@pytest.mark.parametrize("times", [1, -1])
def test_a_reset_mid_download_resumes_and_the_store_is_intact(
        registry: RegistryServer, make_proxy, multi_store: Path, tmp_path: Path, repo: str, times: int) -> None:
    img, layer, proxy = _pushed_behind_proxy(registry, make_proxy, multi_store, tmp_path, repo)
    # a TCP reset after 64 KB of the body: once, or on every answer (each still makes progress)
    proxy.add("reset", "GET", f"/blobs/{layer.digest}", after=64 << 10, times=times)
    dst = Store(tmp_path / "b")
    name, desc = bounded(lambda: pull(dst, f"{proxy.host}/{repo}:v1", client=client_for(proxy.host)))[0]
    assert desc.digest == img.descriptor.digest
    gets = proxy.requests("GET", f"/blobs/{layer.digest}")
    assert gets[0].action == "reset" and gets[0].range == ""
    resumed = [g for g in gets[1:] if g.range]
    assert resumed and all(g.range.startswith("bytes=") and g.status == 206 for g in resumed)
    if times == 1:
        assert len(gets) == 2 and gets[1].action == ""
    else:                              # at most 64 KB a time: many resumes, every one reset
        assert len(gets) >= -(-layer.size // (64 << 10)) and all(g.action == "reset" for g in gets)
    loaded = dst.load(dst.resolve(name)[1])
    assert loaded.manifest_bytes == img.manifest_bytes
    for d in loaded.manifest.layers:
        dst.content.open_blob(d.digest, d.size).finish()             # verified read
    assert rehash_store(dst.root) >= 6
    r = cli(dst.root, "fsck", "--no-repair")
    assert r.returncode == 0 and "store OK" in r.stdout and "corrupt" not in r.stdout, r.stdout + r.stderr


def test_cli_pull_with_persistent_resets_fails_cleanly_and_leaves_the_store_as_it_was(
        registry: RegistryServer, make_proxy, multi_store: Path, tmp_path: Path, repo: str) -> None:
    img, layer, proxy = _pushed_behind_proxy(registry, make_proxy, multi_store, tmp_path, repo)
    proxy.add("reset", "GET", f"/blobs/{layer.digest}", after=0, times=-1)  # headers, then a reset
    dst = Store(tmp_path / "b")
    dst.init()
    before = tree_state(dst.root)
    p = cli(dst.root, "pull", f"{proxy.host}/{repo}:v1")
    line = assert_clean_failure(p)
    assert line.startswith(f"error: pulling blob {layer.digest} from {proxy.host}/{repo}: giving up after 5 tries")
    assert "after 0 of" in line
    assert len(proxy.requests("GET", f"/blobs/{layer.digest}")) == 5
    assert tree_state(dst.root) == before                  # no blob, no tag, no ingest left
    images = cli(dst.root, "images", "-q")
    assert images.returncode == 0 and images.stdout.strip() == ""
    r = cli(dst.root, "fsck", "--no-repair")
    assert r.returncode == 0 and "store OK" in r.stdout, r.stdout + r.stderr


# -- a slow, stalling registry -----------------------------------------------------------------
def test_a_download_that_stalls_times_out_and_resumes(
        registry: RegistryServer, make_proxy, multi_store: Path, tmp_path: Path, repo: str) -> None:
    img, layer, proxy = _pushed_behind_proxy(registry, make_proxy, multi_store, tmp_path, repo)
    proxy.add("stall_body", "GET", f"/blobs/{layer.digest}", after=100_000)   # then silence (30 s)
    dst = Store(tmp_path / "b")
    (name, desc), took = bounded(lambda: pull(dst, f"{proxy.host}/{repo}:v1", client=stall_client(proxy.host)))
    assert desc.digest == img.descriptor.digest
    assert STALL <= took < 20                              # waited for the timeout, not for the stall
    gets = proxy.requests("GET", f"/blobs/{layer.digest}")
    assert [g.action for g in gets] == ["stall_body", ""] and gets[1].status == 206
    assert 0 < int(gets[1].range.removeprefix("bytes=").rstrip("-")) <= 100_000
    assert rehash_store(dst.root) >= 6
    assert dst.load(dst.resolve(name)[1]).manifest_bytes == img.manifest_bytes


def test_an_upload_whose_answer_stalls_is_retried_and_completes(
        registry: RegistryServer, make_proxy, multi_store: Path, tmp_path: Path, repo: str) -> None:
    store = _copy_store(multi_store, tmp_path / "s")
    img = store.load(store.resolve("multi")[1])
    layer = img.manifest.layers[1]
    proxy: FaultProxy = make_proxy(registry)
    # the first completing PUT never gets an answer (the registry never saw it); the manifest
    # PUT's first answer stalls too (the registry stored it)
    proxy.add("stall", "PUT", rf"/blobs/uploads/.*{layer.digest.hex}")
    proxy.add("stall", "PUT", "/manifests/v1", forward=True)
    digest, took = bounded(lambda: push(store, "multi", f"{proxy.host}/{repo}:v1", client=stall_client(proxy.host)))
    assert digest == img.descriptor.digest
    assert 2 * STALL <= took < 25
    assert [s.action for s in proxy.requests("PUT", rf"/blobs/uploads/.*{layer.digest.hex}")] == ["stall", ""]
    assert [(s.action, s.status) for s in proxy.requests("PUT", "/manifests/")] == [("stall", 201), ("", 201)]
    assert_blobs_before_manifest(proxy, repo, img.manifest)
    assert fetch_from_registry(registry, repo, layer, tmp_path)
    assert registry_manifest_status(registry, repo, "v1") == 200


def test_a_slow_registry_within_the_timeout_is_not_an_error_and_progress_renews_the_budget(
        registry: RegistryServer, make_proxy, tmp_path: Path, repo: str) -> None:
    # chunks answered slowly (0.3 s each, under the timeout) use up the 0.5 s retry budget of a
    # client before the fourth chunk fails once: chunks that went through renew the budget
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("status", "PATCH", "/blobs/uploads/", status=503, nth=4)
    proxy.add("delay", "PATCH", "/blobs/uploads/", seconds=0.3, times=3)
    c = client_for(proxy.host, chunk_size=32 << 10, monolithic_limit=32 << 10,
                   retry=RetryPolicy(tries=3, base_delay=0.05, max_delay=0.1, total=0.5))
    data, desc = _blob(160 << 10)
    bounded(lambda: c.upload_blob(repo, desc, lambda: io.BytesIO(data)))
    assert [s.action for s in proxy.requests("PATCH")] == ["delay"] * 3 + ["status"] + [""] * 2
    assert fetch_from_registry(registry, repo, desc, tmp_path) == data


def test_a_registry_that_stops_answering_fails_in_bounded_time_with_a_clear_error(
        registry: RegistryServer, make_proxy, multi_store: Path, tmp_path: Path, repo: str) -> None:
    store = _copy_store(multi_store, tmp_path / "s")
    img = store.load(store.resolve("multi")[1])
    push(store, "multi", f"{registry.host}/{repo}:v1", client=client_for(registry.host))
    proxy: FaultProxy = make_proxy(registry)

    # no answer at all to the manifest
    proxy.add("stall", "GET", "/manifests/", times=-1)
    dst = Store(tmp_path / "b")
    dst.init()
    before = tree_state(dst.root)
    with pytest.raises(RegistryUnavailable) as e:
        bounded(lambda: pull(dst, f"{proxy.host}/{repo}:v1", client=stall_client(proxy.host, FEW_TRIES)))
    msg = str(e.value)
    assert msg == (f"pulling manifest v1 from {proxy.host}/{repo}: giving up after 2 tries; last: timed out: "
                   f"no answer from http://{proxy.host} within {STALL:g}s")
    assert TIMEOUT_ENV in (e.value.hint or "") and proxy.host in (e.value.hint or "")
    assert len(proxy.requests("GET", "/manifests/")) == 2

    # headers, then a body that never comes
    layer = img.manifest.layers[3]
    proxy.rules.clear()
    proxy.add("stall_body", "GET", f"/blobs/{layer.digest}", after=0, times=-1)
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailable) as e:
        bounded(lambda: pull(dst, f"{proxy.host}/{repo}:v1", client=stall_client(proxy.host, FEW_TRIES)))
    assert 2 * STALL <= time.monotonic() - t0 < 20
    assert str(e.value) == (f"pulling blob {layer.digest} from {proxy.host}/{repo}: giving up after 2 tries; "
                            f"last: the answer stalled after 0 of {layer.size} bytes: no data from "
                            f"http://{proxy.host} for {STALL:g}s")
    assert TIMEOUT_ENV in (e.value.hint or "")
    assert tree_state(dst.root) == before

    # a blob upload that is never answered: no manifest follows
    proxy.rules.clear()
    proxy.add("stall", "PUT", rf"/blobs/uploads/.*{layer.digest.hex}", times=-1)
    with pytest.raises(RegistryUnavailable) as e:
        bounded(lambda: push(store, "multi", f"{proxy.host}/{repo}-up:v1", client=stall_client(proxy.host, FEW_TRIES)))
    assert str(e.value).startswith(f"pushing blob {layer.digest} to {proxy.host}/{repo}-up: giving up after 2 tries; "
                                   f"last: timed out: no answer from http://{proxy.host} within {STALL:g}s")
    assert TIMEOUT_ENV in (e.value.hint or "")
    assert proxy.requests("PUT", "/manifests/") == []
    assert registry_manifest_status(registry, f"{repo}-up", "v1") == 404


def test_cli_pull_through_a_stall_uses_the_timeout_from_the_environment(
        registry: RegistryServer, make_proxy, busybox_store: Path, tmp_path: Path, repo: str) -> None:
    src = _copy_store(busybox_store, tmp_path / "a")
    digest = push(src, "busybox", f"{registry.host}/{repo}:v1", client=client_for(registry.host))
    proxy: FaultProxy = make_proxy(registry)
    proxy.add("stall", "GET", "/manifests/v1")          # 30 s of silence, once
    root = tmp_path / "b"
    t0 = time.monotonic()
    p = cli(root, "pull", f"{proxy.host}/{repo}:v1", **{TIMEOUT_ENV: "1"})
    took = time.monotonic() - t0
    assert p.returncode == 0 and f"Digest: {digest}" in p.stdout, p.stderr
    assert 1 <= took < 15                   # the 1 s timeout ended the stall, not the proxy's 30 s
    assert [s.action for s in proxy.requests("GET", "/manifests/")] == ["stall", ""]
    assert rehash_store(root) >= 3
    bad = cli(root, "pull", f"{proxy.host}/{repo}:v1", **{TIMEOUT_ENV: "soon"})
    assert assert_clean_failure(bad).startswith(f"error: {TIMEOUT_ENV}='soon' is not a timeout")
