"""The paper's findings, each tested on a benchmark table with a bootstrap interval.

Every finding is a claim "A > B" about oriented correlations (+1 = the metric
tracks the distortion perfectly, see ``bench.protocol``). Its evidence is the
difference A - B with a 95 % bootstrap interval over originals: the same
resampled originals feed A and B, so differences within a task are paired by
original. The verdict is read off the interval:

- **holds**: the interval lies above 0;
- **does not hold**: the interval lies below ``MARGIN`` (B is better, or the two
  are equal to within ``MARGIN``, which refutes a claim of superiority);
- **undecided (interval too wide)**: otherwise.

A claim made of several comparisons (cosine against each other baseline, Seg
against each other task, ...) holds when all hold and does not hold when any
does not hold. A claim whose groups are absent from the table is "not testable".
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cfqa_core.benchmark.bootstrap import CellSamples, OriginalBootstrap, interval, mean_samples
from cfqa_core.benchmark.protocol import per_feature_correlations, task_order
from cfqa_core.errors import DataError

HOLDS, FAILS, UNDECIDED, UNTESTABLE = "holds", "does not hold", "undecided (interval too wide)", "not testable"
MARGIN = 0.02  # correlation units: a difference this small is no difference for a ranking of metrics
BASELINES: tuple[str, ...] = ("mse", "cosine", "cka")
PROXY_GAIN = 0.10  # the task-aware metric's target over cosine


@dataclass
class Comparison:
    """One difference A - B: point estimate, 95 % interval, verdict."""

    label: str
    estimate: float
    lo: float
    hi: float
    status: str
    n: int = 0  # per-feature values behind the estimate

    def text(self) -> str:
        return f"{self.label}: {self.estimate:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


@dataclass
class Verdict:
    key: str
    claim: str
    status: str
    detail: str
    numbers: dict = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)


def decide(lo: float, hi: float, margin: float = MARGIN) -> str:
    """The verdict of a claim "difference > 0" from its interval."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return UNTESTABLE
    if lo > 0:
        return HOLDS
    if hi < margin:
        return FAILS
    return UNDECIDED


def combine(statuses: Sequence[str]) -> str:
    """All hold: holds; any fails: does not hold; any untestable (and none fails): not testable."""
    if not statuses:
        return UNTESTABLE
    if FAILS in statuses:
        return FAILS
    if all(s == HOLDS for s in statuses):
        return HOLDS
    if UNTESTABLE in statuses:
        return UNTESTABLE
    return UNDECIDED


def compare(label: str, a: np.ndarray, b: np.ndarray, point_a: float, point_b: float, n: int = 0,
            offset: float = 0.0, margin: float = MARGIN) -> Comparison:
    """A - B - offset from bootstrap samples ``a``, ``b`` (same resamples) and point estimates."""
    diff = np.asarray(a) - np.asarray(b) - offset
    lo, hi = interval(diff)
    est = point_a - point_b - offset
    return Comparison(label, float(est), lo, hi, decide(lo, hi, margin), n)


class Cells:
    """Bootstrap samples and point estimates of oriented correlation per (codec, task, metric) cell."""

    def __init__(self, per_feature, boot: OriginalBootstrap, column: str = "plcc_oriented"):
        self.boot = boot
        self.column = column
        self._groups = {k: g for k, g in per_feature.groupby(["codec", "task", "metric"], sort=True)}
        self._values = {}
        for k, g in self._groups.items():
            v = g[column].to_numpy(np.float64)
            self._values[k] = v[np.isfinite(v)]
        self._keys = [k for k, v in self._values.items() if v.size]
        self._cache: dict[tuple, CellSamples] = {}

    def keys(self) -> list[tuple[str, str, str]]:
        """Cells with at least one defined value."""
        return list(self._keys)

    def values(self, key) -> np.ndarray:
        """The cell's defined per-feature values."""
        return self._values[key]

    def samples(self, key) -> CellSamples:
        if key not in self._cache:
            g = self._groups[key]
            self._cache[key] = self.boot.cell(key[1], g["image_id"].to_numpy(), g[self.column].to_numpy())
        return self._cache[key]

    def group(self, keys, stat: str = "mean") -> tuple[np.ndarray, float, int]:
        """(bootstrap samples, point estimate, values) of the mean over ``keys`` of each cell's mean (or std)."""
        keys = [k for k in keys if k in self._groups and self.values(k).size]
        if not keys:
            return np.full(self.boot.resamples, np.nan), float("nan"), 0
        if stat == "mean":
            samples = mean_samples([self.samples(k) for k in keys])
            point = float(np.mean([self.values(k).mean() for k in keys]))
        else:
            samples = np.mean(np.stack([self.samples(k).std() for k in keys]), axis=0)
            point = float(np.mean([self.values(k).std() for k in keys]))
        return samples, point, int(sum(self.values(k).size for k in keys))


