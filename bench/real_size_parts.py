"""The real-size parts of bench/real_size.py: published sizes, memory/time accounting, and builders."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu import (  # noqa: E402  (the real-size helpers shared with the GPU bench)
    BASE_VOCAB,
    QWEN25_7B,
    SD15_SCHEDULER,
    SD15_UNET,
    SD15_VAE,
    VICUNA_7B,
    build_llm,
    word_tokenizer,
)


# ---- real sizes not already in bench/gpu.py (from the published diffusers configs) -------------
ZEROSCOPE_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    cross_attention_dim=1024, attention_head_dim=64, norm_num_groups=32,
)
# AudioLDM-L: model_channels 256, channel_mult (1, 2, 3, 5), attention at 2x/4x/8x, FiLM-concat CLAP
# conditioning; its "cross" attention widths equal the block widths (self-attention).
AUDIOLDM_UNET = dict(
    sample_size=128, in_channels=8, out_channels=8, layers_per_block=2,
    block_out_channels=(256, 512, 768, 1280),
    down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
    cross_attention_dim=(256, 512, 768, 1280), attention_head_dim=8, norm_num_groups=32,
    class_embed_type="simple_projection", projection_class_embeddings_input_dim=512, class_embeddings_concat=True,
)
AUDIOLDM_VAE = dict(
    in_channels=1, out_channels=1, latent_channels=8, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512), norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
)
AUDIOLDM_VOCODER = dict(
    model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024, upsample_rates=[5, 4, 2, 2, 2],
    upsample_kernel_sizes=[16, 16, 8, 4, 4], resblock_kernel_sizes=[3, 7, 11],
    resblock_dilation_sizes=[[1, 3, 5]] * 3, normalize_before=False,
)
CLAP_TEXT = dict(vocab_size=50265, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=514, projection_dim=512)
DDIM_SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
               set_alpha_to_one=False, steps_offset=1)
DDIM_AUDIOLDM = dict(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                     set_alpha_to_one=False, steps_offset=1)
DECODER_KIND = {"image": "stable_diffusion", "video": "text_to_video_sd", "audio": "audioldm"}
# The cores: Vicuna-7B and Qwen2.5-7B-Instruct (both sized in bench/gpu.py).
LLM_SIZES = {"nextgpt-7b": VICUNA_7B, "anyany-qwen2.5-7b": QWEN25_7B}
BF16 = torch.bfloat16


# ---- sizes ----------------------------------------------------------------------------------------
def _div(width: int, n: int, multiple: int = 16) -> int:
    return width if n == 1 else max(multiple, width // n // multiple * multiple)


def _unet(cfg: dict, n: int) -> dict:
    if n == 1:
        return dict(cfg)
    out = dict(cfg, block_out_channels=tuple(_div(c, n) for c in cfg["block_out_channels"]),
                layers_per_block=max(1, cfg["layers_per_block"] // n), norm_num_groups=8, attention_head_dim=8)
    if isinstance(cfg.get("cross_attention_dim"), tuple):  # AudioLDM: self-attention widths follow the blocks
        out["cross_attention_dim"] = out["block_out_channels"]
    elif "cross_attention_dim" in cfg:
        out["cross_attention_dim"] = _div(cfg["cross_attention_dim"], n)
    if "projection_class_embeddings_input_dim" in cfg:
        out["projection_class_embeddings_input_dim"] = _div(cfg["projection_class_embeddings_input_dim"], n)
    return out


def sizes(n: int, preset: str = "nextgpt-7b") -> dict:
    """Every architecture size; ``n`` > 1 divides widths and layer counts (same structure, CI)."""
    from encoders.imagebind import ImageBindConfig

    llm = dict(LLM_SIZES[preset])
    if n > 1:
        heads = max(2, llm["num_attention_heads"] // n)
        kv = heads if llm["num_key_value_heads"] == llm["num_attention_heads"] else max(1, llm["num_key_value_heads"] // n)
        llm.update(hidden_size=_div(llm["hidden_size"], n, 64), intermediate_size=_div(llm["intermediate_size"], n, 8),
                   num_hidden_layers=max(2, llm["num_hidden_layers"] // n), num_attention_heads=heads,
                   num_key_value_heads=kv)
    ib = ImageBindConfig.huge()
    if n > 1:
        ib = ImageBindConfig(embed_dim=_div(ib.embed_dim, n), vision_width=_div(ib.vision_width, n),
                             vision_layers=max(1, ib.vision_layers // n), vision_heads=max(1, ib.vision_heads // n),
                             audio_width=_div(ib.audio_width, n), audio_layers=max(1, ib.audio_layers // n),
                             audio_heads=max(1, ib.audio_heads // n))
    vae = lambda cfg: cfg if n == 1 else dict(  # noqa: E731
        cfg, block_out_channels=tuple(_div(c, n) for c in cfg["block_out_channels"]), layers_per_block=1, norm_num_groups=8)
    clap = dict(CLAP_TEXT)
    vocoder = dict(AUDIOLDM_VOCODER)
    if n > 1:
        clap.update(hidden_size=_div(768, n), intermediate_size=_div(3072, n), num_hidden_layers=max(1, 12 // n),
                    num_attention_heads=max(1, 12 // n), projection_dim=_div(512, n))
        vocoder.update(upsample_initial_channel=max(64, 1024 // n))
    projection = dict(d_model=512, num_heads=4, num_encoder_layers=4, num_decoder_layers=4, ff_dim=2048)
    if n > 1:
        projection.update(d_model=_div(512, n), num_encoder_layers=max(1, 4 // n), num_decoder_layers=max(1, 4 // n),
                          ff_dim=_div(2048, n))
    return dict(scale_down=n, preset=preset, llm=llm, vocab=BASE_VOCAB, imagebind=ib, projection=projection,
                sd_unet=_unet(SD15_UNET, n), sd_vae=vae(SD15_VAE), zs_unet=_unet(ZEROSCOPE_UNET, n), zs_vae=vae(SD15_VAE),
                aldm_unet=_unet(AUDIOLDM_UNET, n), aldm_vae=vae(AUDIOLDM_VAE), clap=clap, vocoder=vocoder)


# ---- memory and time ------------------------------------------------------------------------------
def _status_gb(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 2**20


def rss_gb() -> float:
    return _status_gb("VmRSS")


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them for reuse), so RSS shows what is live."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so each phase reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:  # not Linux / not permitted: peaks are then cumulative
        return False


def peak_gb() -> float:
    try:
        return _status_gb("VmHWM")
    except (OSError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Report:
    def __init__(self):
        self.phases: list[dict] = []
        self.parts: list[dict] = []
        self.checks: list[str] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        gc.collect()
        trim_heap()
        reset_peak()
        start, t0 = rss_gb(), time.perf_counter()
        yield
        row = dict(phase=name, wall_s=time.perf_counter() - t0, start_gb=start, peak_gb=peak_gb(), end_gb=rss_gb())
        self.phases.append(row)
        print(f"  {name:<34} {row['wall_s']:8.1f} s   peak {row['peak_gb']:6.2f} GB   resident after {row['end_gb']:6.2f} GB",
              flush=True)

    def part(self, name: str, module, rss_before: float, note: str = "") -> None:
        tensors = list(module.parameters()) + list(module.buffers())
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in module.parameters()})
        self.parts.append(dict(part=name, params_m=sum(p.numel() for p in module.parameters()) / 1e6,
                               dtype="/".join(dtypes), weights_gb=sum(t.numel() * t.element_size() for t in tensors) / 2**30,
                               rss_delta_gb=rss_gb() - rss_before, note=note))

    def check(self, ok: bool, boundary: str, detail: str) -> None:
        if not ok:
            raise AssertionError(f"real-size check failed at {boundary}: {detail}")
        self.checks.append(boundary)

    @property
    def peak(self) -> float:
        return max(p["peak_gb"] for p in self.phases)


@contextlib.contextmanager
def default_dtype(dtype):
    """Parameters are created directly in ``dtype``: a 1.4 B-parameter UNet never exists in fp32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ---- builders -------------------------------------------------------------------------------------
