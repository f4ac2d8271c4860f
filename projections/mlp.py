"""Per-token linear and MLP bridges: LLaVA-1's Linear, LLaVA-1.5's MLP and its Yi-VL / LaVIN variants."""
from __future__ import annotations

from typing import Sequence

from diffusers.configuration_utils import register_to_config
from torch import nn

from .bridges import Bridge, register_bridge
from .common import _branch, _pool_grid, _PresetMixin, _TokenGeometry

__all__ = ["MLPBridge", "TokenLinearBridge"]


def _activation(name: str) -> nn.Module:
    acts = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(acts)}")
    return acts[name]()


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
