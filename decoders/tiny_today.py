"""Tiny random-weight pipelines of today's kinds (SDXL, SD3, FLUX, Wan, CogVideoX, Stable Audio, AudioLDM2).

Built like ``decoders.tiny`` builds the pre-2024 kinds (and like diffusers' own tests'
``get_dummy_components``): each component from a small config with diffusers' / transformers'
classes, tokenizers written in code (CLIP byte-level BPE from ``decoders.tiny``; T5 as a small
Unigram vocabulary), no download. The layouts match the released checkpoints (which encoder
feeds which tensor, which scheduler family), only the widths are small; ``max_length`` of the
T5 tokenizers equals the kind's tiny ``max_sequence_length``.
"""

from __future__ import annotations

import string
from typing import Any

from .tiny_parts import _clip_tokenizer, _roberta_tokenizer, _vae

TODAY_SIZES: dict[str, dict[str, Any]] = {
    "stable_diffusion_xl": dict(clip_hidden=16, clip_hidden_2=24, text_layers=2, text_heads=2, max_length=77,
                                unet_channels=(8, 16), norm_groups=4, attention_head_dim=4, time_embed_dim=8,
                                vae_channels=(8, 16), latent_channels=4, sample_size=16),
    "stable_diffusion_3": dict(clip_hidden=16, text_layers=2, text_heads=2, max_length=77, t5_dim=32, t5_length=8,
                               layers=1, heads=2, head_dim=8, vae_channels=(8, 16), latent_channels=4,
                               sample_size=16),
    "flux": dict(clip_hidden=16, text_layers=2, text_heads=2, max_length=77, t5_dim=32, t5_length=8,
                 layers=1, single_layers=1, heads=2, head_dim=16, vae_channels=(8, 16), latent_channels=4,
                 sample_size=16),
    "wan": dict(t5_dim=32, t5_length=8, text_layers=2, layers=1, heads=2, head_dim=12, vae_dim=4),
    "cogvideox": dict(t5_dim=32, t5_length=8, text_layers=2, layers=1, heads=2, head_dim=8, latent_channels=4,
                      vae_channels=(8, 8, 8, 8)),
    "stable_audio": dict(t5_dim=32, t5_length=8, text_layers=2, layers=1, heads=2, head_dim=8, conditioning_dim=8,
                         latent_channels=4, sample_size=32, sampling_rate=512, downsampling=(2, 4)),
    "audioldm2": dict(clap_hidden=16, clap_projection=16, text_layers=2, text_heads=2, max_length=77,
                      t5_dim=32, t5_length=8, gpt2_dim=16, gpt2_layers=1, generated_tokens=8,
                      unet_channels=(8, 16), norm_groups=4, vae_channels=(8, 16), latent_channels=4,
                      sample_size=16, mel_bins=16, sampling_rate=16000,
                      upsample_rates=(8, 5, 4), upsample_kernel_sizes=(16, 10, 8), upsample_initial_channel=16),
}

_T5_WORDS = ("a", "the", "red", "blue", "green", "circle", "square", "tone", "low", "high", "dog", "cat")


