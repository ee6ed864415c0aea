"""Start-up of the edge commands as whole processes, against ``python -c "import torch"``.

Each side is a fresh process, timed from spawn to exit (wall) with its peak
resident memory (``ru_maxrss`` from ``wait4``). Linux counts the spawning
process's resident set at ``exec`` into the child's peak, so the timing
process imports nothing but the standard library (about 15 MB, the floor of
every RSS figure) and the inputs are prepared in a separate process. Sides run in interleaved
rounds so that load from other processes on the machine hits all alike;
medians and minima are reported.

Sides:
- ``import torch``: ``python -c "import torch"`` (the floor any torch-based edge pays);
- ``cfqa features`` (ONNX, cached export): an image to its tokens after block 4, the default path;
- ``cfqa features --backend torch``: the same through the PyTorch model (the path before the export cache);
- ``cfqa codec encode`` (HEVC QP 10) and, beside it, the ``x265`` command line on the same packed frame;
- ``edge start-up``: the modules ``cfqa edge run`` imports plus its auto feature backend, ready to run;
- ``cfqa --help``.

Targets: ``cfqa features`` <= 0.25 x ``import torch`` (median wall), peak RSS <= 100 MB.

Writes benchmarks/results/startup.json and startup.md. Run niced, e.g.
``nice -n 10 python benchmarks/bench_startup.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WALL_TARGET = 0.25
RSS_TARGET_MB = 100.0


def _cfqa() -> list[str]:
    """The installed ``cfqa`` entry point beside this interpreter (else ``python -m cfqa_core.cli``)."""
    script = Path(sys.executable).parent / "cfqa"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cfqa_core.cli"]


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one process; raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err[-500:]}")
    return wall, usage.ru_maxrss / 1024.0


def prepare(tmp: Path) -> dict[str, object]:
    """Run :func:`_prepare` in a child process (this one must stay small: see the module docstring)."""
    res = subprocess.run([sys.executable, __file__, "--prepare", str(tmp)], check=True, capture_output=True,
                         text=True)
    prep = json.loads(res.stdout.strip().splitlines()[-1])
    prep["env"] = {**os.environ, **prep["env"]}
    return prep


def _prepare(tmp: Path) -> dict[str, object]:
    """An image, its feature and packed frame, and a warmed export cache in ``tmp``."""
    import numpy as np

    import cfqa_core.codecs as codecs
    from cfqa_core.codecs.block import raw_frame_bytes
    from cfqa_core.codecs.hevc import HevcX265CliCodec
    from cfqa_core.packing import PackingParams, feature_range, pack
    from tests.support.serving import write_images

    image = write_images(tmp / "frames", 1)[0]
    feature_path = tmp / "f.npy"
    extra = {"CFQA_EDGE_ONNX_CACHE": str(tmp / "edge-onnx"), "OMP_NUM_THREADS": "1"}
    # First use exports the edge graph into the cache (timed once; it needs torch).
    t0 = time.perf_counter()
    subprocess.run([*_cfqa(), "features", str(image), "--block", "4", "--out", str(feature_path)],
                   check=True, env={**os.environ, **extra}, capture_output=True)
    first_use = time.perf_counter() - t0
    feature = np.load(feature_path)
    codec = codecs.get_codec("hevc")
    frame = pack(feature, PackingParams(feature_range(feature)), align=codec.align, min_size=codec.min_size).frame
    raw = tmp / "frame.yuv"
    raw.write_bytes(raw_frame_bytes(frame, 10))
    cli = HevcX265CliCodec()
    x265 = cli.command(str(raw), str(tmp / "out.hevc"), frame.shape[1], frame.shape[0], 10, 10) \
        if cli.executable() else None
    return {"image": str(image), "feature": str(feature_path), "env": extra, "first_use_s": first_use,
            "x265": x265}


def sides(prep: dict, tmp: Path) -> dict[str, list[str]]:
    image, feature = str(prep["image"]), str(prep["feature"])
    out = {
        "import torch": [sys.executable, "-c", "import torch"],
        "cfqa features": [*_cfqa(), "features", image, "--block", "4", "--out", str(tmp / "o.npy")],
        "cfqa features --backend torch": [*_cfqa(), "features", image, "--block", "4", "--out",
                                          str(tmp / "o_torch.npy"), "--backend", "torch"],
        "cfqa codec encode": [*_cfqa(), "codec", "encode", feature, "--codec", "hevc", "--qp", "10",
                              "--out", str(tmp / "enc")],
        "edge start-up": [sys.executable, "-c",
                          "import sys\nimport cfqa_edge.run_cmd, cfqa_edge.runner, cfqa_edge.client\n"
                          "from cfqa_edge.backends import make_backend\n"
                          "b = make_backend('auto', split=4)\n"
                          "assert b.name == 'onnx' and 'torch' not in sys.modules\n"],
        "cfqa --help": [*_cfqa(), "--help"],
    }
    if prep["x265"]:
        out["x265 CLI encode"] = list(prep["x265"])
    return out


def torch_imported(prep: dict, tmp: Path) -> dict[str, bool]:
    """Whether each edge command imports torch (checked in-process through the CLI's main)."""
    image = str(prep["image"])
    checks = {
        "cfqa features": ["features", image, "--block", "4", "--out", str(tmp / "chk.npy")],
        "cfqa codec encode": ["codec", "encode", str(prep["feature"]), "--codec", "hevc", "--qp", "10",
                              "--out", str(tmp / "chk")],
        "cfqa --help": ["--help"],
    }
    out = {}
    for name, argv in checks.items():
        code = ("import sys\nfrom cfqa_core.cli import main\n"
                f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
                "print('torch' in sys.modules)\n")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=prep["env"],
                             check=True)
        out[name] = res.stdout.strip().splitlines()[-1] == "True"
    return out


