"""Fixtures for the registry tests: the real CNCF distribution registry and helpers around it.

- ``registry``: ``docker-registry serve`` (Debian package ``docker-registry``) on a free
  127.0.0.1 port with filesystem storage in a temp dir, no auth; one per test session.
- ``basic_registry``: the same with ``auth.htpasswd`` (user ``alice``, password ``s3cret``;
  the bcrypt hash comes from the stdlib ``crypt`` module, else ``htpasswd -B`` from apache2-utils).
- ``token_registry``: the same with ``auth.token``: a real token service (``TokenServer``, stdlib
  ``http.server``) issues RS256 JWTs signed by ``openssl`` with a self-signed certificate that
  the registry trusts (``rootcertbundle``); the registry verifies them exactly as in production.
- ``faulty_tokens``: a real registry (token auth) whose realm is a ``FaultProxy`` in front of the
  ``TokenServer``, so a test can make the token service answer 5xx, reset or stall.
- ``make_proxy``: ``FaultProxy``, an HTTP proxy in front of a real registry that forwards every
  request and, on rules the test adds, cuts a response after N bytes, resets the TCP connection
  (mid-request-body or mid-response-body), stalls (withholds the answer, or its body, for a
  while), answers 429/5xx, corrupts a body, redirects blob downloads to another host name, or
  paginates tag lists. It records every request with the order in which it arrived and was
  answered. It injects faults into real traffic; it does not imitate the registry.
"""
from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import re
import shutil
import socket
import struct
import sys
import subprocess
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from pybuild.registry import RegistryClient, RetryPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testdata"))
from distribution_registry import DistributionRegistry, RegistryDidNotStart, free_port  # noqa: E402,F401 (free_port: for test_client)

USER, PASSWORD = "alice", "s3cret"
FAST_RETRY = RetryPolicy(tries=5, base_delay=0.05, max_delay=0.2, total=20.0)


# -- the real registry -------------------------------------------------------------------------
class RegistryServer(DistributionRegistry):
    """testdata/distribution_registry.py's registry, failing the test (not erroring) when it
    cannot start."""

    def start(self, timeout: float = 20.0) -> "RegistryServer":
        try:
            super().start(timeout)
        except RegistryDidNotStart as e:
            pytest.fail(str(e), pytrace=False)
        return self


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """The real distribution registry, no auth."""
    srv = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    yield srv
    srv.stop()


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash (the only kind distribution's htpasswd accepts), cost 4 for speed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # stdlib until 3.13; libxcrypt does bcrypt
        h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if h and h.startswith("$2"):
            return h
    except (ImportError, ValueError, OSError):
        pass
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbBC", "4", "x", password], capture_output=True,
                             text=True, check=True).stdout
        return out.strip().split(":", 1)[1]
    pytest.fail("no bcrypt: need Python's crypt module or htpasswd (apt-get install apache2-utils)",
                pytrace=False)


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """The real registry with htpasswd (Basic) auth for alice/s3cret."""
    d = tmp_path_factory.mktemp("basic-registry")
    (d / "htpasswd").write_text(f"{USER}:{bcrypt_hash(PASSWORD)}\n")
    srv = RegistryServer(d, f"""auth:
  htpasswd:
    realm: pbtest-basic
    path: {d / 'htpasswd'}
""").start()
    yield srv
    srv.stop()


# -- a real token service ----------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A docker token service (the distribution "token" auth spec) for the tests.

    ``GET /token?service=…&scope=…`` with optional Basic auth. Anonymous callers get ``pull``
    only; alice/s3cret gets what she asks for; a wrong password is a 401. Tokens are RS256 JWTs
    with an ``x5c`` header; the key, certificate and signatures come from ``cryptography``. ``requests`` records
    (user, scopes) of every call. ``token_key`` picks the JSON key ("token" or "access_token").
    """

    service = "pbtest-registry"
    issuer = "pbtest-issuer"

    def __init__(self, workdir: Path) -> None:
        import datetime
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID
        self.cert = workdir / "token.crt"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pbtest-token")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .sign(self._key, hashes.SHA256()))
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.requests: list[tuple[str, list[str]]] = []
        self.token_key = "token"
        self.expires_in = 300
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        q = parse_qs(urlsplit(h.path).query)
        user = ""
        authz = h.headers.get("Authorization", "")
        if authz.startswith("Basic "):
            u, _, p = base64.b64decode(authz[6:]).decode().partition(":")
            if (u, p) != (USER, PASSWORD):
                h.send_response(401)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            user = u
        scopes = q.get("scope", [])
        with self._lock:
            self.requests.append((user, scopes))
        access = []
        for s in scopes:
            for entry in s.split():
                typ, _, rest = entry.partition(":")
                name, _, actions = rest.rpartition(":")
                granted = [a for a in actions.split(",") if user or a == "pull"]
                access.append({"type": typ, "name": name, "actions": granted})
        now = int(time.time())
        token = self.sign({"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + self.expires_in,
                           "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access})
        body = json.dumps({self.token_key: token, "expires_in": self.expires_in}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required for the token-auth tests", pytrace=False)
    ts = TokenServer(tmp_path_factory.mktemp("token"))
    yield ts
    ts.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer) -> Iterator[RegistryServer]:
    """The real registry with token (Bearer) auth trusting ``token_server``."""
    srv = RegistryServer(tmp_path_factory.mktemp("token-registry"), f"""auth:
  token:
    realm: {token_server.realm}
    service: {token_server.service}
    issuer: {token_server.issuer}
    rootcertbundle: {token_server.cert}
