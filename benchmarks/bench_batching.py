"""Dynamic batching in the inference engine: many concurrent clients, one frame per forward pass vs batches.

The engine alone (no RPC, so only the batching differs), serving the embedded
model; each client is a thread sending real frames (HEVC QP 10 bitstreams of
rendered scenes, cls at split 4) one after another and timing each call.

Sides, run in interleaved rounds (each round starting with another side) so that load from
other processes hits all alike:
- ``one slot, eager (today)``: every call runs decode + compute behind one
  compute slot, as the gRPC servicer runs the engine by default
  (``compute_slots=1``), the model's cloud part run eagerly as before the
  traced forward (``InferenceEngine(traced=False)``): today's server;
- ``one slot``: the same with the engine's default traced forward
  (``cfqa_cloud.engine.TracedForwards``: same answers, the GIL released for
  the whole forward);
- ``batched``: ``InferenceEngine(max_batch_size=B, max_batch_delay_s=D, batch_workers=W)``;
  each caller decodes on its own thread, frames with the same model, split
  and task set share one forward pass of the remaining blocks and the head,
  W batches at once (default one per core);
- ``unloaded``: one client, no batching: the latency floor.

``--server`` (default on) repeats the comparison through gRPC: three ``cfqa
cloud serve`` processes on loopback, ``default (today)`` as started by
default with ``$CFQA_TRACED_FORWARD=0`` (one compute slot, no batching,
eager), ``default`` (the same, traced) and ``batched`` (``--max-batch-size B
--batch-workers W``), each loaded in turn by the same clients
(``bench_grpc.run_level``: one channel per client, a fresh frame id per
call). The servers' own CPU time is read from /proc.

Paced clients: the closed-loop clients above saturate the server, so their
latency is clients / throughput (Little's law) whatever the batching does. A
second measurement paces the same 16 clients (each sends at its own fixed
rate, random phase) at a total of ``--paced-load`` x today's saturated
throughput, a load every side can carry; latency counts from each frame's
scheduled send time, so a client that falls behind is charged for it.

Reported: throughput (frames/s), p50/p99 latency, CPU ms per frame and the
cores that CPU time amounts to (CPU / wall), mean batch size, errors (a
refusal below the queue bound would be one). Targets (issue figures for the
whole server): throughput >= 1.5 x today's one-slot server under the same
load; 0 refusals below the queue bound; p99 <= 2 x unloaded p99 + the
batching delay.

Writes benchmarks/results/batching.json and batching.md. Run niced, e.g.
``nice -n 10 python benchmarks/bench_batching.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cfqa_core.task_names import TASKS  # noqa: E402

THROUGHPUT_TARGET = 1.5
TODAY = "one slot, eager (today)"


def _schedstat() -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of the calling thread, or None."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as fh:
            on_cpu, waiting, _ = fh.read().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


class ComputeTimes:
    """Where the wall time of the compute sections goes: on a CPU, waiting for a CPU (other threads and
    processes have the cores), or blocked (waiting for the GIL: nothing else blocks in there)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.wall = self.on_cpu = self.run_queue = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            t0, s0 = time.perf_counter(), _schedstat()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, s1 = time.perf_counter() - t0, _schedstat()
                if s0 is not None and s1 is not None:
                    with self._lock:
                        self.wall += wall
                        self.on_cpu += s1[0] - s0[0]
                        self.run_queue += s1[1] - s0[1]

        return timed

    def shares(self) -> dict[str, float]:
        if self.wall <= 0:
            return {}
        blocked = max(0.0, self.wall - self.on_cpu - self.run_queue)
        return {"wall_s": round(self.wall, 2), "on_cpu": round(self.on_cpu / self.wall, 3),
                "waiting_for_cpu": round(self.run_queue / self.wall, 3), "blocked_gil": round(blocked / self.wall, 3)}


