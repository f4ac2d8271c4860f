"""Input bridges from the multimodal-LLM literature, on ImageBind features.

Every class follows the :class:`~projections.bridges.Bridge` contract:

* ``feature_kind``: ``"pooled"`` (ImageBind's pooled vector ``[B, E]``), ``"tokens"``
  (ImageBind token sequences: image ``[B, 257, vision_dim]``, video
  ``[B, clips, 257, vision_dim]``, audio ``[B, clips, 229, audio_dim]``), ``"tiles"``
  (per-tile features, see :class:`TiledBridge`) or ``"pixels"`` (raw ``[B, 3, H, W]``).
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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from torch import nn

from .bridges import Bridge, build_bridge, register_bridge

__all__ = [
    "ContextContentBridge",
    "MLPBridge",
    "PatchBridge",
    "QFormerBridge",
    "ResamplerBridge",
    "TiledBridge",
    "TiledImage",
    "TokenLinearBridge",
    "select_grid",
    "sincos_2d",
    "tile_image",
]

BRANCHES = ("vision", "audio")


# =========================================================================== helpers
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


def _activation(name: str) -> nn.Module:
    acts = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(acts)}")
    return acts[name]()


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


# =========================================================================== linear / MLP
@register_bridge("token_linear")
class TokenLinearBridge(_TokenGeometry, Bridge):
    """LLaVA-1 (Liu et al., 2023, "Visual Instruction Tuning"): one Linear on every patch token.

    Kept: a single linear map per token, no pooling, every vision token becomes an LLM token
    (257 per image here: CLS + 16x16 patches; LLaVA drops CLS and uses the penultimate
    CLIP layer, we take ImageBind's final normalised tokens). Widths: one Linear per branch
    (``vision_dim -> llm_dim`` for image/video, ``audio_dim -> llm_dim`` for audio). Video
    and audio clips are flattened along the token axis in clip order, without time
    embeddings (LLaVA has none). Added: ``pool_tokens`` average-pools each clip's patch grid
    to at most ``pool_tokens x pool_tokens`` (CLS kept) so the counts fit a small LLM.
    """

    feature_kind = "tokens"

    @register_to_config
    def __init__(
        self,
        vision_dim: int | None = 1280,
        audio_dim: int | None = 768,
        llm_dim: int = 4096,
        pool_tokens: int | None = None,
        vision_grid: Sequence[int] = (16, 16),
        audio_grid: Sequence[int] = (12, 19),
        video_clips: int = 15,
        audio_clips: int = 3,
    ):
        super().__init__()
        self.proj = nn.ModuleDict({b: nn.Linear(d, llm_dim) for b, d in (("vision", vision_dim), ("audio", audio_dim)) if d})

    def num_tokens(self, modality: str, feature_shape=None) -> int:
        return self._expected_clips(modality) * self._tokens_per_clip(modality, self.config.pool_tokens)

    def forward(self, features, modality, instruction=None, instruction_mask=None):
        x = self._checked_clips(features, modality)
        b, t, n, d = x.shape
        branch = _branch(modality)
        if branch not in self.proj:
            raise ValueError(f"token_linear was built without an {branch} branch; it cannot take {modality}")
        x = _pool_grid(x.reshape(b * t, n, d), self._grid(modality), self.config.pool_tokens)
        return self.proj[branch](x).reshape(b, -1, self.config.llm_dim)


@register_bridge("mlp")
class MLPBridge(_PresetMixin, _TokenGeometry, Bridge):
    """LLaVA-1.5 (Liu et al., 2023, "Improved Baselines with Visual Instruction Tuning"):
    ``Linear -> GELU -> Linear`` ("mlp2x_gelu").

    Options and presets:

    * ``llava15``: ``Linear(in, llm) - GELU - Linear(llm, llm)``.
    * ``yi_vl`` (Yi-VL, 01.AI 2024): ``norm=True`` adds a LayerNorm after each Linear
      (``Linear - LN - GELU - Linear - LN``).
    * ``lavin`` (LaVIN, Luo et al., 2023, "Cheap and Quick"): ``bottleneck=128`` turns it into
      a down/up adapter ``Linear(in, 128) - SiLU - Linear(128, llm)``.

    ``on_tokens=False`` (default) projects the pooled ImageBind vector (one token per medium,
    one first Linear shared by all modalities, as NExT-GPT). ``on_tokens=True`` projects every
    token like LLaVA-1.5; the first Linear is then per branch (``vision_dim`` / ``audio_dim``
    -> hidden), the rest is shared; clips are flattened without time embeddings and
    ``pool_tokens`` works as in :class:`TokenLinearBridge`. Simplified: LLaVA-1.5 reads
    CLIP's penultimate layer without CLS; we read ImageBind's final tokens with CLS.
    """

    DEFAULTS = {"norm": False, "bottleneck": 0, "activation": "gelu"}
    PRESETS = {"llava15": {}, "yi_vl": {"norm": True}, "lavin": {"bottleneck": 128, "activation": "silu"}}

    @register_to_config
    def __init__(
        self,
        input_dim: int = 1024,
        vision_dim: int | None = 1280,
        audio_dim: int | None = 768,
        llm_dim: int = 4096,
        on_tokens: bool = False,
        norm: bool | None = None,
        bottleneck: int | None = None,
        activation: str | None = None,
        pool_tokens: int | None = None,
        vision_grid: Sequence[int] = (16, 16),
        audio_grid: Sequence[int] = (12, 19),
        video_clips: int = 15,
        audio_clips: int = 3,
        preset: str | None = None,
    ):
        super().__init__()
        cfg = self._resolve(preset, {"norm": norm, "bottleneck": bottleneck, "activation": activation})
        hidden = cfg["bottleneck"] or llm_dim
        dims = {"vision": vision_dim, "audio": audio_dim} if on_tokens else {"pooled": input_dim}
        self.first = nn.ModuleDict({k: nn.Linear(d, hidden) for k, d in dims.items() if d})
        self.first_dims = {k: d for k, d in dims.items() if d}
        self.norm1 = nn.LayerNorm(hidden) if cfg["norm"] else nn.Identity()
        self.act = _activation(cfg["activation"])
        self.second = nn.Linear(hidden, llm_dim)
        self.norm2 = nn.LayerNorm(llm_dim) if cfg["norm"] else nn.Identity()

    @property
    def feature_kind(self) -> str:
        return "tokens" if self.config.on_tokens else "pooled"

    def num_tokens(self, modality: str, feature_shape=None) -> int:
        if not self.config.on_tokens:
            _branch(modality)
            return 1
        return self._expected_clips(modality) * self._tokens_per_clip(modality, self.config.pool_tokens)

    def forward(self, features, modality, instruction=None, instruction_mask=None):
        if self.config.on_tokens:
            x = self._checked_clips(features, modality)
            b, t, n, d = x.shape
            key = _branch(modality)
            x = _pool_grid(x.reshape(b * t, n, d), self._grid(modality), self.config.pool_tokens).reshape(b, -1, d)
        else:
            _branch(modality)
            if features.ndim != 2:
                raise ValueError(f"pooled mlp bridge expects [B, E] features, got {tuple(features.shape)}")
            key, x = "pooled", features.unsqueeze(1)
        if key not in self.first:
            raise ValueError(f"mlp bridge was built without an {key} branch; it cannot take {modality}")
        if x.shape[-1] != self.first_dims[key]:
            raise ValueError(f"mlp bridge expects {key} features of width {self.first_dims[key]}, got {tuple(x.shape)}")
        return self.norm2(self.second(self.act(self.norm1(self.first[key](x)))))


# =========================================================================== resampler
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


# =========================================================================== Q-Former
class _QFormerLayer(nn.Module):
    """BERT post-LN layer: self-attention, optional cross-attention (queries only), FFN."""

    def __init__(self, width: int, heads: int, ffn_mult: int, cross: bool):
        super().__init__()
        self.self_attn = _Attention(width, heads)
        self.norm_self = nn.LayerNorm(width)
        self.cross_attn = _Attention(width, heads) if cross else None
        self.norm_cross = nn.LayerNorm(width) if cross else None
        self.ffn = _ffn(width, ffn_mult)
        self.norm_ffn = nn.LayerNorm(width)

    def forward(self, h, media, n_queries: int, mask):
        h = self.norm_self(h + self.self_attn(h, h, h, mask))
        if self.cross_attn is not None:
            q = h[:, :n_queries]
            q = self.norm_cross(q + self.cross_attn(q, media, media))
            h = torch.cat([q, h[:, n_queries:]], 1)
        return self.norm_ffn(h + self.ffn(h))


@register_bridge("qformer")
class QFormerBridge(_PresetMixin, Bridge):
    """BLIP-2's Q-Former (Li et al., 2023), optionally instruction-aware as InstructBLIP (Dai et al., 2023).

    ``num_queries`` learned queries (LayerNorm'd, as BERT embeddings) go through ``depth``
    BERT-style post-LN layers: self-attention over the queries, cross-attention to the media
    tokens in every ``cross_attention_freq``-th layer (layers 0, 2, 4, ... for 2), FFN. A
    ``Linear(width -> llm_dim)`` maps the queries to LLM tokens. Any number of clips / tokens
    becomes ``num_queries`` tokens.

    ``instruction_aware=True`` (InstructBLIP): the instruction's LLM embeddings
    ``[B, L, llm_dim]`` are projected (``Linear + LayerNorm``) to the Q-Former width and join
    the self-attention (queries and instruction attend to each other, padding masked by
    ``instruction_mask``); cross-attention is for queries only and only the query positions
    are output. Without an instruction it behaves like plain BLIP-2.

    Simplified: one FFN shared by query and text positions (BLIP-2 has a separate query FFN),
    random init instead of BERT-base weights, instruction tokens come from the LLM's
    embedding table (InstructBLIP re-tokenises with BERT) and carry no positions; video clips
    are flattened without time embeddings (BLIP-2 has none). Widths: per-branch
    ``LayerNorm + Linear`` into ``width`` (BLIP-2: ``ln_vision``, then the cross-attention
    key/value maps read the vision width directly).

    Presets: ``blip2`` (32 queries, width 768, 12 layers, 12 heads) and ``instructblip``
    (the same, instruction-aware).
    """

    feature_kind = "tokens"
    DEFAULTS = {"width": 768, "num_queries": 32, "depth": 12, "heads": 12, "ffn_mult": 4,
                "cross_attention_freq": 2, "instruction_aware": False}
    PRESETS = {"blip2": {}, "instructblip": {"instruction_aware": True}}

    @register_to_config
    def __init__(
        self,
        vision_dim: int | None = 1280,
        audio_dim: int | None = 768,
        llm_dim: int = 4096,
        width: int | None = None,
        num_queries: int | None = None,
        depth: int | None = None,
        heads: int | None = None,
        ffn_mult: int | None = None,
        cross_attention_freq: int | None = None,
        instruction_aware: bool | None = None,
        preset: str | None = None,
    ):
        super().__init__()
        cfg = self._resolve(preset, dict(
            width=width, num_queries=num_queries, depth=depth, heads=heads, ffn_mult=ffn_mult,
            cross_attention_freq=cross_attention_freq, instruction_aware=instruction_aware))
        w = cfg["width"]
        self.in_proj = _BranchProjection({"vision": vision_dim, "audio": audio_dim}, w)
        self.queries = nn.Parameter(torch.randn(cfg["num_queries"], w) * 0.02)
        self.norm_embed = nn.LayerNorm(w)
        self.text_proj = nn.Linear(llm_dim, w) if cfg["instruction_aware"] else None
        self.layers = nn.ModuleList(
            _QFormerLayer(w, cfg["heads"], cfg["ffn_mult"], cross=i % cfg["cross_attention_freq"] == 0)
            for i in range(cfg["depth"])
        )
        self.out = nn.Linear(w, llm_dim)

    def num_tokens(self, modality: str, feature_shape=None) -> int:
        _branch(modality)
        return self.config.num_queries

    def forward(self, features, modality, instruction=None, instruction_mask=None):
        x = _as_clips(features, modality)
        b, t, n, _ = x.shape
        media = self.in_proj(x, modality).reshape(b, t * n, -1)
        nq = self.config.num_queries
        h = self.queries.expand(b, -1, -1)
        mask = None
        if self.text_proj is not None and instruction is not None:
            if instruction.ndim != 3 or instruction.shape[0] != b or instruction.shape[-1] != self.config.llm_dim:
                raise ValueError(f"instruction must be [B={b}, L, llm_dim={self.config.llm_dim}], got {tuple(instruction.shape)}")
            h = torch.cat([h, self.text_proj(instruction.to(media.dtype))], 1)
            text_mask = _key_mask(instruction_mask, b, instruction.shape[1], h.device)
            if text_mask is not None:
                mask = torch.cat([torch.ones(b, nq, dtype=torch.bool, device=h.device), text_mask], 1)
        h = self.norm_embed(h)
        for layer in self.layers:
            h = layer(h, media, nq, mask)
        return self.out(h[:, :nq])


# =========================================================================== LLaMA-VID
@register_bridge("context_content")
class ContextContentBridge(_TokenGeometry, Bridge):
    """LLaMA-VID (Li et al., 2023, "An Image is Worth 2 Tokens in Large Language Models").

    Per clip (an image is one clip; video and audio clips each count) two tokens, in this
    order: a *context* token, ``Linear(mean_l softmax(Q_l X^T / sqrt(d)) X)`` where ``Q`` are
    the instruction's LLM embeddings projected to ``width`` (a learned default query when no
    instruction is given) and ``X`` the clip's tokens; and a *content* token,
    ``Linear(mean(X))``. So an image is 2 tokens, a video ``2 * video_clips``, audio
    ``2 * audio_clips``. The content token never depends on the instruction.

    Simplified: LLaMA-VID builds the text queries with an instruction-conditioned BERT
    Q-Former; here they are a ``Linear(llm_dim -> width)`` of the LLM embeddings. LLaMA-VID
    keeps more content tokens for single images; we keep one everywhere. Widths: per-branch
    ``LayerNorm + Linear`` into ``width``; clips are handled independently (no time
    embedding, as LLaMA-VID).
    """

    feature_kind = "tokens"

    @register_to_config
    def __init__(
        self,
        vision_dim: int | None = 1280,
        audio_dim: int | None = 768,
        llm_dim: int = 4096,
        width: int = 1024,
        video_clips: int = 15,
        audio_clips: int = 3,
    ):
        super().__init__()
        self.in_proj = _BranchProjection({"vision": vision_dim, "audio": audio_dim}, width)
        self.text_proj = nn.Linear(llm_dim, width)
        self.default_query = nn.Parameter(torch.randn(1, width) * 0.02)
        self.context_out = nn.Linear(width, llm_dim)
        self.content_out = nn.Linear(width, llm_dim)

    def num_tokens(self, modality: str, feature_shape=None) -> int:
        return 2 * self._expected_clips(modality)

    def forward(self, features, modality, instruction=None, instruction_mask=None):
        x = self.in_proj(self._checked_clips(features, modality), modality)  # [B, T, n, W]
        b, t, n, w = x.shape
        if instruction is None:
            q = self.default_query.expand(b, -1, -1)
            mask = torch.ones(b, 1, device=x.device, dtype=x.dtype)
        else:
            if instruction.ndim != 3 or instruction.shape[0] != b or instruction.shape[-1] != self.config.llm_dim:
                raise ValueError(f"instruction must be [B={b}, L, llm_dim={self.config.llm_dim}], got {tuple(instruction.shape)}")
            q = self.text_proj(instruction.to(x.dtype))
            m = _key_mask(instruction_mask, b, q.shape[1], x.device)
            mask = torch.ones(b, q.shape[1], device=x.device, dtype=x.dtype) if m is None else m.to(x.dtype)
        attn = torch.einsum("blw,btnw->btln", q, x).div(math.sqrt(w)).softmax(-1)
        ctx = torch.einsum("btln,btnw->btlw", attn, x)
        ctx = (ctx * mask[:, None, :, None]).sum(2) / mask.sum(1).clamp(min=1)[:, None, None]
        context = self.context_out(ctx)  # [B, T, llm]
        content = self.content_out(x.mean(2))  # [B, T, llm]
        return torch.stack([context, content], 2).reshape(b, 2 * t, -1)


# =========================================================================== tiles (AnyRes)
def select_grid(width: int, height: int, max_tiles: int, tile: int = 224) -> tuple[int, int]:
    """LLaVA-NeXT's ``select_best_resolution`` over every ``rows x cols <= max_tiles`` grid of tiles.

    Picks the grid whose canvas keeps the most of the image's pixels after an aspect-preserving
    downscale (no upscaling credit beyond the original size); ties go to the least wasted canvas.
    """
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    best, best_key = (1, 1), None
    for rows in range(1, max_tiles + 1):
        for cols in range(1, max_tiles // rows + 1):
            cw, ch = cols * tile, rows * tile
            scale = min(cw / width, ch / height)
            dw, dh = int(width * scale), int(height * scale)
            effective = min(dw * dh, width * height)
            wasted = cw * ch - effective
            key = (effective, -wasted)
            if best_key is None or key > best_key:
                best, best_key = (rows, cols), key
    return best


def _clip_normalised(image) -> torch.Tensor:
    """PIL image -> ``[3, H, W]`` in [0, 1], CLIP-normalised (ImageBind's image normalisation)."""
    import numpy as np

    from encoders.preprocessing import CLIP_MEAN, CLIP_STD

    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def tile_image(image, max_tiles: int = 4, tile: int = 224) -> tuple[torch.Tensor, tuple[int, int]]:
    """Image -> ``(views [1 + R*C, 3, tile, tile], (R, C))`` for :class:`TiledBridge`.

    View 0 is the whole image squashed to ``tile x tile`` (LLaVA-NeXT's global view); then the
    tiles in row-major order, cut from the image resized (aspect kept) into the chosen
    ``R*tile x C*tile`` canvas and centred, the border padded with the mean colour. A PIL
    image is resized like ImageBind's own preprocessing (PIL bicubic), then scaled to [0, 1]
    and CLIP-normalised, so the padding is 0; a ``[3, H, W]`` float tensor is taken as already
    normalised, resized with torch bicubic and padded with 0.
    """
    from_pil = not isinstance(image, torch.Tensor)
    if from_pil:
        image = image.convert("RGB")
        w, h = image.size
    else:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"tile_image expects a PIL image or a [3, H, W] tensor, got {tuple(image.shape)}")
        image = image.float()
        _, h, w = image.shape

    def resized(size_hw: tuple[int, int]) -> torch.Tensor:
        if from_pil:
            from PIL import Image

            return _clip_normalised(image.resize(size_hw[::-1], Image.BICUBIC))
        return F.interpolate(image[None], size=size_hw, mode="bicubic", align_corners=False)[0]

    rows, cols = select_grid(w, h, max_tiles, tile)
    cw, ch = cols * tile, rows * tile
    scale = min(cw / w, ch / h)
    nw, nh = min(cw, max(1, math.ceil(w * scale))), min(ch, max(1, math.ceil(h * scale)))
    canvas = torch.zeros(3, ch, cw)
    top, left = (ch - nh) // 2, (cw - nw) // 2
    canvas[:, top:top + nh, left:left + nw] = resized((nh, nw))
    tiles = canvas.reshape(3, rows, tile, cols, tile).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, tile, tile)
    return torch.cat([resized((tile, tile))[None], tiles]), (rows, cols)


