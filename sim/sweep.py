"""Parameter sweeps: the cartesian product of ``--grid key=v1,v2`` overrides.

Each grid point is a full run (its own run folder under ``points/``) with the
scenario's policy. Points run in a process pool, or on Ray when asked
(imported lazily; ``pip install 'cfqa-edgecloud[scale]'``). Every point is
validated before the first one starts.
"""
from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cfqa_core.errors import ScenarioError
from cfqa_sim.scenario import load_scenario


def grid_points(grid: list[str]) -> list[list[str]]:
    """``["a=1,2", "b=x,y"]`` -> ``[["a=1", "b=x"], ["a=1", "b=y"], ...]``."""
    axes = []
    for item in grid:
        if "=" not in item:
            raise ScenarioError(f"--grid {item}: expected key=v1,v2,...")
        key, values = item.split("=", 1)
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not key.strip() or not vals:
            raise ScenarioError(f"--grid {item}: needs a key and at least one value")
        axes.append([f"{key.strip()}={v}" for v in vals])
    return [list(p) for p in itertools.product(*axes)]


def point_slug(point: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "__".join(point)) or "base"


def sweep_job(scenario: str, overrides: list[str], out_dir: str, report: bool) -> dict[str, Any]:
    """Run one grid point (in a worker) and write its folder; returns its summary."""
    from cfqa_sim.results import run_policies, write_run

    loaded = load_scenario(scenario, overrides)
    results, partial = run_policies(loaded, [loaded.scenario.policy], progress=False)
    return write_run(Path(out_dir), loaded, results, partial, report=report)


def _pool_map(jobs: list[tuple], workers: int, on_done: Callable[[int, dict], None]) -> None:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(sweep_job, *job): i for i, job in enumerate(jobs)}
        try:
            for fut in as_completed(futures):
                on_done(futures[fut], fut.result())
        except KeyboardInterrupt:
            for fut in futures:
                fut.cancel()
            raise


def _ray_map(jobs: list[tuple], address: str, on_done: Callable[[int, dict], None]) -> None:
    try:
        import ray
    except ModuleNotFoundError:
        raise ScenarioError("--ray needs the 'ray' package: pip install 'cfqa-edgecloud[scale]'") from None
    ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(sweep_job)
    refs = {remote.remote(*job): i for i, job in enumerate(jobs)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        on_done(refs[done[0]], ray.get(done[0]))


def run_sweep(
    scenario: str,
    grid: list[str],
    out: Path,
    *,
    base_overrides: list[str] = (),
    workers: int = 1,
    ray_address: str | None = None,
    report: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every grid point; writes ``sweep.json`` and ``sweep.md`` in ``out``."""
    from tqdm import tqdm

    points = grid_points(grid)
    for point in points:  # fail before anything runs
        load_scenario(scenario, [*base_overrides, *point])
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (str(scenario), [*base_overrides, *p], str(out / "points" / point_slug(p)), report) for p in points
    ]
    rows: list[dict | None] = [None] * len(points)
    # a bar on a terminal; elsewhere (CI, logs) one line per finished point
    tty = sys.stderr.isatty()
    bar = tqdm(total=len(points), unit="point", desc="sweep", disable=not (progress and tty))

    def on_done(i: int, summary: dict) -> None:
        rows[i] = summary
        bar.update(1)
        if progress and not tty:
            done = sum(r is not None for r in rows)
            print(f"sweep: {done}/{len(points)} points ({' '.join(points[i]) or 'base'} done)", file=sys.stderr,
                  flush=True)

    partial = False
    try:
        if ray_address is not None:
            _ray_map(jobs, ray_address, on_done)
        elif workers <= 1:
            for i, job in enumerate(jobs):
                on_done(i, sweep_job(*job))
        else:
            _pool_map(jobs, workers, on_done)
    except KeyboardInterrupt:
        partial = True
    finally:
        bar.close()
    result = {
        "scenario": str(scenario),
        "grid": grid,
        "partial": partial or any(r is not None and r["partial"] for r in rows),
        "points": [
            {"overrides": p, "folder": f"points/{point_slug(p)}",
             "summary": None if r is None else next(iter(r["policies"].values()), None)}
            for p, r in zip(points, rows)
        ],
    }
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sweep.md").write_text(sweep_table(result) + "\n")
    return result


def sweep_table(result: dict) -> str:
    """Markdown table: one row per finished grid point (the run summary's columns)."""
    from cfqa_sim.summary import format_table, summary_table

    done = {" ".join(p["overrides"]) or "base": p["summary"] for p in result["points"] if p["summary"]}
    lines = [format_table(summary_table(done, label="grid point"), markdown=True)] if done else []
    missing = [" ".join(p["overrides"]) for p in result["points"] if not p["summary"]]
    if result["partial"] or missing:
        lines.append(f"\nPARTIAL: {len(missing)} point(s) did not finish: {'; '.join(missing)}")
    return "\n".join(lines)
