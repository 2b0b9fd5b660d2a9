"""Registry authentication: docker-compatible credentials and a requests ``AuthBase`` loop.

The loop (as httpx/pip and docker do it): send the request; on ``401`` read ``WWW-Authenticate``;
``Bearer`` → get a token from the realm for the challenge's service and scope (basic credentials
to the realm when we have them) and resend; ``Basic`` → resend with the credentials. Tokens are
cached per scope until shortly before ``expires_in`` ends; a ``401`` with
``error="insufficient_scope"`` asks for the union of the scope held and the scope demanded.
A token request that is refused at the TCP level, reset, timed out or answered 408/429/5xx is
retried like a registry request (``retry.py``: the client's RetryPolicy and timeouts), then
fails as a :class:`TokenServiceError` naming the token service, not as an auth error.

Credentials are only ever attached to requests for the registry's own API host: requests strips
``Authorization`` when a redirect leaves the host (blob downloads redirected to storage), and the
401 hook refuses to answer challenges from any other host.

Credentials come from a docker ``config.json`` (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``): ``credHelpers[host]``, then ``credsStore`` (both run
``docker-credential-<helper> get``), then ``auths[host].auth`` (base64 ``user:password``).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from pybuild.errors import RegistryError, UserError

from .errors import RegistryAuthError
from .retry import RETRY_STATUSES, TIMEOUT_ENV, TRANSIENT, Attempts, RetryPolicy, broken, could_not_connect, \
    reason, retry_after, timed_out, unresolvable

__all__ = ["Credentials", "RegistryAuth", "Challenge", "parse_challenges", "load_credentials",
           "save_login", "docker_config_path", "config_key", "Scope", "TokenServiceError"]

DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_HUB_NAMES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_DEFAULT_EXPIRES = 60            # seconds; the token spec's default for a missing expires_in
_HELPER_TIMEOUT = 30


class TokenServiceError(RegistryError):
    """The registry's token service could not be reached or kept failing (refused, reset,
    timed out, 429/5xx), after the same retries as a registry request. Not an auth error: the
    credentials were never judged. Deliberately no RegistryUnavailable, whose handlers retry the
    whole request (and with it this token fetch's own retries)."""


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for one registry."""

    username: str
    password: str

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(username={self.username!r}, password=***)"


# -- config.json -------------------------------------------------------------------------------
def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    env = os.environ if env is None else env
    base = env.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path(os.path.expanduser("~")) / ".docker" / "config.json"


def config_key(registry: str) -> str:
    """The ``auths`` key docker uses for ``registry`` (Docker Hub has its legacy URL)."""
    return DOCKER_HUB_CONFIG_KEY if registry in _HUB_NAMES else registry


def _normalise_key(key: str) -> str:
    """``https://host:port/v1/`` → ``host:port`` (docker accepts keys written either way)."""
    k = key.strip()
    if "://" in k:
        k = urlsplit(k).netloc or k
    k = k.split("/", 1)[0].lower()
    return "docker.io" if k in _HUB_NAMES else k


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        obj = json.loads(data or b"{}")
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON: {e}", hint="fix or remove the file") from None
    return obj if isinstance(obj, dict) else {}


def _run_helper(helper: str, registry: str, env: Mapping[str, str]) -> Credentials | None:
    """``docker-credential-<helper> get`` with the server URL on stdin; None when not found."""
    exe = shutil.which(f"docker-credential-{helper}", path=env.get("PATH"))
    if exe is None:
        raise UserError(f"credential helper docker-credential-{helper} (configured for {registry}) "
                        "is not on PATH", hint="install it, or remove it from your docker config.json")
    server = DOCKER_HUB_CONFIG_KEY if registry in _HUB_NAMES else registry
    try:
        p = subprocess.run([exe, "get"], input=server.encode(), capture_output=True,
                           timeout=_HELPER_TIMEOUT, env=dict(env))
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"credential helper docker-credential-{helper} failed for {registry}: {e}") from None
    if p.returncode != 0:
        msg = (p.stdout or p.stderr).decode(errors="replace").strip()
        if "not found" in msg.lower():
            return None
        raise UserError(f"credential helper docker-credential-{helper} failed for {registry}: {msg}")
    try:
        obj = json.loads(p.stdout)
        return Credentials(str(obj["Username"]), str(obj["Secret"]))
    except (ValueError, KeyError, TypeError):
        raise UserError(f"credential helper docker-credential-{helper} returned no Username/Secret "
                        f"for {registry}") from None


