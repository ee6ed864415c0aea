"""``cfqa policies eval``: rate-control policies on a benchmark table, at equal accuracy, on held-out images.

Protocol (per task and codec):

- **Split**: the table's images in ``image_id`` order; calibration and
  evaluation images alternate (even positions / odd positions). Everything a
  policy is fitted on (its rate plan, the matched fixed rung) comes from one
  half and is evaluated on the other; the two halves then swap, so every
  image is evaluated exactly once by a policy that never saw it
  (two-fold cross-fitting). Pooled figures cover all images.
- **Accounting** (:mod:`cfqa_core.accounting`): a frame succeeds when it is
  back before the deadline with the cloud's output within tolerance of the
  uncompressed output; ``bytes_per_frame`` counts everything sent (bitstream
  + decode sidecar) per captured frame; savings are against **matched
  fixed** (the cheapest single rung reaching the target success rate on the
  calibration half) with a paired bootstrap interval over images.
- **Policies** run through the real policy code on replayed encodes
  (:func:`cfqa_sim.ratecontrol.replay.replay_context`): ``cfqa-target`` and
  ``hybrid`` with the rate plan fitted on the calibration half
  (:mod:`cfqa_sim.ratecontrol.fit`, for the same link and deadline), ``bandwidth`` with its own link budget;
  ``oracle`` is the per-image cheapest rung within tolerance (a bound).
- **Edge time**: every trial's encode, plus for each scored trial its local
  decode and the metric's cost, from the table's measurements or a timing
  profile (:mod:`cfqa_sim.timing`). A frame is on time when edge time + bytes x
  8 / throughput <= deadline (a constant link here; the simulator replays
  real traces).
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import cfqa_sim.ratecontrol.oracle  # noqa: F401  (registers the offline-only oracle policy)
from cfqa_core.accounting import DEFAULT_TARGET_SUCCESS, FrameLedger, compare, matched_fixed_rung, oracle_rungs
from cfqa_core.errors import DataError, PolicyError
from cfqa_core.fidelity import DEFAULT_TOLERANCE, TOLERANCE_UNITS, within_tolerance
from cfqa_edge.policies.api import as_decision
from cfqa_edge.policies.plan import RatePlans
from cfqa_edge.policies.registry import REGISTRY, get_policy
from cfqa_edge.policies.spec import PolicySpec, parse_spec
from cfqa_sim.ratecontrol.fit import Deadline, fit_plan
from cfqa_sim.ratecontrol.replay import (
    ReplayArrays,
    load_frame,
    metric_columns,
    replay_arrays,
    replay_context,
    tasks_and_codecs,
)
from cfqa_sim.ratecontrol.shipped import calibration_images, evaluation_images

MATCHED = "fixed-matched"
ORACLE = "oracle"
DEFAULT_POLICIES = (MATCHED, "cfqa-target", "hybrid", "bandwidth", ORACLE)
PLAN_POLICIES = ("cfqa-target", "hybrid")


@dataclass
class EvalConfig:
    table: str
    tasks: tuple[str, ...] | None = None
    codecs: tuple[str, ...] | None = None
    policies: tuple[str, ...] = DEFAULT_POLICIES
    metric: str = "proxy"
    target_success: float = DEFAULT_TARGET_SUCCESS
    tolerance: dict[str, float] = field(default_factory=dict)   # per-task overrides of DEFAULT_TOLERANCE
    throughput_mbps: float = 5.0
    deadline_s: float = 1.0
    metric_s: float | None = None   # edge seconds of one metric evaluation; None: measured
    timing: str | None = None       # timing profile file; None: the table's measured times
    out: str | None = None
    progress: bool = True


def halves(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two (calibration, evaluation) splits of ``n`` images: the shipped split, then swapped."""
    cal, ev = calibration_images(n), evaluation_images(n)
    return [(cal, ev), (ev, cal)]


@dataclass
class Frames:
    """Per evaluated image (pooled over folds): what a policy did and what it cost."""

    index: np.ndarray      # chosen ladder index
    encodes: np.ndarray
    edge_s: np.ndarray

    @classmethod
    def empty(cls, n: int) -> Frames:
        return cls(np.zeros(n, dtype=int), np.zeros(n, dtype=int), np.zeros(n))


