"""Voice activity detection with silero-vad 6.2.3 (``silero_vad/data/silero_vad.onnx``, what
``load_silero_vad(onnx=True)`` loads), scored per 32 ms frame on synthetic speech.

Clips are 5.12 s at 16 kHz: zero to two English utterances spoken by ``espeak-ng`` (random
words, 5 accents x 13 voice variants, 130-210 words/min, pitch 25-75; resampled from 22.05
kHz), mixed into white, pink or brown noise, mains hum, or a tune of harmonic tones (pitched
non-speech), at 0-30 dB SNR, the mix peaking at 0.05-0.9. A frame is labelled speech when at
least half of its 512 samples lie between the first and the last audible sample of an
utterance (pauses between words count as speech, silence around the utterance does not).

The model is run the way the package's ``OnnxWrapper`` runs it: 512-sample chunks, each with
the previous chunk's last 64 samples prepended (``input`` is [1, 576]; without that context the
model outputs ~0 everywhere), the LSTM ``state`` [2, 1, 128] carried from chunk to chunk (zeros
at the start of a clip), and ``sr`` = 16000 (an int64 scalar; the graph's top-level If picks the
16 kHz branch with it; any other value runs the 8 kHz weights). Speech is P > 0.5, the
package's threshold.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .real_common import Feeds, Outputs, make_session, pick, random_words, task_rng

VAD_SPEC = "silero-vad==6.2.3"
VAD_MEMBER = "silero_vad/data/silero_vad.onnx"
SAMPLE_RATE = 16000
CHUNK = 512  # samples per model call (32 ms) at 16 kHz
CONTEXT = 64  # samples of the previous chunk prepended to each call
FRAMES = 160  # model calls per clip: 5.12 s
STATE_SHAPE = (2, 1, 128)
VAD_THRESH = 0.5
FIXED_INPUTS: dict[str, np.ndarray] = {"sr": np.array(SAMPLE_RATE, dtype=np.int64)}
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"input": (1, CONTEXT + CHUNK), "state": STATE_SHAPE}

_LANGUAGES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029")
_VARIANTS = ("", *(f"+m{i}" for i in range(1, 8)), *(f"+f{i}" for i in range(1, 6)))
_NOISES = ("white", "pink", "brown", "hum", "tones")


def _espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``espeak-ng``'s rendering of ``text`` as float32 samples at 16 kHz."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(raw)) as wav:  # the streamed header's frame count is bogus
        rate, width = wav.getframerate(), wav.getsampwidth()
        pcm = wav.readframes(wav.getnframes())
    if width != 2:
        raise ValueError(f"espeak-ng wrote {8 * width}-bit audio, expected 16-bit")
    return _resample(np.frombuffer(pcm, dtype="<i2") / 32768.0, rate, SAMPLE_RATE)


def _resample(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling by truncating (or zero-padding) the spectrum."""
    m = round(len(x) * new_rate / rate)
    spectrum = np.fft.rfft(x)
    out = np.zeros(m // 2 + 1, dtype=complex)
    k = min(len(out), len(spectrum))
    out[:k] = spectrum[:k]
    return (np.fft.irfft(out, m) * (m / len(x))).astype(np.float32)


def _audible_span(x: np.ndarray) -> tuple[int, int]:
    """First and last sample of the 10 ms windows within 40 dB of the loudest one."""
    win = SAMPLE_RATE // 100
    frames = x[: len(x) // win * win].reshape(-1, win)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (-40 / 20))
    return int(loud[0] * win), int((loud[-1] + 1) * win)


def _utterance(rng: np.random.Generator) -> np.ndarray:
    """2-7 words in a random English voice, trimmed to the audible part."""
    voice = pick(rng, _LANGUAGES) + pick(rng, _VARIANTS)
    speed, pitch = int(rng.integers(130, 211)), int(rng.integers(25, 76))
    x = _espeak(random_words(rng, int(rng.integers(2, 8))), voice, speed, pitch)
    start, stop = _audible_span(x)
    return x[start:stop]


def _noise(rng: np.random.Generator, kind: str, length: int) -> np.ndarray:
    """Unit-RMS noise: white, pink (1/f power), brown (1/f^2), 50/60 Hz hum with harmonics, or
    a tune of harmonic tones (100-400 ms notes, a non-speech sound with pitch) over white noise."""
    if kind == "tones":
        x = 0.05 * rng.normal(size=length)
        start = 0
        while start < length:
            note = int(rng.uniform(0.1, 0.4) * SAMPLE_RATE)
            t = np.arange(min(note, length - start)) / SAMPLE_RATE
            f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
            tone = sum(np.sin(2 * np.pi * f0 * k * t) / k**1.5 for k in range(1, 6))
            x[start : start + len(t)] += tone * np.exp(-t * rng.uniform(2, 12))
            start += note
    elif kind == "hum":
        t = np.arange(length) / SAMPLE_RATE
        f0 = pick(rng, (50.0, 60.0))
        x = sum(
            rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
            for k in range(1, 8)
        )
        x = x + 0.05 * rng.normal(size=length)
    else:
        white = rng.normal(size=length)
        if kind == "white":
            x = white
        else:
            freqs = np.fft.rfftfreq(length, 1 / SAMPLE_RATE)
            power = 1.0 if kind == "pink" else 2.0
            shape = 1 / np.maximum(freqs, 20.0) ** (power / 2)
            x = np.fft.irfft(np.fft.rfft(white) * shape, length)
    return x / np.sqrt(np.mean(x**2))


def _clip(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One clip and its per-frame speech labels."""
    length = FRAMES * CHUNK
    speech = np.zeros(length)
    active = np.zeros(length, dtype=bool)
    count = int(rng.choice([0, 1, 2], p=[0.1, 0.5, 0.4]))
    placed: list[tuple[int, int]] = []
    for _ in range(count):
        x = _utterance(rng)[: length // 2]
        gain = 10 ** (rng.uniform(-6, 6) / 20) / np.sqrt(np.mean(x.astype(np.float64) ** 2))
        for _attempt in range(20):
            start = int(rng.integers(0, length - len(x) + 1))
            gap = SAMPLE_RATE // 2
            if all(start + len(x) + gap <= a or b + gap <= start for a, b in placed):
                speech[start : start + len(x)] += gain * x
                active[start : start + len(x)] = True
                placed.append((start, start + len(x)))
                break
    ref = np.sqrt(np.mean(speech[active] ** 2)) if active.any() else 1.0
    snr = rng.uniform(0, 30)
    noise = _noise(rng, pick(rng, _NOISES), length) * ref * 10 ** (-snr / 20)
    mix = speech + noise
    mix *= rng.uniform(0.05, 0.9) / max(np.abs(mix).max(), 1e-9)  # recording level
    labels = active.reshape(FRAMES, CHUNK).sum(1) >= CHUNK // 2
    return mix.astype(np.float32), labels


def make_vad_data(n: int, seed: int) -> tuple[Feeds, np.ndarray]:
    """``audio`` [n, FRAMES * CHUNK] float32 clips at 16 kHz; labels [n, FRAMES] bool."""
    rng = task_rng(seed, "silero_vad")
    clips, labels = zip(*(_clip(rng) for _ in range(n)), strict=True)
    return {"audio": np.stack(clips)}, np.stack(labels)


def _chunks(session: Any, audio: np.ndarray, fixed: Mapping[str, np.ndarray]) -> Any:
    """Yield (feeds, output probability) per chunk, carrying context and state."""
    state = np.zeros(STATE_SHAPE, dtype=np.float32)
    context = np.zeros(CONTEXT, dtype=np.float32)
    for t in range(len(audio) // CHUNK):
        window = np.concatenate([context, audio[t * CHUNK : (t + 1) * CHUNK]])[None]
        feeds = {"input": window, "state": state, **fixed}
        prob, state = session.run(["output", "stateN"], feeds)
        context = window[0, -CONTEXT:]
        yield feeds, float(prob.reshape(-1)[0])


def run_vad(session: Any, sample: Feeds, fixed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """One clip chunk by chunk as ``OnnxWrapper.audio_forward`` does: [FRAMES] speech
    probabilities."""
    return [np.array([p for _, p in _chunks(session, sample["audio"], fixed)], np.float32)]


def vad_inputs_seen(path: Path, data: Feeds, fixed: Mapping[str, np.ndarray]) -> Feeds:
    """Every model call on ``data`` by the original at ``path``, one row per call in the model's
    layout: ``input`` [k, 576], ``state`` [2, k, 128] (batch on axis 1), ``sr`` the scalar."""
    session = make_session(path)
    windows, states = [], []
    for audio in data["audio"]:
        for feeds, _ in _chunks(session, audio, fixed):
            windows.append(feeds["input"][0])
            states.append(feeds["state"][:, 0])
    return {"input": np.stack(windows), "state": np.stack(states, 1), **fixed}


def score_vad(
    outputs: Outputs, labels: np.ndarray, _original: Outputs | None, _meta: Mapping[str, str]
) -> float:
    """Per-frame speech / non-speech accuracy at P > 0.5, pooled over clips."""
    return float(np.mean((outputs[0] > VAD_THRESH) == labels))
