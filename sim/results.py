"""Run a scenario for one or more policies and write its run folder.

A run folder holds ``frames.parquet`` (one row per frame and policy),
``summary.json`` (per-policy metrics, see :mod:`cfqa_sim.summary`),
``scenario.yaml`` (the scenario as run, overrides applied), ``report.md``,
``report.html`` and ``plots/``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from cfqa_sim.engine import RunResult, simulate
from cfqa_sim.provenance import provenance
from cfqa_sim.scenario import LoadedScenario
from cfqa_sim.summary import add_matched_savings, add_savings, format_table, summarize, summary_table


def default_out_dir(loaded: LoadedScenario, kind: str = "run") -> Path:
    return Path("runs") / f"{loaded.scenario.name}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_policies(
    loaded: LoadedScenario,
    policies: list[str],
    *,
    progress: bool = True,
) -> tuple[list[RunResult], bool]:
    """One run per policy on the same arrivals and links; stops early on Ctrl-C.

    Returns the results measured and whether the whole set is partial.
    """
    results: list[RunResult] = []
    for label in policies:
        try:
            result = simulate(loaded, label, progress=progress)
        except KeyboardInterrupt:
            return results, True
        results.append(result)
        if result.partial:
            return results, True
    return results, False


def build_summary(loaded: LoadedScenario, results: list[RunResult], partial: bool) -> dict[str, Any]:
    s = loaded.scenario
    per_policy = {r.policy: summarize(r) for r in results}
    add_savings(per_policy, s.baseline_policy)
    headline = add_matched_savings(per_policy, results)
    return {
        "headline": headline,
        "scenario": s.name,
        "mode": s.mode,
        "seed": s.seed,
        "duration_s": s.duration_s,
        "nodes": s.node_count,
        "partial": partial,
        "baseline_policy": s.baseline_policy,
        "policies": per_policy,
    }


def write_run(out: Path, loaded: LoadedScenario, results: list[RunResult], partial: bool, *,
              report: bool = True) -> dict:
    """Write the run folder; returns the summary."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    summary = build_summary(loaded, results, partial)
    summary["provenance"] = provenance(loaded)
    if results:
        pd.concat([r.frames() for r in results], ignore_index=True).to_parquet(out / "frames.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "scenario.yaml").write_text(yaml.safe_dump(loaded.scenario.model_dump(mode="json"), sort_keys=False))
    if report and results:
        from cfqa_sim.report import write_reports

        write_reports(out, loaded, results, summary)
    return summary


def print_summary(summary: dict, out: Path | None = None) -> None:
    """The end-of-run table on stdout."""
    if summary["policies"]:
        print(format_table(summary_table(summary["policies"])))
    if summary.get("headline"):
        print(summary["headline"])
    if summary["partial"]:
        print("PARTIAL: interrupted; the results above cover what was measured.")
    if out is not None:
        print(f"results: {out}")
