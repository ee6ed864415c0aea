"""``cfqa dataset build``: compress every original with every codec over its ladder.

Work is split into units of (task, codec, image). A unit encodes the original
at each rate point, decodes it, scores the metrics and runs the task head on
the decoded feature. Each unit writes one shard (Parquet, with the bitstreams)
and one decoded-feature file, atomically, so a build resumes after an
interruption and a new metric is computed from cached decodes without
re-encoding. Units run over a process pool or, with ``ray``, on a cluster.
"""
from __future__ import annotations

import functools
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cfqa_core.benchmark.table.originals import Originals, build_originals, load_originals, save_originals
from cfqa_core.benchmark.table.schema import BASE_COLUMNS, DEFAULT_METRICS, TABLE_FILE
from cfqa_core.codecs.ladders import DEFAULT_LADDER, ladder_of
from cfqa_core.errors import CfqaError, DataError
from cfqa_core.tasks import TASKS


@dataclass
class BuildConfig:
    out: str
    model: str = "embedded"
    n_per_task: int = 100
    tasks: tuple[str, ...] = TASKS
    codecs: tuple[str, ...] | None = None  # None: every available codec
    ladder: str = DEFAULT_LADDER  # operating | paper (cfqa_core.codecs.ladders)
    metrics: tuple[str, ...] = DEFAULT_METRICS
    workers: int = 2
    ray_address: str | None = None
    use_ray: bool = False
    progress: bool = True


@dataclass
class BuildResult:
    table_path: Path
    rows: int
    units_done: int
    units_cached: int
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0


# One codec per block family (the paper's HM/VTM when the user has them) plus every learned codec.
BLOCK_CODECS = ("hm", "vtm", "hevc", "vvc", "av1")


def available_codecs() -> list[str]:
    """The default codec set of a build: usable here, one per block family, and every learned codec."""
    import cfqa_core.codecs as codecs

    names = []
    for name in codecs.registered_names():
        codec = codecs.get_codec(name)
        wanted = name in BLOCK_CODECS or codec.family == "learned"
        if wanted and codec.availability()[0]:
            names.append(name)
    return names


# ---- per-process state of a worker ------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _model(name: str):
    import torch

    from cfqa_core.models import load_model

    torch.set_num_threads(int(os.environ.get("CFQA_WORKER_THREADS", "1")))
    return load_model(name)


@functools.lru_cache(maxsize=3)
def cached_originals(out: str, task: str) -> Originals:
    orig = load_originals(task, Path(out) / "originals" / f"{task}.npz")
    if orig is None:
        raise DataError(f"originals of {task} missing or corrupt in {out}")
    return orig


def _shard_path(out: Path, task: str, codec: str, image_id: str) -> Path:
    return out / "shards" / task / codec / f"{image_id}.parquet"


def decoded_path(out: Path, task: str, codec: str, image_id: str) -> Path:
    return out / "decoded" / codec / task / f"{image_id}.npy"


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    tmp.replace(path)


def _metric_scores(metrics, f, fhat, value_range, task: str) -> dict[str, float]:
    from cfqa_core.metrics import compute_metrics

    vr = np.asarray(value_range, dtype=np.float64).reshape(-1, 2)
    return compute_metrics(list(metrics), f, fhat, task=task,
                           value_range=(float(vr[:, 0].min()), float(vr[:, 1].max())))


def _decode_all(codec, rows: list[dict], shape) -> np.ndarray:
    from cfqa_core.codecs import EncodedFeature

    out = []
    for r in rows:
        enc = EncodedFeature(r["codec"], int(r["rate_point"]), bytes(r["bitstream"]), json.loads(r["meta_json"]))
        out.append(codec.decode(enc))
    return np.stack(out).reshape(len(rows), *shape)


