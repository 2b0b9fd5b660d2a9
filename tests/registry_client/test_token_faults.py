"""A failing token service: resets, timeouts and 5xx get the registry requests' retries, then a
clear error naming the token service (never "unauthorized"). The registry is the real one with
token auth; its realm is a FaultProxy in front of the real TokenServer."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from conftest import PB
from pybuild.oci import Descriptor, Digest
from pybuild.registry import Credentials, RegistryAuthError, RegistryUnavailable, RetryPolicy
from pybuild.registry.auth import TokenServiceError

from .conftest import FAST_RETRY, PASSWORD, USER, ProxiedTokens, client_for, os_env

ALICE = Credentials(USER, PASSWORD)
TOKEN = "^/token"


def _blob(size: int = 1000) -> tuple[bytes, Descriptor]:
    data = os.urandom(size)
    return data, Descriptor("application/octet-stream", Digest.of(data), size)


def _token_statuses(ft: ProxiedTokens) -> list[int]:
    """What the token service answered, per request through the proxy (0: reset, no answer)."""
    return [s.status for s in ft.proxy.requests("GET", TOKEN)]


def test_token_service_5xx_is_retried_then_the_push_goes_through(faulty_tokens: ProxiedTokens, repo: str) -> None:
    ft = faulty_tokens
    ft.proxy.add("status", "GET", TOKEN, times=2, status=503)
    c = client_for(ft.registry.host, credentials=ALICE)
    data, desc = _blob()
    c.upload_blob(repo, desc, lambda: io.BytesIO(data))
    assert c.blob_exists(repo, desc.digest) == desc.size
    assert _token_statuses(ft) == [503, 503, 200]        # retried, then one token for push,pull
    assert ft.tokens.requests == [(USER, [f"repository:{repo}:pull,push"])]


def test_a_reset_token_connection_is_retried(faulty_tokens: ProxiedTokens, repo: str) -> None:
    ft = faulty_tokens
    ft.proxy.add("reset_request", "GET", TOKEN, times=2)
    c = client_for(ft.registry.host, credentials=ALICE)
    assert c.blob_exists(repo, Digest.of(b"nothing")) is None
    assert _token_statuses(ft) == [0, 0, 200]


def test_a_token_service_that_keeps_failing_is_a_token_service_error(faulty_tokens: ProxiedTokens,
                                                                      repo: str) -> None:
    ft = faulty_tokens
    ft.proxy.add("status", "GET", TOKEN, times=-1, status=503)
    c = client_for(ft.registry.host, credentials=ALICE)
    data, desc = _blob()
    with pytest.raises(TokenServiceError) as info:
        c.upload_blob(repo, desc, lambda: io.BytesIO(data))
    e = info.value
    assert not isinstance(e, (RegistryAuthError, RegistryUnavailable))
    assert e.code != "UNAUTHORIZED" and e.status == 503
    assert str(e).startswith(
        f"pushing blob {desc.digest} to {ft.registry.host}/{repo}: getting a token for {ft.registry.host}: "
        f"giving up after {FAST_RETRY.tries} tries; last: the token service at {ft.realm} failed: "
        "HTTP 503 Service Unavailable")
    assert "token service" in e.hint and "log in" not in e.hint
    # exactly the policy's tries: the upload does not retry the token fetch's own retries
    assert _token_statuses(ft) == [503] * FAST_RETRY.tries
    assert ft.tokens.requests == []


def test_parallel_requests_share_one_failing_token_fetch(faulty_tokens: ProxiedTokens, repo: str) -> None:
    """Threads waiting for the same token while one fetch spends its retries get its failure:
    the wait is one retry budget, not one per parallel transfer."""
    ft = faulty_tokens
    ft.proxy.add("status", "GET", TOKEN, times=-1, status=503)
    policy = RetryPolicy(tries=3, base_delay=0.3, max_delay=0.6)    # the fetch lasts >= 0.45 s
    c = client_for(ft.registry.host, credentials=ALICE, retry=policy)
    errors: list[BaseException] = []

    def check(n: int) -> None:
        try:
            c.blob_exists(repo, Digest.of(b"%d" % n))
        except BaseException as e:  # noqa: BLE001 - collected and checked below
            errors.append(e)
    threads = [threading.Thread(target=check, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(errors) == 4 and all(isinstance(e, TokenServiceError) for e in errors), errors
    assert all("the token service at" in str(e) and "HTTP 503" in str(e) for e in errors)
    assert _token_statuses(ft) == [503] * policy.tries


def test_token_connection_reset_for_good(faulty_tokens: ProxiedTokens, repo: str) -> None:
    ft = faulty_tokens
    ft.proxy.add("reset_request", "GET", TOKEN, times=-1)
    c = client_for(ft.registry.host, credentials=ALICE, retry=RetryPolicy(tries=3, base_delay=0.05))
    with pytest.raises(TokenServiceError) as info:
        c.blob_exists(repo, Digest.of(b"x"))
    assert f"giving up after 3 tries; last: the token service at {ft.realm} failed: the connection was " \
        in str(info.value)
    assert info.value.code != "UNAUTHORIZED" and "network" in info.value.hint
    assert _token_statuses(ft) == [0, 0, 0]


def test_a_stalled_token_service_times_out_by_pybuild_registry_timeout(faulty_tokens: ProxiedTokens,
                                                                       repo: str) -> None:
    ft = faulty_tokens
    ft.proxy.add("stall", "GET", TOKEN, times=-1, seconds=3)
    env = {"DOCKER_CONFIG": "/nonexistent-pbtest", "PYBUILD_REGISTRY_TIMEOUT": "5,0.5"}
    c = client_for(ft.registry.host, credentials=ALICE, env=env, retry=RetryPolicy(tries=2, base_delay=0.05))
    with pytest.raises(TokenServiceError) as info:
        c.blob_exists(repo, Digest.of(b"x"))
    e = info.value
    assert f"the token service at {ft.realm} failed: timed out: no answer within 0.5s" in str(e)
    assert e.code == "TIMEOUT" and "PYBUILD_REGISTRY_TIMEOUT=SECONDS (now 0.5)" in e.hint
    assert len(_token_statuses(ft)) == 2


def test_refused_credentials_are_still_an_auth_error_and_not_retried(faulty_tokens: ProxiedTokens,
                                                                     repo: str) -> None:
    ft = faulty_tokens
    c = client_for(ft.registry.host, credentials=Credentials(USER, "wrong"))
    with pytest.raises(RegistryAuthError) as info:
        c.blob_exists(repo, Digest.of(b"x"))
    assert info.value.code == "UNAUTHORIZED" and info.value.status == 401
    assert _token_statuses(ft) == [401]


# -- through the CLI, with its default retry policy --------------------------------------------
def _cli(tmp_path: Path, busybox_store: Path) -> tuple[PB, dict[str, str]]:
    pb = PB(tmp_path / "store")
    shutil.copytree(busybox_store, pb.root)
    cfg = tmp_path / "docker"
    cfg.mkdir()
    return pb, os_env(DOCKER_CONFIG=str(cfg))


def _login(env: dict[str, str], host: str) -> None:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))


def test_cli_push_survives_a_flaky_token_service(faulty_tokens: ProxiedTokens, busybox_store: Path,
                                                 tmp_path: Path, repo: str) -> None:
    ft = faulty_tokens
    pb, env = _cli(tmp_path, busybox_store)
    _login(env, ft.registry.host)
    ft.proxy.add("status", "GET", TOKEN, times=1, status=502)
    ft.proxy.add("reset_request", "GET", TOKEN, times=1)
    ref = f"{ft.registry.host}/{repo}:v1"
    r = pb.run("push", "-q", "busybox", ref, env=env, check=False)
    assert r.code == 0, r.err
    assert r.out.startswith(f"{ref}: digest: sha256:")
    assert _token_statuses(ft)[:3] == [502, 0, 200]


def test_cli_push_against_a_dead_token_service_says_so(faulty_tokens: ProxiedTokens, busybox_store: Path,
                                                       tmp_path: Path, repo: str) -> None:
    ft = faulty_tokens
    pb, env = _cli(tmp_path, busybox_store)
    _login(env, ft.registry.host)
    ft.proxy.add("status", "GET", TOKEN, times=-1, status=503)
    r = pb.run("push", "-q", "busybox", f"{ft.registry.host}/{repo}:v1", env=env, check=False)
    assert r.code == 1 and "Traceback" not in r.err
    lines = r.err.splitlines()
    assert lines[0].startswith("error: ") and lines[-1].startswith("hint: ")
    assert f"the token service at {ft.realm} failed: HTTP 503 Service Unavailable" in lines[0]
    assert "giving up after 5 tries" in lines[0]
    assert "unauthorized" not in r.err.lower() and "log in" not in r.err
    assert len(_token_statuses(ft)) == 5
