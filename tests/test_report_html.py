"""``--report-html``: one self-contained page, hostile names escaped, and the chart really drawn.

The page is opened in headless Chromium (Debian's ``chromium`` package; CI installs it): a
screenshot is decoded (a small zlib PNG decoder below, no new dependency) and the bars' colours
must cover the areas the report's widths say; ``--dump-dom`` must show the SVG elements.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from irprune import report_html
from irprune.cli import main
from irprune.demo import build_demo_model

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (CI installs it: .ci/run)"
)


@pytest.fixture(scope="module")
def pruned_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The demo model with a hostile name on its first conv, pruned by the CLI with
    ``--report-html``: (the page, the JSON report of the same run)."""
    d = tmp_path_factory.mktemp("html")
    model = build_demo_model(seed=0)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.name = HOSTILE
    onnx.save(model, str(d / "demo.onnx"))
    argv = [str(d / "demo.onnx"), "--target-flops", "0.5", "-q"]
    argv += ["--report", str(d / "r.json"), "--report-html", str(d / "r.html")]
    assert main(argv) == 0
    return d / "r.html", json.loads((d / "r.json").read_text())


# --- the page itself --------------------------------------------------------------------------


def test_page_is_self_contained_and_escapes_model_strings(
    pruned_report: tuple[Path, dict[str, Any]],
) -> None:
    path, report = pruned_report
    page = path.read_text(encoding="utf-8")
    assert any(HOSTILE in g["sources"] for g in report["groups"])  # the name reached the report
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert html.escape(HOSTILE, quote=True) in page
    tags = _Tags()
    tags.feed(page)
    assert tags.names <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p"} | {
        "div", "span", "b", "table", "tr", "th", "td", "svg", "rect", "text"
    }  # fmt: skip
    assert not {a for a in tags.attributes if a in ("src", "href") or a.startswith("on")}
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "default-src 'none'" in page  # and the CSP would block any fetch or script anyway
    # every section, with the numbers of this run
    for heading in ("Channel groups", "Cost", "Fidelity", "Latency", "Settings", "Timings"):
        assert f"<h2>{heading}" in page
    assert f"{report['fidelity']['cosine']:.6f}" in page
    assert f"{report['latency']['before_ms']:.3f} ms" in page
    assert f"{report['cost']['ratio']['macs']:.4f}" in page
    frozen = [g for g in report["groups"] if g["frozen"]]
    assert frozen and all(html.escape(g["frozen"][0]) in page for g in frozen)


