#!/usr/bin/env python3
"""Long fuzz run outside pytest.

    .venv/bin/python tests/fuzz/run_long.py --minutes 10 [--target parse …] [--seed N] [--batch 1000]

Prints per-target example counts and every finding (also written to tests/fuzz/findings/ with
Hypothesis's ``@reproduce_failure`` blob); exits 1 when something was found.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))           # tests/ : makes ``fuzz`` importable as a package

from fuzz.suite import BY_NAME, run_for  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--target", action="append", choices=sorted(BY_NAME), help="only these targets (repeatable)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the batch seeds (default: random)")
    ap.add_argument("--batch", type=int, default=1000, help="examples per Hypothesis run")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    a = ap.parse_args()
    res = run_for(a.minutes, a.target, a.batch, a.seed, HERE / "findings",
                  log=lambda m: print(m, flush=True))
    total = sum(res.examples.values())
    print(f"\n{res.seconds:.0f}s, {total} examples: {json.dumps(res.examples)}")
    print(f"{len(res.findings)} distinct finding(s)")
    for f in res.findings.values():
        print(f"\n=== {f.signature} (hit {f.count} times)\n  smallest input: {f.example[:2000]}\n  {f.error[:500]}")
    if a.json:
        a.json.write_text(json.dumps({"seconds": res.seconds, "examples": res.examples,
                                      "findings": [f.__dict__ for f in res.findings.values()]}, indent=2))
    return 1 if res.findings else 0


if __name__ == "__main__":
    sys.exit(main())
