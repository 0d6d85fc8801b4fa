"""Coverage of torch model libraries through ``irprune.prune(module, ...)`` (issue 17).

Every architecture below (timm, and torchvision where it imports) is built with random weights
(``pretrained=False``, seeded), put in eval mode, and pruned at ``target_flops=0.5`` with the
default tracer (``auto``: torch.fx, torch.export wherever fx fails) on one 224 x 224 image.
Per model it records:

- pruned: ``prune`` returned a model (irprune verifies it before returning: onnx.checker full
  check, shape inference, an onnxruntime run); valid: that model passes ``onnx.checker`` here
  again and runs in onnxruntime on the example, with finite outputs;
- the MAC ratio (irprune's cost model) and the tracer that lowered it;
- prunable channel groups, against the module's own ONNX export (``torch.onnx.export``,
  TorchScript exporter, opset 17, dynamic batch, analysed the way ``prune`` analyses a file):
  the groups prunable on one side only, by width, and the first frozen reason the other side
  gives for a group of that width;
- for a failure, the one-line reason (and the groups of both sides where they lower).

Each model runs in its own process (a hang or a crash costs that model only) with a time limit.
Writes docs/torch_coverage.md (a table and the summary "N of M pruned") and
benchmarks/results/torch_coverage.json.

    python benchmarks/torch_coverage.py                 # everything
    python benchmarks/torch_coverage.py resnet18 tv:resnet18   # again, into the last results

timm imports torchvision, which needs a matching torch; on this x86_64 machine that is a
separate venv (a CUDA build of about 5.7 GB, taken from the local package index; never in the
project's extras, which keep torch 2.13.0, the CPU build):

    python3 -m venv /tmp/v2 && /tmp/v2/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/v2/bin/pip install -e ".[test]" timm
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "torch_coverage.json"
DOC = ROOT / "docs" / "torch_coverage.md"
TARGET = 0.5
SEED = 0
SIZE = 224
TIME_LIMIT_S = 900

# timm architecture -> family (a spread of every family the library has; the smallest variant)
TIMM: dict[str, str] = {
    **dict.fromkeys(["resnet18", "resnet50", "resnet26d", "resnext50_32x4d", "seresnet50",
                     "ecaresnet26t", "skresnet18", "resnest14d", "resnetv2_50x1_bit",
                     "res2net50_26w_4s"], "resnet"),
    **dict.fromkeys(["mobilenetv2_100", "mobilenetv2_050", "mobilenetv3_small_100",
                     "mobilenetv3_large_100", "tf_mobilenetv3_small_100",
                     "mobilenetv4_conv_small", "lcnet_050", "ghostnet_100", "ghostnetv2_100",
                     "repghostnet_050"], "mobilenet"),
    **dict.fromkeys(["efficientnet_b0", "efficientnet_b1", "efficientnet_lite0",
                     "tf_efficientnet_b0", "efficientnetv2_rw_t", "tf_efficientnetv2_b0",
                     "mixnet_s", "mnasnet_100", "fbnetc_100", "spnasnet_100", "semnasnet_100",
                     "tinynet_a", "hardcorenas_a", "rexnet_100"], "efficientnet"),
    **dict.fromkeys(["regnetx_002", "regnetx_004", "regnety_002", "regnety_008",
                     "regnetz_b16"], "regnet"),
    **dict.fromkeys(["densenet121", "vgg11_bn", "inception_v3", "dpn68", "legacy_xception",
                     "dla34", "hrnet_w18_small", "cspresnet50", "selecsls42b",
                     "ese_vovnet19b_dw", "gernet_s", "repvgg_a0", "hgnetv2_b0", "nf_resnet26"],
                    "other cnn"),
    **dict.fromkeys(["convnext_atto", "convnext_tiny", "convnextv2_atto", "edgenext_xx_small",
                     "poolformer_s12", "efficientformer_l1", "fastvit_t8", "mobilevit_xxs",
                     "mobilevitv2_050"], "convnext / metaformer"),
    **dict.fromkeys(["vit_tiny_patch16_224", "vit_small_patch16_224", "deit_tiny_patch16_224",
                     "deit_tiny_distilled_patch16_224", "deit3_small_patch16_224",
                     "vit_tiny_r_s16_p8_224", "eva02_tiny_patch14_224", "cait_xxs24_224",
                     "pit_ti_224", "levit_128s", "xcit_nano_12_p16_224", "convit_tiny"], "vit"),
    **dict.fromkeys(["swin_tiny_patch4_window7_224", "pvt_v2_b0", "tiny_vit_5m_224",
                     "gcvit_xxtiny", "coatnet_nano_rw_224"], "hierarchical transformer"),
    **dict.fromkeys(["mixer_s16_224", "resmlp_12_224", "gmlp_s16_224"], "mlp"),
}  # fmt: skip
TORCHVISION: dict[str, str] = dict.fromkeys(
    ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x1_0",
     "regnet_y_400mf", "squeezenet1_1", "mnasnet0_5"], "torchvision",
)  # fmt: skip


@dataclass
class Row:
    model: str
    library: str
    family: str
    pruned: bool = False
    valid: bool = False
    tracer: str | None = None
    macs_ratio: float | None = None
    groups: int | None = None  # channel groups the lowered model has
    prunable: int | None = None  # of which prunable
    export_prunable: int | None = None  # prunable groups of the module's ONNX export
    differences: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


# --------------------------------------------------------------------------- one model


def _build(key: str) -> Any:
    import torch

    torch.manual_seed(SEED)
    if key.startswith("tv:"):
        import torchvision

        return torchvision.models.get_model(key[3:], weights=None).eval()
    import timm

    return timm.create_model(key, pretrained=False).eval()


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"


def _export_groups(module: Any, example: Any) -> list[tuple[int, bool, str]]:
    """(width, prunable, first frozen reason) of every group of the module's ONNX export."""
    import onnx
    import torch

    from irprune.frontends.onnx import import_model
    from irprune.passes.analysis.channels import analyze
    from irprune.passes.fold import fold_constants

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "export.onnx"
        torch.onnx.export(
            module, (example,), path, dynamo=False, opset_version=17, input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
        graph = import_model(onnx.load(path))
    fold_constants(graph)
    return [(g.size, not g.frozen, g.frozen[0] if g.frozen else "") for g in analyze(graph).groups]


def _differences(
    ours: list[tuple[int, bool, str]], theirs: list[tuple[int, bool, str]]
) -> list[str]:
    """Widths prunable on one side only, each with the other side's reason for freezing it."""
    out = []
    for label, a, b in (("only irprune(module)", ours, theirs), ("only the export", theirs, ours)):
        left = Counter(w for w, p, _ in a if p)
        right = Counter(w for w, p, _ in b if p)
        for width, n in sorted((left - right).items()):
            reason = next((r for w, p, r in b if w == width and not p), "no group of that width")
            out.append(f"{label}: {n} x width {width} (other side: {reason[:160]})")
    return out


def _lowered_groups(module: Any, example: Any) -> list[tuple[int, bool, str]]:
    """(width, prunable, first frozen reason) of the groups ``prune`` sees (default tracer)."""
    from irprune.frontends.fx import to_onnx
    from irprune.frontends.onnx import import_model
    from irprune.passes.analysis.channels import analyze
    from irprune.passes.fold import fold_constants

    graph = import_model(to_onnx(module, example))
    fold_constants(graph)
    return [(g.size, not g.frozen, g.frozen[0] if g.frozen else "") for g in analyze(graph).groups]


def _compare(row: Row, module: Any, example: Any, ours: list[tuple[int, bool, str]]) -> None:
    row.groups, row.prunable = len(ours), sum(p for _, p, _ in ours)
    try:
        theirs = _export_groups(module, example)
    except Exception as exc:  # the exporter's own failures, recorded, not fatal
        row.differences = [f"torch.onnx.export failed: {_one_line(exc)[:200]}"]
        return
    row.export_prunable = sum(p for _, p, _ in theirs)
    row.differences = _differences(ours, theirs)


def run_one(key: str) -> Row:
    import numpy as np
    import onnx
    import torch

    import irprune
    from irprune.emit.verify import session

    row = Row(key, *_library_family(key))
    start = time.perf_counter()
    torch.set_num_threads(2)
    module = example = None
    try:
        module = _build(key)
        example = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(SEED))
        result = irprune.prune(
            module, example_inputs=example, target_flops=TARGET, measure_latency=False
        )
        row.pruned = True
        report = result.report
        row.tracer = report["settings"].get("tracer")
        row.macs_ratio = round(float(report["cost"]["ratio"]["macs"]), 4)
        onnx.checker.check_model(result.model, full_check=True)
        feeds = {result.model.graph.input[0].name: example.numpy()}
        outputs = session(result.model).run(None, feeds)
        row.valid = all(np.isfinite(o).all() for o in outputs)
        ours = [(g["size"], not g["frozen"], (g["frozen"] or [""])[0]) for g in report["groups"]]
        _compare(row, module, example, ours)
    except Exception as exc:  # every failure is a row of the table
        row.error = _one_line(exc)
        if module is not None and not row.pruned:
            # what blocked it: the groups both sides see, where they lower at all (the error
            # above stays the row's reason)
            with contextlib.suppress(Exception):
                _compare(row, module, example, _lowered_groups(module, example))
    row.seconds = round(time.perf_counter() - start, 1)
    return row


