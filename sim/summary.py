"""Run metrics: bytes, accuracy, latency, deadline misses, drops, utilisation.

Definitions (per policy):

- ``frames_total``: frames captured; ``frames_unfinished``: still in flight
  when the run stopped (excluded from rates).
- ``bytes_total``: encoded bytes handed to the link (frames lost in transit
  included); ``wire_bytes_total`` adds retransmissions.
- ``bandwidth_savings_vs_baseline``: ``1 - bytes_total / bytes_total(baseline)``
  on the same arrivals.
- Accuracy over delivered frames (``ok`` or ``late``): ``cls_top1`` (mean of
  per-frame correctness), ``seg_miou`` (mean of per-image mIoU), ``dpt_rmse``
  (mean of per-image RMSE, metres); ``*_uncompressed`` is the uncompressed
  model on the same frames; ``<task>_accuracy_drop`` is how much worse, in the
  unit of :func:`cfqa_sim.ratecontrol.accuracy.accuracy_drop` (Cls/Seg points, Dpt %).
- Equal-accuracy accounting (:mod:`cfqa_core.accounting`, the same as
  ``cfqa policies eval``): a captured frame *succeeds* when its result is back
  before the deadline and the cloud's output is within tolerance of the
  uncompressed output (:mod:`cfqa_core.fidelity`); dropped, late and lost
  frames are failures. ``success_rate`` (Wilson 95 % interval) and
  ``bytes_per_captured_frame`` (bytes handed to the link / captured frames)
  cover every frame whose deadline fell inside the run (``frames_not_due``:
  still in flight at the end with time left, left out);
  ``accuracy_delivered`` is accuracy against ground truth over delivered
  frames; ``savings_vs_matched_fixed`` (paired bootstrap interval over
  frames, resampling images: repeats of one image are not independent) is
  against the ``fixed-matched`` policy when it was run.
- ``latency_*``: capture to result back on the edge, delivered frames.
- ``deadline_miss_rate``: (late + dropped) / finished frames.
- Utilisation: edge compute time / (nodes x time), cloud busy server time /
  (servers x time), link wire bytes / bytes the links could carry while up.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from cfqa_core.accounting import FrameLedger, compare, ledger
from cfqa_sim.ratecontrol.accuracy import accuracy_drop
from cfqa_sim.records import DROP_REASONS, DROPPED, LATE, OK, UNFINISHED
from cfqa_sim.traces import MTU_BYTES

_TASK_SCORE = {"cls": "cls_top1", "seg": "seg_miou", "dpt": "dpt_rmse"}


def _f(x: float) -> float | None:
    """JSON-safe float: NaN -> None."""
    x = float(x)
    return None if math.isnan(x) else x


def _percentile(values: np.ndarray, q: float) -> float | None:
    return _f(np.percentile(values, q)) if values.size else None


def summarize(result) -> dict[str, Any]:
    """Metrics of one :class:`~cfqa_sim.engine.RunResult` (JSON-ready)."""
    c = result.columns
    status = c["status"]
    n = int(status.size)
    delivered = (status == OK) | (status == LATE)
    finished = status != UNFINISHED
    sent = ~np.isnan(c["t_send_start"])
    encoded = ~np.isnan(c["t_encode_done"])
    latency = (c["t_result"] - c["t_capture"])[delivered]
    n_finished = int(finished.sum())
    misses = int((status == LATE).sum() + (status == DROPPED).sum())
    reasons = {
        DROP_REASONS[r]: int(((status == DROPPED) & (c["drop_reason"] == r)).sum())
        for r in range(1, len(DROP_REASONS))
    }
    elapsed = max(result.sim_end_s, 1e-9)
    capacity = MTU_BYTES * sum(info.usable(result.sim_end_s) for info in result.links)
    out: dict[str, Any] = {
        "policy": result.policy,
        "partial": result.partial,
        "frames_total": n,
        "frames_delivered": int(delivered.sum()),
        "frames_late": int((status == LATE).sum()),
        "frames_dropped": int((status == DROPPED).sum()),
        "frames_unfinished": int((status == UNFINISHED).sum()),
        "dropped_by_reason": reasons,
        "bytes_total": int(c["bytes"][sent].sum()),
        "wire_bytes_total": int(c["wire_bytes"].sum()),
        "bytes_per_frame": _f(c["bytes"][sent].mean()) if sent.any() else None,
        "bandwidth_savings_vs_baseline": None,
        "latency_mean_s": _f(latency.mean()) if latency.size else None,
        "latency_p50_s": _percentile(latency, 50),
        "latency_p95_s": _percentile(latency, 95),
        "latency_p99_s": _percentile(latency, 99),
        "deadline_miss_rate": _f(misses / n_finished) if n_finished else None,
        "encodes_per_frame": _f(c["encodes"][encoded].mean()) if encoded.any() else None,
        "mean_rate_point": _f(c["rate_point"][encoded].mean()) if encoded.any() else None,
        "mean_metric": _f(np.nanmean(c["metric"][encoded])) if np.isfinite(c["metric"][encoded]).any() else None,
        "met_target_rate": _met_rate(c["met_target"][encoded]),
        "edge_utilisation": _f(result.edge_busy_s / (max(result.nodes, 1) * elapsed)),
        "cloud_utilisation": _f(result.cloud_busy_s / (result.servers * elapsed)),
        "link_utilisation": _f(sum(i.wire_bytes for i in result.links) / capacity) if capacity else None,
        "sim_time_s": _f(result.sim_end_s),
        "wall_s": _f(result.wall_s),
    }
    out.update(accounting(result))
    tasks = np.array(result.group_tasks, dtype=object)[c["group"].astype(int)] if n else np.array([], dtype=object)
    out["accuracy_delivered"] = {}
    for task, key in _TASK_SCORE.items():
        sel = delivered & (tasks == task)
        scores = c["task_score"][sel]
        ref = c["uncompressed_score"][sel]
        both = np.isfinite(scores) & np.isfinite(ref)
        out[key] = _f(np.nanmean(scores)) if np.isfinite(scores).any() else None
        if out[key] is not None:
            out["accuracy_delivered"][key] = out[key]
        out[f"{key}_uncompressed"] = _f(np.nanmean(ref)) if np.isfinite(ref).any() else None
        out[f"{task}_accuracy_drop"] = _f(accuracy_drop(task, scores[both], ref[both])) if both.any() else None
        out[f"{task}_gt_distortion"] = _f(np.nanmean(c["gt_distortion"][sel])) if sel.any() else None
        out[f"{task}_frames"] = int((tasks == task).sum())
    return out


def frame_ledger(result) -> FrameLedger:
    """The run's captured frames that were due (deadline inside the run) as an accounting ledger."""
    c = result.columns
    status = c["status"]
    if not status.size:
        return FrameLedger(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool))
    groups = c["group"].astype(int)
    deadline = np.asarray(result.group_deadlines, dtype=np.float64)[groups]
    due = (status != UNFINISHED) | (c["t_capture"] + deadline <= result.sim_end_s)
    tasks = np.array(result.group_tasks, dtype=object)[groups]
    sent = ~np.isnan(c["t_send_start"])
    nbytes = np.where(sent, c["bytes"], 0)
    # Frames of the same image are one piece of evidence for the interval: group by (task, image).
    groups = np.char.add(tasks.astype(str), c["image"].astype(str))
    return ledger(nbytes[due], (status == OK)[due], c["output_change"][due], tasks[due], groups=groups[due])


