"""Configuration dataclasses and named presets.

A preset is data: which components (hub id, local folder, or a random-init size spec),
how many signal tokens, which bridge, which decoder defaults. ``AnyToAnyConfig`` round-trips
through JSON and is what ``save_pretrained`` writes as ``anyany_config.json``.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from decoders import DecoderConfig
from decoders.tiny import tiny_sizes
from encoders.imagebind import ImageBindConfig

from .tokens import MODALITIES, SignalTokenConfig


@dataclass
class LoRASettings:
    r: int = 32
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class LLMConfig:
    """The frozen causal LM. ``name_or_path=None`` builds a random one from ``random_init``.

    ``random_init``: config kwargs. Without ``model_type`` a LLaMA (``LlamaConfig``; vocab_size from
    the byte-level tokenizer); with one (``anyany.architectures.ARCHITECTURES``: llama, qwen2, qwen3,
    mistral, gemma2, gemma3_text, phi3) that family's config class and a tiny tokenizer of the
    family's kind carrying its chat template; ``vocab_size`` may pad the vocabulary past the tokenizer.
    ``prompt_format``: ``"vicuna_v0"`` (NExT-GPT's template) or ``"chat_template"`` (the tokenizer's
    Jinja template, or the one in ``chat_template_file``; ``docs/llms.md``).
    """

    name_or_path: str | None = "lmsys/vicuna-7b-delta-v0"
    tokenizer_name_or_path: str | None = None  # defaults to name_or_path; None+random_init: a tiny tokenizer
    random_init: dict | None = None  # config kwargs, optionally with "model_type" (see above)
    prompt_format: str = "vicuna_v0"  # "vicuna_v0" | "chat_template"
    chat_template_file: str | None = None  # a Jinja chat template replacing the tokenizer's own
    torch_dtype: str = "float32"
    quantization: str = "none"  # "none" | "8bit" | "4bit" (bitsandbytes, GPU only)
    lora: LoRASettings = field(default_factory=LoRASettings)
    max_length: int = 512
    seed: int = 0


@dataclass
class EncoderConfig:
    """Frozen ImageBind. ``checkpoint=None`` builds random weights (tests, miniature world)."""

    checkpoint: str | None = "imagebind_huge.pth"
    architecture: dict = field(default_factory=lambda: ImageBindConfig.huge().to_dict())
    torch_dtype: str = "float32"
    seed: int = 0

    @property
    def imagebind(self) -> ImageBindConfig:
        return ImageBindConfig.from_dict(self.architecture)


@dataclass
class OutputProjectionConfig:
    """One output projection; ``num_output_tokens`` x ``output_dim`` is the decoder's conditioning shape."""

    num_output_tokens: int = 77
    output_dim: int = 768
    d_model: int = 512
    num_heads: int = 4
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    ff_dim: int = 2048
    dropout: float = 0.0
    # The decoder's conditioning spec (``decoders.spec``, as a list) when it takes more than one
    # tensor; None: one [num_output_tokens, output_dim] sequence.
    outputs: list | None = None


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repair_signal_groups: bool = True  # complete a started signal group instead of crashing


@dataclass
class LossConfig:
    distance: str = "l2"  # reference: mean Euclidean distance per token; "mse" also available
    weights: dict = field(default_factory=lambda: {"lm": 1.0, "image": 1.0, "video": 2.0, "audio": 1.0})


