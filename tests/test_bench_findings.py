"""The paper's findings decided from bootstrap intervals, on synthetic tables with known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cfqa_core.benchmark.bootstrap import OriginalBootstrap
from cfqa_core.benchmark.findings import (
    FAILS,
    HOLDS,
    UNDECIDED,
    UNTESTABLE,
    combine,
    decide,
    paper_findings,
    proxy_verdict,
)
from cfqa_core.benchmark.protocol import per_feature_correlations

POINTS = 10
FAMILY = {"hevc": "hevc", "vvc": "vvc", "hyper": "learned"}
BASE = ("mse", "cosine", "cka")
CLEAN = {m: 0.05 for m in BASE}


def synth(*, images=40, tasks=("cls", "seg", "dpt"), codecs=("hevc", "hyper"), metric_noise=None,
          cell_noise=None, half_noise=None, seed=0):
    """Each feature: latent damage d rising along the ladder; the distortion follows d (seg: -d).

    ``metric_noise``: {metric: noise on d}; ``cell_noise``: {(codec, task): noise}
    (default 0.05); ``half_noise``: {metric: (noise added on the high-rate half, on the low-rate half)}.
    """
    metric_noise = metric_noise or {"mse": 0.3, "cosine": 0.05, "cka": 0.3}
    cell_noise = cell_noise or {}
    half_noise = half_noise or {}
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        for codec in codecs:
            for i in range(images):
                d = np.sort(rng.uniform(0, 1, POINTS))
                dist = d + rng.normal(0, cell_noise.get((codec, task), 0.05), POINTS)
                if task == "seg":
                    dist = -dist
                scores = {}
                for m, s in metric_noise.items():
                    v = d + rng.normal(0, s, POINTS)
                    high, low = half_noise.get(m, (0.0, 0.0))
                    v[: POINTS // 2] += rng.normal(0, high, POINTS // 2)
                    v[POINTS // 2:] += rng.normal(0, low, POINTS - POINTS // 2)
                    scores[m] = v
                for k in range(POINTS):
                    row = {"image_id": f"im{i:03d}", "task": task, "codec": codec, "family": FAMILY[codec],
                           "rate_point": k, "rate_index": k, "gt_distortion": float(dist[k])}
                    for m, v in scores.items():
                        # MSE and proxy rise with damage; similarities fall with it.
                        row[m] = float(v[k]) if m in ("mse", "proxy") else float(1.0 - v[k])
                    rows.append(row)
    return pd.DataFrame(rows)


def found(table, metrics=BASE):
    pf = per_feature_correlations(table, list(metrics))
    boot = OriginalBootstrap(pf, resamples=1000)
    return {v.key: v for v in paper_findings(pf, boot, table, list(metrics))}


def test_decide_and_combine():
    assert decide(0.01, 0.3) == HOLDS
    assert decide(-0.3, -0.1) == FAILS
    assert decide(-0.01, 0.015) == FAILS  # equal to within the margin refutes "better"
    assert decide(-0.1, 0.2) == UNDECIDED
    assert decide(float("nan"), 0.2) == UNTESTABLE
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, UNDECIDED]) == UNDECIDED
    assert combine([HOLDS, FAILS, UNDECIDED]) == FAILS
    assert combine([]) == UNTESTABLE


def test_cosine_best_holds_fails_or_is_undecided_with_the_data():
    v = found(synth())["cosine_best"]
    assert v.status == HOLDS, v.detail
    assert all(c.lo > 0 for c in v.comparisons) and len(v.comparisons) == 4
    flipped = found(synth(metric_noise={"mse": 0.05, "cosine": 0.3, "cka": 0.3}))["cosine_best"]
    assert flipped.status == FAILS and any(c.hi < 0 for c in flipped.comparisons)
    # Three features per cell and a small gap: the interval cannot tell.
    few = found(synth(images=3, tasks=("dpt",), codecs=("hevc",),
                      metric_noise={"mse": 0.35, "cosine": 0.3, "cka": 0.35}, seed=2))["cosine_best"]
    assert few.status == UNDECIDED, few.detail


def test_handcrafted_vs_learned_and_seg_hardest():
    noisy = {(c, "seg"): 0.4 for c in ("hevc", "hyper")} | {("hyper", t): 0.3 for t in ("cls", "dpt")}
    f = found(synth(cell_noise=noisy))
    assert f["handcrafted_vs_learned"].status == HOLDS, f["handcrafted_vs_learned"].detail
    assert f["seg_hardest"].status == HOLDS and len(f["seg_hardest"].comparisons) == 2
    # Seg clean, Dpt noisy: Seg is not the hardest.
    f = found(synth(codecs=("hevc",), cell_noise={("hevc", "dpt"): 0.5}))
    assert f["seg_hardest"].status == FAILS
    assert f["handcrafted_vs_learned"].status == UNTESTABLE
    assert f["hevc_vs_vvc"].status == UNTESTABLE


def test_hevc_vs_vvc_uses_families():
    f = found(synth(codecs=("hevc", "vvc"), tasks=("dpt",), cell_noise={("vvc", "dpt"): 0.4}))
    assert f["hevc_vs_vvc"].status == HOLDS
    assert f["hevc_vs_vvc"].comparisons[0].estimate > 0


def test_low_rate_half():
    worse_low = found(synth(codecs=("hevc",), metric_noise=CLEAN, half_noise={m: (0.0, 0.5) for m in BASE}))["low_rate"]
    assert worse_low.status == HOLDS, worse_low.detail
    cells = worse_low.numbers["cells"]
    assert cells["hevc/dpt/cosine"]["high"] > cells["hevc/dpt/cosine"]["low"]
    assert cells["hevc/dpt/cosine"]["n"] == 40
    worse_high = found(synth(codecs=("hevc",), metric_noise=CLEAN,
                             half_noise={m: (0.5, 0.0) for m in BASE}))["low_rate"]
    assert worse_high.status == FAILS and all(c.hi < 0 for c in worse_high.comparisons)
    assert found(synth(codecs=("hevc",)).drop(columns="rate_index"))["low_rate"].status == UNTESTABLE
    # Low half worse on Cls, better on Dpt: not averaged into "undecided", the Dpt comparisons refute it.
    mixed = pd.concat([synth(codecs=("hevc",), tasks=("cls",), metric_noise=CLEAN,
                             half_noise={m: (0.0, 0.5) for m in BASE}),
                       synth(codecs=("hevc",), tasks=("dpt",), metric_noise=CLEAN,
                             half_noise={m: (0.5, 0.0) for m in BASE}, seed=1)])
    v = found(mixed)["low_rate"]
    assert v.status == FAILS and len(v.comparisons) == 6
    assert {c.label.split(":")[0]: c.status for c in v.comparisons} == {
        **{f"{m} cls": HOLDS for m in BASE}, **{f"{m} dpt": FAILS for m in BASE}}


def test_varies_across_cells():
    f = found(synth(cell_noise={("hyper", "seg"): 0.6}))
    assert f["varies"].status == HOLDS
    assert all("hyper/seg" in c.label for c in f["varies"].comparisons)  # the worst cell of every metric
    same = found(synth(codecs=("hevc",), tasks=("cls", "dpt"), images=60,
                       metric_noise={m: 0.01 for m in BASE}))["varies"]
    assert same.status == FAILS


def test_proxy_against_cosine(monkeypatch):
    from cfqa_core import metrics
    from cfqa_core.metrics.base import MetricSpec

    if "proxy" not in metrics.METRICS:
        monkeypatch.setitem(metrics.METRICS, "proxy",
                            MetricSpec("proxy", lambda f, g: 0.0, False, None, "task-aware damage score"))
    good = synth(metric_noise={"proxy": 0.02, "cosine": 0.5}, codecs=("hevc",))
    pf = per_feature_correlations(good, ["proxy", "cosine"])
    v = proxy_verdict(pf, OriginalBootstrap(pf, resamples=1000))
    assert v.status == HOLDS and len(v.comparisons) == 6  # PLCC and SROCC on three tasks
    close = synth(metric_noise={"proxy": 0.2, "cosine": 0.2}, codecs=("hevc",), images=60)
    pf = per_feature_correlations(close, ["proxy", "cosine"])
    assert proxy_verdict(pf, OriginalBootstrap(pf, resamples=1000)).status == FAILS
    pf = per_feature_correlations(close, ["cosine"])
    assert proxy_verdict(pf, OriginalBootstrap(pf)) is None
