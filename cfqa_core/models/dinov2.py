"""DINOv2 vision transformer, splittable at any block.

A faithful re-implementation of the architecture of Oquab et al., "DINOv2:
Learning Robust Visual Features without Supervision" (official code layout):
patch size 14, CLS token, optional register tokens, bicubic position
embedding interpolation with the official 0.1 offset, LayerScale, MLP or
SwiGLU feed-forward, pre-norm blocks and a final LayerNorm.

Split inference: ``forward_until(x, k)`` returns the tokens after block ``k``
(1-based count of blocks run, before the final norm); ``forward_from(t, k)``
runs blocks ``k+1 .. depth``. Parameter names match the official checkpoints
(``blocks.{i}.attn.qkv.weight`` ...), so official weights load directly.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cfqa_core.errors import ModelError


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a DINOv2 backbone."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    patch_size: int = 14
    img_size: int = 518
    num_register_tokens: int = 0
    ffn_layer: str = "mlp"  # "mlp" | "swiglu"
    init_values: float = 1.0  # LayerScale init
    layer_norm_eps: float = 1e-6
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


# Named configs: the official DINOv2 backbones (pretrain resolution 518)
# and the project's embedded default.
CONFIGS: dict[str, ViTConfig] = {
    "vits14": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vitb14": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vitl14": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    "vitg14": ViTConfig(embed_dim=1536, depth=40, num_heads=24, ffn_layer="swiglu"),
    "embedded": ViTConfig(embed_dim=128, depth=8, num_heads=4, img_size=168, init_values=0.1),
}


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            out = _explicit_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with plain batched matmuls, softmax in float32.

    For the short sequences of a ViT (<= a few hundred tokens), PyTorch's CPU
    bfloat16 SDPA kernels are 3.5-5.5x slower than this, forward plus backward
    (measured with torch 2.13 on AVX-512), which made attention ~40 % of a
    training step of the embedded model.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.float().softmax(-1).to(v.dtype) @ v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward as in DINOv2's ViT-g (hidden width rounded to 8)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)`` in one pass: no scaled temporary, one kernel instead of two."""
        return torch.addcmul(residual, x, self.gamma)


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        hidden = int(dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(dim, cfg.num_heads)
        self.ls1 = LayerScale(dim, cfg.init_values)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = SwiGLUFFN(dim, hidden) if cfg.ffn_layer == "swiglu" else Mlp(dim, hidden)
        self.ls2 = LayerScale(dim, cfg.init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ls1.add_to(x, self.attn(self.norm1(x)))
        return self.ls2.add_to(x, self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 backbone with split-inference entry points."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.ffn_layer not in ("mlp", "swiglu"):
            raise ModelError(f"unknown ffn_layer '{cfg.ffn_layer}' (expected mlp or swiglu)")
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.num_register_tokens = cfg.num_register_tokens
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d)) if cfg.num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # used by DINOv2's iBOT pretraining only
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    def interpolate_pos_encoding(self, num_patches: int, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w input, bicubic-resized as the official code does."""
        n = self.pos_embed.shape[1] - 1
        if num_patches == n and h == w:
            return self.pos_embed
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        h0, w0 = h // self.patch_size, w // self.patch_size
        m = int(math.sqrt(n))
        kwargs: dict = {}
        if self.cfg.interpolate_offset:
            kwargs["scale_factor"] = (
                float(h0 + self.cfg.interpolate_offset) / m,
                float(w0 + self.cfg.interpolate_offset) / m,
            )
        else:
            kwargs["size"] = (h0, w0)
        patch_pos = F.interpolate(
            patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.cfg.interpolate_antialias,
            **kwargs,
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch-embed an N x 3 x H x W batch and add CLS, positions and registers."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ModelError(f"expected pixels of shape N x 3 x H x W, got {tuple(x.shape)}")
        _, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ModelError(f"input {h}x{w} is not a multiple of the patch size {self.patch_size}")
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens.shape[1] - 1, h, w)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((tokens[:, :1], regs, tokens[:, 1:]), dim=1)
        return tokens

    def _check_block(self, k: int) -> None:
        if not 0 <= k <= self.depth:
            raise ModelError(f"split block {k} outside 0..{self.depth}")

    def forward_until(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Tokens after block ``k`` (0 = embeddings only), before the final norm."""
        self._check_block(k)
        t = self.prepare_tokens(x)
        for blk in self.blocks[:k]:
            t = blk(t)
        return t

    def forward_from(self, tokens: torch.Tensor, k: int, *, norm: bool = True) -> torch.Tensor:
        """Continue from the tokens after block ``k`` to the end (final norm applied by default)."""
        self._check_block(k)
        expected = self.cfg.embed_dim
        # (not while a trace records: it cannot keep a Python check; the traced caller checks shapes first)
        if not torch.jit.is_tracing() and (tokens.ndim != 3 or tokens.shape[-1] != expected):
            raise ModelError(f"expected tokens N x T x {expected}, got {tuple(tokens.shape)}")
        for blk in self.blocks[k:]:
            tokens = blk(tokens)
        return self.norm(tokens) if norm else tokens

    def intermediate(self, x: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor]:
        """Outputs (pre-norm) after each of ``blocks`` (1-based), in the order given."""
        wanted = sorted(set(blocks))
        for k in wanted:
            self._check_block(k)
        out: dict[int, torch.Tensor] = {}
        t = self.prepare_tokens(x)
        if 0 in wanted:
            out[0] = t
        for i, blk in enumerate(self.blocks[: max(wanted, default=0)], start=1):
            t = blk(t)
            if i in wanted:
                out[i] = t
        return [out[k] for k in blocks]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All blocks and the final norm: N x (1+R+P) x D."""
        return self.norm(self.forward_until(x, self.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def split_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS token N x D, patch tokens N x P x D) of a token sequence; registers dropped."""
        return tokens[:, 0], tokens[:, self.num_prefix_tokens :]


def build_backbone(config: str | ViTConfig, **overrides) -> DinoVisionTransformer:
    """A backbone from a named config (``vits14`` ... ``vitg14``, ``embedded``) or a ViTConfig."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ModelError(f"unknown model config '{config}' (known: {', '.join(CONFIGS)})")
        config = CONFIGS[config]
    if overrides:
        config = ViTConfig(**{**config.to_dict(), **overrides})
    return DinoVisionTransformer(config)