def accounting(result) -> dict[str, Any]:
    """Success rate, its interval and bytes per captured frame of one run."""
    led = frame_ledger(result)
    out = led.summary()
    out["frames_not_due"] = int(result.columns["status"].size - led.frames)
    return out


def _met_rate(met: np.ndarray) -> float | None:
    known = met >= 0
    return _f(met[known].mean()) if known.any() else None


MATCHED_FIXED = "fixed-matched"


def add_matched_savings(summaries: dict[str, dict], results: list) -> str | None:
    """Savings against ``fixed-matched`` on the same captured frames; returns the run's headline sentence."""
    ledgers = {r.policy: frame_ledger(r) for r in results}
    ref = ledgers.get(MATCHED_FIXED)
    if ref is None:
        return None
    lines = []
    for label, led in ledgers.items():
        s = summaries[label]
        if led.frames != ref.frames:
            s["savings_vs_matched_fixed"] = None
            continue
        cmp = compare(led, ref)
        s["savings_vs_matched_fixed"] = cmp["savings"]
        s["savings_vs_matched_fixed_ci"] = cmp["savings_ci"]
        s["success_rate_gap_vs_matched_fixed"] = cmp["success_rate_gap"]
        s["equal_accuracy"] = cmp["equal_accuracy"]
        if label != MATCHED_FIXED and cmp["savings"] is not None:
            lo, hi = cmp["savings_ci"]
            lines.append(
                f"{label} saves {100 * cmp['savings']:+.1f} % of the bytes per captured frame of {MATCHED_FIXED} "
                f"(95 % CI {100 * (lo or 0):+.1f} to {100 * (hi or 0):+.1f} %) at a success rate of "
                f"{100 * (s['success_rate'] or 0):.1f} % vs "
                f"{100 * (summaries[MATCHED_FIXED]['success_rate'] or 0):.1f} %"
                + ("" if cmp["equal_accuracy"] else " (more than one point lower: not equal accuracy)"))
    return "; ".join(lines) + "." if lines else None