def load_credentials(registry: str, env: Mapping[str, str] | None = None) -> Credentials | None:
    """Credentials for ``registry`` (``host[:port]`` as in a reference) from docker's config.

    Order: ``credHelpers[host]``, ``credsStore``, ``auths[host].auth``. Returns None when there
    are none. Raises UserError when the config or a helper is broken.
    """
    env = os.environ if env is None else env
    path = docker_config_path(env)
    cfg = _read_config(path)
    want = _normalise_key(registry)
    helpers = cfg.get("credHelpers") or {}
    helper = next((v for k, v in helpers.items() if _normalise_key(k) == want), None) \
        if isinstance(helpers, dict) else None
    helper = helper or cfg.get("credsStore")
    if helper:
        creds = _run_helper(str(helper), registry, env)
        if creds is not None:
            return creds
    auths = cfg.get("auths") or {}
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if _normalise_key(key) != want or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, sep, pw = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise UserError(f"{path}: auths[{key!r}].auth is not base64 of user:password",
                                hint=f"log in again with `pybuild login {registry}`") from None
            if sep:
                return Credentials(user, pw)
        if entry.get("username") and entry.get("password"):
            return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def save_login(registry: str, username: str, password: str,
               env: Mapping[str, str] | None = None) -> Path:
    """Record ``username``/``password`` for ``registry`` in ``auths`` of docker's config.json.

    The file is replaced atomically (temp file, fsync, rename) with mode 0600; other keys are
    kept. Returns the path written. Raises UserError when it cannot be written.
    """
    path = docker_config_path(env)
    cfg = _read_config(path)
    auths = cfg.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    want = _normalise_key(registry)
    for key in [k for k in auths if _normalise_key(k) == want]:
        del auths[key]
    auths[config_key(registry)] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    cfg["auths"] = auths
    data = (json.dumps(cfg, indent="\t", sort_keys=True) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}",
                        hint="set DOCKER_CONFIG to a writable directory") from None
    return path


# -- challenges and scopes ---------------------------------------------------------------------
@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lower-case) and its parameters."""

    scheme: str
    params: Mapping[str, str]


_CHALLENGE_START = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)")
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` header (one or several challenges, quoted values with commas)."""
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _CHALLENGE_START.match(header, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            pm = _PARAM.match(header, pos)
            if not pm:
                break
            # a bare word followed by a space starts the next challenge, not a parameter
            params[pm.group(1).lower()] = (re.sub(r"\\(.)", r"\1", pm.group(2))
                                           if pm.group(2) is not None else pm.group(3))
            pos = pm.end()
        out.append(Challenge(scheme, params))
        while pos < len(header) and header[pos] in ", ":
            pos += 1
    return out


class Scope:
    """Token scopes as a mapping ``(type, name) → set of actions``; renders sorted and stable."""

    def __init__(self, items: Mapping[tuple[str, str], frozenset[str]] | None = None) -> None:
        self.items: dict[tuple[str, str], frozenset[str]] = dict(items or {})

    @classmethod
    def parse(cls, texts: list[str] | str) -> "Scope":
        """Parse ``repository:name:pull,push`` entries (space-separated and/or a list)."""
        items: dict[tuple[str, str], frozenset[str]] = {}
        for text in [texts] if isinstance(texts, str) else texts:
            for entry in text.split():
                typ, _, rest = entry.partition(":")
                name, _, actions = rest.rpartition(":")
                if not name:   # e.g. "registry:catalog:*" parses fine; bare words are ignored
                    continue
                key = (typ, name)
                items[key] = items.get(key, frozenset()) | frozenset(a for a in actions.split(",") if a)
        return cls(items)

    def union(self, other: "Scope") -> "Scope":
        items = dict(self.items)
        for k, v in other.items.items():
            items[k] = items.get(k, frozenset()) | v
        return Scope(items)

    def covers(self, other: "Scope") -> bool:
        return all(v <= self.items.get(k, frozenset()) or "*" in self.items.get(k, frozenset())
                   for k, v in other.items.items())

    def entries(self) -> list[str]:
        return [f"{t}:{n}:{','.join(sorted(a))}" for (t, n), a in sorted(self.items.items())]

    def __str__(self) -> str:
        return " ".join(self.entries())

    def __bool__(self) -> bool:
        return bool(self.items)


_API_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?:blobs|manifests|tags|referrers)/")