@dataclass
class TiledImage:
    """One image as :class:`TiledBridge` consumes it: ``views [1 + R*C, ...]`` and their ``grid (R, C)``.

    Before the encoder the views are :func:`tile_image`'s pixels ``[1 + R*C, 3, tile, tile]``;
    after it, each view's ImageBind features (pooled ``[1 + R*C, E]`` or tokens
    ``[1 + R*C, n, D]``, whichever the inner bridge reads). The grid travels with the views
    because it fixes the token count and cannot be read off their number (1x3 and 3x1 both
    give 4 views).
    """

    views: torch.Tensor
    grid: tuple[int, int]

    def to(self, *args, **kwargs) -> "TiledImage":
        return TiledImage(self.views.to(*args, **kwargs), self.grid)


@register_bridge("tiled")
class TiledBridge(Bridge):
    """High-resolution tiling: LLaVA-NeXT "AnyRes" (Liu et al., 2024), Monkey (Li et al., 2023),
    LLaVA-UHD (Xu et al., 2024).

    The caller cuts the image with :func:`tile_image` (LLaVA-NeXT's grid selection: the
    ``R x C <= max_tiles`` grid of 224-px tiles that best fits the aspect ratio, plus a global
    224-px view), encodes every view with ImageBind, and passes features
    ``[B, 1 + R*C, ...]`` (per view: pooled ``[E]`` or tokens ``[n, D]``, whichever the inner
    bridge consumes, see ``inner_feature_kind``) with ``grid=(R, C)``. The ``inner`` bridge
    (any fixed-count bridge config, e.g. ``{"type": "mlp", "on_tokens": True,
    "pool_tokens": 4}``) maps every view with shared weights; the output is the global view's
    tokens, then the tiles row by row, each row followed by a learned row-separator token.

    ``num_tokens("image", feature_shape=(R, C)) = n_inner * (1 + R*C) + R``: for this bridge
    ``feature_shape`` *is the grid*. A batch shares one grid; inside :class:`~anyany.model.AnyToAnyModel`
    every image is a :class:`TiledImage` and goes through on its own.

    Images only: video and audio raise (``check_modality``); they have no tiles, and the inner
    bridge is built vision-only, so use a token or pooled bridge for them.

    Simplified: LLaVA-NeXT unpads and adds a newline after every *patch* row of the merged
    feature map; Monkey uses per-tile LoRA; LLaVA-UHD uses variable-size slices and a
    compressing resampler. We keep the tile grid, the global view, shared per-view projection
    and one separator per tile row. Widths: whatever the inner bridge does; the inner bridge
    is built vision-only (``audio_dim=None``).
    """

    feature_kind = "tiles"

    @register_to_config
    def __init__(
        self,
        inner: dict | None = None,
        input_dim: int = 1024,
        vision_dim: int = 1280,
        llm_dim: int = 4096,
        max_tiles: int = 4,
        tile_size: int = 224,
    ):
        super().__init__()
        import inspect

        from .bridges import BRIDGE_REGISTRY

        spec = dict(inner or {"type": "mlp", "on_tokens": True, "pool_tokens": 4})
        kind = spec.get("type", "linear")
        if kind in ("tiled", "patches"):
            raise ValueError(f"tiled: the inner bridge must be a fixed-count bridge, not {kind!r}")
        if kind not in BRIDGE_REGISTRY:
            raise ValueError(f"tiled: unknown inner bridge type {kind!r}; available: {sorted(BRIDGE_REGISTRY)}")
        accepted = inspect.signature(BRIDGE_REGISTRY[kind].__init__).parameters
        for key, value in {"input_dim": input_dim, "vision_dim": vision_dim, "llm_dim": llm_dim, "audio_dim": None}.items():
            if key in accepted and key not in spec:
                spec[key] = value
        self.inner_bridge = build_bridge(spec)
        self.row_sep = nn.Parameter(torch.randn(llm_dim) * 0.02)

    @property
    def inner_feature_kind(self) -> str:
        return self.inner_bridge.feature_kind

    @property
    def image_options(self) -> dict:
        return {"max_tiles": self.config.max_tiles, "tile_size": self.config.tile_size}

    def check_modality(self, modality: str) -> None:
        if modality != "image":
            raise ValueError(
                f"tiled bridge (AnyRes) takes images only, got {modality!r}; "
                "use a token or pooled bridge for video and audio"
            )

    def _check_grid(self, modality: str, grid) -> tuple[int, int]:
        self.check_modality(modality)
        if grid is None:
            raise ValueError("tiled bridge: the token count depends on the tile grid; pass feature_shape=(rows, cols)")
        r, c = _pair(grid)
        if r < 1 or c < 1 or r * c > self.config.max_tiles:
            raise ValueError(f"tiled bridge: grid {r}x{c} is not within max_tiles={self.config.max_tiles}")
        return r, c

    def num_tokens(self, modality: str, feature_shape=None) -> int:
        r, c = self._check_grid(modality, feature_shape)
        return self.inner_bridge.num_tokens("image") * (1 + r * c) + r

    def forward(self, features, modality, instruction=None, instruction_mask=None, grid=None):
        if grid is None and modality == "image":
            views = features.shape[1] - 1
            s = math.isqrt(views)
            if s * s == views:
                grid = (s, s)
        r, c = self._check_grid(modality, grid)
        b, v = features.shape[:2]
        if v != 1 + r * c:
            raise ValueError(f"tiled bridge: grid {r}x{c} needs 1 + {r * c} views, got features {tuple(features.shape)}")
        flat = features.reshape(b * v, *features.shape[2:])
        kwargs = {}
        if instruction is not None:
            kwargs["instruction"] = instruction.repeat_interleave(v, 0)
            if instruction_mask is not None:
                kwargs["instruction_mask"] = instruction_mask.repeat_interleave(v, 0)
        out = self.inner_bridge(flat, "image", **kwargs)
        out = out.reshape(b, v, out.shape[1], out.shape[2])
        pieces = [out[:, 0]]
        sep = self.row_sep.to(out.dtype).expand(b, 1, -1)
        for row in range(r):
            pieces.append(out[:, 1 + row * c: 1 + (row + 1) * c].reshape(b, -1, out.shape[-1]))
            pieces.append(sep)
        return torch.cat(pieces, 1)


