"""Checkpoint filters: map foreign DINOv2 weight layouts onto ours.

Supported layouts:
- official ``dinov2_vitX14[_reg4]_pretrain.pth`` (ours is the same naming;
  ViT-g's chunked ``blocks.{chunk}.{i}.`` names are flattened);
- Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` safetensors
  (separate q/k/v projections are fused into ``qkv``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from cfqa_core.errors import ModelError
from cfqa_core.models.dinov2 import DinoVisionTransformer, ViTConfig

_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")


def filter_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DINOv2 names -> ours (drops a ``backbone.``/``module.`` prefix, un-chunks blocks)."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone.", "teacher.backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        key = _CHUNKED.sub(r"blocks.\1.", key)
        out[key] = value
    return out


_HF_LAYER = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
}


def filter_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face Dinov2Model names -> ours."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("dinov2.")
        if key.startswith("embeddings."):
            name = key[len("embeddings.") :]
            mapped = {
                "cls_token": "cls_token",
                "mask_token": "mask_token",
                "position_embeddings": "pos_embed",
                "register_tokens": "register_tokens",
                "patch_embeddings.projection.weight": "patch_embed.proj.weight",
                "patch_embeddings.projection.bias": "patch_embed.proj.bias",
            }.get(name)
            if mapped is None:
                raise ModelError(f"unexpected Hugging Face key '{key}'")
            out[mapped] = value.reshape(1, -1) if mapped == "mask_token" else value
        elif key.startswith("encoder.layer."):
            idx, rest = key[len("encoder.layer.") :].split(".", 1)
            m = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
            if m:
                qkv.setdefault((int(idx), m.group(2)), {})[m.group(1)] = value
                continue
            stem, _, leaf = rest.rpartition(".")
            if rest in _HF_LAYER:  # LayerScale parameters have no .weight leaf
                out[f"blocks.{idx}.{_HF_LAYER[rest]}"] = value
            elif stem in _HF_LAYER:
                out[f"blocks.{idx}.{_HF_LAYER[stem]}.{leaf}"] = value
            else:
                raise ModelError(f"unexpected Hugging Face key '{key}'")
        elif key.startswith("layernorm."):
            out["norm." + key[len("layernorm.") :]] = value
        else:
            raise ModelError(f"unexpected Hugging Face key '{key}'")
    for (idx, leaf), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ModelError(f"layer {idx}: incomplete q/k/v {leaf} in Hugging Face checkpoint")
        out[f"blocks.{idx}.attn.qkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def infer_config(state: dict[str, torch.Tensor], img_size: int | None = None) -> ViTConfig:
    """Derive a ViTConfig from the shapes of an (our-named) state dict."""
    try:
        dim = state["cls_token"].shape[-1]
        n_pos = state["pos_embed"].shape[1] - 1
        patch = state["patch_embed.proj.weight"].shape[-1]
    except KeyError as exc:
        raise ModelError(f"checkpoint lacks '{exc.args[0]}': not a DINOv2 backbone") from None
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    swiglu = "blocks.0.mlp.w12.weight" in state
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if not swiglu else 4 * dim
    regs = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    grid = int(round(n_pos**0.5))
    return ViTConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // 64),
        mlp_ratio=hidden / dim,
        patch_size=patch,
        img_size=img_size or grid * patch,
        num_register_tokens=regs,
        ffn_layer="swiglu" if swiglu else "mlp",
    )


def load_backbone_state(model: DinoVisionTransformer, state: dict[str, torch.Tensor]) -> None:
    """Strict load with one clear error listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped keys: {'; '.join(shapes)}")
    if problems:
        raise ModelError("weights do not match the backbone: " + " | ".join(problems))
    model.load_state_dict(state, strict=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt or .safetensors file (CPU)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad weights file
        raise ModelError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors")
    return state


def hf_folder_config(folder: Path) -> dict:
    """The ``config.json`` of a Hugging Face DINOv2 folder."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{folder} has no config.json: not a Hugging Face model folder")
    return json.loads(cfg_path.read_text())


def backbone_from_hf_folder(folder: str | Path) -> DinoVisionTransformer:
    """Build and load a backbone from a local Hugging Face Dinov2Model folder."""
    folder = Path(folder)
    hf = hf_folder_config(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelError(f"{folder} has no .safetensors or pytorch_model.bin weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_state_dict(f))
    cfg = ViTConfig(
        embed_dim=hf["hidden_size"],
        depth=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        mlp_ratio=float(hf.get("mlp_ratio", 4)),
        patch_size=hf.get("patch_size", 14),
        img_size=hf.get("image_size", 518),
        num_register_tokens=hf.get("num_register_tokens", 0),
        ffn_layer="swiglu" if hf.get("use_swiglu_ffn") else "mlp",
        layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
    )
    model = DinoVisionTransformer(cfg)
    load_backbone_state(model, filter_hf(state))
    return model


def backbone_from_official(path: str | Path, img_size: int | None = None) -> DinoVisionTransformer:
    """Build and load a backbone from an official DINOv2 ``.pth`` checkpoint."""
    state = filter_official(read_state_dict(path))
    model = DinoVisionTransformer(infer_config(state, img_size=img_size))
    load_backbone_state(model, state)
    return model
