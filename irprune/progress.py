"""Progress for long steps (calibration runs, sensitivity curves, latency measurement).

Passes never draw anything: they wrap their loop in :func:`track` (or advance a :func:`task`),
which reports ``(label, done, total)`` to an optional callback they were given and to the
display the caller switched on with :func:`enabled` (the CLI does, on stderr). The display draws
only when its stream is a terminal and not ``--quiet``; otherwise every call here is a cheap
no-op, so output redirected to a file or a pipe stays clean.

    with progress.enabled(sys.stderr, quiet=args.quiet):
        prune(...)                      # passes inside draw "calibration  12/40 [####....]"
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

T = TypeVar("T")

Callback = Callable[[str, int, "int | None"], None]
"""``callback(label, done, total)``; total is None when unknown."""


class _Stream(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...
    def isatty(self) -> bool: ...


_BAR = 24
DEFAULT_DELAY = 0.3  # seconds: a step faster than this never draws (no flicker for quick steps)


@dataclass
class Display:
    """Draws one status line (the most recently advanced task), redrawn in place with ``\\r``."""

    stream: _Stream
    delay: float = DEFAULT_DELAY
    interval: float = 0.1  # at most this often
    started: dict[str, float] = field(default_factory=dict)
    last_draw: float = 0.0
    drawn: bool = False

    def update(self, label: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        start = self.started.setdefault(label, now)
        final = total is not None and done >= total
        if now - start < self.delay or (not final and now - self.last_draw < self.interval):
            return
        self.last_draw = now
        self.stream.write("\r\x1b[K" + line(label, done, total, now - start))
        self.stream.flush()
        self.drawn = True
        if final:
            self.started.pop(label, None)

    def close(self) -> None:
        """Erase the status line so what follows starts on a clean line."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


def line(label: str, done: int, total: int | None, elapsed: float) -> str:
    """The status text: ``label  done/total [#####.....]  42%  1.3s``."""
    if not total:
        return f"{label}  {done}  {elapsed:.1f}s"
    frac = min(1.0, done / total)
    filled = round(frac * _BAR)
    bar = "#" * filled + "." * (_BAR - filled)
    return f"{label}  {done}/{total} [{bar}] {frac:4.0%}  {elapsed:.1f}s"


_DISPLAY: ContextVar[Display | None] = ContextVar("irprune_progress_display", default=None)


@contextmanager
def enabled(
    stream: _Stream,
    *,
    quiet: bool = False,
    force: bool = False,
    delay: float | None = None,
) -> Iterator[Display | None]:
    """Show progress on ``stream`` for the steps run inside, if it is a terminal (or ``force``)
    and not ``quiet``. Yields the display, or None when nothing will be drawn."""
    isatty = getattr(stream, "isatty", None)
    draw = not quiet and (force or (callable(isatty) and bool(isatty())))
    wait = DEFAULT_DELAY if delay is None else delay
    display = Display(stream, delay=wait) if draw else None
    token = _DISPLAY.set(display)
    try:
        yield display
    finally:
        _DISPLAY.reset(token)
        if display is not None:
            display.close()


def interrupt() -> None:
    """Erase the status line (if one is drawn) before other text goes to the same stream; the
    next update draws it again. The CLI's log handler calls this before every record."""
    display = _DISPLAY.get()
    if display is not None:
        display.close()


def _report(label: str, done: int, total: int | None, callback: Callback | None) -> None:
    if callback is not None:
        callback(label, done, total)
    display = _DISPLAY.get()
    if display is not None:
        display.update(label, done, total)


@dataclass
class Task:
    """A step advanced by hand: ``task.advance()`` after each unit of work."""

    label: str
    total: int | None
    callback: Callback | None = None
    done: int = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        _report(self.label, self.done, self.total, self.callback)


@contextmanager
def task(label: str, total: int | None = None, callback: Callback | None = None) -> Iterator[Task]:
    """A step of ``total`` units; reports 0 on entry, then every ``advance``."""
    t = Task(label, total, callback)
    _report(label, 0, total, callback)
    yield t


def track(
    items: Iterable[T],
    label: str,
    *,
    total: int | None = None,
    callback: Callback | None = None,
) -> Iterator[T]:
    """Yield ``items`` unchanged, reporting progress after each one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(label, total, callback) as t:
        for item in items:
            yield item
            t.advance()
