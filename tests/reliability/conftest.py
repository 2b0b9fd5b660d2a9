"""Fixtures of the hostile-input tests (tests/conftest.py's ``busybox_tar`` and ``PB`` are shared)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import PB

from .hostile import Jail, Layer, gz


@pytest.fixture
def jail(tmp_path: Path) -> Jail:
    """Target roots (store, outputs, context, work) and a canary outside them."""
    j = Jail(tmp_path)
    yield j
    if not j.checked:
        j.check()  # a safety net: tests call jail.check() themselves


@pytest.fixture(scope="session")
def base_layer(busybox_tar: Path) -> Layer:
    """The busybox rootfs as a gzip layer: the bottom of every hostile image (RUN needs /bin/sh)."""
    data = busybox_tar.read_bytes()
    return Layer(data, blob=gz(data))


@pytest.fixture
def hpb(jail: Jail, busybox_tar: Path) -> PB:
    """A CLI runner on the jail's store, holding busybox:latest as the "other image" whose
    ``inspect`` must keep working whatever a hostile archive does."""
    pb = PB(jail.store)
    pb.run("import", str(busybox_tar), "busybox:latest")
    return pb
