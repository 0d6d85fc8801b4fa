"""Long fuzz profile: prune thousands of random valid graphs and count property failures.

Same generator and properties as tests/fuzz (tests/fuzz/graphs.py, tests/fuzz/properties.py), but
with fresh randomness and without stopping at the first failure: every failing case is recorded
(its blocks, settings and the error) and its model saved under ``--save`` for reproduction.

Usage: ``python benchmarks/fuzz.py --examples 2000 [--minutes M] [--seed S] [--save DIR]
[--out FILE.json]``
Prints graphs tried, outcomes (pruned / target error) and failures; exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from tests.fuzz.graphs import Case, onnx_graphs  # noqa: E402
from tests.fuzz.properties import Settings, check, prune_settings  # noqa: E402


class _TimeUp(BaseException):
    """Raised inside the hypothesis loop to stop at the time budget (not a test failure)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    p.add_argument("--save", type=Path, default=Path("benchmarks/results/fuzz-failures"))
    p.add_argument("--out", type=Path, default=None, help="write the summary as JSON")
    p.add_argument("--minutes", type=float, default=None, help="stop after this long")
    args = p.parse_args(argv)

    outcomes: Counter[str] = Counter()
    failures: list[dict[str, str]] = []
    blocks: Counter[str] = Counter()
    start = time.perf_counter()

    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: we record every failure and keep going
        suppress_health_check=list(HealthCheck),
    )
    @given(case=onnx_graphs(), s=prune_settings())
    def one(case: Case, s: Settings) -> None:
        if args.minutes is not None and time.perf_counter() - start > 60 * args.minutes:
            raise _TimeUp
        blocks.update(case.blocks)
        try:
            outcome = "?"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcome = check(case, s)
            outcomes[outcome] += 1
        except Exception as exc:
            outcomes["failure"] += 1
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            args.save.mkdir(parents=True, exist_ok=True)
            path = args.save / f"failure{len(failures)}.onnx"
            onnx.save(case.model, str(path))
            failures.append(
                {
                    "case": repr(case),
                    "settings": repr(s),
                    "error": f"{type(exc).__name__}: {first_line}",
                    "where": traceback.format_exc(limit=-3),
                    "model": str(path),
                }
            )
            print(f"FAIL {failures[-1]['error']}\n  {case!r}\n  {s!r}", flush=True)
        total = sum(outcomes.values())
        if total % 100 == 0:
            print(f"... {total} graphs, {outcomes['failure']} failures", flush=True)

    run = seed(args.seed)(one) if args.seed is not None else one
    try:
        run()
    except _TimeUp:
        print(f"time budget of {args.minutes:g} min reached", flush=True)
    elapsed = time.perf_counter() - start
    tried = sum(outcomes.values())
    summary = {
        "graphs_tried": tried,
        "pruned": outcomes["pruned"] + outcomes["pruned-masked-checked"],
        "masked_equivalence_checked": outcomes["pruned-masked-checked"],
        "target_error": outcomes["target-error"],
        "unsupported_op": outcomes["unsupported-op"],
        "failures": outcomes["failure"],
        "seconds": round(elapsed, 1),
        "blocks": dict(blocks.most_common()),
        "failure_cases": failures,
    }
    print(
        f"graphs tried: {tried}  pruned: {summary['pruned']} (masked equivalence checked: "
        f"{summary['masked_equivalence_checked']})  target error: "
        f"{summary['target_error']}  failures: {summary['failures']}  ({elapsed:.0f} s)"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
