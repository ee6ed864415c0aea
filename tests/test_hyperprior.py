"""The torch hyperprior models: layers, entropy models, gains, training step, ONNX export."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from cfqa_core.codecs.hyperprior import (  # noqa: E402
    GDN,
    STRIDE,
    EntropyBottleneck,
    FixedGDN,
    GaussianConditional,
    HyperpriorConfig,
    RateDistortion,
    build_model,
    export_codec,
    load_deploy_transforms,
)
from cfqa_core.errors import DataError, ModelError  # noqa: E402

SMALL = dict(N=16, M=24, Nh=8, lambdas=(0.05, 0.005, 0.0005))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _smooth_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Frames in [0, 1] with column-wise statistics, like packed features."""
    rng = np.random.default_rng(seed)
    col_mean = rng.uniform(0.3, 0.7, w)
    col_std = rng.uniform(0.01, 0.1, w)
    x = rng.normal(0, 1, (n, h, w)).cumsum(axis=1) / np.sqrt(np.arange(1, h + 1))[None, :, None]
    return np.clip(col_mean + col_std * x, 0, 1).astype(np.float32)


def test_gdn_and_fixed_gdn_agree_and_invert_roughly():
    gdn, igdn = GDN(6), GDN(6, inverse=True)
    with torch.no_grad():
        gdn.gamma.add_(0.05 * torch.rand_like(gdn.gamma))
    x = torch.randn(2, 6, 9, 7)
    fixed = FixedGDN.from_gdn(gdn)
    assert torch.equal(gdn(x), fixed(x))
    beta, gamma = gdn.effective()
    manual = x / torch.sqrt(beta.view(1, -1, 1, 1) + torch.einsum("ij,bjhw->bihw", gamma[:, :, 0, 0], x * x))
    assert torch.allclose(gdn(x), manual, atol=1e-6)
    # Inverse GDN with the same parameters undoes GDN to first order for small inputs.
    igdn.load_state_dict(gdn.state_dict())
    small = 0.01 * x
    assert torch.allclose(igdn(gdn(small)), small, atol=1e-6)


