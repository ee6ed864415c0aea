"""Set-level references for the evaluation: the best any per-frame choice could do.

:func:`budgeted_oracle` knows every image's task score at every rate point
and picks, per image, the rate points that minimise the total bytes while
the set's accuracy drop stays within a tolerance -- the bound "at equal
accuracy" (the ``oracle`` policy instead keeps every single output unchanged).
It is the Lagrangian relaxation of this multiple-choice knapsack: for a
price ``mu`` each image minimises ``bytes - mu x score`` (``+ mu x RMSE`` for
depth), and ``mu`` is bisected to the cheapest value meeting the tolerance;
solutions on the convex hull are optimal, the gap elsewhere is at most one
image's step.

:func:`rank_agreement` says whether a metric can tell robust images from
fragile ones at all: the Spearman correlation, over images, between the
metric at a rate point and the rung the oracle needs.
"""
from __future__ import annotations

import numpy as np

from edge.policies.accuracy import accuracy_drop, damage, unchanged
from edge.policies.table import ReplayArrays


def budgeted_oracle(arr: ReplayArrays, tolerance: float, iterations: int = 80) -> np.ndarray:
    """Per image, the ladder index of the byte-minimal choice whose set drop is within ``tolerance``."""
    rows = np.arange(arr.n_images)
    sign = -1.0 if arr.task == "dpt" else 1.0  # dpt scores are RMSE: lower is better
    nbytes = arr.bytes.astype(float)
    score = arr.task_score

    def choose(mu: float) -> np.ndarray:
        cost = nbytes - mu * sign * score
        # Ties (equal cost): the cheaper rate point, i.e. the larger index.
        return cost.shape[1] - 1 - np.argmin(cost[:, ::-1], axis=1)

    def ok(choice: np.ndarray) -> bool:
        return accuracy_drop(arr.task, score[rows, choice], arr.ref_score) <= tolerance + 1e-9

    if ok(choose(0.0)):
        return choose(0.0)
    hi = 1.0
    while not ok(choose(hi)) and hi < 1e15:
        hi *= 10.0
    if not ok(choose(hi)):
        return choose(hi)  # the tolerance is out of reach: the most accurate choice found
    lo = hi / 10.0 if hi > 1.0 else 0.0  # choose(lo) misses the tolerance; choose(hi) meets it
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if ok(choose(mid)) else (mid, hi)
    return choose(hi)


def oracle_rungs(arr: ReplayArrays) -> np.ndarray:
    """Per image, the cheapest ladder index whose task output is unchanged (0 if none is)."""
    ok = unchanged(arr.task, damage(arr.task, arr.task_score, arr.ref_score[:, None]))
    last = ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)
    return np.where(ok.any(axis=1), last, 0)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def rank_agreement(arr: ReplayArrays, metric: str, rung: int, higher_is_better: bool) -> float | None:
    """Spearman correlation over images of the metric's quality at ``rung`` and the oracle's rung.

    Positive: images the metric scores better are the ones that tolerate more compression
    (what a CFQA threshold needs). None when either side is constant.
    """
    quality = arr.metric(metric)[:, rung] * (1.0 if higher_is_better else -1.0)
    need = oracle_rungs(arr).astype(float)
    if np.ptp(quality) == 0 or np.ptp(need) == 0:
        return None
    a, b = _ranks(quality), _ranks(need)
    return float(np.corrcoef(a, b)[0, 1])
