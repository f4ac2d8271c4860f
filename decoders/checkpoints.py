"""Released checkpoints of each decoder kind, described by the configs their specs and sizes come from.

No download: each entry holds the config values of the checkpoint's ``model_index.json`` components
that matter here (copied from the released ``config.json`` files), so that

* ``checkpoint_spec`` gives the conditioning spec a real-size output projection must produce, with
  the same spec functions a loaded decoder uses (``sdxl_spec`` reads an SDXL UNet config whether it
  came from disk or from this table), and
* ``checkpoint_parameters`` counts the denoiser's and each text component's parameters by building
  them on the ``meta`` device (no memory): what ``text_encoders=False`` leaves out at generation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import DecoderConfig
from .spec import ConditioningSpec

# ---- text encoders (transformers classes and configs) ---------------------------------------------
_T5_XXL = ("T5EncoderModel", dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
                                  feed_forward_proj="gated-gelu"))
_UMT5_XXL = ("UMT5EncoderModel", dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                                      vocab_size=256384, feed_forward_proj="gated-gelu"))
_FLAN_T5_LARGE = ("T5EncoderModel", dict(d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=24,
                                         vocab_size=32128, feed_forward_proj="gated-gelu"))
_T5_BASE = ("T5EncoderModel", dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, vocab_size=32128,
                                   feed_forward_proj="relu"))
_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               vocab_size=49408, max_position_embeddings=77, projection_dim=768)
_CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                  vocab_size=49408, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
_CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
               vocab_size=49408, max_position_embeddings=77, projection_dim=512, hidden_act="gelu")
_CLAP_TEXT = ("ClapTextModelWithProjection", dict(projection_dim=512))  # RoBERTa-base sized text tower
_GPT2 = ("GPT2Model", dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257))

# ---- denoisers (diffusers classes and configs) -----------------------------------------------------
_SD15_UNET = dict(cross_attention_dim=768)
_SDXL_UNET = dict(sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
                  transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
                  addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816)
_SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                   num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")
_FLUX_DEV = dict(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                 joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
_WAN_1_3B = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096,
                 in_channels=16, out_channels=16)
_WAN_14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, text_dim=4096,
                in_channels=16, out_channels=16)
_COGVIDEOX_5B = dict(num_attention_heads=48, attention_head_dim=64, time_embed_dim=512, text_embed_dim=4096,
                     num_layers=42, use_rotary_positional_embeddings=True, max_text_seq_length=226)
_STABLE_AUDIO_DIT: dict[str, Any] = {}  # the class defaults are stable-audio-open-1.0's


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    kind: str
    denoiser: tuple[str, dict] | None  # diffusers class, config (None: not tabulated)
    text: dict[str, tuple[str, dict]]  # component name -> transformers class, config
    spec_config: dict  # what the kind's spec function reads
    note: str = ""


KNOWN_CHECKPOINTS: dict[str, Checkpoint] = {
    "runwayml/stable-diffusion-v1-5": Checkpoint(
        "stable_diffusion", ("UNet2DConditionModel", _SD15_UNET), {"text_encoder": ("CLIPTextModel", _CLIP_L)},
        {"tokens": 77, "dim": 768}),
    "cerspense/zeroscope_v2_576w": Checkpoint(
        "text_to_video_sd", None, {"text_encoder": ("CLIPTextModel", _CLIP_H)}, {"tokens": 77, "dim": 1024}),
    "cvssp/audioldm-l-full": Checkpoint("audioldm", None, {"text_encoder": _CLAP_TEXT}, {"tokens": 1, "dim": 512}),
    "stabilityai/stable-diffusion-xl-base-1.0": Checkpoint(
        "stable_diffusion_xl", ("UNet2DConditionModel", _SDXL_UNET),
        {"text_encoder": ("CLIPTextModel", _CLIP_L), "text_encoder_2": ("CLIPTextModelWithProjection", _CLIP_BIGG)},
        _SDXL_UNET),
    "stabilityai/stable-diffusion-3.5-large": Checkpoint(
        "stable_diffusion_3", ("SD3Transformer2DModel", _SD35_LARGE),
        {"text_encoder": ("CLIPTextModelWithProjection", _CLIP_L),
         "text_encoder_2": ("CLIPTextModelWithProjection", _CLIP_BIGG), "text_encoder_3": _T5_XXL},
        _SD35_LARGE),
    "black-forest-labs/FLUX.1-dev": Checkpoint(
        "flux", ("FluxTransformer2DModel", _FLUX_DEV),
        {"text_encoder": ("CLIPTextModel", _CLIP_L), "text_encoder_2": _T5_XXL}, _FLUX_DEV),
    "black-forest-labs/FLUX.1-schnell": Checkpoint(
        "flux", ("FluxTransformer2DModel", {**_FLUX_DEV, "guidance_embeds": False}),
        {"text_encoder": ("CLIPTextModel", _CLIP_L), "text_encoder_2": _T5_XXL}, _FLUX_DEV,
        note="use max_sequence_length=256"),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": Checkpoint(
        "wan", ("WanTransformer3DModel", _WAN_1_3B), {"text_encoder": _UMT5_XXL}, _WAN_1_3B),
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": Checkpoint(
        "wan", ("WanTransformer3DModel", _WAN_14B), {"text_encoder": _UMT5_XXL}, _WAN_14B),
    "THUDM/CogVideoX-5b": Checkpoint(
        "cogvideox", ("CogVideoXTransformer3DModel", _COGVIDEOX_5B), {"text_encoder": _T5_XXL}, _COGVIDEOX_5B),
    "cvssp/audioldm2": Checkpoint(
        "audioldm2", None,
        {"text_encoder": ("ClapModel", {}), "text_encoder_2": _FLAN_T5_LARGE, "language_model": _GPT2},
        {"text_encoder_dim": 512, "text_encoder_1_dim": 1024, "langauge_model_dim": 768, "generated_tokens": 8},
        note="the GPT-2 and T5 configs stay (config-only stand-ins) without their weights"),
    "stabilityai/stable-audio-open-1.0": Checkpoint(
        "stable_audio", ("StableAudioDiTModel", _STABLE_AUDIO_DIT), {"text_encoder": _T5_BASE},
        {"text_encoder_dim": 768}),
}


def _lookup(name_or_path: str | None) -> Checkpoint:
    try:
        return KNOWN_CHECKPOINTS[name_or_path]
    except KeyError:
        raise ValueError(f"decoder checkpoint {name_or_path!r} is not in decoders.checkpoints.KNOWN_CHECKPOINTS "
                         f"(known: {sorted(KNOWN_CHECKPOINTS)}); load it to read its spec instead") from None


def spec_from_config(kind: str, spec_config: dict, max_sequence_length: int | None) -> ConditioningSpec:
    """The spec of ``kind`` from the config values its spec function reads."""
    from .audioldm2 import audioldm2_spec
    from .cogvideox import cogvideox_spec
    from .flux import flux_spec
    from .sd3 import sd3_spec
    from .sdxl import sdxl_spec
    from .stable_audio import stable_audio_spec
    from .wan import wan_spec

    if kind in ("stable_diffusion", "text_to_video_sd", "audioldm"):
        return ConditioningSpec.single((spec_config["tokens"], spec_config["dim"]))
    if kind == "stable_diffusion_xl":
        return sdxl_spec(spec_config)
    if kind == "stable_diffusion_3":
        return sd3_spec(spec_config, max_sequence_length)
    if kind == "flux":
        return flux_spec(spec_config, max_sequence_length)
    if kind == "wan":
        return wan_spec(spec_config, max_sequence_length)
    if kind == "cogvideox":
        return cogvideox_spec(spec_config)
    if kind == "audioldm2":
        return audioldm2_spec(spec_config, spec_config["generated_tokens"], max_sequence_length)
    if kind == "stable_audio":
        return stable_audio_spec(spec_config, max_sequence_length)
    raise ValueError(f"no spec function for decoder kind {kind!r}")


def checkpoint_spec(config: DecoderConfig) -> ConditioningSpec:
    """The conditioning spec of the released checkpoint ``config.name_or_path`` (no download)."""
    ckpt = _lookup(config.name_or_path)
    if ckpt.kind != config.kind:
        raise ValueError(f"{config.name_or_path!r} is a {ckpt.kind!r} checkpoint, but the config says kind {config.kind!r}")
    return spec_from_config(ckpt.kind, ckpt.spec_config, config.max_sequence_length)


def _folder_config(folder, component: str) -> dict | None:
    import json
    from pathlib import Path

    path = Path(folder) / component / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_spec(config: DecoderConfig) -> ConditioningSpec:
    """The conditioning spec of ``config`` without loading any weights: a known hub id from the
    table, a local pipeline folder from its components' ``config.json`` files."""
    from pathlib import Path

    if config.name_or_path in KNOWN_CHECKPOINTS:
        return checkpoint_spec(config)
    folder = config.name_or_path
    if folder is None or not (Path(folder) / "model_index.json").is_file():
        raise ValueError(f"decoder {folder!r}: a spec is read from a known hub id ({sorted(KNOWN_CHECKPOINTS)}) or a "
                         "local pipeline folder with model_index.json; build the decoder to read any other")
    kind = config.kind
    denoiser = _folder_config(folder, "unet") or _folder_config(folder, "transformer") or \
        _folder_config(folder, "transformer_2") or {}
    if kind in ("stable_diffusion", "text_to_video_sd"):
        spec_config = {"tokens": 77, "dim": denoiser["cross_attention_dim"]}
    elif kind == "audioldm":
        spec_config = {"tokens": 1, "dim": denoiser["projection_class_embeddings_input_dim"]}
    elif kind in ("audioldm2", "stable_audio"):
        spec_config = dict(_folder_config(folder, "projection_model"))
        if kind == "audioldm2":
            spec_config["generated_tokens"] = int(_folder_config(folder, "language_model").get("max_new_tokens", 8))
    else:
        spec_config = denoiser
    return spec_from_config(kind, spec_config, config.max_sequence_length)


def _count(library: str, class_name: str, cfg: dict) -> int:
    import torch

    with torch.device("meta"):
        if library == "diffusers":
            import diffusers

            model = getattr(diffusers, class_name)(**cfg)
        else:
            import transformers

            model_cls = getattr(transformers, class_name)
            config_cls = model_cls.config_class
            model = model_cls(config_cls(**cfg))
    return sum(p.numel() for p in model.parameters())


def checkpoint_parameters(name_or_path: str) -> dict[str, int | None]:
    """Parameters per component, counted on the ``meta`` device: ``denoiser`` (None where not
    tabulated) and each text component (what generation leaves out with ``text_encoders=False``)."""
    ckpt = _lookup(name_or_path)
    out: dict[str, int | None] = {"denoiser": None if ckpt.denoiser is None else _count("diffusers", *ckpt.denoiser)}
    for name, (cls, cfg) in ckpt.text.items():
        out[name] = _count("transformers", cls, cfg)
    return out


__all__ = ["KNOWN_CHECKPOINTS", "Checkpoint", "checkpoint_parameters", "checkpoint_spec", "read_spec", "spec_from_config"]
