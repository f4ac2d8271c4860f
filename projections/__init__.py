"""Input bridges (media features -> LLM tokens) and output projections (signal states -> decoder conditioning)."""
from .bridges import BRIDGE_REGISTRY, Bridge, LinearBridge, build_bridge, load_bridge, register_bridge
from .output import OutputProjection, generation_distance

__all__ = [
    "BRIDGE_REGISTRY",
    "Bridge",
    "LinearBridge",
    "OutputProjection",
    "build_bridge",
    "generation_distance",
    "load_bridge",
    "register_bridge",
]
