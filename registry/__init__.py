"""OCI distribution client (push, pull, auth).

High level: :func:`pull`, :func:`push`, :func:`login`. Lower level: :class:`RegistryClient`
(one registry's API calls), :class:`RegistryAuth` (the requests auth loop), credentials from
docker's config.json (:func:`load_credentials`, :func:`save_login`), the transport policy
(:func:`transport_for`). Errors are :class:`pybuild.errors.RegistryError` subclasses.
"""
from .auth import Credentials, RegistryAuth, docker_config_path, load_credentials, save_login
from .client import (ProgressEvent, RegistryClient, RetryPolicy, Transport, transport_for)
from .errors import RegistryAuthError, RegistryError, RegistryNotFound, RegistryUnavailable
from .transfer import SourceRecord, login, pull, push

__all__ = [
    "pull", "push", "login",
    "RegistryClient", "RetryPolicy", "Transport", "transport_for", "ProgressEvent",
    "RegistryAuth", "Credentials", "load_credentials", "save_login", "docker_config_path",
    "RegistryError", "RegistryAuthError", "RegistryNotFound", "RegistryUnavailable",
    "SourceRecord",
]
