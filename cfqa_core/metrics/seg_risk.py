"""Expected mIoU loss of a Seg label map, label-free: the Seg score of ``proxy_risk``.

The relabelled share (``proxy`` on Seg) counts every changed pixel alike, but
the task's mIoU does not: a flip between two classes the model already
doubts costs little, a confident region turning into another class costs
much, and a spurious class costs a whole class share of the mean. This
module scores f^ by the *expected* loss of the image's mIoU when the labels
from f^ replace those from f, the expectation taken over plausible true
masks drawn from the model's own posterior at f,
``p = softmax(logits(f) / temperature)``.

The masks are ``argmax(log p + G_d)`` for a fixed bank of ``draws`` Gumbel
fields ``G_d`` whose pixels are exact Gumbel(0, 1) variables, spatially
correlated over ``correlation`` output pixels (Gaussian copula): every pixel
of a draw has the posterior's distribution while errors come in blobs, as
real mask errors do. Both constants are fitted on train-split masks by
:func:`cfqa_core.training.seg_risk_fit.fit_seg_risk` (no benchmark image);
the proxy's weight file stores them per split.

Numpy only; the bank is built once per process (about 40 MB for 168 x 168
pixels and 11 classes), the drawn masks of an f are kept for its next rungs.
"""
from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cfqa_core.errors import MetricError

DRAWS = 32
SEED = 0
# An edge or a benchmark unit scores several rungs of one f; a few references cover the interleaving.
REFERENCES_KEPT = 4


@dataclass(frozen=True)
class SegRiskCalibration:
    """Posterior temperature and spatial correlation (output pixels) of the drawn masks."""

    temperature: float
    correlation: float
    draws: int = DRAWS
    seed: int = SEED

    def to_array(self) -> np.ndarray:
        return np.array([self.temperature, self.correlation, self.draws, self.seed], dtype=np.float64)

    @classmethod
    def from_array(cls, values: np.ndarray) -> SegRiskCalibration:
        t, c, d, s = (float(v) for v in np.asarray(values, dtype=np.float64).ravel()[:4])
        if not (t > 0 and c >= 0 and d >= 1):
            raise MetricError(f"seg risk calibration is invalid: temperature {t}, correlation {c}, draws {d}")
        return cls(t, c, int(d), int(s))


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF without scipy (erf of Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7)."""
    x = np.abs(z) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return 0.5 * (1.0 + np.sign(z) * (1.0 - poly * np.exp(-x * x)))


@functools.lru_cache(maxsize=2)
def gumbel_bank(size: int, classes: int, draws: int = DRAWS, correlation: float = 0.0,
                seed: int = SEED) -> np.ndarray:
    """(draws, size * size, classes) float32 Gumbel(0, 1) fields, spatially correlated over ``correlation``
    pixels: white noise smoothed by a periodic Gaussian kernel (so every pixel has the same variance),
    standardised, then mapped through the normal CDF and the inverse Gumbel CDF."""
    z = np.random.default_rng(seed).standard_normal((draws, classes, size, size))
    if correlation > 0:
        freq = np.fft.fftfreq(size)
        kernel = np.exp(-2.0 * (np.pi * correlation) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
        z = np.fft.ifft2(np.fft.fft2(z) * kernel).real
        z /= z.std()
    u = np.clip(normal_cdf(z), 1e-12, 1.0 - 1e-12)
    g = -np.log(-np.log(u))
    bank = np.ascontiguousarray(g.reshape(draws, classes, -1).transpose(0, 2, 1), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def mask_mious(pred: np.ndarray, masks: np.ndarray, classes: int) -> np.ndarray:
    """mIoU of one (P,) label map against each of (D, P) masks, over the classes in the mask or the
    prediction (:func:`cfqa_core.tasks.miou`, the D confusion matrices counted in one pass)."""
    from cfqa_core.tasks import miou_from_confusion  # PIL-importing module: not at the edge's import time

    d = masks.shape[0]
    idx = (np.arange(d)[:, None] * classes + masks) * classes + pred[None, :]
    conf = np.bincount(idx.ravel(), minlength=d * classes * classes).reshape(d, classes, classes)
    return np.array([miou_from_confusion(c) for c in conf])


def posterior_masks(logits: np.ndarray, cal: SegRiskCalibration) -> np.ndarray:
    """(D, P) masks drawn from ``softmax(logits / T)`` of a square (H, W, C) logit map."""
    h, w, k = logits.shape
    if h != w:
        raise MetricError(f"seg risk: a label map of {h} x {w} pixels is not square")
    z = logits.reshape(-1, k).astype(np.float32) / np.float32(cal.temperature)
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return (logp[None] + gumbel_bank(h, k, cal.draws, cal.correlation, cal.seed)).argmax(axis=-1)


class SegRisk:
    """Expected mIoU loss from the labels of f to those of f^ (see the module); keeps recent references."""

    def __init__(self, cal: SegRiskCalibration) -> None:
        self.cal = cal
        self._refs: OrderedDict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def _reference(self, key: bytes, reference: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._lock:
            entry = self._refs.get(key)
            if entry is not None:
                self._refs.move_to_end(key)
                return entry
        ref_logits = reference()
        labels = ref_logits.reshape(-1, ref_logits.shape[-1]).argmax(axis=-1)
        masks = posterior_masks(ref_logits, self.cal)
        entry = (labels, masks, mask_mious(labels, masks, ref_logits.shape[-1]))
        with self._lock:
            self._refs[key] = entry
            while len(self._refs) > REFERENCES_KEPT:
                self._refs.popitem(last=False)
        return entry

    def __call__(self, f: np.ndarray, reference: Callable[[], np.ndarray], out_logits: np.ndarray) -> float:
        """``reference()`` and ``out_logits``: (H, W, C) merged logit maps of f and f^. The reference is
        computed only for an f not seen among the last few (its bytes are the key)."""
        key = hashlib.blake2b(np.ascontiguousarray(f).tobytes(), digest_size=16).digest()
        labels, masks, base = self._reference(key, reference)
        out = out_logits.reshape(-1, out_logits.shape[-1]).argmax(axis=-1)
        if np.array_equal(out, labels):
            return 0.0
        return float(np.mean(base - mask_mious(out, masks, out_logits.shape[-1])))
