"""Ingest the CFQA reference dataset's released layout into a benchmark table.

Layout (the reference README's "Dataset Structure")::

    ROOT/org_feat/<task>/<name>.npy                         original features
    ROOT/compressed_feat/<codec>/<task>/<rate>/<name>.npy   decoded features, one folder per rate point
    ROOT/compressed_feat/<codec>/<task>/<name>_<rate>.npy   (flat alternative)

``<codec>`` is hm, vtm, hyperprior_task_specific or hyperprior_multi_task;
``<rate>`` is the rate point's folder as the reference scripts name it:
``QP<n>`` for HM/VTM (``rate_point`` = n) or ``lambda<x>...`` for the hyperprior
models (``rate_point`` = 0, 1, ... in increasing lambda, i.e. increasing quality).

Ground-truth distortions (the README does not fix a file for them; both of
these are read, the first found wins per codec and task):

1. ``ROOT/labels.csv`` with columns ``codec, task, rate, image_id, gt_distortion``
   (optional ``task_score``); ``rate`` is the rate folder name or the rate point.
2. The reference evaluation log read by its ``corr.py``: one line per compressed
   feature, ``<name> <value> [<mse> <cosine> <cka>]``, the k-th line of a name
   belonging to its k-th rate point in increasing ``rate_point`` order (the
   order the reference scripts loop in). Looked for at
   ``ROOT/labels/<codec>/<task>.txt``, ``ROOT/compressed_feat/<codec>/<task>.txt``
   or the single ``*.txt`` in ``ROOT/compressed_feat/<codec>/<task>/``. The
   value is the cls rank, or the seg mIoU / dpt RMSE of f^ itself: per feature
   these differ from the mIoU / RMSE differences by a constant, which leaves
   per-feature PLCC and SROCC unchanged. The logged metrics are kept as
   ``seed_mse``, ``seed_cosine``, ``seed_cka`` for comparison.

Our metrics are computed on every (original, compressed) pair; bytes and codec
times are not in the release and are left NaN. PSNR uses the reference's
per-task quantisation range (``SEED_VALUE_RANGES``, from its HM script).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cfqa_core.benchmark.table.schema import BASE_COLUMNS
from cfqa_core.errors import DataError
from cfqa_core.tasks import TASKS

ORIGINALS_DIR = "org_feat"
COMPRESSED_DIR = "compressed_feat"
LABELS_CSV = "labels.csv"
SEED_TASKS: tuple[str, ...] = TASKS  # the seed releases features of the same three tasks
# Min / max of the reference's uniform quantisation (dpt: over its four blocks).
SEED_VALUE_RANGES: dict[str, tuple[float, float]] = {
    "cls": (-542.31, 94.15),
    "seg": (-506.97, 105.95),
    "dpt": (-504.43, 100.27),
}
SEED_LOG_METRICS: tuple[str, ...] = ("seed_mse", "seed_cosine", "seed_cka")
_QP = re.compile(r"^(?:qp)?_?(\d+)$", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class RatePoint:
    label: str       # folder name or file suffix, e.g. "QP12"
    rate_point: int  # QP, or the index in increasing quality for learned codecs
    rate_index: int  # 0 = highest quality


def codec_family(codec: str) -> str:
    """The table's ``family`` for a reference codec folder."""
    low = codec.lower()
    if "hyperprior" in low or "learned" in low:
        return "learned"
    return {"hm": "hevc", "vtm": "vvc"}.get(low, low)


def order_rates(labels: Sequence[str]) -> list[RatePoint]:
    """Rate points from folder names: ``QP<n>`` (quality falls with n) or lambda-like (rises with the number)."""
    qps = [_QP.match(lab) for lab in labels]
    if all(qps):
        order = sorted(zip((int(m.group(1)) for m in qps), labels))
        return [RatePoint(lab, qp, i) for i, (qp, lab) in enumerate(order)]
    keys = []
    for lab in labels:
        m = _NUMBER.search(lab)
        if m is None:
            raise DataError(f"cannot tell the rate of folder '{lab}' (expected QP<n> or lambda<x>)")
        keys.append(float(m.group()))
    if len(set(keys)) != len(keys):
        raise DataError(f"rate folders with the same number: {', '.join(sorted(labels))}")
    order = sorted(zip(keys, labels))  # increasing lambda = increasing quality
    n = len(order)
    return [RatePoint(lab, i, n - 1 - i) for i, (_, lab) in enumerate(order)]