@pytest.mark.parametrize("variant", ["scale", "meanscale"])
@pytest.mark.parametrize("hw", [(64, 64), (192, 128), (128, 320)])
def test_fully_convolutional_shapes(variant, hw):
    model = build_model(HyperpriorConfig(variant=variant, **SMALL)).eval()
    x = torch.rand(1, 1, *hw)
    out = model(x, 1)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (1, SMALL["M"], hw[0] // 16, hw[1] // 16)
    assert out["likelihoods"]["z"].shape == (1, SMALL["Nh"], hw[0] // STRIDE, hw[1] // STRIDE)


def test_gaussian_conditional_likelihoods_sum_to_one():
    gc = GaussianConditional().eval()
    values = torch.arange(-400, 401, dtype=torch.float32).view(1, 1, -1, 1)
    for scale, mean in [(0.05, 0.0), (0.3, 0.2), (2.0, -1.3), (40.0, 5.0)]:
        lik = gc.likelihood(values, torch.full_like(values, scale), torch.full_like(values, mean))
        assert float(lik.sum()) == pytest.approx(1.0, abs=1e-4)
    # The scale is lower-bounded at 0.11: zero gets almost all the mass, never more than 1.
    lik0 = gc.likelihood(torch.zeros(1), torch.zeros(1))
    assert 0.99 < float(lik0) <= 1.0


def test_entropy_bottleneck_tables_are_normalised_and_centred():
    eb = EntropyBottleneck(5)
    with torch.no_grad():  # give the channels different locations and widths
        eb.biases[-1].copy_(torch.linspace(-3, 3, 5).view(5, 1, 1))
        eb.matrices[0].mul_(torch.linspace(0.5, 2.0, 5).view(5, 1, 1))
    tables = eb.update()
    assert tables["pmfs"].shape[0] == 5
    for c in range(5):
        n = tables["lengths"][c]
        pmf = tables["pmfs"][c]
        assert pmf[:n].sum() == pytest.approx(1.0, abs=1e-6)
        assert np.all(pmf[n:] == 0)
        assert tables["offsets"][c] <= 0 <= tables["offsets"][c] + n - 1
    # The median really is where the CDF crosses one half.
    logits = eb.logits_cdf(torch.from_numpy(tables["medians"]).view(5, 1, 1))
    assert torch.allclose(torch.sigmoid(logits).view(-1), torch.full((5,), 0.5), atol=1e-4)
    assert torch.equal(eb.medians, torch.from_numpy(tables["medians"]))
    # Eval likelihoods of integers around the median agree with the table.
    eb.eval()
    c = 2
    sym = torch.arange(int(tables["offsets"][c]), int(tables["offsets"][c] + tables["lengths"][c]))
    z = torch.zeros(1, 5, 1, len(sym))
    z[0, c, 0] = sym.float() + eb.medians[c]
    _, lik = eb(z)
    inner = lik[0, c, 0, 1:-1].detach().double().numpy()
    assert np.allclose(inner, tables["pmfs"][c, 1 : len(sym) - 1], rtol=1e-4, atol=1e-9)


def test_rate_distortion_loss_matches_its_definition():
    lambdas = (0.1, 0.01)
    crit = RateDistortion(lambdas)
    x = torch.rand(2, 1, 8, 8)
    out = {"x_hat": x + 0.1, "likelihoods": {"y": torch.full((2, 3, 2, 2), 0.5), "z": torch.full((2, 1, 1, 1), 0.25)}}
    index = torch.tensor([0, 1])
    loss = crit(out, x, index)
    bpp = (12 * 1 + 1 * 2) / 64  # bits per frame element
    mse = 0.01
    expected = np.mean([lam * 255**2 * mse + bpp for lam in lambdas])
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert crit.terms["bpp"] == pytest.approx(bpp, rel=1e-6)


def test_config_validation():
    with pytest.raises(ModelError):
        HyperpriorConfig(variant="context")
    with pytest.raises(ModelError):
        HyperpriorConfig(lambdas=(0.001, 0.01))  # not ordered best quality first
    with pytest.raises(ModelError):
        HyperpriorConfig(lambdas=(0.01, -1.0))


def test_training_reduces_the_rd_loss_and_orders_the_rates():
    from cfqa_core.training.train_codec import CodecTrainConfig, FeatureData, fit

    frames = (_smooth_frames(12, 128, 64) * 1023).round().astype(np.uint16)
    data = FeatureData({"cls": list(frames)}, {}, {"cls": (0.0, 1.0)}, bit_depth=10)
    cfg = CodecTrainConfig(task="cls", steps=90, batch=4, crop=64, lr=3e-3, warmup=5, threads=1, **SMALL)
    model, log = fit(cfg, data, progress=False)
    first = np.mean([r["loss"] for r in log[:1]])
    last = np.mean([r["loss"] for r in log[-2:]])
    assert last < 0.7 * first
    # Larger lambda (rate point 0) costs more bits than the smallest (the distortion
    # ordering needs longer training; the shipped codecs are checked for it).
    x = torch.from_numpy(_smooth_frames(2, 128, 64, seed=5)[:, None])
    bits = []
    for k in (0, 1, 2):
        out = model.quantized_forward(x, k)
        bits.append(sum(float(-torch.log2(v).sum()) for v in out["likelihoods"].values()))
    assert bits[0] > bits[1] > bits[2]


def test_train_config_rejects_bad_values():
    from cfqa_core.training.train_codec import CodecTrainConfig, codec_name

    assert codec_name("meanscale", "multi") == "mshyperprior-multi"
    with pytest.raises(DataError):
        CodecTrainConfig(task="video")
    with pytest.raises(DataError):
        CodecTrainConfig(crop=100)
    assert CodecTrainConfig(lambdas=(0.001, 0.1)).lambdas == (0.1, 0.001)


@pytest.mark.parametrize("variant", ["scale", "meanscale"])
def test_export_round_trip_and_dynamic_shapes(tmp_path, variant):
    model = build_model(HyperpriorConfig(variant=variant, **SMALL))
    meta = export_codec(model, tmp_path, {"name": "t"})
    assert meta["config"]["variant"] == variant and meta["name"] == "t"
    for name in ("g_a", "h_a", "h_s", "g_s"):
        proto = onnx.load(str(tmp_path / f"{name}.onnx"))
        halves = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert halves, f"{name}: conv weights should be stored as float16"
    modules = load_deploy_transforms(tmp_path, model.cfg)
    deploy = model.deploy_transforms()
    for name in deploy:
        for (k1, v1), (k2, v2) in zip(deploy[name].state_dict().items(), modules[name].state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2), f"{name}.{k1} changed in the ONNX round trip"
    sess = ort.InferenceSession(str(tmp_path / "g_a.onnx"), providers=["CPUExecutionProvider"])
    for h, w in [(64, 64), (256, 128), (128, 448)]:
        x = np.random.default_rng(h).random((1, 1, h, w), dtype=np.float32)
        y = sess.run(None, {"x": x})[0]
        ref = modules["g_a"](torch.from_numpy(x)).detach().numpy()
        assert y.shape == (1, SMALL["M"], h // 16, w // 16)
        assert np.allclose(y, ref, atol=1e-4)
    # The exported state is exactly what the codec computes: float16 conv weights.
    w = model.g_a[0].weight
    assert torch.equal(w, w.half().float())


def test_loading_onnx_into_the_wrong_architecture_fails(tmp_path):
    model = build_model(HyperpriorConfig(variant="scale", **SMALL))
    export_codec(model, tmp_path)
    with pytest.raises(ModelError, match="does not match"):
        load_deploy_transforms(tmp_path, HyperpriorConfig(variant="scale", N=8, M=24, Nh=8, lambdas=(0.1,)))
    (tmp_path / "h_s.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot read"):
        load_deploy_transforms(tmp_path, model.cfg)


def test_initial_gains_follow_lambda():
    model = build_model(HyperpriorConfig(**SMALL))
    g = model.gain_arrays()
    lam = np.array(SMALL["lambdas"])
    ratio = g["gain_y"][:, 0] / g["gain_y"][-1, 0]
    assert np.allclose(ratio, np.sqrt(lam / lam[-1]), rtol=1e-5)
    assert np.allclose(g["gain_y"] * g["igain_y"], 1.0, rtol=1e-6)
    assert math.isclose(float(g["gain_z"].mean()), 1.0)
