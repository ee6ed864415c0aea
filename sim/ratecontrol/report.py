"""Markdown, JSON and a rate-success figure for ``cfqa policies eval``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cfqa_sim.ratecontrol.evaluate import MATCHED, ORACLE, headline


def _pct(v: Any, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:+.1f} %" if signed else f"{100 * v:.1f} %"


def _ci(v: Any) -> str:
    if not v or v[0] is None or v[1] is None:
        return "–"
    return f"[{100 * v[0]:+.1f}, {100 * v[1]:+.1f}]"


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# Rate-control policies at equal accuracy", "",
        *[f"- {headline(s)}" for s in report["sections"]], "",
        f"Table `{cfg['table']}`; steering metric `{cfg['metric']}`; target success rate "
        f"{100 * cfg['target_success']:.0f} %. A frame succeeds when it is back before the "
        f"{cfg['deadline_s']:g} s deadline (constant {cfg['throughput_mbps']:g} Mbit/s link) with the cloud's output "
        "within tolerance of the uncompressed output. Images alternate between a calibration and an evaluation "
        "half, then swap: every figure is on images the policy was not fitted on. Bytes per captured frame count "
        "the bitstream and the decode sidecar; savings are against the matched fixed rung (the cheapest single "
        "rung reaching the target on the calibration half), with 95 % bootstrap intervals over images; success "
        "intervals are Wilson. The oracle (per image the cheapest rung within tolerance) is a bound.", "",
    ]
    for s in report["sections"]:
        tol = s["tolerance"]
        plans = "; ".join(
            " -> ".join(f"{st['rate_point']}" + (f" if {s['metric']} <= {st['threshold']:.3g}" if "threshold" in st
                                                 else "") for st in f["plan"]["steps"])
            + f" (matched fixed {f['matched_fixed_rate_point']})" for f in s["folds"])
        lines += [
            f"## {s['task']} / {s['codec']} ({s['images']} images)", "",
            f"Tolerance {tol['value']:g} ({tol['unit']}); plans per fold: {plans}; metric cost "
            f"{1e3 * s['metric_s']:.2f} ms.", "",
            "| policy | bytes/frame | success | 95 % CI | within tol. | savings vs matched fixed | 95 % CI | "
            "capture of oracle | encodes/frame | max | edge ms | edge vs fixed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in s["results"]:
            cap = r.get("capture_of_oracle")
            cap_text = "–" if cap is None else f"{100 * cap:.0f} %"
            edge_text = "–" if r["name"] == ORACLE else f"{1e3 * r['edge_time_s']:.1f}"
            vs_text = "–" if r["edge_time_vs_fixed"] is None else f"{r['edge_time_vs_fixed']:.2f}"
            lines.append(
                f"| {r['policy']} | {r['bytes_per_frame']:.0f} | {_pct(r['success_rate'])} | "
                f"{_ci(r['success_rate_ci'])} | {_pct(r['within_tolerance'])} | "
                f"{_pct(r.get('savings_vs_matched_fixed'), True)} | {_ci(r.get('savings_vs_matched_fixed_ci'))} | "
                f"{cap_text} | {r['encodes_per_frame']:.2f} | {r['max_encodes']} | {edge_text} | {vs_text} |")
        lines += ["", "| rung | bytes/frame | success (all images) |", "|---:|---:|---:|"]
        lines += [f"| {c['rate_point']} | {c['bytes_per_frame']:.0f} | {_pct(c['success_rate'])} |"
                  for c in s["fixed_curve"]]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Success rate against bytes per frame: the fixed ladder as a curve, each policy as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = report["sections"]
    cols = min(3, len(sections))
    rows = (len(sections) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    markers = {MATCHED: "s", "cfqa-target": "o", "hybrid": "D", "bandwidth": "^", ORACLE: "*"}
    handles = {}
    for ax, s in zip(axes.flat, sections):
        curve = s["fixed_curve"]
        (h,) = ax.plot([c["bytes_per_frame"] for c in curve], [100 * c["success_rate"] for c in curve], "-",
                       color="0.6", lw=1.2)
        handles["fixed rungs"] = h
        for r in s["results"]:
            (h,) = ax.plot(r["bytes_per_frame"], 100 * r["success_rate"], markers.get(r["policy"], "x"), ms=8,
                           alpha=0.85)
            handles[r["policy"]] = h
        ax.axhline(100 * s["target_success"], ls=":", lw=0.8, color="k")
        ax.set_xscale("log")
        ax.set_ylim(max(0, min(100 * c["success_rate"] for c in curve) - 5), 100.5)
        ax.set_xlabel("bytes per captured frame")
        ax.set_ylabel("success rate (%)")
        ax.set_title(f"{s['task']} / {s['codec']}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(sections):]:
        ax.remove()
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(6, len(handles)), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out_dir / "report.md").write_text(markdown(report))
    plot(report, out_dir / "rate_success.png")
