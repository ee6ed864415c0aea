"""The benchmark-table builder: real codec, real heads, resumable, cache-safe."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cfqa_core.benchmark.table.builder import BuildConfig, build
from cfqa_core.benchmark.table.schema import BASE_COLUMNS, read_table
from cfqa_core.codecs.ladders import HEVC_OPERATING_LADDER
from cfqa_core.errors import DataError, MetricError
from cfqa_core.models import EMBEDDED_DIR

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "model.safetensors").is_file(),
                                reason="embedded weights not trained yet")


def _cfg(out, **kw):
    base = dict(out=str(out), n_per_task=2, tasks=("seg",), codecs=("hevc",), workers=1, progress=False,
                metrics=("mse", "cosine", "cka"))
    return BuildConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = build(_cfg(out))
    return out, result


def test_table_has_one_row_per_rate_point(built):
    out, result = built
    table = read_table(out, metrics=("mse", "cosine", "cka"))
    assert result.rows == len(table) == 2 * len(HEVC_OPERATING_LADDER) and not result.failures
    assert list(table.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    for _, g in table.groupby("image_id"):
        g = g.sort_values("rate_point")
        assert list(g["rate_point"]) == list(HEVC_OPERATING_LADDER)
        # Coarser QP: fewer bytes, a less faithful feature (small non-monotone wiggles allowed).
        assert g["bytes"].iloc[0] > g["bytes"].iloc[-1]
        assert g["mse"].iloc[0] < g["mse"].iloc[-1]
        assert g["cosine"].iloc[0] > g["cosine"].iloc[-1]
        np.testing.assert_allclose(g["gt_distortion"], g["task_score"] - g["ref_task_score"], atol=1e-12)
        np.testing.assert_allclose(g["bpfp"], 8 * g["bytes"] / g["feature_elements"])
    assert (table["feature_elements"] == 2 * 145 * 128).all()


def test_rebuild_reuses_cache_and_new_metric_does_not_reencode(built, tmp_path):
    out, _ = built
    shard = next((out / "shards" / "seg" / "hevc").glob("*.parquet"))
    before = pd.read_parquet(shard)
    again = build(_cfg(out))
    assert again.units_cached == 2 and again.units_done == 0
    with_new = build(_cfg(out, metrics=("mse", "cosine", "cka", "cka_seed")))
    assert with_new.units_done == 2  # metrics added from cached decodes
    after = pd.read_parquet(shard)
    assert list(after["bitstream"]) == list(before["bitstream"])  # same bytes: nothing re-encoded
    np.testing.assert_allclose(after["encode_s"], before["encode_s"])
    assert after["cka_seed"].notna().all()


def test_task_aware_metrics_are_built_by_default_for_the_embedded_model_only(built, tmp_path):
    from cfqa_core.benchmark.table.schema import DEFAULT_METRICS, default_metrics

    assert default_metrics("embedded") == DEFAULT_METRICS + ("proxy", "proxy_risk")
    assert default_metrics("/models/dinov2_vitg14.pth") == DEFAULT_METRICS
    out, _ = built
    result = build(_cfg(out, metrics=("mse", "cosine", "cka", "proxy", "proxy_risk")))
    assert result.units_done == 2 and not result.failures
    table = read_table(out, metrics=("proxy", "proxy_risk"))
    # Seg: proxy counts relabelled pixels, proxy_risk their expected mIoU cost; both 0 exactly when nothing moved.
    assert ((table["proxy"] == 0) == (table["proxy_risk"] == 0)).all()
    assert table["proxy_risk"].between(-0.05, 1.0).all() and (table["proxy"] > 0).any()


def test_corrupt_cache_entry_is_rebuilt(built):
    out, _ = built
    shard = next((out / "shards" / "seg" / "hevc").glob("*.parquet"))
    shard.write_bytes(b"garbage")
    result = build(_cfg(out))
    assert result.units_done == 1 and result.units_cached == 1
    assert len(pd.read_parquet(shard)) == len(HEVC_OPERATING_LADDER)


def test_bad_requests_fail_before_work(tmp_path):
    with pytest.raises(MetricError, match="unknown metric 'psnrx'"):
        build(_cfg(tmp_path, metrics=("psnrx",)))
    with pytest.raises(Exception, match="unknown codec 'h266'"):
        build(_cfg(tmp_path, codecs=("h266",)))
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "nothing")
