"""The fuzz suite: each target's input strategy and check, and a driver that runs them for a
time budget (used by ``test_fuzz_long.py`` and ``run_long.py``)."""
from __future__ import annotations

import os
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from . import strategies as S
from . import targets as T

REPO = Path(__file__).resolve().parent.parent.parent

_WORLD: T.ExtractWorld | None = None


def _world() -> T.ExtractWorld:
    global _WORLD
    if _WORLD is None:
        _WORLD = T.ExtractWorld()
    return _WORLD


def close_world() -> None:
    global _WORLD
    if _WORLD is not None:
        _WORLD.close()
        _WORLD = None


def _extract(data: bytes, mode: str) -> None:
    T.check_extract_layer(_world(), data, mode)


@dataclass(frozen=True)
class Target:
    name: str
    strategies: dict[str, st.SearchStrategy[Any]]
    check: Callable[..., None]
    quick_examples: int          # examples in the in-suite quick run
    weight: float = 1.0          # share of a long run's time budget




@st.composite
def _layer(draw: st.DrawFn) -> bytes:
    return draw(S.layer_tar(str(_world().outside)))


TARGETS: list[Target] = [
    Target("parse", {"text": S.dockerfile_text}, T.check_parse, 600, 2.0),
    Target("parse_instruction", {"text": S.instruction_text, "escape": S.escape_char}, T.check_parse_instruction,
           300, 1.5),
    Target("expand_word", {"word": S.expansion_word, "env": S.environment, "escape": S.escape_char},
           T.check_expand_word, 500, 1.5),
    Target("expand_words", {"text": S.expansion_word, "env": S.environment, "escape": S.escape_char},
           T.check_expand_words, 400, 1.0),
    Target("expand_heredoc_env_pairs", {"text": S.expansion_word, "env": S.environment, "escape": S.escape_char},
           T.check_expand_other, 200, 0.5),
    Target("parse_reference", {"text": S.reference_text}, T.check_parse_reference, 500, 1.0),
    Target("normalize_name", {"name": st.one_of(S.member_name, st.text(max_size=30))}, T.check_normalize_name,
           300, 0.5),
    Target("extract_layer", {"data": _layer(), "mode": st.sampled_from(["apply", "overlay"])}, _extract, 400, 3.0),
]
BY_NAME = {t.name: t for t in TARGETS}

SUPPRESS = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
            HealthCheck.large_base_example]


def hypothesis_test(target: Target, check: Callable[..., None] | None = None,
                    **settings_kw: Any) -> Callable[[], None]:
    """``check`` (default ``target.check``) wrapped in ``@given`` with ``settings_kw``."""
    fn = check or target.check

    @settings(suppress_health_check=SUPPRESS, **settings_kw)
    @given(**target.strategies)
    def run(**kw: Any) -> None:
        fn(**kw)
    return run


_OWN_CODE = tuple(str(REPO / d) + os.sep for d in ("pybuild", "store", "builder", "registry"))


def signature(target: str, e: BaseException) -> str:
    """What makes two failures "the same bug": the exception type and the innermost frame in
    pybuild's own code (or, for a broken contract, the assertion's first words)."""
    where = ""
    for fs in traceback.extract_tb(e.__traceback__):
        if fs.filename.startswith(_OWN_CODE):
            where = f"{os.path.relpath(fs.filename, REPO)}:{fs.lineno}"
    if isinstance(e, AssertionError) and not where.startswith(("pybuild", "store", "builder", "registry")):
        where = (str(e).splitlines() or [""])[0][:60]
    return f"{target}: {type(e).__name__} at {where or '?'}"


@dataclass
class Finding:
    signature: str
    count: int
    example: str             # the smallest input seen, as Python call arguments
    error: str               # the exception of that input
    trace: str


@dataclass
class LongResult:
    seconds: float
    examples: dict[str, int] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)


def run_for(minutes: float, names: list[str] | None = None, batch: int = 1000, seed: int | None = None,
            findings_dir: Path | None = None, log: Callable[[str], None] = print) -> LongResult:
    """Run the targets one after the other, each for its weighted share of ``minutes``, in
    Hypothesis runs of ``batch`` random examples (a fresh seed each run).

    A failing input does not stop the run: it is recorded under its :func:`signature` (count,
    smallest input, exception), so one known bug does not hide the next. Findings are written to
    ``findings_dir`` as they appear."""
    chosen = [BY_NAME[n] for n in names] if names else TARGETS
    total_w = sum(t.weight for t in chosen)
    rng = random.Random(seed)
    result = LongResult(0.0)
    start = time.monotonic()
    T.COUNTS.clear()

    def record(t: Target, kw: dict[str, Any], e: BaseException) -> None:
        sig = signature(t.name, e)
        example = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        f = result.findings.get(sig)
        if f is None:
            log(f"  FINDING {sig}: {type(e).__name__}: {str(e)[:200]}")
        if f is None or len(example) < len(f.example):
            f = Finding(sig, f.count if f else 0, example, f"{type(e).__name__}: {e}",
                        "".join(traceback.format_exception(e)))
            result.findings[sig] = f
            if findings_dir is not None:
                findings_dir.mkdir(parents=True, exist_ok=True)
                name = "".join(c if c.isalnum() or c in "-_." else "_" for c in sig)[:120]
                (findings_dir / f"{name}.txt").write_text(
                    f"{sig}\n\nsmallest input:\n  {t.check.__name__}({example})\n\n{f.error}\n\n{f.trace}")
        f.count += 1

    try:
        for t in chosen:
            budget = minutes * 60 * t.weight / total_w
            t_end = time.monotonic() + budget
            n_batches = 0

            def check(_t: Target = t, **kw: Any) -> None:
                try:
                    _t.check(**kw)
                except Exception as e:  # noqa: BLE001 - a finding; the run goes on
                    record(_t, kw, e)

            while time.monotonic() < t_end:
                n_batches += 1
                test = hypothesis_test(t, check, max_examples=batch, deadline=None, database=None,
                                       derandomize=False, phases=[Phase.generate])
                seed_of(test, rng.getrandbits(64))()
            result.batches[t.name] = n_batches
            log(f"[{t.name}] {T.COUNTS.get(_count_key(t), 0)} examples in {n_batches} runs, {budget:.0f}s")
    finally:
        close_world()
    result.seconds = time.monotonic() - start
    result.examples = dict(T.COUNTS)
    return result


def _count_key(t: Target) -> str:
    return {"expand_heredoc_env_pairs": "expand_heredoc/env_pairs"}.get(t.name, t.name)


def seed_of(test: Callable[[], None], seed: int) -> Callable[[], None]:
    from hypothesis import seed as hseed
    return hseed(seed)(test)


def minutes_from_env() -> float:
    return float(os.environ.get("PYBUILD_FUZZ_MINUTES", "0") or 0)
