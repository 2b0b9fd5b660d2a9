"""The ``pybuild`` command (and ``python -m pybuild``): the up-to-date check, then the CLI.

An unchanged rebuild is answered by :func:`pybuild.uptodate.replay` before click or the builder
load; everything else goes to :func:`pybuild.cli.main`.
"""
import sys


def main() -> int:
    """Run ``pybuild`` with ``sys.argv``; returns the exit code."""
    from pybuild.uptodate import replay
    rc = replay(sys.argv[1:])
    if rc is not None:
        return rc
    from pybuild.cli import main as cli_main
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
