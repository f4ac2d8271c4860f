"""Decoder configuration: the decoder kinds, their generation defaults, dtypes, and ``DecoderConfig``.

Plain data (no diffusers import), so presets, the registry and the tiny builders all read one table.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torch

OFFLOAD_MODES = ("none", "model", "sequential")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Per-kind generation defaults (the reference's values: guidance 7.5, 50 steps, SD 512x512,
# Zeroscope 320x576 x 24 frames at 8 fps, AudioLDM 9 s).
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "stable_diffusion": dict(height=512, width=512),
    "text_to_video_sd": dict(height=320, width=576, num_frames=24, fps=8),
    "audioldm": dict(audio_length_s=9.0),
    # Today's kinds: the released checkpoints' sizes and each pipeline's default sequence length.
    "stable_diffusion_xl": dict(height=1024, width=1024),
    "stable_diffusion_3": dict(height=1024, width=1024, max_sequence_length=256),
    "flux": dict(height=1024, width=1024, max_sequence_length=512),
    "wan": dict(height=480, width=832, num_frames=81, fps=16, max_sequence_length=512),
    "cogvideox": dict(height=480, width=720, num_frames=49, fps=8, max_sequence_length=226),
    # AudioLDM2 pads its T5 sequence to the longest prompt; a fixed spec pads to this many tokens.
    "audioldm2": dict(audio_length_s=10.24, max_sequence_length=512),
    "stable_audio": dict(audio_length_s=10.0, max_sequence_length=128),
}
KINDS = tuple(_KIND_DEFAULTS)
NEXTGPT_KINDS = KINDS[:3]  # the reference's 2023 decoders: one CLIP/CLAP tensor each

_TINY_DEFAULTS: dict[str, dict[str, Any]] = {
    "stable_diffusion": dict(height=32, width=32),
    "text_to_video_sd": dict(height=32, width=32, num_frames=4, fps=8),
    "audioldm": dict(audio_length_s=1.0),
    "stable_diffusion_xl": dict(height=32, width=32),
    "stable_diffusion_3": dict(height=32, width=32, max_sequence_length=8),
    "flux": dict(height=32, width=32, max_sequence_length=8),
    "wan": dict(height=16, width=16, num_frames=5, fps=16, max_sequence_length=8),
    "cogvideox": dict(height=16, width=16, num_frames=9, fps=8, max_sequence_length=8),
    "audioldm2": dict(audio_length_s=0.32, max_sequence_length=8),
    "stable_audio": dict(audio_length_s=0.5, max_sequence_length=8),
}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name.removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unsupported torch_dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


@dataclass
class DecoderConfig:
    """Everything needed to build a decoder; JSON round-trips via ``to_dict`` / ``from_dict``.

    ``name_or_path``: hub id or local folder (``save_pretrained`` layout). ``None`` builds random
    tiny components with ``decoders.tiny.build_tiny_pipeline(kind, **random_init)`` (``random_init``
    may hold ``seed`` and any tiny size knob).

    Generation defaults left as ``None`` are filled per kind (image 512x512; video 320x576 x 24
    frames at 8 fps; audio 9 s). Fields that do not apply to a kind stay ``None``.
    """

    kind: str
    name_or_path: str | None = None
    random_init: dict[str, Any] | None = None
    torch_dtype: str = "float32"
    device: str = "cpu"
    offload: str = "none"
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    audio_length_s: float | None = None
    fps: int | None = None
    # Tokens of the text-encoder sequence the pipeline conditions on (kinds with a T5 sequence).
    max_sequence_length: int | None = None
    # False: load the pipeline without its text encoders and tokenizers (generation from projected
    # conditioning needs neither; only stage-2 target caching does).
    text_encoders: bool = True
    # safetensors file with the unconditional ("") conditioning, for classifier-free guidance
    # without text encoders (written by ``Decoder.save_negative``).
    negative_conditioning: str | None = None
    # Modules defining custom pipeline components (e.g. a vocoder class named in model_index.json):
    # diffusers loads such classes only once their module is imported, so the config says which.
    component_modules: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown decoder kind {self.kind!r}; expected one of {KINDS}")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {self.offload!r}")
        resolve_dtype(self.torch_dtype)
        for key, value in _KIND_DEFAULTS[self.kind].items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecoderConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown DecoderConfig keys: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "DecoderConfig":
        return cls.from_dict(json.loads(text))

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def stable_diffusion_v1_5(cls, **kw: Any) -> "DecoderConfig":
        return cls(kind="stable_diffusion", name_or_path="runwayml/stable-diffusion-v1-5", **kw)

    @classmethod
    def zeroscope_v2_576w(cls, **kw: Any) -> "DecoderConfig":
        return cls(kind="text_to_video_sd", name_or_path="cerspense/zeroscope_v2_576w", **kw)

    @classmethod
    def audioldm_l_full(cls, **kw: Any) -> "DecoderConfig":
        return cls(kind="audioldm", name_or_path="cvssp/audioldm-l-full", **kw)

    @classmethod
    def tiny(cls, kind: str, seed: int = 0, **kw: Any) -> "DecoderConfig":
        """Random tiny components (no hub), 2 steps, 32x32 images, 4-frame 32x32 video, 1 s audio."""
        if kind not in KINDS:
            raise ValueError(f"unknown decoder kind {kind!r}; expected one of {KINDS}")
        random_init = {"seed": seed, **kw.pop("random_init", {})}
        defaults = dict(num_inference_steps=2, guidance_scale=7.5, **_TINY_DEFAULTS[kind])
        defaults.update(kw)
        return cls(kind=kind, name_or_path=None, random_init=random_init, **defaults)


__all__ = ["DecoderConfig", "KINDS", "NEXTGPT_KINDS", "OFFLOAD_MODES", "resolve_dtype"]
