"""Start the CNCF distribution registry (Debian's ``docker-registry``) on a free loopback port.

Shared by the registry tests (tests/registry_client/conftest.py) and the benchmark (bench/run.py,
which must run without pytest): standard library only.
"""
from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

__all__ = ["BINARY", "DistributionRegistry", "RegistryDidNotStart", "free_port"]

BINARY = "docker-registry"


class RegistryDidNotStart(RuntimeError):
    """The registry binary is missing, exited, or did not answer /v2/ in time (the message has
    the log's tail)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DistributionRegistry:
    """One ``docker-registry serve CONFIG`` process on 127.0.0.1:<free port>, storage and log in
    ``workdir``. ``auth_yaml`` is appended to the config (an ``auth:`` section); ``access_log``
    keeps the request log the tests count requests in. The constructor writes only the config."""

    def __init__(self, workdir: Path, auth_yaml: str = "", access_log: bool = True) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.config = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self.config.write_text(f"""version: 0.1
log:
  level: {"info" if access_log else "error"}
  accesslog:
    disabled: {"false" if access_log else "true"}
storage:
  filesystem:
    rootdirectory: {workdir / 'data'}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {self.host}
  secret: pb-{uuid.uuid4().hex}
{auth_yaml}""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> "DistributionRegistry":
        """Start it and wait until /v2/ answers (200, or 401 with auth). Raises RegistryDidNotStart."""
        binary = shutil.which(BINARY)
        if binary is None:
            raise RegistryDidNotStart(f"{BINARY} is required: apt-get install docker-registry")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([binary, "serve", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/v2/")
                status = c.getresponse().status
                c.close()
                if status in (200, 401):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RegistryDidNotStart(f"the registry did not start:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
