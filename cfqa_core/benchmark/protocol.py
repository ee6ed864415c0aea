"""The CFQA evaluation protocol: per-feature PLCC / SROCC, then the mean over features.

For each original feature (``image_id`` x ``task``) and codec, the metric's
scores over the feature's rate points are correlated with the ground-truth
semantic distortions at the same rate points (Pearson: PLCC, Spearman: SROCC);
the reported figure for a (codec, task, metric) cell is the mean of these
per-feature correlations, as the reference ``corr.py`` does.

Sign convention (the reference's): correlations are reported with their raw
sign, metric against distortion, never as absolute values. A distortion that
grows as quality drops (cls rank, dpt RMSE difference) therefore correlates
positively with MSE and negatively with cosine / CKA; for seg (mIoU
difference, which falls as quality drops) the signs flip. ``oriented``
correlations multiply by the expected sign so that +1 always means "the
metric tracks the semantic distortion perfectly"; the report compares metrics,
codecs and tasks on those.

A feature whose distortion (or metric) is constant over its rate points has no
defined correlation: it is left out of the mean (nan-mean, as the reference)
and counted in ``n_constant``; features with non-finite values or fewer than
``MIN_POINTS`` rate points are counted in ``n_nonfinite`` / ``n_short``.

Every cell mean carries a 95 % bootstrap interval over originals
(``cfqa_core.benchmark.bootstrap``). The target is the paper's ``gt_distortion``;
``target="output_change"`` gives the label-free fidelity view (how far the
task output moved from the uncompressed output, growing with damage on every task).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cfqa_core.errors import DataError, MetricError
from cfqa_core.tasks import TASKS

FEATURE_KEY: tuple[str, ...] = ("task", "codec", "image_id")
PROTOCOL_COLUMNS: tuple[str, ...] = ("image_id", "task", "codec", "rate_point")
TARGETS: tuple[str, ...] = ("gt_distortion", "output_change")
# In-sample columns: a metric fitted on this table's build scores its own training rows there.
IN_SAMPLE_METRICS = frozenset({"learned"})
MIN_POINTS = 3
MIN_INTERVAL_FEATURES = 10  # fewer defined features: the cell's interval is reported as null
HANDCRAFTED_FAMILIES = frozenset({"hevc", "vvc", "av1", "hm", "vtm"})
LEARNED_FAMILIES = frozenset({"learned", "hyperprior"})


def _distortion_direction(target: str = "gt_distortion") -> dict[str, int]:
    """{task: +1 if the target grows as quality drops, -1 if it falls}."""
    from cfqa_core.tasks import DISTORTION_DIRECTION

    if target == "output_change":
        return {t: 1 for t in DISTORTION_DIRECTION}  # output change only grows with damage
    return dict(DISTORTION_DIRECTION)


def task_order(tasks) -> list[str]:
    """cls, seg, dpt first (the paper's order), then any other task alphabetically."""
    present = set(tasks)
    known = [t for t in TASKS if t in present]
    return known + sorted(t for t in present if t not in known)


def codec_kind(codec: str, family: str | None = None) -> str:
    """'handcrafted', 'learned' or 'unknown' from a table's ``family`` (or the codec name)."""
    for name in (family, codec):
        if not isinstance(name, str):
            continue
        low = name.lower()
        if low in HANDCRAFTED_FAMILIES or low.split("-")[0] in HANDCRAFTED_FAMILIES:
            return "handcrafted"
        if low in LEARNED_FAMILIES or "hyperprior" in low or "learned" in low:
            return "learned"
    return "unknown"


def expected_sign(metric: str, task: str, directions: Mapping[str, int] | None = None) -> float:
    """+1 / -1: the sign of a perfect metric-distortion correlation; NaN if unknown.

    A lower-is-better metric (MSE) rises with a distortion that rises as quality
    drops: +1 x direction; a higher-is-better metric: -1 x direction.
    """
    from cfqa_core.metrics import METRICS

    directions = _distortion_direction() if directions is None else directions
    # The reference's own logged scores (seed_mse, seed_cosine, seed_cka) share their metric's direction.
    spec = METRICS.get(metric) or METRICS.get(metric.removeprefix("seed_"))
    if spec is None or task not in directions:
        return float("nan")
    return float((-1 if spec.higher_is_better else 1) * directions[task])


def resolve_metrics(table, metrics: Sequence[str] | None = None) -> list[str]:
    """The metric columns to evaluate: ``metrics`` checked, or every registered metric in the table.

    In-sample columns (``learned``) are not picked by default; the report
    refuses them (:func:`refuse_in_sample`), while ``cfqa train-metric`` passes
    its out-of-sample predictions under that name explicitly.
    """
    from cfqa_core.metrics import METRICS, get_metric

    if metrics is None:
        found = [m for m in METRICS if m in table.columns and m not in IN_SAMPLE_METRICS]
        if not found:
            raise DataError(f"benchmark table has no metric column (known metrics: {', '.join(METRICS)})")
        return found
    out = []
    for m in metrics:
        if m not in table.columns:
            get_metric(m)  # unknown name: MetricError listing the known ones
            raise DataError(f"benchmark table lacks column '{m}' of metric '{m}'")
        out.append(m)
    if not out:
        raise MetricError("no metric given")
    return out


def refuse_in_sample(metrics: Sequence[str]) -> None:
    """MetricError for a metric whose table column is fitted on the benchmark build itself."""
    for m in metrics:
        if m in IN_SAMPLE_METRICS:
            raise MetricError(f"metric '{m}' is fitted on the benchmark build: its table column is in-sample; "
                              "its leave-one-codec-out figures come from 'cfqa train-metric'")


def _check_table(table, metrics: Sequence[str], target: str = "gt_distortion") -> None:
    if target not in TARGETS:
        raise DataError(f"unknown protocol target '{target}' (known: {', '.join(TARGETS)})")
    missing = [c for c in (*PROTOCOL_COLUMNS, target, *metrics) if c not in table.columns]
    if missing:
        raise DataError(f"benchmark table lacks column(s): {', '.join(missing)}")
    if len(table) == 0:
        raise DataError("benchmark table is empty")
    dup = table.duplicated(list((*FEATURE_KEY, "rate_point")))
    if dup.any():
        row = table[dup].iloc[0]
        raise DataError(f"benchmark table has duplicate rows for {row['codec']}/{row['task']}/"
                        f"{row['image_id']} at rate point {row['rate_point']}")


def _rank_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks along each row (ties share their mean rank)."""
    from scipy.stats import rankdata

    return rankdata(x, axis=1)


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair; NaN where either row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    num = np.einsum("ij,ij->i", xc, yc)
    den = np.sqrt(np.einsum("ij,ij->i", xc, xc) * np.einsum("ij,ij->i", yc, yc))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    r[den == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def _correlate(metric: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(plcc, srocc, status) for rows of equal length; status 'ok' / 'constant'."""
    constant = (np.ptp(dist, axis=1) == 0) | (np.ptp(metric, axis=1) == 0)
    plcc = _row_pearson(metric, dist)
    srocc = _row_pearson(_rank_rows(metric), _rank_rows(dist))
    plcc[constant] = np.nan
    srocc[constant] = np.nan
    return plcc, srocc, np.where(constant, "constant", "ok")


def per_feature_correlations(table, metrics: Sequence[str] | None = None, target: str = "gt_distortion"):
    """One row per (task, codec, image_id, metric): ``plcc``, ``srocc``, ``n_points``, ``status``.

    ``status`` is 'ok', 'constant' (distortion or metric constant: undefined),
    'nonfinite' (a NaN/Inf metric or distortion value) or 'short' (< MIN_POINTS rate points).
    ``target`` is the column correlated with each metric (``gt_distortion`` or ``output_change``).
    """
    import pandas as pd

    metrics = resolve_metrics(table, metrics)
    _check_table(table, metrics, target)
    has_family = "family" in table.columns
    records = []
    for (task, codec), cell in table.groupby(["task", "codec"], sort=True):
        kind = codec_kind(str(codec), cell["family"].iloc[0] if has_family else None)
        cell = cell.sort_values(["image_id", "rate_point"])
        # Group features by their number of rate points so each group is one dense matrix.
        sizes = cell.groupby("image_id", sort=True)["rate_point"].transform("size").to_numpy()
        for size in np.unique(sizes):
            part = cell[sizes == size]
            ids = part["image_id"].to_numpy()[::size]
            dist = part[target].to_numpy(np.float64).reshape(-1, size)
            for m in metrics:
                score = part[m].to_numpy(np.float64).reshape(-1, size)
                plcc = np.full(len(ids), np.nan)
                srocc = np.full(len(ids), np.nan)
                status = np.full(len(ids), "short", dtype=object)
                if size >= MIN_POINTS:
                    finite = np.isfinite(score).all(axis=1) & np.isfinite(dist).all(axis=1)
                    status[~finite] = "nonfinite"
                    if finite.any():
                        p, s, st = _correlate(score[finite], dist[finite])
                        plcc[finite], srocc[finite], status[finite] = p, s, st
                records.append(pd.DataFrame({
                    "task": task, "codec": codec, "codec_kind": kind, "image_id": ids, "metric": m,
                    "plcc": plcc, "srocc": srocc, "n_points": int(size), "status": status,
                }))
    out = pd.concat(records, ignore_index=True)
    directions = _distortion_direction(target)
    signs = {(m, t): expected_sign(m, t, directions) for m in metrics for t in out["task"].unique()}
    out["sign"] = [signs[(m, t)] for m, t in zip(out["metric"], out["task"])]
    out["plcc_oriented"] = out["plcc"] * out["sign"]
    out["srocc_oriented"] = out["srocc"] * out["sign"]
    return out


def _nanstats(values: np.ndarray) -> tuple[float, float]:
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return float("nan"), float("nan")
    return float(ok.mean()), float(ok.std())


def summarise(per_feature, boot=None) -> tuple:
    """(summary DataFrame, results dict) from :func:`per_feature_correlations`.

    One summary row per (codec, task, metric) with the nan-mean ``plcc`` /
    ``srocc`` over features, their standard deviation, the oriented means, the
    feature counts and 95 % bootstrap intervals over originals (``plcc_lo`` /
    ``plcc_hi``, ... ; ``boot`` is an :class:`~cfqa_core.benchmark.bootstrap.OriginalBootstrap`,
    drawn with the fixed seed when not given; null below ``MIN_INTERVAL_FEATURES``
    defined features). The dict is keyed
    ``"{codec}/{task}/{metric}"`` with ``plcc``, ``plcc_ci``, ``srocc``,
    ``srocc_ci``, ``n`` (features used), ``n_constant``, ``n_nonfinite``, ``n_short``.
    """
    import pandas as pd

    from cfqa_core.benchmark.bootstrap import OriginalBootstrap, interval

    boot = OriginalBootstrap(per_feature) if boot is None else boot
    rows = []
    for (codec, task, metric), g in per_feature.groupby(["codec", "task", "metric"], sort=False):
        status = g["status"].to_numpy()
        plcc, plcc_std = _nanstats(g["plcc"].to_numpy())
        srocc, srocc_std = _nanstats(g["srocc"].to_numpy())
        sign = float(g["sign"].iloc[0])
        ids = g["image_id"].to_numpy()
        row = {
            "codec": codec, "task": task, "metric": metric, "codec_kind": g["codec_kind"].iloc[0],
            "plcc": plcc, "srocc": srocc, "plcc_std": plcc_std, "srocc_std": srocc_std,
            "plcc_oriented": _nanstats(g["plcc_oriented"].to_numpy())[0],
            "srocc_oriented": _nanstats(g["srocc_oriented"].to_numpy())[0],
            "sign": sign,
            "n": int((status == "ok").sum()), "n_features": int(len(g)),
            "n_constant": int((status == "constant").sum()),
            "n_nonfinite": int((status == "nonfinite").sum()),
            "n_short": int((status == "short").sum()),
        }
        for col in ("plcc", "srocc"):
            lo, hi = interval(boot.cell(task, ids, g[col].to_numpy()).mean())
            if row["n"] < MIN_INTERVAL_FEATURES:
                lo, hi = float("nan"), float("nan")  # a handful of originals gives no 95 % interval
            row[f"{col}_lo"], row[f"{col}_hi"] = lo, hi
            # Orienting multiplies by a constant sign: a negative one swaps the interval's ends.
            olo, ohi = sorted((lo * sign, hi * sign)) if np.isfinite(sign) else (np.nan, np.nan)
            row[f"{col}_oriented_lo"], row[f"{col}_oriented_hi"] = olo, ohi
        rows.append(row)
    summary = pd.DataFrame(rows)
    results = {
        f"{r.codec}/{r.task}/{r.metric}": {
            "plcc": _json_float(r.plcc), "plcc_ci": _json_ci(r.plcc_lo, r.plcc_hi),
            "srocc": _json_float(r.srocc), "srocc_ci": _json_ci(r.srocc_lo, r.srocc_hi), "n": r.n,
            "n_constant": r.n_constant, "n_nonfinite": r.n_nonfinite, "n_short": r.n_short,
        }
        for r in summary.itertuples()
    }
    return summary, results


def _json_ci(lo: float, hi: float) -> list[float] | None:
    return [float(lo), float(hi)] if np.isfinite(lo) and np.isfinite(hi) else None


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def run_protocol(table, metrics: Sequence[str] | None = None, target: str = "gt_distortion", boot=None) -> tuple:
    """The protocol on a benchmark table: (summary DataFrame, ``{"codec/task/metric": {...}}``)."""
    return summarise(per_feature_correlations(table, metrics, target), boot)


def ladder_halves(table):
    """(high-rate rows, low-rate rows): each feature's ladder split at its middle by ``rate_index``.

    ``rate_index`` 0 is the highest quality; a feature with an odd number of
    rate points gives its middle point to the high-rate half.
    """
    if "rate_index" not in table.columns:
        raise DataError("benchmark table lacks column(s): rate_index")
    key = list(FEATURE_KEY)
    order = table.groupby(key, sort=False)["rate_index"].rank(method="first")
    size = table.groupby(key, sort=False)["rate_index"].transform("size")
    high = order <= np.ceil(size / 2)
    return table[high.to_numpy()], table[~high.to_numpy()]