@dataclass
class AnyToAnyConfig:
    name: str = "custom"
    llm: LLMConfig = field(default_factory=LLMConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    bridge: dict = field(default_factory=lambda: {"type": "linear"})
    signals: SignalTokenConfig = field(default_factory=SignalTokenConfig)
    output_projections: dict[str, OutputProjectionConfig] = field(default_factory=dict)
    decoders: dict[str, DecoderConfig] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stage1_instruction: str = "Generate a caption for this."
    # LLM-side adapters (anyany.adapters): [{"type": "gated_xattn" | "visual_expert" | "moe_lora", ...}]
    llm_adapters: list = field(default_factory=list)
    llm_adapters_replace_lora: bool = False  # stage 3 trains the adapters instead of LoRA
    freeze_signal_rows: bool = False  # stage 2 trains the output projections alone (signal-token rows frozen)

    # -- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "decoders":
                v = {m: c.to_dict() for m, c in v.items()}
            elif f.name == "output_projections":
                v = {m: asdict(c) for m, c in v.items()}
            elif f.name == "signals":
                v = v.to_dict()
            elif hasattr(v, "__dataclass_fields__"):
                v = asdict(v)
            d[f.name] = copy.deepcopy(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AnyToAnyConfig":
        d = copy.deepcopy(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        llm = d.get("llm", {})
        if "lora" in llm:
            llm["lora"] = LoRASettings(**llm["lora"])
        return cls(
            name=d.get("name", "custom"),
            llm=LLMConfig(**llm),
            encoder=EncoderConfig(**d.get("encoder", {})),
            bridge=d.get("bridge", {"type": "linear"}),
            signals=SignalTokenConfig(**d.get("signals", {})),
            output_projections={m: OutputProjectionConfig(**c) for m, c in d.get("output_projections", {}).items()},
            decoders={m: DecoderConfig.from_dict(c) for m, c in d.get("decoders", {}).items()},
            generation=GenerationConfig(**d.get("generation", {})),
            loss=LossConfig(**d.get("loss", {})),
            stage1_instruction=d.get("stage1_instruction", cls.stage1_instruction),
            llm_adapters=d.get("llm_adapters", []),
            llm_adapters_replace_lora=d.get("llm_adapters_replace_lora", False),
            freeze_signal_rows=d.get("freeze_signal_rows", False),
        )

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path) -> "AnyToAnyConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise TypeError(f"the top level is a {type(data).__name__}, not an object")
            return cls.from_dict(data)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no anyany config here (a folder written by save_pretrained or a "
                                    "training stage holds one)") from None
        except (ValueError, TypeError, AttributeError, KeyError) as err:  # bad JSON or fields of the wrong shape
            raise ValueError(f"{path}: not a valid anyany config ({' '.join(str(err).split())[:200]}); "
                             "write it with AnyToAnyConfig.save or a training stage") from None

    @property
    def output_modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.output_projections]


# ---------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------

PRESETS: dict[str, Callable[[], AnyToAnyConfig]] = {}


def register_preset(name: str):
    def deco(fn):
        PRESETS[name] = fn
        return fn

    return deco


DEFAULT_MODEL_GROUP = "anyany.default_model"


def default_model() -> str:
    """What ``generate``, ``chat``, ``serve`` and the app load when no model is named: the first trained
    model folder an installed package offers through the ``anyany.default_model`` entry-point group
    (the miniature world offers the model it ships), else the random ``tiny`` preset. An entry point
    is a function returning a folder or None, so this module never imports the layer that owns it."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=DEFAULT_MODEL_GROUP), key=lambda e: e.name):
        folder = ep.load()()
        if folder is not None:
            return str(folder)
    return "tiny"


def get_preset(name: str) -> AnyToAnyConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    cfg = PRESETS[name]()
    cfg.name = name
    return cfg


@register_preset("nextgpt-7b")
def nextgpt_7b() -> AnyToAnyConfig:
    """The paper's system: Vicuna-7B v0, ImageBind-huge, SD-1.5, Zeroscope v2 576w, AudioLDM-l-full."""
    return AnyToAnyConfig(
        llm=LLMConfig(name_or_path="lmsys/vicuna-7b-delta-v0", torch_dtype="float16"),
        encoder=EncoderConfig(checkpoint="imagebind_huge.pth", torch_dtype="float16"),
        bridge={"type": "linear", "input_dim": 1024, "llm_dim": 4096},
        signals=SignalTokenConfig(image=4, video=24, audio=8),
        output_projections={
            "image": OutputProjectionConfig(num_output_tokens=77, output_dim=768),
            "video": OutputProjectionConfig(num_output_tokens=77, output_dim=1024),
            "audio": OutputProjectionConfig(num_output_tokens=1, output_dim=512),
        },
        decoders={
            "image": DecoderConfig.stable_diffusion_v1_5(),
            "video": DecoderConfig.zeroscope_v2_576w(),
            "audio": DecoderConfig.audioldm_l_full(),
        },
    )


@register_preset("anyany-qwen2.5-7b")
def anyany_qwen25_7b() -> AnyToAnyConfig:
    """NExT-GPT's system around a current instruct LLM: Qwen2.5-7B-Instruct (hidden 3584, its own chat
    template and stop tokens), ImageBind-huge and the paper's decoders. The bridge and the output
    projections take the LLM's width from the loaded model; they have to be trained for this core."""
    cfg = nextgpt_7b()
    cfg.llm = LLMConfig(name_or_path="Qwen/Qwen2.5-7B-Instruct", torch_dtype="bfloat16", prompt_format="chat_template",
                        max_length=1024)
    cfg.encoder.torch_dtype = "bfloat16"
    cfg.bridge = {"type": "linear", "input_dim": 1024, "llm_dim": 3584}
    return cfg


def output_projection_for(spec, **sizes) -> OutputProjectionConfig:
    """An output projection producing every tensor of a decoder's conditioning spec (``decoders.spec``)."""
    tokens, dim = spec.primary.shape
    return OutputProjectionConfig(num_output_tokens=tokens, output_dim=dim,
                                  outputs=None if spec.is_single else spec.to_list(), **sizes)


@register_preset("anyany-2026")
def anyany_2026() -> AnyToAnyConfig:
    """Today's parts around the Qwen2.5-7B core: FLUX.1-dev, Wan 2.1 T2V 1.3B and Stable Audio Open 1.0
    (hub ids real; specs in ``decoders.checkpoints``). The decoders are loaded for generation
    without their text encoders (CLIP-L, T5-XXL, umT5-XXL, T5-base: 10.7 B parameters left out); those load
    on demand to cache stage-2 targets. See docs/decoders.md."""
    from decoders.checkpoints import checkpoint_spec

    cfg = anyany_qwen25_7b()
    lean = dict(torch_dtype="bfloat16", text_encoders=False)
    cfg.decoders = {
        "image": DecoderConfig(kind="flux", name_or_path="black-forest-labs/FLUX.1-dev", guidance_scale=3.5,
                               num_inference_steps=28, **lean),
        "video": DecoderConfig(kind="wan", name_or_path="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", guidance_scale=5.0, **lean),
        "audio": DecoderConfig(kind="stable_audio", name_or_path="stabilityai/stable-audio-open-1.0", guidance_scale=7.0,
                               num_inference_steps=100, **lean),
    }
    cfg.output_projections = {m: output_projection_for(checkpoint_spec(d)) for m, d in cfg.decoders.items()}
    return cfg


TINY_LLM = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    # A random LM with the usual 0.02 init has near-uniform logits that no prefix can move;
    # a wider init gives the tiny frozen LLM enough range for the stages to learn against.
    "initializer_range": 0.2,
}


