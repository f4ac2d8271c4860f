"""AnyRes tiling of an image (LLaVA-NeXT): pick a tile grid, cut the tiles, carry views with their grid.

Pixel preprocessing only, no modules: ``anyany.inputs`` calls :func:`tile_image` when the
bridge reads tiles, and :class:`TiledImage` carries the views (pixels, later their ImageBind
features) with their grid to :class:`~projections.tiled.TiledBridge`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .preprocessing import _normalize_chw

__all__ = ["TiledImage", "select_grid", "tile_image"]


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
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return _normalize_chw(x)


def tile_image(image, max_tiles: int = 4, tile: int = 224) -> tuple[torch.Tensor, tuple[int, int]]:
    """Image -> ``(views [1 + R*C, 3, tile, tile], (R, C))`` for :class:`~projections.tiled.TiledBridge`.

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
    """One image as the tiled bridge consumes it: ``views [1 + R*C, ...]`` and their ``grid (R, C)``.

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
