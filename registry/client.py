"""A client for the OCI distribution API (the docker registry HTTP API v2).

One :class:`RegistryClient` talks to one registry. It pings ``/v2/``, checks, downloads (verified,
resumable with ``Range``), uploads (monolithic or chunked) and cross-repo mounts blobs, gets, heads
and puts manifests with their exact bytes, and lists tags and repositories across pages.

Guarantees:

- every request has connect and read timeouts (``$PYBUILD_REGISTRY_TIMEOUT``, see
  :func:`timeout_from_env`; 10 s to connect, 60 s of silence while reading by default), so a
  stalled registry costs bounded time, never a hang;
- ``429`` (honouring ``Retry-After``), ``5xx``, connection resets and timeouts are retried with
  bounded exponential backoff and jitter (:class:`RetryPolicy`, in ``retry.py``; token requests
  to the registry's token service get the same, see ``auth.py``), then end in a
  :class:`~registry.errors.RegistryUnavailable` naming the operation and the last answer (for a
  timeout: the registry's address, the limit, and a hint naming ``PYBUILD_REGISTRY_TIMEOUT``);
  a transfer that makes progress between failures gets a fresh retry budget;
- a downloaded blob is hashed while it streams into a store ingest and is only committed by the
  caller after ``Ingest.verify`` (digest and size) passed; an interrupted download resumes with
  ``Range: bytes=N-`` and keeps hashing;
- an upload hashes what it sends and refuses to finish one whose bytes do not match the
  descriptor; a failed chunk resumes from the offset the registry reports, or restarts in a new
  upload session; an upload whose completing answer was lost counts as done only when the
  registry then has the blob (HEAD);
- errors are :class:`pybuild.errors.RegistryError` subclasses whose message reads like
  ``pushing blob sha256:… to 127.0.0.1:5000/app: BLOB_UPLOAD_INVALID: …`` with a hint.

Transport policy (:func:`transport_for`): plain HTTP for loopback hosts (``localhost``,
``127.0.0.0/8``, ``::1``, any port) and for hosts listed in ``$PYBUILD_INSECURE_REGISTRIES``
(comma-separated ``host`` or ``host:port``); HTTPS otherwise, verified against
``$PYBUILD_CA_BUNDLE`` when set. ``docker.io`` is served by ``registry-1.docker.io``.
"""
from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Container, Iterator, Mapping
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from pybuild.errors import DigestMismatch, RegistryError, UserError
from pybuild.oci import Descriptor, Digest, MediaType

from .auth import Credentials, RegistryAuth, TokenServiceError, load_credentials
from .errors import RegistryAuthError, RegistryUnavailable, error_from_response
from .retry import RETRY_STATUSES as _RETRY_STATUSES, TRANSIENT as _TRANSIENT, Attempts as _Attempts, RetryPolicy
from .retry import broken as _broken, could_not_connect as _could_not_connect, reason as _reason
from .retry import retry_after as _retry_after, timed_out as _timed_out, unresolvable as _unresolvable
from .retry import TIMEOUT_ENV

__all__ = ["RegistryClient", "RetryPolicy", "Transport", "transport_for", "ProgressEvent",
           "Progress", "MANIFEST_ACCEPT", "DEFAULT_CHUNK_SIZE", "DEFAULT_MONOLITHIC_LIMIT",
           "DEFAULT_TIMEOUT", "TIMEOUT_ENV", "timeout_from_env"]

MANIFEST_ACCEPT = ", ".join([MediaType.OCI_INDEX, MediaType.OCI_MANIFEST, MediaType.DOCKER_LIST,
                             MediaType.DOCKER_MANIFEST])
DEFAULT_CHUNK_SIZE = 16 << 20
DEFAULT_MONOLITHIC_LIMIT = 16 << 20
MAX_MANIFEST_SIZE = 4 << 20
_DOWNLOAD_CHUNK = 1 << 16
DEFAULT_TIMEOUT = (10.0, 60.0)
USER_AGENT = "pybuild/0.1"


