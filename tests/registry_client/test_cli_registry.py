"""The registry through the pybuild CLI, against the real distribution registry (issue 5's
acceptance): round trips, skopeo interop, auth errors, no re-upload, mounts, large chunked
blobs, the registry build cache, and FROM pulls."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import PB

from .conftest import RegistryServer


def sh(*args: str) -> str:
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(args)}:\n{p.stderr}"
    return p.stdout


def digest_of(pb: PB, image: str) -> str:
    return json.loads(pb.run("inspect", image).out)[0]["Digest"]


def requests_in_log(server: RegistryServer, method: str, pattern: str) -> int:
    rx = re.compile(rf'"{method} {pattern}')
    return sum(1 for line in server.log().splitlines() if rx.search(line))


def test_build_push_pull_round_trip_and_skopeo(registry: RegistryServer, busybox_tar: Path, tmp_path: Path) -> None:
    a = PB(tmp_path / "a")
    a.run("import", str(busybox_tar), "busybox")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo built > /b && rm /bin/vi\nCMD [\"cat\", \"/b\"]\n")
    ref = f"{registry.host}/cli/app:v1"
    out = a.run("build", "-t", ref, "--push", str(ctx)).out
    pushed = digest_of(a, ref)
    assert f"pushed {ref}@{pushed}" in out
    info = json.loads(sh("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"))
    assert info["Digest"] == pushed
    b = PB(tmp_path / "b")
    r = b.run("pull", ref)
    assert pushed in r.out and digest_of(b, ref) == pushed
    assert b.run("run", ref).out == "built\n"

    uploads = requests_in_log(registry, "POST", r"/v2/cli/app/blobs/uploads/")
    a.run("push", ref)  # a second push uploads nothing
    assert requests_in_log(registry, "POST", r"/v2/cli/app/blobs/uploads/") == uploads
    a.run("push", ref, f"{registry.host}/cli/other:v1")  # another repo of the same registry: mounts
    assert requests_in_log(registry, "POST", r"/v2/cli/other/blobs/uploads/\?[^ ]*mount=") >= 2
    assert requests_in_log(registry, "PATCH", r"/v2/cli/other/") == 0


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_pull_what_skopeo_pushed(registry: RegistryServer, busybox_tar: Path, tmp_path: Path, fmt: str) -> None:
    a = PB(tmp_path / "a")
    a.run("import", str(busybox_tar), "busybox")
    ref = f"{registry.host}/skopeo/{fmt}:1"
    sh("skopeo", "copy", "--dest-tls-verify=false", "--format", fmt, f"oci:{a.root}:busybox:latest", f"docker://{ref}")
    remote = json.loads(sh("skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"))
    want = "application/vnd.oci.image.manifest.v1+json" if fmt == "oci" else \
        "application/vnd.docker.distribution.manifest.v2+json"
    assert remote["mediaType"] == want
    b = PB(tmp_path / "b")
    b.run("pull", ref)
    assert b.run("run", ref, "busybox", "echo", "ok").out == "ok\n"
    assert json.loads(b.run("inspect", ref).out)[0]["MediaType"] == want


def test_pull_selects_the_host_platform_from_an_index(registry: RegistryServer, busybox_tar: Path,
                                                      tmp_path: Path) -> None:
    from pybuild.oci import Descriptor, Index, MediaType, Platform
    from pybuild.registry import RegistryClient, push
    from pybuild.store.store import Store
    a = PB(tmp_path / "a")
    a.run("import", str(busybox_tar), "busybox")
    store = Store(a.root)
    repo = "multi/app"
    push(store, "busybox", f"{registry.host}/{repo}:amd")
    _, desc = store.resolve("busybox")
    host = Platform.host()
    other = Platform("linux", "s390x" if host.architecture != "s390x" else "arm64")
    index = Index((Descriptor(MediaType.OCI_MANIFEST, desc.digest, desc.size, platform=other),
                   Descriptor(MediaType.OCI_MANIFEST, desc.digest, desc.size, platform=host)))
    RegistryClient(registry.host).put_manifest(repo, "multi", index.to_json(), MediaType.OCI_INDEX)
    b = PB(tmp_path / "b")
    b.run("pull", f"{registry.host}/{repo}:multi")
    assert digest_of(b, f"{registry.host}/{repo}:multi") == str(desc.digest)
    r = b.run("pull", "--platform", "linux/mips64le", f"{registry.host}/{repo}:multi", check=False)
    assert r.code == 1 and "platform" in r.err


def test_wrong_password_is_a_clear_error(basic_registry: RegistryServer, tmp_path: Path) -> None:
    pb = PB(tmp_path / "s")
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "dc")}
    p = subprocess.run(pb.argv("login", basic_registry.host, "-u", "pbuser", "--password-stdin"), input="wrong\n",
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "hint: " in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "dc/config.json").exists()
    r = pb.run("pull", f"{basic_registry.host}/x/y:1", check=False, env=env)
    assert r.code == 1 and "pybuild login" in r.err


def test_large_layer_goes_up_in_chunks(registry: RegistryServer, busybox_tar: Path, tmp_path: Path) -> None:
    a = PB(tmp_path / "a")
    a.run("import", str(busybox_tar), "busybox")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    with open(ctx / "big.bin", "wb") as f:
        f.write(os.urandom(65 << 20))
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY big.bin /big.bin\n")
    ref = f"{registry.host}/big/app:1"
    a.run("build", "--compression", "zstd", "-t", ref, str(ctx))
    a.run("push", ref)
    assert requests_in_log(registry, "PATCH", r"/v2/big/app/blobs/uploads/") >= 4  # 16 MiB chunks
    b = PB(tmp_path / "b")
    b.run("pull", ref)
    assert digest_of(b, ref) == digest_of(a, ref)


def test_registry_build_cache_makes_another_store_run_nothing(registry: RegistryServer, busybox_tar: Path,
                                                             tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("file\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY f.txt /f.txt\nRUN date +%s%N > /stamp\nENV X=1\n"
                                    "RUN cat /stamp > /copy\n")
    cache = f"{registry.host}/cache/app:buildcache"
    a = PB(tmp_path / "a")
    a.run("import", str(busybox_tar), "busybox")
    a.run("build", "-t", "app", "--cache-to", cache, str(ctx))
    b = PB(tmp_path / "b")
    b.run("import", str(busybox_tar), "busybox")
    out = b.run("build", "--progress", "plain", "-t", "app", "--cache-from", cache, str(ctx)).out
    steps = [l for l in out.splitlines() if re.search(r"STEP [2-9]/\d+: (CACHED|DONE)", l)]
    assert steps and all(l.endswith("CACHED") for l in steps), out
    assert digest_of(b, "app") == digest_of(a, "app")  # even the non-repeatable RUN's layer
    r = b.run("build", "-t", "x", "--cache-from", f"{registry.host}/cache/none:nope", str(ctx))
    assert "[Warning]" in r.err  # a missing cache is a warning, like docker


def test_from_a_registry_pulls_the_base(registry: RegistryServer, busybox_tar: Path, tmp_path: Path) -> None:
    a = PB(tmp_path / "a")
    a.run("import", str(busybox_tar), "busybox")
    a.run("push", "busybox", f"{registry.host}/library/busybox:latest")
    b = PB(tmp_path / "b")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {registry.host}/library/busybox\nRUN echo from-registry > /r\n")
    out = b.run("build", "--progress", "plain", "-t", "pulled", str(ctx)).out
    assert "pulling" in out
    assert b.run("run", "pulled", "cat", "/r").out == "from-registry\n"
