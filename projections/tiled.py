"""The AnyRes tiled bridge (LLaVA-NeXT / Monkey / LLaVA-UHD); the tiles are cut by ``encoders.tiling``."""
from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from .bridges import Bridge, build_bridge, register_bridge
from .common import _pair

__all__ = ["TiledBridge"]


@register_bridge("tiled")
class TiledBridge(Bridge):
    """High-resolution tiling: LLaVA-NeXT "AnyRes" (Liu et al., 2024), Monkey (Li et al., 2023),
    LLaVA-UHD (Xu et al., 2024).

    The caller cuts the image with :func:`~encoders.tiling.tile_image` (LLaVA-NeXT's grid
    selection: the ``R x C <= max_tiles`` grid of 224-px tiles that best fits the aspect ratio,
    plus a global 224-px view), encodes every view with ImageBind, and passes features
    ``[B, 1 + R*C, ...]`` (per view: pooled ``[E]`` or tokens ``[n, D]``, whichever the inner
    bridge consumes, see ``inner_feature_kind``) with ``grid=(R, C)``. The ``inner`` bridge
    (any fixed-count bridge config, e.g. ``{"type": "mlp", "on_tokens": True,
    "pool_tokens": 4}``) maps every view with shared weights; the output is the global view's
    tokens, then the tiles row by row, each row followed by a learned row-separator token.

    ``num_tokens("image", feature_shape=(R, C)) = n_inner * (1 + R*C) + R``: for this bridge
    ``feature_shape`` *is the grid*. A batch shares one grid; inside :class:`~anyany.model.AnyToAnyModel`
    every image is a :class:`~encoders.tiling.TiledImage` and goes through on its own.

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