def measure_metric_s(metric: str, task: str) -> float:
    """Median wall seconds of one metric evaluation on a feature of the embedded model's shape for ``task``."""
    from cfqa_sim.timing import metric_seconds

    shape = {"cls": (1, 145, 128), "seg": (2, 145, 128), "dpt": (2, 4, 145, 128)}[task]
    return metric_seconds(metric, task, np.random.default_rng(0).normal(0, 1, shape).astype(np.float32))[0]


def replay(arr: ReplayArrays, spec: PolicySpec, params: dict[str, Any], rows: np.ndarray, frames: Frames, *,
           metric_s: float, throughput_bps: float, deadline_s: float, node: int) -> None:
    """Run one policy instance (one node) over image ``rows`` in order, filling ``frames``."""
    policy = get_policy(spec.name, **params)
    col = {rp: r for r, rp in enumerate(arr.rate_points)}
    previous = None
    for k, i in enumerate(rows):
        ctx = replay_context(arr, int(i), frame_idx=k, node_id=node, metric_s=metric_s,
                             throughput_bps=throughput_bps, time_left_s=deadline_s, previous_rate_point=previous)
        d = as_decision(policy.decide(ctx), ctx)
        previous = d.rate_point
        frames.index[i], frames.encodes[i], frames.edge_s[i] = col[d.rate_point], d.encodes, d.edge_time_s


def ledger_of(arr: ReplayArrays, frames: Frames, cfg: EvalConfig) -> FrameLedger:
    rows = np.arange(arr.n_images)
    sent = arr.bytes[rows, frames.index] + arr.meta_bytes[rows, frames.index]
    on_time = frames.edge_s + sent * 8.0 / (cfg.throughput_mbps * 1e6) <= cfg.deadline_s + 1e-12
    within = within_tolerance(arr.task, arr.output_change[rows, frames.index], cfg.tolerance)
    return FrameLedger(sent.astype(np.int64), on_time & within, on_time)


def evaluate_arrays(arr: ReplayArrays, cfg: EvalConfig, specs: list[PolicySpec], metric_s: float,
                    plan_dir: Path) -> dict[str, Any]:
    """Every policy on one (task, codec), cross-fitted over the two halves; a report section."""
    task, n = arr.task, arr.n_images
    if n < 4:
        raise DataError(f"{task}/{arr.codec}: {n} images; at least 4 are needed to calibrate on half of them")
    if cfg.metric not in arr.metrics:
        raise DataError(f"benchmark table has no metric column '{cfg.metric}' (has: {', '.join(arr.metrics)})")
    sent = arr.bytes + arr.meta_bytes
    runs = {s.label: Frames.empty(n) for s in specs}
    fold_info = []
    link = dict(metric_s=metric_s, throughput_bps=cfg.throughput_mbps * 1e6, deadline_s=cfg.deadline_s)
    for j, (cal, ev) in enumerate(halves(n)):
        mf = matched_fixed_rung(task, arr.output_change[cal], sent[cal], target=cfg.target_success,
                                tolerance=cfg.tolerance)
        deadline = Deadline(arr.encode_s[cal], arr.decode_s[cal], metric_s, cfg.throughput_mbps * 1e6,
                            cfg.deadline_s)
        plan = fit_plan(task, arr.codec, arr.rate_points, cfg.metric, arr.metric(cfg.metric)[cal],
                        arr.output_change[cal], sent[cal], target=cfg.target_success, tolerance=cfg.tolerance,
                        deadline=deadline)
        plan_path = plan_dir / f"{task}-{arr.codec}-fold{j}.json"
        RatePlans({(task, arr.codec): plan}, {"table": cfg.table, "fold": j}).save(plan_path)
        fold_info.append({"fold": j, "calibration_images": int(cal.size), "evaluation_images": int(ev.size),
                          "matched_fixed_rate_point": int(arr.rate_points[mf]), "plan": plan.to_json()})
        for spec in specs:
            frames = runs[spec.label]
            if spec.name == ORACLE:
                pick = oracle_rungs(task, arr.output_change[ev], sent[ev], cfg.tolerance)
                frames.index[ev] = pick
                frames.encodes[ev] = len(arr.rate_points)
                frames.edge_s[ev] = 0.0   # a bound: its cost is not a deployable edge time
                continue
            params = dict(spec.params)
            if spec.name == "fixed" and params.get("matched") in (True, "true"):
                params = {"rate_point": int(arr.rate_points[mf])}   # refitted on this calibration half
            if spec.name in PLAN_POLICIES and not ({"plan", "threshold", "target_accuracy_drop"} & set(params)):
                params["plan"] = str(plan_path)
            replay(arr, spec, params, ev, frames, node=j, **link)
    return section(arr, cfg, specs, runs, fold_info, metric_s)


