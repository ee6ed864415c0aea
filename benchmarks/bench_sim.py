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
    from tests.support.sim_tables import synthetic_table

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


# ---- the plain SimPy model ---------------------------------------------------------------
#
# The same system written the ordinary SimPy way: one process per frame, each
# node's encoder and sender and the cloud's servers as ``simpy.Resource``.
# It sees the simulator's arrivals, images and link offsets (same random
# streams), looks bytes and times up in the same table, runs the same decision
# (a fixed rung, or the rate plan's probe and fallback) and serves each
# transfer from the same trace opportunities. It has no loss, no outages and
# no shared links (replay_1000 has none), and no throughput estimator (neither
# policy reads it).


def plain_simpy(loaded, policy: str) -> dict:
    """Run the plain SimPy model of ``loaded`` for ``policy``; wall time and outcome totals."""
    import simpy

    from edge.policies import get_policy
    from edge.policies.plan import DEFAULT_PLANS, RatePlans
    from sim.engine import _ARRIVALS, _IMAGES, _OFFSET, _image_pool, _rng, _timing, arrival_times, image_sequence
    from sim.outcomes import make_provider

    s = loaded.scenario
    provider = make_provider(loaded)
    spec = s.policy_spec(policy)
    env = simpy.Environment()
    cloud = simpy.Resource(env, capacity=s.cloud.servers)
    stats = {"frames": 0, "in_time": 0, "bytes": 0, "dropped": 0}
    node_id = 0
    link_index = 0
    for gi, group in enumerate(s.nodes):
        link = s.links[group.link]
        if link.shared or link.loss_rate or link.outages:
            raise SystemExit("the plain SimPy model covers unshared, lossless links without outages")
        trace = loaded.trace(group.link)
        backbone_s, cloud_s, metric_s = _timing(loaded, gi, group)
        c = provider._codec(group.task, group.codec)
        arr = c.arrays
        col = c.index
        sent = c.sent_bytes.tolist()
        encode_s, decode_s = arr.encode_s.tolist(), arr.decode_s.tolist()
        if spec.name == "fixed":
            rp = get_policy(spec.name, **spec.params).matched_rate_point(group.task, group.codec) \
                if spec.params.get("matched") else provider.ladder(group.task, group.codec)[spec.params.get("index", 0)]
            steps = [(col[rp], None)]
            proxy = None
        elif spec.name == "cfqa-target" and not spec.params:
            plan = RatePlans.load(DEFAULT_PLANS).get(group.task, group.codec)
            steps = [(col[st.rate_point], st.threshold) for st in plan.steps]
            proxy = arr.metrics[plan.metric].tolist()
        else:
            raise SystemExit(f"the plain SimPy model runs fixed and cfqa-target, not {policy}")
        pool = _image_pool(provider, group)
        for _ in range(group.count):
            offset = float(_rng(s.seed, _OFFSET, link_index).uniform(0.0, trace.duration_s)) \
                if link.random_offset else link.offset_s
            link_index += 1
            times = arrival_times(group, s.duration_s, _rng(s.seed, _ARRIVALS, node_id))
            images = image_sequence(pool, group, times.size, _rng(s.seed, _IMAGES, node_id))
            node = {
                "encoder": simpy.Resource(env, capacity=1), "sender": simpy.Resource(env, capacity=1),
                "held": 0, "next": trace.index_at(offset), "offset": offset,
            }
            env.process(_plain_source(env, node, times.tolist(), images.tolist(), group, trace, cloud, stats,
                                      backbone_s, cloud_s, metric_s, steps, proxy, sent, encode_s, decode_s,
                                      link.delay_ms / 1000.0))
            node_id += 1
    t0 = time.perf_counter()
    env.run(until=s.duration_s + s.drain_s)
    wall = time.perf_counter() - t0
    provider.close()
    return {"wall_s": wall, **stats}


def _plain_source(env, node, times, images, group, trace, cloud, stats, backbone_s, cloud_s, metric_s,
                  steps, proxy, sent, encode_s, decode_s, delay_s):
    for t, img in zip(times, images):
        yield env.timeout(t - env.now)
        stats["frames"] += 1
        if node["held"] >= group.queue_frames:
            stats["dropped"] += 1
            continue
        node["held"] += 1
        env.process(_plain_frame(env, node, img, group, trace, cloud, stats, backbone_s, cloud_s, metric_s,
                                 steps, proxy, sent, encode_s, decode_s, delay_s))


def _plain_frame(env, node, img, group, trace, cloud, stats, backbone_s, cloud_s, metric_s,
                 steps, proxy, sent, encode_s, decode_s, delay_s):
    import math

    deadline = env.now + group.deadline_s
    with node["encoder"].request() as req:
        yield req
        if env.now >= deadline:
            node["held"] -= 1
            stats["dropped"] += 1
            return
        edge_s = backbone_s
        row_bytes, row_enc = sent[img], encode_s[img]
        for r, threshold in steps:
            edge_s += row_enc[r]
            if threshold is None:
                break
            edge_s += decode_s[img][r] + metric_s
            value = proxy[img][r]
            if math.isfinite(value) and value <= threshold:
                break
        yield env.timeout(edge_s)
    nbytes = row_bytes[r]
    with node["sender"].request() as req:
        yield req
        node["held"] -= 1
        if env.now >= deadline:
            stats["dropped"] += 1
            return
        # The opportunities after the last one used, enough for the bitstream.
        first = max(node["next"], trace.index_at(env.now + node["offset"]))
        node["next"] = first + max(1, math.ceil(nbytes / 1500))
        yield env.timeout(max(0.0, trace.time_s(node["next"] - 1) - node["offset"] - env.now))
    stats["bytes"] += nbytes
    yield env.timeout(delay_s)
    with cloud.request() as req:
        yield req
        yield env.timeout(decode_s[img][r] + cloud_s)
    yield env.timeout(delay_s)
    if env.now <= deadline:
        stats["in_time"] += 1


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