def _metric_names(cells: Cells) -> list[str]:
    return [m for m in BASELINES if any(k[2] == m for k in cells.keys())]


def _join(comps: list[Comparison]) -> str:
    return "; ".join(c.text() for c in comps)


def finding_cosine_best(cells: Cells) -> Verdict:
    claim = "cosine is the best and most stable baseline metric (higher mean PLCC, lower spread than MSE and CKA)"
    base = _metric_names(cells)
    others = [m for m in base if m != "cosine"]
    if "cosine" not in base or not others:
        return Verdict("cosine_best", claim, UNTESTABLE,
                       f"needs cosine and MSE or CKA with defined correlations (have: {', '.join(base) or 'none'})")
    comps = []
    for m in others:
        # Only the cells both metrics have, so the difference is not a difference of codec mix.
        have = set(cells.keys())
        shared = [k for k in cells.keys() if k[2] == "cosine" and (k[0], k[1], m) in have]
        cos, oth = shared, [(k[0], k[1], m) for k in shared]
        a, pa, na = cells.group(cos)
        b, pb, _ = cells.group(oth)
        comps.append(compare(f"mean PLCC cosine - {m}", a, b, pa, pb, na))
        sa, spa, _ = cells.group(cos, "std")
        sb, spb, _ = cells.group(oth, "std")
        comps.append(compare(f"per-feature PLCC std {m} - cosine", sb, sa, spb, spa, na))
    status = combine([c.status for c in comps])
    return Verdict("cosine_best", claim, status, _join(comps) + " (mean over codec x task cells).",
                   comparisons=comps)


def finding_handcrafted(cells: Cells, kinds: dict[str, str]) -> Verdict:
    claim = "hand-crafted codecs are more predictable than learned ones (higher mean PLCC)"
    base = _metric_names(cells)
    keys = [k for k in cells.keys() if k[2] in base]
    tasks = [t for t in task_order({k[1] for k in keys})
             if {kinds.get(k[0]) for k in keys if k[1] == t} >= {"handcrafted", "learned"}]
    if not base or not tasks:
        return Verdict("handcrafted_vs_learned", claim, UNTESTABLE,
                       "needs a task with both a hand-crafted and a learned codec")
    per_task_a, per_task_b, pa, pb, n = [], [], [], [], 0
    for t in tasks:
        a, p1, n1 = cells.group([k for k in keys if k[1] == t and kinds.get(k[0]) == "handcrafted"])
        b, p2, n2 = cells.group([k for k in keys if k[1] == t and kinds.get(k[0]) == "learned"])
        per_task_a.append(a)
        per_task_b.append(b)
        pa.append(p1)
        pb.append(p2)
        n += n1 + n2
    # Mean over tasks of the per-task difference: a codec that covers one task does not tilt the mix.
    comp = compare("mean PLCC hand-crafted - learned", np.mean(per_task_a, axis=0), np.mean(per_task_b, axis=0),
                   float(np.mean(pa)), float(np.mean(pb)), n)
    hc = sorted({k[0] for k in keys if kinds.get(k[0]) == "handcrafted"})
    lc = sorted({k[0] for k in keys if kinds.get(k[0]) == "learned"})
    detail = (f"{comp.text()} over tasks {', '.join(tasks)} and {', '.join(base)}; hand-crafted: {', '.join(hc)}; "
              f"learned: {', '.join(lc)}.")
    return Verdict("handcrafted_vs_learned", claim, comp.status, detail,
                   {"handcrafted": hc, "learned": lc, "tasks": tasks}, [comp])


