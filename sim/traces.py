"""Uplink capacity traces: mahimahi and CSV loaders, synthetic generators.

A trace is a sorted list of *delivery opportunities* (mahimahi's
packet-delivery format): each is a millisecond at which one packet of
``MTU_BYTES`` can leave. A millisecond listed k times carries k packets and
the trace loops with a period equal to its last timestamp.

Opportunities are kept as a numpy array so that the link can map a time to
the index of the next opportunity (and back) with one binary search, across
loops; global index ``j`` lives in loop ``j // n`` at offset ``j % n``.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cfqa_core.errors import ScenarioError

MTU_BYTES = 1500
# Times compare in milliseconds with this tolerance, so an event landing on an
# opportunity's millisecond through float arithmetic still catches it.
_EPS_MS = 1e-6

SYNTHETIC_KINDS: tuple[str, ...] = ("constant", "steps", "random_walk", "onoff")

# Real cellular traces shipped with the package (source and licence in its README.md),
# so scenarios name them without anything beside the repository.
SHIPPED_TRACES_DIR = Path(__file__).resolve().parent / "traces_data"


@dataclass(frozen=True)
class Trace:
    """Delivery opportunities (ms, sorted, may repeat) looping every ``period_ms``."""

    times_ms: np.ndarray
    period_ms: int
    name: str = "trace"
    # Plain-list copy: bisect on a list beats numpy's scalar searchsorted by ~10x.
    _times: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_times", self.times_ms.astype(np.float64).tolist())
        if self.times_ms.size == 0:
            raise ScenarioError(f"{self.name}: empty trace (no delivery opportunities)")
        if self.period_ms <= 0:
            raise ScenarioError(f"{self.name}: trace period must be positive, got {self.period_ms} ms")
        if int(self.times_ms[-1]) > self.period_ms:
            raise ScenarioError(f"{self.name}: opportunity after the period end ({self.period_ms} ms)")

    @property
    def count(self) -> int:
        """Opportunities in one period."""
        return int(self.times_ms.size)

    @property
    def duration_s(self) -> float:
        return self.period_ms / 1000.0

    @property
    def mean_mbps(self) -> float:
        return self.count * MTU_BYTES * 8 / (self.period_ms / 1000.0) / 1e6

    def index_at(self, t_s: float) -> int:
        """Global index of the first opportunity at or after time ``t_s`` (seconds)."""
        t_ms = t_s * 1000.0
        loop = math.floor(t_ms / self.period_ms)
        rem = t_ms - loop * self.period_ms
        k = bisect_left(self._times, rem - _EPS_MS)
        if k == self.count:
            loop, k = loop + 1, 0
        return loop * self.count + k

    def time_s(self, j: int) -> float:
        """Time in seconds of the global opportunity ``j``."""
        loop, k = divmod(j, self.count)
        return (loop * self.period_ms + self._times[k]) / 1000.0

    def cursor(self) -> TraceCursor:
        """A :class:`TraceCursor` on this trace: ``index_at`` for a reader whose clock moves forward."""
        return TraceCursor(self)

    def capacity_mbps(self, edges_s: np.ndarray) -> np.ndarray:
        """Mean capacity (Mbit/s) in each interval between consecutive ``edges_s``."""
        idx = np.array([self.index_at(float(t)) for t in edges_s], dtype=np.int64)
        return np.diff(idx) * MTU_BYTES * 8 / np.diff(edges_s) / 1e6


class TraceCursor:
    """:meth:`Trace.index_at` and :meth:`Trace.time_s` for one reader whose clock moves forward.

    A link asks for the opportunity at "now" on every arrival, and its
    simulated clock never goes back: the cursor keeps its last answer (loop,
    offset in the loop, the searched millisecond) and resumes from there,
    searching only the opportunities after it (none when the answer has not
    moved). A query in another loop or earlier than the last one falls back
    to a search of the whole loop. Answers are the trace's, bit for bit: the
    same arithmetic on the same values, and a search from the last offset
    finds what the whole search finds because every opportunity before that
    offset lies before the last (smaller or equal) searched millisecond.
    """

    __slots__ = ("_times", "_count", "_period", "_loop", "_k", "_x", "time_s")

    def __init__(self, trace: Trace) -> None:
        self._times: list[float] = trace._times  # the trace's own plain-list copy (shared, not copied)
        # Time in seconds of the global opportunity ``j``: the trace's own (no state involved).
        self.time_s = trace.time_s
        self._count = trace.count
        self._period = trace.period_ms
        self._loop = -1   # no answer yet: the first query searches
        self._k = 0
        self._x = math.inf

    def index_at(self, t_s: float) -> int:
        """Global index of the first opportunity at or after ``t_s`` (as :meth:`Trace.index_at`)."""
        t_ms = t_s * 1000.0
        period = self._period
        loop = math.floor(t_ms / period)
        x = t_ms - loop * period - _EPS_MS
        times = self._times
        if loop == self._loop and x >= self._x:
            k = self._k
            if k < self._count and times[k] < x:
                k = bisect_left(times, x, k + 1)
        else:
            k = bisect_left(times, x)
        self._loop, self._k, self._x = loop, k, x
        count = self._count
        if k == count:
            return (loop + 1) * count
        return loop * count + k


# ---- loading ---------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ScenarioError(f"trace file not found: {path}")
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read trace {path}: {exc}") from exc


def load_mahimahi(path: str | Path) -> Trace:
    """Read a mahimahi trace (one integer millisecond per line)."""
    path = Path(path)
    lines = _read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ScenarioError(f"{path}: empty trace")
    try:
        times = np.array(lines).astype(np.int64)
    except ValueError:
        for i, line in enumerate(lines, 1):
            if not line.strip().lstrip("-").isdigit():
                raise ScenarioError(f"{path}:{i}: not an integer millisecond: {line.strip()!r}") from None
        raise
    if times[0] < 0:
        raise ScenarioError(f"{path}:1: negative timestamp {times[0]}")
    _check_monotonic(times, path, lambda i: i + 1)
    if times[-1] <= 0:
        raise ScenarioError(f"{path}: trace period (last timestamp) must be positive")
    return Trace(times, int(times[-1]), path.name)


def _check_monotonic(values: np.ndarray, path: Path, line_of) -> None:
    bad = np.flatnonzero(np.diff(values) < 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise ScenarioError(
            f"{path}:{line_of(i)}: timestamps not monotonic ({values[i]} after {values[i - 1]})"
        )


def load_csv(path: str | Path) -> Trace:
    """Read a ``time_s, Mbit/s`` CSV: each rate holds until the next row's time.

    The last row's rate holds for one more interval of the previous spacing;
    the trace then loops. A first line that is not numeric is a header.
    """
    path = Path(path)
    rows: list[tuple[int, float, float]] = []
    for i, line in enumerate(_read_lines(path), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            t, r = float(parts[0]), float(parts[1])
        except ValueError:
            if not rows and i == 1:
                continue  # header
            raise ScenarioError(f"{path}:{i}: expected 'time_s, Mbit/s', got {line.strip()!r}") from None
        if not (math.isfinite(t) and math.isfinite(r)) or t < 0 or r < 0:
            raise ScenarioError(f"{path}:{i}: time and rate must be finite and non-negative")
        rows.append((i, t, r))
    if not rows:
        raise ScenarioError(f"{path}: empty trace")
    if len(rows) == 1:
        raise ScenarioError(f"{path}: a CSV trace needs at least two rows")
    lines = np.array([r[0] for r in rows])
    t = np.array([r[1] for r in rows])
    rate = np.array([r[2] for r in rows])
    strictly = np.flatnonzero(np.diff(t) <= 0)
    if strictly.size:
        k = int(strictly[0]) + 1
        raise ScenarioError(f"{path}:{lines[k]}: timestamps not monotonic ({t[k]} after {t[k - 1]})")
    ends = np.append(t[1:], t[-1] + (t[-1] - t[-2]))
    return from_rate_segments(t, ends, rate, path.name)


def shipped_traces() -> list[str]:
    """Names of the shipped traces, relative to :data:`SHIPPED_TRACES_DIR` (``cellular/...``)."""
    return sorted(
        p.relative_to(SHIPPED_TRACES_DIR).as_posix()
        for p in SHIPPED_TRACES_DIR.rglob("*")
        if p.is_file() and p.suffix.lower() in (".up", ".down", ".csv")
    )


def find_trace(name: str | Path, search: tuple[Path, ...] = ()) -> Path:
    """A trace file: ``name`` as given, under each of ``search``, then among the shipped traces."""
    p = Path(name).expanduser()
    tries = [p] if p.is_absolute() else [*(d / p for d in search), p, SHIPPED_TRACES_DIR / p]
    for t in tries:
        if t.is_file():
            return t.resolve()
    raise ScenarioError(
        f"file not found: {name} (neither a path nor a shipped trace: {', '.join(shipped_traces()) or 'none'})"
    )


def load_trace(path: str | Path) -> Trace:
    """Load a trace by extension: ``.csv`` as CSV, anything else as mahimahi."""
    path = Path(path)
    return load_csv(path) if path.suffix.lower() == ".csv" else load_mahimahi(path)


def write_mahimahi(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` in mahimahi format (its last timestamp must be its period)."""
    if int(trace.times_ms[-1]) != trace.period_ms:
        raise ScenarioError(f"{trace.name}: the last opportunity must fall on the period end to loop")
    Path(path).write_text("\n".join(map(str, trace.times_ms.tolist())) + "\n")