def _library_family(key: str) -> tuple[str, str]:
    if key.startswith("tv:"):
        return "torchvision", TORCHVISION.get(key[3:], "?")
    return "timm", TIMM.get(key, "?")


# --------------------------------------------------------------------------- driver, outputs


def _keys(requested: list[str]) -> list[str]:
    if requested:
        return requested
    keys = list(TIMM)
    try:
        import torchvision  # noqa: F401
    except Exception:  # not installed, or its C ops cannot load
        return keys
    return keys + [f"tv:{n}" for n in TORCHVISION]


def _run_isolated(key: str) -> Row:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", key]
    library, family = _library_family(key)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        return Row(key, library, family, error=f"timed out after {TIME_LIMIT_S} s")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = " ".join(done.stderr.split())[-300:]
        return Row(key, library, family, error=f"process exited {done.returncode}: {tail}")
    return Row(**json.loads(lines[-1]))


def _previous(requested: list[str]) -> list[Row]:
    """With models named, the rows of the last full run (the named ones are run again)."""
    if not requested or not RESULTS.exists():
        return []
    order = {k: i for i, k in enumerate([*TIMM, *(f"tv:{n}" for n in TORCHVISION)])}
    rows = [Row(**r) for r in json.loads(RESULTS.read_text())["rows"]]
    return sorted(rows, key=lambda r: order.get(r.model, len(order)))


