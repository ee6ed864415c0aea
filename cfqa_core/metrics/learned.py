"""A learned CFQA metric: predicts the semantic damage of f^ from statistics of (f, f^).

The paper scores compressed features with one hand-made formula (MSE,
cosine, CKA). This metric instead computes a dozen cheap statistics of the
pair (:func:`pair_statistics`, numpy, O(size)) and maps them,
with the task, through a small MLP to the expected *damage*: the task's
ground-truth semantic distortion oriented so that higher is worse, in the
task's own unit (Cls: rank of the true label - 1; Seg: mIoU lost;
Dpt: RMSE gained, metres). Lower is better.

Every statistic grows with the coding error, and the network is monotone
(non-negative weights, leaky ReLU), so the damage it predicts can only grow as
the error grows: an unseen codec cannot make it rank a finer rate point
below a coarser one by a quirk of the fit.

The network is trained by ``cfqa train-metric`` on a benchmark build
(:mod:`cfqa_core.benchmark.learned_metric`) and shipped as ``model.npz`` (used
here, numpy only) plus ``model.onnx`` (the same function for ONNX Runtime).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cfqa_core.errors import MetricError
from cfqa_core.metrics.base import as_slices
from cfqa_core.metrics.cosine import token_cosines

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "metrics" / "learned"
_TINY = 1e-12
# Slope of the hidden activations below zero: with non-negative weights the
# network then stays strictly increasing instead of going flat for small errors.
LEAK = 0.05
# Channels carrying the largest mean energy: DINOv2 features concentrate much of
# their energy in a few "massive activation" channels, which the heads rely on.
TOP_CHANNEL_FRACTION = 0.05

STAT_NAMES: tuple[str, ...] = (
    "log_nmse",          # MSE / variance of f
    "log_max_err",       # max |f^ - f| / std of f
    "log_1m_cos_mean",   # 1 - token cosine, mean over tokens and slices
    "log_1m_cos_p90",    # ... its 90th percentile (the worst tokens)
    "log_1m_cos_max",    # ... its maximum
    "log_1m_cos_cls",    # ... of the class token (token 0)
    "log_pool_err",      # relative error of the mean patch token (what a linear head on the mean sees)
    "log_norm_change",   # log10 | log |f^| / |f| | (coarse quantisation shrinks or inflates the norm)
    "log_bias",          # RMS of the per-channel mean error / std of f
    "log_top_nmse",      # MSE / energy in the top 5 % channels by energy
)


def _upper_decile(x: np.ndarray) -> float:
    """The 90th percentile, lower interpolation-free order statistic (one partition, no sort)."""
    k = min(x.size - 1, int(np.ceil(0.9 * (x.size - 1))))
    return float(np.partition(x, k)[k])


def pair_statistics(f: np.ndarray, fhat: np.ndarray) -> np.ndarray:
    """The inputs of the learned metric for one pair, float64 of shape ``(len(STAT_NAMES),)``.

    ``f`` and ``fhat`` are ``(..., tokens, channels)`` of equal shape (checked
    by the caller, e.g. :func:`cfqa_core.metrics.compute_metric`).
    """
    a = as_slices(np.asarray(f)).astype(np.float64)
    b = as_slices(np.asarray(fhat)).astype(np.float64)
    err = b - a
    var = float(a.var()) + _TINY
    std = np.sqrt(var)
    one_minus_cos = 1.0 - token_cosines(a, b)
    pool_a = a[:, 1:].mean(axis=1) if a.shape[1] > 1 else a[:, 0]
    pool_b = b[:, 1:].mean(axis=1) if b.shape[1] > 1 else b[:, 0]
    energy = np.einsum("stc,stc->c", a, a)
    k = max(1, int(round(TOP_CHANNEL_FRACTION * a.shape[-1])))
    top = np.argpartition(energy, -k)[-k:]
    top_err = err[..., top]
    stats = (
        float(np.mean(err * err)) / var,
        float(np.abs(err).max()) / std,
        float(one_minus_cos.mean()),
        float(_upper_decile(one_minus_cos.ravel())),
        float(one_minus_cos.max()),
        float(one_minus_cos[:, 0].mean()),
        float(np.linalg.norm(pool_b - pool_a)) / (float(np.linalg.norm(pool_a)) + _TINY),
    )
    norm_ratio = (float(np.linalg.norm(b)) + _TINY) / (float(np.linalg.norm(a)) + _TINY)
    tail = (
        abs(np.log(norm_ratio)),
        float(np.sqrt(np.mean(err.mean(axis=1) ** 2))) / std,
        float(np.mean(top_err * top_err)) / (float(energy[top].sum()) / (a.shape[0] * a.shape[1] * k) + _TINY),
    )
    return np.log10(np.maximum(np.array(stats + tail), 0.0) + _TINY)


def leaky_relu(h: np.ndarray, leak: float) -> np.ndarray:
    return np.where(h > 0.0, h, leak * h)


def mlp_activations(layers, x: np.ndarray, leak: float = LEAK) -> list[np.ndarray]:
    """Input and every layer's output of the MLP ``layers`` ((W, b) pairs; leaky ReLU between)."""
    acts = [x]
    for i, (w, b) in enumerate(layers):
        h = acts[-1] @ w + b
        acts.append(leaky_relu(h, leak) if i < len(layers) - 1 else h)
    return acts


