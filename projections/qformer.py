"""Q-Former bridges: BLIP-2's, and InstructBLIP's instruction-aware one."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from .bridges import Bridge, register_bridge
from .common import _as_clips, _Attention, _branch, _BranchProjection, _ffn, _key_mask, _PresetMixin

__all__ = ["QFormerBridge"]


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
