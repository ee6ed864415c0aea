"""`cfqa infer`, `cfqa features`, `cfqa models eval` on the shipped embedded model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cfqa_core.cli import main
from cfqa_core.data.scenes import render_scene
from cfqa_core.inference import extract_features, predict
from cfqa_core.models import EMBEDDED_DIR, load_model

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "model.safetensors").is_file(),
                                reason="embedded weights not trained yet")


@pytest.fixture(scope="module")
def model():
    return load_model("embedded")


@pytest.fixture()
def scene_png(tmp_path):
    scene = render_scene(20_000_123)
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(path)
    return scene, path


def test_infer_json_and_pngs(tmp_path, scene_png, capsys, model):
    scene, path = scene_png
    assert main(["infer", str(path), "--out", str(tmp_path / "out"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = predict(model, "cls", extract_features(model, "cls", [scene.image]))[0].top1
    assert result["class_id"] == expected
    assert result["class_name"] == model.meta.class_names[expected]
    seg_ids = np.load(result["seg_npy"])
    depth_m = np.load(result["depth_npy"])
    assert seg_ids.shape == (168, 168) and seg_ids.max() <= 10
    assert depth_m.dtype == np.float32 and 0.1 < np.median(depth_m) < 16.0  # metres
    # the PNG is the mask in the legend's colours, pixel for pixel
    seg_rgb = np.asarray(Image.open(result["seg_png"]))
    colours = {e["class_id"]: tuple(int(e["colour"][i:i + 2], 16) for i in (1, 3, 5)) for e in result["seg_legend"]}
    assert seg_rgb.shape == (168, 168, 3)
    for k in np.unique(seg_ids):
        assert (seg_rgb[seg_ids == k] == colours[int(k)]).all()
    fractions = {e["class_id"]: e["pixel_fraction"] for e in result["seg_legend"]}
    assert fractions[0] == pytest.approx((seg_ids == 0).mean(), abs=1e-4)
    assert [e["name"] for e in result["seg_legend"]] == list(model.meta.class_names)
    legend = result["depth_legend"]
    assert legend["near_m"] == pytest.approx(float(depth_m.min()), abs=1e-3)
    assert legend["far_m"] == pytest.approx(float(depth_m.max()), abs=1e-3)


def test_infer_outputs_at_the_input_size(tmp_path, scene_png, capsys, model):
    scene, _ = scene_png
    path = tmp_path / "wide.png"
    Image.fromarray(scene.image).resize((400, 300)).save(path)
    assert main(["infer", str(path), "--out", str(tmp_path / "out"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["size"] == {"width": 400, "height": 300}
    for key in ("seg_png", "depth_png"):
        assert Image.open(result[key]).size == (400, 300)
    assert np.load(result["seg_npy"]).shape == (300, 400)
    assert np.load(result["depth_npy"]).shape == (300, 400)
    # a near pixel is brighter than a far one in the depth PNG
    depth_m = np.load(result["depth_npy"])
    grey = np.asarray(Image.open(result["depth_png"]).convert("L")).astype(int)
    near, far = np.unravel_index(depth_m.argmin(), depth_m.shape), np.unravel_index(depth_m.argmax(), depth_m.shape)
    assert grey[near] > grey[far]


def test_features_from_image_and_pixels(tmp_path, scene_png, model):
    scene, path = scene_png
    out = tmp_path / "f.npy"
    assert main(["features", str(path), "--model", "embedded", "--block", "3", "--out", str(out)]) == 0
    f = np.load(out)
    assert f.shape == (1, 145, 128) and f.dtype == np.float32
    pixels = np.random.default_rng(0).standard_normal((2, 3, 168, 168)).astype(np.float32)
    np.save(tmp_path / "px.npy", pixels)
    # The torch path itself (the ONNX one is tested against it in test_edge_export_cache.py).
    assert main(["features", str(tmp_path / "px.npy"), "--block", "8", "--out", str(out),
                 "--backend", "torch"]) == 0
    with torch.inference_mode():
        ref = model.backbone.forward_until(torch.from_numpy(pixels), 8).numpy()
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["infer", "{tmp}/missing.png"], "image not found"),
        (["infer", "{tmp}/bad.png"], "cannot read image"),
        (["infer", "{tmp}/ok.png", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["infer", "{tmp}/ok.png", "--model", "{tmp}/bad.pth"], "cannot read weights"),
        (["features", "{tmp}/wrong.npy", "--block", "2", "--out", "{tmp}/o.npy"], "expected float32 pixels"),
        (["features", "{tmp}/ok.png", "--block", "12", "--out", "{tmp}/o.npy"], "split block 12"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "ok.png")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 10, 10), np.float64))
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_models_eval_json(capsys):
    assert main(["models", "eval", "--model", "embedded", "--split", "val", "--n", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("cls_top1", "seg_miou", "dpt_rmse", "dpt_rmse_mean_baseline", "n_images"):
        assert key in result
    assert result["n_images"] == 16
    assert result["dpt_rmse"] < result["dpt_rmse_mean_baseline"]
