"""Offline evaluation of rate-control policies on the benchmark table (``cfqa policies eval``).

Every policy replays the bench split through :func:`~edge.policies.replay.replay_context`:
a node sees its frames in image order (so warm starts mean something and
runs are reproducible). Per task and codec it reports bytes, accuracy
against ground truth (:mod:`edge.policies.accuracy`), encodes per frame and
edge time, next to the fixed-QP ladder as a curve.

Definitions:

- *bytes*: bitstream bytes (the paper's rate); ``wire_bytes`` adds the decode sidecar.
- *edge time* of a frame: for every trial encode the table's measured
  ``encode_s``, plus for every assessed trial its ``decode_s`` (local decode)
  and the metric's cost, measured once on the task's real feature shape.
  ``fixed`` encodes once and neither decodes nor scores.
- *matched fixed*: the largest fixed QP (lowest rate) whose accuracy drop is
  within the tolerance; ``savings_vs_matched_fixed = 1 - bytes / bytes(matched fixed)``.
- *calibration* is cross-fitted: images are split into ``folds`` interleaved
  folds; each fold is one node whose threshold comes from the other folds
  (``folds=1``: calibrated on the evaluated images themselves, optimistic),
  with the calibration ``rule`` (:mod:`edge.policies.calibration`). The row
  ``fixed@calibrated`` is the fixed QP the same training folds and rule pick:
  the deployable fixed baseline, with the same information as cfqa-target
  (``savings_vs_calibrated_fixed``).
- ``bandwidth``/``hybrid`` plan with a constant throughput and deadline.
- ``bytes_vs_oracle = bytes / bytes(oracle)``; the extra row
  ``cfqa-target@oracle-accuracy`` is cfqa-target calibrated to the oracle's
  own accuracy drop, i.e. the comparison at equal accuracy.
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cfqa_core.errors import DataError, PolicyError
from edge.policies.accuracy import DROP_UNIT, accuracy, accuracy_drop
from edge.policies.api import as_decision
from edge.policies.bounds import budgeted_oracle, rank_agreement
from edge.policies.calibration import Calibration, calibrate_arrays, select_loosest
from edge.policies.registry import get_policy
from edge.policies.replay import replay_context
from edge.policies.table import ReplayArrays, load_frame, metric_columns, replay_arrays, tasks_and_codecs
from edge.policies.targets import metric_direction

DEFAULT_POLICIES = ("fixed", "cfqa-target", "bandwidth", "hybrid", "oracle")
ORACLE_MATCH = "cfqa-target@oracle-accuracy"
BUDGETED_ORACLE = "oracle@tolerance"
CALIBRATED_FIXED = "fixed@calibrated"
# Feature shapes of the embedded model per task (docs/architecture.md), for timing the metric.
EMBEDDED_SHAPES = {"cls": (1, 145, 128), "seg": (2, 145, 128), "dpt": (2, 4, 145, 128)}


@dataclass
class EvalConfig:
    table: str
    tasks: tuple[str, ...] | None = None
    codecs: tuple[str, ...] | None = None
    policies: tuple[str, ...] = DEFAULT_POLICIES
    metric: str = "cosine"
    tolerance: float = 1.0
    throughput_mbps: float = 0.5
    deadline_s: float = 1.0
    folds: int = 2
    rule: str = "isotonic"          # calibration rule (edge.policies.calibration.RULES)
    metric_s: float | None = None   # edge seconds of one metric evaluation; None: measure it
    out: str | None = None
    progress: bool = True


@dataclass
class PolicySpec:
    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)


def parse_spec(text: str) -> PolicySpec:
    """``name[:key=value[:key=value...]]`` (e.g. ``cfqa-target:search=bisect``)."""
    name, *pairs = text.strip().split(":")
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PolicyError(f"policy spec '{text}': expected key=value, got '{pair}'")
        params[key] = value
    if not name:
        raise PolicyError(f"policy spec '{text}' has no policy name")
    return PolicySpec(text.strip(), name, params)


# ---- the metric's edge cost ---------------------------------------------------------------


def load_originals(table_path: Path, arr: ReplayArrays) -> list[np.ndarray] | None:
    """The original features of ``arr``'s images from the table's build folder (None if absent)."""
    path = table_path.parent / "originals" / f"{arr.task}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            ids = [str(s) for s in z["ids"]]
            feats = z["features"]
            pos = {s: k for k, s in enumerate(ids)}
            if not all(str(i) in pos for i in arr.image_ids):
                return None
            return [np.asarray(feats[pos[str(i)]], dtype=np.float32) for i in arr.image_ids]
    except (OSError, ValueError, KeyError):
        return None


def _sample_feature(originals: list[np.ndarray] | None, task: str, elements: int) -> np.ndarray:
    """A real original of ``task``, else noise of the embedded model's shape."""
    if originals:
        return originals[0]
    shape = EMBEDDED_SHAPES.get(task, (1, max(1, elements // 128), 128))
    if int(np.prod(shape)) != elements:
        shape = (1, max(1, elements // 128), 128)
    return np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)


def measure_metric_s(metric: str, feature: np.ndarray, repeats: int = 21, task: str = "cls") -> float:
    """Median seconds of one evaluation of ``metric`` on ``feature`` against a perturbed copy."""
    from cfqa_core.metrics import compute_metrics

    fhat = feature + np.random.default_rng(1).normal(0, 0.01, feature.shape).astype(np.float32)
    lo, hi = float(feature.min()), float(feature.max()) + 1e-6
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compute_metrics([metric], feature, fhat, value_range=(lo, hi), task=task)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- running policies -----------------------------------------------------------------------


@dataclass
class Run:
    """Per-frame outcome of one policy over all images of a (task, codec)."""

    label: str
    index: np.ndarray       # chosen ladder index per image
    encodes: np.ndarray
    edge_s: np.ndarray
    met: np.ndarray         # 1 met, 0 not met, -1 no target
    reasons: dict[str, int]


def folds_of(n: int, k: int) -> list[np.ndarray]:
    """Interleaved folds of ``n`` image rows (fold j: rows j, j+k, ...)."""
    return [np.arange(j, n, k) for j in range(min(k, n))]


def run_policy(arr: ReplayArrays, spec: PolicySpec, params_for_fold, folds: list[np.ndarray], *,
               metric_s: float, throughput_bps: float, deadline_s: float,
               features: list[np.ndarray] | None = None) -> Run:
    """Replay one policy: each fold is a node processing its images in order."""
    n, col = arr.n_images, {rp: r for r, rp in enumerate(arr.rate_points)}
    index, encodes = np.zeros(n, dtype=int), np.zeros(n, dtype=int)
    edge, met = np.zeros(n), np.full(n, -1, dtype=int)
    reasons: dict[str, int] = {}
    for j, rows in enumerate(folds):
        policy = get_policy(spec.name, **params_for_fold(j))
        previous = None
        for k, i in enumerate(rows):
            ctx = replay_context(arr, int(i), frame_idx=k, node_id=j, metric_s=metric_s,
                                 throughput_bps=throughput_bps, time_left_s=deadline_s, previous_rate_point=previous,
                                 feature=None if features is None else features[i])
            d = as_decision(policy.decide(ctx), ctx)
            previous = d.rate_point
            index[i], encodes[i], edge[i] = col[d.rate_point], d.encodes, d.edge_time_s
            met[i] = -1 if d.met_target is None else int(d.met_target)
            if d.reason:
                key = d.reason.split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
    return Run(spec.label, index, encodes, edge, met, reasons)


def summarize(arr: ReplayArrays, run: Run, name: str) -> dict[str, Any]:
    rows = np.arange(arr.n_images)
    scores = arr.task_score[rows, run.index]
    nbytes = arr.bytes[rows, run.index]
    has_target = run.met >= 0
    return {
        "policy": run.label, "name": name, "frames": int(arr.n_images),
        "bytes_total": int(nbytes.sum()), "bytes_per_frame": float(nbytes.mean()),
        "wire_bytes_total": int((nbytes + arr.meta_bytes[rows, run.index]).sum()),
        "accuracy": accuracy(arr.task, scores), "accuracy_drop": accuracy_drop(arr.task, scores, arr.ref_score),
        "encodes_per_frame": float(run.encodes.mean()), "max_encodes": int(run.encodes.max()),
        "edge_time_s": float(run.edge_s.mean()), "edge_time_total_s": float(run.edge_s.sum()),
        "met_target_rate": float((run.met[has_target] == 1).mean()) if has_target.any() else None,
        "reasons": run.reasons,
        "rate_points_used": {str(arr.rate_points[r]): int(c) for r, c in
                             zip(*np.unique(run.index, return_counts=True))},
    }


def fixed_curve(arr: ReplayArrays) -> list[dict[str, Any]]:
    """The fixed-QP ladder as a rate-accuracy curve."""
    return [{
        "rate_point": int(rp), "bytes_total": int(arr.bytes[:, r].sum()),
        "bytes_per_frame": float(arr.bytes[:, r].mean()),
        "accuracy": accuracy(arr.task, arr.task_score[:, r]),
        "accuracy_drop": accuracy_drop(arr.task, arr.task_score[:, r], arr.ref_score),
        "edge_time_s": float(arr.encode_s[:, r].mean()),
    } for r, rp in enumerate(arr.rate_points)]


def matched_fixed(curve: list[dict[str, Any]], tolerance: float) -> int | None:
    """Ladder index of the largest fixed QP within ``tolerance`` (None if none is)."""
    ok = [r for r, c in enumerate(curve) if c["accuracy_drop"] <= tolerance + 1e-9]
    return max(ok) if ok else None


# ---- one (task, codec) ---------------------------------------------------------------------


def _defaults(name: str, user: dict[str, Any], matched_rp: int, calib: str, tol: float) -> dict[str, Any]:
    if name == "fixed":
        base = {} if {"rate_point", "qp", "index"} & set(user) else {"rate_point": matched_rp}
    elif name in ("cfqa-target", "hybrid"):
        base = {"calibration": calib}
        if "threshold" not in user:
            base["target_accuracy_drop"] = tol
    elif name == "bandwidth":
        base = {"calibration": calib}
    else:
        base = {}
    return {**base, **user}


def evaluate_arrays(arr: ReplayArrays, cfg: EvalConfig, specs: list[PolicySpec], metric_s: float,
                    calib_dir: Path, higher_is_better: bool,
                    features: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Every policy of ``specs`` on one (task, codec); the report section as a dict."""
    task, codec = arr.task, arr.codec
    curve = fixed_curve(arr)
    m = matched_fixed(curve, cfg.tolerance)
    matched_rp = arr.rate_points[0 if m is None else m]
    folds = folds_of(arr.n_images, cfg.folds)
    calib_files, fold_qps = [], []
    for j, rows in enumerate(folds):
        train = np.setdiff1d(np.arange(arr.n_images), rows) if len(folds) > 1 else rows
        curve_j = calibrate_arrays(arr, cfg.metric, higher_is_better, rows=train, rule=cfg.rule)
        cal = Calibration(cfg.metric, higher_is_better, cfg.tolerance, {task: {codec: curve_j}})
        path = calib_dir / f"{task}-{codec}-{cfg.metric}-fold{j}.json"
        cal.save(path)
        calib_files.append(str(path))
        # The fixed QP the same training images and rule would pick.
        drops = [accuracy_drop(task, arr.task_score[train, r], arr.ref_score[train]) for r in range(len(curve))]
        fold_qps.append(arr.rate_points[select_loosest(drops, cfg.tolerance, cfg.rule) or 0])
    link = dict(metric_s=metric_s, throughput_bps=cfg.throughput_mbps * 1e6, deadline_s=cfg.deadline_s,
                features=features)

    results: list[dict[str, Any]] = []
    runs: dict[str, dict[str, Any]] = {}

    def run(spec: PolicySpec, extra=lambda j: {}) -> dict[str, Any]:
        def params(j: int) -> dict[str, Any]:
            return _defaults(spec.name, {**spec.params, **extra(j)}, matched_rp, calib_files[j], cfg.tolerance)

        out = summarize(arr, run_policy(arr, spec, params, folds, **link), spec.name)
        out["params"] = {k: v for k, v in params(0).items() if k != "calibration"}
        results.append(out)
        runs[spec.label] = out
        return out

    for spec in specs:
        run(spec)
    if any(s.name == "fixed" for s in specs) and CALIBRATED_FIXED not in runs:
        out = run(PolicySpec(CALIBRATED_FIXED, "fixed"), lambda j: {"rate_point": fold_qps[j]})
        out["params"] = {"rate_point": fold_qps}
    oracle = next((r for r in results if r["name"] == "oracle"), None)
    if oracle is not None and any(s.name == "cfqa-target" for s in specs) and ORACLE_MATCH not in runs:
        drop = max(oracle["accuracy_drop"], 0.0)
        run(PolicySpec(ORACLE_MATCH, "cfqa-target"), lambda j: {"target_accuracy_drop": drop})
    budgeted = None
    if oracle is not None:
        # Set-level bound at the tolerance: it judges every rate point of every image.
        rungs = len(arr.rate_points)
        budgeted = summarize(arr, Run(BUDGETED_ORACLE, budgeted_oracle(arr, cfg.tolerance),
                                      np.full(arr.n_images, rungs), arr.encode_s.sum(1) + arr.decode_s.sum(1),
                                      np.full(arr.n_images, -1), {}), "oracle")
        budgeted["params"] = {"tolerance": cfg.tolerance}
        results.append(budgeted)

    fixed_run = next((r for r in results if r["policy"] == "fixed"), None)
    calibrated_fixed = runs.get(CALIBRATED_FIXED)
    ref_bytes = curve[0 if m is None else m]["bytes_total"]
    for r in results:
        r.update(task=task, codec=codec, uncompressed_accuracy=accuracy(task, arr.ref_score))
        r["within_tolerance"] = r["accuracy_drop"] <= cfg.tolerance + 1e-9
        adaptive = r["name"] != "fixed"
        r["savings_vs_matched_fixed"] = (1.0 - r["bytes_total"] / ref_bytes) if adaptive and m is not None else None
        r["savings_vs_calibrated_fixed"] = (1.0 - r["bytes_total"] / calibrated_fixed["bytes_total"]
                                            if adaptive and calibrated_fixed else None)
        r["bytes_vs_oracle"] = (r["bytes_total"] / oracle["bytes_total"]
                                if adaptive and oracle is not None and oracle["bytes_total"] > 0 else None)
        r["bytes_vs_oracle_at_tolerance"] = (r["bytes_total"] / budgeted["bytes_total"]
                                             if adaptive and budgeted and budgeted["bytes_total"] > 0 else None)
        eq = [c for c in curve if c["accuracy_drop"] <= r["accuracy_drop"] + 1e-9]
        eq_bytes = min(c["bytes_total"] for c in eq) if eq else None
        r["fixed_bytes_at_equal_accuracy"] = eq_bytes
        r["savings_vs_equal_accuracy_fixed"] = (1.0 - r["bytes_total"] / eq_bytes) if adaptive and eq_bytes else None
        r["edge_time_vs_fixed"] = (r["edge_time_s"] / fixed_run["edge_time_s"]
                                   if fixed_run is not None and fixed_run["edge_time_s"] > 0 else None)
    return {
        "task": task, "codec": codec, "frames": arr.n_images, "rate_points": list(arr.rate_points),
        "uncompressed_accuracy": accuracy(task, arr.ref_score), "accuracy_unit": _acc_unit(task),
        "drop_unit": DROP_UNIT[task], "tolerance": cfg.tolerance,
        "matched_fixed_rate_point": None if m is None else int(matched_rp), "metric_s": metric_s,
        "calibrated_fixed_rate_points": [int(q) for q in fold_qps],
        # Can the metric tell robust images from fragile ones? (Spearman over images, at the matched QP)
        "metric_vs_oracle_rank_correlation": rank_agreement(arr, cfg.metric, 0 if m is None else m, higher_is_better),
        "fixed_curve": curve, "results": results,
    }


def _acc_unit(task: str) -> str:
    return {"cls": "top-1 %", "seg": "mIoU %", "dpt": "RMSE m"}[task]


# ---- the whole evaluation -------------------------------------------------------------------


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation; writes report.md, results.json and rate_accuracy.png when ``cfg.out``."""
    if cfg.folds < 1:
        raise PolicyError(f"folds must be >= 1, got {cfg.folds}")
    if cfg.throughput_mbps <= 0 or cfg.deadline_s <= 0:
        raise PolicyError("throughput and deadline must be positive")
    table_path = Path(cfg.table)
    frame = load_frame(table_path)
    if table_path.is_dir():
        table_path = table_path / "table.parquet"
    if cfg.metric not in metric_columns(frame):
        raise DataError(f"benchmark table has no metric column '{cfg.metric}' "
                        f"(has: {', '.join(metric_columns(frame))})")
    hib, _ = metric_direction(cfg.metric)
    specs = [parse_spec(s) for s in cfg.policies]
    present = tasks_and_codecs(frame)
    tasks = list(cfg.tasks or sorted(present))
    for t in tasks:
        if t not in present:
            raise DataError(f"benchmark table has no task '{t}' (has: {', '.join(present)})")
    jobs = []
    for t in tasks:
        codecs = list(cfg.codecs or present[t])
        for c in codecs:
            if c not in present[t]:
                raise DataError(f"benchmark table has no codec '{c}' for {t} (has: {', '.join(present[t])})")
            jobs.append((t, c))

    out_dir = Path(cfg.out) if cfg.out else None
    tmp = None
    if out_dir is not None:
        calib_dir = out_dir / "calibration"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="cfqa-policy-eval-")
        calib_dir = Path(tmp.name)
    sections = []
    try:
        for t, c in tqdm(jobs, desc="policies", unit="task", disable=not cfg.progress):
            arr = replay_arrays(frame, t, c)
            originals = load_originals(table_path, arr)
            metric_s = cfg.metric_s if cfg.metric_s is not None else measure_metric_s(
                cfg.metric, _sample_feature(originals, t, arr.feature_elements), task=t)
            section = evaluate_arrays(arr, cfg, specs, metric_s, calib_dir, hib, originals)
            section["features"] = originals is not None
            sections.append(section)
    finally:
        if tmp is not None:
            tmp.cleanup()
    report = {"config": asdict(cfg), "sections": sections}
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def flat_results(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One object per task, codec and policy."""
    return [r for s in report["sections"] for r in s["results"]]


# ---- output --------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# Rate-control policies on the benchmark table", "",
        f"Table `{cfg['table']}`; metric `{cfg['metric']}`; tolerance {cfg['tolerance']:g} "
        f"(accuracy drop vs the uncompressed model); calibration rule `{cfg['rule']}`, "
        f"{cfg['folds']}-fold cross-fitted (1 = in-sample); "
        f"bandwidth/hybrid plan with {cfg['throughput_mbps']:g} Mbit/s and a {cfg['deadline_s']:g} s deadline. "
        "Bytes are bitstream bytes; edge time = encodes + local decodes + metric evaluations.", "",
    ]
    for s in report["sections"]:
        mf = s["matched_fixed_rate_point"]
        lines += [
            f"## {s['task']} / {s['codec']} ({s['frames']} frames)", "",
            f"Uncompressed accuracy {s['uncompressed_accuracy']:.4g} {s['accuracy_unit']}; "
            f"drop unit: {s['drop_unit']}; "
            f"matched fixed QP (largest within tolerance, in-sample): {mf if mf is not None else 'none'}; "
            f"calibrated fixed QP per fold: {', '.join(map(str, s['calibrated_fixed_rate_points']))}; "
            f"metric cost {1e3 * s['metric_s']:.3f} ms; rank correlation over images of `{report['config']['metric']}` "
            f"with the oracle's rung: {_fmt(s['metric_vs_oracle_rank_correlation'], '+.2f')}.", "",
            "| policy | bytes/frame | accuracy | drop | encodes/frame | edge ms/frame | met target | "
            "savings vs matched fixed | vs calibrated fixed | vs fixed at equal accuracy | bytes vs oracle | "
            "bytes vs oracle@tolerance | edge time vs fixed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in s["results"]:
            pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"  # noqa: E731
            lines.append(
                f"| {r['policy']} | {r['bytes_per_frame']:.0f} | {r['accuracy']:.4g} | {r['accuracy_drop']:.3g} | "
                f"{r['encodes_per_frame']:.2f} | {1e3 * r['edge_time_s']:.2f} | {pct(r['met_target_rate'])} | "
                f"{pct(r['savings_vs_matched_fixed'])} | {pct(r['savings_vs_calibrated_fixed'])} | "
                f"{pct(r['savings_vs_equal_accuracy_fixed'])} | "
                f"{_fmt(r['bytes_vs_oracle'], '.3f')} | {_fmt(r['bytes_vs_oracle_at_tolerance'], '.3f')} | "
                f"{_fmt(r['edge_time_vs_fixed'], '.2f')} |")
        lines += ["", "Fixed-QP curve:", "", "| QP | bytes/frame | accuracy | drop | encode ms |",
                  "|---:|---:|---:|---:|---:|"]
        for c in s["fixed_curve"]:
            lines.append(f"| {c['rate_point']} | {c['bytes_per_frame']:.0f} | {c['accuracy']:.4g} | "
                         f"{c['accuracy_drop']:.3g} | {1e3 * c['edge_time_s']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Rate-accuracy: the fixed-QP curve per task with each policy as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = report["sections"]
    fig, axes = plt.subplots(1, len(sections), figsize=(5.2 * len(sections), 4.2), squeeze=False)
    markers = "os^Dv<>Ph*X"
    for ax, s in zip(axes[0], sections):
        curve = s["fixed_curve"]
        ax.plot([c["bytes_per_frame"] for c in curve], [c["accuracy"] for c in curve], "-", color="0.5",
                lw=1.2, label="fixed QP")
        for c in curve:
            ax.annotate(str(c["rate_point"]), (c["bytes_per_frame"], c["accuracy"]), fontsize=7, color="0.4",
                        xytext=(2, 2), textcoords="offset points")
        for k, r in enumerate(s["results"]):
            ax.plot(r["bytes_per_frame"], r["accuracy"], markers[k % len(markers)], ms=8, label=r["policy"])
        ax.axhline(s["uncompressed_accuracy"], ls="--", lw=0.8, color="k", label="uncompressed")
        ax.set_xscale("log")
        ax.set_xlabel("bitstream bytes per frame")
        ax.set_ylabel(s["accuracy_unit"])
        ax.set_title(f"{s['task']} / {s['codec']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out_dir / "report.md").write_text(markdown(report))
    plot(report, out_dir / "rate_accuracy.png")
