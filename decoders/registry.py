"""Which ``Decoder`` class serves each kind, building one, and the lazily-filled set a model uses.

A plain table over the built-in kinds (imported here, never from ``base``), so the registry has no
import cycle; ``register_decoder`` adds a kind from outside the package.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .audio import AudioLDMDecoder
from .audioldm2 import AudioLDM2Decoder
from .base import Decoder
from .cogvideox import CogVideoXDecoder
from .config import DecoderConfig
from .flux import FluxDecoder
from .image import StableDiffusionDecoder
from .sd3 import StableDiffusion3Decoder
from .sdxl import StableDiffusionXLDecoder
from .stable_audio import StableAudioDecoder
from .video import TextToVideoDecoder
from .wan import WanDecoder

DECODER_REGISTRY: dict[str, type[Decoder]] = {
    cls.kind: cls for cls in (
        StableDiffusionDecoder, TextToVideoDecoder, AudioLDMDecoder,
        StableDiffusionXLDecoder, StableDiffusion3Decoder, FluxDecoder,
        WanDecoder, CogVideoXDecoder, AudioLDM2Decoder, StableAudioDecoder,
    )
}


def register_decoder(cls: type[Decoder]) -> type[Decoder]:
    """Class decorator for decoders defined elsewhere: ``DECODER_REGISTRY[cls.kind] = cls``."""
    DECODER_REGISTRY[cls.kind] = cls
    return cls


def build_decoder(config: DecoderConfig | dict[str, Any], *, progress: bool = True) -> Decoder:
    """Build the decoder of ``config.kind``: load ``config.name_or_path`` (hub id or folder) or,
    when it is ``None``, build random tiny components from ``config.random_init``."""
    if isinstance(config, dict):
        config = DecoderConfig.from_dict(config)
    try:
        cls = DECODER_REGISTRY[config.kind]
    except KeyError:
        raise ValueError(f"no decoder registered for kind {config.kind!r}; known: {sorted(DECODER_REGISTRY)}") from None
    if config.name_or_path is None:
        decoder = cls.from_random(config)
        decoder.pipeline.set_progress_bar_config(disable=not progress)
        return decoder
    return cls.from_pretrained(config.name_or_path, config, progress=progress)


class DecoderSet:
    """One decoder per modality, built on first use and kept: the pipeline and training share it,
    so a decoder is loaded at most once per model (the reference reloaded it on every call)."""

    def __init__(self, configs: Mapping[str, DecoderConfig], built: Mapping[str, Decoder] | None = None,
                 *, progress: bool = True, build: Callable[[str, DecoderConfig], Decoder] | None = None) -> None:
        """``build(modality, config)`` replaces ``build_decoder`` (e.g. random real-size decoders in a benchmark)."""
        self.configs, self.progress = configs, progress
        self._build = build or (lambda modality, cfg: build_decoder(cfg, progress=self.progress))
        self._built: dict[str, Decoder] = dict(built or {})

    def __contains__(self, modality: str) -> bool:
        """Whether the modality's decoder is built (and so resident)."""
        return modality in self._built

    def __call__(self, modality: str) -> Decoder:
        if modality not in self._built:
            cfg = self.configs.get(modality)
            if cfg is None:
                raise ValueError(f"no decoder configured for {modality}; configured: {sorted(self.configs)}")
            self._built[modality] = self._build(modality, cfg)
        return self._built[modality]

    def loaded(self) -> dict[str, Decoder]:
        """The decoders built so far, by modality."""
        return dict(self._built)

    def release(self, modality: str | None = None) -> None:
        """Forget one (or every) built decoder, so its memory can be freed."""
        if modality is None:
            self._built.clear()
        else:
            self._built.pop(modality, None)


__all__ = ["DECODER_REGISTRY", "DecoderSet", "build_decoder", "register_decoder"]