def tiny_output_projection(num_tokens: int, dim: int) -> OutputProjectionConfig:
    return OutputProjectionConfig(
        num_output_tokens=num_tokens, output_dim=dim, d_model=32, num_heads=2,
        num_encoder_layers=1, num_decoder_layers=1, ff_dim=64,
    )


def tiny_conditioning_shape(kind: str) -> tuple[int, int]:
    sizes = tiny_sizes(kind)
    return (1, sizes["projection_dim"]) if kind == "audioldm" else (sizes["max_length"], sizes["text_hidden"])


@register_preset("tiny")
def tiny() -> AnyToAnyConfig:
    """Random-init components of a few thousand parameters: builds in seconds on a CPU (tests)."""
    decoders = {m: DecoderConfig.tiny(kind, seed=0) for m, kind in
                (("image", "stable_diffusion"), ("video", "text_to_video_sd"), ("audio", "audioldm"))}
    imagebind = ImageBindConfig.tiny()
    return AnyToAnyConfig(
        llm=LLMConfig(name_or_path=None, random_init=dict(TINY_LLM), lora=LoRASettings(r=4, alpha=8, dropout=0.0), max_length=512),
        encoder=EncoderConfig(checkpoint=None, architecture=imagebind.to_dict()),
        bridge={"type": "linear", "input_dim": imagebind.embed_dim, "llm_dim": TINY_LLM["hidden_size"]},
        signals=SignalTokenConfig(image=4, video=6, audio=2),
        output_projections={
            m: tiny_output_projection(*tiny_conditioning_shape(d.kind)) for m, d in decoders.items()
        },
        decoders=decoders,
        generation=GenerationConfig(max_new_tokens=32),
    )
