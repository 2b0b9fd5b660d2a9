"""Authentication: Basic (htpasswd) and Bearer (token service) against the real registry;
docker config.json credentials, credential helpers, login; no credential leaves the host."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import requests

from pybuild.oci import Descriptor, Digest
from pybuild.registry import (Credentials, RegistryAuth, RegistryAuthError, load_credentials, login,
                              pull, push, save_login)
from pybuild.registry.auth import Scope, parse_challenges
from pybuild.store.store import Store

from .conftest import (PASSWORD, USER, Counter, FaultProxy, RegistryServer, TokenServer, client_for)


def _blob(size: int = 1000) -> tuple[bytes, Descriptor]:
    data = os.urandom(size)
    return data, Descriptor("application/octet-stream", Digest.of(data), size)


def _write_config(d: Path, obj: dict) -> dict[str, str]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(obj))
    return {"DOCKER_CONFIG": str(d), "PATH": os.environ.get("PATH", "")}


def _auth_entry(user: str, pw: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}


# -- units: challenges, scopes, config.json ----------------------------------------------------
def test_parse_challenges() -> None:
    chs = parse_challenges('Bearer realm="https://auth.example.com/token",service="reg",'
                           'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope", '
                           'Basic realm="x, y"')
    assert [c.scheme for c in chs] == ["bearer", "basic"]
    assert chs[0].params == {"realm": "https://auth.example.com/token", "service": "reg",
                             "scope": "repository:a/b:pull,push repository:c:pull",
                             "error": "insufficient_scope"}
    assert chs[1].params == {"realm": "x, y"}
    s = Scope.parse(chs[0].params["scope"])
    assert s.entries() == ["repository:a/b:pull,push", "repository:c:pull"]
    assert s.covers(Scope.parse("repository:a/b:pull")) and not s.covers(Scope.parse("repository:c:push"))
    assert str(Scope.parse("repository:c:pull").union(Scope.parse("repository:c:push"))) == "repository:c:pull,push"


def test_load_credentials_from_config_json(tmp_path: Path) -> None:
    env = _write_config(tmp_path / "cfg", {"auths": {
        "https://reg.example.com:5000/v1/": _auth_entry("bob", "pw:with:colons"),
        "https://index.docker.io/v1/": _auth_entry("hubuser", "hubpw"),
        "empty.example.com": {}}})
    assert load_credentials("reg.example.com:5000", env) == Credentials("bob", "pw:with:colons")
    assert load_credentials("docker.io", env) == Credentials("hubuser", "hubpw")
    assert load_credentials("empty.example.com", env) is None
    assert load_credentials("other.example.com", env) is None
    assert load_credentials("x", {"DOCKER_CONFIG": str(tmp_path / "none")}) is None
    assert "pw:with" not in repr(Credentials("bob", "pw:with:colons"))


def test_save_login_is_atomic_private_and_keeps_other_keys(tmp_path: Path) -> None:
    env = _write_config(tmp_path / "cfg", {"auths": {"a.example.com": _auth_entry("x", "y")},
                                           "credHelpers": {"gcr.io": "gcloud"}, "psFormat": "table"})
    path = save_login("reg.example.com", "me", "secret", env)
    obj = json.loads(path.read_text())
    assert obj["psFormat"] == "table" and obj["credHelpers"] == {"gcr.io": "gcloud"}
    assert obj["auths"]["a.example.com"] == _auth_entry("x", "y")
    assert obj["auths"]["reg.example.com"] == _auth_entry("me", "secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    save_login("docker.io", "hub", "pw", env)
    assert "https://index.docker.io/v1/" in json.loads(path.read_text())["auths"]
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]      # no temp file left


# -- Basic auth (htpasswd) on the real registry ------------------------------------------------
def test_basic_auth_without_or_with_wrong_credentials(basic_registry: RegistryServer) -> None:
    with pytest.raises(RegistryAuthError) as e:
        client_for(basic_registry.host).ping()
    assert e.value.status == 401 and "pybuild login" in e.value.hint and "log in first" in e.value.hint
    with pytest.raises(RegistryAuthError) as e:
        client_for(basic_registry.host, credentials=Credentials(USER, "wrong")).ping()
    assert e.value.status == 401 and f"pybuild login {basic_registry.host}" in e.value.hint
    assert "rejected" in e.value.hint


def test_basic_auth_with_config_json_push_and_pull(basic_registry: RegistryServer, busybox_store: Path,
                                                   tmp_path: Path, repo: str) -> None:
    env = _write_config(tmp_path / "cfg", {"auths": {basic_registry.host: _auth_entry(USER, PASSWORD)}})
    store = Store(tmp_path / "a")
    shutil.copytree(busybox_store, store.root)
    counter = Counter()
    c = counter.attach(client_for(basic_registry.host, env=env))
    digest = push(store, "busybox", f"{basic_registry.host}/{repo}:v1", client=c)
    # Basic credentials are sent up front once the registry asked for them: a single 401
    assert len([x for x in counter.calls if x[2] == 401]) == 1
    name, desc = pull(Store(tmp_path / "b"), f"{basic_registry.host}/{repo}:v1",
                      client=client_for(basic_registry.host, env=env))
    assert desc.digest == digest


@pytest.mark.parametrize("key", ["credHelpers", "credsStore"])
def test_credential_helper(basic_registry: RegistryServer, tmp_path: Path, key: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-pbtest"
    seen = tmp_path / "helper-stdin"
    helper.write_text(f"""#!/bin/sh