def timeout_from_env(env: Mapping[str, str] | None = None) -> tuple[float, float]:
    """The (connect, read) timeouts in seconds from ``$PYBUILD_REGISTRY_TIMEOUT``.

    ``SECONDS`` sets both; ``CONNECT,READ`` sets them apart; unset or empty gives
    :data:`DEFAULT_TIMEOUT` (10 s, 60 s). The read timeout is the longest silence tolerated
    while waiting for an answer or in the middle of one, not a limit on a whole transfer.
    Raises UserError for anything but one or two positive numbers.
    """
    env = os.environ if env is None else env
    text = (env.get(TIMEOUT_ENV) or "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 < v < float("inf") for v in values):
        raise UserError(f"{TIMEOUT_ENV}={text!r} is not a timeout",
                        hint=f"give seconds, e.g. {TIMEOUT_ENV}=120, or connect and read seconds: "
                             f"{TIMEOUT_ENV}=10,120")
    return (values[0], values[-1])


# -- transport policy --------------------------------------------------------------------------
@dataclass(frozen=True)
class Transport:
    """How to reach a registry: ``scheme://api_host`` with TLS verification ``verify``."""

    registry: str           # as written in references: "docker.io", "127.0.0.1:5000"
    scheme: str             # "http" or "https"
    api_host: str           # host[:port] of the API: "registry-1.docker.io", "127.0.0.1:5000"
    verify: bool | str = True

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.api_host}"