def _task_gap(cells: Cells, base: list[str], easy: str, hard: str) -> Comparison | None:
    """Mean PLCC of task ``easy`` - task ``hard`` over the codecs both have (all codecs if none shared)."""
    keys = [k for k in cells.keys() if k[2] in base]
    ca = {k[0] for k in keys if k[1] == easy}
    cb = {k[0] for k in keys if k[1] == hard}
    shared = ca & cb or (ca | cb)
    a, pa, na = cells.group([k for k in keys if k[1] == easy and k[0] in shared])
    b, pb, nb = cells.group([k for k in keys if k[1] == hard and k[0] in shared])
    if not (np.isfinite(pa) and np.isfinite(pb)):
        return None
    return compare(f"mean PLCC {easy} - {hard}", a, b, pa, pb, na + nb)


def finding_seg_hardest(cells: Cells) -> Verdict:
    claim = "Seg is the hardest task (lowest mean PLCC)"
    base = _metric_names(cells)
    tasks = task_order({k[1] for k in cells.keys() if k[2] in base})
    if not base or "seg" not in tasks or len(tasks) < 2:
        return Verdict("seg_hardest", claim, UNTESTABLE,
                       f"needs seg and another task with baseline metrics (tasks: {', '.join(tasks) or 'none'})")
    comps = [c for t in tasks if t != "seg" for c in [_task_gap(cells, base, t, "seg")] if c is not None]
    status = combine([c.status for c in comps])
    return Verdict("seg_hardest", claim, status,
                   _join(comps) + f" (codecs shared by the two tasks; {', '.join(base)}).", comparisons=comps)


def finding_hevc_vs_vvc(cells: Cells, families: dict[str, str]) -> Verdict:
    claim = "HEVC (HM) distortions are easier to predict than VVC (VTM) ones (higher mean PLCC)"
    base = _metric_names(cells)
    keys = [k for k in cells.keys() if k[2] in base]
    tasks = [t for t in task_order({k[1] for k in keys})
             if {families.get(k[0]) for k in keys if k[1] == t} >= {"hevc", "vvc"}]
    if not tasks:
        return Verdict("hevc_vs_vvc", claim, UNTESTABLE, "needs an HEVC and a VVC codec on the same task")
    a = [cells.group([k for k in keys if k[1] == t and families.get(k[0]) == "hevc"]) for t in tasks]
    b = [cells.group([k for k in keys if k[1] == t and families.get(k[0]) == "vvc"]) for t in tasks]
    comp = compare("mean PLCC hevc - vvc", np.mean([x[0] for x in a], axis=0), np.mean([x[0] for x in b], axis=0),
                   float(np.mean([x[1] for x in a])), float(np.mean([x[1] for x in b])),
                   sum(x[2] for x in a + b))
    return Verdict("hevc_vs_vvc", claim, comp.status, f"{comp.text()} over tasks {', '.join(tasks)}.",
                   comparisons=[comp])


