"""``ADD <url>``: download a remote file for a build step (never extracted, unlike local tars).

Like docker: the file lands as ``dest`` (or ``dest/<last URL path segment>`` when ``dest`` ends
with ``/``), mode 0600, mtime from ``Last-Modified`` when the server sends one. ``--checksum``
(``sha256:…``) is verified before the file is used.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from pybuild.errors import BuildError, UserError

__all__ = ["Download", "download", "is_url"]

_CHECKSUM = re.compile(r"^sha(256|384|512):([a-f0-9]+)$")


def is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Download:
    """A downloaded file: where it is, its name, sha256 and mtime."""

    path: Path
    name: str
    sha256: str
    mtime: float


def download(url: str, tmpdir: str, checksum: str | None = None, timeout: float = 60.0) -> Download:
    """Fetch ``url`` into ``tmpdir``. Raises BuildError (HTTP failure) or UserError (bad checksum
    syntax, checksum mismatch)."""
    import requests  # lazy: only builds with ADD <url> pay the import
    want = None
    if checksum is not None:
        m = _CHECKSUM.match(checksum)
        if not m:
            raise UserError(f"invalid --checksum {checksum!r}", hint="use --checksum=sha256:<hex>")
        want = (f"sha{m.group(1)}", m.group(2))
    name = posixpath.basename(urllib.parse.urlparse(url).path) or "index.html"
    hashers = {"sha256": hashlib.sha256()}
    if want and want[0] != "sha256":
        hashers[want[0]] = hashlib.new(want[0])
    fd, tmp = tempfile.mkstemp(dir=tmpdir, prefix=".download-")
    try:
        with requests.get(url, stream=True, timeout=timeout) as r:
            if r.status_code != 200:
                raise BuildError(f"ADD {url}: the server answered {r.status_code} {r.reason}")
            with os.fdopen(fd, "wb") as f:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
                    for h in hashers.values():
                        h.update(chunk)
            lm = r.headers.get("Last-Modified")
    except requests.RequestException as e:
        raise BuildError(f"ADD {url}: download failed: {e}", hint="check the URL and the network") from None
    mtime = 0.0
    if lm:
        try:
            import email.utils  # only when a download happens (slow to import)
            mtime = email.utils.parsedate_to_datetime(lm).timestamp()
        except (TypeError, ValueError):
            pass
    if want and hashers[want[0]].hexdigest() != want[1]:
        raise UserError(f"ADD {url}: checksum mismatch: expected {checksum}, got "
                        f"{want[0]}:{hashers[want[0]].hexdigest()}")
    return Download(Path(tmp), name, hashers["sha256"].hexdigest(), mtime)