def add_savings(summaries: dict[str, dict], baseline: str | None) -> None:
    """Fill ``bandwidth_savings_vs_baseline`` when the baseline policy was run."""
    if baseline is None or baseline not in summaries:
        return
    base = summaries[baseline]["bytes_total"]
    for s in summaries.values():
        s["bandwidth_savings_vs_baseline"] = _f(1.0 - s["bytes_total"] / base) if base else None


def summary_table(summaries: dict[str, dict], label: str = "policy") -> list[tuple[str, list[str]]]:
    """(column header, one cell per row) pairs for printing and reports; rows are keyed by ``label``."""
    def fmt(v: Any, pattern: str) -> str:
        return "-" if v is None else pattern.format(v)

    rows = list(summaries.values())
    cols: list[tuple[str, list[str]]] = [
        (label, list(summaries)),
        ("frames", [str(s["frames_total"]) for s in rows]),
        ("dropped", [str(s["frames_dropped"]) for s in rows]),
        ("MB sent", [fmt(s["bytes_total"] / 1e6, "{:.2f}") for s in rows]),
        ("B/captured", [fmt(s.get("bytes_per_captured_frame"), "{:.0f}") for s in rows]),
        ("success", [fmt(s.get("success_rate"), "{:.1%}") for s in rows]),
        ("vs matched", [fmt(s.get("savings_vs_matched_fixed"), "{:+.1%}") for s in rows]),
        ("savings", [fmt(s["bandwidth_savings_vs_baseline"], "{:+.1%}") for s in rows]),
        ("p50 s", [fmt(s["latency_p50_s"], "{:.3f}") for s in rows]),
        ("p99 s", [fmt(s["latency_p99_s"], "{:.3f}") for s in rows]),
        ("miss", [fmt(s["deadline_miss_rate"], "{:.1%}") for s in rows]),
        ("enc/frame", [fmt(s["encodes_per_frame"], "{:.2f}") for s in rows]),
    ]
    for key, pattern in (("cls_top1", "{:.3f}"), ("seg_miou", "{:.3f}"), ("dpt_rmse", "{:.3f}")):
        if any(s[key] is not None for s in rows):
            cols.append((key, [fmt(s[key], pattern) for s in rows]))
    return cols


def format_table(cols: list[tuple[str, list[str]]], markdown: bool = False) -> str:
    """Render :func:`summary_table` as aligned text or a Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
        for i in range(len(cols[0][1])):
            lines.append("| " + " | ".join(v[i] for _, v in cols) + " |")
        return "\n".join(lines)
    widths = [max(len(h), *(len(x) for x in v)) for h, v in cols]
    lines = ["  ".join(h.rjust(w) for (h, _), w in zip(cols, widths))]
    for i in range(len(cols[0][1])):
        lines.append("  ".join(v[i].rjust(w) for (_, v), w in zip(cols, widths)))
    return "\n".join(lines)
