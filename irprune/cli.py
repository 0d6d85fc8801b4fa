"""Command line: ``irprune MODEL --target-flops F``, ``irprune inspect MODEL``, ``irprune demo``.

Exit codes: 0 success; 2 bad arguments or input files we cannot use; 3 not a readable model;
4 the target cannot be met (the message says what blocked it); 5 the rewritten model failed
verification (nothing written); 70 internal error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from irprune.errors import IrpruneError, UsageError

log = logging.getLogger("irprune")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"target must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise UsageError(f"target must be in (0, 1], got {text}")
    return value


def _prune_parser() -> _Parser:
    from irprune.api import DEFAULT_MAX_PRUNE, DEFAULT_ROUND_TO, REWRITES
    from irprune.passes.allocation import STRATEGIES
    from irprune.passes.importance import CRITERIA

    p = _Parser(prog="irprune", description="Structured pruning of ONNX models.")
    p.add_argument("model", type=Path, help="input ONNX file (modified only with --in-place)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-flops", type=_fraction, metavar="F")
    target.add_argument("--target-params", type=_fraction, metavar="F")
    p.add_argument("-o", "--output", type=Path, help="default: MODEL.pruned.onnx")
    p.add_argument(
        "--in-place", action="store_true", help="replace MODEL with the result (atomically)"
    )
    p.add_argument("--criterion", choices=CRITERIA, default="l1")
    p.add_argument("--strategy", choices=STRATEGIES, default="global")
    p.add_argument(
        "--rewrite",
        choices=REWRITES,
        default=None,
        help="default: reconstruct with --calib, compensate without",
    )
    p.add_argument("--calib", type=Path, help=".npz of arrays keyed by input name")
    p.add_argument("--round-to", type=int, default=DEFAULT_ROUND_TO, metavar="N")
    p.add_argument("--ignore", action="append", default=[], metavar="NODE_OR_GROUP")
    p.add_argument("--max-prune", type=float, default=DEFAULT_MAX_PRUNE, metavar="F")
    p.add_argument("--report", type=Path, metavar="FILE.json")
    p.add_argument("--dry-run", action="store_true", help="analyse and plan; write nothing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    _verbosity(p)
    return p


def _verbosity(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")


def _run_prune(args: argparse.Namespace) -> int:
    from irprune.api import prune
    from irprune.report import format_table

    if not args.model.is_file():
        raise UsageError(f"{args.model}: no such file")
    if args.in_place and args.output is not None:
        raise UsageError("--in-place writes over the input; it cannot be combined with -o")
    output = args.output or args.model.with_name(args.model.stem + ".pruned.onnx")
    if args.in_place:
        output = args.model
    elif output.resolve() == args.model.resolve():
        raise UsageError("the output path is the input file; choose another with -o or --in-place")
    for path in (output, args.report):
        if path is not None and not path.resolve().parent.is_dir():
            raise UsageError(f"{path}: the folder {path.parent} does not exist")
    result = prune(
        args.model,
        target_flops=args.target_flops,
        target_params=args.target_params,
        criterion=args.criterion,
        strategy=args.strategy,
        rewrite=args.rewrite,
        calib=args.calib,
        round_to=args.round_to,
        ignore=args.ignore,
        max_prune=args.max_prune,
        seed=args.seed,
        dry_run=args.dry_run,
        measure_latency=not args.no_latency,
        latency_threads=args.threads,
    )
    result.report["input"] = str(args.model)
    if not args.dry_run:
        result.save(output)
        result.report["output"] = str(output)
    if args.report:
        _write_json(args.report, result.report)
    if not args.quiet:
        print(format_table(result.report))
        print("dry run: nothing written" if args.dry_run else f"wrote {output}")
    return 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)


def _run_inspect(argv: Sequence[str]) -> int:
    from irprune.inspect import inspect_model

    p = _Parser(prog="irprune inspect", description="Show channel groups and what blocks them.")
    p.add_argument("model", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _verbosity(p)
    args = p.parse_args(argv)
    _logging(args)
    info = inspect_model(args.model)
    print(json.dumps(info, indent=2) if args.json else info["text"])
    return 0


def _run_demo(argv: Sequence[str]) -> int:
    from irprune.demo import build_demo_model
    from irprune.emit import atomic_write

    p = _Parser(prog="irprune demo", description="Prune a bundled model end to end.")
    p.add_argument("--out", type=Path, default=Path("irprune-demo"), help="output folder")
    p.add_argument("--target-flops", type=_fraction, default=0.5, metavar="F")
    _verbosity(p)
    args = p.parse_args(argv)
    _logging(args)
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = atomic_write(build_demo_model(), args.out / "demo.onnx")
    print(f"built the demo model: {model_path}")
    ns = _prune_parser().parse_args(
        [
            str(model_path),
            "--target-flops",
            str(args.target_flops),
            "--report",
            str(args.out / "demo.report.json"),
        ]
    )
    ns.quiet = args.quiet
    return _run_prune(ns)


def _logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="irprune: %(levelname)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        if argv and argv[0] == "inspect":
            return _run_inspect(argv[1:])
        if argv and argv[0] == "demo":
            return _run_demo(argv[1:])
        args = _prune_parser().parse_args(argv)
        _logging(args)
        return _run_prune(args)
    except IrpruneError as exc:
        print(f"irprune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the reader went away (e.g. `| head`)
        return 0
    except KeyboardInterrupt:
        print("irprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if verbose:
            raise
        print(
            f"irprune: internal error: {type(exc).__name__}: {exc} (rerun with -v)", file=sys.stderr
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