def run_unit(out: str, model_name: str, task: str, codec_name: str, index: int,
             ladder: tuple[int, ...], metrics: tuple[str, ...]) -> dict:
    """Encode, decode, score one original with one codec; returns a status record."""
    import pandas as pd

    import cfqa_core.codecs as codecs
    from cfqa_core.distortion import semantic_distortion
    from cfqa_core.fidelity import output_change
    from cfqa_core.inference import predict, task_score

    out_dir = Path(out)
    orig = cached_originals(out, task)
    image_id = orig.ids[index]
    shard = _shard_path(out_dir, task, codec_name, image_id)
    codec = codecs.get_codec(codec_name)
    f = orig.features[index]
    model = _model(model_name)
    gt = orig.gt(index)
    seg_classes = model.meta.seg_classes

    cached = None
    if shard.is_file():
        try:
            cached = pd.read_parquet(shard)
        except Exception:  # noqa: BLE001 - corrupt shard: rebuild it, never reuse
            shard.unlink(missing_ok=True)
    if cached is not None and (list(cached["rate_point"]) != [int(q) for q in ladder]
                               or any(c not in cached.columns for c in BASE_COLUMNS)):
        cached = None  # another ladder or an older schema: encode again
    if cached is not None and all(m in cached.columns for m in metrics) and len(cached) == len(ladder):
        return {"status": "cached"}

    if cached is not None and len(cached) == len(ladder):
        # New metrics on an existing shard: reuse decodes (or the stored bitstreams), no re-encoding.
        rows = cached.to_dict("records")
        decoded = None
        dpath = decoded_path(out_dir, task, codec_name, image_id)
        if dpath.is_file():
            try:
                decoded = np.load(dpath)
                if decoded.shape != (len(rows), *f.shape):
                    decoded = None
            except (OSError, ValueError):
                decoded = None
        if decoded is None:
            decoded = _decode_all(codec, rows, f.shape)
            _atomic_save_npy(dpath, decoded.astype(np.float32))
        missing = [m for m in metrics if m not in cached.columns]   # the others' scores are in the shard
        for r, fhat in zip(rows, decoded):
            r.update(_metric_scores(missing, f, fhat, orig.value_range, task))
        _write_shard(pd.DataFrame(rows), shard)
        return {"status": "metrics"}

    rows, decoded = [], []
    ref = predict(model, task, f[None])[0]
    for rank, rp in enumerate(ladder):
        t0 = time.perf_counter()
        enc = codec.encode(f, rp, value_range=orig.value_range)
        t1 = time.perf_counter()
        fhat = codec.decode(enc).reshape(f.shape).astype(np.float32)
        t2 = time.perf_counter()
        output = predict(model, task, fhat[None])[0]
        rows.append({
            "image_id": image_id, "task": task, "codec": codec_name, "rate_point": int(rp),
            "family": codec.family, "rate_index": rank, "bytes": enc.nbytes, "meta_bytes": enc.meta_bytes,
            "bpfp": enc.bpfp, "encode_s": t1 - t0, "decode_s": t2 - t1,
            "gt_distortion": semantic_distortion(output, ref, seg_classes=seg_classes, **gt),
            "output_change": output_change(task, output, ref),
            "task_score": task_score(output, seg_classes=seg_classes, **gt),
            "ref_task_score": float(orig.ref_scores[index]),
            "feature_elements": int(f.size),
            **_metric_scores(metrics, f, fhat, orig.value_range, task),
            "bitstream": enc.bitstream, "meta_json": json.dumps(enc.meta, sort_keys=True),
        })
        decoded.append(fhat)
    _atomic_save_npy(decoded_path(out_dir, task, codec_name, image_id), np.stack(decoded))
    _write_shard(pd.DataFrame(rows), shard)
    return {"status": "done"}