# =========================================================================== raw patches (Fuyu)
@register_bridge("patches")
class PatchBridge(Bridge):
    """Fuyu-8B (Adept, 2023) as used by OtterHD (Li et al., 2023): no vision encoder at all.

    The raw image ``[B, 3, H, W]`` (any resolution; right/bottom zero-padded to multiples of
    ``patch_size``) is cut into ``patch_size`` squares, each flattened and mapped by one
    ``Linear(3 * p * p -> llm_dim)``; a learned newline embedding follows each patch row
    (Fuyu uses its ``|NEWLINE|`` text token). ``num_tokens("image", (3, H, W)) =
    ceil(H/p) * (ceil(W/p) + 1)``. Images only: video and audio raise (``check_modality``).

    Inside the model, files are prepared by ``encoders.preprocessing.preprocess_image_native``:
    the image at its own resolution, downscaled (aspect kept) only when its longer side
    exceeds ``max_image_size`` (Fuyu's 1920-px canvas), CLIP-normalised like ImageBind's
    input, so the zero padding is the mean colour. Simplified: Fuyu's processor normalises
    to [-1, 1]; tensors passed directly may be normalised however the caller likes.
    """

    feature_kind = "pixels"

    @register_to_config
    def __init__(self, llm_dim: int = 4096, patch_size: int = 30, channels: int = 3, max_image_size: int = 1920):
        super().__init__()
        self.proj = nn.Linear(channels * patch_size * patch_size, llm_dim)
        self.newline = nn.Parameter(torch.randn(llm_dim) * 0.02)

    @property
    def image_options(self) -> dict:
        return {"max_image_size": self.config.max_image_size}

    def check_modality(self, modality: str) -> None:
        if modality != "image":
            raise ValueError(
                f"patches bridge (Fuyu/OtterHD) embeds raw image pixels only: it accepts images only, "
                f"not {modality!r}. Use a token or pooled bridge for video and audio."
            )

    def num_tokens(self, modality: str, feature_shape=None) -> int:
        self.check_modality(modality)
        if feature_shape is None:
            raise ValueError("patches bridge: the token count depends on the image size; pass feature_shape=(3, H, W)")
        h, w = int(feature_shape[-2]), int(feature_shape[-1])
        p = self.config.patch_size
        return math.ceil(h / p) * (math.ceil(w / p) + 1)

    def forward(self, features, modality, instruction=None, instruction_mask=None):
        self.check_modality(modality)
        if features.ndim != 4 or features.shape[1] != self.config.channels:
            raise ValueError(f"patches bridge expects pixels [B, {self.config.channels}, H, W], got {tuple(features.shape)}")
        p = self.config.patch_size
        b, ch, h, w = features.shape
        rows, cols = math.ceil(h / p), math.ceil(w / p)
        x = F.pad(features, (0, cols * p - w, 0, rows * p - h))
        x = x.reshape(b, ch, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5).reshape(b, rows, cols, ch * p * p)
        x = self.proj(x.to(self.proj.weight.dtype))
        nl = self.newline.to(x.dtype).expand(b, rows, 1, -1)
        return torch.cat([x, nl], 2).reshape(b, rows * (cols + 1), -1)
