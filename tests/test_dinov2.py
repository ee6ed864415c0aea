"""The backbone against Hugging Face's independent DINOv2 implementation, and split consistency."""
from __future__ import annotations

import pytest
import torch

from cfqa_core.errors import ModelError
from cfqa_core.models import CONFIGS, build_backbone
from cfqa_core.models.checkpoint import (
    backbone_from_hf_folder,
    backbone_from_official,
    filter_hf,
    load_backbone_state,
)
from cfqa_core.models.dinov2 import DinoVisionTransformer, ViTConfig

transformers = pytest.importorskip("transformers")


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _hf_model(swiglu: bool = False, registers: int = 0):
    common = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=56, patch_size=14,
                  use_swiglu_ffn=swiglu, layer_norm_eps=1e-6)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    _randomise(model, 0)
    return model.eval()


@pytest.mark.parametrize("swiglu,registers", [(False, 0), (True, 0), (False, 4)])
def test_matches_hugging_face_hidden_states(tmp_path, swiglu, registers):
    hf = _hf_model(swiglu, registers)
    hf.save_pretrained(tmp_path)  # a real local HF folder: config.json + model.safetensors
    ours = backbone_from_hf_folder(tmp_path).eval()
    assert ours.cfg.ffn_layer == ("swiglu" if swiglu else "mlp")
    assert ours.num_register_tokens == registers
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        for k, hidden in enumerate(ref.hidden_states):
            diff = (ours.forward_until(x, k) - hidden).abs().max().item()
            assert diff <= 1e-5, f"block {k}: max abs diff {diff}"
        assert (ours.forward_features(x) - ref.last_hidden_state).abs().max().item() <= 1e-5


def test_position_embedding_interpolation_matches_hugging_face(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path)
    official = backbone_from_hf_folder(tmp_path).eval()
    # Hugging Face resizes to the target grid; the official code scales by (n + 0.1) / m.
    resize = DinoVisionTransformer(ViTConfig(**{**official.cfg.to_dict(), "interpolate_offset": 0.0})).eval()
    resize.load_state_dict(official.state_dict())
    x = torch.randn(1, 3, 84, 70, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        assert resize.forward_features(x).shape == (1, 1 + 6 * 5, 64)
        assert (resize.forward_features(x) - ref).abs().max().item() <= 1e-5
        offset_diff = (official.forward_features(x) - ref).abs().max().item()
    assert 0 < offset_diff < 0.05


@pytest.mark.parametrize("config", ["embedded"])
def test_split_consistency_every_block(config):
    torch.manual_seed(0)
    model = build_backbone(config).eval()
    _randomise(model, 3)
    x = torch.randn(2, 3, model.cfg.img_size, model.cfg.img_size)
    with torch.no_grad():
        full = model.forward_features(x)
        for k in range(model.depth + 1):
            assert torch.equal(model.forward_from(model.forward_until(x, k), k), full) or torch.allclose(
                model.forward_from(model.forward_until(x, k), k), full, atol=1e-6
            ), k
        inter = model.intermediate(x, [2, 4, 6, 8])
        for k, t in zip([2, 4, 6, 8], inter):
            assert torch.allclose(t, model.forward_until(x, k), atol=1e-6)


def test_named_configs_match_official_sizes():
    vitg = CONFIGS["vitg14"]
    assert (vitg.embed_dim, vitg.depth, vitg.ffn_layer) == (1536, 40, "swiglu")
    model = DinoVisionTransformer(ViTConfig(embed_dim=1536, depth=1, num_heads=24, ffn_layer="swiglu"))
    assert model.blocks[0].mlp.w12.weight.shape == (2 * 4096, 1536)  # official ViT-g hidden width
    assert model.pos_embed.shape == (1, 1370, 1536)  # 37 x 37 patches + CLS at 518 px


def test_official_checkpoint_layout_with_chunked_blocks(tmp_path):
    src = DinoVisionTransformer(ViTConfig(embed_dim=64, depth=4, num_heads=1, img_size=56, ffn_layer="swiglu"))
    _randomise(src, 5)
    # ViT-g's official checkpoint stores blocks in chunks: blocks.<chunk>.<index>.*
    state = {}
    for k, v in src.state_dict().items():
        if k.startswith("blocks."):
            idx = int(k.split(".")[1])
            k = f"blocks.{idx // 2}.{idx}." + k.split(".", 2)[2]
        state[k] = v
    path = tmp_path / "dinov2_vitx14_pretrain.pth"
    torch.save(state, path)
    loaded = backbone_from_official(path).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(loaded.forward_features(x), src.eval().forward_features(x), atol=1e-6)


def test_mismatched_weights_name_the_keys():
    model = DinoVisionTransformer(ViTConfig(embed_dim=64, depth=2, num_heads=1, img_size=56))
    state = dict(model.state_dict())
    state.pop("norm.weight")
    state["blocks.0.extra"] = torch.zeros(1)
    state["cls_token"] = torch.zeros(1, 1, 32)
    with pytest.raises(ModelError) as err:
        load_backbone_state(model, state)
    msg = str(err.value)
    assert "norm.weight" in msg and "blocks.0.extra" in msg and "cls_token" in msg
    assert "\n" not in msg


def test_unknown_hf_key_is_an_error():
    with pytest.raises(ModelError, match="pooler.dense.weight"):
        filter_hf({"pooler.dense.weight": torch.zeros(1)})


def test_bad_inputs():
    model = build_backbone("embedded")
    with pytest.raises(ModelError, match="split block 9"):
        model.forward_until(torch.zeros(1, 3, 168, 168), 9)
    with pytest.raises(ModelError, match="multiple of the patch size"):
        model.forward_until(torch.zeros(1, 3, 100, 100), 1)
    with pytest.raises(ModelError, match="N x 3 x H x W"):
        model.forward_until(torch.zeros(3, 168, 168), 1)
    with pytest.raises(ModelError, match="unknown model config"):
        build_backbone("vitz14")


def test_explicit_attention_matches_sdpa():
    from cfqa_core.models.dinov2 import _explicit_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 37, 16, generator=g) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert (_explicit_attention(q, k, v) - expected).abs().max().item() <= 1e-5


def test_bf16_autocast_forward_tracks_float32():
    # Under CPU bf16 autocast the blocks take the explicit attention path; the
    # tokens must stay close to the float32 (SDPA) forward.
    torch.manual_seed(0)
    model = DinoVisionTransformer(ViTConfig(embed_dim=64, depth=3, num_heads=4, img_size=56)).eval()
    _randomise(model, 1)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = model.forward_until(x, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.forward_until(x, 3).float()
    rel = ((low - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.02
