"""Tiny random-weight diffusion pipelines, built from configs (no model hub).

The same way the diffusers test-suite builds its fixtures: every component is created from a
small config with seeded random weights. The result is a *real* diffusers pipeline
(``StableDiffusionPipeline`` / ``TextToVideoSDPipeline`` / ``AudioLDMPipeline``) with the same
component layout as the full-size checkpoint, so every code path (``prompt=`` and
``prompt_embeds=``, classifier-free guidance, ``save_pretrained`` / ``from_pretrained``) is the
production one; only the sizes differ.

Tokenizers and shared component configs: ``decoders.tiny_parts``; today's kinds: ``decoders.tiny_today``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import KINDS
from .tiny_today import TODAY_BUILDERS, TODAY_SIZES

# Default sizes per kind. Every entry can be overridden through ``build_tiny_pipeline(**sizes)``.
TINY_SIZES: dict[str, dict[str, Any]] = {
    **TODAY_SIZES,
    "stable_diffusion": dict(
        text_hidden=32, text_layers=2, text_heads=4, max_length=77,
        unet_channels=(8, 16), norm_groups=4, attention_head_dim=4,
        vae_channels=(8, 16), latent_channels=4, sample_size=16,
    ),
    "text_to_video_sd": dict(
        text_hidden=48, text_layers=2, text_heads=4, max_length=77,
        unet_channels=(8, 16), norm_groups=4, attention_head_dim=4,
        vae_channels=(8, 16), latent_channels=4, sample_size=16,
    ),
    "audioldm": dict(
        text_hidden=32, text_layers=2, text_heads=4, max_length=77, projection_dim=32,
        unet_channels=(8, 16), norm_groups=4, attention_head_dim=4,
        vae_channels=(8, 16), latent_channels=4, sample_size=16,
        mel_bins=16, sampling_rate=16000,
        # product 160 = the real AudioLDM hop (10 ms at 16 kHz): 1 s of audio = 100 mel frames
        upsample_rates=(8, 5, 4), upsample_kernel_sizes=(16, 10, 8), upsample_initial_channel=16,
    ),
}

# A handful of merges so that the tokenizers do real BPE work (and common words get one id).
from .tiny_parts import (  # noqa: F401  (re-exported: tests and the world build tokenizers with them)
    _WORDS,
    _clip_text_encoder,
    _clip_tokenizer,
    _roberta_tokenizer,
    _vae,
    bytes_to_unicode,
    write_clip_bpe,
    write_roberta_bpe,
)


def _build_stable_diffusion(s: dict):
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    n = len(s["unet_channels"])
    tokenizer = _clip_tokenizer(s["max_length"])
    text_encoder = _clip_text_encoder(s, tokenizer)
    unet = UNet2DConditionModel(
        sample_size=s["sample_size"],
        in_channels=s["latent_channels"],
        out_channels=s["latent_channels"],
        down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        block_out_channels=tuple(s["unet_channels"]),
        layers_per_block=1,
        cross_attention_dim=s["text_hidden"],
        attention_head_dim=s["attention_head_dim"],
        norm_num_groups=s["norm_groups"],
    )
    vae = _vae(s, in_channels=3)
    # SD-1.5 ships a PNDM scheduler (skip_prk_steps) with the scaled-linear betas.
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def _build_text_to_video(s: dict):
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel

    n = len(s["unet_channels"])
    tokenizer = _clip_tokenizer(s["max_length"])
    text_encoder = _clip_text_encoder(s, tokenizer)
    unet = UNet3DConditionModel(
        sample_size=s["sample_size"],
        in_channels=s["latent_channels"],
        out_channels=s["latent_channels"],
        down_block_types=("CrossAttnDownBlock3D",) + ("DownBlock3D",) * (n - 1),
        up_block_types=("UpBlock3D",) * (n - 1) + ("CrossAttnUpBlock3D",),
        block_out_channels=tuple(s["unet_channels"]),
        layers_per_block=1,
        cross_attention_dim=s["text_hidden"],
        attention_head_dim=s["attention_head_dim"],
        norm_num_groups=s["norm_groups"],
    )
    vae = _vae(s, in_channels=3)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def _build_audioldm(s: dict):
    from diffusers import AudioLDMPipeline, DDIMScheduler, UNet2DConditionModel
    from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

    n = len(s["unet_channels"])
    tokenizer = _roberta_tokenizer(s["max_length"])
    text_encoder = ClapTextModelWithProjection(
        ClapTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=s["text_hidden"],
            intermediate_size=2 * s["text_hidden"],
            num_hidden_layers=s["text_layers"],
            num_attention_heads=s["text_heads"],
            # RoBERTa positions start after the padding index; the pipeline pads the unconditional
            # prompt to ``projection_dim`` tokens, so room for both.
            max_position_embeddings=max(s["max_length"], s["projection_dim"]) + 2,
            projection_dim=s["projection_dim"],
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # AudioLDM conditions on the CLAP embedding through the class (time) embedding, not
    # cross-attention: its "cross" attention dims equal the block widths (self-attention).
    unet = UNet2DConditionModel(
        sample_size=s["sample_size"],
        in_channels=s["latent_channels"],
        out_channels=s["latent_channels"],
        down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        block_out_channels=tuple(s["unet_channels"]),
        layers_per_block=1,
        cross_attention_dim=tuple(s["unet_channels"]),
        attention_head_dim=s["attention_head_dim"],
        norm_num_groups=s["norm_groups"],
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=s["projection_dim"],
        class_embeddings_concat=True,
    )
    vae = _vae(s, in_channels=1)
    scheduler = DDIMScheduler(
        beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=s["mel_bins"],  # must equal the mel bins (the VAE's width)
            sampling_rate=s["sampling_rate"],
            upsample_initial_channel=s["upsample_initial_channel"],
            upsample_rates=list(s["upsample_rates"]),
            upsample_kernel_sizes=list(s["upsample_kernel_sizes"]),
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]],
            normalize_before=False,
        )
    )
    return AudioLDMPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, vocoder=vocoder
    )


_BUILDERS = {
    **TODAY_BUILDERS,
    "stable_diffusion": _build_stable_diffusion,
    "text_to_video_sd": _build_text_to_video,
    "audioldm": _build_audioldm,
}


def tiny_sizes(kind: str, **sizes: Any) -> dict[str, Any]:
    """The default tiny sizes of ``kind`` updated with ``sizes`` (unknown keys are an error)."""
    if kind not in TINY_SIZES:
        raise ValueError(f"unknown decoder kind {kind!r}; expected one of {KINDS}")
    unknown = set(sizes) - set(TINY_SIZES[kind])
    if unknown:
        raise ValueError(f"unknown tiny size keys for {kind!r}: {sorted(unknown)}; known: {sorted(TINY_SIZES[kind])}")
    return {**TINY_SIZES[kind], **sizes}


def build_tiny_pipeline(kind: str, seed: int = 0, **sizes: Any):
    """Build a tiny random-weight diffusers pipeline of ``kind`` (deterministic for ``seed``).

    The global torch RNG is left untouched (the build runs inside ``torch.random.fork_rng``).
    """
    s = tiny_sizes(kind, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _BUILDERS[kind](s)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval()
    return pipe


def write_tiny_pipeline(kind: str, folder: str | os.PathLike, seed: int = 0, **sizes: Any) -> Path:
    """Build a tiny pipeline and ``save_pretrained`` it to ``folder`` (the real on-disk layout:
    ``model_index.json`` + one sub-folder per component), so that ``<Pipeline>.from_pretrained(folder)``
    and ``build_decoder(DecoderConfig(kind, name_or_path=folder))`` load it like a hub checkpoint."""
    folder = Path(folder)
    build_tiny_pipeline(kind, seed=seed, **sizes).save_pretrained(folder)
    return folder


def count_parameters(pipe) -> dict[str, int]:
    """Parameter count per ``nn.Module`` component of a pipeline."""
    return {
        name: sum(p.numel() for p in m.parameters())
        for name, m in pipe.components.items()
        if isinstance(m, torch.nn.Module)
    }