def t5_tokenizer(max_length: int):
    """A T5 (Unigram) tokenizer: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, characters and a few words."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(c, -5.0) for c in "▁" + string.ascii_letters + string.digits + string.punctuation]
    vocab += [("▁" + w, -1.0) for w in _T5_WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def t5_encoder(s: dict, tokenizer, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    cfg = config_cls(vocab_size=len(tokenizer), d_model=s["t5_dim"], d_kv=8, d_ff=2 * s["t5_dim"],
                     num_layers=s["text_layers"], num_heads=4, relative_attention_num_buckets=8,
                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return model_cls(cfg)


def clip_encoder(hidden: int, s: dict, tokenizer, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"],
        max_position_embeddings=s["max_length"], projection_dim=hidden, layer_norm_eps=1e-5,
        hidden_act="gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _flow_vae(s: dict, shift: float, scale: float):
    vae_sizes = dict(vae_channels=s["vae_channels"], latent_channels=s["latent_channels"], norm_groups=4,
                     sample_size=s["sample_size"])
    vae = _vae(vae_sizes, in_channels=3)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return vae


def build_sdxl(s: dict):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    n = len(s["unet_channels"])
    tokenizer, tokenizer_2 = _clip_tokenizer(s["max_length"]), _clip_tokenizer(s["max_length"])
    text_encoder = clip_encoder(s["clip_hidden"], s, tokenizer, projection=False)
    text_encoder_2 = clip_encoder(s["clip_hidden_2"], s, tokenizer_2, projection=True)
    unet = UNet2DConditionModel(
        sample_size=s["sample_size"], in_channels=s["latent_channels"], out_channels=s["latent_channels"],
        down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        block_out_channels=tuple(s["unet_channels"]), layers_per_block=1, norm_num_groups=s["norm_groups"],
        attention_head_dim=s["attention_head_dim"], use_linear_projection=True,
        cross_attention_dim=s["clip_hidden"] + s["clip_hidden_2"],
        addition_embed_type="text_time", addition_time_embed_dim=s["time_embed_dim"],
        projection_class_embeddings_input_dim=6 * s["time_embed_dim"] + s["clip_hidden_2"],
    )
    vae = _vae({**s, "norm_groups": 4}, in_channels=3)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, image_encoder=None, feature_extractor=None,
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def build_sd3(s: dict):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, tok_2, tok_3 = _clip_tokenizer(s["max_length"]), _clip_tokenizer(s["max_length"]), t5_tokenizer(s["t5_length"])
    enc = clip_encoder(s["clip_hidden"], s, tok, projection=True)
    enc_2 = clip_encoder(s["clip_hidden"], s, tok_2, projection=True)
    enc_3 = t5_encoder(s, tok_3)
    transformer = SD3Transformer2DModel(
        sample_size=s["sample_size"], patch_size=1, in_channels=s["latent_channels"], out_channels=s["latent_channels"],
        num_layers=s["layers"], attention_head_dim=s["head_dim"], num_attention_heads=s["heads"],
        joint_attention_dim=s["t5_dim"], caption_projection_dim=s["heads"] * s["head_dim"],
        pooled_projection_dim=2 * s["clip_hidden"], pos_embed_max_size=2 * s["sample_size"],
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_flow_vae(s, shift=0.0609, scale=1.5305), text_encoder=enc, tokenizer=tok, text_encoder_2=enc_2,
        tokenizer_2=tok_2, text_encoder_3=enc_3, tokenizer_3=tok_3, image_encoder=None, feature_extractor=None,
    )


def build_flux(s: dict):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, tok_2 = _clip_tokenizer(s["max_length"]), t5_tokenizer(s["t5_length"])
    head = s["head_dim"]
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * s["latent_channels"], num_layers=s["layers"],
        num_single_layers=s["single_layers"], attention_head_dim=head, num_attention_heads=s["heads"],
        joint_attention_dim=s["t5_dim"], pooled_projection_dim=s["clip_hidden"], guidance_embeds=True,
        axes_dims_rope=(head // 4, head // 4, head // 2),
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(s, shift=0.1159, scale=0.3611),
        text_encoder=clip_encoder(s["clip_hidden"], s, tok, projection=False), tokenizer=tok,
        text_encoder_2=t5_encoder(s, tok_2), tokenizer_2=tok_2, transformer=transformer,
        image_encoder=None, feature_extractor=None,
    )


def build_wan(s: dict):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    tok = t5_tokenizer(s["t5_length"])
    vae = AutoencoderKLWan(base_dim=s["vae_dim"], z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=s["heads"], attention_head_dim=s["head_dim"], in_channels=16,
        out_channels=16, text_dim=s["t5_dim"], freq_dim=32, ffn_dim=32, num_layers=s["layers"],
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    return WanPipeline(tokenizer=tok, text_encoder=t5_encoder(s, tok, umt5=True), vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))


def build_cogvideox(s: dict):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    tok = t5_tokenizer(s["t5_length"])
    n = len(s["vae_channels"])
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * n,
        up_block_types=("CogVideoXUpBlock3D",) * n, block_out_channels=tuple(s["vae_channels"]),
        latent_channels=s["latent_channels"], layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=s["heads"], attention_head_dim=s["head_dim"], in_channels=s["latent_channels"],
        out_channels=s["latent_channels"], time_embed_dim=8, text_embed_dim=s["t5_dim"], num_layers=s["layers"],
        sample_width=2, sample_height=2, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=s["t5_length"],
    )
    return CogVideoXPipeline(tokenizer=tok, text_encoder=t5_encoder(s, tok), vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())


def build_stable_audio(s: dict):
    from diffusers import (AutoencoderOobleck, CosineDPMSolverMultistepScheduler, StableAudioDiTModel,
                           StableAudioPipeline, StableAudioProjectionModel)

    tok = t5_tokenizer(s["t5_length"])
    cond = s["conditioning_dim"]
    transformer = StableAudioDiTModel(
        sample_size=s["sample_size"], in_channels=s["latent_channels"], out_channels=s["latent_channels"],
        num_layers=s["layers"], attention_head_dim=s["head_dim"], num_attention_heads=s["heads"],
        num_key_value_attention_heads=1, cross_attention_dim=s["heads"] * s["head_dim"], time_proj_dim=8,
        global_states_input_dim=2 * cond, cross_attention_input_dim=cond,
    )
    ratios = list(s["downsampling"])
    vae = AutoencoderOobleck(encoder_hidden_size=6, downsampling_ratios=ratios, decoder_channels=3,
                             decoder_input_channels=s["latent_channels"], audio_channels=2,
                             channel_multiples=[2] * len(ratios), sampling_rate=s["sampling_rate"])
    projection = StableAudioProjectionModel(text_encoder_dim=s["t5_dim"], conditioning_dim=cond, min_value=0,
                                            max_value=32)
    scheduler = CosineDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
                                                  sigma_schedule="exponential")
    return StableAudioPipeline(vae=vae, text_encoder=t5_encoder(s, tok), projection_model=projection, tokenizer=tok,
                               transformer=transformer, scheduler=scheduler)


def build_audioldm2(s: dict):
    from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel, DDIMScheduler
    from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig, GPT2Config,
                              GPT2LMHeadModel, SpeechT5HifiGan, SpeechT5HifiGanConfig)

    n = len(s["unet_channels"])
    tok, tok_2 = _roberta_tokenizer(s["max_length"]), t5_tokenizer(s["t5_length"])
    text_cfg = ClapTextConfig(vocab_size=len(tok), hidden_size=s["clap_hidden"], intermediate_size=2 * s["clap_hidden"],
                              num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"],
                              max_position_embeddings=s["max_length"] + 2, projection_dim=s["clap_projection"],
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    # CLAP's audio tower only scores several waveforms per prompt; it is kept minimal.
    audio_cfg = ClapAudioConfig(spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=8, depths=[1, 1],
                                num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=16,
                                projection_dim=s["clap_projection"], patch_size=2, patch_stride=2,
                                patch_embed_input_channels=4)
    text_encoder = ClapModel(ClapConfig(text_config=text_cfg.to_dict(), audio_config=audio_cfg.to_dict(),
                                        projection_dim=s["clap_projection"]))
    # room for CLAP (1) + T5 + four special tokens + the generated states
    positions = s["t5_length"] + s["generated_tokens"] + 8
    language_model = GPT2LMHeadModel(GPT2Config(n_embd=s["gpt2_dim"], n_head=2, n_layer=s["gpt2_layers"],
                                                vocab_size=64, n_positions=positions,
                                                bos_token_id=0, eos_token_id=0))
    language_model.config.max_new_tokens = s["generated_tokens"]
    projection = AudioLDM2ProjectionModel(text_encoder_dim=s["clap_projection"], text_encoder_1_dim=s["t5_dim"],
                                          langauge_model_dim=s["gpt2_dim"])
    cross = [None, s["gpt2_dim"], s["t5_dim"]]  # self-attention, GPT-2 states, T5 states
    unet = AudioLDM2UNet2DConditionModel(
        sample_size=s["sample_size"], in_channels=s["latent_channels"], out_channels=s["latent_channels"],
        down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        block_out_channels=tuple(s["unet_channels"]), layers_per_block=1, norm_num_groups=s["norm_groups"],
        attention_head_dim=2, cross_attention_dim=[cross] * n,
    )
    vae = _vae({**s, "norm_groups": 4}, in_channels=1)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=s["mel_bins"], sampling_rate=s["sampling_rate"], upsample_initial_channel=s["upsample_initial_channel"],
        upsample_rates=list(s["upsample_rates"]), upsample_kernel_sizes=list(s["upsample_kernel_sizes"]),
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], normalize_before=False,
    ))
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return AudioLDM2Pipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=t5_encoder(s, tok_2),
                             projection_model=projection, language_model=language_model, tokenizer=tok,
                             tokenizer_2=tok_2, feature_extractor=ClapFeatureExtractor(), unet=unet,
                             scheduler=scheduler, vocoder=vocoder)


TODAY_BUILDERS = {
    "audioldm2": build_audioldm2,
    "stable_diffusion_xl": build_sdxl,
    "stable_diffusion_3": build_sd3,
    "flux": build_flux,
    "wan": build_wan,
    "cogvideox": build_cogvideox,
    "stable_audio": build_stable_audio,
}