def finding_varies(cells: Cells) -> Verdict:
    claim = "how well a metric tracks the distortion varies across codecs and tasks"
    base = _metric_names(cells)
    comps = []
    for m in base:
        keys = [k for k in cells.keys() if k[2] == m]
        if len(keys) < 2:
            continue
        means = {k: cells.values(k).mean() for k in keys}
        best, worst = max(means, key=means.get), min(means, key=means.get)
        a, pa, na = cells.group([best])
        b, pb, nb = cells.group([worst])
        comps.append(compare(f"{m}: {best[0]}/{best[1]} - {worst[0]}/{worst[1]}", a, b, pa, pb, na + nb))
    if not comps:
        return Verdict("varies", claim, UNTESTABLE, "needs at least two codec x task cells per baseline metric")
    status = combine([c.status for c in comps])
    return Verdict("varies", claim, status,
                   _join(comps) + " (best minus worst cell of each metric; choosing the extremes on the same "
                   "data makes the gap optimistic).", comparisons=comps)


def halves_per_feature(table, metrics: Sequence[str], target: str = "gt_distortion"):
    """Per-feature correlations on each feature's high-rate and low-rate half, with a ``half`` column."""
    import pandas as pd

    from cfqa_core.benchmark.protocol import ladder_halves

    high, low = ladder_halves(table)
    parts = []
    for name, rows in (("high", high), ("low", low)):
        pf = per_feature_correlations(rows, list(metrics), target)
        pf["half"] = name
        parts.append(pf)
    return pd.concat(parts, ignore_index=True)


def halves_cells(halves, boot: OriginalBootstrap, column: str = "plcc_oriented") -> dict:
    """{(codec, task, metric): {"high": (samples, point, n), "low": ..., "diff": Comparison}} over shared features."""
    out = {}
    wide = halves.pivot_table(index=["codec", "task", "metric", "image_id"], columns="half", values=column,
                              aggfunc="first")
    for (codec, task, metric), g in wide.groupby(level=[0, 1, 2], sort=True):
        if not {"high", "low"} <= set(g.columns):
            continue
        ids = g.index.get_level_values("image_id").to_numpy()
        hi_v, lo_v = g["high"].to_numpy(np.float64), g["low"].to_numpy(np.float64)
        both = np.isfinite(hi_v) & np.isfinite(lo_v)  # paired: only features defined on both halves
        entry = {"n": int(both.sum()), "n_high": int(np.isfinite(hi_v).sum()), "n_low": int(np.isfinite(lo_v).sum())}
        for name, v in (("high", hi_v), ("low", lo_v)):
            s = boot.cell(task, ids, np.where(both, v, np.nan)).mean()
            entry[name] = (s, float(v[both].mean()) if both.any() else float("nan"))
        out[(codec, task, metric)] = entry
    return out