def section(arr: ReplayArrays, cfg: EvalConfig, specs: list[PolicySpec], runs: dict[str, Frames],
            fold_info: list[dict[str, Any]], metric_s: float) -> dict[str, Any]:
    """Pooled rows of one (task, codec) against matched fixed and the oracle."""
    ledgers = {label: ledger_of(arr, f, cfg) for label, f in runs.items()}
    ref = ledgers.get(MATCHED)
    oracle = ledgers.get(ORACLE)
    oracle_savings = compare(oracle, ref)["savings"] if ref is not None and oracle is not None else None
    fixed_edge = float(runs[MATCHED].edge_s.mean()) if MATCHED in runs else None
    rows = np.arange(arr.n_images)
    results = []
    for spec in specs:
        f, led = runs[spec.label], ledgers[spec.label]
        row: dict[str, Any] = {"policy": spec.label, "name": spec.name, "task": arr.task, "codec": arr.codec,
                               **led.summary()}
        row["bytes_per_frame"] = row["bytes_per_captured_frame"]
        row["bitstream_bytes_per_frame"] = float(arr.bytes[rows, f.index].mean())
        row["within_tolerance"] = float(within_tolerance(arr.task, arr.output_change[rows, f.index],
                                                         cfg.tolerance).mean())
        scores = arr.task_score[rows, f.index]
        row["accuracy"] = float(np.mean(scores))
        row["accuracy_uncompressed"] = float(np.mean(arr.ref_score))
        row["encodes_per_frame"] = float(f.encodes.mean())
        row["max_encodes"] = int(f.encodes.max())
        row["edge_time_s"] = float(f.edge_s.mean())
        row["edge_time_vs_fixed"] = (row["edge_time_s"] / fixed_edge if fixed_edge and spec.name != ORACLE
                                     else None)
        row["rate_points_used"] = {str(arr.rate_points[r]): int(c) for r, c in
                                   zip(*np.unique(f.index, return_counts=True))}
        if ref is not None:
            cmp = compare(led, ref)
            row["savings_vs_matched_fixed"] = cmp["savings"]
            row["savings_vs_matched_fixed_ci"] = cmp["savings_ci"]
            row["success_rate_gap"] = cmp["success_rate_gap"]
            row["equal_accuracy"] = cmp["equal_accuracy"]
        if spec.name in PLAN_POLICIES and oracle_savings:
            row["capture_of_oracle"] = (row["savings_vs_matched_fixed"] / oracle_savings
                                        if row.get("savings_vs_matched_fixed") is not None else None)
        results.append(row)
    curve = []
    for r, rp in enumerate(arr.rate_points):
        ok = within_tolerance(arr.task, arr.output_change[:, r], cfg.tolerance)
        curve.append({"rate_point": int(rp), "bytes_per_frame": float((arr.bytes[:, r] + arr.meta_bytes[:, r]).mean()),
                      "success_rate": float(ok.mean()), "accuracy": float(arr.task_score[:, r].mean())})
    return {
        "task": arr.task, "codec": arr.codec, "images": arr.n_images, "rate_points": list(arr.rate_points),
        "tolerance": {"value": {**DEFAULT_TOLERANCE, **cfg.tolerance}[arr.task], "unit": TOLERANCE_UNITS[arr.task]},
        "target_success": cfg.target_success, "metric": cfg.metric, "metric_s": metric_s,
        "oracle_savings": oracle_savings, "folds": fold_info, "fixed_curve": curve, "results": results,
    }


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation; writes report.md, results.json and figures when ``cfg.out``."""
    if not 0 < cfg.target_success <= 1:
        raise PolicyError(f"target success rate must be in (0, 1], got {cfg.target_success}")
    if cfg.throughput_mbps <= 0 or cfg.deadline_s <= 0:
        raise PolicyError("throughput and deadline must be positive")
    frame = load_frame(cfg.table)
    if cfg.metric not in metric_columns(frame):
        raise DataError(f"benchmark table has no metric column '{cfg.metric}' "
                        f"(has: {', '.join(metric_columns(frame))}); add it with "
                        f"'cfqa dataset build --out <build> --metrics ...,{cfg.metric}'")
    specs = [parse_spec(s) for s in cfg.policies]
    for spec in specs:
        REGISTRY.get(spec.name)  # an unknown name: the registry's one-line error, naming the known ones
    if MATCHED not in {s.label for s in specs}:
        specs.insert(0, parse_spec(MATCHED))
    if ORACLE not in {s.label for s in specs}:
        specs.append(parse_spec(ORACLE))
    present = tasks_and_codecs(frame)
    jobs = []
    for t in cfg.tasks or sorted(present):
        if t not in present:
            raise DataError(f"benchmark table has no task '{t}' (has: {', '.join(present)})")
        for c in cfg.codecs or present[t]:
            if c in present[t]:
                jobs.append((t, c))
            elif cfg.codecs and len(cfg.codecs) == 1:
                raise DataError(f"benchmark table has no codec '{c}' for {t} (has: {', '.join(present[t])})")
    if not jobs:
        raise DataError(f"benchmark table has none of the codecs {', '.join(cfg.codecs or ())}")
    timing = None
    if cfg.timing:
        from cfqa_sim.timing import TimingProfile

        timing = TimingProfile.load(cfg.timing)
    sections = []
    with tempfile.TemporaryDirectory(prefix="cfqa-plans-") as tmp:
        plan_dir = Path(cfg.out) / "plans" if cfg.out else Path(tmp)
        for t, c in tqdm(jobs, desc="policies", unit="pair", disable=not cfg.progress):
            arr = replay_arrays(frame, t, c)
            if timing is not None:
                arr = timing.apply(arr)
            metric_s = cfg.metric_s if cfg.metric_s is not None else (
                timing.metric_s(cfg.metric, t) if timing is not None else measure_metric_s(cfg.metric, t))
            sections.append(evaluate_arrays(arr, cfg, specs, metric_s, plan_dir))
    report = {"config": asdict(cfg), "sections": sections}
    if cfg.out:
        from cfqa_sim.ratecontrol.report import write_report

        write_report(report, Path(cfg.out))
    return report


def flat_results(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One object per (policy, task, codec)."""
    return [r for s in report["sections"] for r in s["results"]]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def headline(section: Mapping[str, Any], policy: str = "cfqa-target") -> str:
    """One sentence: what ``policy`` saves against matched fixed, at what success rate, how sure."""
    rows = {r["policy"]: r for r in section["results"]}
    p, m, o = rows.get(policy), rows.get(MATCHED), rows.get(ORACLE)
    if p is None or m is None or not _finite(p.get("savings_vs_matched_fixed")):
        return f"{section['task']}/{section['codec']}: no {policy} row."
    lo, hi = p["savings_vs_matched_fixed_ci"]
    text = (f"{section['task']}/{section['codec']}: {policy} saves {100 * p['savings_vs_matched_fixed']:+.1f} % "
            f"of the bytes per captured frame of matched fixed (95 % CI {100 * lo:+.1f} to {100 * hi:+.1f} %) "
            f"at a success rate "
            f"of {100 * p['success_rate']:.1f} % vs {100 * m['success_rate']:.1f} %")
    if o is not None and _finite(o.get("savings_vs_matched_fixed")) and _finite(p.get("capture_of_oracle")):
        text += (f"; the oracle bound saves {100 * o['savings_vs_matched_fixed']:.1f} %, "
                 f"so it captures {100 * p['capture_of_oracle']:.0f} % of it")
    return text + f" ({section['images']} held-out images)."