# ---- synthetic traces ------------------------------------------------------------------


def from_rate_per_ms(rate_mbps: np.ndarray, name: str = "synthetic") -> Trace:
    """Opportunities realising a per-millisecond rate profile (Mbit/s), one period.

    Packets are released when the cumulative byte budget crosses a multiple
    of the MTU. The final millisecond always holds one opportunity so that the
    mahimahi period (the last timestamp) equals the profile's length.
    """
    rate = np.asarray(rate_mbps, dtype=np.float64)
    if rate.size == 0 or np.any(~np.isfinite(rate)) or np.any(rate < 0):
        raise ScenarioError(f"{name}: rates must be finite, non-negative and non-empty")
    cum = np.cumsum(rate * 125.0)  # bytes per millisecond at 1 Mbit/s
    packets = np.floor(cum / MTU_BYTES + 1e-9).astype(np.int64)
    counts = np.diff(packets, prepend=0)
    counts[-1] = max(counts[-1], 1)
    times = np.repeat(np.arange(1, rate.size + 1, dtype=np.int64), counts)
    return Trace(times, int(rate.size), name)


def from_rate_segments(starts_s: np.ndarray, ends_s: np.ndarray, rate_mbps: np.ndarray, name: str) -> Trace:
    """Piecewise-constant rate segments ``[start, end)`` in seconds -> one looping trace."""
    total_ms = int(round(float(ends_s[-1]) * 1000))
    ms = np.arange(total_ms) / 1000.0
    seg = np.clip(np.searchsorted(starts_s, ms, side="right") - 1, 0, len(rate_mbps) - 1)
    per_ms = np.where(ms >= starts_s[0], np.asarray(rate_mbps)[seg], 0.0)
    return from_rate_per_ms(per_ms, name)