def scope_for_request(method: str, path: str) -> Scope:
    """The scope a request to the distribution API needs: pull for reads, push,pull otherwise."""
    m = _API_PATH.match(path)
    if not m:
        return Scope()
    actions = frozenset({"pull"}) if method in ("GET", "HEAD") else frozenset({"pull", "push"})
    return Scope({("repository", m.group("name")): actions})


@dataclass
class _Token:
    value: str
    scope: Scope
    expires: float          # on the auth's clock
    fetched: float = field(default_factory=time.monotonic)


# -- the AuthBase ------------------------------------------------------------------------------
class RegistryAuth(AuthBase):
    """``requests`` auth for one registry API host: Bearer tokens and Basic, per the challenge.

    ``api_netloc`` is the ``host:port`` requests go to; challenges from any other host are
    ignored and no credential is attached to requests for other hosts. ``credentials`` is used
    when given; otherwise ``loader()`` is called (once, lazily, on the first challenge).
    ``token_session`` fetches tokens (its ``verify`` should follow the transport policy), with
    ``timeout`` (connect, read) and the retries of ``retry`` (waiting with ``sleep``) on refused,
    reset or timed-out connections and 408/429/5xx answers, as registry requests get them.
    Thread-safe: one instance serves a client's parallel blob transfers.

    ``stats`` counts ``token_requests`` and ``challenges`` (for tests and debugging).
    """

    def __init__(self, registry: str, api_netloc: str, *, credentials: Credentials | None = None,
                 loader: Callable[[], Credentials | None] | None = None,
                 token_session: requests.Session | None = None, timeout: tuple[float, float] = (10, 60),
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.api_netloc = api_netloc.lower()
        self._credentials = credentials
        self._loader = loader if credentials is None else None
        self._token_session = token_session
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.RLock()
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._failed: dict[tuple[str, str, str], tuple[float, TokenServiceError]] = {}
        self._fetching: dict[tuple[str, str, str], threading.Lock] = {}
        self._latest: _Token | None = None
        self._basic = False
        self.stats = {"token_requests": 0, "challenges": 0}

    # -- credentials ---------------------------------------------------------------------------
    @property
    def credentials(self) -> Credentials | None:
        with self._lock:
            if self._loader is not None:
                loader, self._loader = self._loader, None
                self._credentials = loader()
            return self._credentials

    # -- requests hooks ------------------------------------------------------------------------
    def _same_host(self, url: str) -> bool:
        return urlsplit(url).netloc.lower() == self.api_netloc

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._same_host(r.url or ""):
            header = self._header_for(r.method or "GET", urlsplit(r.url or "").path)
            if header:
                r.headers["Authorization"] = header
        r.register_hook("response", self._handle_401)
        return r

    def _header_for(self, method: str, path: str) -> str | None:
        """The Authorization to send up front: a cached token for this scope, else the latest
        token (an `insufficient_scope` answer then tells us what to ask for), or Basic."""
        with self._lock:
            if self._basic and self._credentials is not None:
                return _basic_header(self._credentials)
            want = scope_for_request(method, path)
            now = self._clock()
            best = None
            for tok in self._tokens.values():
                if tok.expires > now and tok.scope.covers(want):
                    best = tok
                    break
            if best is None and self._latest is not None and self._latest.expires > now:
                best = self._latest
            return f"Bearer {best.value}" if best else None

    def _handle_401(self, r: requests.Response, **kwargs: Any) -> requests.Response:
        if r.status_code != 401 or not self._same_host(r.url):
            return r
        tries = getattr(r.request, "_pb_auth_tries", 0)
        if tries >= 2:
            return r
        challenges = parse_challenges(r.headers.get("WWW-Authenticate", ""))
        header = self._answer(challenges, _header_text(r.request.headers.get("Authorization")))
        if header is None:
            return r
        r.content  # drain so the connection can be reused
        r.close()
        prep = r.request.copy()
        prep.headers["Authorization"] = header
        prep._pb_auth_tries = tries + 1  # type: ignore[attr-defined]
        # the original request too: a same-host redirect of the resent request is built from it
        r.request.headers["Authorization"] = header
        new = r.connection.send(prep, **kwargs)
        new.history.append(r)
        new.request = prep
        return self._handle_401(new, **kwargs)

    def _answer(self, challenges: list[Challenge], sent: str | None) -> str | None:
        """The Authorization header answering ``challenges``, or None when we cannot."""
        with self._lock:
            self.stats["challenges"] += 1
        for ch in challenges:
            if ch.scheme == "bearer" and ch.params.get("realm"):
                want = Scope.parse(ch.params.get("scope", ""))
                if ch.params.get("error") == "insufficient_scope" and sent and sent.startswith("Bearer "):
                    held = self._scope_of(sent[len("Bearer "):])
                    if held is not None:
                        want = held.union(want)
                realm, service = ch.params["realm"], ch.params.get("service", "")
                tok = self.token(realm, service, want)
                if sent == f"Bearer {tok.value}":
                    # refused although cached for this scope (revoked, clock skew): ask once more
                    tok = self.token(realm, service, want, fresh=True)
                    if sent == f"Bearer {tok.value}":
                        return None
                return f"Bearer {tok.value}"
            if ch.scheme == "basic":
                creds = self.credentials
                if creds is None:
                    return None
                header = _basic_header(creds)
                if sent == header:
                    return None  # these credentials were just refused
                with self._lock:
                    self._basic = True
                return header
        return None

    def _scope_of(self, token_value: str) -> Scope | None:
        with self._lock:
            for tok in self._tokens.values():
                if tok.value == token_value:
                    return tok.scope
        return None

    # -- tokens --------------------------------------------------------------------------------
    def token(self, realm: str, service: str, scope: Scope, *, fresh: bool = False) -> _Token:
        """A token for ``scope`` from ``realm`` (cached until shortly before it expires, unless
        ``fresh``). Raises RegistryAuthError when the token server refuses or answers nonsense,
        TokenServiceError when it cannot be reached or keeps failing.

        One fetch per key at a time, outside the main lock (requests that hold a token go on
        meanwhile). A caller that waited while another fetch of the same key ran gets that
        fetch's token, or its TokenServiceError: the retries are spent once, not once per
        parallel transfer.
        """
        key = (realm, service, str(scope))
        asked = time.monotonic()
        with self._lock:
            tok = self._tokens.get(key)
            if not fresh and tok is not None and tok.expires > self._clock():
                self._latest = tok
                return tok
            fetching = self._fetching.setdefault(key, threading.Lock())
        with fetching:
            with self._lock:
                tok = self._tokens.get(key)
                if tok is not None and tok.expires > self._clock() and (not fresh or tok.fetched >= asked):
                    self._latest = tok
                    return tok
                failed = self._failed.get(key)
                if failed is not None and failed[0] >= asked:
                    e = failed[1]
                    raise TokenServiceError(e.message, code=e.code, status=e.status, hint=e.hint)
            try:
                tok = self._fetch_token(realm, service, scope)
            except TokenServiceError as e:
                with self._lock:
                    self._failed[key] = (time.monotonic(), e)
                raise
            with self._lock:
                self._failed.pop(key, None)
                self._tokens[key] = tok
                self._latest = tok
            return tok

    def _fetch_token(self, realm: str, service: str, scope: Scope) -> _Token:
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scope.entries())
        creds = self.credentials
        if creds is not None:
            params.append(("account", creds.username))
        params.append(("client_id", "pybuild"))
        resp = self._get_token(realm, params, creds)
        what = f"getting a token for {self.registry} from {realm}"
        if resp.status_code in (401, 403):
            raise RegistryAuthError(
                f"{what}: HTTP {resp.status_code}: credentials refused", code="UNAUTHORIZED",
                status=resp.status_code,
                hint=(f"log in again with `pybuild login {self.registry}`" if creds else
                      f"log in first: `pybuild login {self.registry} -u USER --password-stdin`"))
        if resp.status_code != 200:
            raise RegistryAuthError(f"{what}: HTTP {resp.status_code}", status=resp.status_code,
                                    hint="the registry's token service failed; try again later")
        try:
            obj = resp.json()
            value = obj.get("token") or obj.get("access_token")
            expires_in = int(obj.get("expires_in") or _DEFAULT_EXPIRES)
        except (ValueError, AttributeError, TypeError):
            value, expires_in = None, 0
        if not value:
            raise RegistryAuthError(f"{what}: the answer holds no token",
                                    hint="the realm is not a docker token service")
        expires_in = max(expires_in, 1)
        margin = min(10.0, expires_in / 4)
        return _Token(str(value), scope, self._clock() + expires_in - margin)

    def _get_token(self, realm: str, params: list[tuple[str, str]],
                   creds: Credentials | None) -> requests.Response:
        """GET the token endpoint, retrying refused, reset or timed-out connections and
        408/429/5xx answers like any registry request; then TokenServiceError saying so."""
        session = self._token_session or requests
        what = f"getting a token for {self.registry}"
        attempts = Attempts(self._retry, what, self._sleep, error=TokenServiceError)
        failed = f"the token service at {realm} failed"
        while True:
            with self._lock:
                self.stats["token_requests"] += 1
            try:
                resp = session.get(realm, params=params, timeout=self._timeout,
                                   auth=(creds.username, creds.password) if creds else None)
            except requests.exceptions.SSLError as e:
                raise TokenServiceError(f"{what}: TLS error talking to the token service at {realm}: "
                                        f"{reason(e)}", code="TLS",
                                        hint="set PYBUILD_CA_BUNDLE to the CA certificate of the token "
                                             "service") from None
            except TRANSIENT as e:
                text, hint = self._failure(e)
                if unresolvable(e):        # a host name that does not resolve stays so
                    raise TokenServiceError(f"{what}: {failed}: {text}", hint=hint) from None
                attempts.again(f"{failed}: {text}", code="TIMEOUT" if timed_out(e) else "", hint=hint)
                continue
            except requests.RequestException as e:
                raise TokenServiceError(f"{what}: the token service at {realm} cannot be asked: {e}",
                                        hint="the registry's challenge names an unusable token realm") from None
            if resp.status_code not in RETRY_STATUSES:
                return resp
            resp.close()
            attempts.again(f"{failed}: HTTP {resp.status_code} {resp.reason or ''}".rstrip(),
                           retry_after(resp), resp.status_code,
                           hint=("the registry's token service is rate-limiting; wait a while and try again"
                                 if resp.status_code == 429 else
                                 "the registry's token service failed on its side; try again later"))

    def _failure(self, e: Exception) -> tuple[str, str]:
        """(what went wrong, what to do) for a connection to the token service that failed."""
        if could_not_connect(e):
            return (f"cannot connect: {reason(e)}",
                    "check that the registry's token service is running and reachable")
        if timed_out(e):
            if isinstance(e, requests.exceptions.ConnectTimeout):
                text = f"timed out: could not connect within {self._timeout[0]:g}s"
            else:
                text = f"timed out: no answer within {self._timeout[1]:g}s"
            return text, ("the token service is slow or stalled; try again later, or give it more time "
                          f"with {TIMEOUT_ENV}=SECONDS (now {self._timeout[1]:g})")
        return (broken(e), "the connection to the token service keeps breaking; check the network "
                           "(and any proxy in between) and try again")


def _header_text(value: str | bytes | None) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()