def _rotated(items: list, k: int) -> list:
    """``items`` starting at position ``k`` (mod its length): each round puts another side first."""
    k %= len(items)
    return items[k:] + items[:k]


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_paced(call, requests, clients: int, total_fps: float, seconds: float, seed: int = 0) -> dict:
    """``clients`` threads each sending every ``clients / total_fps`` s (random phase) for ``seconds``.

    Latency is completion time minus the frame's scheduled send time: a frame sent
    late because its client was still waiting is charged the delay.
    """
    period = clients / total_fps
    phases = np.random.default_rng(seed).uniform(0.0, period, clients)
    lat: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    start: list[float] = []

    def worker(k: int) -> None:
        mine = []
        barrier.wait()
        t_start = start[0]
        j = 0
        while (due := t_start + phases[k] + j * period) < t_start + seconds:
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            call(requests[(k + j) % len(requests)])
            mine.append(1e3 * (time.perf_counter() - due))
            j += 1
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    start.append(time.perf_counter() + 0.05)
    barrier.wait()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start[0]
    return {"offered_fps": total_fps, "calls": len(lat), "fps": len(lat) / wall, "lat": lat}


def _pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def run_clients(call, requests, clients: int, per_client: int) -> dict:
    """``clients`` threads each calling ``call(request)`` ``per_client`` times; latencies and rate."""
    lat: list[float] = []
    sizes: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        mine, bs = [], []
        barrier.wait()
        for j in range(per_client):
            t0 = time.perf_counter()
            res = call(requests[(k + j) % len(requests)])
            mine.append(1e3 * (time.perf_counter() - t0))
            bs.append(res.batch_size)
        with lock:
            lat.extend(mine)
            sizes.extend(bs)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"clients": clients, "calls": len(lat), "wall_s": wall, "fps": len(lat) / wall, "lat": lat,
            "cpu_ms_per_frame": 1e3 * cpu / len(lat), "cores": cpu / wall, "mean_batch": statistics.mean(sizes)}


