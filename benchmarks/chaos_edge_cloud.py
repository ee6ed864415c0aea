"""Chaos run: random SIGKILLs of a real cloud and a real edge during one run, then a ledger check.

A ``cfqa cloud serve`` and a ``cfqa edge run`` process run on 127.0.0.1 over
a folder of rendered frames. At random moments one of them is killed with
SIGKILL and started again with the same arguments (the cloud on the same port,
the edge on the same ``--out`` and spool). When the kills are done, both run
until the edge has finished every image; then the ledger is checked:

* every image's frame ends exactly once in the edge output, delivered or
  dropped with a reason; 0 duplicates reach the task output;
* every frame that sat in the spool when the edge was killed (captured, not
  yet ended) ends exactly once;
* the output file only ever grew; no frame is left in the spool;
* after every ``--damage-every``-th edge kill one spool file is cut in half
  (a damaged disk): it must be quarantined with a record, the senders must
  carry on, and the frame's image, captured again, must still end once;
* from the cloud's access logs: frames computed more than once (resent after a
  kill, with the cloud's replay cache lost or bypassed) and frames answered
  from the replay cache.

Writes ``benchmarks/results/chaos.json`` and ``chaos.md``::

    python3 benchmarks/chaos_edge_cloud.py --kills 24 --images 400
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfqa_edge.runner import frame_id_of  # noqa: E402
from cfqa_edge.spool import _NAME, SUFFIX  # noqa: E402
from tests.support.serving import free_port, test_model_spec, write_images  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


class Child:
    """One incarnation after another of a command; its output goes to numbered log files."""

    def __init__(self, name: str, cmd: list[str], logdir: Path, env: dict[str, str]) -> None:
        self.name, self.cmd, self.logdir, self.env = name, cmd, logdir, env
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.exit_codes: list[int] = []

    def start(self, extra: list[str] | None = None) -> None:
        self.runs += 1
        log = open(self.logdir / f"{self.name}-{self.runs:03d}.log", "w")
        self.proc = subprocess.Popen(self.cmd + (extra or []), stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=ROOT)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int:
        """SIGKILL and reap; returns the pid killed."""
        assert self.proc is not None
        pid = self.proc.pid
        self.proc.send_signal(signal.SIGKILL)
        self.exit_codes.append(self.proc.wait(30))
        return pid

    def reap(self) -> int | None:
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.exit_codes.append(code)
            self.proc = None
            return code
        return None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_codes.append(self.proc.wait(30))
            except subprocess.TimeoutExpired:
                self.kill()


def read_records(path: Path) -> tuple[list[dict], int]:
    """Final records of the edge output, and the number of lines that do not parse (torn by a kill)."""
    recs, torn = [], 0
    if not path.is_file():
        return recs, torn
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            recs.append(json.loads(line))
        except ValueError:
            torn += 1
    return recs, torn


def spool_frames(spool: Path) -> list[int]:
    """Frame ids of the frames in the spool now (captured, not yet ended)."""
    ids = []
    for p in spool.glob(f"*{SUFFIX}"):
        m = _NAME.match(p.stem)
        if m:
            ids.append(int(m.group(2), 16))
    return ids


def access_entries(logdir: Path) -> list[dict]:
    """Per-frame entries of every cloud incarnation's JSON access log."""
    out = []
    for path in sorted(logdir.glob("access-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("frame") is not None:
                out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=24, help="SIGKILLs to deliver (cloud and edge at random)")
    ap.add_argument("--images", type=int, default=400, help="frames rendered for the edge to send")
    ap.add_argument("--min-gap", type=float, default=1.0, help="shortest time between kills, s")
    ap.add_argument("--max-gap", type=float, default=6.0, help="longest time between kills, s")
    ap.add_argument("--max-down", type=float, default=3.0, help="longest time a killed process stays down, s")
    ap.add_argument("--time-limit", type=float, default=540.0, help="whole run, s")
    ap.add_argument("--damage-every", type=int, default=3,
                    help="cut one spool file in half after every N-th edge kill (0: never)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    ap.add_argument("--out", type=Path, default=RESULTS / "chaos", help="results prefix (.json and .md)")
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="cfqa-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    logdir = work / "logs"
    logdir.mkdir(exist_ok=True)
    image_dir = work / "images"
    images = write_images(image_dir, args.images)
    out, spool = work / "frames.jsonl", work / "frames.jsonl.spool"
    port = free_port()
    model = test_model_spec()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    py = [sys.executable, "-m", "cfqa_core.cli"]
    cloud = Child("cloud", py + ["cloud", "serve", "--port", str(port), "--model", model, "--torch-threads", "1",
                                 "--server-id", "chaos-cloud"], logdir, env)
    edge = Child("edge", py + ["edge", "run", "--cloud", f"127.0.0.1:{port}", "--images", str(image_dir),
                               "--policy", "fixed", "--rate-point", "10", "--codec", "hevc", "--task", "cls",
                               "--split", "4", "--model", model, "--threads", "1", "--out", str(out),
                               "--node-id", "chaos-edge", "--timeout", "5", "--retry-max", "1",
                               "--max-age", "900", "--no-progress"], logdir, env)

    def start_cloud() -> None:
        cloud.start(["--access-log", str(logdir / f"access-{cloud.runs + 1:03d}.log")])

    start_cloud()
    edge.start()
    kills: list[dict] = []
    at_risk: set[int] = set()
    damaged: list[str] = []
    edge_kills = 0
    out_sizes: list[int] = []
    topped_up = 0
    print(f"chaos: cloud on port {port}, {len(images)} frames, {args.kills} kills; work folder {work}", flush=True)
    try:
        while len(kills) < args.kills and time.monotonic() - t_start < args.time_limit - 120:
            time.sleep(rng.uniform(args.min_gap, args.max_gap))
            if edge.reap() is not None:
                # The edge finished every image before the kills were done: the camera delivers more.
                more = write_images(image_dir, 100, start=len(images))
                images += more
                topped_up += len(more)
                edge.start()
                continue
            victim = cloud if rng.random() < 0.5 else edge
            if not victim.alive():
                victim = edge if victim is cloud else cloud
            entry: dict = {"t_s": round(time.monotonic() - t_start, 2), "victim": victim.name}
            if victim is edge:
                pending = spool_frames(spool)
                entry["spooled_frames"] = len(pending)
                at_risk.update(pending)
            entry["pid"] = victim.kill()
            if victim is edge:
                edge_kills += 1
                # Only frames without a final record: a file whose record is written is simply deleted.
                ended = {r.get("frame_id") for r in read_records(out)[0]}
                files = sorted(f for f in spool.glob(f"*{SUFFIX}")
                               if (m := _NAME.match(f.stem)) and int(m.group(2), 16) not in ended)
                if args.damage_every and edge_kills % args.damage_every == 0 and files:
                    bad = rng.choice(files)
                    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
                    damaged.append(bad.name)
                    entry["damaged_spool_file"] = bad.name
            size = out.stat().st_size if out.exists() else 0
            out_sizes.append(size)
            entry["output_bytes"] = size
            kills.append(entry)
            spooled = f", {entry['spooled_frames']} frames spooled" if "spooled_frames" in entry else ""
            print(f"  kill {len(kills):2d} at {entry['t_s']:6.1f} s: {victim.name} (pid {entry['pid']}{spooled})",
                  flush=True)
            time.sleep(rng.uniform(0.0, args.max_down))
            if victim is cloud:
                start_cloud()
            else:
                edge.start()
            if not cloud.alive():
                start_cloud()
        # Let both finish: the edge exits once every image's frame has ended.
        if not cloud.alive():
            start_cloud()
        deadline = t_start + args.time_limit
        while time.monotonic() < deadline:
            if not edge.alive():
                code = edge.reap()
                recs, _ = read_records(out)
                done = {r.get("frame_id") for r in recs}
                if all(frame_id_of(p) in done for p in images) and not spool_frames(spool):
                    break
                print(f"  edge exited ({code}) with frames left: started again", flush=True)
                edge.start()
            if not cloud.alive():
                cloud.reap()
                start_cloud()
            time.sleep(1.0)
    finally:
        edge.stop()
        cloud.stop()
    elapsed = time.monotonic() - t_start

    # ---- the ledger --------------------------------------------------------------------
    recs, torn = read_records(out)
    expected = {frame_id_of(p): p.name for p in images}
    per_frame = Counter(r.get("frame_id") for r in recs if r.get("frame_id") is not None)
    duplicates = {fid: n for fid, n in per_frame.items() if n > 1}
    missing = [name for fid, name in expected.items() if per_frame.get(fid, 0) == 0]
    unknown = [fid for fid in per_frame if fid not in expected]
    delivered = [r for r in recs if r.get("status") == "delivered"]
    dropped = [r for r in recs if r.get("status") == "dropped"]
    quarantined = [r for r in recs if r.get("quarantined")]
    quarantined_ok = sorted(r.get("spool_file") for r in quarantined) == sorted(damaged)
    dropped_without_reason = [r for r in dropped if not r.get("reason")]
    delivered_without_result = [r for r in delivered if not r.get("cloud", {}).get("results")]
    at_risk_ended_once = sum(per_frame.get(fid, 0) == 1 for fid in at_risk)
    grew = all(b >= a for a, b in zip(out_sizes, out_sizes[1:]))
    spool_left = spool_frames(spool)
    access = access_entries(logdir)
    computed = Counter(e["frame"] for e in access if e.get("code") == "OK" and not e.get("replayed"))
    replays = sum(1 for e in access if e.get("code") == "OK" and e.get("replayed"))
    recomputed = {fid: n for fid, n in computed.items() if n > 1}
    never_computed = [fid for r in delivered if (fid := r["frame_id"]) not in computed]
    reasons = Counter(r.get("code") or "?" for r in dropped)
    ok = (not duplicates and not missing and not unknown and not dropped_without_reason
          and not delivered_without_result and at_risk_ended_once == len(at_risk) and grew and not spool_left
          and quarantined_ok and len(kills) >= 20)
    result = {
        "pass": ok,
        "kills": {"total": len(kills), "cloud": sum(k["victim"] == "cloud" for k in kills),
                  "edge": sum(k["victim"] == "edge" for k in kills)},
        "frames": {"images": len(images), "added_during_run": topped_up, "final_records": len(recs),
                   "delivered": len(delivered), "dropped": len(dropped), "drop_codes": dict(reasons),
                   "damaged_spool_files": len(damaged), "quarantined_spool_files": len(quarantined),
                   "quarantined_are_the_damaged": quarantined_ok, "torn_output_lines": torn},
        "ledger": {"duplicates_in_output": len(duplicates), "missing": len(missing), "unknown_ids": len(unknown),
                   "dropped_without_reason": len(dropped_without_reason),
                   "delivered_without_result": len(delivered_without_result),
                   "spooled_at_edge_kills": len(at_risk), "spooled_at_edge_kills_ended_once": at_risk_ended_once,
                   "output_only_grew": grew, "frames_left_in_spool": len(spool_left)},
        "cloud": {"runs": cloud.runs, "computed_calls": sum(computed.values()),
                  "frames_computed_more_than_once": len(recomputed), "replay_cache_answers": replays,
                  "delivered_but_not_in_access_log": len(never_computed)},
        "edge_runs": edge.runs,
        "seconds": round(elapsed, 1),
        "settings": {"seed": args.seed, "gap_s": [args.min_gap, args.max_gap], "max_down_s": args.max_down,
                     "model": model, "codec": "hevc", "qp": 10, "task": "cls", "split": 4},
        "kill_log": kills,
        "work": str(work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(args.out) + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(str(args.out) + ".md").write_text(markdown(result))
    print(markdown(result))
    return 0 if ok else 1


def markdown(r: dict) -> str:
    k, f, led, c = r["kills"], r["frames"], r["ledger"], r["cloud"]
    rows = [
        ("SIGKILLs (cloud / edge)", f"{k['total']} ({k['cloud']} / {k['edge']})"),
        ("process starts (cloud / edge)", f"{c['runs']} / {r['edge_runs']}"),
        ("frames (images; added during the run)", f"{f['images']} ({f['added_during_run']})"),
        ("delivered / dropped with a reason", f"{f['delivered']} / {f['dropped']} {f['drop_codes'] or ''}"),
        ("duplicates in the edge output", led["duplicates_in_output"]),
        ("frames without a final record", led["missing"]),
        ("frames in the spool at an edge kill / of them ended exactly once",
         f"{led['spooled_at_edge_kills']} / {led['spooled_at_edge_kills_ended_once']}"),
        ("spool files damaged / quarantined with a record",
         f"{f['damaged_spool_files']} / {f['quarantined_spool_files']}"),
        ("output lines torn by a kill (kept, skipped by readers)", f["torn_output_lines"]),
        ("output file only grew", led["output_only_grew"]),
        ("frames left in the spool", led["frames_left_in_spool"]),
        ("cloud: inference calls computed", c["computed_calls"]),
        ("cloud: frames computed more than once (resent after a kill)", c["frames_computed_more_than_once"]),
        ("cloud: answers from the replay cache", c["replay_cache_answers"]),
        ("wall time", f"{r['seconds']} s"),
    ]
    lines = [
        "# Chaos run: random SIGKILLs of cloud and edge",
        "",
        f"Result: **{'PASS' if r['pass'] else 'FAIL'}** — every frame delivered exactly once or dropped with a "
        "reason, 0 duplicates in the task output." if r["pass"] else
        "Result: **FAIL** (see the ledger below).",
        "",
        "`python3 benchmarks/chaos_edge_cloud.py` (real `cfqa cloud serve` and `cfqa edge run` processes on "
        f"127.0.0.1; HEVC QP 10, cls, split 4; seed {r['settings']['seed']}).",
        "",
        "| measure | value |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        "A frame computed more than once by the cloud was in flight when the edge was killed (or its answer was "
        "lost with a killed cloud): the restarted edge sends it again under the same frame id; the edge "
        "output still holds it once. A damaged spool file ends as a `DATA_LOSS` record naming the "
        "quarantined file; its image is captured again and delivered once.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
