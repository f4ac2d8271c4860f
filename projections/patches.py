"""Fuyu / OtterHD's encoder-free bridge: raw pixel patches, one Linear, a newline token per patch row."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from torch import nn

from .bridges import Bridge, register_bridge

__all__ = ["PatchBridge"]


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
