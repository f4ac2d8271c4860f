"""Decoder swap: replace one modality's decoder and start its output projection afresh for the new spec.

``anyany train stage2 --init RUN --decoder image=flux:black-forest-labs/FLUX.1-dev`` swaps before
stage 2 runs: the new decoder's conditioning spec is read from its configs (no weights loaded), the
modality's projection is rebuilt with the old one's sizes for that spec, and the decoder is
configured lean (``text_encoders=False``: its encoders load only while caching targets). Stage 2
then trains that projection (and the signal rows unless frozen); with captions of that modality
only, the LLM, LoRA, bridge and the other projections get no gradient.
"""

from __future__ import annotations

import dataclasses

import torch

from decoders import KINDS, DecoderConfig


def parse_decoder_arg(text: str) -> tuple[str, str, str]:
    """``MODALITY=KIND:PATH`` -> (modality, kind, path); one sentence naming what is wrong otherwise."""
    modality, sep, rest = text.partition("=")
    kind, sep2, path = rest.partition(":")
    if not sep or not sep2 or not modality or not kind or not path:
        raise ValueError(f"--decoder {text!r}: expected MODALITY=KIND:PATH, e.g. image=flux:black-forest-labs/FLUX.1-dev")
    if modality not in ("image", "video", "audio"):
        raise ValueError(f"--decoder {text!r}: modality {modality!r} is not one of image, video, audio")
    if kind not in KINDS:
        raise ValueError(f"--decoder {text!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    return modality, kind, path


def swap_decoder(model, modality: str, kind: str, path: str, **decoder_settings) -> DecoderConfig:
    """Point ``model``'s ``modality`` at decoder ``kind`` loaded from ``path`` and give it a fresh
    output projection producing that decoder's whole conditioning spec. Returns the new config."""
    from anyany.config import output_projection_for
    from decoders.checkpoints import read_spec
    from projections import OutputProjection

    if modality not in model.config.output_projections:
        raise ValueError(f"--decoder: this model has no {modality} output (it has {model.config.output_modalities})")
    old = model.config.decoders.get(modality)
    keep = {k: getattr(old, k) for k in ("torch_dtype", "device", "offload")} if old is not None else {}
    decoder = DecoderConfig(kind=kind, name_or_path=path, text_encoders=False, **{**keep, **decoder_settings})
    spec = read_spec(decoder)
    sizes = {f.name: getattr(model.config.output_projections[modality], f.name)
             for f in dataclasses.fields(model.config.output_projections[modality])
             if f.name not in ("num_output_tokens", "output_dim", "outputs")}
    model.config.decoders[modality] = decoder
    model.config.output_projections[modality] = output_projection_for(spec, **sizes)
    old_proj = model.output_projections[modality]
    fresh = OutputProjection(llm_dim=old_proj.config.llm_dim, **vars(model.config.output_projections[modality]))
    # nn.Module.to: diffusers' ModelMixin.to logs a float32-modules warning on every dtype cast
    model.output_projections[modality] = torch.nn.Module.to(fresh, device=old_proj.device, dtype=old_proj.dtype)
    return decoder


__all__ = ["parse_decoder_arg", "swap_decoder"]