def server_rows(args, bench_grpc) -> dict:
    """Today's default server, the default server and the batching server under the same clients,
    interleaved rounds; each server's CPU time from /proc."""
    from contextlib import ExitStack

    from tests.support.serving import ServerProcess

    _, _, requests, _ = bench_grpc.prepare("embedded", args.task, args.split, 10, 16)
    base = ["--model", "embedded", "--torch-threads", "1"]
    batched = base + ["--max-batch-size", str(args.max_batch), "--max-batch-delay-ms", str(args.delay_ms),
                      "--batch-workers", str(args.workers)]
    configs = {"default (today)": (base, {"CFQA_TRACED_FORWARD": "0"}), "default": (base, None),
               "batched": (batched, None)}
    levels: dict[str, list[dict]] = {k: [] for k in configs}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(ServerProcess(a, env=env)) for name, (a, env) in configs.items()}
        for srv in servers.values():  # warm-up
            bench_grpc.run_level(srv.target, 2, 2, requests, "infer")
        time.sleep(1.0)  # the servers' traced forwards build in the background from their first request (~0.3 s)
        for rnd in range(args.rounds):
            for name, srv in _rotated(list(servers.items()), rnd):
                s0, c0 = _proc_cpu_s(srv.proc.pid), time.process_time()
                r = bench_grpc.run_level(srv.target, args.clients, args.per_client, requests, "infer")
                r["server_cpu_s"] = _proc_cpu_s(srv.proc.pid) - s0
                r["client_cpu_s"] = time.process_time() - c0
                levels[name].append(r)
    sides = {}
    for name, runs in levels.items():
        a, env = configs[name]
        prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        sides[name] = {"args": (prefix + " " if prefix else "") + " ".join(a), "calls": sum(r["calls"] for r in runs),
                       "errors": sum(r["errors"] for r in runs),
                       "fps_median": round(statistics.median(r["rps"] for r in runs), 2),
                       "fps_all": [round(r["rps"], 2) for r in runs],
                       "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
                       "p99_ms": round(max(r["p99_ms"] for r in runs), 2),
                       # /proc counts CPU in clock ticks (10 ms): summed over rounds, not per round.
                       "server_cpu_ms_per_frame": round(1e3 * sum(r["server_cpu_s"] for r in runs)
                                                        / max(1, sum(r["calls"] for r in runs)), 3),
                       "server_cores": round(sum(r["server_cpu_s"] for r in runs) / sum(r["wall_s"] for r in runs), 2),
                       "client_cpu_ms_per_frame": round(1e3 * sum(r["client_cpu_s"] for r in runs)
                                                        / max(1, sum(r["calls"] for r in runs)), 3)}
    return {"rounds": args.rounds, "clients": args.clients, "sides": sides,
            "ratio": round(sides["batched"]["fps_median"] / sides["default (today)"]["fps_median"], 3),
            "ratio_vs_default": round(sides["batched"]["fps_median"] / sides["default"]["fps_median"], 3),
            "cpu_ratio": round(sides["default (today)"]["server_cpu_ms_per_frame"]
                               / sides["batched"]["server_cpu_ms_per_frame"], 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=8, help="calls per client per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paced-load", type=float, default=0.75,
                    help="paced clients' total rate as a share of today's saturated throughput (default 0.75)")
    ap.add_argument("--paced-seconds", type=float, default=6.0, help="length of one paced run per side and round")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="batches computed at once (default: one per core, torch on one thread each)")
    ap.add_argument("--delay-ms", type=float, default=2.0)
    ap.add_argument("--task", default="cls", choices=TASKS)
    ap.add_argument("--split", type=int, default=4)
    ap.add_argument("--server", action=argparse.BooleanOptionalAction, default=True,
                    help="also compare two 'cfqa cloud serve' processes over gRPC")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    import bench_grpc
    import torch

    from cfqa_cloud.engine import InferenceEngine

    load0 = [round(v, 2) for v in os.getloadavg()]
    model, _, _, engine_requests = bench_grpc.prepare("embedded", args.task, args.split, 10, 16)
    torch.set_num_threads(1)
    models = {model.meta.name: model}
    plain = InferenceEngine(models)
    eager = InferenceEngine(models, traced=False)
    batched = InferenceEngine(models, max_batch_size=args.max_batch, max_batch_delay_s=args.delay_ms / 1e3,
                              batch_workers=args.workers)

    times = {TODAY: ComputeTimes(), "one slot": ComputeTimes(), "batched": ComputeTimes()}

    def behind_one_slot(engine, times: ComputeTimes):
        slot = threading.Semaphore(1)
        run = times.wrap(engine.run)  # decode + compute, in the slot as the default servicer runs them

        def call(req):
            checked = engine.validate(req)
            with slot:
                return run(checked)

        return call

    batched.batcher.run_batch = times["batched"].wrap(batched.batcher.run_batch)  # the batch workers' compute
    sides = {"unloaded": (plain.infer, 1), TODAY: (behind_one_slot(eager, times[TODAY]), args.clients),
             "one slot": (behind_one_slot(plain, times["one slot"]), args.clients),
             "batched": (batched.infer, args.clients)}
    for call, _ in sides.values():  # warm-up
        call(engine_requests[0])
    for engine in (plain, batched):  # the traces built before any timing
        engine.warm(args.task, args.split)
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for rnd in range(args.rounds):
        for name, (call, clients) in _rotated(list(sides.items()), rnd):
            per = args.per_client * (4 if clients == 1 else 1)
            runs[name].append(run_clients(call, engine_requests, clients, per))
    batch_stats = batched.batch_stats()  # the closed-loop runs' batches
    paced_fps = args.paced_load * statistics.median(r["fps"] for r in runs[TODAY])
    paced_runs: dict[str, list[dict]] = {k: [] for k in sides if k != "unloaded"}
    for rnd in range(args.rounds):
        for name in _rotated(list(paced_runs), rnd):
            paced_runs[name].append(run_paced(sides[name][0], engine_requests, args.clients, paced_fps,
                                              args.paced_seconds, seed=rnd))
    batched.close()

    rows = {}
    for name, rs in runs.items():
        lat = [x for r in rs for x in r["lat"]]
        rows[name] = {"clients": rs[0]["clients"], "calls": sum(r["calls"] for r in rs),
                      "fps_median": round(statistics.median(r["fps"] for r in rs), 2),
                      "fps_all": [round(r["fps"], 2) for r in rs],
                      "p50_ms": round(_pct(lat, 50), 2), "p99_ms": round(_pct(lat, 99), 2),
                      "cpu_ms_per_frame": round(statistics.median(r["cpu_ms_per_frame"] for r in rs), 3),
                      "cores": round(statistics.median(r["cores"] for r in rs), 2),
                      "mean_batch": round(statistics.mean(r["mean_batch"] for r in rs), 2),
                      "compute_threads": times[name].shares() if name in times else {}}
    paced = {name: {"calls": sum(r["calls"] for r in rs),
                    "fps_median": round(statistics.median(r["fps"] for r in rs), 2),
                    "p50_ms": round(_pct([x for r in rs for x in r["lat"]], 50), 2),
                    "p99_ms": round(_pct([x for r in rs for x in r["lat"]], 99), 2)}
             for name, rs in paced_runs.items()}
    server = server_rows(args, bench_grpc) if args.server else None
    ratio = rows["batched"]["fps_median"] / rows[TODAY]["fps_median"]
    ratio_same_code = rows["batched"]["fps_median"] / rows["one slot"]["fps_median"]
    bound = 2 * rows["unloaded"]["p99_ms"] + args.delay_ms
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "loadavg_start": load0, "loadavg_end": [round(v, 2) for v in os.getloadavg()],
                    "note": "shared machine: other processes ran alongside"},
        "config": {"task": args.task, "split": args.split, "clients": args.clients, "per_client": args.per_client,
                   "rounds": args.rounds, "max_batch_size": args.max_batch, "max_batch_delay_ms": args.delay_ms,
                   "batch_workers": args.workers,
                   "torch_threads": 1},
        "sides": rows, "batcher": batch_stats, "server": server,
        "paced": {"offered_fps": round(paced_fps, 2), "share_of_today_saturated": args.paced_load,
                  "seconds_per_run": args.paced_seconds, "sides": paced},
        "targets": {"throughput_ratio": round(ratio, 3),
                    "throughput_ratio_vs_one_slot_traced": round(ratio_same_code, 3),
                    "throughput_target": THROUGHPUT_TARGET,
                    "p99_bound_ms": round(bound, 2), "p99_batched_ms": rows["batched"]["p99_ms"],
                    "p99_batched_paced_ms": paced["batched"]["p99_ms"]},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "batching.json").write_text(json.dumps(result, indent=2) + "\n")
    m, c = result["machine"], result["config"]
    lines = ["# Dynamic batching in the inference engine", "",
             f"Embedded model, {c['task']} at split {c['split']}, HEVC QP 10; {c['clients']} client threads, "
             f"{c['rounds']} interleaved rounds; batcher max {c['max_batch_size']} frames, max delay "
             f"{c['max_batch_delay_ms']} ms, {c['batch_workers']} batch workers; torch on 1 thread; "
             f"{m['cpus']} CPUs shared with other work (load "
             f"average {m['loadavg_start']} at start, {m['loadavg_end']} at the end).", "",
             "CPU ms per frame: CPU time of the whole process (all threads, the clients' included) over frames "
             "served, which other processes' load inflates far less than wall time; cores: that CPU time over "
             "the wall time (2 at most here).", "",
             "Compute threads: the wall time of the compute sections (the slot holder's decode + compute; the "
             "batch workers' batches) split into on a CPU / waiting for a CPU (the cores are busy with other "
             "threads or processes) / blocked (on the GIL: nothing else blocks in there), from "
             "/proc/self/task/*/schedstat.", "",
             "| side | clients | calls | frames/s (median of rounds) | p50 ms | p99 ms | CPU ms per frame "
             "| cores | mean batch | compute threads: on CPU / waiting for a CPU / blocked (GIL) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        t = r["compute_threads"]
        split = (f"{100 * t['on_cpu']:.0f} % / {100 * t['waiting_for_cpu']:.0f} % / {100 * t['blocked_gil']:.0f} %"
                 if t else "")
        lines.append(f"| {name} | {r['clients']} | {r['calls']} | {r['fps_median']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['cpu_ms_per_frame']:.2f} | {r['cores']:.2f} | {r['mean_batch']:.2f} "
                     f"| {split} |")
    cpu_ratio = rows[TODAY]["cpu_ms_per_frame"] / rows["batched"]["cpu_ms_per_frame"]
    result["targets"]["cpu_per_frame_ratio"] = round(cpu_ratio, 3)
    (out / "batching.json").write_text(json.dumps(result, indent=2) + "\n")
    lines += ["", f"- throughput batched / {TODAY}: **{ratio:.2f}x** (target >= {THROUGHPUT_TARGET}x: "
              f"{'met' if ratio >= THROUGHPUT_TARGET else 'not met'}); batched / one slot (both traced): "
              f"{ratio_same_code:.2f}x; frames per CPU second batched / {TODAY}: "
              f"**{cpu_ratio:.2f}x** (throughput beyond that needs cores the one slot leaves idle);",
              f"- batched p99 {rows['batched']['p99_ms']:.1f} ms against 2 x unloaded p99 + delay = {bound:.1f} ms "
              f"({'met' if rows['batched']['p99_ms'] <= bound else 'not met'}); {c['clients']} closed-loop clients "
              "each wait for the frames ahead of theirs (Little's law: latency = clients / throughput), so this bound "
              "needs a throughput of clients / (2 x unloaded p99) to be reachable;",
              f"- batch sizes (frames: batches): {batch_stats.get('sizes')}.", "",
              f"### Paced clients: {c['clients']} clients at {paced_fps:.1f} frames/s in all "
              f"({args.paced_load:.2f} x today's saturated throughput), {args.paced_seconds:g} s per side and round",
              "", "Latency from each frame's scheduled send time.", "",
              "| side | calls | frames/s (median of rounds) | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for name, r in paced.items():
        lines.append(f"| {name} | {r['calls']} | {r['fps_median']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    pb = paced["batched"]["p99_ms"]
    lines += ["", f"- paced: batched p99 {pb:.1f} ms against 2 x unloaded p99 + delay = {bound:.1f} ms "
              f"({'met' if pb <= bound else 'not met'}) at a load every side carries."]
    if server:
        lines += ["", f"## Through gRPC: `cfqa cloud serve` today's default, default and batched ({c['clients']} "
                  f"clients, {server['rounds']} interleaved rounds)", "",
                  "Server CPU: the server process's CPU time (/proc, all threads) per frame served; server cores: "
                  "that CPU time over the wall time; client CPU: this process (the 16 clients) per frame.", "",
                  "| server | arguments | frames/s (median of rounds) | p50 ms | p99 ms | errors | server CPU ms "
                  "per frame | server cores | client CPU ms per frame |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in server["sides"].items():
            lines.append(f"| {name} | `{r['args']}` | {r['fps_median']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                         f"{r['errors']} | {r['server_cpu_ms_per_frame']:.2f} | {r['server_cores']:.2f} | "
                         f"{r['client_cpu_ms_per_frame']:.2f} |")
        lines += ["", f"- throughput batched / today's default server: **{server['ratio']:.2f}x** (target >= "
                  f"{THROUGHPUT_TARGET}x: {'met' if server['ratio'] >= THROUGHPUT_TARGET else 'not met'}); "
                  f"batched / default (both traced): {server['ratio_vs_default']:.2f}x; server frames per CPU "
                  f"second batched / today's default: {server['cpu_ratio']:.2f}x;",
                  f"- errors (refusals included) with {c['clients']} clients against a queue bound of 16: "
                  f"{sum(r['errors'] for r in server['sides'].values())}."]
    (out / "batching.md").write_text("\n".join(lines) + "\n")
    print((out / "batching.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
