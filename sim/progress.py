"""Progress of a simulation in simulated seconds.

On a terminal it is a tqdm bar counting whole simulated seconds; when
stderr is not a terminal (CI, a log file, a pipe) it writes one plain log
line at most every ``interval_s`` of wall time instead, so logs do not fill
with carriage-return redraws.
"""
from __future__ import annotations

import math
import sys
import time
from typing import TextIO


class SimProgress:
    """Report simulated time ``t`` out of ``duration_s``; a context manager."""

    def __init__(
        self,
        duration_s: float,
        desc: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval_s: float = 10.0,
        bar: bool | None = None,
        refresh_s: float = 0.1,
    ) -> None:
        self.total = max(1, math.ceil(duration_s - 1e-9))
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.bar_mode = isatty() if bar is None else bar
        self.refresh_s = refresh_s
        self._bar = None
        self._done = 0
        self._t0 = 0.0
        self._last_line = -math.inf
        self._draining: int | None = None

    def __enter__(self) -> SimProgress:
        self._t0 = time.monotonic()
        if self.enabled and self.bar_mode:
            from tqdm import tqdm

            # Integer counts only: a float total gave 0.30000000000000004/30.0, and an
            # overshoot past the total gave '<-00:00' and a clamping warning.
            self._bar = tqdm(
                total=self.total, desc=self.desc, file=self.stream, leave=False, dynamic_ncols=True,
                mininterval=self.refresh_s,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} sim s "
                           "[{elapsed}<{remaining}]{postfix}",
            )
        elif self.enabled:
            self._log(f"started, {self.total} s to simulate")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and exc[0] is None:
            self._log(f"{self._done}/{self.total} sim s done")

    def _log(self, text: str) -> None:
        wall = time.monotonic() - self._t0
        self.stream.write(f"{self.desc}: {text}, {wall:.0f} s wall\n")
        self.stream.flush()
        self._last_line = time.monotonic()

    def update(self, t_s: float) -> None:
        """Simulated time has reached ``t_s`` (seconds, may exceed the duration while draining)."""
        done = min(self.total, int(math.floor(t_s + 1e-9)))
        if done <= self._done:
            return
        step, self._done = done - self._done, done
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step)
        elif time.monotonic() - self._last_line >= self.interval_s:
            self._log(f"{done}/{self.total} sim s ({100 * done // self.total} %)")

    def draining(self, open_frames: int) -> None:
        """Arrivals have stopped; ``open_frames`` frames still await their outcome."""
        if not self.enabled or open_frames == self._draining:
            return
        self._draining = open_frames
        if self._bar is not None:
            self._bar.set_postfix_str(f"draining {open_frames} frames")
        elif time.monotonic() - self._last_line >= self.interval_s:
            self._log(f"draining {open_frames} frames")
