# Over 450 lines: one report's Markdown, HTML and JSON renderings, written from the same computed figures.
"""The benchmark report: Markdown and HTML (summary first), CSV, JSON, one figure per question.

Every number and verdict is computed here from the table; the summary at the
top is written from the same figures. The findings of the paper are tested in
``cfqa_core.benchmark.findings`` on 95 % bootstrap intervals over originals
(``cfqa_core.benchmark.bootstrap``). A second table (the paper's QP 2-20 ladder)
can be reported beside the default one.
"""
from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cfqa_core.benchmark import plots
from cfqa_core.benchmark.bootstrap import RESAMPLES, SEED, OriginalBootstrap
from cfqa_core.benchmark.findings import (
    FAILS,
    HOLDS,
    MARGIN,
    UNDECIDED,
    UNTESTABLE,
    Verdict,
    paper_findings,
    proxy_verdict,
)
from cfqa_core.benchmark.protocol import (
    MIN_INTERVAL_FEATURES,
    per_feature_correlations,
    refuse_in_sample,
    resolve_metrics,
    summarise,
    task_order,
)

__all__ = ["FAILS", "HOLDS", "UNDECIDED", "UNTESTABLE", "Verdict", "Report", "build_report", "verdicts"]

BASELINES: tuple[str, ...] = ("mse", "cosine", "cka")
PROXY = "proxy"
PROXY_RISK = "proxy_risk"
TASK_AWARE: tuple[str, ...] = (PROXY, PROXY_RISK)
DISPLAY = {"mse": "MSE", "psnr": "PSNR", "cosine": "Cosine", "cosine_flat": "Cosine (flat)",
           "cka": "CKA", "cka_seed": "CKA (seed)", PROXY: "Proxy (task-aware)", PROXY_RISK: "Proxy risk (task-aware)"}
TASK_DISPLAY = {"cls": "Cls", "seg": "Seg", "dpt": "Dpt"}
COVERAGE_TARGET = 0.9
SCATTER_METRICS: tuple[str, ...] = ("cosine", PROXY, PROXY_RISK)
SHORT_CLAIM = {"cosine_best": "Cosine best and most stable", "handcrafted_vs_learned": "hand-crafted more "
               "predictable than learned", "seg_hardest": "Seg hardest", "hevc_vs_vvc": "HEVC easier than VVC",
               "low_rate": "less reliable at low bitrates", "varies": "varies across codecs and tasks"}
CONVENTION = (
    "PLCC/SROCC: for every original feature (image x task) and codec, the correlation over its rate points "
    "between the metric and the ground-truth distortion, then the mean over features (features whose "
    "distortion or metric is constant are left out and counted). Signs are raw, metric against distortion, "
    "as in the reference corr.py and README: MSE correlates positively and cosine/CKA negatively with a "
    "distortion that grows as quality drops (cls rank, dpt RMSE difference); for seg (mIoU difference, "
    "which falls) the signs flip. Oriented values multiply by the expected sign so that +1 always means "
    "the metric tracks the distortion. Brackets: 95 % bootstrap interval over originals "
    "({resamples} resamples, seed {seed})."
)
PROXY_NOTE = (
    "`proxy` is a task-aware damage score (lower is better) distilled from the cloud model's outputs on the "
    "train split with no codec seen in training; the benchmark's originals are other images, so its figures "
    "here are out-of-sample and need no leave-one-codec-out test. It scores how far the output moved (Seg: the "
    "share of pixels relabelled), the quantity rate control holds within tolerance. `proxy_risk` is the same "
    "proxy scored by the task's loss: on Seg the expected mIoU loss of the relabelled map under the proxy's "
    "posterior at the uncompressed feature (its temperature and mask correlation fitted on train-split masks), "
    "on Cls and Dpt the same as `proxy`. The protocol's ground truth is the task's distortion, so `proxy_risk` "
    "is the task-aware metric to read here; `proxy` is the one the edge steers by."
)
LEARNED_NOTE = (
    "The `learned` metric is fitted on a benchmark build, so its table column is in-sample and is not "
    "reported; its figures are the leave-one-codec-out test of `cfqa train-metric` (each codec and each "
    "image held out of training), read from `{path}` (cell means only: no interval)."
)


