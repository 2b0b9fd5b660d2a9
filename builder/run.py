"""``pybuild run IMAGE [CMD…]``: run an image's command in the build sandbox.

The image's snapshots are the lower dirs; writes go to a throw-away upper dir, removed when the
process ends (every run is ``--rm``: pybuild keeps no containers). stdin, stdout and stderr are
the caller's; the exit code is the process's.
"""
from __future__ import annotations

import shutil
from typing import Sequence

from pybuild.errors import UserError
from pybuild.store.snapshots import LayerRef
from pybuild.store.store import Store

from .cgroups import Limits
from .sandbox import SandboxSpec, run_sandboxed
from .security import SecurityOpts

__all__ = ["run_image"]


def run_image(store: Store, name: str, command: Sequence[str] = (), *, network: str = "host",
              limits: Limits = Limits(), init: bool = False, entrypoint: str | None = None,
              security: SecurityOpts = SecurityOpts()) -> int:
    """Run ``name``'s entrypoint with ``command`` (or its Cmd); returns the exit code.

    Raises NotFound (unknown image), UserError (nothing to run), BuildError (sandbox set-up).
    """
    from pybuild.oci import Platform
    from .build import PullingResolver
    img = PullingResolver(store).resolve(name, Platform.host())  # like docker run: pull if missing
    cc = img.config.config
    ep = [entrypoint] if entrypoint else list(cc.Entrypoint or ())
    argv = ep + (list(command) if command else ([] if entrypoint else list(cc.Cmd or ())))
    if not argv:
        raise UserError(f"image {name} has no command to run", hint=f"give one: pybuild run {name} sh")
    with store.lease():
        lower = store.snapshots.ensure([LayerRef(d, i) for d, i in zip(img.manifest.layers, img.config.diff_ids)])
        upper, work, scratch = store.snapshots.prepare(), store.snapshots.prepare(), store.snapshots.prepare()
        try:
            env = list(cc.Env)
            if not any(e.startswith("PATH=") for e in env):
                env.append("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            spec = SandboxSpec(lower_dirs=lower, upper=upper, work=work, scratch=scratch / "sb", argv=argv,
                               env=env, cwd=cc.WorkingDir or "/", user=cc.User, hostname=img.id.hex[:12],
                               network=network, limits=limits, stdin=True, init=init, security=security)
            result = run_sandboxed(spec, on_output=None)
            if result.setup_error:
                import sys
                print(f"pybuild run: {result.setup_error}", file=sys.stderr)
            if result.oom_killed:
                import sys
                print("pybuild run: the process was killed: out of memory", file=sys.stderr)
            return result.exit_code
        finally:
            for d in (upper, work, scratch):
                shutil.rmtree(d, ignore_errors=True)
