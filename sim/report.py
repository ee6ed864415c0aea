"""Plots and reports of a run folder: Markdown and one self-contained HTML page.

Plots: bytes on the link versus its capacity over time, rate-accuracy per
policy (over the codec's static ladder), the latency CDF, and the rate
point chosen over time by a few nodes.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from sim.records import DELIVERED_STATUSES
from sim.summary import format_table, summary_table

_TASK_LABEL = {"cls": "Cls top-1", "seg": "Seg mIoU", "dpt": "Dpt RMSE (m, lower is better)"}
MAX_LINK_PLOTS = 3


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bin_edges(duration_s: float, bin_s: float | None) -> np.ndarray:
    bin_s = bin_s or max(duration_s / 120.0, 0.1)
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


def plot_capacity(results, path: Path, bin_s: float | None) -> None:
    plt = _plt()
    first = results[0]
    links = _links_to_plot(first)
    edges = _bin_edges(max(r.sim_end_s for r in results), bin_s)
    width = np.diff(edges)
    fig, axes = plt.subplots(len(links), 1, figsize=(9, 2.6 * len(links) + 0.6), squeeze=False, sharex=True)
    for ax, li in zip(axes[:, 0], links):
        info = first.links[li]
        cap = info.trace.capacity_mbps(edges + info.offset_s)
        for start, dur in info.outages:
            cap[(edges[:-1] < start + dur) & (edges[1:] > start)] = 0.0
        ax.fill_between(edges[:-1], cap, step="post", color="0.85", label="capacity")
        peak = 0.0
        for r in results:
            c = r.columns
            sel = (c["link"] == li) & ~np.isnan(c["t_send_done"])
            sent = sent_per_bin(info, c["t_send_start"][sel], c["t_send_done"][sel],
                                c["wire_bytes"][sel].astype(float), edges)
            mbps = sent * 8 / width / 1e6
            peak = max(peak, float(mbps.max(initial=0.0)))
            ax.step(edges[:-1], mbps, where="post", lw=1.2, label=r.policy)
        kind = "shared by its nodes" if info.shared else "one node's"
        ax.set_title(f"link {info.spec} #{li} ({kind}), trace {info.trace.name}", fontsize=9)
        if 0 < peak < 0.2 * cap.max(initial=0.0):
            # a lightly used link: a log scale keeps the sent rate readable beside the capacity
            ax.set_yscale("symlog", linthresh=max(peak / 10, 1e-3))
            ax.set_ylabel("Mbit/s (symlog)")
        else:
            ax.set_ylabel("Mbit/s")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("simulated time (s)")
    fig.suptitle("Bytes sent vs link capacity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rate_accuracy(results, path: Path) -> None:
    plt = _plt()
    first = results[0]
    tasks = sorted(set(first.group_tasks), key=["cls", "seg", "dpt"].index)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks) + 0.5, 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for key, curve in first.rate_curves.items():
            if key.startswith(f"{task}/"):
                rp, b, score = zip(*curve)
                ax.plot(np.array(b) / 1e3, score, "-o", color="0.6", ms=3, label=f"{key} ladder (all table images)")
                for x, y, q in zip(b, score, rp):
                    ax.annotate(str(q), (x / 1e3, y), fontsize=6, color="0.4", xytext=(2, 2), textcoords="offset points")
        for r in results:
            c = r.columns
            tasks_of = np.array(r.group_tasks, dtype=object)[c["group"].astype(int)]
            sel = np.isin(c["status"], DELIVERED_STATUSES) & (tasks_of == task)
            if sel.any():
                ax.plot(c["bytes"][sel].mean() / 1e3, np.nanmean(c["task_score"][sel]), "D", ms=8, label=r.policy)
        ax.set_xlabel("mean kB per frame")
        ax.set_ylabel(_TASK_LABEL[task])
        ax.set_title(task)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Rate vs accuracy (delivered frames)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency_cdf(results, deadlines: list[float], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for r in results:
        c = r.columns
        sel = np.isin(c["status"], DELIVERED_STATUSES)
        lat = np.sort(c["t_result"][sel] - c["t_capture"][sel])
        if lat.size:
            ax.step(lat, np.arange(1, lat.size + 1) / lat.size, where="post", label=r.policy)
    for d in sorted(set(deadlines)):
        ax.axvline(d, color="red", ls="--", lw=0.8)
    ax.set_xscale("log")  # outages put a long tail next to sub-second latencies
    ax.set_xlabel("latency, capture to result (s, log scale)  — red: deadline")
    ax.set_ylabel("fraction of delivered frames")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Latency CDF")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rate_timeline(results, nodes: int, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 2.3 * len(results) + 0.6), squeeze=False, sharex=True)
    for ax, r in zip(axes[:, 0], results):
        c = r.columns
        for node in range(min(nodes, r.nodes)):
            sel = (c["node"] == node) & (c["rate_point"] >= 0)
            if sel.any():
                ax.step(c["t_capture"][sel], c["rate_point"][sel], where="post", lw=1, label=f"node {node}")
        ladder = sorted({rp for lad in r.ladders.values() for rp in lad})
        if ladder:
            ax.set_yticks(ladder)
            ax.set_ylim(ladder[0] - 1, ladder[-1] + 1)
        ax.set_ylabel("rate point")
        ax.set_title(r.policy, fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.invert_yaxis()  # higher quality (lower QP) up
    axes[-1, 0].set_xlabel("capture time (s)")
    fig.suptitle("Rate point per frame (QP; up = higher quality)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PLOTS = (
    ("capacity.png", "Bytes sent vs link capacity"),
    ("rate_accuracy.png", "Rate vs accuracy per policy"),
    ("latency_cdf.png", "Latency CDF"),
    ("rate_timeline.png", "Rate point timeline (first nodes)"),
)


def write_plots(out: Path, loaded, results) -> list[Path]:
    s = loaded.scenario
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    paths = [plots / name for name, _ in PLOTS]
    plot_capacity(results, paths[0], s.report.bin_s)
    plot_rate_accuracy(results, paths[1])
    plot_latency_cdf(results, [g.deadline_s for g in s.nodes], paths[2])
    plot_rate_timeline(results, s.report.plot_nodes, paths[3])
    return paths


def _header(loaded, summary: dict) -> list[str]:
    s = loaded.scenario
    lines = [
        f"Scenario **{s.name}** ({s.mode} mode): {s.node_count} nodes, {s.duration_s:g} s simulated, "
        f"seed {s.seed}, {s.cloud.servers} cloud server(s).",
    ]
    if s.description:
        lines.append(s.description.strip())
    if summary.get("partial"):
        lines.append("**PARTIAL RUN: interrupted before the end; figures cover what was measured.**")
    if summary.get("baseline_policy"):
        lines.append(f"Bandwidth savings are relative to `{summary['baseline_policy']}`.")
    return lines


def write_reports(out: Path, loaded, results, summary: dict) -> None:
    """``report.md`` (linking plots/) and ``report.html`` (PNGs inlined)."""
    policies = summary["policies"]
    paths = write_plots(out, loaded, results)
    table = summary_table(policies)
    head = _header(loaded, summary)
    md = [f"# Simulation report: {loaded.scenario.name}", "", *head, "", format_table(table, markdown=True), ""]
    drops = {p: s["dropped_by_reason"] for p, s in policies.items()}
    md += ["Dropped frames by reason: " + "; ".join(f"{p}: {d}" for p, d in drops.items()), ""]
    for path, (_, title) in zip(paths, PLOTS):
        md += [f"## {title}", "", f"![{title}](plots/{path.name})", ""]
    (out / "report.md").write_text("\n".join(md))

    body = [f"<h1>Simulation report: {html.escape(loaded.scenario.name)}</h1>"]
    body += [f"<p>{html.escape(line).replace('**', '')}</p>" for line in head]
    body.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h, _ in table) + "</tr>")
    for i in range(len(table[0][1])):
        body.append("<tr>" + "".join(f"<td>{html.escape(v[i])}</td>" for _, v in table) + "</tr>")
    body.append("</table>")
    body.append("<p>Dropped frames by reason: " + html.escape("; ".join(f"{p}: {d}" for p, d in drops.items())) + "</p>")
    for path, (_, title) in zip(paths, PLOTS):
        data = base64.b64encode(path.read_bytes()).decode()
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
        "img{max-width:100%}"
    )
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(loaded.scenario.name)}</title>" \
           f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    (out / "report.html").write_text(page)
