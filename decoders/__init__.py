"""Frozen diffusion decoders (image / video / audio) behind one interface.

>>> from decoders import DecoderConfig, build_decoder
>>> dec = build_decoder(DecoderConfig.tiny("stable_diffusion"))
>>> images = dec.generate(dec.encode_text(["a red circle"]), seed=0)

Each kind names the tensors its pipeline takes instead of a prompt (``Decoder.conditioning_spec``,
``decoders.spec``); today's kinds (SDXL, SD3, FLUX, Wan, CogVideoX, AudioLDM2, Stable Audio) take
several, e.g. a sequence plus a pooled vector.
"""

from .audio import AudioLDMDecoder
from .audioldm2 import AudioLDM2Decoder
from .base import ClipConditionedDecoder, Decoder
from .cogvideox import CogVideoXDecoder
from .config import KINDS, NEXTGPT_KINDS, DecoderConfig, resolve_dtype
from .flux import FluxDecoder
from .image import StableDiffusionDecoder
from .registry import DECODER_REGISTRY, DecoderSet, build_decoder, register_decoder
from .sd3 import StableDiffusion3Decoder
from .sdxl import StableDiffusionXLDecoder
from .spec import ConditioningSpec, TensorSpec, pack_conditioning
from .stable_audio import StableAudioDecoder
from .tiny import build_tiny_pipeline, write_tiny_pipeline
from .video import TextToVideoDecoder
from .wan import WanDecoder

__all__ = [
    "DECODER_REGISTRY",
    "KINDS",
    "NEXTGPT_KINDS",
    "AudioLDM2Decoder",
    "AudioLDMDecoder",
    "ClipConditionedDecoder",
    "CogVideoXDecoder",
    "ConditioningSpec",
    "Decoder",
    "DecoderConfig",
    "DecoderSet",
    "FluxDecoder",
    "StableAudioDecoder",
    "StableDiffusion3Decoder",
    "StableDiffusionDecoder",
    "StableDiffusionXLDecoder",
    "TensorSpec",
    "TextToVideoDecoder",
    "WanDecoder",
    "build_decoder",
    "build_tiny_pipeline",
    "pack_conditioning",
    "register_decoder",
    "resolve_dtype",
    "write_tiny_pipeline",
]
