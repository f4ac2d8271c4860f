"""LLaMA-VID's context/content bridge: two tokens per clip, the context one read by the instruction."""
from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from .bridges import Bridge, register_bridge
from .common import _BranchProjection, _key_mask, _TokenGeometry

__all__ = ["ContextContentBridge"]


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