@dataclass
class Ladder:
    """One table's protocol run: results, verdicts and the ladder it was built on."""

    name: str
    source: str
    table: object
    metrics: list[str]
    per_feature: object
    summary: object
    results: dict
    verdicts: list[Verdict]
    task_aware: list[Verdict]   # one per task-aware metric in the table, against cosine
    boot: OriginalBootstrap

    def describe(self) -> str:
        """The ladder as measured: rate points per codec."""
        parts = []
        for codec, g in self.table.groupby("codec", sort=True):
            pts = np.sort(g["rate_point"].unique())
            parts.append(f"{codec} {pts[0]:g}-{pts[-1]:g} ({len(pts)} points)" if len(pts) > 1
                         else f"{codec} {pts[0]:g}")
        return "; ".join(parts)


@dataclass
class Report:
    summary: object  # pandas DataFrame, one row per codec/task/metric
    per_feature: object
    results: dict
    verdicts: list[Verdict]
    markdown: str
    table_markdown: str
    paths: dict[str, str] = field(default_factory=dict)
    paper: Ladder | None = None
    fidelity: dict | None = None
    headline: list[str] = field(default_factory=list)


def _fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _ci(lo: float, hi: float, digits: int = 3) -> str:
    if lo is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _name(metric: str) -> str:
    return DISPLAY.get(metric, metric)


def _index(summary) -> dict:
    return {(r.codec, r.task, r.metric): r for r in summary.itertuples()}


def _cells(summary, metrics: Sequence[str]):
    """``(codec, task, rows)`` of every table cell with a row for at least one metric, in table order."""
    index = _index(summary)
    for codec in sorted(summary["codec"].unique()):
        for task in task_order(summary["task"].unique()):
            rows = [index.get((codec, task, m)) for m in metrics]
            if any(r is not None for r in rows):
                yield codec, task, rows


