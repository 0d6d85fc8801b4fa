"""Command line: ``irprune MODEL --target-flops F``, ``irprune inspect MODEL``, ``irprune demo``,
``irprune finetune MODEL --data train.npz [--teacher ORIGINAL.onnx] [--labels KEY] --epochs N``,
``irprune plan MODEL --target-flops F -o PLAN.json``, ``irprune apply MODEL PLAN.json -o OUT``.

Exit codes (also in every ``--help``): see ``EXIT_CODES``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from irprune import progress
from irprune.errors import IrpruneError, UsageError

if TYPE_CHECKING:  # the CLI imports the pipeline only when it runs
    from irprune.stages import Analysis, Result, Target

log = logging.getLogger("irprune")

EXIT_CODES = """exit codes:
  0   success
  2   bad arguments, or an input file irprune cannot use (missing, calibration mismatch)
  3   not a readable ONNX model
  4   the target cannot be met (the message says what blocked it)
  5   the rewritten model failed verification (nothing written)
  70  internal error (a bug; rerun with -v for a traceback)
  130 interrupted

-v/--verbose: debug logs, and a traceback on internal errors; -q/--quiet: only errors.
Progress for long steps is drawn on stderr when it is a terminal (not with -q)."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", EXIT_CODES)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

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


def _calib(text: str) -> str | Path:
    """``synthetic[:N]`` stays a string (parsed by the API), anything else is a path."""
    from irprune.passes.synthesize import parse_spec

    return text if parse_spec(text) is not None else Path(text)


def _input_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        type=_shape_option,
        metavar="NAME:D0,D1,...",
        help="the shape the model is deployed at (repeatable, one per input): costs, targets, "
        "verification and latency are taken there; default: the calibration data's shapes, "
        "else a symbolic batch counts 1 (other symbolic dims must be given)",
    )


