"""Input bridges (media features -> LLM tokens) and output projections (signal states -> decoder conditioning).

One module per bridge family: ``bridges`` (the interface, registry and NExT-GPT's linear),
``mlp``, ``resampler``, ``qformer``, ``context_content``, ``tiled``, ``patches``; ``common``
holds what the token bridges share. Importing the package registers every bridge type.
AnyRes tiling of the image itself is preprocessing and lives in ``encoders.tiling``.
"""
from encoders.tiling import TiledImage, select_grid, tile_image

from .bridges import BRIDGE_REGISTRY, Bridge, LinearBridge, build_bridge, load_bridge, register_bridge
from .context_content import ContextContentBridge
from .mlp import MLPBridge, TokenLinearBridge
from .output import OutputProjection, generation_distance
from .patches import PatchBridge
from .qformer import QFormerBridge
from .resampler import ResamplerBridge
from .tiled import TiledBridge

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