""").start()
    yield srv
    srv.stop()


@pytest.fixture
def tokens(token_server: TokenServer) -> Iterator[TokenServer]:
    """The token server with its request log cleared (and settings restored afterwards)."""
    token_server.requests.clear()
    yield token_server
    token_server.token_key = "token"
    token_server.expires_in = 300


# -- the fault-injecting proxy -----------------------------------------------------------------
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade"}


@dataclass
class Rule:
    """``action`` on requests whose method and path (with query) match; ``times`` < 0 = always."""

    action: str     # status | cut | reset | reset_request | stall | stall_body | delay | corrupt
    #                 | redirect | paginate_tags | strip_range | relative_location
    method: str | None = None
    path: str = ".*"
    times: int = 1
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    after: int = 0                  # cut, reset, stall_body: response body bytes sent first;
    #                                 reset_request: request body bytes read before the reset
    nth: int = 1                    # apply from the n-th matching request on
    seconds: float = 30.0           # stall, stall_body: how long the answer is withheld; delay
    forward: bool = False           # reset_request: send the bytes read on to the registry (which
    #                                 then sees the body break off); stall: let the registry act
    #                                 on the request, only its answer is withheld
    seen: int = 0


@dataclass
class Seen:
    method: str
    path: str
    host: str
    authorization: str
    range: str
    status: int                     # the registry's answer; 0: the request never reached it
    action: str                     # the rule applied ("" for none)
    start: int = 0                  # when the request arrived, and when the registry's answer came
    end: int = 0                    # back (or the fault began); one counter orders both


class FaultProxy:
    """Forwards HTTP to a real upstream registry, applying the rules added with ``add``.

    Actions (``add(action, method, path_regex, times=…, nth=…, …)``):

    - ``status``: answer ``status`` with ``headers``/``body`` instead of forwarding;
    - ``cut``: forward, then send the headers and ``after`` bytes of the body and close cleanly;
    - ``reset``: the same, but end with a TCP reset (``SO_LINGER`` 0) instead of a clean close;
    - ``reset_request``: read ``after`` bytes of the request body, then reset the connection;
      the registry sees nothing, or, with ``forward``, a request whose body breaks off there;
    - ``stall``: answer nothing for ``seconds`` (with ``forward`` the registry did the work),
      then reset; ``stall_body``: forward, send the headers and ``after`` body bytes, then stall;
    - ``delay``: wait ``seconds``, then forward as usual (a slow but working registry);
    - ``corrupt``, ``redirect``, ``strip_range``, ``relative_location``, ``paginate_tags``.

    Every request is logged as a :class:`Seen` with ``start``/``end`` sequence numbers, so tests
    can prove one request was answered before another was sent. ``stop()`` ends every stall.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.log: list[Seen] = []
        self.upstream_auth: str | None = None   # Authorization for redirected ("storage") requests
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._stopped = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (ConnectionError, socket.timeout):
                    self.close_connection = True

            def __getattr__(self, name: str) -> Any:
                if name.startswith("do_"):
                    return lambda: proxy._handle(self)
                raise AttributeError(name)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def add(self, action: str, method: str | None = None, path: str = ".*", **kw: Any) -> Rule:
        rule = Rule(action, method, path, **kw)
        with self._lock:
            self.rules.append(rule)
        return rule

    def requests(self, method: str | None = None, path: str = ".*") -> list[Seen]:
        return [s for s in self.log if (method is None or s.method == method) and re.search(path, s.path)]

    def _match(self, method: str, path: str, redirected: bool) -> Rule | None:
        with self._lock:
            for r in self.rules:
                if (r.method is None or r.method == method) and re.search(r.path, path) and r.times != 0:
                    if r.action == "redirect" and redirected:
                        continue
                    r.seen += 1
                    if r.seen < r.nth:
                        continue
                    if r.times > 0:
                        r.times -= 1
                    return r
        return None

    def _send(self, h: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]],
              body: bytes, length: int | None = None) -> None:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if body:
            h.wfile.write(body)

    def _upstream(self, method: str, path: str, headers: dict[str, str],
                  body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        c = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            c.close()

    def _tick(self) -> int:
        with self._lock:
            return next(self._seq)

    @staticmethod
    def _reset(h: BaseHTTPRequestHandler) -> None:
        """Drop the client connection with a TCP RST (SO_LINGER 0), not a clean FIN."""
        h.close_connection = True
        try:
            h.wfile.flush()
        except OSError:
            pass
        try:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        h.connection.close()       # the RST goes out when the handler's files are closed too

    def _forward_partial(self, method: str, path: str, headers: dict[str, str], part: bytes) -> int:
        """Send the registry a request whose body breaks off after ``part`` (the declared
        Content-Length is kept), end our side, and wait for its answer; returns its status."""
        lines = [f"{method} {path} HTTP/1.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "connection"]
        host, _, port = self.upstream.rpartition(":")
        answer = b""
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + part)
            s.shutdown(socket.SHUT_WR)
            try:
                while chunk := s.recv(65536):
                    answer += chunk
            except OSError:
                pass
        m = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
        return int(m.group(1)) if m else 0

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        method, path = h.command, h.path
        start = self._tick()
        n = int(h.headers.get("Content-Length") or 0)
        host = h.headers.get("Host", "")
        redirected = host.startswith("localhost")
        rule = self._match(method, path, redirected)
        action = rule.action if rule else ""
        status = 0

        def record() -> None:
            end = self._tick()
            with self._lock:
                self.log.append(Seen(method, path, host, h.headers.get("Authorization", ""),
                                     h.headers.get("Range", ""), status, action, start, end))

        fwd = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        if redirected and self.upstream_auth:
            fwd["Authorization"] = self.upstream_auth
        if rule and rule.action == "reset_request":
            part = h.rfile.read(min(rule.after, n)) if n else b""
            if rule.forward:
                status = self._forward_partial(method, path, fwd, part)
            record()
            self._reset(h)
            return
        body = h.rfile.read(n) if n else None
        if rule and rule.action == "delay":
            self._stopped.wait(rule.seconds)
        if rule and rule.action == "stall":
            if rule.forward:
                status = self._upstream(method, path, fwd, body)[0]
            record()
            self._stopped.wait(rule.seconds)
            self._reset(h)
            return
        if rule and rule.action == "status":
            status = rule.status
            record()
            self._send(h, rule.status, list(rule.headers.items()), rule.body)
            return
        if rule and rule.action == "redirect":
            status = 307
            record()
            self._send(h, 307, [("Location", f"http://localhost:{self.port}{path}")], b"")
            return
        if rule and rule.action == "strip_range":
            fwd = {k: v for k, v in fwd.items() if k.lower() != "range"}
        if rule and rule.action == "paginate_tags":
            status, out, data = self._paginate(path, fwd)
            record()
            self._send(h, status, out, data)
            return
        status, up_headers, data = self._upstream(method, path, fwd, body)
        record()
        out = [(k, v) for k, v in up_headers if k.lower() not in _HOP and k.lower() != "content-length"]
        length = None
        if method == "HEAD":
            length = int(dict((k.lower(), v) for k, v in up_headers).get("content-length", "0"))
        if rule and rule.action == "relative_location":
            out = [(k, urlsplit(v)._replace(scheme="", netloc="").geturl() if k.lower() == "location" else v)
                   for k, v in out]
        if rule and rule.action == "corrupt" and data:
            i = len(data) // 2
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        if rule and rule.action in ("cut", "reset", "stall_body"):
            h.send_response(status)
            for k, v in out:
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[:rule.after])
            h.wfile.flush()
            if rule.action == "stall_body":
                self._stopped.wait(rule.seconds)
            elif rule.action == "reset":
                time.sleep(0.05)       # let the bytes arrive: a reset can discard unread data
            if rule.action in ("reset", "stall_body"):
                self._reset(h)
                return
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send(h, status, out, data, length)

    def _paginate(self, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Tag-list pagination (``n``, ``last``, ``Link``) over the upstream's full list:
        distribution 2.8 ignores ``n`` for tags (it paginates only ``_catalog``)."""
        parts = urlsplit(path)
        q = parse_qs(parts.query)
        status, up_headers, data = self._upstream("GET", parts.path, headers, None)
        if status != 200:
            return status, [(k, v) for k, v in up_headers if k.lower() not in _HOP | {"content-length"}], data
        obj = json.loads(data)
        tags = sorted(obj.get("tags") or [])
        if "last" in q:
            tags = [t for t in tags if t > q["last"][0]]
        out: list[tuple[str, str]] = [("Content-Type", "application/json")]
        if "n" in q:
            n = int(q["n"][0])
            if len(tags) > n:
                tags = tags[:n]
                out.append(("Link", f'<{parts.path}?n={n}&last={tags[-1]}>; rel="next"'))
        return 200, out, json.dumps({"name": obj.get("name"), "tags": tags}).encode()

    def stop(self) -> None:
        self._stopped.set()          # ends every stall
        self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class ProxiedTokens:
    """A real registry with token auth whose realm (``realm``) is ``proxy`` in front of ``tokens``."""

    registry: RegistryServer
    proxy: FaultProxy
    tokens: TokenServer
    realm: str


@pytest.fixture(scope="session")
def proxied_token_registry(tmp_path_factory: pytest.TempPathFactory,
                           token_server: TokenServer) -> Iterator[ProxiedTokens]:
    proxy = FaultProxy(f"127.0.0.1:{token_server.port}")
    realm = f"http://{proxy.host}/token"
    srv = RegistryServer(tmp_path_factory.mktemp("proxied-token-registry"), f"""auth:
  token:
    realm: {realm}
    service: {token_server.service}
    issuer: {token_server.issuer}
    rootcertbundle: {token_server.cert}
""").start()
    yield ProxiedTokens(srv, proxy, token_server, realm)
    srv.stop()
    proxy.stop()


@pytest.fixture
def faulty_tokens(proxied_token_registry: ProxiedTokens, tokens: TokenServer) -> Iterator[ProxiedTokens]:
    """``proxied_token_registry`` with the proxy's rules and logs (and the token log) cleared;
    rules a test adds (``faulty_tokens.proxy.add(…, path="^/token")``) end with it."""
    proxy = proxied_token_registry.proxy
    with proxy._lock:
        proxy.rules.clear()
        proxy.log.clear()
    yield proxied_token_registry
    with proxy._lock:
        proxy.rules.clear()


@pytest.fixture
def make_proxy() -> Iterator[Any]:
    """``make_proxy(server)`` → a FaultProxy in front of that real registry (stopped after the test)."""
    made: list[FaultProxy] = []

    def make(server: RegistryServer) -> FaultProxy:
        p = FaultProxy(server.host)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to the test."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]
    return f"t/{name}-{uuid.uuid4().hex[:6]}"


def client_for(host: str, **kw: Any) -> RegistryClient:
    """A client with fast retries and no docker config (unless ``env`` is given)."""
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("env", {"DOCKER_CONFIG": "/nonexistent-pbtest"})
    return RegistryClient(host, **kw)


class Counter:
    """A response hook for a client's session: records (method, path?query, status)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def __call__(self, r: Any, *a: Any, **kw: Any) -> Any:
        u = urlsplit(r.request.url)
        with self._lock:
            self.calls.append((r.request.method, u.path + (f"?{u.query}" if u.query else ""), r.status_code))
            for h in r.history:
                if h.status_code != 401:   # redirect hops are seen by the hook on their own
                    continue
                hu = urlsplit(h.request.url)
                self.calls.append((h.request.method, hu.path + (f"?{hu.query}" if hu.query else ""),
                                   h.status_code))
        return r

    def matching(self, method: str, path_re: str = ".*") -> list[tuple[str, str, int]]:
        return [c for c in self.calls if c[0] == method and re.search(path_re, c[1])]

    def attach(self, client: RegistryClient) -> RegistryClient:
        client.session.hooks["response"].append(self)
        return client


@pytest.fixture(scope="session")
def busybox_store(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Path:
    """A store root holding busybox:latest, imported once with the real CLI."""
    from conftest import PB
    root = tmp_path_factory.mktemp("src-store") / "store"
    PB(root).run("import", str(busybox_tar), "busybox:latest")
    return root


def os_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
