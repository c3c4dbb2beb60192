"""A light progress bar for long loops over images, for stages that import no TensorFlow."""

from __future__ import annotations

import sys
import time

LOG_FROM = 1000  # images: in a log (not a terminal), shorter loops print no progress at all


class Progress:
    """``label: done/total images (pct) elapsed`` on stdout (as Keras' Progbar): redrawn on a
    terminal, a line every 10 s in a log (loops of ``LOG_FROM`` images or more only)."""

    def __init__(self, total: int, label: str, stream=None) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.quiet = not self.tty and total < LOG_FROM
        self.start = self.shown = time.perf_counter()

    def add(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.quiet:
            return
        if self.done >= self.total or now - self.shown >= (0.2 if self.tty else 10.0):
            self.shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        pct = 100 * self.done / self.total if self.total else 100
        line = (
            f"{self.label}: {self.done}/{self.total} images ({pct:.0f} %) {now - self.start:.1f}s"
        )
        end = "\n" if self.done >= self.total or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()