def _originals(root: Path, task: str) -> dict[str, Path]:
    folder = root / ORIGINALS_DIR / task
    return {p.stem: p for p in sorted(folder.glob("*.npy"))}


def _compressed(folder: Path, names: Sequence[str]) -> dict[str, dict[str, Path]]:
    """{rate label: {name: path}} from rate sub-folders or flat ``<name>_<rate>.npy`` files."""
    out: dict[str, dict[str, Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = {p.stem: p for p in sorted(sub.glob("*.npy"))}
        if files:
            out[sub.name] = files
    by_length = sorted(names, key=len, reverse=True)  # longest name first: 'img1' must not eat 'img10_QP2'
    for p in sorted(folder.glob("*.npy")):
        name = next((n for n in by_length if p.stem.startswith(n) and p.stem[len(n):len(n) + 1] in "_-"
                     and len(p.stem) > len(n) + 1), None)
        if name is None:
            raise DataError(f"compressed feature {p} matches no original '<name>_<rate>.npy'")
        out.setdefault(p.stem[len(name) + 1:], {})[name] = p
    return out


def _log_file(root: Path, codec: str, task: str) -> Path | None:
    for cand in (root / "labels" / codec / f"{task}.txt", root / COMPRESSED_DIR / codec / f"{task}.txt"):
        if cand.is_file():
            return cand
    txt = sorted((root / COMPRESSED_DIR / codec / task).glob("*.txt"))
    if len(txt) > 1:
        raise DataError(f"several label logs in {root / COMPRESSED_DIR / codec / task}: "
                        f"{', '.join(p.name for p in txt)} (keep one)")
    return txt[0] if txt else None


def read_seed_log(path: Path, names: Sequence[str], rates: Sequence[RatePoint]) -> dict[tuple[str, str], list[float]]:
    """{(name, rate label): [value, (mse, cosine, cka)]} from a reference evaluation log."""
    wanted = set(names)
    seen: dict[str, list[list[float]]] = {n: [] for n in names}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        name = parts[0].rsplit(".", 1)[0] if parts[0].endswith(".npy") else parts[0]
        if name not in wanted:
            continue  # headers and other images, as the reference reader skips them
        try:
            seen[name].append([float(v) for v in parts[1:]])
        except ValueError:
            raise DataError(f"{path}:{lineno}: non-numeric value in '{line.strip()}'") from None
        if not seen[name][-1]:
            raise DataError(f"{path}:{lineno}: no value after the name '{name}'")
    ordered = sorted(rates, key=lambda r: r.rate_point)
    out = {}
    for name, rows in seen.items():
        if len(rows) != len(ordered):
            raise DataError(f"{path}: '{name}' has {len(rows)} line(s), expected one per rate point ({len(ordered)})")
        for rp, values in zip(ordered, rows):
            out[(name, rp.label)] = values
    return out


def read_labels_csv(path: Path):
    import pandas as pd

    try:
        labels = pd.read_csv(path, dtype={"codec": str, "task": str, "rate": str, "image_id": str})
    except Exception as exc:  # noqa: BLE001 - any parse failure is an unusable labels file
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("codec", "task", "rate", "image_id", "gt_distortion") if c not in labels.columns]
    if missing:
        raise DataError(f"{path} lacks column(s): {', '.join(missing)}")
    return labels


def _csv_labels(labels, codec: str, task: str, rates: Sequence[RatePoint]) -> dict | None:
    if labels is None:
        return None
    sel = labels[(labels["codec"] == codec) & (labels["task"] == task)]
    if sel.empty:
        return None
    by_rate = {r.label: r.label for r in rates} | {str(r.rate_point): r.label for r in rates}
    out = {}
    for row in sel.itertuples():
        label = by_rate.get(str(row.rate))
        if label is None:
            raise DataError(f"labels.csv: {codec}/{task} rate '{row.rate}' matches no rate folder")
        score = getattr(row, "task_score", np.nan)
        out[(row.image_id, label)] = [float(row.gt_distortion), float(score)]
    return out


def _task_score(task: str, value: float) -> float:
    # The table's task_score: cls top-1 correct (rank 1), seg mIoU, dpt RMSE.
    return float(value == 1.0) if task == "cls" else value


@dataclass(frozen=True)
class _Job:
    codec: str
    task: str
    name: str
    rate: RatePoint
    original: Path
    compressed: Path
    values: tuple[float, ...]  # label value, then the logged metrics (log) or the task score (csv)
    from_log: bool


def plan_ingest(root: str | Path, *, tasks: Sequence[str] | None = None,
                codecs: Sequence[str] | None = None) -> dict[tuple[str, str], list[_Job]]:
    """Every (original, compressed, label) triple under ``root``, grouped by (codec, task); checks the layout."""
    root = Path(root)
    comp_root = root / COMPRESSED_DIR
    if not (root / ORIGINALS_DIR).is_dir() or not comp_root.is_dir():
        raise DataError(f"{root} is not a CFQA dataset folder: needs {ORIGINALS_DIR}/ and {COMPRESSED_DIR}/")
    codec_dirs = sorted(p.name for p in comp_root.iterdir() if p.is_dir())
    if codecs:
        unknown = [c for c in codecs if c not in codec_dirs]
        if unknown:
            raise DataError(f"unknown codec '{unknown[0]}' in {comp_root} (have: {', '.join(codec_dirs) or 'none'})")
        codec_dirs = list(codecs)
    labels = read_labels_csv(root / LABELS_CSV) if (root / LABELS_CSV).is_file() else None

    groups: dict[tuple[str, str], list[_Job]] = {}
    for codec in codec_dirs:
        for task in tasks or SEED_TASKS:
            folder = comp_root / codec / task
            if not folder.is_dir():
                continue
            originals = _originals(root, task)
            if not originals:
                raise DataError(f"no original features in {root / ORIGINALS_DIR / task} for {folder}")
            by_rate = _compressed(folder, list(originals))
            if not by_rate:
                raise DataError(f"no compressed features in {folder}")
            rates = order_rates(list(by_rate))
            names = sorted({n for files in by_rate.values() for n in files})
            orphans = [n for n in names if n not in originals]
            if orphans:
                raise DataError(f"{folder}: compressed '{orphans[0]}' has no original in {ORIGINALS_DIR}/{task}")
            gt = _csv_labels(labels, codec, task, rates)
            log = None
            if gt is None:
                log = _log_file(root, codec, task)
                if log is None:
                    raise DataError(f"no ground-truth distortions for {codec}/{task}: add {LABELS_CSV} or a "
                                    f"reference log (labels/{codec}/{task}.txt)")
                gt = read_seed_log(log, names, rates)
            jobs = groups.setdefault((codec, task), [])
            for name in names:  # name-major: each original is loaded once for all its rate points
                for rp in rates:
                    if name not in by_rate[rp.label]:
                        raise DataError(f"{folder}: '{name}' is missing at rate {rp.label}")
                    if (name, rp.label) not in gt:
                        raise DataError(f"no ground truth for {codec}/{task}/{rp.label}/{name}")
                    jobs.append(_Job(codec, task, name, rp, originals[name], by_rate[rp.label][name],
                                     tuple(gt[(name, rp.label)]), log is not None))
    if not groups:
        raise DataError(f"no <codec>/<task> folders with features under {comp_root}")
    return groups


def _score(job: _Job, f: np.ndarray, metrics: Sequence[str]) -> dict:
    from cfqa_core.metrics import compute_metrics

    fhat = _load(job.compressed)
    item = f"{job.codec}/{job.task}/{job.rate.label}/{job.name}"
    vrange = SEED_VALUE_RANGES.get(job.task) or (float(f.min()), float(f.max()))
    scores = compute_metrics(metrics, f, fhat, item=item, value_range=vrange)
    value = job.values[0]
    score = job.values[1] if not job.from_log and len(job.values) > 1 else _task_score(job.task, value)
    row = {
        "image_id": job.name, "task": job.task, "codec": job.codec, "rate_point": job.rate.rate_point,
        "family": codec_family(job.codec), "rate_index": job.rate.rate_index, "bytes": np.nan,
        "meta_bytes": np.nan, "bpfp": np.nan, "encode_s": np.nan, "decode_s": np.nan, "gt_distortion": value,
        "task_score": score, "ref_task_score": np.nan, "feature_elements": int(f.size),
        **scores, "rate_label": job.rate.label,
    }
    if job.from_log and len(job.values) >= 4:
        row.update(zip(SEED_LOG_METRICS, job.values[1:4]))
    return row


def _signature(jobs: Sequence[_Job], metrics: Sequence[str]) -> str:
    """Identifies a group's inputs: metric names, file sizes and times, labels (a changed file redoes the group)."""
    h = hashlib.sha256(json.dumps(list(metrics)).encode())
    for j in jobs:
        for p in (j.original, j.compressed):
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(repr((j.rate, j.values, j.from_log)).encode())
    return h.hexdigest()


def _cached(cache_dir: Path | None, key: tuple[str, str], signature: str):
    import pandas as pd

    if cache_dir is None:
        return None
    shard, meta = _cache_paths(cache_dir, key)
    try:
        if json.loads(meta.read_text())["signature"] == signature:
            return pd.read_parquet(shard)
    except (OSError, ValueError, KeyError):
        pass  # absent or unreadable: recompute
    return None


def _cache_paths(cache_dir: Path, key: tuple[str, str]) -> tuple[Path, Path]:
    stem = f"{key[0]}__{key[1]}"
    return cache_dir / f"{stem}.parquet", cache_dir / f"{stem}.json"


def _store(cache_dir: Path, key: tuple[str, str], signature: str, frame) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    shard, meta = _cache_paths(cache_dir, key)
    tmp = shard.with_name(shard.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(shard)
    meta.write_text(json.dumps({"signature": signature, "rows": len(frame)}) + "\n")


def ingest_seed(root: str | Path, metrics: Sequence[str], *, tasks: Sequence[str] | None = None,
                codecs: Sequence[str] | None = None, progress: bool = True, cache_dir: str | Path | None = None):
    """Read the reference layout under ``root`` into a benchmark table (pandas DataFrame).

    With ``cache_dir`` every (codec, task) group is stored there once scored
    and reused while its files, labels and metrics are unchanged, so an
    interrupted ingest of the full release resumes where it stopped.
    """
    import pandas as pd

    from cfqa_core.metrics import get_metric

    for m in metrics:
        get_metric(m)
    groups = plan_ingest(root, tasks=tasks, codecs=codecs)
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    bar = tqdm(total=sum(len(j) for j in groups.values()), desc="seed ingest", unit="feature", disable=not progress)
    frames = []
    for key, jobs in groups.items():
        signature = _signature(jobs, metrics)
        frame = _cached(cache_dir, key, signature)
        if frame is None:
            rows, f, loaded = [], None, None
            for job in jobs:
                if job.original != loaded:  # jobs are name-major: one original in memory at a time
                    f, loaded = _load(job.original), job.original
                rows.append(_score(job, f, metrics))
                bar.update(1)
            frame = pd.DataFrame(rows)
            if cache_dir is not None:
                _store(cache_dir, key, signature, frame)
        else:
            bar.update(len(jobs))
        frames.append(frame)
    bar.close()
    table = pd.concat(frames, ignore_index=True)
    for c in BASE_COLUMNS:
        if c not in table.columns:  # a column the released data does not record (e.g. output_change)
            table[c] = np.nan
    return table[[*BASE_COLUMNS, *[c for c in table.columns if c not in BASE_COLUMNS]]]


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read feature {path}: {str(exc).splitlines()[0]}") from None


def write_ingest_summary(table, out: Path, root: Path) -> None:
    summary = {
        "root": str(root), "rows": int(len(table)),
        "codecs": sorted(table["codec"].unique()), "tasks": sorted(table["task"].unique()),
        "originals": int(table.groupby(["task", "image_id"]).ngroups),
    }
    (out / "ingest.json").write_text(json.dumps(summary, indent=2) + "\n")
