"""The in-suite fuzz run: every target, a fixed number of examples, deterministic
(``derandomize=True``), about 20 s in all. ``PYBUILD_FUZZ_MINUTES=10 pytest tests/fuzz -k long``
or ``python tests/fuzz/run_long.py`` fuzz for longer (see README.md)."""
from __future__ import annotations

import pytest

from .suite import TARGETS, close_world, hypothesis_test


@pytest.fixture(scope="module", autouse=True)
def _world_cleanup():  # type: ignore[no-untyped-def]
    yield
    close_world()


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz_quick(target) -> None:  # type: ignore[no-untyped-def]
    hypothesis_test(target, max_examples=target.quick_examples, deadline=None, derandomize=True,
                    database=None, print_blob=True)()