def _nanmean_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Per resample, the mean over cells that drew a defined value (NaN where none did)."""
    stack = np.stack(rows)
    count = np.isfinite(stack).sum(axis=0)
    return np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), np.nan)


def finding_low_rate(halves, boot: OriginalBootstrap) -> Verdict:
    claim = "metrics are less reliable at low bitrates (lower PLCC on the low-rate half of each ladder)"
    cells = halves_cells(halves, boot)
    base = [m for m in BASELINES if any(k[2] == m and v["n"] for k, v in cells.items())]
    if not base:
        return Verdict("low_rate", claim, UNTESTABLE,
                       "no feature has a defined correlation on both halves of its ladder")
    comps = []
    # One comparison per metric and task (mean over the task's codecs): a task where the low-rate half is
    # tracked better must not be averaged away by one where it is tracked worse.
    for m in base:
        for t in task_order({k[1] for k in cells}):
            keys = [k for k, v in cells.items() if k[2] == m and k[1] == t and v["n"]]
            if not keys:
                continue
            hi = _nanmean_rows([cells[k]["high"][0] for k in keys])
            lo = _nanmean_rows([cells[k]["low"][0] for k in keys])
            comps.append(compare(f"{m} {t}: high-rate - low-rate half", hi, lo,
                                 float(np.mean([cells[k]["high"][1] for k in keys])),
                                 float(np.mean([cells[k]["low"][1] for k in keys])),
                                 sum(cells[k]["n"] for k in keys)))
    status = combine([c.status for c in comps])
    used = sum(v["n"] for k, v in cells.items() if k[2] in base)
    total = sum(max(v["n_high"], v["n_low"]) for k, v in cells.items() if k[2] in base)
    detail = (_join(comps) + f" (mean over the task's codecs, paired by feature; {used} of {total} "
              "feature x metric pairs have a defined PLCC on both halves: a half whose distortion does not "
              "move has none).")
    per_cell = {f"{k[0]}/{k[1]}/{k[2]}": {"high": v["high"][1], "low": v["low"][1], "n": v["n"],
                                          "high_ci": list(interval(v["high"][0])),
                                          "low_ci": list(interval(v["low"][0]))}
                for k, v in cells.items()}
    return Verdict("low_rate", claim, status, detail, {"cells": per_cell}, comps)


def finding_proxy(cells_plcc: Cells, cells_srocc: Cells, metric: str = "proxy") -> Verdict:
    """Not the paper's: the task-aware metric beats cosine by >= PROXY_GAIN in PLCC and SROCC on every task."""
    claim = f"the task-aware metric {metric} beats cosine by >= {PROXY_GAIN:.2f} in PLCC and SROCC on every task"
    key = "proxy_beats_cosine" if metric == "proxy" else f"{metric}_beats_cosine"
    comps = []
    for name, cells in (("PLCC", cells_plcc), ("SROCC", cells_srocc)):
        keys = cells.keys()
        for t in task_order({k[1] for k in keys if k[2] == metric}):
            codecs = sorted({k[0] for k in keys if k[1] == t and k[2] == metric}
                            & {k[0] for k in keys if k[1] == t and k[2] == "cosine"})
            if not codecs:
                continue
            a, pa, na = cells.group([(c, t, metric) for c in codecs])
            b, pb, _ = cells.group([(c, t, "cosine") for c in codecs])
            # A target, not a ranking: missed only when the whole interval is below it (no margin).
            comps.append(compare(f"{t} {name} {metric} - cosine - {PROXY_GAIN:.2f}", a, b, pa, pb, na,
                                 offset=PROXY_GAIN, margin=0.0))
    if not comps:
        return Verdict(key, claim, UNTESTABLE, f"needs '{metric}' and cosine on the same cells")
    return Verdict(key, claim, combine([c.status for c in comps]),
                   _join(comps) + " (mean over the task's codecs; > 0 means the target is met).", comparisons=comps)


def paper_findings(per_feature, boot: OriginalBootstrap, table=None, metrics: Sequence[str] = (),
                   target: str = "gt_distortion") -> list[Verdict]:
    """Every finding of the paper tested on one protocol run (``table`` enables the ladder-halves test)."""
    cells = Cells(per_feature, boot)
    kinds = dict(zip(per_feature["codec"], per_feature["codec_kind"]))
    families = {}
    if table is not None and "family" in table.columns:
        families = {c: str(f).lower() for c, f in table.groupby("codec")["family"].first().items()}
    found = [finding_cosine_best(cells), finding_handcrafted(cells, kinds), finding_seg_hardest(cells),
             finding_hevc_vs_vvc(cells, families)]
    if table is not None:
        base = [m for m in BASELINES if m in metrics]
        try:
            halves = halves_per_feature(table, base, target) if base else None
        except DataError as exc:  # a table without rate_index cannot be split
            found.append(Verdict("low_rate", "metrics are less reliable at low bitrates", UNTESTABLE, str(exc)))
        else:
            found.append(finding_low_rate(halves, boot) if halves is not None else
                         Verdict("low_rate", "metrics are less reliable at low bitrates", UNTESTABLE,
                                 "no baseline metric"))
    found.append(finding_varies(cells))
    return found


def proxy_verdict(per_feature, boot: OriginalBootstrap, metric: str = "proxy") -> Verdict | None:
    """The task-aware metric against cosine, when the table has it."""
    if metric not in set(per_feature["metric"]):
        return None
    return finding_proxy(Cells(per_feature, boot, "plcc_oriented"), Cells(per_feature, boot, "srocc_oriented"), metric)