[ "$1" = get ] || exit 1
cat > {seen}
printf '{{"ServerURL":"%s","Username":"{USER}","Secret":"{PASSWORD}"}}' "$(cat {seen})"
""")
    helper.chmod(0o755)
    cfg = {"credHelpers": {basic_registry.host: "pbtest"}} if key == "credHelpers" else {"credsStore": "pbtest"}
    env = _write_config(tmp_path / "cfg", cfg)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    assert load_credentials(basic_registry.host, env) == Credentials(USER, PASSWORD)
    assert seen.read_text() == basic_registry.host              # the server URL on stdin
    client_for(basic_registry.host, env=env).ping()


def test_login_checks_then_saves(basic_registry: RegistryServer, tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "cfg")}
    with pytest.raises(RegistryAuthError):
        login(basic_registry.host, USER, "wrong", env=env)
    assert not (tmp_path / "cfg" / "config.json").exists()
    path = login(basic_registry.host, USER, PASSWORD, env=env)
    assert path == tmp_path / "cfg" / "config.json" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credentials(basic_registry.host, env) == Credentials(USER, PASSWORD)


def test_a_redirected_blob_download_carries_no_credentials(basic_registry: RegistryServer, make_proxy,
                                                           tmp_path: Path, repo: str) -> None:
    data, desc = _blob(5000)
    creds = Credentials(USER, PASSWORD)
    client_for(basic_registry.host, credentials=creds).upload_blob(repo, desc, lambda: io.BytesIO(data))
    proxy: FaultProxy = make_proxy(basic_registry)
    # blob GETs on 127.0.0.1 are redirected to "localhost" (another host name, as storage would
    # be); there the proxy adds its own upstream credential, as a presigned URL would carry
    proxy.add("redirect", "GET", "/blobs/sha256:", times=-1)
    proxy.upstream_auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    c = client_for(proxy.host, credentials=creds)
    c.ping()                                                   # learn that Basic is wanted
    store = Store(tmp_path / "s")
    store.init()
    with store.content.ingest() as ing:
        c.fetch_blob(repo, desc, ing)
        ing.commit(desc.digest, desc.size)
    gets = proxy.requests("GET", "/blobs/sha256:")
    assert [(g.host.split(":")[0], g.status) for g in gets] == [("127.0.0.1", 307), ("localhost", 200)]
    assert gets[0].authorization.startswith("Basic ")
    assert gets[1].authorization == ""                         # dropped on the way to another host


# -- Bearer tokens from a real token service ---------------------------------------------------
def test_bearer_push_and_pull_with_cached_tokens(token_registry: RegistryServer, tokens: TokenServer,
                                                 busybox_store: Path, tmp_path: Path, repo: str) -> None:
    store = Store(tmp_path / "a")
    shutil.copytree(busybox_store, store.root)
    c = client_for(token_registry.host, credentials=Credentials(USER, PASSWORD))
    counter = Counter()
    counter.attach(c)
    digest = push(store, "busybox", f"{token_registry.host}/{repo}:v1", client=c)
    assert tokens.requests and all(user == USER for user, _ in tokens.requests)
    assert any(f"repository:{repo}:pull,push" in s for _, scopes in tokens.requests for s in scopes)
    n_tokens, n_401 = len(tokens.requests), len([x for x in counter.calls if x[2] == 401])
    assert n_tokens <= 2                                       # not one per request
    # the same client pulls the same repository: cached tokens, no new challenge
    name, desc = pull(Store(tmp_path / "b"), f"{token_registry.host}/{repo}:v1", client=c)
    assert desc.digest == digest
    assert len(tokens.requests) == n_tokens
    assert len([x for x in counter.calls if x[2] == 401]) == n_401
    # a second repository: mounted from the first (the token must cover pull on the source)
    push(store, "busybox", f"{token_registry.host}/{repo}-2:v1", client=c)
    assert [s for _, _, s in counter.matching("POST", "mount=") if s != 401] == [201, 201]


def test_insufficient_scope_gets_a_bigger_token(token_registry: RegistryServer, tokens: TokenServer,
                                                repo: str) -> None:
    c = client_for(token_registry.host, credentials=Credentials(USER, PASSWORD))
    counter = Counter()
    counter.attach(c)
    assert c.blob_exists(repo, Digest.of(b"x")) is None         # pull scope is enough
    assert tokens.requests == [(USER, [f"repository:{repo}:pull"])]
    data, desc = _blob()
    c.upload_blob(repo, desc, lambda: io.BytesIO(data))         # needs push: the pull token is refused
    assert tokens.requests[1] == (USER, [f"repository:{repo}:pull,push"])
    assert ("POST", f"/v2/{repo}/blobs/uploads/", 401) in counter.calls
    assert c.auth.stats["challenges"] == 2
    assert c.blob_exists(repo, desc.digest) == desc.size
    assert len(tokens.requests) == 2                            # the push token covers pull too


def test_bearer_anonymous_pull_only(token_registry: RegistryServer, tokens: TokenServer,
                                    busybox_store: Path, tmp_path: Path, repo: str) -> None:
    store = Store(tmp_path / "a")
    shutil.copytree(busybox_store, store.root)
    alice = client_for(token_registry.host, credentials=Credentials(USER, PASSWORD))
    push(store, "busybox", f"{token_registry.host}/{repo}:v1", client=alice)
    anon = client_for(token_registry.host, anonymous=True)
    pull(Store(tmp_path / "b"), f"{token_registry.host}/{repo}:v1", client=anon)   # anonymous pull works
    data, desc = _blob()
    with pytest.raises(RegistryAuthError) as e:
        anon.upload_blob(repo, desc, lambda: io.BytesIO(data))
    assert e.value.status == 401 and "pybuild login" in e.value.hint
    assert str(e.value).startswith(f"pushing blob {desc.digest} to {token_registry.host}/{repo}: UNAUTHORIZED")


def test_bearer_login_and_wrong_password(token_registry: RegistryServer, tokens: TokenServer,
                                         tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "cfg")}
    with pytest.raises(RegistryAuthError) as e:
        login(token_registry.host, USER, "wrong", env=env)
    assert "pybuild login" in e.value.hint and not (tmp_path / "cfg").exists()
    assert str(e.value).startswith(f"contacting {token_registry.host}: getting a token for "
                                   f"{token_registry.host} from {tokens.realm}: HTTP 401")
    tokens.token_key = "access_token"                           # the OAuth2 spelling is accepted
    login(token_registry.host, USER, PASSWORD, env=env)
    assert load_credentials(token_registry.host, env) == Credentials(USER, PASSWORD)


def test_tokens_expire(token_registry: RegistryServer, tokens: TokenServer, repo: str) -> None:
    now = [1000.0]
    auth = RegistryAuth(token_registry.host, token_registry.host, credentials=Credentials(USER, PASSWORD),
                        clock=lambda: now[0])
    s = requests.Session()
    s.auth = auth
    url = f"http://{token_registry.host}/v2/{repo}/blobs/{Digest.of(b'y')}"
    assert s.head(url, timeout=10).status_code == 404
    assert s.head(url, timeout=10).status_code == 404
    assert auth.stats["token_requests"] == 1
    now[0] += 200                                               # expires_in is 300: still good
    assert s.head(url, timeout=10).status_code == 404 and auth.stats["token_requests"] == 1
    now[0] += 100                                               # past expiry: a new token
    assert s.head(url, timeout=10).status_code == 404 and auth.stats["token_requests"] == 2