def _summary(rows: list[Row]) -> dict[str, Any]:
    families: dict[str, dict[str, int]] = {}
    for r in rows:
        f = families.setdefault(f"{r.library}: {r.family}", {"tried": 0, "pruned": 0})
        f["tried"] += 1
        f["pruned"] += int(r.pruned and r.valid)
    timm_rows = [r for r in rows if r.library == "timm"]
    return {
        "pruned": sum(r.pruned and r.valid for r in rows),
        "tried": len(rows),
        "timm_pruned": sum(r.pruned and r.valid for r in timm_rows),
        "timm_tried": len(timm_rows),
        "tracers": dict(Counter(r.tracer for r in rows if r.pruned)),
        "same_prunable_groups_as_export": sum(
            r.pruned and r.export_prunable is not None and not r.differences for r in rows
        ),
        "families": families,
    }


def _markdown(rows: list[Row], summary: dict[str, Any], env: dict[str, str]) -> str:
    lines = [
        "# torch model coverage",
        "",
        "`irprune.prune(module, example_inputs=torch.randn(1, 3, 224, 224), target_flops=0.5)`",
        "with the default tracer, random weights (`pretrained=False`, seed 0), eval mode.",
        "Written by `benchmarks/torch_coverage.py`; "
        + ", ".join(f"{k} {v}" for k, v in env.items())
        + ".",
        "",
        f"**{summary['pruned']} of {summary['tried']} pruned** (valid), timm "
        f"{summary['timm_pruned']} of {summary['timm_tried']}; tracers "
        + ", ".join(f"{k}: {v}" for k, v in sorted(summary["tracers"].items(), key=str))
        + f"; {summary['same_prunable_groups_as_export']} with the same prunable groups as "
        "their ONNX export.",
        "",
        "| family | tried | pruned |",
        "| --- | --- | --- |",
    ]
    for name, f in summary["families"].items():
        lines.append(f"| {name} | {f['tried']} | {f['pruned']} |")
    lines += [
        "",
        "Groups: prunable / all channel groups of the lowered module; export: prunable groups of",
        "`torch.onnx.export(module)` (TorchScript exporter, BN folded). Differences list the",
        "widths prunable on one side only, with the other side's reason for freezing them.",
        "",
        "| model | family | pruned | valid | tracer | MACs | groups | export | s | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        notes = r.error or "; ".join(r.differences)
        notes = notes.replace("|", "\\|")
        lines.append(
            f"| {r.model} | {r.family} | {'yes' if r.pruned else 'no'} | "
            f"{'yes' if r.valid else 'no'} | {r.tracer or ''} | "
            f"{'' if r.macs_ratio is None else f'{r.macs_ratio:.3f}'} | "
            f"{'' if r.groups is None else f'{r.prunable} / {r.groups}'} | "
            f"{'' if r.export_prunable is None else r.export_prunable} | {r.seconds:.0f} | "
            f"{notes} |"
        )
    return "\n".join(lines) + "\n"


def _environment() -> dict[str, str]:
    import torch

    env = {"torch": torch.__version__}
    for name in ("timm", "torchvision"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # absent or unloadable: the table says which libraries ran
            continue
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="timm names, or tv:NAME for torchvision")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(asdict(run_one(args.one))))
        return 0
    rows = _previous(args.models)
    for key in _keys(args.models):
        row = _run_isolated(key)
        rows = [r for r in rows if r.model != key] + [row]
        status = "ok" if row.pruned and row.valid else "FAIL"
        print(
            f"{status:4} {key:34} {row.tracer or '-':6} macs={row.macs_ratio} "
            f"groups={row.prunable}/{row.groups} export={row.export_prunable} "
            f"{row.seconds:.0f}s {row.error or ''}",
            flush=True,
        )
    summary = _summary(rows)
    env = _environment()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env, "summary": summary, "rows": [asdict(r) for r in rows]}
    RESULTS.write_text(json.dumps(payload, indent=1) + "\n")
    DOC.write_text(_markdown(rows, summary, env))
    print(f"{summary['pruned']} of {summary['tried']} pruned; wrote {DOC} and {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