def test_bars_follow_the_widths() -> None:
    groups = [
        {"id": 0, "size": 64, "kept": 16, "sources": ["a"], "frozen": []},
        {"id": 1, "size": 32, "kept": 32, "sources": ["b"], "frozen": []},
        {"id": 2, "size": 10, "kept": 10, "sources": ["c"], "frozen": ["reaches graph output"]},
    ]
    svg = report_html.width_bars(groups)
    rects = re.findall(r'<rect class="(\w+)" x="(\d+)" y="\d+" width="(\d+)"', svg)
    widths = {(cls, int(w)) for cls, _, w in rects}
    full = 520  # the widest group spans the bar area
    assert widths == {("kept", full // 4), ("removed", full - full // 4), ("kept", full // 2)} | {
        ("frozen", round(full * 10 / 64))
    }
    assert len({x for cls, x, _ in rects if cls != "removed"}) == 1  # one left edge


def test_dry_run_report_renders_without_measurements(tmp_path: Path) -> None:
    onnx.save(build_demo_model(seed=0), str(tmp_path / "m.onnx"))
    argv = [str(tmp_path / "m.onnx"), "--target-flops", "0.5", "--dry-run", "-q"]
    assert main([*argv, "--report-html", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "not measured (dry run)" in page and 'id="width-chart"' in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.html"]


class _Tags(HTMLParser):
    """Every element and attribute name in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self.attributes |= {name for name, _ in attrs}


# --- in headless Chromium ---------------------------------------------------------------------


def _chromium(tmp: Path, page: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"]
    cmd += ["--no-first-run", "--disable-background-networking", "--disable-component-update"]
    cmd += ["--disable-sync", f"--user-data-dir={profile}", "--window-size=1200,900", *args]
    return subprocess.run([*cmd, page.as_uri()], capture_output=True, timeout=120, check=True)


def decode_png(data: bytes) -> np.ndarray:
    """RGB(A) 8-bit non-interlaced PNG -> (height, width, channels) uint8."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + n
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), w * bpp
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(h):
        kind, line = raw[y * (stride + 1)], raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        out[y] = prev = _unfilter(kind, np.frombuffer(line, dtype=np.uint8), prev, bpp)
    return out.reshape(h, w, bpp)


def _unfilter(kind: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    if kind == 0:
        return line.copy()
    if kind == 1:  # Sub: running sum along the row, per channel
        summed = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.int64) % 256
        return summed.astype(np.uint8).reshape(-1)
    if kind == 2:
        return line + prev
    cur, up = bytearray(line.tobytes()), prev.tobytes()
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        if kind == 3:
            cur[i] = (cur[i] + (a + up[i]) // 2) & 255
            continue
        b, c = up[i], up[i - bpp] if i >= bpp else 0
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return np.frombuffer(bytes(cur), dtype=np.uint8)


def test_png_decoder_on_every_filter() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    raw = b""
    for y in range(5):  # encode each row with a different filter (0..4)
        row, up = image[y].reshape(-1).astype(int), (image[y - 1].reshape(-1) if y else None)
        up = np.zeros_like(row) if up is None else up.astype(int)
        left = np.concatenate([[0, 0, 0], row[:-3]])
        ul = np.concatenate([[0, 0, 0], up[:-3]])
        pred = [0 * row, left, up, (left + up) // 2, _paeth(left, up, ul)][y]
        raw += bytes([y]) + bytes(((row - pred) % 256).astype(np.uint8))
    ihdr = struct.pack(">IIBBBBB", 7, 5, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
    assert np.array_equal(decode_png(png + _chunk(b"IEND", b"")), image)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _mask(image: np.ndarray, colour: str) -> np.ndarray:
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return np.all(image[:, :, :3] == rgb, axis=2)


def _runs(rows: np.ndarray) -> int:
    """Number of separate vertical bands of True rows."""
    return int(np.sum(rows[1:] & ~rows[:-1]) + rows[0])


@needs_chromium
def test_chart_is_drawn_in_chromium(
    pruned_report: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    page, report = pruned_report
    _chromium(tmp_path, page, f"--screenshot={tmp_path / 'shot.png'}")
    image = decode_png((tmp_path / "shot.png").read_bytes())
    assert image.shape[:2] == (900, 1200)
    # the width chart's area: the bounding box of its background colour
    rows, cols = (np.flatnonzero(_mask(image, report_html.CHART_BG).any(axis=k)) for k in (1, 0))
    assert len(rows) > 0, "the width chart is not on the screenshot"
    chart = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    kept, removed, frozen = (
        _mask(chart, c) for c in (report_html.KEPT, report_html.REMOVED, report_html.FROZEN)
    )
    # outside the chart, only the legend's 12x12 swatches carry the bars' colours
    assert _mask(image, report_html.KEPT).sum() - kept.sum() <= 12 * 12
    groups = report["groups"]
    prunable = [g for g in groups if not g["frozen"]]
    # one blue band per prunable group, one grey band per frozen group
    assert _runs(kept.any(axis=1)) == len(prunable)
    assert _runs(frozen.any(axis=1)) == len(groups) - len(prunable)
    # blue : amber areas as kept : removed channels (bars of equal height, one scale)
    expected = sum(g["kept"] for g in prunable) / sum(g["size"] for g in prunable)
    assert kept.sum() / (kept.sum() + removed.sum()) == pytest.approx(expected, abs=0.02)
    bars = kept.sum() + removed.sum() + frozen.sum()
    frozen_share = sum(g["size"] for g in groups if g["frozen"]) / sum(g["size"] for g in groups)
    assert frozen.sum() / bars == pytest.approx(frozen_share, abs=0.02)
    # all bars start at one left edge; amber only to the right of blue in each row
    left = {int(np.argmax(m.any(axis=0))) for m in (kept, frozen)}
    assert len(left) == 1
    for y in np.flatnonzero(removed.any(axis=1)):
        assert np.flatnonzero(removed[y]).min() > np.flatnonzero(kept[y]).max()
    # the cost chart: after/before areas as the cost ratios (each pair on its own scale)
    before, after = _mask(image, report_html.BEFORE), _mask(image, report_html.AFTER)
    ratios = [report["cost"]["ratio"][k] for k in ("macs", "params", "bytes")]
    assert after.sum() / before.sum() == pytest.approx(np.mean(ratios), abs=0.02)


@needs_chromium
def test_dom_has_the_chart_and_no_script(
    pruned_report: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    page, report = pruned_report
    dom = _chromium(tmp_path, page, "--dump-dom").stdout.decode("utf-8")
    chart = dom[dom.index('<svg id="width-chart"') : dom.index("</svg>", dom.index("width-chart"))]
    assert chart.count('class="kept"') == sum(1 for g in report["groups"] if not g["frozen"])
    assert chart.count('class="frozen"') == sum(1 for g in report["groups"] if g["frozen"])
    assert chart.count('class="removed"') == sum(
        1 for g in report["groups"] if g["kept"] < g["size"]
    )
    assert "<script" not in dom and "<img" not in dom  # the hostile name stayed text
    assert html.escape("<script>alert(") in dom
