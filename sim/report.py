# Over 450 lines: a run folder's figures and its Markdown/HTML text, which embeds those figures.
"""Plots and reports of a run folder: Markdown and one self-contained HTML page.

The report opens with one headline sentence (the summary's ``headline`` when
the run computed one), then a table a reader can take in at a glance, then
the figures:

- the policies side by side: success rate and bytes per captured frame, with
  their 95 % intervals when the summary has them;
- bytes on the link versus its capacity over time, one small panel per policy
  (never one policy drawn over another), in time bins no finer than the
  frame period (a finer bin shows the frame clock, not rate control);
- rate versus accuracy per task over the codec's static ladder, policies that
  land on the same point labelled together;
- the latency CDF (small multiples once there are more than a few policies;
  identical curves share one label);
- the rate point chosen over time by the first nodes, one panel per policy,
  nodes drawn slightly apart so that equal choices stay visible.

Every policy keeps one colour in every figure.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from cfqa_core.task_names import TASKS
from cfqa_sim.records import DELIVERED_STATUSES

_TASK_LABEL = {"cls": "Cls top-1", "seg": "Seg mIoU", "dpt": "Dpt RMSE (m, lower is better)"}
_TASK_KEY = {"cls": "cls_top1", "seg": "seg_miou", "dpt": "dpt_rmse"}
MAX_LINK_PLOTS = 3
# More distinct latency curves than this on one axis is spaghetti: switch to small multiples.
MAX_OVERLAID = 3
_MARKERS = "oDs^vP*Xh<>p"

PLOTS = (
    ("summary.png", "Success rate and bytes per policy"),
    ("capacity.png", "Bytes sent vs link capacity"),
    ("rate_accuracy.png", "Rate vs accuracy per policy"),
    ("latency_cdf.png", "Latency CDF"),
    ("rate_timeline.png", "Rate point timeline (first nodes)"),
)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def policy_colours(policies: list[str]) -> dict[str, Any]:
    """One fixed colour per policy (tab10, then tab20), used by every figure."""
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(policies) <= 10 else "tab20")
    return {p: cmap(i % cmap.N) for i, p in enumerate(policies)}


# ---- figures ---------------------------------------------------------------------------


def frame_period_s(scenario) -> float:
    """The longest frame period of the scenario's node groups (seconds)."""
    return max(1.0 / g.arrivals.fps for g in scenario.nodes)


def time_bin_s(duration_s: float, requested_s: float | None, frame_period: float | None) -> float:
    """The capacity plot's bin: the requested one (default duration / 120), never finer than the frame period."""
    bin_s = requested_s or max(duration_s / 120.0, 0.1)
    return max(bin_s, frame_period or 0.0)


def _bin_edges(duration_s: float, bin_s: float) -> np.ndarray:
    return np.arange(0.0, duration_s + bin_s, bin_s)


