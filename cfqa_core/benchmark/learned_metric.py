"""Train the learned metric on a benchmark build and test it leave-one-codec-out.

Data: every row of a build's ``table.parquet`` paired with its original and
decoded feature (both cached by ``cfqa dataset build``), reduced to
:func:`cfqa_core.metrics.learned.pair_statistics`. Target: the row's damage,
the ground-truth semantic distortion oriented so that higher is worse
(:func:`damage`).

Leave-one-codec-out: for each codec c and each of ``folds`` folds of the
original images, a network is trained on the *other* codecs' rows of the
*other* images and predicts c's rows of the held-out images; so neither the
codec nor the image was seen. The CFQA protocol (per-feature PLCC / SROCC,
then the mean) is run on those out-of-sample predictions and on cosine over
the same rows, and the report says, cell by cell, which tracks the
distortion better.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cfqa_core.errors import DataError
from cfqa_core.metrics.learned import (
    LEAK,
    STAT_NAMES,
    WEIGHTS_DIR,
    LearnedMetricModel,
    mlp_activations,
    pair_statistics,
)
from cfqa_core.tasks import TASKS

STATS_FILE = "learned-stats.parquet"
COMPARED = ("cosine", "mse", "cka")


@dataclass
class MetricTrainConfig:
    """Everything that determines a trained learned metric."""

    hidden: tuple[int, ...] = (32, 32)
    steps: int = 2500
    batch: int = 1024
    lr: float = 3e-3
    weight_decay: float = 1e-4
    huber: float = 1.0  # on the standardised damage: cls ranks jump, a squared loss would chase them
    rank_weight: float = 1.0  # pairwise ranking loss between rate points of the same feature
    monotone: bool = True  # non-negative weights: damage never falls as an error statistic grows
    folds: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.folds < 2 or not self.hidden or min(self.hidden) < 1:
            raise DataError("steps, batch and hidden sizes must be positive, folds at least 2")


def damage(table) -> np.ndarray:
    """Oriented ground-truth distortion, higher = worse, in task units (Cls: rank - 1)."""
    from cfqa_core.tasks import DISTORTION_DIRECTION

    task = table["task"].to_numpy()
    gt = table["gt_distortion"].to_numpy(np.float64)
    direction = np.array([DISTORTION_DIRECTION[t] for t in task], dtype=np.float64)
    return direction * gt - (task == "cls")


# ---- statistics of the build's pairs ---------------------------------------------------------

def image_folds(image_ids, folds: int) -> np.ndarray:
    """Balanced fold of every row's image: sorted distinct images dealt out in turn."""
    ids = np.asarray(image_ids).astype(str)
    order = {i: k % folds for k, i in enumerate(sorted(set(ids)))}
    return np.array([order[i] for i in ids])


def pair_table(build_dir: str | Path, progress: bool = True):
    """The build's table with one column per statistic (cached in ``build_dir``/learned-stats.parquet)."""
    import pandas as pd

    from cfqa_core.benchmark.table.builder import cached_originals, decoded_path
    from cfqa_core.benchmark.table.schema import read_table

    build = Path(build_dir)
    table = read_table(build).drop(columns=["bitstream", "meta_json"], errors="ignore")
    # ``bytes`` in the key: a rebuilt (re-encoded) row gets new statistics, never stale cached ones.
    key = ["task", "codec", "image_id", "rate_index", "bytes"]
    cache = build / STATS_FILE
    done = None
    if cache.is_file():
        try:
            done = pd.read_parquet(cache)
            if list(done.columns) != [*key, *STAT_NAMES]:
                done = None
        except Exception:  # noqa: BLE001 - an unreadable cache is recomputed, never reused
            done = None
    merged = table.merge(done, on=key, how="left") if done is not None else table.assign(
        **{s: np.nan for s in STAT_NAMES})
    values = merged[list(STAT_NAMES)].to_numpy(np.float64, copy=True)
    todo = merged[np.isnan(values[:, 0])]
    groups = list(todo.groupby(["task", "codec", "image_id"], sort=True))
    for (task, codec, image_id), rows in tqdm(groups, desc="pair statistics", unit="feature", disable=not progress):
        orig = cached_originals(str(build), task)
        f = orig.features[orig.ids.index(image_id)]
        path = decoded_path(build, task, codec, image_id)
        try:
            decoded = np.load(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"decoded features of {codec}/{task}/{image_id} unreadable at {path}: {exc} "
                            "(rebuild with 'cfqa dataset build')") from None
        for pos, rank in zip(merged.index.get_indexer(rows.index), rows["rate_index"].to_numpy()):
            values[pos] = pair_statistics(f, decoded[int(rank)].reshape(f.shape))
    merged[list(STAT_NAMES)] = values
    if groups:
        tmp = cache.with_name(cache.name + ".tmp")
        merged[[*key, *STAT_NAMES]].to_parquet(tmp, index=False)
        tmp.replace(cache)
    if not np.isfinite(values).all():
        raise DataError(f"non-finite pair statistics in {build}")
    return merged


