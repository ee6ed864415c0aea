"""Equal-accuracy accounting of rate control: one definition for every report.

Offline policy evaluation (``cfqa policies eval``), the simulator's summary
and every report count the same way:

- a captured frame **succeeds** when it is delivered before its deadline and
  the cloud's output from it is within the task's output tolerance
  (:mod:`cfqa_core.fidelity`: faithful to the uncompressed output, two-sided,
  label-free). A dropped, late or lost frame is a failure, never left out;
- **success rate** = successes / captured frames, with a 95 % interval;
- **bytes per captured frame** = bytes handed to the link / captured frames
  (a frame never sent costs nothing and counts as a failure);
- **matched fixed** = the cheapest single rung whose success rate on the
  *calibration* images reaches the target success rate (default 99 %);
- **oracle** = per image, the cheapest rung within tolerance: a bound that
  knows the cloud's output, never a rung picked because it "improves" an
  output against ground truth (an image no rung keeps within tolerance gets
  the highest-quality rung and counts as a failure);
- **savings** = 1 - bytes per captured frame / that of matched fixed, with a
  paired bootstrap interval over images; a policy only "saves" when its
  success rate is within one point of matched fixed (``equal_accuracy``).

Numpy only. Intervals: Wilson for a success rate, percentile bootstrap
(resampling images, fixed seed) for savings.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cfqa_core.errors import DataError
from cfqa_core.fidelity import within_tolerance

DEFAULT_TARGET_SUCCESS = 0.99
EQUAL_ACCURACY_POINTS = 0.01   # success rates within one point count as equal accuracy
BOOTSTRAP_RESAMPLES = 2000
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (``(nan, nan)`` for n = 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_savings(policy_bytes: np.ndarray, reference_bytes: np.ndarray, *,
                      groups: np.ndarray | None = None, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``1 - sum(policy) / sum(reference)``, resampling paired frames.

    With ``groups`` (e.g. the image each frame shows), whole groups are resampled: frames of the
    same image are not independent evidence, so the interval does not shrink with repeats.
    """
    a = np.asarray(policy_bytes, dtype=np.float64)
    b = np.asarray(reference_bytes, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        return (math.nan, math.nan)
    if groups is not None:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        a, b = np.bincount(inverse, weights=a), np.bincount(inverse, weights=b)
    idx = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    ref = b[idx].sum(axis=1)
    ok = ref > 0
    if not ok.any():
        return (math.nan, math.nan)
    sav = 1.0 - a[idx].sum(axis=1)[ok] / ref[ok]
    lo, hi = np.percentile(sav, [2.5, 97.5])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class FrameLedger:
    """Per captured frame: bytes handed to the link (0 if never sent) and whether it succeeded."""

    bytes: np.ndarray      # int, one per captured frame
    success: np.ndarray    # bool, one per captured frame
    delivered: np.ndarray  # bool: back before the deadline (whatever the output)
    groups: np.ndarray | None = None  # what makes frames dependent (the image shown), for intervals

    def __post_init__(self) -> None:
        if not (self.bytes.shape == self.success.shape == self.delivered.shape):
            raise DataError("frame ledger columns differ in length")
        if self.groups is not None and self.groups.shape != self.bytes.shape:
            raise DataError("frame ledger groups differ in length")

    @property
    def frames(self) -> int:
        return int(self.success.size)

    def success_rate(self) -> float:
        return float(self.success.mean()) if self.frames else math.nan

    def bytes_per_captured_frame(self) -> float:
        return float(self.bytes.mean()) if self.frames else math.nan

    def summary(self) -> dict[str, object]:
        """Success rate with its interval, bytes per captured frame, on-time delivery rate."""
        n, k = self.frames, int(self.success.sum())
        lo, hi = wilson_interval(k, n)
        return {
            "frames_captured": n,
            "frames_succeeded": k,
            "success_rate": _nan_none(self.success_rate()),
            "success_rate_ci": [_nan_none(lo), _nan_none(hi)],
            "on_time_rate": _nan_none(float(self.delivered.mean()) if n else math.nan),
            "bytes_per_captured_frame": _nan_none(self.bytes_per_captured_frame()),
        }


def ledger(bytes_sent: Sequence[float], delivered_on_time: Sequence[bool], output_change: Sequence[float],
           task: str | Sequence[str], tolerance: Mapping[str, float] | None = None,
           groups: Sequence | None = None) -> FrameLedger:
    """Build a ledger: success = delivered on time and the output within the task's tolerance.

    ``task`` is one task for every frame or one per frame; ``output_change``
    is NaN for frames whose output never came back.
    """
    b = np.asarray(bytes_sent, dtype=np.int64)
    on_time = np.asarray(delivered_on_time, dtype=bool)
    change = np.asarray(output_change, dtype=np.float64)
    if isinstance(task, str):
        within = within_tolerance(task, change, tolerance)
    else:
        tasks = np.asarray(task, dtype=object)
        within = np.zeros(change.shape, dtype=bool)
        for t in set(tasks.tolist()):
            sel = tasks == t
            within[sel] = within_tolerance(t, change[sel], tolerance)
    return FrameLedger(b, on_time & within, on_time, None if groups is None else np.asarray(groups))


# ---- ladders over a set of images ------------------------------------------------------


def rung_success(task: str, change: np.ndarray, tolerance: Mapping[str, float] | None = None) -> np.ndarray:
    """[images, rungs] booleans: the output at that rung is within tolerance."""
    return within_tolerance(task, np.asarray(change, dtype=np.float64), tolerance)


def matched_fixed_rung(task: str, change: np.ndarray, nbytes: np.ndarray, *,
                       target: float = DEFAULT_TARGET_SUCCESS,
                       tolerance: Mapping[str, float] | None = None) -> int:
    """Ladder index of the cheapest rung whose success rate over the images reaches ``target``.

    ``change`` and ``nbytes`` are [images, rungs] of the *calibration* images.
    When no rung reaches the target, the rung with the highest success rate
    (the cheaper on a tie) is returned.
    """
    ok = rung_success(task, change, tolerance).mean(axis=0)
    mean_bytes = np.asarray(nbytes, dtype=np.float64).mean(axis=0)
    passing = np.flatnonzero(ok >= target - 1e-12)
    if passing.size:
        return int(passing[np.argmin(mean_bytes[passing])])
    best = np.flatnonzero(ok == ok.max())
    return int(best[np.argmin(mean_bytes[best])])


def oracle_rungs(task: str, change: np.ndarray, nbytes: np.ndarray,
                 tolerance: Mapping[str, float] | None = None) -> np.ndarray:
    """Per image, the cheapest rung within tolerance (rung 0 when none is): a bound, not a policy."""
    ok = rung_success(task, change, tolerance)
    cost = np.where(ok, np.asarray(nbytes, dtype=np.float64), np.inf)
    pick = np.argmin(cost, axis=1)
    return np.where(ok.any(axis=1), pick, 0).astype(int)


def compare(policy: FrameLedger, reference: FrameLedger, *, seed: int = 0) -> dict[str, object]:
    """Savings of ``policy`` against ``reference`` on the same captured frames, with intervals."""
    if policy.frames != reference.frames:
        raise DataError(f"cannot compare runs of {policy.frames} and {reference.frames} captured frames")
    ref_bytes = float(reference.bytes.sum())
    savings = 1.0 - float(policy.bytes.sum()) / ref_bytes if ref_bytes > 0 else math.nan
    groups = policy.groups if policy.groups is not None and reference.groups is not None \
        and np.array_equal(policy.groups, reference.groups) else None
    lo, hi = bootstrap_savings(policy.bytes, reference.bytes, groups=groups, seed=seed)
    gap = policy.success_rate() - reference.success_rate()
    return {
        "savings": _nan_none(savings),
        "savings_ci": [_nan_none(lo), _nan_none(hi)],
        "success_rate_gap": _nan_none(gap),
        "equal_accuracy": bool(gap >= -EQUAL_ACCURACY_POINTS - 1e-12) if math.isfinite(gap) else False,
    }


def _nan_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)