def _split_host_port(hostport: str) -> tuple[str, str]:
    """``[::1]:5000`` → ("::1", "5000"); ``host`` → ("host", "")."""
    hp = hostport.strip().lower()
    if hp.startswith("["):
        host, _, rest = hp[1:].partition("]")
        return host, rest.lstrip(":")
    if hp.count(":") > 1:          # a bare IPv6 address
        return hp, ""
    host, _, port = hp.partition(":")
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_for(registry: str, env: Mapping[str, str] | None = None) -> Transport:
    """The transport policy for ``registry`` (``host[:port]``; see the module docstring)."""
    env = os.environ if env is None else env
    host, port = _split_host_port(registry)
    api_host = "registry-1.docker.io" if registry in ("docker.io", "index.docker.io") else registry
    insecure = _is_loopback(host)
    for entry in (env.get("PYBUILD_INSECURE_REGISTRIES") or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        if "://" in entry:
            entry = urlsplit(entry).netloc
        eh, ep = _split_host_port(entry.rstrip("/"))
        if eh == host and (not ep or ep == port):
            insecure = True
    ca = env.get("PYBUILD_CA_BUNDLE")
    return Transport(registry, "http" if insecure else "https", api_host, ca if ca else True)


# -- progress ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProgressEvent:
    """A transfer event: ``action`` is one of ``exists`` (skipped, already there), ``mounted``,
    ``downloading``/``uploading`` (``done`` bytes so far), ``downloaded``/``uploaded``,
    ``resuming`` (after an interruption, from ``done``)."""

    action: str
    digest: Digest
    size: int
    done: int = 0


Progress = Callable[[ProgressEvent], None]


def _no_progress(event: ProgressEvent) -> None:
    pass


def _with_query(url: str, extra: Mapping[str, str]) -> str:
    """``url`` with ``extra`` query parameters added (its own parameters are kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(extra.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _media_type(resp: requests.Response) -> str:
    return resp.headers.get("Content-Type", "").split(";", 1)[0].strip()


# -- the client --------------------------------------------------------------------------------
class RegistryClient:
    """Distribution-API calls against one registry (``host[:port]`` as in a reference).

    Construction does no I/O. ``credentials`` are used when given; otherwise docker's
    config.json / credential helpers are consulted lazily on the first auth challenge (pass
    ``anonymous=True`` to never look). ``timeout`` is (connect, read) seconds, by default from
    ``$PYBUILD_REGISTRY_TIMEOUT`` in ``env`` (:func:`timeout_from_env`; UserError when it is
    malformed). Safe to share between threads for blob transfers.
    """

    def __init__(self, registry: str, *, credentials: Credentials | None = None,
                 anonymous: bool = False, env: Mapping[str, str] | None = None,
                 session: requests.Session | None = None, retry: RetryPolicy | None = None,
                 timeout: tuple[float, float] | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 monolithic_limit: int = DEFAULT_MONOLITHIC_LIMIT,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.registry = registry
        self.transport = transport_for(registry, env)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout or timeout_from_env(os.environ if env is None else env)
        self.chunk_size = chunk_size
        self.monolithic_limit = monolithic_limit
        self._sleep = sleep
        self.session = session or requests.Session()
        self.session.verify = self.transport.verify
        self.session.headers.setdefault("User-Agent", USER_AGENT)
        token_session = requests.Session()
        token_session.verify = self.transport.verify
        token_session.headers["User-Agent"] = USER_AGENT
        env_copy = dict(os.environ if env is None else env)
        loader = None if anonymous else (lambda: load_credentials(registry, env_copy))
        self.auth = RegistryAuth(registry, self.transport.api_host, credentials=credentials,
                                 loader=loader, token_session=token_session, timeout=self.timeout,
                                 retry=self.retry, sleep=sleep)
        self.session.auth = self.auth
        self._lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        """The absolute URL of an API ``path`` (``/v2/...``)."""
        return self.transport.base_url + path

    def where(self, repo: str) -> str:
        """``registry/repo`` as shown in messages."""
        return f"{self.registry}/{repo}"

    def _raise_for(self, op: str, resp: requests.Response) -> RegistryError:
        body = b"" if resp.request.method == "HEAD" else resp.content[:65536]
        sent = resp.request.headers.get("Authorization") or ""
        sent_basic = (sent.decode("latin-1") if isinstance(sent, bytes) else sent).startswith("Basic ")
        return error_from_response(op, resp.status_code, body, resp.reason or "",
                                   registry=self.registry,
                                   sent_credentials=sent_basic or self._had_credentials())

    def _had_credentials(self) -> bool:
        try:
            return self.auth.credentials is not None
        except Exception:
            return False

    def _connection_error(self, op: str, e: Exception) -> RegistryError:
        if isinstance(e, requests.exceptions.SSLError):
            return RegistryError(
                f"{op}: TLS error talking to {self.transport.base_url}: {e}", code="TLS",
                hint=("set PYBUILD_CA_BUNDLE to the registry's CA certificate, or, for a registry "
                      f"that speaks plain HTTP, add {self.registry} to PYBUILD_INSECURE_REGISTRIES"))
        text, hint = self._failure(e)
        return RegistryUnavailable(f"{op}: {text}", code="TIMEOUT" if _timed_out(e) else "", hint=hint)

    def _failure(self, e: Exception) -> tuple[str, str]:
        """(what went wrong, what to do) for a connection-level failure: no connection, a
        timeout, or a connection that broke (reset, closed) in the middle of an exchange."""
        base = self.transport.base_url
        if _could_not_connect(e):
            return (f"cannot reach {base}: {_reason(e)}",
                    "check that the registry is running and the address is right")
        if _timed_out(e):
            return self._timeout_text(e), self._timeout_hint()
        return (f"the connection to {base} broke: {_broken(e)}",
                f"the connection to {self.registry} keeps breaking; check the network (and any "
                "proxy or load balancer in between) and try again")

    def _timeout_text(self, e: BaseException) -> str:
        """What timed out, with the registry's address and the limit."""
        if isinstance(e, requests.exceptions.ConnectTimeout):
            return f"timed out: could not connect to {self.transport.base_url} within {self.timeout[0]:g}s"
        return f"timed out: no answer from {self.transport.base_url} within {self.timeout[1]:g}s"

    def _timeout_hint(self) -> str:
        return (f"{self.registry} is slow or stalled; try again later, or give it more time with "
                f"{TIMEOUT_ENV}=SECONDS (now {self.timeout[1]:g})")

    def _broken_text(self, e: Exception, where: str) -> tuple[str, str]:
        """(what went wrong, what to do) for a response body that broke off ``where``."""
        if _timed_out(e):
            return (f"the answer stalled {where}: no data from {self.transport.base_url} for "
                    f"{self.timeout[1]:g}s", self._timeout_hint())
        return f"the answer broke off {where}: {_broken(e)}", self._failure(e)[1]

    def request(self, method: str, url: str, op: str, *, ok: Container[int] = (200,),
                retry: bool = True, headers: Mapping[str, str] | None = None,
                data: bytes | None = None, stream: bool = False,
                params: Mapping[str, str] | None = None) -> requests.Response:
        """Send one API request with timeouts, retrying transient failures when ``retry``.

        Returns the response when its status is in ``ok`` (the caller closes streamed ones).
        Raises a RegistryError subclass otherwise: RegistryUnavailable for transient failures
        (after the retries), RegistryAuthError, TokenServiceError (the token service failed,
        after its own retries; never retried here), RegistryNotFound, or RegistryError.
        """
        attempts = _Attempts(self.retry, op, self._sleep)
        while True:
            try:
                resp = self.session.request(method, url, headers=dict(headers or {}), data=data,
                                            stream=stream, params=params, timeout=self.timeout)
            except requests.exceptions.SSLError as e:
                raise self._connection_error(op, e) from None
            except (RegistryAuthError, TokenServiceError) as e:   # from the auth loop (token service)
                raise type(e)(f"{op}: {e.message}", code=e.code, status=e.status, hint=e.hint) from None
            except _TRANSIENT as e:
                if not retry or _unresolvable(e):  # a host name that does not resolve stays so
                    raise self._connection_error(op, e) from None
                last, hint = self._failure(e)
                attempts.again(last, hint=hint)
                continue
            if resp.status_code in ok:
                return resp
            if retry and resp.status_code in _RETRY_STATUSES:
                err = self._raise_for(op, resp)
                resp.close()
                attempts.again(f"HTTP {resp.status_code} ({err.message[len(op) + 2:]})",
                               _retry_after(resp), resp.status_code, err.code, err.hint)
                continue
            err = self._raise_for(op, resp)
            if isinstance(err, RegistryUnavailable):
                err.retry_after = _retry_after(resp)
            resp.close()
            raise err

    # -- base ----------------------------------------------------------------------------------
    def ping(self) -> None:
        """GET ``/v2/`` (authenticating if challenged). Raises RegistryError subclasses."""
        r = self.request("GET", self.url("/v2/"), f"contacting {self.registry}")
        r.close()

    # -- blobs ---------------------------------------------------------------------------------
    def blob_exists(self, repo: str, digest: Digest) -> int | None:
        """The size of blob ``digest`` in ``repo``, or None when the registry lacks it."""
        op = f"checking blob {digest} in {self.where(repo)}"
        r = self.request("HEAD", self.url(f"/v2/{repo}/blobs/{digest}"), op, ok=(200, 404))
        r.close()
        if r.status_code == 404:
            return None
        try:
            return int(r.headers.get("Content-Length", "-1"))
        except ValueError:
            return -1

    def fetch_blob(self, repo: str, desc: Descriptor, sink: Any,
                   progress: Progress | None = None) -> None:
        """Stream blob ``desc`` from ``repo`` into ``sink`` (a store ``Ingest``: ``write``,
        ``size``, ``verify``) and verify it (digest and size).

        An interrupted stream resumes with ``Range: bytes=N-`` (a server that ignores the range
        gets its first N bytes skipped); the retry budget starts afresh after any progress. The caller commits or aborts the ingest. Raises
        DigestMismatch (the ingest is then discarded), RegistryUnavailable after the retries, or
        another RegistryError.
        """
        progress = progress or _no_progress
        op = f"pulling blob {desc.digest} from {self.where(repo)}"
        url = self.url(f"/v2/{repo}/blobs/{desc.digest}")
        attempts = _Attempts(self.retry, op, self._sleep)
        progress(ProgressEvent("downloading", desc.digest, desc.size, sink.size))
        while True:
            start = sink.size
            headers = {"Range": f"bytes={start}-"} if start else {}
            if start:
                progress(ProgressEvent("resuming", desc.digest, desc.size, start))
            resp = self.request("GET", url, op, ok=(200, 206), stream=True, headers=headers)
            try:
                skip = self._resume_skip(resp, start, op)
                for chunk in resp.iter_content(_DOWNLOAD_CHUNK):
                    if skip:
                        drop = min(skip, len(chunk))
                        chunk, skip = chunk[drop:], skip - drop
                        if not chunk:
                            continue
                    sink.write(chunk)
                    if sink.size > desc.size:
                        sink.verify(desc.digest, desc.size)   # raises: more bytes than declared
                    progress(ProgressEvent("downloading", desc.digest, desc.size, sink.size))
                if sink.size >= desc.size:
                    break
                why, hint = f"the stream ended after {sink.size} of {desc.size} bytes", None
            except _TRANSIENT as e:
                why, hint = self._broken_text(e, f"after {sink.size} of {desc.size} bytes")
            finally:
                resp.close()
            if sink.size > start:      # progress since the last break: a fresh retry budget
                attempts = _Attempts(self.retry, op, self._sleep)
            attempts.again(why, hint=hint)
        sink.verify(desc.digest, desc.size)
        progress(ProgressEvent("downloaded", desc.digest, desc.size, desc.size))

    @staticmethod
    def _resume_skip(resp: requests.Response, start: int, op: str) -> int:
        """How many leading bytes of ``resp`` we already have (0 for a matching 206)."""
        if not start:
            return 0
        if resp.status_code != 206:
            return start             # the server sent the whole blob again
        first = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-", 1)[0]
        if first.strip() != str(start):
            raise RegistryError(f"{op}: asked for bytes from {start}, got Content-Range "
                                f"{resp.headers.get('Content-Range')!r}", status=206)
        return 0

    def start_upload(self, repo: str, op: str) -> str:
        """POST a new upload session; returns its absolute Location (query kept)."""
        r = self.request("POST", self.url(f"/v2/{repo}/blobs/uploads/"), op, ok=(202,),
                         headers={"Content-Length": "0"})
        r.close()
        return self._location(r, op)

    def _location(self, resp: requests.Response, op: str, default: str | None = None) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            if default is not None:
                return default
            raise RegistryError(f"{op}: the registry sent no upload Location (HTTP {resp.status_code})",
                                status=resp.status_code)
        return urljoin(resp.url, loc)

    def mount_blob(self, repo: str, digest: Digest, from_repo: str) -> str | None:
        """Ask to mount ``digest`` from ``from_repo`` into ``repo`` (same registry).

        Returns None when mounted (201), else the Location of the upload session the registry
        opened instead (202), to pass to ``upload_blob``.
        """
        op = f"mounting blob {digest} from {self.where(from_repo)} into {self.where(repo)}"
        r = self.request("POST", self.url(f"/v2/{repo}/blobs/uploads/"), op, ok=(201, 202),
                         params={"mount": str(digest), "from": from_repo},
                         headers={"Content-Length": "0"})
        r.close()
        return None if r.status_code == 201 else self._location(r, op)

    def upload_blob(self, repo: str, desc: Descriptor, opener: Callable[[], BinaryIO], *,
                    location: str | None = None, progress: Progress | None = None) -> None:
        """Upload blob ``desc`` to ``repo``; ``opener()`` returns a fresh stream of its bytes.

        Blobs smaller than ``monolithic_limit`` go in one PUT; larger ones in PATCH chunks of
        ``chunk_size`` with ``Content-Range`` and a final PUT. The bytes sent are hashed and must
        match ``desc`` before the upload is completed (DigestMismatch otherwise: the local copy is
        corrupt). ``location`` continues an upload session already opened (e.g. by a refused
        mount). A reset or timed-out request is retried (a chunk from the offset the registry
        reports; a completing PUT whose answer was lost counts as done only if the registry then
        has the blob); every chunk that goes through renews the retry budget. Returns only once
        the registry confirmed the blob. Raises RegistryUnavailable (after the retries),
        DigestMismatch, other RegistryError subclasses.
        """
        progress = progress or _no_progress
        op = f"pushing blob {desc.digest} to {self.where(repo)}"
        progress(ProgressEvent("uploading", desc.digest, desc.size, 0))
        if desc.size < self.monolithic_limit:
            self._upload_monolithic(repo, desc, opener, location, op)
        else:
            self._upload_chunked(repo, desc, opener, location, op, progress)
        progress(ProgressEvent("uploaded", desc.digest, desc.size, desc.size))

    def _read_verified(self, desc: Descriptor, opener: Callable[[], BinaryIO]) -> bytes:
        with opener() as f:
            data = f.read(desc.size + 1)
        if len(data) != desc.size:
            raise DigestMismatch(f"blob {desc.digest}: expected {desc.size} bytes, read {len(data)}",
                                 expected=str(desc.digest),
                                 hint="the store is corrupt; remove the image and pull/build it again")
        desc.digest.verify(data, "blob")
        return data

    def _upload_monolithic(self, repo: str, desc: Descriptor, opener: Callable[[], BinaryIO],
                           location: str | None, op: str) -> None:
        data = self._read_verified(desc, opener)
        attempts = _Attempts(self.retry, op, self._sleep)
        while True:
            loc = location or self.start_upload(repo, op)
            location = None   # a retry starts a new session
            try:
                r = self.request("PUT", _with_query(loc, {"digest": str(desc.digest)}), op,
                                 ok=(201, 204), retry=False, data=data,
                                 headers={"Content-Type": "application/octet-stream"})
                r.close()
                return
            except RegistryUnavailable as e:
                if not e.status and self._landed(repo, desc):
                    return         # the answer was lost, the upload was not
                attempts.again(e.message[len(op) + 2:], e.retry_after, e.status, e.code, e.hint)

    def _upload_chunked(self, repo: str, desc: Descriptor, opener: Callable[[], BinaryIO],
                        location: str | None, op: str, progress: Progress) -> None:
        hasher = desc.digest.new_hasher()
        hashed = 0
        checked = False
        attempts = _Attempts(self.retry, op, self._sleep)
        loc = location or self.start_upload(repo, op)
        offset = 0
        with opener() as f:
            while True:
                while offset < desc.size:
                    f.seek(offset)
                    chunk = f.read(min(self.chunk_size, desc.size - offset))
                    if not chunk:
                        raise DigestMismatch(f"blob {desc.digest}: expected {desc.size} bytes, read {offset}",
                                             expected=str(desc.digest))
                    end = offset + len(chunk)
                    if end > hashed:
                        hasher.update(chunk[hashed - offset:])
                        hashed = end
                    try:
                        r = self.request("PATCH", loc, op, ok=(202, 204), retry=False, data=chunk, headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{end - 1}"})
                        r.close()
                        loc = self._location(r, op, default=loc)
                        offset = end
                        attempts = _Attempts(self.retry, op, self._sleep)   # progress: a fresh budget
                        progress(ProgressEvent("uploading", desc.digest, desc.size, offset))
                    except RegistryUnavailable as e:
                        attempts.again(e.message[len(op) + 2:], e.retry_after, e.status, e.code, e.hint)
                        loc, offset = self._resume_upload(repo, loc, op)
                        progress(ProgressEvent("resuming", desc.digest, desc.size, offset))
                if not checked:
                    if hashed != desc.size:
                        raise RegistryError(f"{op}: the registry reports {offset} bytes received, "
                                            f"but only {hashed} were sent",
                                            hint="the registry lost track of the upload; try again")
                    actual = Digest.from_hasher(hasher)
                    if actual != desc.digest:
                        raise DigestMismatch(f"blob {desc.digest}: the local copy hashes to {actual}",
                                             expected=str(desc.digest), actual=str(actual),
                                             hint="the store is corrupt; remove the image and pull/build it again")
                    checked = True
                try:
                    r = self.request("PUT", _with_query(loc, {"digest": str(desc.digest)}), op,
                                     ok=(201, 204), retry=False, headers={"Content-Length": "0"})
                    r.close()
                    return
                except RegistryUnavailable as e:
                    if not e.status and self._landed(repo, desc):
                        return     # the answer was lost, the upload was not
                    attempts.again(e.message[len(op) + 2:], e.retry_after, e.status, e.code, e.hint)
                    loc, offset = self._resume_upload(repo, loc, op)
                    progress(ProgressEvent("resuming", desc.digest, desc.size, offset))

    def _landed(self, repo: str, desc: Descriptor) -> bool:
        """True when the registry has blob ``desc`` (one HEAD, no retries; False when unsure).

        Asked after an upload's completing request got no answer: the registry may have
        completed the upload and only its answer was lost."""
        try:
            r = self.request("HEAD", self.url(f"/v2/{repo}/blobs/{desc.digest}"),
                             f"checking blob {desc.digest} in {self.where(repo)}", ok=(200, 404),
                             retry=False)
            r.close()
        except RegistryError:
            return False
        return r.status_code == 200 and r.headers.get("Content-Length") == str(desc.size)

    def _resume_upload(self, repo: str, loc: str, op: str) -> tuple[str, int]:
        """Where an interrupted upload stands: (location, next offset) from the registry's
        upload status, or a new session from 0 when the old one is gone or unreadable."""
        try:
            r = self.request("GET", loc, op, ok=(204,))
            r.close()
            rng = r.headers.get("Range", "")
            last = int(rng.split("-", 1)[1]) if "-" in rng else -1
            return self._location(r, op, default=loc), last + 1
        except (RegistryError, ValueError, IndexError):
            return self.start_upload(repo, op), 0

    # -- manifests -----------------------------------------------------------------------------
    def get_manifest(self, repo: str, reference: str) -> tuple[Descriptor, bytes]:
        """GET a manifest or index by tag or digest; returns its descriptor and exact bytes.

        By digest, the bytes must hash to it; by tag, to ``Docker-Content-Digest`` when sent.
        Raises DigestMismatch, RegistryNotFound, other RegistryError subclasses.
        """
        op = f"pulling manifest {reference} from {self.where(repo)}"
        r, data = self._get_small(self.url(f"/v2/{repo}/manifests/{reference}"), op,
                                  {"Accept": MANIFEST_ACCEPT}, MAX_MANIFEST_SIZE)
        actual = Digest.of(data)
        expected = reference if reference.startswith("sha") and ":" in reference else \
            r.headers.get("Docker-Content-Digest", "")
        if expected:
            want = Digest.parse(expected)
            want.verify(data, f"manifest {reference} from {self.where(repo)}")
            actual = want
        mt = _media_type(r)
        if mt not in MediaType.MANIFESTS | MediaType.INDEXES:
            try:
                mt = str(json.loads(data).get("mediaType") or mt)
            except (ValueError, AttributeError):
                pass
        return Descriptor(mt, actual, len(data)), data

    def _get_small(self, url: str, op: str, headers: Mapping[str, str],
                   limit: int) -> tuple[requests.Response, bytes]:
        """GET a small document whole (at most ``limit`` bytes), retrying a body that breaks off."""
        attempts = _Attempts(self.retry, op, self._sleep)
        while True:
            r = self.request("GET", url, op, headers=headers, stream=True)
            buf = bytearray()
            try:
                for chunk in r.iter_content(_DOWNLOAD_CHUNK):
                    buf += chunk
                    if len(buf) > limit:
                        raise RegistryError(f"{op}: the document is larger than {limit} bytes")
                return r, bytes(buf)
            except _TRANSIENT as e:
                why, hint = self._broken_text(e, f"after {len(buf)} bytes")
                attempts.again(why, hint=hint)
            finally:
                r.close()

    def head_manifest(self, repo: str, reference: str) -> Descriptor | None:
        """The descriptor of a manifest (HEAD; no body), or None when it does not exist."""
        op = f"checking manifest {reference} in {self.where(repo)}"
        r = self.request("HEAD", self.url(f"/v2/{repo}/manifests/{reference}"), op, ok=(200, 404),
                         headers={"Accept": MANIFEST_ACCEPT})
        r.close()
        if r.status_code == 404:
            return None
        dig = r.headers.get("Docker-Content-Digest")
        if not dig:
            raise RegistryError(f"{op}: the registry sent no Docker-Content-Digest")
        return Descriptor(_media_type(r), Digest.parse(dig), int(r.headers.get("Content-Length", "0")))

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> Digest:
        """PUT manifest ``data`` (exact bytes) under tag or digest ``reference``; returns its
        digest, checked against ``Docker-Content-Digest`` when the registry sends one."""
        ours = Digest.of(data)
        op = f"pushing manifest {ours} to {self.where(repo)}:{reference}" \
            if not reference.startswith("sha") else f"pushing manifest {ours} to {self.where(repo)}"
        r = self.request("PUT", self.url(f"/v2/{repo}/manifests/{reference}"), op, ok=(200, 201, 202, 204),
                         data=data, headers={"Content-Type": media_type})
        r.close()
        theirs = r.headers.get("Docker-Content-Digest")
        if theirs and Digest.parse(theirs) != ours:
            raise DigestMismatch(f"{op}: the registry says it stored {theirs}",
                                 expected=str(ours), actual=theirs,
                                 hint="the registry rewrote the manifest; it may not support this media type")
        return ours

    # -- listings ------------------------------------------------------------------------------
    def _pages(self, url: str, op: str, key: str, page_size: int | None) -> Iterator[str]:
        params = {"n": str(page_size)} if page_size else None
        seen = 0
        while url:
            r = self.request("GET", url, op, params=params)
            try:
                obj = r.json()
            except ValueError:
                raise RegistryError(f"{op}: the answer is not JSON") from None
            finally:
                r.close()
            for item in obj.get(key) or []:
                yield str(item)
            nxt = r.links.get("next", {}).get("url")
            url = urljoin(r.url, nxt) if nxt else ""
            params = None      # the next link carries n and last
            seen += 1
            if seen > 100000:
                raise RegistryError(f"{op}: too many pages")

    def list_tags(self, repo: str, page_size: int | None = None) -> list[str]:
        """Every tag of ``repo``, following ``Link: <…>; rel="next"`` pages (``?n=page_size``)."""
        return list(self._pages(self.url(f"/v2/{repo}/tags/list"), f"listing tags of {self.where(repo)}",
                                "tags", page_size))

    def list_repositories(self, page_size: int | None = None) -> list[str]:
        """Every repository in the registry's catalog, following pages."""
        return list(self._pages(self.url("/v2/_catalog"), f"listing repositories of {self.registry}",
                                "repositories", page_size))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