def _shape_option(text: str) -> tuple[str, tuple[int, ...]]:
    from irprune.shapes import parse_input_shape

    try:
        return parse_input_shape(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shapes(pairs: Sequence[tuple[str, tuple[int, ...]]]) -> dict[str, tuple[int, ...]] | None:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in pairs:
        if name in shapes:
            raise UsageError(f"--input-shape {name} is given twice")
        shapes[name] = dims
    return shapes or None


def _prune_parser() -> _Parser:
    from irprune.api import DEFAULT_MAX_PRUNE, DEFAULT_ROUND_TO, REWRITES
    from irprune.passes.allocation import STRATEGIES
    from irprune.passes.importance import CRITERIA

    p = _Parser(prog="irprune", description="Structured pruning of ONNX models.")
    p.add_argument("model", type=Path, help="input ONNX file (modified only with --in-place)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-flops", type=_fraction, metavar="F")
    target.add_argument("--target-params", type=_fraction, metavar="F")
    target.add_argument(
        "--target-latency",
        type=_fraction,
        metavar="F",
        help="fraction of the original onnxruntime CPU latency (batch 1, --threads), measured here",
    )
    p.add_argument("-o", "--output", type=Path, help="default: MODEL.pruned.onnx")
    p.add_argument(
        "--in-place", action="store_true", help="replace MODEL with the result (atomically)"
    )
    p.add_argument(
        "--criterion",
        choices=CRITERIA,
        default="auto",
        help="auto: taylor with --calib (torch extra; l1 where torch cannot run the graph), "
        "else l1",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="global",
        help="how many channels each group keeps: one global ranking (default); the same share "
        "of every group; measured error curves (needs --calib); or latency: the cuts that save "
        "the most onnxruntime latency per MAC, checked and refined by timing on this machine",
    )
    p.add_argument(
        "--rewrite",
        choices=REWRITES,
        default=None,
        help="default: reconstruct with --calib; without it reconstruct on data synthesised "
        "from the model where affordable (torch extra), else compensate",
    )
    p.add_argument(
        "--calib",
        type=_calib,
        metavar="FILE.npz|synthetic[:N]",
        help=".npz of arrays keyed by input name, or synthetic[:N]: N inputs (default 128) made "
        "from the model's BN statistics (torch extra; see docs/datafree.md). Default: "
        "synthetic where that is estimated at most 5 CPU minutes, else none",
    )
    p.add_argument(
        "--csgd-epochs",
        type=int,
        default=0,
        metavar="N",
        help="with --rewrite merge: C-SGD training of the clusters first (needs torch, --data)",
    )
    p.add_argument(
        "--data", type=Path, help="training .npz: inputs by name, optional integer 'labels'"
    )
    p.add_argument("--csgd-lr", type=float, default=0.01, metavar="LR", help="C-SGD SGD step")
    _temporary_bn(p)
    p.add_argument("--round-to", type=int, default=DEFAULT_ROUND_TO, metavar="N")
    p.add_argument(
        "--strict-rounding",
        action="store_true",
        help="keep --round-to for every group even where a group then loses more than half "
        "(by default narrow groups then round finer; finer widths run slower on CPUs whose "
        "kernels work in blocks of 16 channels)",
    )
    p.add_argument(
        "--depth",
        choices=("off", "auto", "only"),
        default="off",
        help="remove whole residual blocks too: only = blocks alone until the target is met, "
        "auto = blocks and widths together (the plan measured closest to the original)",
    )
    p.add_argument("--max-blocks", type=int, metavar="N", help="--depth: remove at most N blocks")
    p.add_argument("--ignore", action="append", default=[], metavar="NODE_OR_GROUP")
    p.add_argument("--max-prune", type=float, default=DEFAULT_MAX_PRUNE, metavar="F")
    p.add_argument("--report", type=Path, metavar="FILE.json")
    p.add_argument(
        "--report-html",
        type=Path,
        metavar="FILE.html",
        help="the report as one self-contained HTML page (width bars, cost, fidelity, latency)",
    )
    _input_shape(p)
    p.add_argument("--dry-run", action="store_true", help="analyse and plan; write nothing")
    p.add_argument(
        "--save-plan",
        type=Path,
        metavar="FILE.json",
        help="write the plan (groups, widths, kept channels, the model's fingerprint) for review "
        "and --plan; with --dry-run, nothing else is written",
    )
    p.add_argument(
        "--plan",
        type=Path,
        metavar="FILE.json",
        help="apply this plan (from --save-plan, possibly edited) instead of allocating; the "
        "target defaults to the plan's",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    _verbosity(p)
    return p


def _verbosity(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs; tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")


Compute = Callable[[argparse.Namespace, Path], "Result"]  # (arguments, output path) -> Result


def _run_prune(args: argparse.Namespace, compute: Compute | None = None) -> int:
    """Check the paths, compute the result (``irprune.prune``, or the stages for the ``plan``
    and ``apply`` verbs), write what was asked and print the report."""
    from irprune.report import format_table

    output = _output(args)
    with progress.enabled(sys.stderr, quiet=args.quiet):
        result = (compute or _prune)(args, output)
    log.info(
        "timings: %s",
        ", ".join(f"{k} {v:.3f}s" for k, v in result.report.get("timings_s", {}).items()),
    )
    result.report["input"] = str(args.model)
    if _other_rank():  # under torchrun (--csgd-epochs trains on every rank): rank 0 writes
        return 0
    if not args.dry_run:
        result.save(output)
        result.report["output"] = str(output)
    if args.save_plan:
        from irprune import plans

        plans.save(args.save_plan, result.plan_document())
    if args.report:
        _write_json(args.report, result.report)
    if args.report_html:
        from irprune.report_html import write

        write(result.report, args.report_html)
    if not args.quiet:
        print(format_table(result.report))
        extra = (args.report, args.report_html, args.save_plan)
        written = [str(p) for p in extra if p is not None]
        print("dry run: nothing written" if args.dry_run else f"wrote {output}")
        if written:
            print(f"report: {', '.join(written)}")
    return 0


def _other_rank() -> bool:
    """A process of a torchrun job other than rank 0 (``RANK`` set by torchrun)."""
    return int(os.environ.get("RANK", "0")) != 0


def _output(args: argparse.Namespace) -> Path:
    """The output path, after checking the input, the target and every path asked for."""
    if not args.model.is_file():
        raise UsageError(f"{args.model}: no such file")
    targets = (args.target_flops, args.target_params, args.target_latency)
    if args.plan is None and targets == (None, None, None):
        raise UsageError(
            "give one of --target-flops, --target-params, --target-latency (or --plan)"
        )
    if args.in_place and args.output is not None:
        raise UsageError("--in-place writes over the input; it cannot be combined with -o")
    output: Path = args.output or args.model.with_name(args.model.stem + ".pruned.onnx")
    if args.in_place:
        output = args.model
    elif output.resolve() == args.model.resolve():
        raise UsageError("the output path is the input file; choose another with -o or --in-place")
    for path in (output, args.report, args.report_html, args.save_plan):
        if path is not None and not path.resolve().parent.is_dir():
            raise UsageError(f"{path}: the folder {path.parent} does not exist")
    return output


def _prune(args: argparse.Namespace, output: Path) -> Result:
    """The main command: ``irprune.prune``, the stages' composition."""
    from irprune.api import prune

    # a streamed output (large, or external data) is staged beside it: publishing renames
    return prune(args.model, stage_dir=output.resolve().parent, **_prune_options(args))


def _staged_plan(args: argparse.Namespace, output: Path) -> Result:
    """``irprune plan``: analyze -> score -> plan, and the plan's dry-run report."""
    target = _target(args)
    assert target is not None  # _output refused a plan verb without one
    analysis = _analysis(args)
    calibration = analysis.calibration(args.calib, seed=args.seed)
    scores = analysis.score(args.criterion, calib=calibration, seed=args.seed)
    plan = analysis.plan(
        target, scores, strategy=args.strategy, round_to=args.round_to,
        strict_rounding=args.strict_rounding, max_prune=args.max_prune, ignore=args.ignore,
        calib=calibration, seed=args.seed, latency_threads=args.threads,
        depth=args.depth, max_blocks=args.max_blocks,
    )  # fmt: skip
    return plan.preview(rewrite=args.rewrite, calib=calibration, seed=args.seed)


def _staged_apply(args: argparse.Namespace, output: Path) -> Result:
    """``irprune apply``: analyze, the plan file read and checked against the model, then
    apply (no scoring, no allocation)."""
    from irprune.stages import Csgd, Plan

    analysis = _analysis(args)
    plan = Plan.from_document(analysis, args.plan, _target(args))
    if args.dry_run:
        return plan.preview(rewrite=args.rewrite, calib=args.calib, seed=args.seed)
    bn = not args.no_temporary_bn
    csgd = (
        Csgd(args.csgd_epochs, args.data, args.csgd_lr, temporary_bn=bn)
        if args.csgd_epochs
        else None
    )
    return plan.apply(
        rewrite=args.rewrite, calib=args.calib, seed=args.seed,
        measure_latency=not args.no_latency, latency_threads=args.threads, csgd=csgd,
        stage_dir=output.resolve().parent,
    )  # fmt: skip


def _analysis(args: argparse.Namespace) -> Analysis:
    from irprune.api import check_options
    from irprune.stages import AnalyzeOptions, run_analysis

    check_options(
        args.criterion, args.strategy, args.rewrite, args.calib, args.round_to, args.max_prune,
        args.csgd_epochs, args.data,
    )  # fmt: skip
    options = AnalyzeOptions(_shapes(args.input_shape))
    return run_analysis(args.model, options, args.calib)


def _target(args: argparse.Namespace) -> Target | None:
    """The target given (None: none)."""
    from irprune.stages import Target

    metrics = ("macs", args.target_flops), ("params", args.target_params)
    for metric, value in (*metrics, ("latency", args.target_latency)):
        if value is not None:
            return Target(metric, value)
    return None


def _plan_verb(verb: str, argv: Sequence[str]) -> argparse.Namespace:
    """The arguments of ``irprune plan MODEL [options] -o PLAN.json`` (what the main command's
    ``--dry-run --save-plan PLAN.json`` writes, computed by ``_staged_plan``) and of ``irprune
    apply MODEL PLAN.json [options] [-o OUT]`` (what its ``--plan PLAN.json`` writes, computed
    by ``_staged_apply``)."""
    if verb == "apply":
        if len(argv) < 2 or argv[1].startswith("-"):
            raise UsageError("usage: irprune apply MODEL PLAN.json [options] [-o OUT.onnx]")
        args = _prune_parser().parse_args([argv[0], *argv[2:]])
        args.plan = Path(argv[1])
        return args
    args = _prune_parser().parse_args(argv)
    if args.output is None:
        raise UsageError("usage: irprune plan MODEL --target-flops F [options] -o PLAN.json")
    args.save_plan, args.output, args.dry_run = args.output, None, True
    return args


def _prune_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        target_flops=args.target_flops,
        target_params=args.target_params,
        target_latency=args.target_latency,
        criterion=args.criterion,
        strategy=args.strategy,
        rewrite=args.rewrite,
        calib=args.calib,
        round_to=args.round_to,
        strict_rounding=args.strict_rounding,
        ignore=args.ignore,
        max_prune=args.max_prune,
        seed=args.seed,
        dry_run=args.dry_run,
        measure_latency=not args.no_latency,
        latency_threads=args.threads,
        csgd_epochs=args.csgd_epochs,
        data=args.data,
        csgd_lr=args.csgd_lr,
        temporary_bn=not args.no_temporary_bn,
        input_shapes=_shapes(args.input_shape),
        from_plan=args.plan,
        depth=args.depth,
        max_blocks=args.max_blocks,
    )


def _temporary_bn(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-temporary-bn",
        action="store_true",
        help="train BN-free (folded) models as they are, without temporary BatchNormalization "
        "after their Conv/Gemm outputs (folded back afterwards)",
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)


def _run_inspect(argv: Sequence[str]) -> int:
    from irprune.emit import atomic_write
    from irprune.inspect import inspect_model, to_dot

    p = _Parser(prog="irprune inspect", description="Show channel groups and what blocks them.")
    p.add_argument("model", type=Path)
    _input_shape(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument(
        "--dot",
        nargs="?",
        const="-",
        type=Path,
        metavar="FILE",
        help="the channel-group graph in Graphviz DOT, to FILE or stdout",
    )
    _verbosity(p)
    args = p.parse_args(argv)
    _logging(args)
    if args.dot is not None and str(args.dot) != "-" and not args.dot.resolve().parent.is_dir():
        raise UsageError(f"{args.dot}: the folder {args.dot.parent} does not exist")
    info = inspect_model(args.model, _shapes(args.input_shape))
    if args.dot is None:
        print(json.dumps(info, indent=2) if args.json else info["text"])
    elif str(args.dot) == "-":
        print(to_dot(info), end="")
    else:
        atomic_write(to_dot(info).encode("utf-8"), args.dot)
        if not args.quiet:
            print(f"wrote {args.dot}")
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
    if not args.quiet:
        print(f"built the demo model: {model_path}")
    ns = _prune_parser().parse_args(
        [
            str(model_path),
            "--target-flops",
            str(args.target_flops),
            "--report",
            str(args.out / "demo.report.json"),
            "--report-html",
            str(args.out / "demo.report.html"),
        ]
    )
    ns.quiet, ns.verbose = args.quiet, args.verbose
    return _run_prune(ns)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("irprune: %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        progress.interrupt()  # a status line is erased first, not run into
        super().emit(record)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _run_finetune(argv: Sequence[str]) -> int:
    from irprune.finetune import OPTIMIZERS

    p = _Parser(prog="irprune finetune", description="Fine-tune a (pruned) ONNX model.")
    p.add_argument("model", type=Path, help="the ONNX model to train (never modified)")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help=".npz of inputs keyed by input name, or a folder of NAME.npy files (or NAME/*.npy "
        "shards), memory-mapped",
    )
    p.add_argument("--teacher", type=Path, help="the original model: distil from its outputs")
    p.add_argument("--labels", metavar="KEY", help="the labels array in --data (task loss)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--lr",
        type=float,
        help="default: 0.05 (sgd), 1e-3 (adam); with no --lr, --clip-grad or --freeze-bn, the "
        "first epoch also runs with Adam at 1e-4, BN frozen, gradients clipped at norm 1, and "
        "the recipe with the lower held-out loss goes on",
    )
    p.add_argument("--clip-grad", type=float, metavar="NORM", help="clip each step's gradient norm")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    p.add_argument("--freeze-bn", action="store_true", help="keep BN running statistics")
    _temporary_bn(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, help="default: MODEL.finetuned.onnx")
    _verbosity(p)
    args = p.parse_args(argv)
    _logging(args)
    for path in (args.model, args.data, args.teacher):
        if path is not None and not (path.is_file() or (path is args.data and path.is_dir())):
            raise UsageError(f"{path}: no such file")
    output = args.output or args.model.with_name(args.model.stem + ".finetuned.onnx")
    if output.resolve() in {args.model.resolve(), args.data.resolve()}:
        raise UsageError("the output path is an input file; choose another with -o")
    if not output.resolve().parent.is_dir():
        raise UsageError(f"{output}: the folder {output.parent} does not exist")
    with progress.enabled(sys.stderr, quiet=args.quiet):
        result = _finetune(args)
    if _other_rank():  # under torchrun, rank 0 writes and reports
        return 0
    result.save(output)
    if not args.quiet:
        for epoch, loss in enumerate(result.losses, 1):
            print(f"epoch {epoch}: mean loss {loss:.4f}")
        if result.temporary_norms:
            print(
                f"trained with {result.temporary_norms} temporary BatchNormalization nodes "
                "(no normalisation after those Conv/Gemm outputs), folded back into the weights"
            )
        print(f"fine-tuned in {result.seconds:.1f} s; wrote {output}")
    return 0


def _finetune(args: argparse.Namespace) -> Any:
    from irprune.finetune import finetune

    return finetune(
        args.model,
        args.data,
        teacher=args.teacher,
        labels=args.labels,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        optimizer=args.optimizer,
        temperature=args.temperature,
        freeze_bn=args.freeze_bn,
        temporary_bn=not args.no_temporary_bn,
        clip=args.clip_grad,
        seed=args.seed,
    )


def _logging(args: argparse.Namespace) -> None:
    """irprune's own loggers: debug with -v, errors only with -q, else warnings. Other
    libraries' loggers are left alone."""
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    log.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        if argv and argv[0] == "inspect":
            return _run_inspect(argv[1:])
        if argv and argv[0] == "demo":
            return _run_demo(argv[1:])
        if argv and argv[0] == "finetune":
            return _run_finetune(argv[1:])
        if argv and argv[0] in ("plan", "apply"):
            args = _plan_verb(argv[0], argv[1:])
            _logging(args)
            return _run_prune(args, _staged_plan if argv[0] == "plan" else _staged_apply)
        args = _prune_parser().parse_args(argv)
        _logging(args)
        return _run_prune(args)
    except IrpruneError as exc:
        log.debug("%s raised here:", type(exc).__name__, exc_info=True)
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
            traceback.print_exc(file=sys.stderr)
        hint = "" if verbose else " (rerun with -v for a traceback)"
        print(f"irprune: internal error: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
