"""Shared pieces of the real-model tasks (``benchmarks/real_tasks.py``): array types, seeded
random helpers, fonts, words, and box matching."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]
# One array per graph output: the per-sample outputs (as the model returns them for batch 1)
# stacked on a new axis 0, so outputs[k][i] is output k of sample i.
Outputs = list[np.ndarray]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in input pixels

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
MEAN_IMAGENET = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD_IMAGENET = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_WORD_TEXT = """
    the of and to in is that for it as was with be by on not he this are or his from at which
    but have an they you were her she there been one all we their has would when if so no will
    more can said who up out about into than them other time some could these two may first then
    do any like my now over such our man me even most made after also did many off before must
    through years where much your way well down should because each just those people how too
    little state good very make world still own see men work long here get both between life
    being under never day same another know while last might us great old year come since
    against go came right used take three house page line text paper river market table number
    system water report green north office model value order light field level"""
WORDS = tuple(_WORD_TEXT.split())


@cache
def load_font(name: str, size: int) -> Any:
    """A DejaVu TrueType font (Pillow)."""
    from PIL import ImageFont

    path = FONT_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"font {path} is missing (install fonts-dejavu-core)")
    return ImageFont.truetype(str(path), size)


def task_rng(seed: int, task: str) -> np.random.Generator:
    """A generator per (seed, task), so tasks do not share random streams."""
    return np.random.default_rng([seed, *task.encode()])


def pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def rand_color(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    """An RGB colour near grey: a base level in [lo, hi) with a little tint per channel."""
    base = int(rng.integers(lo, hi))
    return tuple(int(np.clip(base + rng.integers(-12, 13), 0, 255)) for _ in range(3))


def add_noise(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    noisy = rgb.astype(np.float32) + rng.normal(0.0, sigma, rgb.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def random_words(rng: np.random.Generator, count: int) -> str:
    """``count`` words of ``WORDS`` (10% numbers, 15% capitalised), space-separated."""
    out = []
    for _ in range(count):
        r = rng.random()
        if r < 0.1:
            out.append(str(int(rng.integers(2, 1000))))
        else:
            word = pick(rng, WORDS)
            out.append(word.capitalize() if r > 0.85 else word)
    return " ".join(out)


def to_chw_bgr(rgb: np.ndarray) -> np.ndarray:
    """HWC RGB -> CHW BGR (the packages read images with cv2, i.e. BGR)."""
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))


def imagenet_chw(rgb: np.ndarray) -> np.ndarray:
    """HWC RGB uint8 -> CHW float32 BGR, /255 then ImageNet mean/std (applied in BGR order, as
    the PaddleOCR-family packages do)."""
    bgr = rgb[:, :, ::-1].astype(np.float32) / 255.0
    return ((bgr - MEAN_IMAGENET) / STD_IMAGENET).transpose(2, 0, 1)


def stack(samples: list[np.ndarray]) -> np.ndarray:
    return np.stack(samples).astype(np.float32)


def overlaps(box: Box, boxes: Sequence[Box], gap: float) -> bool:
    """``box`` comes within ``gap`` pixels of any of ``boxes``."""
    return any(
        not (
            box[2] + gap < o[0] or o[2] + gap < box[0] or box[3] + gap < o[1] or o[3] + gap < box[1]
        )
        for o in boxes
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, [len(a), len(b)]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _matches(pred: np.ndarray, truth: np.ndarray, thr: float) -> int:
    """Greedy one-to-one matches at IoU >= ``thr`` (best truths first)."""
    if not len(pred) or not len(truth):
        return 0
    iou = box_iou(truth, pred)
    used: set[int] = set()
    for t in np.argsort(-iou.max(1)):
        for p in np.argsort(-iou[t]):
            if iou[t, p] < thr:
                break
            if p not in used:
                used.add(int(p))
                break
    return len(used)


def match_counts(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    thr: float = 0.5,
    pred_classes: Sequence[np.ndarray] | None = None,
    truth_classes: Sequence[np.ndarray] | None = None,
) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of greedy one-to-one box matching at
    IoU >= ``thr``, pooled over the images; with classes, boxes match only within a class."""
    tp = fp = fn = 0
    for i, (pred, truth) in enumerate(zip(preds, truths, strict=True)):
        pred, truth = np.asarray(pred).reshape(-1, 4), np.asarray(truth).reshape(-1, 4)
        if pred_classes is None or truth_classes is None:
            matched = _matches(pred, truth, thr)
        else:
            pc, tc = np.asarray(pred_classes[i]), np.asarray(truth_classes[i])
            matched = sum(
                _matches(pred[pc == c], truth[tc == c], thr) for c in np.union1d(pc, tc).tolist()
            )
        tp += matched
        fp += len(pred) - matched
        fn += len(truth) - matched
    return tp, fp, fn


def match_f1(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    thr: float = 0.5,
    pred_classes: Sequence[np.ndarray] | None = None,
    truth_classes: Sequence[np.ndarray] | None = None,
) -> float:
    """F1 of ``match_counts`` (1.0 when neither side has a box)."""
    tp, fp, fn = match_counts(preds, truths, thr, pred_classes, truth_classes)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def make_session(path: str | Path) -> Any:
    """An onnxruntime CPU session with one thread and all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # ddddocr's common.onnx declares a wrong output shape
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