def sent_per_bin(info, start: np.ndarray, end: np.ndarray, nbytes: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bytes on ``info``'s link per time bin.

    Each transfer's bytes are spread over its duration in proportion to the
    link's delivery opportunities (none during an outage), as the link
    delivered them to a transfer alone on it.
    """
    usable = np.vectorize(info.usable, otypes=[np.float64])
    at_edges = usable(edges)
    o_start, o_end = usable(start), usable(end)
    span = o_end - o_start
    out = np.zeros(edges.size, dtype=float)
    for lo in range(0, start.size, 20000):  # bounded memory: transfers x edges per chunk
        sl = slice(lo, lo + 20000)
        frac = (at_edges[None, :] - o_start[sl, None]) / np.maximum(span[sl, None], 1e-12)
        # a transfer that used no opportunity (zero bytes) counts at its end
        frac = np.where(span[sl, None] > 0, frac, (edges[None, :] >= end[sl, None]).astype(float))
        out += (nbytes[sl, None] * np.clip(frac, 0.0, 1.0)).sum(axis=0)
    return np.diff(out)


def _links_to_plot(result) -> list[int]:
    shared = [i for i, info in enumerate(result.links) if info.shared]
    return (shared + [i for i in range(len(result.links)) if i not in shared])[:MAX_LINK_PLOTS]


def _success(s: dict, rich: bool | None = None) -> tuple[float | None, list[float] | None]:
    """Success rate and its interval; in a run without success rates, on-time delivery (1 - miss rate).

    ``rich`` says whether the run's summary has success rates (one meaning per column);
    None decides from this policy alone.
    """
    if rich or (rich is None and "success_rate" in s):
        if s.get("success_rate") is None:
            return None, None
        ci = s.get("success_rate_ci")
        return float(s["success_rate"]), list(ci) if ci and None not in ci else None
    miss = s.get("deadline_miss_rate")
    return (None, None) if miss is None else (1.0 - float(miss), None)


def _bytes_per_frame(s: dict) -> float | None:
    if s.get("bytes_per_captured_frame") is not None:
        return float(s["bytes_per_captured_frame"])
    return s["bytes_total"] / s["frames_total"] if s.get("frames_total") else None


def _savings(s: dict, rich: bool | None = None) -> tuple[float | None, list[float] | None, str]:
    """(savings, interval, against what): matched fixed when the run's summary has it, else the baseline."""
    if rich or (rich is None and "savings_vs_matched_fixed" in s):
        if s.get("savings_vs_matched_fixed") is None:
            return None, None, "matched fixed"
        ci = s.get("savings_vs_matched_fixed_ci")
        return float(s["savings_vs_matched_fixed"]), list(ci) if ci and None not in ci else None, "matched fixed"
    v = s.get("bandwidth_savings_vs_baseline")
    return (None if v is None else float(v)), None, "baseline"


def _has(policies: dict[str, dict], key: str) -> bool:
    return any(s.get(key) is not None for s in policies.values())


def plot_summary(policies: dict[str, dict], colours: dict, path: Path) -> None:
    """Success rate (with interval) and bytes per captured frame, one row per policy."""
    plt = _plt()
    names = list(policies)
    y = np.arange(len(names))[::-1]
    rich_success, rich_savings = _has(policies, "success_rate"), _has(policies, "savings_vs_matched_fixed")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, max(0.55 * len(names) + 1.6, 3.0)), sharey=True)
    for yi, name in zip(y, names):
        s = policies[name]
        rate, ci = _success(s, rich_success)
        if rate is not None:
            xerr = None if ci is None else [[max(rate - ci[0], 0)], [max(ci[1] - rate, 0)]]
            ax1.errorbar(100 * rate, yi, xerr=None if xerr is None else 100 * np.array(xerr), fmt="o",
                         color=colours[name], capsize=4, ms=7)
            ax1.annotate(f"{100 * rate:.1f} %", (100 * rate, yi), xytext=(0, 7), textcoords="offset points",
                         ha="center", fontsize=8)
        bpf = _bytes_per_frame(s)
        if bpf is not None:
            ax2.barh(yi, bpf / 1e3, color=colours[name], height=0.6)
            sav, sci, _ = _savings(s, rich_savings)
            text = f"{bpf / 1e3:.1f} kB"
            if sav is not None:
                text += f"  ({100 * sav:+.1f} %" + (f" [{100 * sci[0]:+.1f}, {100 * sci[1]:+.1f}]" if sci else "") + ")"
            ax2.annotate(text, (bpf / 1e3, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax1.set_yticks(y, names)
    ax1.set_xlabel(("success rate (%), 95 % interval" if rich_success else "frames on time (%)"))
    ax1.set_xlim(max(0.0, ax1.get_xlim()[0]), min(100.5, max(ax1.get_xlim()[1], 1.0)))
    ax1.grid(axis="x", alpha=0.3)
    ax2.set_xlabel("kB per captured frame  (savings vs " + ("matched fixed)" if rich_savings else "baseline)"))
    ax2.set_xlim(0, ax2.get_xlim()[1] * 1.45)  # room for the labels
    ax2.grid(axis="x", alpha=0.3)
    fig.suptitle("Success rate and bytes per policy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_capacity(results, path: Path, bin_s: float, colours: dict) -> None:
    """One panel per policy (rows) and link (columns): the link's capacity and the policy's bytes on it."""
    plt = _plt()
    first = results[0]
    links = _links_to_plot(first)
    edges = _bin_edges(max(r.sim_end_s for r in results), bin_s)
    width = np.diff(edges)
    caps = {}
    for li in links:
        info = first.links[li]
        cap = info.trace.capacity_mbps(edges + info.offset_s)
        for start, dur in info.outages:
            cap[(edges[:-1] < start + dur) & (edges[1:] > start)] = 0.0
        caps[li] = cap
    sent_mbps = {}
    for r in results:
        c = r.columns
        for li in links:
            sel = (c["link"] == li) & ~np.isnan(c["t_send_done"])
            sent = sent_per_bin(first.links[li], c["t_send_start"][sel], c["t_send_done"][sel],
                                c["wire_bytes"][sel].astype(float), edges)
            sent_mbps[r.policy, li] = sent * 8 / width / 1e6
    fig, axes = plt.subplots(len(results), len(links), figsize=(4.2 * len(links) + 3.5, 1.7 * len(results) + 1.0),
                             squeeze=False, sharex=True, sharey="col")
    for col, li in enumerate(links):
        info = first.links[li]
        peak = max(float(sent_mbps[r.policy, li].max(initial=0.0)) for r in results)
        # a lightly used link: a log scale keeps the sent rate readable beside the capacity
        symlog = 0 < peak < 0.2 * caps[li].max(initial=0.0)
        for row, r in enumerate(results):
            ax = axes[row, col]
            ax.fill_between(edges[:-1], caps[li], step="post", color="0.85", label="capacity")
            ax.step(edges[:-1], sent_mbps[r.policy, li], where="post", lw=1.3, color=colours[r.policy], label="sent")
            if symlog:
                ax.set_yscale("symlog", linthresh=max(peak / 10, 1e-3))
            if row == 0:
                kind = "shared" if info.shared else "one node's"
                ax.set_title(f"link {info.spec} #{li} ({kind}), {info.trace.name}", fontsize=9)
            if col == 0:
                unit = "Mbit/s (symlog)" if symlog else "Mbit/s"
                ax.set_ylabel(f"{r.policy}\n{unit}", fontsize=9, color=colours[r.policy])
            ax.grid(alpha=0.25)
    axes[0, -1].legend(fontsize=7, loc="upper right")
    for ax in axes[-1, :]:
        ax.set_xlabel("simulated time (s)")
    fig.suptitle(f"Bytes sent vs link capacity ({bin_s:g} s bins)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _groups_of_equal(values: dict[str, Any], key) -> list[list[str]]:
    """Policies grouped by ``key(value)`` (first appearance order): equal results share one mark."""
    groups: dict[Any, list[str]] = {}
    for name, v in values.items():
        groups.setdefault(key(v), []).append(name)
    return list(groups.values())


def plot_rate_accuracy(results, path: Path, colours: dict) -> None:
    plt = _plt()
    first = results[0]
    tasks = sorted(set(first.group_tasks), key=TASKS.index)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5.2 * len(tasks), 7.0), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for key, curve in first.rate_curves.items():
            if key.startswith(f"{task}/"):
                rp, b, score = zip(*curve)
                ax.plot(np.array(b) / 1e3, score, "-", color="0.7", lw=1, zorder=1,
                        label=f"{key} ladder (all table images)")
                for x, yv, q in zip(b, score, rp):
                    ax.annotate(str(q), (x / 1e3, yv), fontsize=6, color="0.5", xytext=(2, 2),
                                textcoords="offset points")
        points = {}
        for r in results:
            c = r.columns
            tasks_of = np.array(r.group_tasks, dtype=object)[c["group"].astype(int)]
            sel = np.isin(c["status"], DELIVERED_STATUSES) & (tasks_of == task)
            if sel.any():
                points[r.policy] = (float(c["bytes"][sel].mean() / 1e3), float(np.nanmean(c["task_score"][sel])))
        for k, group in enumerate(_groups_of_equal(points, lambda p: (round(p[0], 3), round(p[1], 4)))):
            x, yv = points[group[0]]
            ax.plot(x, yv, _MARKERS[k % len(_MARKERS)], ms=9, color=colours[group[0]], mec="black", mew=0.6, zorder=3,
                    label=" = ".join(group))
            ax.annotate(" = ".join(group), (x, yv), xytext=(8, -12 - 4 * (k % 3) if k % 2 else 6 + 4 * (k % 3)),
                        textcoords="offset points", fontsize=8, color=colours[group[0]], zorder=4,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        ax.set_xlabel("mean kB per delivered frame")
        ax.set_ylabel(_TASK_LABEL[task])
        ax.set_title(task)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Rate vs accuracy (delivered frames)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _latencies(results) -> dict[str, np.ndarray]:
    out = {}
    for r in results:
        c = r.columns
        sel = np.isin(c["status"], DELIVERED_STATUSES)
        out[r.policy] = np.sort(c["t_result"][sel] - c["t_capture"][sel])
    return out


def plot_latency_cdf(results, deadlines: list[float], path: Path, colours: dict) -> None:
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lat = _latencies(results)
    groups = [g for g in _groups_of_equal(lat, lambda a: (a.size, a.round(9).tobytes())) if lat[g[0]].size]
    small = len(groups) > MAX_OVERLAID
    ncols = min(3, len(groups)) if small else 1
    nrows = math.ceil(len(groups) / ncols) if small else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols + 1.0, 2.8 * nrows + 0.8) if small else (7, 4),
                             squeeze=False, sharex=True, sharey=True)
    panels = [(ax, [g]) for ax, g in zip(axes.ravel(), groups)] if small else [(axes[0, 0], groups)]
    for ax, shown in panels:
        if small:  # every other policy faint in the background, for comparison
            for g in groups:
                if g is not shown[0]:
                    a = lat[g[0]]
                    ax.step(a, np.arange(1, a.size + 1) / a.size, where="post", color="0.8", lw=0.8)
        for g in shown:
            a = lat[g[0]]
            ax.step(a, np.arange(1, a.size + 1) / a.size, where="post", lw=1.6, color=colours[g[0]],
                    label=" = ".join(g))
        for d in sorted(set(deadlines)):
            ax.axvline(d, color="red", ls="--", lw=0.8)
        ax.set_xscale("log")  # outages put a long tail next to sub-second latencies
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        if small:
            ax.set_title(" = ".join(shown[0]), fontsize=9, color=colours[shown[0][0]])
        else:
            ax.legend(fontsize=8, loc="lower right")
    for k, ax in enumerate(axes.ravel()):
        if k >= len(panels):
            ax.set_visible(False)
            axes.ravel()[k - ncols].xaxis.set_tick_params(labelbottom=True)  # the panel above ends its column
    for ax in axes[-1, :]:
        ax.set_xlabel("latency, capture to result (s, log)")
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction delivered")
    fig.suptitle("Latency CDF (red: deadline" + ("; grey: the other policies)" if small else ")"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rate_timeline(results, nodes: int, path: Path, colours: dict) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 1.9 * len(results) + 0.8), squeeze=False, sharex=True)
    ladder = sorted({rp for r in results for lad in r.ladders.values() for rp in lad})
    step = float(np.min(np.diff(ladder))) if len(ladder) > 1 else 1.0
    for ax, r in zip(axes[:, 0], results):
        c = r.columns
        shown = min(nodes, r.nodes)
        for node in range(shown):
            sel = (c["node"] == node) & (c["rate_point"] >= 0)
            if sel.any():
                # nodes drawn slightly apart: equal rate points would otherwise hide each other
                dodge = (node - (shown - 1) / 2) * 0.5 * step / max(shown, 1)
                ax.step(c["t_capture"][sel], c["rate_point"][sel] + dodge, where="post", lw=1,
                        label=f"node {node}")
        if ladder:
            ax.set_yticks(ladder if len(ladder) <= 12 else ladder[:: math.ceil(len(ladder) / 12)])
            ax.set_ylim(ladder[0] - step, ladder[-1] + step)
        ax.set_ylabel("rate point")
        ax.set_title(r.policy, fontsize=9, color=colours[r.policy])
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.invert_yaxis()  # higher quality (lower QP) up
        ax.grid(alpha=0.25)
    axes[-1, 0].set_xlabel("capture time (s)")
    fig.suptitle("Rate point per frame (up = higher quality; nodes slightly offset)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out: Path, loaded, results, summary: dict | None = None) -> list[Path]:
    s = loaded.scenario
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    paths = [plots / name for name, _ in PLOTS]
    colours = policy_colours([r.policy for r in results])
    policies = (summary or {}).get("policies") or {}
    plot_summary({r.policy: policies.get(r.policy, {}) for r in results}, colours, paths[0])
    bin_s = time_bin_s(max(r.sim_end_s for r in results), s.report.bin_s, frame_period_s(s))
    plot_capacity(results, paths[1], bin_s, colours)
    plot_rate_accuracy(results, paths[2], colours)
    plot_latency_cdf(results, [g.deadline_s for g in s.nodes], paths[3], colours)
    plot_rate_timeline(results, s.report.plot_nodes, paths[4], colours)
    return paths


# ---- text ------------------------------------------------------------------------------


def _pct(v: float | None, ci: list[float] | None = None, signed: bool = False) -> str:
    if v is None:
        return "-"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    text = fmt.format(100 * v) + " %"
    if ci:
        text += " [" + fmt.format(100 * ci[0]) + ", " + fmt.format(100 * ci[1]) + "]"
    return text


def _accuracy(s: dict) -> str:
    """Accuracy over delivered frames, per task: the summary's accuracy_delivered, else the task scores."""
    acc = s.get("accuracy_delivered")
    if isinstance(acc, (int, float)):
        return f"{acc:.3f}"
    if isinstance(acc, dict):
        return ", ".join(f"{k} {v:.3f}" for k, v in acc.items() if isinstance(v, (int, float))) or "-"
    parts = [f"{task} {s[key]:.3f}" for task, key in _TASK_KEY.items() if s.get(key) is not None]
    return ", ".join(parts) or "-"


def _drop(s: dict) -> str:
    unit = {"cls": "pt", "seg": "pt", "dpt": "%"}
    parts = [f"{task} {s[f'{task}_accuracy_drop']:+.2f} {unit[task]}" for task in _TASK_KEY
             if s.get(f"{task}_accuracy_drop") is not None]
    return ", ".join(parts) or "-"


def report_table(policies: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """(column header, one cell per policy) for the report."""
    rows = list(policies.values())
    rich_success, rich_savings = _has(policies, "success_rate"), _has(policies, "savings_vs_matched_fixed")
    success = [_success(s, rich_success) for s in rows]
    savings = [_savings(s, rich_savings) for s in rows]
    cols: list[tuple[str, list[str]]] = [
        ("policy", list(policies)),
        ("success rate [95 % CI]" if rich_success else "on time", [_pct(v, ci) for v, ci in success]),
        ("kB per captured frame",
         ["-" if _bytes_per_frame(s) is None else f"{_bytes_per_frame(s) / 1e3:.2f}" for s in rows]),
        ("savings vs matched fixed [95 % CI]" if rich_savings else "savings vs baseline",
         [_pct(v, ci, signed=True) for v, ci, _ in savings]),
        ("accuracy (delivered)", [_accuracy(s) for s in rows]),
        ("accuracy drop", [_drop(s) for s in rows]),
        ("latency p50 / p99 s",
         ["-" if s.get("latency_p50_s") is None else f"{s['latency_p50_s']:.3f} / {s['latency_p99_s']:.3f}"
          for s in rows]),
        ("deadline miss", [_pct(s.get("deadline_miss_rate")) for s in rows]),
        ("frames (dropped)", [f"{s.get('frames_total', 0)} ({s.get('frames_dropped', 0)})" for s in rows]),
    ]
    return cols


def identical_policies(results) -> list[list[str]]:
    """Groups of policies whose every frame ended the same way (bytes, rate point, status, result time)."""
    def key(r):
        c = r.columns
        cols = ("bytes", "rate_point", "status", "t_result", "task_score")
        return tuple(np.nan_to_num(np.asarray(c[k], dtype=np.float64), nan=-1.0).round(9).tobytes() for k in cols)

    return [g for g in _groups_of_equal({r.policy: r for r in results}, key) if len(g) > 1]


def _identical_sentence(results) -> str | None:
    groups = identical_policies(results)
    if not groups:
        return None
    return ("Identical results (every frame the same), drawn once with a joint label: "
            + "; ".join(" = ".join(g) for g in groups) + ".")


def _drops_sentence(policies: dict[str, dict]) -> str:
    parts = []
    for name, s in policies.items():
        reasons = [f"{n} {k.replace('_', ' ')}" for k, n in (s.get("dropped_by_reason") or {}).items() if n]
        parts.append(f"{name}: {', '.join(reasons) if reasons else 'none'}")
    return "Dropped frames by reason: " + "; ".join(parts) + "."


def headline(summary: dict) -> str:
    """The run's one-sentence result: the summary's own headline, else one built from its figures."""
    if summary.get("headline"):
        return str(summary["headline"])
    policies = summary.get("policies") or {}
    if not policies:
        return "No policy finished: nothing was measured."
    base = summary.get("baseline_policy")
    others = {p: s for p, s in policies.items() if p != base and s.get("bandwidth_savings_vs_baseline") is not None}
    if base in policies and others:
        b = policies[base]
        # the largest saving among policies that keep the baseline's accuracy within a point; else say what it cost
        keeps = {p: s for p, s in others.items()
                 if _worst_drop(s) is None or _worst_drop(b) is None or _worst_drop(s) <= _worst_drop(b) + 1.0}
        pool = keeps or others
        best = max(pool, key=lambda p: pool[p]["bandwidth_savings_vs_baseline"])
        s = pool[best]
        sav = s["bandwidth_savings_vs_baseline"]
        verb = "fewer" if sav >= 0 else "more"
        return (f"{best} sent {abs(100 * sav):.1f} % {verb} bytes than {base} at accuracy {_accuracy(s)} against "
                f"{_accuracy(b)}, with {_pct(_success(s, False)[0])} of frames on time "
                f"against {_pct(_success(b, False)[0])}.")
    name, s = next(iter(policies.items()))
    return (f"{name} sent {s['bytes_total'] / 1e6:.2f} MB for {s['frames_total']} frames, accuracy {_accuracy(s)}, "
            f"{_pct(_success(s, False)[0])} of them on time.")


def _worst_drop(s: dict) -> float | None:
    drops = [s[f"{t}_accuracy_drop"] for t in _TASK_KEY if s.get(f"{t}_accuracy_drop") is not None]
    return max(drops) if drops else None


def _context(loaded, summary: dict) -> list[str]:
    s = loaded.scenario
    lines = [
        f"Scenario {s.name} ({s.mode} mode): {s.node_count} nodes, {s.duration_s:g} s simulated, "
        f"seed {s.seed}, {s.cloud.servers} cloud server(s).",
    ]
    if s.description:
        lines.append(s.description.strip())
    if any(p.get("savings_vs_matched_fixed") is not None for p in (summary.get("policies") or {}).values()):
        lines.append("Savings are against the fixed rate point matched to each policy's accuracy, on the same frames.")
    elif summary.get("baseline_policy"):
        lines.append(f"Savings are against {summary['baseline_policy']}, on the same frames.")
    return lines


def _md_table(cols: list[tuple[str, list[str]]]) -> str:
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for i in range(len(cols[0][1])):
        lines.append("| " + " | ".join(v[i] for _, v in cols) + " |")
    return "\n".join(lines)


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}"
    ".headline{font-size:1.25em;font-weight:600;border-left:4px solid #1f77b4;padding:.4em .8em;background:#f3f7fb}"
    ".partial{color:#b00;font-weight:600}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:4px 8px}"
    "td{text-align:right}td:first-child,th{text-align:left}th{background:#f4f4f4}"
    "figure{margin:1.5em 0}figcaption{font-weight:600;margin-bottom:.3em}img{max-width:100%}"
)


def write_reports(out: Path, loaded, results, summary: dict) -> None:
    """``report.md`` (linking plots/) and ``report.html`` (PNGs inlined)."""
    policies = summary["policies"]
    paths = write_plots(out, loaded, results, summary)
    name = loaded.scenario.name
    head = headline(summary)
    context = _context(loaded, summary)
    table = report_table(policies)
    partial = "PARTIAL RUN: interrupted before the end; figures cover what was measured."

    md = [f"# Simulation report: {name}", "", f"**{head}**", ""]
    if summary.get("partial"):
        md += [f"**{partial}**", ""]
    same = _identical_sentence(results)
    md += [*context, "", _md_table(table), "", _drops_sentence(policies), ""] + ([same, ""] if same else [])
    for path, (_, title) in zip(paths, PLOTS):
        md += [f"## {title}", "", f"![{title}](plots/{path.name})", ""]
    (out / "report.md").write_text("\n".join(md))

    esc = html.escape
    body = [f"<h1>Simulation report: {esc(name)}</h1>", f"<p class='headline' id='headline'>{esc(head)}</p>"]
    if summary.get("partial"):
        body.append(f"<p class='partial'>{esc(partial)}</p>")
    body += [f"<p>{esc(line)}</p>" for line in context]
    body.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h, _ in table) + "</tr></thead><tbody>")
    for i in range(len(table[0][1])):
        body.append("<tr>" + "".join(f"<td>{esc(v[i])}</td>" for _, v in table) + "</tr>")
    body.append("</tbody></table>")
    body.append(f"<p>{esc(_drops_sentence(policies))}</p>")
    if same:
        body.append(f"<p id='identical'>{esc(same)}</p>")
    for path, (stem, title) in zip(paths, PLOTS):
        data = base64.b64encode(path.read_bytes()).decode()
        fig_id = "fig-" + stem.removesuffix(".png").replace("_", "-")
        body.append(f"<figure id='{fig_id}'><figcaption>{esc(title)}</figcaption>"
                    f"<img alt='{esc(title)}' src='data:image/png;base64,{data}'></figure>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(name)}: simulation report</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
    (out / "report.html").write_text(page)