def build_core(sz: dict, report: Report):
    """AnyToAnyModel around a random bf16 Vicuna-7B-shaped LLaMA; bridge and projections in fp32."""
    from anyany.config import LoRASettings, OutputProjectionConfig, get_preset
    from anyany.model import AnyToAnyModel, load_tokenizer, wrap_lora
    from anyany.tokens import TokenIds, extend_tokenizer, new_token_strings
    from projections import LinearBridge, OutputProjection

    config = get_preset(sz["preset"])
    config.llm.name_or_path = None
    config.llm.tokenizer_name_or_path = None
    config.llm.random_init = dict(sz["llm"])
    config.llm.torch_dtype = "bfloat16"
    config.llm.lora = LoRASettings(r=32, alpha=32, dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    config.encoder.checkpoint = None
    config.encoder.architecture = sz["imagebind"].to_dict()
    config.encoder.torch_dtype = "bfloat16"
    hidden = sz["llm"]["hidden_size"]
    config.bridge = {"type": "linear", "input_dim": sz["imagebind"].embed_dim, "llm_dim": hidden}
    cond_dims = {"image": sz["sd_unet"]["cross_attention_dim"], "video": sz["zs_unet"]["cross_attention_dim"],
                 "audio": sz["aldm_unet"]["projection_class_embeddings_input_dim"]}
    tokens = {"image": 77, "video": 77, "audio": 1}
    config.output_projections = {m: OutputProjectionConfig(num_output_tokens=tokens[m], output_dim=cond_dims[m], **sz["projection"])
                                 for m in ("image", "video", "audio")}

    family = "model_type" in sz["llm"]
    # Vicuna: LLaMA's 32000-entry vocabulary as a word tokenizer; other families: the project's small
    # tokenizer of the family's kind with its chat template (anyany.model.load_tokenizer)
    tokenizer = load_tokenizer(config.llm) if family else word_tokenizer(sz["vocab"])
    base_len = len(tokenizer)
    extend_tokenizer(tokenizer, config.signals)
    ids = TokenIds.from_tokenizer(tokenizer, config.signals)
    n_new = len(new_token_strings(config.signals))
    report.check(len(tokenizer) == base_len + n_new and sorted(ids.all_new) == list(range(base_len, base_len + n_new)),
                 "tokenizer", f"{len(tokenizer)} entries, new ids {min(ids.all_new)}..{max(ids.all_new)}; expected "
                 f"{base_len} + {n_new} new tokens after the base vocabulary")
    before = rss_gb()
    base = build_llm(config.llm.random_init, tokenizer, BF16, "cpu")
    report.part(f"LLM ({'Qwen2.5-7B' if family else 'Vicuna-7B'} shape)", base, before,
                f"vocab {base.get_input_embeddings().weight.shape[0]}")
    before = rss_gb()
    llm = wrap_lora(base, config.llm, ids.all_new)
    lora = [p for n, p in llm.named_parameters() if "lora_" in n]
    rows = [p for n, p in llm.named_parameters() if "trainable_tokens_delta" in n]
    lora_module = torch.nn.ParameterList(lora + rows)
    report.part("LoRA r=32 q,k,v,o + new token rows", lora_module, before)
    torch.manual_seed(1)
    before = rss_gb()
    bridge = LinearBridge(sz["imagebind"].embed_dim, hidden)
    report.part("linear bridge", bridge, before)
    before = rss_gb()
    projections = {m: OutputProjection(llm_dim=hidden, **vars(p)) for m, p in config.output_projections.items()}
    report.part("output projections (3)", torch.nn.ModuleDict(projections), before)
    model = AnyToAnyModel(config, tokenizer, llm, bridge, projections, encoder=None).eval()

    emb = llm.get_input_embeddings().weight
    rows = max(len(tokenizer), sz["llm"].get("vocab_size", 0))  # Qwen's vocabulary is padded past its tokenizer
    report.check(tuple(emb.shape) == (rows, hidden) and emb.dtype == BF16, "LLM embeddings",
                 f"{tuple(emb.shape)} {emb.dtype}, expected ({rows}, {hidden}) bfloat16")
    n_layers = sz["llm"]["num_hidden_layers"]
    lora_a = [p for n, p in llm.named_parameters() if "lora_A" in n]
    report.check(len(lora_a) == 4 * n_layers and all(p.shape[0] == 32 for p in lora_a), "LoRA",
                 f"{len(lora_a)} lora_A matrices (expected {4 * n_layers}) of rank {sorted({p.shape[0] for p in lora_a})}")
    for m, proj in model.output_projections.items():
        report.check(proj.dtype == torch.float32 and proj.config.llm_dim == hidden, f"{m} output projection",
                     f"{proj.dtype}, llm_dim {proj.config.llm_dim} (expected float32, {hidden})")
    return model


def build_encoder(sz: dict, report: Report):
    from encoders.imagebind import ImageBindEncoder

    before = rss_gb()
    torch.manual_seed(2)
    with default_dtype(BF16):
        encoder = ImageBindEncoder.from_config(sz["imagebind"]).requires_grad_(False).eval()
    report.part("ImageBind-huge (vision + audio)", encoder, before)
    report.check(encoder.dtype == BF16, "ImageBind", f"built in {encoder.dtype}, expected bfloat16")
    return encoder


def build_real_decoder(modality: str, sz: dict, settings: dict, report: Report | None = None):
    """A real-size random diffusers pipeline behind the project's Decoder class for ``modality``."""
    from diffusers import (AudioLDMPipeline, AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline,
                           TextToVideoSDPipeline, UNet2DConditionModel, UNet3DConditionModel)

    from decoders import AudioLDMDecoder, DecoderConfig, StableDiffusionDecoder, TextToVideoDecoder
    from decoders.tiny import _clip_tokenizer, _roberta_tokenizer

    kind = DECODER_KIND[modality]
    before = rss_gb()
    torch.manual_seed(3)
    with default_dtype(BF16):
        if kind == "stable_diffusion":
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(**sz["sd_vae"]), text_encoder=None, tokenizer=_clip_tokenizer(77),
                unet=UNet2DConditionModel(**sz["sd_unet"]), scheduler=PNDMScheduler(**SD15_SCHEDULER),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            name = "SD-1.5 (UNet + VAE)"
        elif kind == "text_to_video_sd":
            pipe = TextToVideoSDPipeline(
                vae=AutoencoderKL(**sz["zs_vae"]), text_encoder=None, tokenizer=_clip_tokenizer(77),
                unet=UNet3DConditionModel(**sz["zs_unet"]), scheduler=DDIMScheduler(**DDIM_SD))
            name = "Zeroscope v2 576w (UNet3D + VAE)"
        else:
            from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

            tokenizer = _roberta_tokenizer(77)
            clap = ClapTextModelWithProjection(ClapTextConfig(
                **sz["clap"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id))
            pipe = AudioLDMPipeline(
                vae=AutoencoderKL(**sz["aldm_vae"]), text_encoder=clap, tokenizer=tokenizer,
                unet=UNet2DConditionModel(**sz["aldm_unet"]), scheduler=DDIMScheduler(**DDIM_AUDIOLDM),
                vocoder=SpeechT5HifiGan(SpeechT5HifiGanConfig(**sz["vocoder"])))
            name = "AudioLDM-l-full (UNet + VAE + vocoder + CLAP text)"
    modules = torch.nn.ModuleList([c for c in pipe.components.values() if isinstance(c, torch.nn.Module)])
    if report is not None:
        report.part(name, modules, before)
    extra = {"stable_diffusion": dict(height=settings["size"], width=settings["size"]),
             "text_to_video_sd": dict(height=settings["size"], width=settings["size"], num_frames=settings["frames"]),
             "audioldm": dict(audio_length_s=settings["audio_s"])}[kind]
    cfg = DecoderConfig(kind=kind, name_or_path=f"{kind}-real-size-random", torch_dtype="bfloat16", device="cpu",
                        num_inference_steps=settings["steps"], guidance_scale=settings["guidance"], **extra)
    cls = {"stable_diffusion": StableDiffusionDecoder, "text_to_video_sd": TextToVideoDecoder, "audioldm": AudioLDMDecoder}[kind]
    decoder = cls(pipe, cfg)
    bad = sorted({str(p.dtype) for p in modules.parameters()} - {"torch.bfloat16"})
    if report is not None:
        report.check(not bad, f"{modality} decoder dtype", f"parameters in {bad}, expected bfloat16 only")
    return decoder


def real_size_pipeline(model, sz, settings, report, keep_decoders: bool):
    """AnyToAnyPipeline whose decoders are the real-size random ones, built on first use."""
    from anyany.pipeline import AnyToAnyPipeline

    from decoders import DecoderSet

    pipe = AnyToAnyPipeline(model, progress=False, keep_decoders=keep_decoders)
    pipe.decoders = DecoderSet(model.config.decoders, progress=False,
                               build=lambda modality, cfg: build_real_decoder(modality, sz, settings, report))
    return pipe