def _write_shard(frame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# ---- orchestration ----------------------------------------------------------------------


def prepare_originals(cfg: BuildConfig) -> dict[str, Originals]:
    """Build (or load cached) originals for every task in the config."""
    from cfqa_core.models import load_model

    out = Path(cfg.out)
    result, model = {}, None
    for task in cfg.tasks:
        path = out / "originals" / f"{task}.npz"
        orig = load_originals(task, path)
        if orig is None or len(orig.ids) != cfg.n_per_task:
            model = model or load_model(cfg.model)
            orig = build_originals(model, task, cfg.n_per_task, progress=cfg.progress)
            save_originals(orig, path)
        result[task] = orig
    return result


def build(cfg: BuildConfig) -> BuildResult:
    """Run (or resume) a build and write ``table.parquet`` into ``cfg.out``."""
    import cfqa_core.codecs as codecs
    from cfqa_core.metrics import get_metric

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for m in cfg.metrics:
        get_metric(m)  # unknown metric: fail before any work
    names = list(cfg.codecs) if cfg.codecs else available_codecs()
    ladders = {}
    for name in names:
        codec = codecs.get_codec(name)
        codec.require_available()
        ladders[name] = ladder_of(codec, cfg.ladder)
    originals = prepare_originals(cfg)
    applies = {name: codecs.get_codec(name).tasks for name in names}
    units = [(task, name, i) for task in cfg.tasks for name in names
             if applies[name] is None or task in applies[name]
             for i in range(len(originals[task].ids))]
    args = [(str(out), cfg.model, t, c, i, ladders[c], tuple(cfg.metrics)) for t, c, i in units]

    statuses: dict[str, int] = {}
    failures: list[dict] = []
    bar = tqdm(total=len(args), desc="dataset", unit="unit", disable=not cfg.progress)

    def record(unit, result=None, error=None):
        bar.update(1)
        if error is not None:
            failures.append({"task": unit[2], "codec": unit[3], "image": unit[4], "error": error})
        else:
            statuses[result["status"]] = statuses.get(result["status"], 0) + 1

    if cfg.use_ray:
        _run_ray(args, cfg.ray_address, record)
    elif cfg.workers <= 1:
        for a in args:
            try:
                record(a, run_unit(*a))
            except CfqaError as exc:
                record(a, error=str(exc))
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            futures = {pool.submit(run_unit, *a): a for a in args}
            for fut in as_completed(futures):
                try:
                    record(futures[fut], fut.result())
                except CfqaError as exc:
                    record(futures[fut], error=str(exc))
    bar.close()

    table = collect_table(out, cfg.tasks, names, originals)
    table_path = out / TABLE_FILE
    table.to_parquet(table_path, index=False)
    result = BuildResult(table_path, len(table), statuses.get("done", 0) + statuses.get("metrics", 0),
                         statuses.get("cached", 0), failures, time.time() - t0)
    summary = {"config": asdict(cfg), "codecs": {n: list(ladders[n]) for n in names}, "rows": result.rows,
               "units_done": result.units_done, "units_cached": result.units_cached,
               "failures": failures, "seconds": round(result.seconds, 1)}
    (out / "build.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result


def collect_table(out: Path, tasks, codec_names, originals):
    """Concatenate the shards of the requested tasks and codecs (bitstreams left out)."""
    import pandas as pd

    frames = []
    for task in tasks:
        for name in codec_names:
            for image_id in originals[task].ids:
                path = _shard_path(out, task, name, image_id)
                if path.is_file():
                    frames.append(pd.read_parquet(path).drop(columns=["bitstream", "meta_json"]))
    if not frames:
        raise DataError(f"no shard was built in {out}")
    table = pd.concat(frames, ignore_index=True)
    return table[[*BASE_COLUMNS, *[c for c in table.columns if c not in BASE_COLUMNS]]]


def _run_ray(args, address: str | None, record) -> None:
    try:
        import ray
    except ModuleNotFoundError:
        raise DataError("--ray needs the 'ray' package: pip install 'cfqa-edgecloud[scale]'") from None
    ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(run_unit)
    refs = {remote.remote(*a): a for a in args}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            record(refs[done[0]], ray.get(done[0]))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), CfqaError) else exc
            record(refs[done[0]], error=str(cause).splitlines()[0])
