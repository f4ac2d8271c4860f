"""Input bridges (media features -> LLM tokens) and output projections (signal states -> decoder conditioning)."""
from .bridges import BRIDGE_REGISTRY, Bridge, LinearBridge, build_bridge, load_bridge, register_bridge
from .literature import (
    ContextContentBridge,
    MLPBridge,
    PatchBridge,
    QFormerBridge,
    ResamplerBridge,
    TiledBridge,
    TiledImage,
    TokenLinearBridge,
    select_grid,
    tile_image,
)
from .output import OutputProjection, generation_distance

__all__ = [
    "BRIDGE_REGISTRY",
    "Bridge",
    "ContextContentBridge",
    "LinearBridge",
    "MLPBridge",
    "PatchBridge",
    "QFormerBridge",
    "ResamplerBridge",
    "TiledBridge",
    "TiledImage",
    "TokenLinearBridge",
    "OutputProjection",
    "build_bridge",
    "generation_distance",
    "load_bridge",
    "register_bridge",
    "select_grid",
    "tile_image",
]
