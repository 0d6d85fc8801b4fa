"""Long fuzz profile: prune thousands of random valid graphs and count property failures.

Same generator and properties as tests/fuzz (tests/fuzz/graphs.py, tests/fuzz/properties.py), but
with fresh randomness and without stopping at the first failure: every failing case is recorded
(its blocks, settings and the error) and its model saved under ``--save`` for reproduction.

Usage: ``python benchmarks/fuzz.py --examples 2000 [--minutes M] [--seed S] [--save DIR]
[--out FILE.json]``
Prints the shares of the examples drawn that pruned, were compared numerically with the
independent masked original (tests/reference_mask.py), ended in a (checked) target error, or
reached an op the reference has no rule for (counted by op), and the failures; exit 1 on any
failure.
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
from tests.fuzz.properties import Outcome, Settings, check, prune_settings  # noqa: E402


def _unsupported_op(message: str) -> str:
    """The op (or reason) in a ``ReferenceUnsupported`` message, for counting."""
    words = message.split()
    if message.startswith("no reference rule for "):
        return words[4]  # "no reference rule for LRN ('n_LRN30')"
    if words and words[0][:1].isupper():
        return words[0].rstrip(":")  # "If 'n_If3': a removed channel in a subgraph", "ai::X ..."
    return message[:40]


def _share(n: int, of: int) -> str:
    return f"{n} ({100 * n / of:.0f}%)" if of else str(n)


KINDS = ("pruned", "target-error", "unsupported-op", "failure")


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
    by_rewrite: Counter[str] = Counter()  # pruned examples per rewrite
    checked_rewrite: Counter[str] = Counter()
    unsupported_ops: Counter[str] = Counter()
    refusals: Counter[str] = Counter()  # target errors: which claim, and how the target came
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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcome: Outcome = check(case, s)
            outcomes[outcome.kind] += 1
            outcomes["drawn-from-floor"] += outcome.floor is not None
            if outcome.refusal is not None:
                floor = outcome.floor is not None
                kind = "floor" if "the model keeps" in outcome.refusal else "window"
                refusals[f"{kind}, target {'above the floor' if floor else 'absolute'}"] += 1
            if outcome.kind == "pruned":
                by_rewrite[s.rewrite] += 1
                checked_rewrite[s.rewrite] += outcome.masked
                outcomes["masked"] += outcome.masked
                if outcome.unsupported is not None:
                    outcomes["reference-unsupported"] += 1
                    unsupported_ops[_unsupported_op(outcome.unsupported)] += 1
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
        total = sum(outcomes[k] for k in KINDS)
        if total % 100 == 0:
            print(f"... {total} graphs, {outcomes['failure']} failures", flush=True)

    run = seed(args.seed)(one) if args.seed is not None else one
    try:
        run()
    except _TimeUp:
        print(f"time budget of {args.minutes:g} min reached", flush=True)
    elapsed = time.perf_counter() - start
    tried = sum(outcomes[k] for k in KINDS)
    summary = {
        "examples_drawn": tried,
        "target_drawn_from_floor": outcomes["drawn-from-floor"],
        "pruned": outcomes["pruned"],
        "masked_equivalence_checked": outcomes["masked"],
        "target_error": outcomes["target-error"],
        "target_error_kinds": dict(refusals.most_common()),
        "unsupported_by_reference": outcomes["reference-unsupported"],
        "unsupported_by_reference_ops": dict(unsupported_ops.most_common()),
        "unsupported_op": outcomes["unsupported-op"],
        "failures": outcomes["failure"],
        "pruned_by_rewrite": dict(by_rewrite.most_common()),
        "checked_by_rewrite": {r: checked_rewrite[r] for r in by_rewrite},
        "seconds": round(elapsed, 1),
        "blocks": dict(blocks.most_common()),
        "failure_cases": failures,
    }
    ops = ", ".join(f"{op} {n}" for op, n in unsupported_ops.most_common()) or "-"
    print(
        f"examples drawn: {tried} (target drawn above the floor: "
        f"{summary['target_drawn_from_floor']})\n"
        f"  pruned:                   {_share(summary['pruned'], tried)}\n"
        f"  numerically checked:      {_share(summary['masked_equivalence_checked'], tried)} "
        f"(of pruned: {_share(summary['masked_equivalence_checked'], summary['pruned'])})\n"
        f"  target error (checked):   {_share(summary['target_error'], tried)} "
        f"({', '.join(f'{k}: {n}' for k, n in refusals.most_common()) or '-'})\n"
        f"  unsupported by reference: {_share(summary['unsupported_by_reference'], tried)} "
        f"({ops})\n"
        f"  unsupported op (torch):   {_share(summary['unsupported_op'], tried)}\n"
        f"  failures:                 {summary['failures']}  ({elapsed:.0f} s)"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