def write_markdown(path: Path, result: dict) -> None:
    m, rows = result["machine"], result["sides"]
    torch_ms = rows["import torch"]["wall_ms_median"]
    lines = ["# Edge start-up (whole processes)", "",
             f"{m['cpus']} CPUs shared with other work (load average {m['loadavg_start']} at start, "
             f"{m['loadavg_end']} at the end); {result['config']['rounds']} interleaved rounds; "
             f"Python {m['python']}.", "",
             "| command | wall ms median | wall ms min | x import torch (median) | peak RSS MB | imports torch |",
             "|---|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        imp = result["torch_imported"].get(name)
        lines.append(f"| `{name}` | {r['wall_ms_median']:.0f} | {r['wall_ms_min']:.0f} | "
                     f"{r['wall_ms_median'] / torch_ms:.3f} | {r['rss_mb_median']:.0f} | "
                     f"{'' if imp is None else ('yes' if imp else 'no')} |")
    t = result["targets"]
    lines += ["", f"- `cfqa features` / `import torch` (median wall): **{t['features_ratio']:.3f}** "
              f"(target <= {WALL_TARGET}: {'met' if t['features_ratio'] <= WALL_TARGET else 'not met'});",
              f"- `cfqa features` peak RSS: **{t['features_rss_mb']:.0f} MB** (target <= {RSS_TARGET_MB:.0f} MB: "
              f"{'met' if t['features_rss_mb'] <= RSS_TARGET_MB else 'not met'});",
              f"- first use (exports the edge graph into the user cache, with torch): "
              f"{1000 * result['first_use_s']:.0f} ms, once per model weights and split."]
    if "x265 CLI encode" in rows:
        lines.append(f"- `cfqa codec encode` / `x265` CLI on the same frame (median wall): "
                     f"{rows['cfqa codec encode']['wall_ms_median'] / rows['x265 CLI encode']['wall_ms_median']:.2f}")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--prepare", default=None, help=argparse.SUPPRESS)  # internal: the input-making child
    args = ap.parse_args(argv)
    if args.prepare:
        print(json.dumps(_prepare(Path(args.prepare))))
        return 0
    load0 = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="cfqa-startup-") as t:
        tmp = Path(t)
        prep = prepare(tmp)
        cmds = sides(prep, tmp)
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
        for name, cmd in cmds.items():  # warm the page cache once
            run_once(cmd, prep["env"])
        for _ in range(args.rounds):
            for name, cmd in cmds.items():
                runs[name].append(run_once(cmd, prep["env"]))
        imported = torch_imported(prep, tmp)
    rows = {}
    for name, rs in runs.items():
        walls, rss = [w for w, _ in rs], [r for _, r in rs]
        rows[name] = {"wall_ms_median": round(1000 * statistics.median(walls), 1),
                      "wall_ms_min": round(1000 * min(walls), 1),
                      "rss_mb_median": round(statistics.median(rss), 1), "rss_mb_max": round(max(rss), 1),
                      "wall_ms_all": [round(1000 * w, 1) for w in walls]}
    result = {
        "machine": {"cpus": os.cpu_count(), "loadavg_start": load0,
                    "loadavg_end": [round(v, 2) for v in os.getloadavg()], "python": platform.python_version(),
                    "note": "shared machine: other processes ran alongside"},
        "config": {"rounds": args.rounds, "commands": {k: " ".join(v) for k, v in cmds.items()}},
        "first_use_s": round(prep["first_use_s"], 3),
        "sides": rows,
        "torch_imported": imported,
        "targets": {"features_ratio": round(rows["cfqa features"]["wall_ms_median"]
                                            / rows["import torch"]["wall_ms_median"], 4),
                    "features_rss_mb": rows["cfqa features"]["rss_mb_max"],
                    "wall_target": WALL_TARGET, "rss_target_mb": RSS_TARGET_MB},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(out / "startup.md", result)
    print((out / "startup.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
