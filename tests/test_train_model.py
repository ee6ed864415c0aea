"""The joint training loop of ``cfqa train``, on a handful of scenes."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from cfqa_core.models import load_model  # noqa: E402
from cfqa_core.training.train_model import TrainConfig, train  # noqa: E402

TINY = dict(n_train=8, n_val=4, steps=3, batch=4, low_res=56, low_res_fraction=0.67, warmup=1,
            threads=1, workers=1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CFQA_CACHE_DIR", str(tmp_path / "cache"))


def test_training_is_reproducible_from_the_seed(tmp_path):
    a = train(TrainConfig(**TINY, bf16=False), tmp_path / "a", progress=False)
    b = train(TrainConfig(**TINY, bf16=False), tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a["metrics_val"] == b["metrics_val"]
    c = train(TrainConfig(**TINY, bf16=False, seed=1), tmp_path / "c", progress=False)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "c" / "model.safetensors").read_bytes()
    assert c["train_config"]["seed"] == 1


def test_progressive_resizing_and_saved_model(tmp_path):
    report = train(TrainConfig(**TINY, bf16=True), tmp_path / "m", progress=False)
    res = [rec["res"] for rec in report["loss_log"]]
    assert res == [56, 168]  # step 0 at the low size, the last step at the native 168 px
    assert all(np.isfinite(rec["loss"]) for rec in report["loss_log"])
    saved = json.loads((tmp_path / "m" / "training.json").read_text())
    assert saved["train_config"]["bf16"] is True and saved["metrics_val"]["n_images"] == 4
    model = load_model(str(tmp_path / "m"))
    assert set(model.meta.feature_ranges) == {"cls", "seg", "dpt"}
    assert len(model.meta.feature_ranges["dpt"]) == 4  # one range per depth block
