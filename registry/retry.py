"""Retries shared by every registry exchange (the API and the token service).

:class:`RetryPolicy` (bounded exponential backoff with jitter), :class:`Attempts` (one
operation's tries against it, ending in :class:`~registry.errors.RegistryUnavailable` or the
error class it is given), :func:`retry_after` (``Retry-After``), the statuses and exceptions that
are worth another try (:data:`RETRY_STATUSES`, :data:`TRANSIENT`), and the helpers that say in
words what went wrong with a connection (:func:`could_not_connect`, :func:`timed_out`,
:func:`broken`, :func:`reason`).
"""
from __future__ import annotations

import email.utils
import http.client
import random
import socket
import time
from dataclasses import dataclass
from typing import Callable

import requests
import urllib3.exceptions

from pybuild.errors import RegistryError

from .errors import RegistryUnavailable

__all__ = ["RetryPolicy", "Attempts", "retry_after", "RETRY_STATUSES", "TIMEOUT_ENV", "TRANSIENT", "unresolvable",
           "could_not_connect", "timed_out", "broken", "reason", "chain"]

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
TIMEOUT_ENV = "PYBUILD_REGISTRY_TIMEOUT"   # (connect, read) seconds: see client.timeout_from_env
TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def unresolvable(e: BaseException) -> bool:
    """True for a name-resolution failure (retrying it only delays the error)."""
    text = str(e)
    return "Name or service not known" in text or "Failed to resolve" in text or "nodename nor servname" in text


def chain(e: BaseException) -> list[BaseException]:
    """``e`` and every exception it wraps (``reason``, ``args``, cause, context), outermost first."""
    out: list[BaseException] = []
    todo: list[BaseException] = [e]
    seen: set[int] = set()
    while todo:
        x = todo.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        out.append(x)
        for nxt in (getattr(x, "reason", None), *getattr(x, "args", ()), x.__cause__, x.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return out


def could_not_connect(e: BaseException) -> bool:
    """True when no connection was made at all (refused, unresolvable, unroutable)."""
    return any(isinstance(x, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError))
               for x in chain(e))


def timed_out(e: BaseException) -> bool:
    """True when ``e``, or an exception it wraps, is a timeout (requests wraps urllib3's read
    timeouts during a streamed body in a plain ``ConnectionError``). urllib3's
    NewConnectionError derives from its ConnectTimeoutError but is a refusal, not a timeout."""
    return not could_not_connect(e) and any(
        isinstance(x, (requests.Timeout, urllib3.exceptions.TimeoutError, socket.timeout))
        for x in chain(e))


def broken(e: BaseException) -> str:
    """How an established connection broke, in words."""
    for x in reversed(chain(e)):          # innermost first
        if isinstance(x, ConnectionResetError):
            return "the connection was reset"
        if isinstance(x, BrokenPipeError):
            return "the connection was closed while sending"
        if isinstance(x, http.client.RemoteDisconnected):
            return "the connection was closed without an answer"
    return reason(e)


def reason(e: BaseException) -> str:
    """The innermost cause of a requests/urllib3 connection error, without the pool noise."""
    inner: object = e
    while True:
        nxt = getattr(inner, "reason", None) or (inner.args[0] if isinstance(inner, requests.RequestException)
                                                 and inner.args and isinstance(inner.args[0], Exception)
                                                 else None)
        if nxt is None or nxt is inner or not isinstance(nxt, Exception):
            break
        inner = nxt
    args = getattr(inner, "args", ())
    # urllib3's ProtocolError is ("Connection broken: …", the cause): its text is enough
    text = args[0] if len(args) > 1 and isinstance(args[0], str) else str(inner)
    # urllib3 prefixes "<urllib3.connection.HTTPConnection object at 0x…>: "
    return text.split(">: ", 1)[-1] if text.startswith("<") else text


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter.

    At most ``tries`` attempts per operation; the n-th wait is ``base_delay * 2**n`` (at most
    ``max_delay``) scaled by a random factor in [0.5, 1], or the server's ``Retry-After`` (which
    may exceed ``max_delay``); no wait is started that would pass ``total`` seconds since the
    first attempt.
    """

    tries: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    total: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(0.0, retry_after)
        return min(self.max_delay, self.base_delay * (2 ** attempt)) * random.uniform(0.5, 1.0)


def retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(int(value.strip()))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Attempts:
    """Counts the tries of one operation against a RetryPolicy."""

    def __init__(self, policy: RetryPolicy, op: str, sleep: Callable[[float], None],
                 error: type[RegistryError] = RegistryUnavailable) -> None:
        self.policy = policy
        self.op = op
        self.error = error
        self.n = 0
        self.start = time.monotonic()
        self.last = ""
        self._sleep = sleep

    def again(self, last: str, retry_after: float | None = None, status: int = 0,
              code: str = "", hint: str | None = None) -> None:
        """Wait before the next try, or raise ``error`` (RegistryUnavailable unless the
        constructor was given another RegistryError class) when the budget is spent.

        ``last`` describes the failure; ``hint`` (what to do about that failure) becomes the
        error's hint when this was the last try.
        """
        self.n += 1
        self.last = last
        wait = self.policy.delay(self.n - 1, retry_after)
        spent = time.monotonic() - self.start
        if self.n >= self.policy.tries or spent + wait > self.policy.total:
            why = f"after {self.n} tries" if self.n >= self.policy.tries else \
                f"after {self.n} tries in {spent:.0f}s (waiting {wait:.1f}s more would pass " \
                f"the {self.policy.total:g}s limit)"
            raise self.error(f"{self.op}: giving up {why}; last: {last}", status=status,
                             code=code, hint=hint or "the registry is failing or unreachable; "
                             "check it and try again later")
        self._sleep(wait)
