"""Perceiver Resampler bridges: Flamingo's, and its Qwen-VL and InternLM-XComposer variants."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from .bridges import Bridge, register_bridge
from .common import _as_clips, _Attention, _branch, _BranchProjection, _ffn, _infer_grid, _PresetMixin

__all__ = ["ResamplerBridge", "sincos_2d"]


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """MAE-style 1-D sin-cos table: ``pos [N]`` -> ``[N, dim]`` (dim even)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2.0))
    out = pos.float()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], 1)


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Qwen-VL / MAE 2-D sin-cos table ``[h*w, dim]``: half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.cat([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], 1)


class _ResamplerLayer(nn.Module):
    def __init__(self, width: int, heads: int, ffn_mult: int):
        super().__init__()
        self.norm_media = nn.LayerNorm(width)
        self.norm_latents = nn.LayerNorm(width)
        self.attn = _Attention(width, heads, bias=False)
        self.ffn = nn.Sequential(nn.LayerNorm(width), _ffn(width, ffn_mult)) if ffn_mult else None

    def forward(self, latents, media, pos_q, pos_k, kv_include_latents: bool):
        m, lat = self.norm_media(media), self.norm_latents(latents)
        keys, values = m + pos_k, m
        if kv_include_latents:
            keys = torch.cat([keys, lat + pos_q], 1)
            values = torch.cat([values, lat], 1)
        latents = latents + self.attn(lat + pos_q, keys, values)
        if self.ffn is not None:
            latents = latents + self.ffn(latents)
        return latents


@register_bridge("resampler")
class ResamplerBridge(_PresetMixin, Bridge):
    """Flamingo's Perceiver Resampler (Alayrac et al., 2022): ``num_latents`` learned latents.

    Each layer: latents attend over ``concat(media tokens, latents)`` (pre-LN, no biases as in
    the reference), residual, then a residual FFN (LN - Linear(x4) - GELU - Linear); a final
    LayerNorm and a ``Linear(width -> llm_dim)`` turn the latents into LLM tokens (Flamingo
    feeds its gated cross-attention instead; we feed the LLM input, as most successors do).
    Video / audio clips are flattened into one key sequence, each clip's tokens plus a learned
    time embedding (``max_clips`` of them; an image is clip 0), so any number of clips or
    tokens becomes ``num_latents`` tokens. Widths: per-branch ``LayerNorm + Linear`` into
    ``width`` before the shared layers.

    Presets:

    * ``flamingo``: 64 latents, depth 6, 8 heads, width 1024 (OpenFlamingo's ViT-L setting).
    * ``qwen_vl`` (Bai et al., 2023): one cross-attention layer, 256 queries, width = llm_dim
      (32 heads of 128 at 4096), 2-D sin-cos positions added to queries (16x16 grid) and to
      keys (each clip's patch grid; CLS gets none), keys/values are media tokens only, no
      FFN. Kept from us: the residual around attention, the time embeddings for clips, a
      final ``Linear`` (Qwen-VL's ``proj``).
    * ``internlm_xcomposer`` (Zhang et al., 2023): its "perceive sampler" is a BLIP-2
      Q-Former with 64 queries; here approximated by 64 latents, depth 6 (the Q-Former's 6
      cross-attention layers), width 768, 12 heads.
    """

    feature_kind = "tokens"
    DEFAULTS = {
        "width": 1024, "num_latents": 64, "depth": 6, "heads": 8, "ffn_mult": 4,
        "kv_include_latents": True, "pos_embed": "none", "max_clips": 15,
    }
    PRESETS = {
        "flamingo": {},
        "qwen_vl": {"width": "llm_dim", "num_latents": 256, "depth": 1, "heads": 32, "ffn_mult": 0,
                    "kv_include_latents": False, "pos_embed": "sincos2d"},
        "internlm_xcomposer": {"width": 768, "num_latents": 64, "depth": 6, "heads": 12},
    }

    @register_to_config
    def __init__(
        self,
        vision_dim: int | None = 1280,
        audio_dim: int | None = 768,
        llm_dim: int = 4096,
        width: int | str | None = None,
        num_latents: int | None = None,
        depth: int | None = None,
        heads: int | None = None,
        ffn_mult: int | None = None,
        kv_include_latents: bool | None = None,
        pos_embed: str | None = None,
        max_clips: int | None = None,
        vision_grid: Sequence[int] = (16, 16),
        audio_grid: Sequence[int] = (12, 19),
        preset: str | None = None,
    ):
        super().__init__()
        cfg = self._resolve(preset, dict(
            width=width, num_latents=num_latents, depth=depth, heads=heads, ffn_mult=ffn_mult,
            kv_include_latents=kv_include_latents, pos_embed=pos_embed, max_clips=max_clips, llm_dim=llm_dim))
        if cfg["pos_embed"] not in ("none", "sincos2d"):
            raise ValueError(f"pos_embed must be 'none' or 'sincos2d', got {cfg['pos_embed']!r}")
        w = cfg["width"]
        self.in_proj = _BranchProjection({"vision": vision_dim, "audio": audio_dim}, w)
        self.latents = nn.Parameter(torch.randn(cfg["num_latents"], w) * 0.02)
        self.time_embed = nn.Parameter(torch.randn(cfg["max_clips"], w) * 0.02)
        self.layers = nn.ModuleList(_ResamplerLayer(w, cfg["heads"], cfg["ffn_mult"]) for _ in range(cfg["depth"]))
        self.norm_out = nn.LayerNorm(w)
        self.out = nn.Linear(w, llm_dim)

    def num_tokens(self, modality: str, feature_shape=None) -> int:
        _branch(modality)
        return self.config.num_latents

    def _positions(self, n: int, modality: str, device, dtype):
        cfg = self.config
        w = cfg.width
        if cfg.pos_embed != "sincos2d":
            return torch.zeros((), device=device, dtype=dtype), torch.zeros((), device=device, dtype=dtype)
        s = math.isqrt(cfg.num_latents)
        qh, qw = (s, s) if s * s == cfg.num_latents else (1, cfg.num_latents)
        pos_q = sincos_2d(w, qh, qw)
        grid = cfg.vision_grid if _branch(modality) == "vision" else cfg.audio_grid
        h, gw, cls = _infer_grid(n, grid, strict=False)
        pos_k = sincos_2d(w, h, gw)
        if cls:
            pos_k = torch.cat([torch.zeros(1, w), pos_k])
        return pos_q.to(device, dtype), pos_k.to(device, dtype)

    def forward(self, features, modality, instruction=None, instruction_mask=None):
        x = _as_clips(features, modality)
        b, t, n, _ = x.shape
        if t > self.config.max_clips:
            raise ValueError(f"{t} {modality} clips but only max_clips={self.config.max_clips} time embeddings")
        x = self.in_proj(x, modality)
        pos_q, pos_k = self._positions(n, modality, x.device, x.dtype)
        x = (x + self.time_embed[:t, None].to(x.dtype)).reshape(b, t * n, -1)
        if pos_k.ndim:  # the same patch positions for every clip, added to keys only
            pos_k = pos_k.repeat(t, 1)
        latents = self.latents.expand(b, -1, -1)
        for layer in self.layers:
            latents = layer(latents, x, pos_q, pos_k, self.config.kv_include_latents)
        return self.out(self.norm_out(latents))
