"""Cosine similarity: per token (as the paper) and of the flattened tensors."""
from __future__ import annotations

import numpy as np

from cfqa_core.metrics.base import as_slices
from cfqa_core.metrics.signal import _CHUNK


def _ratio(num: np.ndarray, na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    # Two zero vectors are identical (1); a zero against a non-zero one shares no direction (0).
    den = na * nb
    safe = np.where(den > 0.0, den, 1.0)
    # Rounding can push |cos| a hair past 1; the metric's range is [-1, 1].
    cos = np.clip(num / safe, -1.0, 1.0)
    return np.where(den > 0.0, cos, np.where((na == 0.0) & (nb == 0.0), 1.0, 0.0))


def token_cosines(f: np.ndarray, fhat: np.ndarray) -> np.ndarray:
    """Cosine of every token vector, shape (slices, tokens), float64."""
    a_all, b_all = as_slices(f), as_slices(fhat)
    out = np.empty(a_all.shape[:2], dtype=np.float64)
    for s in range(a_all.shape[0]):  # one slice at a time bounds the float64 copies
        a = a_all[s].astype(np.float64)
        b = b_all[s].astype(np.float64)
        dot = np.einsum("td,td->t", a, b)
        na = np.sqrt(np.einsum("td,td->t", a, a))
        nb = np.sqrt(np.einsum("td,td->t", b, b))
        out[s] = _ratio(dot, na, nb)
    return out


def cosine(f: np.ndarray, fhat: np.ndarray) -> float:
    """Token cosine similarity, as the paper computes it. Higher is better, in [-1, 1].

    For each slice s and token t: c[s, t] = <f[s,t,:], f^[s,t,:]> / (|f[s,t,:]| |f^[s,t,:]|)
    (normalised over channels); the score is the mean over tokens, then over slices.
    """
    return float(token_cosines(f, fhat).mean(axis=1).mean())


def cosine_flat(f: np.ndarray, fhat: np.ndarray) -> float:
    """Cosine of the flattened tensors: <vec f, vec f^> / (|f| |f^|). Higher is better, in [-1, 1]."""
    a, b = f.reshape(-1), fhat.reshape(-1)
    dot = na = nb = 0.0
    for start in range(0, a.size, _CHUNK):
        x = a[start:start + _CHUNK].astype(np.float64)
        y = b[start:start + _CHUNK].astype(np.float64)
        dot += float(np.dot(x, y))
        na += float(np.dot(x, x))
        nb += float(np.dot(y, y))
    return float(_ratio(np.array(dot), np.sqrt(np.array(na)), np.sqrt(np.array(nb))))
