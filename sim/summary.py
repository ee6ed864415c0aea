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
  unit of :func:`edge.policies.accuracy.accuracy_drop` (Cls/Seg points, Dpt %).
- ``latency_*``: capture to result back on the edge, delivered frames.
- ``deadline_miss_rate``: (late + dropped) / finished frames.
- Utilisation: edge compute time / (nodes x time), cloud busy server time /
  (servers x time), link wire bytes / bytes the links could carry while up.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from edge.policies.accuracy import accuracy_drop
from sim.records import DROP_REASONS, DROPPED, LATE, OK, UNFINISHED
from sim.traces import MTU_BYTES

_TASK_SCORE = {"cls": "cls_top1", "seg": "seg_miou", "dpt": "dpt_rmse"}


def _f(x: float) -> float | None:
    """JSON-safe float: NaN -> None."""
    x = float(x)
    return None if math.isnan(x) else x


def _percentile(values: np.ndarray, q: float) -> float | None:
    return _f(np.percentile(values, q)) if values.size else None


def summarize(result) -> dict[str, Any]:
    """Metrics of one :class:`~sim.engine.RunResult` (JSON-ready)."""
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
    tasks = np.array(result.group_tasks, dtype=object)[c["group"].astype(int)] if n else np.array([], dtype=object)
    for task, key in _TASK_SCORE.items():
        sel = delivered & (tasks == task)
        scores = c["task_score"][sel]
        ref = c["uncompressed_score"][sel]
        both = np.isfinite(scores) & np.isfinite(ref)
        out[key] = _f(np.nanmean(scores)) if np.isfinite(scores).any() else None
        out[f"{key}_uncompressed"] = _f(np.nanmean(ref)) if np.isfinite(ref).any() else None
        out[f"{task}_accuracy_drop"] = _f(accuracy_drop(task, scores[both], ref[both])) if both.any() else None
        out[f"{task}_gt_distortion"] = _f(np.nanmean(c["gt_distortion"][sel])) if sel.any() else None
        out[f"{task}_frames"] = int((tasks == task).sum())
    return out


def _met_rate(met: np.ndarray) -> float | None:
    known = met >= 0
    return _f(met[known].mean()) if known.any() else None


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
