"""C-SGD training + merge on the digits-trained nets, at a MAC target, without fine-tuning.

For each net and export style: test accuracy (the 450 held-out digits) of

* the original;
* ``merge`` alone (clusters merged as they are, no training);
* C-SGD: the same clusters trained with the centripetal update on the training split (with its
  labels) for ``--epochs``, then merged; and, to show the merge is lossless after training, the
  relative output change the merge itself makes (trained model before vs after merging, on the
  test images) and the largest member-to-centre spread left in any cluster.

The steps are irprune's own (``irprune.prune(..., rewrite="merge", csgd_epochs=N, data=...)``
runs the same ones); they are called one by one here only to keep the trained model before its
merge for the losslessness check.

Usage: ``python benchmarks/csgd.py [--nets resnet20 ...] [--styles explicit folded]
[--target 0.5] [--epochs 20] [--no-temporary-bn]``; writes ``benchmarks/results/csgd.json``.
BN-folded exports train with temporary BN nodes (``backends.tempnorm``) unless
``--no-temporary-bn``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from irprune import csgd  # noqa: E402
from irprune.backends.torch import import_graph  # noqa: E402
from irprune.emit import to_model, verify  # noqa: E402
from irprune.frontends.onnx import load_model  # noqa: E402
from irprune.passes.allocation import Target, allocate  # noqa: E402
from irprune.passes.analysis.channels import analyze  # noqa: E402
from irprune.passes.analysis.cost import build_cost_model  # noqa: E402
from irprune.passes.importance import score  # noqa: E402
from irprune.passes.rewrite.merge import cluster_groups, merge  # noqa: E402
from models.digits import ARCHITECTURES, accuracy, cached_digits_onnx, load_digits_split  # noqa: E402


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / (np.abs(b).max() or 1.0))


def bench(name: str, style: str, args: argparse.Namespace) -> dict[str, Any]:
    split = load_digits_split(0)
    path = cached_digits_onnx(name, style, args.cache_dir)  # type: ignore[arg-type]
    original = load_model(path)
    graph = import_graph(original)
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    target = Target("macs", args.target)
    plan = allocate(analysis, cost, score(graph, analysis, "l1"), target, round_to=args.round_to)
    row: dict[str, Any] = {"net": name, "style": style, "mac_ratio": plan.ratio}
    row["original"] = accuracy(original, split.x_test, split.y_test)

    plain = import_graph(original)
    merge(plain, analysis, plan)
    row["merge"] = accuracy(to_model(plain), split.x_test, split.y_test)

    start = time.perf_counter()
    clusters = cluster_groups(graph, analysis, plan)
    data = {"input": split.x_train}
    report = csgd.train(
        graph, analysis, clusters, data, labels=split.y_train, epochs=args.epochs, lr=args.lr,
        epsilon=args.epsilon, normalise=not args.no_temporary_bn,
    )  # fmt: skip
    row["train_s"] = time.perf_counter() - start
    trained = to_model(graph)
    row["trained_unmerged"] = accuracy(trained, split.x_test, split.y_test)
    feeds = {"input": split.x_test}
    before = verify(trained.SerializeToString(), feeds)[0]
    merge(graph, analysis, plan, clusters=clusters)
    merged = to_model(graph)
    after = verify(merged.SerializeToString(), feeds)[0]
    row.update(
        csgd_merge=accuracy(merged, split.x_test, split.y_test),
        merge_rel_change=_rel(after, before),
        spread=report.spread,
        final_loss=report.final_loss,
        temporary_norms=report.temporary_norms,
        epochs=args.epochs,
        lr=args.lr,
    )
    return row


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nets", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    p.add_argument("--styles", nargs="+", default=["explicit", "folded"])
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=16)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-temporary-bn", action="store_true", help="train folded nets as they are")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "irprune-digits")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/csgd.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    head = f"{'net':18}{'style':9}{'MACs':>6}{'orig':>7}{'merge':>7}{'C-SGD':>7}{'delta':>7}"
    print(head + f"{'merge change':>14}{'spread':>9}{'train':>7}")
    for name in args.nets:
        for style in args.styles:
            r = bench(name, style, args)
            rows.append(r)
            print(
                f"{name:18}{style:9}{r['mac_ratio']:>6.3f}{100 * r['original']:>7.2f}"
                f"{100 * r['merge']:>7.2f}{100 * r['csgd_merge']:>7.2f}"
                f"{100 * (r['csgd_merge'] - r['original']):>+7.2f}{r['merge_rel_change']:>14.2e}"
                f"{r['spread']:>9.1e}{r['train_s']:>6.0f}s",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