@dataclass
class LearnedMetricModel:
    """Standardise the statistics, append the task one-hot, MLP, de-standardise per task."""

    tasks: tuple[str, ...]
    x_mean: np.ndarray            # (K,)
    x_std: np.ndarray             # (K,)
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W (in, out), b (out,)); leaky ReLU between
    y_mean: np.ndarray            # (len(tasks),) damage mean per task
    y_std: np.ndarray             # (len(tasks),) damage std per task
    stat_names: tuple[str, ...] = STAT_NAMES
    info: dict[str, Any] = field(default_factory=dict)
    leak: float = LEAK

    def task_onehot(self, tasks) -> np.ndarray:
        """(N, len(self.tasks)) float one-hot; MetricError for a task the model was not trained on."""
        index = {t: i for i, t in enumerate(self.tasks)}
        out = np.zeros((len(tasks), len(self.tasks)))
        for row, t in enumerate(tasks):
            if t not in index:
                raise MetricError(f"learned metric: no model for task '{t}' (trained on {', '.join(self.tasks)})")
            out[row, index[t]] = 1.0
        return out

    def standardised(self, stats: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        """The network's output before per-task de-standardisation, (N,)."""
        x = np.concatenate([(np.asarray(stats, np.float64) - self.x_mean) / self.x_std, onehot], axis=1)
        return mlp_activations(self.layers, x, self.leak)[-1][:, 0]

    def predict(self, stats: np.ndarray, tasks) -> np.ndarray:
        """Predicted damage (higher = worse, task units) for rows of ``stats`` (N, K)."""
        stats = np.atleast_2d(np.asarray(stats, np.float64))
        if stats.shape[1] != len(self.stat_names):
            raise MetricError(f"learned metric: expected {len(self.stat_names)} statistics, got {stats.shape[1]}")
        onehot = self.task_onehot(tasks)
        return self.standardised(stats, onehot) * (onehot @ self.y_std) + onehot @ self.y_mean

    # ---- files ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``model.npz`` and ``model.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"x_mean": self.x_mean, "x_std": self.x_std, "y_mean": self.y_mean, "y_std": self.y_std}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        np.savez(folder / "model.npz", **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
        meta = {"tasks": list(self.tasks), "stat_names": list(self.stat_names), "n_layers": len(self.layers),
                "leak": self.leak, "info": self.info}
        (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path = WEIGHTS_DIR) -> LearnedMetricModel:
        """Read a model written by :meth:`save`; MetricError naming the file when absent or unreadable."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "model.json").read_text())
            with np.load(folder / "model.npz") as z:
                arrays = {k: z[k].astype(np.float64) for k in z.files}
            layers = [(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(int(meta["n_layers"]))]
            model = cls(tuple(meta["tasks"]), arrays["x_mean"], arrays["x_std"], layers, arrays["y_mean"],
                        arrays["y_std"], tuple(meta["stat_names"]), meta.get("info", {}), float(meta["leak"]))
        except FileNotFoundError as exc:
            raise MetricError(f"learned metric weights not found: {exc.filename} "
                              "(train them with 'cfqa train-metric --build DIR')") from None
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise MetricError(f"learned metric weights in {folder} are unreadable: {exc}") from None
        if model.stat_names != STAT_NAMES:
            raise MetricError(f"learned metric weights in {folder} use other statistics "
                              f"({', '.join(model.stat_names)}); retrain them")
        return model


_LOADED: dict[str, LearnedMetricModel] = {}


def shipped_model(folder: str | Path = WEIGHTS_DIR) -> LearnedMetricModel:
    """The model in ``folder``, loaded once per process."""
    key = str(Path(folder).resolve())
    if key not in _LOADED:
        _LOADED[key] = LearnedMetricModel.load(folder)
    return _LOADED[key]


def learned(f: np.ndarray, fhat: np.ndarray, task: str | None = None) -> float:
    """Learned damage predictor (``cfqa train-metric``). Lower is better, >= 0 ideally.

    MLP(standardised :func:`pair_statistics` (f, f^) || one-hot(task)), output
    in the task's unit: Cls rank of the true label - 1, Seg mIoU lost, Dpt RMSE gained (m).
    Needs ``task=``; the features must have the layout of the model the metric was trained on.
    """
    if task is None:
        raise MetricError("metric 'learned' needs the task (task='cls', 'seg' or 'dpt')")
    model = shipped_model()
    return float(model.predict(pair_statistics(f, fhat)[None], [task])[0])
