"""Registry errors: subclasses of :class:`pybuild.errors.RegistryError` with user hints.

Messages name the operation, the repository and the digest, then the registry's own code and
message, e.g. ``pushing blob sha256:… to 127.0.0.1:5000/app: BLOB_UPLOAD_INVALID: …``.
"""
from __future__ import annotations

import json
from typing import Any

from pybuild.errors import NotFound, RegistryError

__all__ = ["RegistryError", "RegistryAuthError", "RegistryNotFound", "RegistryUnavailable",
           "error_from_response", "parse_error_body", "hint_for"]


class RegistryAuthError(RegistryError):
    """The registry refused our credentials or asked for some we do not have (401/403)."""


class RegistryNotFound(RegistryError, NotFound):
    """The repository, manifest or blob does not exist (404); also a :class:`NotFound`."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached, or answered 429/5xx (after every retry, when retried).

    ``retry_after`` holds the server's ``Retry-After`` in seconds when it sent one.
    """

    retry_after: float | None = None


def parse_error_body(body: bytes) -> list[dict[str, Any]]:
    """The ``errors`` list of a distribution-spec error body (``[]`` when it is not one)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    errs = obj.get("errors") if isinstance(obj, dict) else None
    return [e for e in errs if isinstance(e, dict)] if isinstance(errs, list) else []


def _summary(errors: list[dict[str, Any]], status: int, reason: str) -> tuple[str, str]:
    """(first code, one-line text) for the parsed errors, or the HTTP status when none."""
    if not errors:
        return "", f"HTTP {status} {reason}".strip()
    parts = []
    for e in errors:
        text = f"{e.get('code', 'UNKNOWN')}: {e.get('message', '')}".rstrip(": ")
        detail = e.get("detail")
        if detail not in (None, "", [], {}):
            d = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True)
            text += f" ({d[:200]})"
        parts.append(text)
    return str(errors[0].get("code", "")), "; ".join(parts)


def hint_for(status: int, code: str, registry: str, *, sent_credentials: bool = False) -> str | None:
    """What a user can do about an error with this HTTP ``status`` and spec ``code``."""
    if status == 401 or code == "UNAUTHORIZED":
        if sent_credentials:
            return (f"the registry rejected the credentials for {registry}; "
                    f"log in again with `pybuild login {registry}`")
        return f"log in first: `pybuild login {registry} -u USER --password-stdin`"
    if status == 403 or code == "DENIED":
        return (f"your account has no access to this repository on {registry}; check the name, "
                f"or log in as another user with `pybuild login {registry}`")
    if status == 404 or code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN"):
        return "check the repository name and the tag or digest"
    if status == 429 or code == "TOOMANYREQUESTS":
        return "the registry is rate-limiting; wait a while and try again"
    if status >= 500:
        return "the registry failed on its side; try again later"
    if code in ("MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "DIGEST_INVALID",
                "SIZE_INVALID", "BLOB_UPLOAD_UNKNOWN"):
        return "the upload was refused; try again, and report it if it keeps failing"
    return None


def error_from_response(op: str, status: int, body: bytes, reason: str = "", *, registry: str = "",
                        sent_credentials: bool = False) -> RegistryError:
    """Build the right RegistryError subclass for a failed response to ``op``."""
    errors = parse_error_body(body)
    code, text = _summary(errors, status, reason)
    hint = hint_for(status, code, registry, sent_credentials=sent_credentials)
    message = f"{op}: {text}"
    if status in (401, 403) or code in ("UNAUTHORIZED", "DENIED"):
        return RegistryAuthError(message, code=code or ("UNAUTHORIZED" if status == 401 else "DENIED"),
                                 status=status, hint=hint)
    if status == 404:
        return RegistryNotFound(message, code=code, status=status, hint=hint)
    if status == 429 or status >= 500:
        return RegistryUnavailable(message, code=code, status=status, hint=hint)
    return RegistryError(message, code=code, status=status, hint=hint)