# ---- the network ----------------------------------------------------------------------------

def _huber_grad(r: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(r, -delta, delta)


def _backward(params: list[np.ndarray], acts: list[np.ndarray], grad: np.ndarray, decay: float) -> list:
    grads: list = [None] * len(params)
    for i in range(len(params) - 2, -1, -2):
        grads[i] = acts[i // 2].T @ grad + decay * params[i]
        grads[i + 1] = grad.sum(axis=0)
        if i:
            grad = (grad @ params[i].T) * np.where(acts[i // 2] > 0, 1.0, LEAK)
    return grads


def _pairs_within(groups: np.ndarray, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random pairs of rows that share a group (rate points of one feature).

    A pair may draw the same row twice; its two damages are then equal and it
    carries no ranking signal.
    """
    order = np.argsort(groups, kind="stable")
    starts = np.searchsorted(groups[order], groups[order], side="left")
    ends = np.searchsorted(groups[order], groups[order], side="right")
    pos = rng.integers(0, len(order), n)
    other = starts[pos] + (rng.random(n) * (ends[pos] - starts[pos])).astype(int)  # random() < 1: in group
    return order[pos], order[other]


def fit(stats: np.ndarray, tasks: np.ndarray, target: np.ndarray, cfg: MetricTrainConfig,
        info: dict | None = None, groups: np.ndarray | None = None) -> LearnedMetricModel:
    """Train the MLP (numpy, Adam, mini-batches) on rows of ``stats`` with their tasks and damage.

    Loss: Huber on the per-task standardised damage, plus (``groups``: one id
    per feature) a logistic ranking loss on pairs of the same feature's rate
    points, which is what the CFQA protocol scores.
    """
    rng = np.random.default_rng(cfg.seed)
    task_names = tuple(t for t in TASKS if t in set(tasks)) or tuple(sorted(set(tasks)))
    x_mean, x_std = stats.mean(axis=0), stats.std(axis=0) + 1e-6
    ti = np.array([task_names.index(t) for t in tasks])
    y_mean = np.array([target[ti == k].mean() for k in range(len(task_names))])
    y_std = np.array([target[ti == k].std() + 1e-6 for k in range(len(task_names))])
    model = LearnedMetricModel(task_names, x_mean, x_std, [], y_mean, y_std, info=dict(info or {}))
    x = np.concatenate([(stats - x_mean) / x_std, np.eye(len(task_names))[ti]], axis=1)
    y = (target - y_mean[ti]) / y_std[ti]
    sizes = (x.shape[1], *cfg.hidden, 1)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        w = rng.normal(0.0, np.sqrt(2.0 / n_in), (n_in, n_out))
        params += [np.abs(w) / np.sqrt(n_in) if cfg.monotone else w, np.zeros(n_out)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    n = min(cfg.batch, len(x))
    use_rank = cfg.rank_weight > 0 and groups is not None
    for step in range(cfg.steps):
        lr = cfg.lr * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        idx = rng.integers(0, len(x), n)
        if use_rank:
            i, j = _pairs_within(groups, rng, n)
            idx = np.concatenate([idx, i, j])
        acts = mlp_activations(list(zip(params[::2], params[1::2])), x[idx])
        out = acts[-1][:, 0]
        grad = np.zeros(len(idx))
        grad[:n] = _huber_grad(out[:n] - y[idx[:n]], cfg.huber) / n
        if use_rank:
            sign = np.sign(target[i] - target[j])  # which of the pair is worse
            si, sj = out[n:2 * n], out[2 * n:]
            g = cfg.rank_weight * sign / (1.0 + np.exp(np.clip(sign * (si - sj), -30, 30))) / n
            grad[n:2 * n], grad[2 * n:] = -g, g
        grads = _backward(params, acts, grad[:, None], cfg.weight_decay)
        for k, (p, gk) in enumerate(zip(params, grads)):
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk * gk
            p -= lr * (m[k] / (1 - b1 ** (step + 1))) / (np.sqrt(v[k] / (1 - b2 ** (step + 1))) + eps)
            if cfg.monotone and k % 2 == 0:
                np.maximum(p, 0.0, out=p)
    model.layers = [(params[i], params[i + 1]) for i in range(0, len(params), 2)]
    model.info["monotone"] = cfg.monotone
    return model


def feature_groups(pairs) -> np.ndarray:
    """One integer per row naming its feature: (task, codec, image)."""
    return pairs.groupby(["task", "codec", "image_id"], sort=False).ngroup().to_numpy()


def _xy(pairs):
    return pairs[list(STAT_NAMES)].to_numpy(np.float64), pairs["task"].to_numpy(), damage(pairs)


def leave_one_codec_out(pairs, cfg: MetricTrainConfig, progress: bool = True):
    """``pairs`` with a column ``learned`` holding out-of-sample predictions (codec and image held out)."""
    codecs = sorted(pairs["codec"].unique())
    if len(codecs) < 2:
        raise DataError("leave-one-codec-out needs at least two codecs in the build")
    fold = image_folds(pairs["image_id"], cfg.folds)
    pred = np.full(len(pairs), np.nan)
    codec_col = pairs["codec"].to_numpy()
    stats, tasks, target = _xy(pairs)
    groups = feature_groups(pairs)
    jobs = [(c, k) for c in codecs for k in range(cfg.folds)]
    for c, k in tqdm(jobs, desc="leave-one-codec-out", unit="fit", disable=not progress):
        train = (codec_col != c) & (fold != k)
        test = (codec_col == c) & (fold == k)
        test_tasks = set(tasks[test])
        if not test.any() or not test_tasks <= set(tasks[train]):
            continue  # a task only this codec covers cannot be predicted without it
        model = fit(stats[train], tasks[train], target[train], cfg, groups=groups[train])
        pred[test] = model.predict(stats[test], tasks[test])
    out = pairs.copy()
    out["learned"] = pred
    return out


def compare_with_baselines(scored, compared=COMPARED):
    """Per codec x task: oriented PLCC / SROCC of ``learned`` and of each baseline metric, same rows."""
    import pandas as pd

    from cfqa_core.benchmark.protocol import per_feature_correlations, summarise

    rows = scored[np.isfinite(scored["learned"].to_numpy())]
    metrics = ["learned", *[m for m in compared if m in rows.columns]]
    per_feature = per_feature_correlations(rows, metrics)
    # Same features for every metric: a metric that stays flat while the distortion moves tells
    # nothing about it (correlation 0), rather than leaving the feature out as the protocol does.
    spread = rows.groupby(["task", "codec", "image_id"])["gt_distortion"].agg(lambda d: float(np.ptp(d)))
    moving = spread.reindex(pd.MultiIndex.from_frame(per_feature[["task", "codec", "image_id"]])).to_numpy() > 0
    flat = moving & (per_feature["status"] == "constant").to_numpy()
    for col in ("plcc", "srocc", "plcc_oriented", "srocc_oriented"):
        per_feature.loc[flat, col] = 0.0
    per_feature.loc[flat, "status"] = "ok"
    summary, _ = summarise(per_feature)
    wide = summary.pivot_table(index=["codec", "task"], columns="metric",
                               values=["plcc_oriented", "srocc_oriented", "n"], aggfunc="first")
    out = pd.DataFrame(index=wide.index)
    for m in metrics:
        out[f"{m}_plcc"] = wide[("plcc_oriented", m)]
        out[f"{m}_srocc"] = wide[("srocc_oriented", m)]
    out["n"] = wide[("n", "learned")].astype(int)
    out["beats_cosine"] = (out["learned_plcc"] > out["cosine_plcc"]) & (out["learned_srocc"] > out["cosine_srocc"])
    return out.reset_index()


def loco_markdown(cmp) -> str:
    """The leave-one-codec-out comparison as Markdown, with the verdict."""
    metrics = [c[: -len("_plcc")] for c in cmp.columns if c.endswith("_plcc")]
    head = "| codec | task | n | " + " | ".join(f"{m} PLCC | {m} SROCC" for m in metrics) + " | learned beats cosine |"
    lines = [head, "|" + "---|" * (4 + 2 * len(metrics))]
    for r in cmp.itertuples():
        cells = " | ".join(f"{getattr(r, f'{m}_plcc'):+.3f} | {getattr(r, f'{m}_srocc'):+.3f}" for m in metrics)
        lines.append(f"| {r.codec} | {r.task} | {r.n} | {cells} | {'yes' if r.beats_cosine else 'no'} |")
    ok = cmp.dropna(subset=["learned_plcc", "cosine_plcc"])
    wins = int(ok["beats_cosine"].sum())
    lp, cp = float(ok["learned_plcc"].mean()), float(ok["cosine_plcc"].mean())
    ls, cs = float(ok["learned_srocc"].mean()), float(ok["cosine_srocc"].mean())
    better = lp > cp and ls > cs
    verdict = (f"Learned metric {'beats' if better else 'does NOT beat'} cosine on held-out codecs: mean oriented "
               f"PLCC {lp:+.3f} vs {cp:+.3f}, SROCC {ls:+.3f} vs {cs:+.3f}; better on both in {wins} of "
               f"{len(ok)} codec x task cells.")
    return "\n".join(["Oriented correlations (+1 = tracks the distortion perfectly), each codec held out of "
                      "training and each image held out by fold. Every metric is scored on the same features; "
                      "a metric flat over a feature whose distortion moves counts 0 there.", "",
                      *lines, "", verdict, "",
                      "Per-feature SROCC ranks one feature's rate points: wherever the coding error grows "
                      "steadily along the ladder, every metric monotone in that error (MSE, cosine, a "
                      "monotone learned model) ranks them identically, so SROCC ties and only PLCC, the "
                      "shape of the mapping, can separate such metrics.", ""])


# ---- ONNX -----------------------------------------------------------------------------------

def export_onnx(model: LearnedMetricModel, path: str | Path) -> Path:
    """Write the metric network as ONNX: inputs ``stats`` (N, K), ``task_onehot`` (N, T); output ``damage`` (N, 1)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name, array):
        return numpy_helper.from_array(np.asarray(array, np.float32), name)

    inits = [const("x_mean", model.x_mean), const("x_std", model.x_std),
             const("y_mean", model.y_mean[:, None]), const("y_std", model.y_std[:, None])]
    nodes = [helper.make_node("Sub", ["stats", "x_mean"], ["centred"]),
             helper.make_node("Div", ["centred", "x_std"], ["z"]),
             helper.make_node("Concat", ["z", "task_onehot"], ["h0"], axis=1)]
    for i, (w, b) in enumerate(model.layers):
        inits += [const(f"w{i}", w), const(f"b{i}", b)]
        nodes += [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        last = i == len(model.layers) - 1
        nodes.append(helper.make_node("Identity", [f"a{i}"], ["out"]) if last else
                     helper.make_node("LeakyRelu", [f"a{i}"], [f"h{i + 1}"], alpha=float(model.leak)))
    nodes += [helper.make_node("MatMul", ["task_onehot", "y_std"], ["scale"]),
              helper.make_node("MatMul", ["task_onehot", "y_mean"], ["shift"]),
              helper.make_node("Mul", ["out", "scale"], ["scaled"]),
              helper.make_node("Add", ["scaled", "shift"], ["damage"])]
    graph = helper.make_graph(
        nodes, "cfqa_learned_metric",
        [helper.make_tensor_value_info("stats", TensorProto.FLOAT, ["N", len(model.stat_names)]),
         helper.make_tensor_value_info("task_onehot", TensorProto.FLOAT, ["N", len(model.tasks)])],
        [helper.make_tensor_value_info("damage", TensorProto.FLOAT, ["N", 1])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="cfqa-edgecloud")
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    path = Path(path)
    onnx.save(proto, path)
    return path


# ---- the whole job --------------------------------------------------------------------------

def train_metric(build_dir: str | Path, out_dir: str | Path = WEIGHTS_DIR,
                 cfg: MetricTrainConfig | None = None, progress: bool = True) -> dict:
    """Statistics, leave-one-codec-out evaluation, final fit on every row, files in ``out_dir``."""
    cfg = cfg or MetricTrainConfig()
    pairs = pair_table(build_dir, progress)
    cmp = compare_with_baselines(leave_one_codec_out(pairs, cfg, progress))
    report = loco_markdown(cmp)
    stats, tasks, target = _xy(pairs)
    info = {"config": asdict(cfg), "build": str(build_dir), "rows": int(len(pairs)),
            "codecs": sorted(pairs["codec"].unique()), "images": int(pairs["image_id"].nunique()),
            "command": f"cfqa train-metric --build {build_dir}"}
    model = fit(stats, tasks, target, cfg, info, groups=feature_groups(pairs))
    out = Path(out_dir)
    model.save(out)
    export_onnx(model, out / "model.onnx")
    records = json.loads(cmp.to_json(orient="records"))
    (out / "loco.json").write_text(json.dumps(records, indent=2) + "\n")
    (out / "loco.md").write_text("# Learned metric: leave-one-codec-out\n\n" + report)
    verdict = next(line for line in report.splitlines() if line.startswith("Learned metric"))
    return {"out": str(out), "rows": int(len(pairs)), "loco": records, "verdict": verdict}
