"""GPU benchmark of the real-size architectures with random weights (nothing is downloaded).

(a) One any-to-any generation per memory mode: the prompt (text + one cached ImageBind vector
    through the bridge) -> 64 new LLM tokens with the KV cache (``generate_with_signals``; one
    image signal group is forced into the reply so an output projection runs on real signal
    states) -> the image output projection -> one SD-1.5-sized decoder call at the default
    settings (50 steps, guidance 7.5, 512x512). Modes:
      fp16          everything on the GPU in fp16; the decoder is built only when needed (lazily)
      fp16+offload  as fp16, the diffusers pipeline with model CPU offload
      4bit-llm      the LLM's linear layers in bitsandbytes NF4 (skipped if bitsandbytes is missing)
    Each part runs twice in the process: the second call's latency is reported (what every later
    request sees), the first call's beside it (one-time CUDA set-up). Reported: peak GPU memory
    (torch.cuda.max_memory_allocated) and latency per part.
    ``--preset anyany-2026`` (today's parts): a Qwen2.5-7B core with its chat template and a
    FLUX.1-dev-sized decoder (1024x1024, 28 steps, embedded guidance 3.5) conditioned on the
    projection's T5 sequence + CLIP pooled vector, no text encoders; modes bf16, bf16+offload, 4bit-llm.
(b) Stage-3 training throughput: the preset's LLM (Vicuna-7B or Qwen2.5-7B) in bf16, LoRA r=32 on q,k,v,o, the new
    token rows, bridge and output projections trainable, gradient checkpointing, cached ImageBind
    features (random 1024-d vectors: the encoder is not run), a batch of 512-token sequences
    (``--no-grad-checkpointing``: without activation recomputation). Reported: tokens/s and MFU,
    against the datasheet's bf16 dense peak and against the matmul rate measured at the start.

MFU convention (model FLOPs, PaLM-style: activation recomputation from gradient checkpointing is
*not* counted). A dense matmul with N weights costs 2·N FLOPs per token forward; its backward costs
2·N for the input gradient plus 2·N for the weight gradient, hence the usual 6·N·tokens for a fully
trained model. With LoRA the base weights are frozen, so their weight-gradient matmuls are never
computed: frozen weights count 4·N·tokens (forward + input gradient), trainable ones 6·N·tokens.
N counts the LLM's matmul weights only (the embedding lookup is not a matmul; lm_head is); the
bridge and output projections run once per medium / signal group, not per token, and are left out
(< 0.1 % of the FLOPs). The attention
score/value matmuls (no weights) are reported separately as ``mfu_with_attention``
(12·layers·seq·hidden FLOPs per token, forward+backward, no causal discount).

    python bench/gpu.py                 # real sizes, needs a CUDA GPU (H100/H200/A100 class)
    python bench/gpu.py --scale-down    # every width/layer count divided: runs on a CPU in < 2 min
    python bench/gpu.py --json out.json
    python bench/gpu.py --preset anyany-2026

Measured on an H200 (2026-12-04): bench/RESULTS.md, the JSON of each run in bench/gpu_runs/.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# bf16 dense peak TFLOPs (no sparsity) by device-name substring; first match wins.
BF16_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))

# ---- real sizes ----------------------------------------------------------------------------
VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6)
BASE_VOCAB = 32000
IMAGEBIND_DIM = 1024
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
CLIP_L14_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
OUTPUT_PROJECTIONS = {"image": (77, 768), "video": (77, 1024), "audio": (1, 512)}
# Today's parts (preset anyany-2026): Qwen2.5-7B-Instruct's published config (GQA with 4 KV heads, a
# vocabulary padded to 152064 rows, untied lm_head, rope theta 1e6) and FLUX.1-dev's VAE (16 latent
# channels, no quant convs); its transformer's config is ``decoders.checkpoints``' table.
QWEN25_7B = dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 rope_theta=1e6, vocab_size=152064, tie_word_embeddings=False)
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, sample_size=1024,
                block_out_channels=(128, 256, 512, 512), norm_num_groups=32, use_quant_conv=False,
                use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
FLUX_DEV_ID = "black-forest-labs/FLUX.1-dev"
PRESETS = ("nextgpt-7b", "anyany-2026")
DEFAULT_MODES = {"nextgpt-7b": "fp16,fp16+offload,4bit-llm", "anyany-2026": "bf16,bf16+offload,4bit-llm"}
PROJECTION = dict(d_model=512, num_heads=4, num_encoder_layers=4, num_decoder_layers=4, ff_dim=2048)
IMAGE_SIZE = 512


def scaled_sizes(scale_down: bool, preset: str = "nextgpt-7b") -> dict:
    """All architecture sizes; ``scale_down`` divides widths and layer counts (same structure)."""
    sz = _nextgpt_sizes(scale_down)
    if preset == "anyany-2026":
        sz.update(_today_sizes(scale_down))
    sz["preset"] = preset
    return sz


def _today_sizes(scale_down: bool) -> dict:
    """anyany-2026: the Qwen2.5-7B core and a FLUX.1-dev image decoder at 1024 px, 28 steps, guidance 3.5
    (the preset's settings); the output projections produce the preset's conditioning tensors."""
    from anyany.config import get_preset
    from decoders.checkpoints import KNOWN_CHECKPOINTS

    flux = dict(KNOWN_CHECKPOINTS[FLUX_DEV_ID].denoiser[1])
    projections = {m: p.outputs or [{"name": "prompt_embeds", "shape": [p.num_output_tokens, p.output_dim], "role": "sequence"}]
                   for m, p in get_preset("anyany-2026").output_projections.items()}
    if not scale_down:
        return dict(llm=dict(QWEN25_7B), flux=flux, flux_vae=dict(FLUX_VAE), projections=projections, image_size=1024,
                    steps=28, guidance=3.5, max_sequence_length=512)
    flux.update(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    # every conditioning tensor keeps its role; sequences shrink to 32 tokens, widths to 64 (pooled 32)
    small = {"prompt_embeds": [32, 64], "pooled_prompt_embeds": [32], "attention_mask": [32]}
    projections = {m: [dict(t, shape=small[t["name"]]) for t in outputs] for m, outputs in projections.items()}
    return dict(llm=dict(QWEN25_7B, hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=2048, vocab_size=1000),
                flux=flux, flux_vae=dict(FLUX_VAE, block_out_channels=(32, 32, 64, 64), layers_per_block=1, sample_size=64),
                projections=projections, image_size=64, steps=28, guidance=3.5, max_sequence_length=32)


def _nextgpt_sizes(scale_down: bool) -> dict:
    if not scale_down:
        return dict(llm=dict(VICUNA_7B), vocab=BASE_VOCAB, feat=IMAGEBIND_DIM, unet=dict(SD15_UNET), vae=dict(SD15_VAE),
                    clip=dict(CLIP_L14_TEXT), projections=dict(OUTPUT_PROJECTIONS), projection=dict(PROJECTION),
                    image_size=IMAGE_SIZE, seq_len=512, batch=8, train_steps=5, warmup_steps=2, new_tokens=64, steps=50,
                    guidance=7.5)
    return dict(
        llm=dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-6),
        vocab=1000, feat=128,
        unet=dict(SD15_UNET, block_out_channels=(32, 64, 128, 128), layers_per_block=1, cross_attention_dim=96,
                  sample_size=8),
        vae=dict(SD15_VAE, block_out_channels=(32, 32, 64, 64), layers_per_block=1, sample_size=64),
        clip=dict(CLIP_L14_TEXT, hidden_size=96, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                  projection_dim=96),
        projections={"image": (77, 96), "video": (77, 128), "audio": (1, 64)},
        projection=dict(d_model=64, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, ff_dim=256),
        image_size=64, seq_len=128, batch=2, train_steps=2, warmup_steps=1, new_tokens=64, steps=50, guidance=7.5,
    )


DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


# ---- helpers ---------------------------------------------------------------------------------
def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def timer(out: dict, key: str, device):
    sync(device)
    t = time.perf_counter()
    yield
    sync(device)
    out[key] = time.perf_counter() - t


def reset_peak(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device):
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None


def bf16_peak_flops(device) -> tuple[str, float | None]:
    if torch.device(device).type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name()
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return name, tflops * 1e12
    return name, None


def word_tokenizer(base_vocab: int):
    """A tokenizer with exactly ``base_vocab`` entries (LLaMA's size) built in code: <unk> <s> </s> w3 w4 ..."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, base_vocab)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")


def build_llm(sizes: dict, tokenizer, dtype, device):
    """A random causal LM on the ``meta`` device, then ``to_empty`` on ``device`` + random init there (no
    fp32 copy, no slow CPU init). ``sizes`` with a ``model_type``: that family's model (its config built
    around ``tokenizer`` by ``anyany.architectures``); without: LLaMA with ``len(tokenizer)`` rows."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    spec = dict(sizes)
    if "model_type" in spec:
        from anyany.architectures import tiny_llm_config

        config = tiny_llm_config(spec.pop("model_type"), tokenizer, spec)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, **spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model = model.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # RMSNorm weights
                p.fill_(1.0)
            elif name.endswith("bias"):  # Qwen's q/k/v biases
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
        for module in model.modules():  # non-persistent rotary buffers are garbage after to_empty
            if hasattr(module, "inv_freq"):
                fresh = type(module)(config)
                module.inv_freq = fresh.inv_freq.to(device)
                if hasattr(module, "original_inv_freq"):
                    module.original_inv_freq = fresh.original_inv_freq.to(device)
    model.requires_grad_(False)
    return model


def materialise(module: torch.nn.Module, dtype, device, seed: int) -> torch.nn.Module:
    """A module built on ``meta``, given storage on ``device`` in ``dtype`` and its own default init
    there (``reset_parameters``); parameters of modules without one (diffusers' RMSNorm, learned
    tokens): norm-like vectors 1, biases 0, the rest N(0, 0.02). A 12 B transformer never exists on the CPU."""
    module = module.to(dtype).to_empty(device=device)
    torch.manual_seed(seed)
    done = set()
    with torch.no_grad():
        for m in module.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
                done.update(id(p) for p in m.parameters(recurse=False))
        for name, p in module.named_parameters():
            if id(p) in done:
                continue
            if p.dim() == 1:
                p.zero_() if name.endswith("bias") else p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return module


def quantize_llm_nf4(model, compute_dtype):
    """Replace every decoder-layer Linear with a bitsandbytes NF4 Linear4bit (lm_head stays fp16, as transformers does)."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if not isinstance(lin, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      compute_dtype=compute_dtype, quant_type="nf4", device="meta")
                # Params4bit quantizes when moved to the GPU (the fp16 data is already there)
                q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4").to(lin.weight.device)
                if lin.bias is not None:  # Qwen's q/k/v biases stay in the compute dtype
                    q.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
                setattr(parent, name, q)
                del lin
        torch.cuda.empty_cache()
    return model


def build_model(sz: dict, dtype, device, *, quantize: bool = False, train: bool = False):
    """AnyToAnyModel around a randomly initialised real-size core of ``sz["preset"]`` (constructed
    directly: no hub, no CPU init): Vicuna-7B with LLaMA's 32000-entry vocabulary as a word tokenizer,
    or Qwen2.5-7B with the project's small tokenizer of its family and its chat template."""
    from anyany.config import LoRASettings, get_preset
    from anyany.model import AnyToAnyModel, load_tokenizer, wrap_lora
    from anyany.tokens import TokenIds, extend_tokenizer
    from projections import LinearBridge, OutputProjection

    config = get_preset(sz["preset"])
    config.llm.name_or_path = None
    config.llm.tokenizer_name_or_path = None
    config.llm.random_init = dict(sz["llm"])
    config.llm.lora = LoRASettings(r=32, alpha=32, dropout=0.1 if train else 0.0)
    config.bridge = {"type": "linear", "input_dim": sz["feat"], "llm_dim": sz["llm"]["hidden_size"]}
    config.encoder.architecture = dict(config.encoder.architecture, embed_dim=sz["feat"])
    config.output_projections = {m: projection_config(value, sz["projection"]) for m, value in sz["projections"].items()}
    family = "model_type" in sz["llm"]
    tokenizer = load_tokenizer(config.llm) if family else word_tokenizer(sz["vocab"])
    extend_tokenizer(tokenizer, config.signals)
    ids = TokenIds.from_tokenizer(tokenizer, config.signals)
    base = build_llm(sz["llm"], tokenizer, dtype, device)
    if quantize:
        base = quantize_llm_nf4(base, dtype)
    llm = wrap_lora(base, config.llm, ids.all_new)
    hidden = sz["llm"]["hidden_size"]
    with torch.device(device):
        bridge = LinearBridge(sz["feat"], hidden)
        projections = {m: OutputProjection(llm_dim=hidden, **vars(p)) for m, p in config.output_projections.items()}
    model = AnyToAnyModel(config, tokenizer, llm, bridge, projections, encoder=None)
    # heads in float32 on CPU, the LLM's dtype on GPU
    model.bridge.to(device=device, dtype=dtype)
    model.output_projections.to(device=device, dtype=dtype)
    return model


def projection_config(value, sizes: dict):
    """``(tokens, dim)``: a single-tensor projection (the paper's decoders); a list: every tensor of a
    decoder's conditioning spec (``decoders.spec``; FLUX: T5 sequence + CLIP pooled)."""
    from anyany.config import OutputProjectionConfig, output_projection_for
    from decoders.spec import ConditioningSpec

    if isinstance(value, tuple):
        return OutputProjectionConfig(num_output_tokens=value[0], output_dim=value[1], **sizes)
    return output_projection_for(ConditioningSpec.from_list(value), **sizes)


def build_sd15(sz: dict, dtype, device, offload: bool):
    """SD-1.5-sized StableDiffusionPipeline from its real configs (random weights) behind our Decoder."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import decoders.image  # noqa: F401  (registers the stable_diffusion decoder)
    from decoders import DECODER_REGISTRY, DecoderConfig
    from decoders.tiny import _clip_tokenizer

    # built on the CPU and cast there, so the GPU never holds fp32 copies (the Decoder moves or offloads it)
    with torch.device("cpu"):
        unet = UNet2DConditionModel(**sz["unet"]).to(dtype)
        vae = AutoencoderKL(**sz["vae"]).to(dtype)
        text = CLIPTextModel(CLIPTextConfig(**sz["clip"])).to(dtype)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=_clip_tokenizer(77), unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    cfg = DecoderConfig(kind="stable_diffusion", name_or_path="sd15-sized-random", torch_dtype=DTYPE_NAMES[dtype],
                        device=str(device), offload="model" if offload else "none",
                        height=sz["image_size"], width=sz["image_size"])
    return DECODER_REGISTRY["stable_diffusion"](pipe, cfg)


def build_flux(sz: dict, dtype, device, offload: bool):
    """A FLUX.1-dev-sized FluxPipeline (random weights; no text encoders: the LLM conditions it) behind
    the project's Decoder. Built on ``meta`` and initialised on ``device``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from decoders import DECODER_REGISTRY, DecoderConfig

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**sz["flux"])
        vae = AutoencoderKL(**sz["flux_vae"])
    transformer = materialise(transformer, dtype, device, seed=3)
    vae = materialise(vae, dtype, device, seed=4)
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's scheduler config
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    cfg = DecoderConfig(kind="flux", name_or_path="flux1-dev-sized-random", torch_dtype=DTYPE_NAMES[dtype],
                        device=str(device), offload="model" if offload else "none", height=sz["image_size"],
                        width=sz["image_size"], max_sequence_length=sz["max_sequence_length"], text_encoders=False,
                        num_inference_steps=sz["steps"], guidance_scale=sz["guidance"])
    return DECODER_REGISTRY["flux"](pipe, cfg)


def build_image_decoder(sz: dict, dtype, device, offload: bool):
    return (build_flux if "flux" in sz else build_sd15)(sz, dtype, device, offload)


# ---- (a) generation ----------------------------------------------------------------------------
def prompt_embeds(model, device):
    from anyany.tokens import ChatTurn

    turns = [ChatTurn("human", " ".join(f"w{3 + i}" for i in range(40)) + " draw it", [("image", 0)])]
    seq = model.prompts.encode_segments(model.prompts.conversation_segments(turns))
    batch = model.collate([seq])
    feats = torch.nn.functional.normalize(torch.randn(1, model.bridge.config.input_dim), dim=-1).to(device)
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"].to(device), batch["media_slots"], {"image": feats})
    return embeds


def force_image_group(model, at: int):
    """Logits processor: no stop token, and the reply's [IMG0] at step ``at`` (the group is completed by the decoder loop)."""
    from anyany.tokens import stop_markers

    first = model.token_ids.signals["image"][0]
    signal_ids = [t for ids in model.token_ids.signals.values() for t in ids]
    stops = sorted(stop_markers(model)[0])

    def proc(generated, scores):
        scores = scores.clone()
        scores[:, stops] = -math.inf
        scores[:, signal_ids] = -math.inf
        if generated.shape[1] == at:
            scores[:, first] = math.inf
        return scores

    return proc


def mode_dtype(mode: str, preset: str):
    if mode.startswith(("fp16", "bf16")):
        return torch.float16 if mode.startswith("fp16") else torch.bfloat16
    return torch.float16 if preset == "nextgpt-7b" else torch.bfloat16


def run_generation(mode: str, sz: dict, device) -> dict:
    from anyany.generation import generate_with_signals

    cuda = torch.device(device).type == "cuda"
    result = {"mode": mode}
    if not cuda and mode not in ("fp16", "bf16"):
        result["skipped"] = f"{mode} needs a CUDA device"
        return result
    if mode == "4bit-llm":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            result["skipped"] = f"bitsandbytes is not installed ({err})"
            print(f"[{mode}] skipped: {result['skipped']}")
            return result
    # the preset's half dtype (nextgpt-7b: fp16 as the reference; anyany-2026: bf16, as FLUX needs)
    dtype = mode_dtype(mode, sz["preset"]) if cuda else torch.float32
    reset_peak(device)
    t0 = time.perf_counter()
    model = build_model(sz, dtype, device, quantize=mode == "4bit-llm").eval()
    sync(device)
    result["build_llm_s"] = time.perf_counter() - t0
    if cuda:  # building/quantizing transients are not part of a generation; resident weights are
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result["llm_weights_gb"] = torch.cuda.memory_allocated() / 2**30
    embeds = prompt_embeds(model, device)
    n_new = sz["new_tokens"]
    n_img = model.config.signals.image
    proc = force_image_group(model, n_new - n_img)
    # Two calls: the first pays one-time CUDA costs (kernel loading, cuBLAS/cuDNN set-up, the decoder's
    # first placement), the second is what every later request sees; both are reported.
    with timer(result, "first_llm_s", device):
        generate_with_signals(model, embeds, max_new_tokens=n_new, logits_processor=[proc])
    with timer(result, "llm_s", device):
        out = generate_with_signals(model, embeds, max_new_tokens=n_new, logits_processor=[proc])
    result["prompt_tokens"] = embeds.shape[1]
    result["new_tokens"] = len(out.token_ids)
    result["llm_tokens_per_s"] = len(out.token_ids) / result["llm_s"]
    if not out.groups or out.groups[0].modality != "image":
        raise RuntimeError(f"no image signal group was generated: {out.raw_text[-80:]!r}")
    proj = model.output_projections["image"]
    for key in ("first_projection_s", "projection_s"):
        with timer(result, key, device), torch.no_grad():
            cond = proj(out.groups[0].states.unsqueeze(0).to(proj.dtype))
    result["llm_peak_gb"] = peak_gb(device)
    # the decoder is built only now (lazily), as the pipeline does on the first image reply
    t0 = time.perf_counter()
    decoder = build_image_decoder(sz, dtype, device, offload=mode.endswith("+offload"))
    sync(device)
    result["build_decoder_s"] = time.perf_counter() - t0
    for key in ("first_decoder_s", "decoder_s"):
        with timer(result, key, device):
            images = decoder.generate(cond, num_inference_steps=sz["steps"], guidance_scale=sz["guidance"], seed=0,
                                      progress=False)
    assert len(images) == 1
    result["decoder_steps"] = sz["steps"]
    result["image_size"] = sz["image_size"]
    result["generation_s"] = result["llm_s"] + result["projection_s"] + result["decoder_s"]
    result["first_generation_s"] = result["first_llm_s"] + result["first_projection_s"] + result["first_decoder_s"]
    result["peak_gb"] = peak_gb(device)
    del model, decoder, out, cond, embeds
    reset_peak(device)
    return result


# ---- (b) stage-3 training --------------------------------------------------------------------
def training_batch(model, seq_len: int, batch: int, device):
    """Stage-3 conversation rows of ``seq_len`` tokens (a word's worth fewer where words are several
    tokens, as with the byte-level family tokenizers): image in, image + video out."""
    from anyany.tokens import ChatTurn

    def encode(n_words):
        turns = [ChatTurn("human", " ".join(f"w{3 + i % 900}" for i in range(n_words)), [("image", 0)]),
                 ChatTurn("gpt", " ".join(f"w{5 + i % 900}" for i in range(n_words // 2)), media_out=[("image", 0), ("video", 0)])]
        return model.prompts.encode_segments(model.prompts.conversation_segments(turns))

    def length(n_words):
        try:
            return len(encode(n_words).input_ids)
        except ValueError:  # longer than the preset's max_length
            return math.inf

    lo, hi = 1, seq_len  # the most words whose rows fit seq_len (a word is one or several tokens)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if length(mid) <= seq_len else (lo, mid - 1)
    n = lo
    seq = encode(n)
    assert seq_len - 8 <= len(seq.input_ids) <= seq_len, len(seq.input_ids)
    # rows r use feature/target r
    seqs = []
    for r in range(batch):
        s = encode(n)
        s.media = [dataclasses.replace(slot, feature_index=r) for slot in s.media]
        s.signals = [dataclasses.replace(slot, target_index=r) for slot in s.signals]
        seqs.append(s)
    out = model.collate(seqs)
    feats = torch.nn.functional.normalize(torch.randn(batch, model.bridge.config.input_dim), dim=-1)
    out["media_features"] = {"image": feats.to(device)}
    # one packed row per target: a multi-tensor spec (FLUX: T5 sequence + CLIP pooled) packs its tensors
    out["gen_targets"] = {m: torch.randn(batch, model.output_projections[m].spec.numel, device=device) for m in ("image", "video")}
    return out


def count_flops_params(model) -> dict:
    base = model.llm.get_base_model()
    frozen = trainable = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name and "trainable_tokens_delta" not in name:
            continue  # a lookup, not a matmul
        if not name.startswith("llm."):
            continue  # bridge / output projections run once per medium / signal group: negligible, not counted
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel() if p.dim() > 1 else 0  # norms are not matmuls
    if any("Params4bit" in type(p).__name__ for p in base.parameters()):
        frozen = -1  # not used for training
    return {"frozen_matmul_params": frozen, "trainable_params": trainable}


def run_training(sz: dict, device, checkpointing: bool = True) -> dict:
    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    result = {"dtype": str(dtype).removeprefix("torch."), "seq_len": sz["seq_len"], "batch": sz["batch"],
              "gradient_checkpointing": checkpointing}
    reset_peak(device)
    model = build_model(sz, dtype, device, train=True)
    model.set_stage("stage3")
    model.train()
    if checkpointing:
        model.llm.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    counts = count_flops_params(model)
    result.update(counts)
    batch = training_batch(model, sz["seq_len"], sz["batch"], device)
    tokens = int(batch["attention_mask"].sum())
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.95), weight_decay=0.001)

    def step():
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach().item()

    for _ in range(sz["warmup_steps"]):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(sz["train_steps"]):
        loss = step()
    sync(device)
    elapsed = time.perf_counter() - t0
    result.update(step_s=elapsed / sz["train_steps"], tokens_per_step=tokens, loss=loss,
                  tokens_per_s=tokens * sz["train_steps"] / elapsed, peak_gb=peak_gb(device))
    llm = sz["llm"]
    flops_per_token = 4 * counts["frozen_matmul_params"] + 6 * counts["trainable_params"]
    attn_per_token = 12 * llm["num_hidden_layers"] * sz["seq_len"] * llm["hidden_size"]
    result["model_flops_per_token"] = flops_per_token
    result["achieved_tflops"] = flops_per_token * result["tokens_per_s"] / 1e12
    name, peak = bf16_peak_flops(device)
    result["device"] = name
    result["peak_bf16_tflops"] = peak / 1e12 if peak else None
    result["mfu"] = flops_per_token * result["tokens_per_s"] / peak if peak else None
    result["mfu_with_attention"] = (flops_per_token + attn_per_token) * result["tokens_per_s"] / peak if peak else None
    del model, opt, batch
    reset_peak(device)
    return result


def matmul_ceiling_tflops(device) -> float:
    """The device's bf16 matmul rate as measured here (8192^3 products), beside the datasheet peak."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 2 * 8192**3 * 10 / (time.perf_counter() - t) / 1e12


# ---- report ----------------------------------------------------------------------------------
def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def print_report(res: dict) -> None:
    print()
    print(f"device: {res['device']}   preset: {res.get('preset', 'nextgpt-7b')}   scale-down: {res['scale_down']}")
    if res.get("measured_bf16_tflops"):
        print(f"measured bf16 matmul ceiling: {res['measured_bf16_tflops']:.0f} TFLOP/s (8192^3, mean of 10 after 3 warm-ups)")
    if res["generation"]:
        print("\n(a) one any-to-any generation "
              f"({res['sizes']['new_tokens']} new LLM tokens + image projection + decoder, {res['sizes']['steps']} steps)")
        head = (f"{'mode':<14}{'peak GB':>9}{'LLM peak':>10}{'LLM s':>8}{'tok/s':>8}{'proj s':>8}{'decoder s':>11}"
                f"{'total s':>9}{'1st call s':>12}")
        if res["device"] == "cpu":
            print("(on a CPU the half-precision mode runs in float32; peak GPU memory does not apply)")
        print(head)
        print("-" * len(head))
        for r in res["generation"]:
            if "skipped" in r or "error" in r:
                print(f"{r['mode']:<14}{'skipped: ' + r['skipped'] if 'skipped' in r else 'error: ' + r['error']}")
                continue
            print(f"{r['mode']:<14}{fmt(r['peak_gb']):>9}{fmt(r['llm_peak_gb']):>10}{fmt(r['llm_s']):>8}"
                  f"{fmt(r['llm_tokens_per_s'], 1):>8}{fmt(r['projection_s'], 3):>8}{fmt(r['decoder_s']):>11}{fmt(r['generation_s']):>9}"
                  f"{fmt(r.get('first_generation_s')):>12}")
        print("(times: the second call of the process; '1st call s': the first, with one-time CUDA set-up)")
    t = res["training"]
    if not t:
        print("\n(b) stage-3 training: skipped")
        print("\nstage3_mfu: n/a (skipped)")
        return
    ckpt = "grad checkpointing" if t.get("gradient_checkpointing", True) else "no grad checkpointing"
    print(f"\n(b) stage-3 training step ({t['dtype']}, LoRA r=32 q/k/v/o, {ckpt}, batch {t['batch']} x {t['seq_len']} tokens)")
    if "error" in t:
        print(f"error: {t['error']}")
    else:
        print(f"step {fmt(t['step_s'], 3)} s   {fmt(t['tokens_per_s'], 1)} tokens/s   peak {fmt(t['peak_gb'])} GB   "
              f"frozen matmul params {t['frozen_matmul_params']:,}   trainable {t['trainable_params']:,}")
        print(f"achieved {fmt(t['achieved_tflops'], 3)} TFLOP/s (4·N_frozen + 6·N_trainable per token)   "
              f"peak {fmt(t['peak_bf16_tflops'], 0)}   MFU {fmt(t['mfu'], 4)}   with attention {fmt(t['mfu_with_attention'], 4)}")
    mfu = t.get("mfu")
    print()
    if mfu is not None and res.get("measured_bf16_tflops"):
        print(f"MFU against the measured matmul ceiling: {t['achieved_tflops'] / res['measured_bf16_tflops']:.4f}")
    if mfu is not None:
        print(f"stage3_mfu: {mfu:.4f}")
    elif res["device"] == "cpu":
        print("stage3_mfu: n/a (cpu)")
    else:
        print(f"stage3_mfu: n/a ({t.get('error') or 'unknown device peak: ' + str(t.get('device'))})")


def quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar.*")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale-down", action="store_true", help="divide widths/layers so the script runs on a CPU in < 2 min")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--preset", default="nextgpt-7b", choices=PRESETS,
                    help="nextgpt-7b: Vicuna-7B + SD-1.5; anyany-2026: Qwen2.5-7B + FLUX.1-dev (today's parts)")
    ap.add_argument("--modes", help="comma-separated memory modes (default: nextgpt-7b fp16,fp16+offload,4bit-llm; "
                                    "anyany-2026 bf16,bf16+offload,4bit-llm)")
    ap.add_argument("--no-grad-checkpointing", action="store_true", help="train without activation recomputation")
    ap.add_argument("--batch", type=int, help="training batch (sequences)")
    ap.add_argument("--seq-len", type=int, help="training sequence length")
    ap.add_argument("--train-steps", type=int, help="measured training steps")
    ap.add_argument("--steps", type=int, help="decoder steps (default 50, the reference's)")
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--json", metavar="OUT", help="write all results as JSON")
    args = ap.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: error: CUDA requested but not available", file=sys.stderr)
        return 2
    if torch.device(device).type == "cpu" and not args.scale_down:
        print("bench/gpu.py: note: real sizes on a CPU take very long; use --scale-down", file=sys.stderr)
    quiet_libraries()
    torch.manual_seed(0)
    sz = scaled_sizes(args.scale_down, args.preset)
    for key, value in (("batch", args.batch), ("seq_len", args.seq_len), ("train_steps", args.train_steps), ("steps", args.steps)):
        if value is not None:
            sz[key] = value
    res = {"device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu",
           "preset": args.preset, "scale_down": args.scale_down, "torch": torch.__version__,
           "sizes": {k: v for k, v in sz.items() if not isinstance(v, dict)}, "generation": [], "training": {}}
    if torch.device(device).type == "cuda":
        res["measured_bf16_tflops"] = matmul_ceiling_tflops(device)

    def save():  # after every part, so a run stopped at its time limit still leaves what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2, default=str))

    if not args.skip_generation:
        for mode in [m.strip() for m in (args.modes or DEFAULT_MODES[args.preset]).split(",") if m.strip()]:
            if mode not in ("fp16", "fp16+offload", "bf16", "bf16+offload", "4bit-llm"):
                print(f"bench/gpu.py: error: unknown mode {mode!r}", file=sys.stderr)
                return 2
            print(f"[generation] {mode} ...", flush=True)
            try:
                res["generation"].append(run_generation(mode, sz, device))
            except Exception as err:  # keep the other measurements
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()
                res["generation"].append({"mode": mode, "error": f"{type(err).__name__}: {err}"[:300]})
                print(f"[generation] {mode} failed: {err}", flush=True)
            save()
    if not args.skip_training:
        print("[training] stage 3 ...", flush=True)
        try:
            res["training"] = run_training(sz, device, checkpointing=not args.no_grad_checkpointing)
        except Exception as err:
            res["training"] = {"error": f"{type(err).__name__}: {err}"[:300], "dtype": "-", "batch": sz["batch"], "seq_len": sz["seq_len"]}
            print(f"[training] failed: {err}", flush=True)
    save()
    if args.json:
        print(f"wrote {args.json}")
    print_report(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