def results_table_markdown(summary, metrics: Sequence[str]) -> str:
    """The reference README's layout (Codec | Task | <Metric> PLCC | <Metric> SROCC | ...).

    Raw signs, with intervals.
    """
    head = ["**Codec**", "**Task**", "**n**"]
    for m in metrics:
        head += [f"**{_name(m)} PLCC**", f"**{_name(m)} SROCC**"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---:"] * len(head)) + "|"]
    for codec, task, rows in _cells(summary, metrics):
        n = max(r.n for r in rows if r is not None)
        nf = max(r.n_features for r in rows if r is not None)
        cells = [f"**{codec}**", TASK_DISPLAY.get(task, task), f"{n}/{nf}"]
        for r in rows:
            cells += ([_fmt(r.plcc) + _ci(r.plcc_lo, r.plcc_hi), _fmt(r.srocc) + _ci(r.srocc_lo, r.srocc_hi)]
                      if r is not None else ["n/a", "n/a"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def coverage_markdown(summary, metrics: Sequence[str]) -> str:
    head = ["Codec", "Task", "features"] + [f"{_name(m)} used / const / non-finite / short" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for codec, task, rows in _cells(summary, metrics):
        nfeat = max(r.n_features for r in rows if r is not None)
        cells = [codec, task, str(nfeat)] + [
            f"{r.n} / {r.n_constant} / {r.n_nonfinite} / {r.n_short}" if r is not None else "n/a" for r in rows
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def oriented_markdown(summary, metrics: Sequence[str]) -> str:
    """Oriented PLCC mean [interval] and the per-feature std, per cell."""
    head = ["Codec", "Task"] + [f"{_name(m)}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for codec, task, rows in _cells(summary, metrics):
        vals = [f"{r.plcc_oriented:+.3f}{_ci(r.plcc_oriented_lo, r.plcc_oriented_hi)} ± {r.plcc_std:.3f}"
                if r is not None and np.isfinite(r.plcc_oriented) else "n/a" for r in rows]
        lines.append("| " + " | ".join([codec, task, *vals]) + " |")
    return "\n".join(lines)


# ---- protocol runs --------------------------------------------------------------------------


def run_ladder(table, metrics: Sequence[str] | None, name: str, source: str = "", *, target: str = "gt_distortion",
               resamples: int = RESAMPLES, seed: int = SEED, with_findings: bool = True) -> Ladder:
    """The protocol, the intervals and the findings on one table (never an in-sample metric column)."""
    metrics = resolve_metrics(table, metrics)
    refuse_in_sample(metrics)
    per_feature = per_feature_correlations(table, metrics, target)
    boot = OriginalBootstrap(per_feature, resamples, seed)
    summary, results = summarise(per_feature, boot)
    found = paper_findings(per_feature, boot, table, metrics, target) if with_findings else []
    task_aware = [v for m in TASK_AWARE if with_findings and (v := proxy_verdict(per_feature, boot, m)) is not None]
    return Ladder(name, source, table, list(metrics), per_feature, summary, results, found, task_aware, boot)


def verdicts(summary, per_feature, table=None) -> list[Verdict]:
    """The paper's findings on one protocol run (``table`` adds the ladder-halves test)."""
    boot = OriginalBootstrap(per_feature)
    metrics = sorted(per_feature["metric"].unique())
    return paper_findings(per_feature, boot, table, metrics)


def rate_accuracy_table(table):
    """Mean bpfp, task score and reference score over images, per task x codec x rate point."""
    cols = [c for c in ("bpfp", "task_score", "ref_task_score", "bytes") if c in table.columns]
    g = table.groupby(["task", "codec", "rate_point"], sort=True)[cols].mean().reset_index()
    g["images"] = table.groupby(["task", "codec", "rate_point"], sort=True).size().to_numpy()
    for c in ("bpfp", "task_score"):
        if c not in g.columns:
            g[c] = np.nan
    return g


# ---- headline -------------------------------------------------------------------------------


def _verdict_count(found: Sequence[Verdict]) -> str:
    order = (HOLDS, FAILS, UNDECIDED, UNTESTABLE)
    counts = {s: sum(v.status == s for v in found) for s in order}
    return ", ".join(f"{counts[s]} {s}" for s in order if counts[s])


def _no_interval(cells) -> str:
    """' (k without an interval: fewer than N originals)' when some cells have none."""
    k = int((~np.isfinite(cells["plcc_oriented_lo"].to_numpy(np.float64))).sum())
    return f" ({k} without an interval: fewer than {MIN_INTERVAL_FEATURES} originals)" if k else ""


def headline(run: Ladder, paper: Ladder | None = None, fidelity: Ladder | None = None) -> list[str]:
    """The report's opening summary, computed from the same figures as the tables."""
    s = run.summary
    out = []
    n_orig = run.per_feature.groupby("task")["image_id"].nunique()
    out.append(f"Table: {run.name} ladder, {', '.join(f'{n_orig[t]} {t}' for t in task_order(n_orig.index))} "
               f"originals, codecs {', '.join(sorted(s['codec'].unique()))}.")
    fine = s[np.isfinite(s["plcc_oriented"])]
    # Compare metrics on the same cells: only (codec, task) pairs where every metric has a correlation.
    complete = fine.groupby(["codec", "task"])["metric"].transform("nunique") == fine["metric"].nunique()
    fine = fine[complete] if complete.any() else fine
    if len(fine):
        best = fine.groupby(["task", "metric"])["plcc_oriented"].mean()
        per_task = []
        for t in task_order(best.index.get_level_values(0).unique()):
            b = best.loc[t]
            per_task.append(f"{t}: {_name(b.idxmax())} {b.max():+.2f}")
        out.append("Best metric by mean oriented PLCC (over the codecs every metric covers): "
                   + "; ".join(per_task) + ".")
    if "cosine" in set(s["metric"]):
        cos = s[s["metric"] == "cosine"]
        excl = cos[(cos["plcc_oriented_lo"] > 0) | (cos["plcc_oriented_hi"] < 0)]
        worst = cos.loc[cos["plcc_oriented"].idxmin()] if np.isfinite(cos["plcc_oriented"]).any() else None
        text = f"Cosine's PLCC interval excludes 0 in {len(excl)} of {len(cos)} codec x task cells"
        text += _no_interval(cos)
        if worst is not None:
            text += (f"; weakest cell {worst['codec']}/{worst['task']} {worst['plcc_oriented']:+.2f}"
                     f"{_ci(worst['plcc_oriented_lo'], worst['plcc_oriented_hi'], 2)}")
        out.append(text + ".")
    covered = s[s["n_features"] > 0]
    ok = covered[covered["n"] >= COVERAGE_TARGET * covered["n_features"]]
    low = covered.loc[(covered["n"] / covered["n_features"]).idxmin()] if len(covered) else None
    text = (f"Defined correlation for >= {COVERAGE_TARGET:.0%} of originals in {len(ok)} of {len(covered)} "
            "codec x task x metric cells")
    if low is not None and len(ok) < len(covered):
        text += f" (lowest: {low['codec']}/{low['task']}/{low['metric']} {low['n']}/{low['n_features']})"
    out.append(text + ".")
    out.append(f"Findings of the paper: {_verdict_count(run.verdicts)}. "
               + " ".join(f"{SHORT_CLAIM.get(v.key, v.key)}: {v.status}." for v in run.verdicts))
    for v in run.task_aware:
        more = "; ..." if len(v.comparisons) > 3 else ""
        out.append(f"Task-aware metric `{v.key.removesuffix('_beats_cosine')}` against cosine: {v.status} "
                   f"({'; '.join(c.text() for c in v.comparisons[:3])}{more}).")
    loco = learned_loco_means(_loco_records())
    if loco:
        out.append(loco + " (shipped weights; its in-sample table column is not used.)")
    if paper is not None:
        ps = paper.summary
        cos = ps[ps["metric"] == "cosine"]
        excl = int(((cos["plcc_oriented_lo"] > 0) | (cos["plcc_oriented_hi"] < 0)).sum())
        cov = ps[ps["n_features"] > 0]
        share = float((cov["n"] / cov["n_features"]).mean()) if len(cov) else float("nan")
        out.append(f"On the {paper.name} ladder: cosine's PLCC interval excludes 0 in {excl} of {len(cos)} cells"
                   f"{_no_interval(cos)}; "
                   f"on average {share:.0%} of originals have a defined correlation; findings: "
                   f"{_verdict_count(paper.verdicts)}.")
    if fidelity is not None:
        fs = fidelity.summary
        fine = fs[np.isfinite(fs["plcc_oriented"])]
        if len(fine):
            b = fine.groupby("metric")["plcc_oriented"].mean()
            out.append(f"Fidelity view (label-free: correlation with the change of the task output): best metric "
                       f"{_name(b.idxmax())} {b.max():+.2f} mean oriented PLCC.")
    return out


# ---- learned metric -------------------------------------------------------------------------


def learned_loco_markdown(path: Path | None = None) -> str:
    """The learned metric's leave-one-codec-out figures (never its in-sample column)."""
    if path is None:
        from cfqa_core.metrics.learned import WEIGHTS_DIR

        path = Path(WEIGHTS_DIR) / "loco.json"
    note = LEARNED_NOTE.format(path=_short_path(path))
    if not path.is_file():
        return note + "\n\nNo leave-one-codec-out result found: run `cfqa train-metric --build BUILD`."
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return note + f"\n\nUnreadable leave-one-codec-out result: {exc}."
    lines = ["| codec | task | n | learned PLCC | cosine PLCC | learned SROCC | cosine SROCC |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        vals = [r.get(k) for k in ("learned_plcc", "cosine_plcc", "learned_srocc", "cosine_srocc")]
        lines.append(f"| {r.get('codec')} | {r.get('task')} | {r.get('n')} | "
                     + " | ".join("n/a" if v is None else f"{v:+.3f}" for v in vals) + " |")
    means = learned_loco_means(records)
    tail = f"\n\n{means}" if means else ""
    return note + "\n\n" + "\n".join(lines) + tail


def learned_loco_means(records: list[dict]) -> str:
    """One sentence: the learned metric's mean leave-one-codec-out PLCC/SROCC against cosine's."""
    keys = ("learned_plcc", "cosine_plcc", "learned_srocc", "cosine_srocc")
    rows = [[r.get(k) for k in keys] for r in records if all(r.get(k) is not None for k in keys)]
    if not rows:
        return ""
    lp, cp, ls, cs = np.mean(np.array(rows, dtype=np.float64), axis=0)
    return (f"Learned metric, leave-one-codec-out (mean over {len(rows)} codec x task cells, oriented): "
            f"PLCC {lp:+.3f} vs cosine {cp:+.3f}; SROCC {ls:+.3f} vs {cs:+.3f}.")


def _loco_records(path: Path | None = None) -> list[dict]:
    if path is None:
        from cfqa_core.metrics.learned import WEIGHTS_DIR

        path = Path(WEIGHTS_DIR) / "loco.json"
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []


def _short_path(path: Path) -> str:
    parts = Path(path).parts
    return "/".join(parts[parts.index("cfqa_core"):]) if "cfqa_core" in parts else str(path)


# ---- the whole report -----------------------------------------------------------------------


def build_report(table, out_dir: str | Path | None = None, metrics: Sequence[str] | None = None,
                 *, source: str = "", make_plots: bool = True, ladder: str = "operating",
                 paper_table=None, paper_source: str = "", paper_ladder: str = "paper", fidelity: bool = False,
                 resamples: int = RESAMPLES, seed: int = SEED) -> Report:
    """Run the protocol on ``table`` (and ``paper_table``); with ``out_dir``, write the report files there."""
    run = run_ladder(table, metrics, ladder, source, resamples=resamples, seed=seed)
    paper = None
    if paper_table is not None:
        shared = [m for m in run.metrics if m in paper_table.columns]
        paper = run_ladder(paper_table, shared or None, paper_ladder, paper_source, resamples=resamples, seed=seed)
    fid = None
    if fidelity:
        from cfqa_core.errors import DataError

        if "output_change" not in table.columns or not np.isfinite(table["output_change"].to_numpy(np.float64)).any():
            raise DataError("the fidelity view needs finite values in the table's 'output_change' column "
                            "(rebuild the table)")
        fid = run_ladder(table, run.metrics, ladder, source, target="output_change", resamples=resamples, seed=seed,
                         with_findings=False)
    table_md = results_table_markdown(run.summary, run.metrics)
    report = Report(run.summary, run.per_feature, run.results, run.verdicts, "", table_md, paper=paper,
                    fidelity=None if fid is None else fid.results)
    report.headline = headline(run, paper, fid)
    paths: dict[str, str] = {}
    if out_dir is not None:
        out = Path(out_dir)
        (out / "plots").mkdir(parents=True, exist_ok=True)
        curves = rate_accuracy_table(table)
        run.summary.to_csv(out / "summary.csv", index=False)
        run.per_feature.to_csv(out / "per_feature.csv", index=False)
        curves.to_csv(out / "rate_accuracy.csv", index=False)
        paths.update(summary_csv="summary.csv", per_feature_csv="per_feature.csv",
                     rate_accuracy_csv="rate_accuracy.csv")
        if paper is not None:
            paper.summary.to_csv(out / "summary_paper.csv", index=False)
            paths["summary_paper_csv"] = "summary_paper.csv"
        if make_plots:
            paths.update(_plots(run, paper, fid, curves, out / "plots"))
        paths.update(markdown="report.md", html="report.html", json="report.json")
        report.paths = paths
        report.markdown = render_markdown(report, run, paper, fid)
        (out / "report.md").write_text(report.markdown)
        (out / "report.html").write_text(markdown_to_html(report.markdown, "CFQA benchmark report"))
        (out / "report.json").write_text(json.dumps(report_json(report, run, paper, fid), indent=2) + "\n")
    else:
        report.markdown = render_markdown(report, run, paper, fid)
    return report


def _plots(run: Ladder, paper: Ladder | None, fid: Ladder | None, curves, out: Path) -> dict[str, str]:
    paths: dict[str, str] = {}

    def add(key: str, p: Path | None) -> None:
        if p is not None:
            paths[key] = f"plots/{p.name}"

    add("correlations", plots.correlations(run.summary, run.metrics, out,
                                           title=f"How well does each metric track the semantic distortion? "
                                                 f"({run.name} ladder)"))
    add("findings", plots.findings(run.verdicts + run.task_aware, out, MARGIN))
    low = next((v for v in run.verdicts if v.key == "low_rate" and v.numbers.get("cells")), None)
    if low is not None:
        add("rate_halves", plots.rate_halves(low.numbers["cells"], [m for m in BASELINES if m in run.metrics], out))
    add("plcc_hist", plots.plcc_histogram(run.per_feature, run.metrics, out))
    add("rate_accuracy", plots.rate_accuracy(curves, out, ladder=run.name))
    if paper is not None:
        add("correlations_paper", plots.correlations(paper.summary, paper.metrics, out, "correlations_paper.png",
                                                     f"How well does each metric track the semantic distortion? "
                                                     f"({paper.name} ladder)"))
        add("rate_accuracy_paper", plots.rate_accuracy(rate_accuracy_table(paper.table), out,
                                                       "rate_accuracy_paper.png", paper.name))
    if fid is not None:
        add("correlations_fidelity", plots.correlations(
            fid.summary, fid.metrics, out, "correlations_fidelity.png",
            "Fidelity view: how well does each metric track the change of the task output?"))
    # Raw data for the reference metric and the task-aware one: every other metric's is in per_feature.csv.
    shown = [m for m in SCATTER_METRICS if m in run.metrics] or run.metrics[:1]
    for p in plots.scatter_plots(run.table, shown, out):
        add(p.stem, p)
    return paths


FIGURE_TEXT = {
    "correlations": "How well does each metric track the distortion (oriented PLCC/SROCC, 95 % intervals)",
    "findings": "Do the paper's findings hold (each tested difference with its interval)",
    "rate_halves": "Are metrics less reliable at low bitrates (high-rate vs low-rate half of each ladder)",
    "plcc_hist": "How stable is each metric (per-feature PLCC per codec and task)",
    "rate_accuracy": "How much does each codec damage each task (rate-accuracy)",
    "correlations_paper": "The same correlations on the paper ladder",
    "rate_accuracy_paper": "Rate-accuracy on the paper ladder",
    "correlations_fidelity": "Fidelity view: correlation with the change of the task output",
}


def _figure(report: Report, key: str) -> list[str]:
    path = report.paths.get(key)
    return [f"![{FIGURE_TEXT.get(key, key)}]({path})", ""] if path else []


def _findings_markdown(run: Ladder, paper: Ladder | None) -> str:
    head = (["Finding", f"{run.name} ladder"] + ([f"{paper.name} ladder"] if paper else [])
            + ["evidence (difference [95 % interval])"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    other = {v.key: v for v in paper.verdicts} if paper else {}
    for v in run.verdicts:
        cells = [v.claim, f"**{v.status}**"]
        if paper:
            cells.append(other[v.key].status if v.key in other else "n/a")
        cells.append(v.detail.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ladder_section(run: Ladder, level: str = "##") -> list[str]:
    return [
        f"{level} PLCC / SROCC on the {run.name} ladder (mean over features, raw sign)",
        "",
        f"Source: `{run.source}`. Ladder: {run.describe()}." if run.source else f"Ladder: {run.describe()}.",
        "",
        "`n`: originals with a defined correlation / originals (the fewest over the row's metrics is in the "
        f"coverage table). No interval where fewer than {MIN_INTERVAL_FEATURES} originals have one.",
        "",
        results_table_markdown(run.summary, run.metrics),
        "",
    ]


def render_markdown(report: Report, run: Ladder, paper: Ladder | None = None, fid: Ladder | None = None) -> str:
    table = run.table
    n_feat = table.groupby(["task", "image_id"]).ngroups
    lines = ["# CFQA benchmark report", "", "## Summary", ""]
    lines += [f"- {h}" for h in report.headline] + [""]
    lines += [
        f"{len(table)} compressed features from {n_feat} original features; "
        f"tasks: {', '.join(task_order(table['task'].unique()))}; "
        f"codecs: {', '.join(sorted(table['codec'].unique()))}; "
        f"metrics: {', '.join(run.metrics)}.",
        "",
        CONVENTION.format(resamples=run.boot.resamples, seed=run.boot.seed),
        "",
    ]
    lines += _figure(report, "correlations")
    lines += _ladder_section(run)
    if paper is not None:
        lines += _ladder_section(paper)
        lines += _figure(report, "correlations_paper")
    lines += [
        "## Findings of the paper on this data",
        "",
        f"Each finding is a claimed difference of oriented correlations, tested on its 95 % bootstrap interval "
        f"(same resampled originals on both sides: paired by original within a task). Holds: the interval is "
        f"above 0. Does not hold: the interval is below {MARGIN} (the other side is better, or they are equal "
        "to within that margin). Otherwise undecided (interval too wide). Not testable: the groups compared are "
        "not in the table.",
        "",
        _findings_markdown(run, paper),
        "",
    ]
    lines += _figure(report, "findings")
    lines += _figure(report, "rate_halves")
    if run.task_aware:
        lines += ["## Task-aware metric", "", PROXY_NOTE, ""]
        lines += [f"- **{v.claim}**: **{v.status}**. {v.detail}" for v in run.task_aware] + [""]
    lines += ["## Learned metric", "", learned_loco_markdown(), ""]
    if fid is not None:
        lines += [
            "## Fidelity view (label-free)",
            "",
            "Not the paper's protocol: each metric correlated with `output_change` (how far the task output moved "
            "from the uncompressed output: Cls 1 if top-1 changed, Seg fraction of pixels whose label changed, "
            "Dpt RMSE to the uncompressed depth over its mean) instead of the ground-truth distortion. It needs "
            "no labels; `gt_distortion` stays the primary target.",
            "",
            results_table_markdown(fid.summary, fid.metrics),
            "",
        ]
        lines += _figure(report, "correlations_fidelity")
    lines += [
        "## Oriented PLCC per cell (mean [95 % interval] ± per-feature std)",
        "",
        oriented_markdown(run.summary, run.metrics),
        "",
    ]
    lines += _figure(report, "plcc_hist")
    lines += ["## Features used per cell", "",
              "Used / constant distortion or metric (no correlation defined) / non-finite values / "
              "fewer than 3 rate points.", "", coverage_markdown(run.summary, run.metrics), ""]
    lines += ["## Rate-accuracy", ""] + _figure(report, "rate_accuracy") + _figure(report, "rate_accuracy_paper")
    if "rate_accuracy" not in report.paths and report.paths:
        lines += ["No rate-accuracy plot: the table has no finite bpfp / task_score values.", ""]
    scatters = [k for k in report.paths if k.startswith("scatter_")]
    if scatters:
        lines += ["## Raw data", ""] + [f"- [{k.removeprefix('scatter_')} against the distortion]({report.paths[k]})"
                                        for k in scatters] + [""]
    return "\n".join(lines) + "\n"


# ---- HTML -----------------------------------------------------------------------------------


def _inline(text: str) -> str:
    t = html.escape(text, quote=False)
    t = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<img alt="\1" src="\2" style="max-width:100%">', t)
    t = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", t)


def markdown_to_html(md: str, title: str) -> str:
    """The report's Markdown (headings, lists, tables, images, paragraphs) as one self-contained page."""
    body: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head, data = rows[0], [r for r in rows[2:]]
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in data)
                        + "</table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:center}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ---- JSON -----------------------------------------------------------------------------------


def _clean(x):
    """JSON-safe copy: non-finite floats become null, numpy scalars plain Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _ladder_json(run: Ladder) -> dict:
    return {
        "ladder": run.name,
        "ladder_points": run.describe(),
        "source": run.source,
        "rows": int(len(run.table)),
        "metrics": list(run.metrics),
        "results": run.results,
        "summary": run.summary.to_dict("records"),
        "verdicts": [asdict(v) for v in run.verdicts],
        "task_aware": {v.key.removesuffix("_beats_cosine"): asdict(v) for v in run.task_aware},
    }


def report_json(report: Report, run: Ladder, paper: Ladder | None = None, fid: Ladder | None = None) -> dict:
    out = _ladder_json(run)
    out.update(
        headline=report.headline,
        convention=CONVENTION.format(resamples=run.boot.resamples, seed=run.boot.seed),
        bootstrap={"resamples": run.boot.resamples, "seed": run.boot.seed, "level": 0.95, "margin": MARGIN},
        files=report.paths,
        paper_ladder=_ladder_json(paper) if paper else None,
        fidelity={"target": "output_change", "results": fid.results} if fid else None,
    )
    return _clean(out)
