"""Pieces the token bridges share: ImageBind branches, clip and grid handling, attention, presets.

Conventions every bridge in ``projections/`` follows (the interface is
:class:`~projections.bridges.Bridge`):

* ``feature_kind``: ``"pooled"`` (ImageBind's pooled vector ``[B, E]``), ``"tokens"``
  (ImageBind token sequences: image ``[B, 257, vision_dim]``, video
  ``[B, clips, 257, vision_dim]``, audio ``[B, clips, 229, audio_dim]``), ``"tiles"``
  (per-tile features, see :class:`~projections.tiled.TiledBridge`) or ``"pixels"`` (raw
  ``[B, 3, H, W]``).
* ``num_tokens(modality, feature_shape=None)``: LLM tokens one medium becomes.
* ``forward(features, modality, instruction=None, instruction_mask=None) -> [B, n, llm_dim]``.

Widths. Image and video tokens come from ImageBind's vision trunk (``vision_dim``, 1280 at
real scale), audio tokens from its audio trunk (``audio_dim``, 768): every token bridge has
one input projection per *branch* (``"vision"`` for image+video, ``"audio"``) into its own
width, then a shared core. Pass ``audio_dim=None`` to build a vision-only bridge.

Token geometry. ImageBind gives a CLS token followed by a patch grid: ``vision_grid``
(16x16 at 224 px) and ``audio_grid`` (12x19 for the 128x204 fbank). Fixed-count bridges
read the expected number of clips from ``video_clips`` (15 = 5 clips x 3 crops, as
ImageBind's video preprocessing gives) and ``audio_clips`` (3), and refuse other counts.

Presets. Classes with a ``PRESETS`` dict take ``preset="name"``; every field left at
``None`` is filled from the preset, then from the class ``DEFAULTS``. The resolved values
are what ``config.json`` records, so ``load_bridge`` rebuilds the same module.
``Cls.from_preset(name, **overrides)`` is a shorthand.

The underscored names are internal to ``projections``: the bridge modules import them from here.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _branch(modality: str) -> str:
    if modality in ("image", "video"):
        return "vision"
    if modality == "audio":
        return "audio"
    raise ValueError(f"unknown modality {modality!r}; bridges take 'image', 'video' or 'audio'")


def _as_clips(features: torch.Tensor, modality: str) -> torch.Tensor:
    """ImageBind tokens -> ``[B, clips, n, D]`` (an image is one clip)."""
    if modality == "image":
        if features.ndim == 3:
            return features.unsqueeze(1)
        if features.ndim == 4 and features.shape[1] == 1:
            return features
        raise ValueError(f"image tokens must be [B, n, D] (or [B, 1, n, D]), got {tuple(features.shape)}")
    _branch(modality)
    if features.ndim != 4:
        raise ValueError(f"{modality} tokens must be [B, clips, n, D], got {tuple(features.shape)}")
    return features


def _pair(v) -> tuple[int, int]:
    a, b = v
    return int(a), int(b)


def _infer_grid(n: int, grid: Sequence[int], strict: bool = True) -> tuple[int, int, bool]:
    """``(h, w, has_cls)`` for ``n`` tokens: the configured grid (+CLS) first, then a square grid.

    Non-strict callers (positional embeddings) fall back to a 1 x n strip without CLS.
    """
    h, w = _pair(grid)
    if n == h * w + 1:
        return h, w, True
    if n == h * w:
        return h, w, False
    s = math.isqrt(max(n - 1, 0))
    if n > 1 and s * s == n - 1:
        return s, s, True
    s = math.isqrt(n)
    if s * s == n:
        return s, s, False
    if strict:
        raise ValueError(
            f"{n} tokens match neither the configured grid {h}x{w} (+CLS) nor a square grid; "
            "set vision_grid/audio_grid to the encoder's patch grid"
        )
    return 1, n, False


def _pooled_side(h: int, w: int, pool: int | None) -> tuple[int, int]:
    return (h, w) if not pool else (min(h, pool), min(w, pool))


def _pool_grid(x: torch.Tensor, grid, pool: int | None) -> torch.Tensor:
    """``[M, n, D]`` -> CLS (if any) + the patch grid average-pooled to at most ``pool x pool``."""
    if not pool:
        return x
    m, n, d = x.shape
    h, w, cls = _infer_grid(n, grid)
    patches = x[:, int(cls):].reshape(m, h, w, d).permute(0, 3, 1, 2)
    pooled = F.adaptive_avg_pool2d(patches, _pooled_side(h, w, pool)).flatten(2).transpose(1, 2)
    return torch.cat([x[:, :1], pooled], 1) if cls else pooled


def _key_mask(mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = mask.to(device=device).bool()
    if mask.shape != (batch, length):
        raise ValueError(f"instruction_mask must be [B, L] = {(batch, length)}, got {tuple(mask.shape)}")
    return mask


class _BranchProjection(nn.Module):
    """One ``LayerNorm + Linear(branch_dim -> width)`` per ImageBind branch (vision / audio)."""

    def __init__(self, dims: dict[str, int | None], width: int, norm: bool = True):
        super().__init__()
        self.proj = nn.ModuleDict({
            b: nn.Sequential(nn.LayerNorm(d) if norm else nn.Identity(), nn.Linear(d, width))
            for b, d in dims.items() if d
        })
        self.dims = {b: d for b, d in dims.items() if d}

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        b = _branch(modality)
        if b not in self.proj:
            raise ValueError(f"this bridge was built without an {b} branch ({b}_dim=None); it cannot take {modality}")
        if x.shape[-1] != self.dims[b]:
            raise ValueError(f"{modality} features must have width {self.dims[b]} ({b}_dim), got {tuple(x.shape)}")
        return self.proj[b](x)


class _Attention(nn.Module):
    """Multi-head attention with separate query / key / value inputs (SDPA underneath)."""

    def __init__(self, dim: int, heads: int, bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.k = nn.Linear(dim, dim, bias=bias)
        self.v = nn.Linear(dim, dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def forward(self, q, k, v, key_mask: torch.Tensor | None = None):
        b, lq, d = q.shape
        h = self.heads

        def split(t, proj):
            return proj(t).reshape(b, t.shape[1], h, d // h).transpose(1, 2)

        mask = None if key_mask is None else key_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(split(q, self.q), split(k, self.k), split(v, self.v), attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(b, lq, d))


def _ffn(width: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width * mult), nn.GELU(), nn.Linear(width * mult, width))


class _PresetMixin:
    """Fields left at ``None`` come from ``PRESETS[preset]``, then ``DEFAULTS``."""

    DEFAULTS: dict = {}
    PRESETS: dict[str, dict] = {}

    def _resolve(self, preset: str | None, given: dict) -> dict:
        values = dict(self.DEFAULTS)
        if preset is not None:
            if preset not in self.PRESETS:
                raise ValueError(f"unknown {type(self).__name__} preset {preset!r}; available: {sorted(self.PRESETS)}")
            values.update(self.PRESETS[preset])
        values.update({k: v for k, v in given.items() if v is not None})
        if values.get("width") == "llm_dim":
            values["width"] = given.get("llm_dim") or values.get("llm_dim")
        used_defaults = [k for k in self.config.get("_use_default_values", []) if k not in self.DEFAULTS]
        self.register_to_config(**{k: values[k] for k in self.DEFAULTS}, _use_default_values=used_defaults)
        return values

    @classmethod
    def from_preset(cls, name: str, **overrides):
        return cls(preset=name, **overrides)


class _TokenGeometry:
    """Shared bookkeeping of the token bridges: branch grids, clip counts, token counts."""

    def _grid(self, modality: str) -> tuple[int, int]:
        return _pair(self.config.vision_grid if _branch(modality) == "vision" else self.config.audio_grid)

    def _expected_clips(self, modality: str) -> int:
        _branch(modality)
        return {"image": 1, "video": self.config.video_clips, "audio": self.config.audio_clips}[modality]

    def _tokens_per_clip(self, modality: str, pool: int | None = None) -> int:
        h, w = _pooled_side(*self._grid(modality), pool)
        return 1 + h * w

    def _checked_clips(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        x = _as_clips(features, modality)
        want = self._expected_clips(modality)
        if x.shape[1] != want:
            key = "video_clips" if modality == "video" else "audio_clips"
            raise ValueError(f"{type(self).__name__} is configured for {want} {modality} clips ({key}), got {x.shape[1]}")
        return x
