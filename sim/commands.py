"""``cfqa run | compare | sweep | scenario | trace`` — the simulator's commands.

Handlers import the simulator lazily so that ``cfqa --help`` stays light.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Exit status of a run interrupted by Ctrl-C after writing what it measured.
EXIT_PARTIAL = 130


def _add_scenario_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field by dotted path, e.g. nodes.0.count=5 (repeatable)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<name>-<kind>-<time>)")
    p.add_argument("--no-report", action="store_true", help="skip plots and the Markdown/HTML report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_json_arg(p)


def _add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (logs go to stderr)")


@contextlib.contextmanager
def _stdout_for(args) -> Iterator[None]:
    """With ``--json``, anything printed while working goes to stderr, so stdout holds one JSON document."""
    if getattr(args, "json", False):
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def register(sub) -> None:
    from cfqa_sim.ratecontrol.ratecontrol_cmd import register as register_policies

    register_policies(sub)
    p = sub.add_parser("run", help="simulate a scenario with its policy")
    _add_scenario_args(p)
    p.add_argument("--policy", help="policy label or name (default: the scenario's)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("compare", help="simulate several policies on the same arrivals and links")
    _add_scenario_args(p)
    p.add_argument("--policies", required=True, help="comma-separated policy labels or names")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("sweep", help="run a scenario over a grid of overrides")
    # Optional here only so that '--ray scenario.yaml' (no address) parses; _cmd_sweep requires it.
    p.add_argument("scenario", nargs="?", help="scenario YAML file")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                   help="a swept field and its values (repeatable: the grid is their product)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run points on Ray (a local instance, or the cluster at ADDRESS)")
    p.add_argument("--out", type=Path, help="sweep folder (default: runs/<name>-sweep-<time>)")
    p.add_argument("--report", action="store_true", help="write a full report per point")
    p.add_argument("--quiet", action="store_true")
    _add_json_arg(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("scenario", help="scenario schema and validation")
    ssub = p.add_subparsers(dest="scenario_command", metavar="ACTION")
    ssub.required = True
    q = ssub.add_parser("schema", help="print the scenario JSON Schema")
    q.add_argument("--out", type=Path, help="write to a file instead")
    q.set_defaults(func=_cmd_schema)
    q = ssub.add_parser("validate", help="check a scenario (schema, files, codecs, policies)")
    q.add_argument("file", help="scenario YAML file")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _add_json_arg(q)
    q.set_defaults(func=_cmd_validate)

    p = sub.add_parser("trace", help="network traces")
    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION")
    tsub.required = True
    q = tsub.add_parser("gen", help="write a synthetic trace in mahimahi format")
    q.add_argument("kind", help="constant | steps | random_walk | onoff")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--duration-s", type=float, default=60.0)
    q.add_argument("--capacity-mbps", type=float, default=5.0, help="constant/onoff rate; random_walk start")
    q.add_argument("--levels-mbps", default="2,8,4", help="steps: comma-separated levels")
    q.add_argument("--step-s", type=float, default=10.0, help="steps/random_walk: seconds per level")
    q.add_argument("--sigma", type=float, default=0.2, help="random_walk: log-rate step deviation")
    q.add_argument("--min-mbps", type=float, default=0.2)
    q.add_argument("--max-mbps", type=float, default=20.0)
    q.add_argument("--on-s", type=float, default=20.0, help="onoff: seconds up")
    q.add_argument("--off-s", type=float, default=5.0, help="onoff: seconds down")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_cmd_trace_gen)
    q = tsub.add_parser("info", help="length and mean capacity of a trace")
    q.add_argument("file", help="a trace path or a shipped trace (cellular/Verizon-LTE-short.up)")
    _add_json_arg(q)
    q.set_defaults(func=_cmd_trace_info)


def _finish(args, loaded, policies: list[str], kind: str) -> int:
    from cfqa_sim.results import default_out_dir, print_summary, run_policies, write_run

    out = args.out or default_out_dir(loaded, kind)
    with _stdout_for(args):
        results, partial = run_policies(loaded, policies, progress=not args.quiet)
        summary = write_run(out, loaded, results, partial, report=not args.no_report)
        print_summary(summary, out)
    if args.json:
        _print_json({**summary, "out": str(out)})
    return EXIT_PARTIAL if partial else 0


def _cmd_run(args) -> int:
    from cfqa_sim.scenario import check_policy, load_scenario

    loaded = load_scenario(args.scenario, args.overrides)
    if args.policy:
        check_policy(loaded, args.policy, ("--policy",))
    policies = [args.policy] if args.policy else (loaded.scenario.compare or [loaded.scenario.policy])
    return _finish(args, loaded, policies, "run")


def _cmd_compare(args) -> int:
    from cfqa_core.errors import ScenarioError
    from cfqa_sim.scenario import check_policy, load_scenario

    loaded = load_scenario(args.scenario, args.overrides)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise ScenarioError("--policies: name at least one policy")
    baseline = loaded.scenario.baseline_policy
    if baseline and baseline not in policies:
        policies.insert(0, baseline)  # savings need the baseline on the same arrivals
    for label in policies:
        check_policy(loaded, label, ("--policies",))
    return _finish(args, loaded, list(dict.fromkeys(policies)), "compare")


def _cmd_sweep(args) -> int:
    from cfqa_core.errors import ScenarioError
    from cfqa_sim.results import default_out_dir
    from cfqa_sim.scenario import load_scenario
    from cfqa_sim.sweep import run_sweep, sweep_table

    if args.scenario is None:
        if not args.ray or Path(args.ray).suffix.lower() not in (".yaml", ".yml"):
            raise ScenarioError("the scenario YAML file is required (cfqa sweep SCENARIO --grid KEY=V1,V2 ...)")
        # '--ray scenario.yaml': argparse gave the path to --ray's optional ADDRESS
        args.scenario, args.ray = args.ray, ""
    loaded = load_scenario(args.scenario, args.overrides)
    out = args.out or default_out_dir(loaded, "sweep")
    with _stdout_for(args):
        result = run_sweep(
            args.scenario, args.grid, out, base_overrides=args.overrides, workers=args.workers,
            ray_address=args.ray, report=args.report, progress=not args.quiet,
        )
        print(sweep_table(result))
        print(f"results: {out}")
    if args.json:
        _print_json({**result, "out": str(out)})
    return EXIT_PARTIAL if result["partial"] else 0


def _cmd_schema(args) -> int:
    from cfqa_sim.scenario import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_validate(args) -> int:
    from cfqa_sim.scenario import load_scenario

    loaded = load_scenario(args.file, args.overrides)
    s = loaded.scenario
    if args.json:
        traces = {name: str(loaded.trace(name).name) for name in s.links}
        _print_json({
            "file": str(args.file), "ok": True, "name": s.name, "mode": s.mode, "nodes": s.node_count,
            "links": len(s.links), "traces": traces, "duration_s": s.duration_s, "policy": s.policy,
            "baseline_policy": s.baseline_policy,
        })
        return 0
    print(f"{args.file}: ok ({s.mode} mode, {s.node_count} nodes, {len(s.links)} link(s), {s.duration_s:g} s)")
    return 0


def _cmd_trace_gen(args) -> int:
    from cfqa_core.errors import ScenarioError
    from cfqa_sim.traces import synthetic, write_mahimahi

    try:
        levels = tuple(float(x) for x in args.levels_mbps.split(",") if x.strip())
    except ValueError:
        raise ScenarioError(f"--levels-mbps: expected numbers separated by commas, got {args.levels_mbps!r}") from None
    trace = synthetic(
        args.kind, duration_s=args.duration_s, capacity_mbps=args.capacity_mbps, levels_mbps=levels,
        step_s=args.step_s, sigma=args.sigma, min_mbps=args.min_mbps, max_mbps=args.max_mbps,
        on_s=args.on_s, off_s=args.off_s, seed=args.seed,
    )
    write_mahimahi(trace, args.out)
    print(f"{args.out}: {trace.count} opportunities, {trace.duration_s:g} s, mean {trace.mean_mbps:.3f} Mbit/s")
    return 0


def _cmd_trace_info(args) -> int:
    from cfqa_sim.traces import find_trace, load_trace

    path = find_trace(args.file)
    trace = load_trace(path)
    if args.json:
        _print_json({
            "file": str(args.file), "path": str(path), "opportunities": trace.count,
            "period_s": trace.duration_s, "mean_mbps": round(trace.mean_mbps, 6),
        })
        return 0
    print(f"{args.file}: {trace.count} opportunities, {trace.duration_s:g} s period, mean {trace.mean_mbps:.3f} Mbit/s")
    return 0
