"""Input bridges: ImageBind features -> LLM input embeddings.

A bridge declares what it consumes (``feature_kind``: the pooled ImageBind vector, its
token sequence, per-tile features or raw pixels) and how many LLM tokens one medium becomes
(``num_tokens``; for tiles and pixels that depends on the medium's ``feature_shape``). The
model only talks to this interface, so bridges plug in where NExT-GPT's linear projection sits.
"""
from __future__ import annotations

import torch
from torch import nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

BRIDGE_REGISTRY: dict[str, type["Bridge"]] = {}


def register_bridge(name: str):
    def deco(cls):
        BRIDGE_REGISTRY[name] = cls
        cls.bridge_type = name
        return cls

    return deco


class Bridge(ModelMixin, ConfigMixin):
    """Base class. Subclasses implement ``forward(features, modality) -> [B, n, llm_dim]``."""

    bridge_type = "base"
    feature_kind = "pooled"  # or "tokens", "tiles", "pixels"

    def num_tokens(self, modality: str, feature_shape=None) -> int:
        """LLM tokens one medium becomes; variable-count bridges read its ``feature_shape``."""
        raise NotImplementedError

    def check_modality(self, modality: str) -> None:
        """Raise ``ValueError`` if this bridge cannot take ``modality`` (the base takes all three)."""

    @property
    def image_options(self) -> dict:
        """Keyword options for ``anyany.inputs.load_media`` beyond ``feature_kind`` (how images are cut/sized)."""
        return {}


@register_bridge("linear")
class LinearBridge(Bridge):
    """NExT-GPT / LLaVA-1: one ``Linear(embed_dim -> llm_dim)`` on the pooled ImageBind vector.

    NExT-GPT (Wu et al., 2023) shares a single projection across image, video and audio: the
    ImageBind space is already joint, and every medium becomes exactly one LLM token.
    """

    @register_to_config
    def __init__(self, input_dim: int = 1024, llm_dim: int = 4096):
        super().__init__()
        self.proj = nn.Linear(input_dim, llm_dim)

    def num_tokens(self, modality: str, feature_shape=None) -> int:
        return 1

    def forward(self, features: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        if features.shape[-1] != self.config.input_dim:
            raise ValueError(f"linear bridge expects features of width {self.config.input_dim}, got {tuple(features.shape)}")
        return self.proj(features).unsqueeze(1)


def build_bridge(config: dict) -> Bridge:
    """``{"type": "linear", ...its fields}`` -> bridge module."""
    config = dict(config)
    kind = config.pop("type", "linear")
    if kind not in BRIDGE_REGISTRY:
        raise ValueError(f"unknown bridge type {kind!r}; available: {sorted(BRIDGE_REGISTRY)}")
    return BRIDGE_REGISTRY[kind](**config)


def load_bridge(path) -> Bridge:
    """Load any registered bridge from its folder (the class is read from config.json)."""
    import json
    from pathlib import Path

    cfg = json.loads((Path(path) / "config.json").read_text())
    name = cfg.get("_class_name")
    for cls in BRIDGE_REGISTRY.values():
        if cls.__name__ == name:
            return cls.from_pretrained(path)
    raise ValueError(f"{path}/config.json names bridge class {name!r}; known: {[c.__name__ for c in BRIDGE_REGISTRY.values()]}")