def synthetic(
    kind: str,
    *,
    duration_s: float = 60.0,
    capacity_mbps: float = 5.0,
    levels_mbps: tuple[float, ...] = (2.0, 8.0, 4.0),
    step_s: float = 10.0,
    sigma: float = 0.2,
    min_mbps: float = 0.2,
    max_mbps: float = 20.0,
    on_s: float = 20.0,
    off_s: float = 5.0,
    seed: int = 0,
) -> Trace:
    """A synthetic trace.

    - ``constant``: ``capacity_mbps`` throughout.
    - ``steps``: ``levels_mbps`` in turn, each for ``step_s`` (cycled to ``duration_s``).
    - ``random_walk``: starts at ``capacity_mbps``; every ``step_s`` the rate is
      multiplied by ``exp(N(0, sigma))`` and clipped to [min_mbps, max_mbps].
    - ``onoff``: ``capacity_mbps`` for ``on_s`` then nothing for ``off_s`` (outages).
    """
    if duration_s <= 0:
        raise ScenarioError(f"synthetic trace: duration_s must be positive, got {duration_s}")
    n = int(round(duration_s * 1000))
    t = np.arange(n) / 1000.0
    if kind == "constant":
        rate = np.full(n, capacity_mbps)
    elif kind == "steps":
        if not levels_mbps or step_s <= 0:
            raise ScenarioError("synthetic steps trace: needs levels_mbps and a positive step_s")
        rate = np.asarray(levels_mbps, dtype=float)[(t // step_s).astype(int) % len(levels_mbps)]
    elif kind == "random_walk":
        if step_s <= 0 or not 0 < min_mbps <= max_mbps:
            raise ScenarioError("synthetic random_walk trace: needs step_s > 0 and 0 < min_mbps <= max_mbps")
        steps = int(math.ceil(duration_s / step_s))
        rng = np.random.default_rng(seed)
        log_rate = math.log(capacity_mbps) + np.cumsum(np.r_[0.0, rng.normal(0.0, sigma, steps - 1)])
        levels = np.clip(np.exp(log_rate), min_mbps, max_mbps)
        rate = levels[np.minimum((t // step_s).astype(int), steps - 1)]
    elif kind == "onoff":
        if on_s <= 0 or off_s < 0:
            raise ScenarioError("synthetic onoff trace: needs on_s > 0 and off_s >= 0")
        rate = np.where((t % (on_s + off_s)) < on_s, capacity_mbps, 0.0)
    else:
        raise ScenarioError(f"unknown synthetic trace kind '{kind}' (known: {', '.join(SYNTHETIC_KINDS)})")
    return from_rate_per_ms(rate, f"{kind}-{capacity_mbps:g}mbps")
