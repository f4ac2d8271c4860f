"""Frozen diffusion decoders (image / video / audio) behind one interface.

>>> from decoders import DecoderConfig, build_decoder
>>> dec = build_decoder(DecoderConfig.tiny("stable_diffusion"))
>>> images = dec.generate(dec.encode_text(["a red circle"]), seed=0)
"""

from .audio import AudioLDMDecoder
from .base import ClipConditionedDecoder, Decoder
from .config import KINDS, DecoderConfig, resolve_dtype
from .image import StableDiffusionDecoder
from .registry import DECODER_REGISTRY, DecoderSet, build_decoder, register_decoder
from .tiny import build_tiny_pipeline, write_tiny_pipeline
from .video import TextToVideoDecoder

__all__ = [
    "DECODER_REGISTRY",
    "KINDS",
    "AudioLDMDecoder",
    "ClipConditionedDecoder",
    "Decoder",
    "DecoderConfig",
    "DecoderSet",
    "StableDiffusionDecoder",
    "TextToVideoDecoder",
    "build_decoder",
    "build_tiny_pipeline",
    "register_decoder",
    "resolve_dtype",
    "write_tiny_pipeline",
]
