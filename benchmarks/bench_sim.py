"""Simulator speed: scenarios/replay_1000.yaml (1,000 nodes x 1 simulated hour).

Target: <= 60 s wall on this machine in replay mode. replay_1000 runs twice:
with the ``fixed-mid`` policy (the simulator's own cost: one table lookup per
frame) and with the scenario's policy (``cfqa-target``: trial encodes and its
search add the policy's cost). Replay reads the benchmark table; until a real
``table.parquet`` exists (scenario's ``replay.table``) a synthetic one is
generated (test data: speed only, its accuracy figures mean nothing). Also
times a congested shared link (umts_congested) where processor sharing has
many concurrent transfers.

Writes benchmarks/results/sim.json and sim.md.

    PYTHONPATH=. python benchmarks/bench_sim.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TARGET_S = 60.0


def _table_override(scenario: Path, tmp: Path) -> tuple[list[str], str]:
    from sim.scenario import load_scenario
    from sim.testdata import synthetic_table

    try:
        load_scenario(scenario)
        return [], "real"
    except Exception:  # no real table yet: fall back to the synthetic one
        path = tmp / "synthetic_table.parquet"
        if not path.exists():
            synthetic_table(images=50, seed=0).to_parquet(path)
        return [f"replay.table={path}"], "synthetic"


def bench(name: str, extra: list[str], tmp: Path, report: bool, policy: str | None = None) -> dict:
    from sim.results import run_policies, write_run
    from sim.scenario import load_scenario

    scenario = REPO / "scenarios" / f"{name}.yaml"
    overrides, table_kind = _table_override(scenario, tmp)
    t0 = time.perf_counter()
    loaded = load_scenario(scenario, [*overrides, *extra])
    t_load = time.perf_counter() - t0
    cpu0 = time.process_time()
    policy = policy or loaded.scenario.policy
    results, partial = run_policies(loaded, [policy], progress=False)
    cpu = time.process_time() - cpu0
    t1 = time.perf_counter()
    summary = write_run(tmp / f"{name}-{policy}", loaded, results, partial, report=report)
    t_write = time.perf_counter() - t1
    r = results[0]
    s = summary["policies"][r.policy]
    frames = int(r.columns["node"].size)
    return {
        "scenario": name,
        "policy": policy,
        "overrides": extra,
        "table": table_kind,
        "nodes": r.nodes,
        "simulated_s": r.duration_s,
        "frames": frames,
        "load_s": round(t_load, 2),
        "simulate_wall_s": round(r.wall_s, 2),
        "simulate_cpu_s": round(cpu, 2),
        "write_and_report_s": round(t_write, 2),
        "total_s": round(t_load + r.wall_s + t_write, 2),
        "frames_per_wall_s": round(frames / r.wall_s),
        "us_per_frame": round(1e6 * r.wall_s / frames, 1),
        "frames_dropped": s["frames_dropped"],
        "link_utilisation": s["link_utilisation"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 simulated minutes instead of an hour")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    extra = ["duration_s=360"] if args.quick else []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = [
            bench("replay_1000", extra, tmp, report=True, policy="fixed-mid"),
            bench("replay_1000", extra, tmp, report=True),
            bench("umts_congested", ["duration_s=300"] if args.quick else [], tmp, report=True),
        ]
    result = {
        "target": f"replay_1000 (1,000 nodes x 1 h) in <= {TARGET_S:g} s wall",
        "met_simulator": (not args.quick) and rows[0]["total_s"] <= TARGET_S,
        "met_with_scenario_policy": (not args.quick) and rows[1]["total_s"] <= TARGET_S,
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sim.json").write_text(json.dumps(result, indent=2) + "\n")
    keys = ["scenario", "policy", "table", "nodes", "simulated_s", "frames", "simulate_wall_s", "simulate_cpu_s",
            "write_and_report_s", "total_s", "us_per_frame"]
    lines = [
        "# Simulator speed (replay mode)",
        "",
        f"Target: {result['target']}. Met by the simulator (fixed policy): "
        f"**{'yes' if result['met_simulator'] else 'no'}**; with the scenario's policy "
        f"({rows[1]['policy']}): **{'yes' if result['met_with_scenario_policy'] else 'no'}**"
        + (" (quick run: not the target configuration)" if args.quick else "")
        + f". Load average during the run: {', '.join(f'{x:.2f}' for x in result['machine']['load_avg'])}.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    lines += ["", "`total_s` = load + simulate + writing frames.parquet, summary and the report.",
              "A synthetic table means a generated stand-in (speed only)."]
    (RESULTS / "sim.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
