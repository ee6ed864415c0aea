"""Colour maps for task outputs a person looks at: segmentation classes and depth.

numpy only (no matplotlib), so images render on a torch-free or plot-free
install. Each map comes with a JSON-ready legend.
"""
from __future__ import annotations

import numpy as np

# Background dark grey (not black, so an all-background mask is visibly a mask),
# then the ten categorical colours of matplotlib's tab10.
SEG_PALETTE: tuple[str, ...] = (
    "#303030", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)

# viridis at ten evenly spaced stops (perceptually uniform, readable in greyscale).
_VIRIDIS: tuple[str, ...] = (
    "#440154", "#482878", "#3e4989", "#31688e", "#26828e",
    "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725",
)


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def seg_palette(n_classes: int) -> np.ndarray:
    """``n_classes x 3`` uint8 colours; beyond the fixed palette, colours from a seeded generator."""
    fixed = [hex_to_rgb(c) for c in SEG_PALETTE[:n_classes]]
    extra = np.random.default_rng(0).integers(40, 256, size=(max(0, n_classes - len(fixed)), 3))
    return np.concatenate([np.array(fixed, dtype=np.uint8).reshape(-1, 3), extra.astype(np.uint8)])


def colour_seg(mask: np.ndarray, class_names: list[str] | None = None,
               n_classes: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """RGB image of a class-id mask and its legend (every class, with its share of pixels)."""
    n = int(n_classes or (len(class_names) if class_names else int(mask.max()) + 1))
    palette = seg_palette(max(n, int(mask.max()) + 1))
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=palette.shape[0])
    legend = [
        {
            "class_id": k,
            "name": class_names[k] if class_names and k < len(class_names) else str(k),
            "colour": "#{:02x}{:02x}{:02x}".format(*palette[k]),
            "pixel_fraction": round(float(counts[k]) / mask.size, 4),
        }
        for k in range(palette.shape[0])
    ]
    return palette[mask.astype(np.int64)], legend


def _viridis(x: np.ndarray) -> np.ndarray:
    stops = np.array([hex_to_rgb(c) for c in _VIRIDIS], dtype=np.float64)
    pos = np.clip(x, 0.0, 1.0) * (len(stops) - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), len(stops) - 2)
    frac = (pos - lo)[..., None]
    return np.rint(stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def colour_depth(depth: np.ndarray, near_m: float | None = None, far_m: float | None = None) -> tuple[np.ndarray, dict]:
    """RGB image of a metric depth map (near = bright yellow, far = dark purple) and its legend."""
    d = np.asarray(depth, dtype=np.float64)
    near = float(np.nanmin(d)) if near_m is None else float(near_m)
    far = float(np.nanmax(d)) if far_m is None else float(far_m)
    span = max(far - near, 1e-9)
    rgb = _viridis(1.0 - (d - near) / span)
    ticks = np.linspace(near, far, 5)
    legend = {
        "colormap": "viridis (reversed: near is bright)",
        "unit": "m",
        "near_m": round(near, 4),
        "far_m": round(far, 4),
        "stops": [{"depth_m": round(float(t), 4),
                   "colour": "#{:02x}{:02x}{:02x}".format(*_viridis(np.array(1.0 - (t - near) / span)))}
                  for t in ticks],
    }
    return rgb, legend
