"""AnyToAnyModel: ImageBind -> bridge -> LLM (+LoRA, trainable new token rows) -> output projections.

Decoders are not part of the model: they are frozen, large, and only needed to *render*
conditioning (see :mod:`anyany.pipeline`) or to compute alignment targets (see :mod:`training`).
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from decoders import resolve_dtype
from encoders.imagebind import ImageBindEncoder
from projections import OutputProjection, TiledImage, build_bridge, generation_distance, load_bridge

from .adapters import LLMAdapters
from .architectures import architecture_of, tiny_chat_tokenizer, tiny_llm_config
from .config import AnyToAnyConfig, LLMConfig
from .frozen_prefix import PrefixStates, compute_prefix, forward_after_prefix, frozen_prefix_lengths
from .prompts import check_prompt_format
from .tokens import (
    IGNORE_INDEX,
    PromptBuilder,
    TokenIds,
    byte_level_tokenizer,
    collate_sequences,
    extend_tokenizer,
)

CONFIG_NAME = "anyany_config.json"
# Full-matrix replacements for frozen base weights (e.g. NExT-GPT's trained embed/lm_head rows).
BASE_OVERRIDES_NAME = "base_overrides.safetensors"

# What each NExT-GPT stage trains; everything else is frozen. The one place this is declared.
STAGE_TRAINABLE: dict[str, tuple[str, ...]] = {
    "stage1": ("input_projection",),
    "stage2": ("output_projections", "new_token_rows"),
    "stage3": ("lora", "llm_adapters", "input_projection", "output_projections", "new_token_rows"),
}
# Groups a boolean config switch takes out of a stage: {config attribute: {stage: groups}}.
STAGE_EXCLUDED_BY: dict[str, dict[str, tuple[str, ...]]] = {
    "llm_adapters_replace_lora": {"stage3": ("lora",)},
    "freeze_signal_rows": {"stage2": ("new_token_rows",)},
}

@dataclass
class ModelOutput:
    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    conditioning: dict[str, torch.Tensor] = field(default_factory=dict)


def quantization_possible(cfg: LLMConfig, device) -> bool:
    """Whether ``cfg.quantization`` can be honoured on ``device``. bitsandbytes 4/8-bit needs CUDA, so on a
    CPU (or without bitsandbytes) the LLM loads unquantized in ``cfg.torch_dtype``, with a warning, instead of failing."""
    if cfg.quantization not in ("none", "4bit", "8bit"):
        raise ValueError(f"LLMConfig.quantization {cfg.quantization!r} is not supported; use 'none', '4bit' or '8bit'")
    if cfg.quantization == "none":
        return False
    reason = None
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        reason = f"bitsandbytes {cfg.quantization} needs a CUDA device, the LLM goes to {str(device)!r}"
    else:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            reason = "bitsandbytes is not installed (pip install bitsandbytes)"
    if reason is None and cfg.name_or_path is None:
        reason = "a random_init LLM is built unquantized"
    if reason:
        import warnings

        warnings.warn(f"LLM quantization {cfg.quantization!r} skipped: {reason}; loading it unquantized in {cfg.torch_dtype}",
                      stacklevel=2)
        return False
    return True


def load_tokenizer_and_llm(cfg: LLMConfig, signals, device="cpu"):
    """Tokenizer (extended with the added tokens) and the base causal LM, resized to it."""
    from transformers import AutoModelForCausalLM

    if cfg.name_or_path is None and cfg.random_init is None:
        raise ValueError("LLMConfig needs name_or_path (hub id or folder) or random_init (LlamaConfig sizes)")
    check_prompt_format(cfg.prompt_format)
    tokenizer = load_tokenizer(cfg)
    extend_tokenizer(tokenizer, signals)
    torch.manual_seed(cfg.seed)
    quantize = quantization_possible(cfg, device)
    if cfg.name_or_path is not None:
        kwargs = {"dtype": resolve_dtype(cfg.torch_dtype)}
        if quantize:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=cfg.quantization == "4bit",
                load_in_8bit=cfg.quantization == "8bit",
                bnb_4bit_compute_dtype=resolve_dtype(cfg.torch_dtype),
                bnb_4bit_quant_type="nf4",
            )
            kwargs["device_map"] = {"": device}
        llm = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs)
    else:
        llm = random_llm(cfg.random_init, tokenizer)
        llm.to(resolve_dtype(cfg.torch_dtype))
    architecture_of(llm)  # an unsupported family is refused here, by its model_type
    # Grow only: a vocabulary padded past the tokenizer (Qwen's) already has rows for the added tokens.
    # transformers re-ties lm_head to the new embedding where the config ties them.
    if llm.get_input_embeddings().weight.shape[0] < len(tokenizer):
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    llm.requires_grad_(False)
    return tokenizer, llm


def load_tokenizer(cfg: LLMConfig):
    """The LLM's tokenizer (hub id / folder; for a random LLM a tiny one built in code), with
    ``cfg.chat_template_file`` as its chat template when given."""
    from transformers import AutoTokenizer

    tok_source = cfg.tokenizer_name_or_path or cfg.name_or_path
    model_type = (cfg.random_init or {}).get("model_type")
    if tok_source:
        tokenizer = AutoTokenizer.from_pretrained(tok_source)
    elif model_type is not None:
        tokenizer = tiny_chat_tokenizer(model_type)
    else:
        tokenizer = byte_level_tokenizer()
    if cfg.chat_template_file:
        template = Path(cfg.chat_template_file)
        if not template.is_file():
            raise FileNotFoundError(f"LLMConfig.chat_template_file {str(template)!r} does not exist; give a Jinja "
                                    "chat template file or leave it out to use the tokenizer's own")
        tokenizer.chat_template = template.read_text()
    return tokenizer


def random_llm(random_init: dict, tokenizer):
    """A random causal LM: a LLaMA from ``LlamaConfig`` kwargs, or the family ``random_init["model_type"]`` names."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    spec = dict(random_init)
    model_type = spec.pop("model_type", None)
    if model_type is None:
        return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **spec))
    return AutoModelForCausalLM.from_config(tiny_llm_config(model_type, tokenizer, spec))


def apply_base_overrides(base_llm, path: Path) -> None:
    """Load ``path`` (if present) over the base LLM's weights; every key must exist with its shape."""
    if not path.is_file():
        return
    from safetensors.torch import load_file

    overrides = load_file(str(path))
    own = base_llm.state_dict()
    bad = [f"{k} {tuple(v.shape)}" for k, v in overrides.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: keys that do not fit the base LLM: {bad[:5]}")
    with torch.no_grad():
        for k, v in overrides.items():
            own[k].copy_(v)


def wrap_lora(llm, cfg: LLMConfig, new_token_ids: list[int]):
    """peft LoRA on the family's own modules for ``cfg.lora.target_modules`` (LLaMA names), plus
    trainable new token rows (peft shares one delta between embed_tokens and a tied lm_head)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=architecture_of(llm).lora_targets(cfg.lora.target_modules),
        trainable_token_indices={"embed_tokens": new_token_ids, "lm_head": new_token_ids},
    )
    return get_peft_model(llm, lora)


def load_encoder(cfg, device="cpu") -> ImageBindEncoder:
    from encoders.imagebind import ImageBindEncoder

    if cfg.checkpoint:
        encoder = ImageBindEncoder.from_checkpoint(cfg.checkpoint, cfg.imagebind)
    else:
        torch.manual_seed(cfg.seed)
        encoder = ImageBindEncoder.from_config(cfg.imagebind)
    return encoder.to(device=device, dtype=resolve_dtype(cfg.torch_dtype)).requires_grad_(False).eval()


class AnyToAnyModel(nn.Module):
    def __init__(self, config: AnyToAnyConfig, tokenizer, llm, bridge, output_projections: dict, encoder=None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.llm = llm  # a peft model
        self.bridge = bridge
        self.output_projections = nn.ModuleDict(output_projections)
        self.encoder = encoder
        self.token_ids = TokenIds.from_tokenizer(tokenizer, config.signals)
        base = llm.get_base_model()
        self.prompts = PromptBuilder(tokenizer, self.token_ids, config.signals, bridge.num_tokens, config.llm.max_length,
                                     prompt_format=config.llm.prompt_format,
                                     generation_config=getattr(base, "generation_config", None))
        arch = architecture_of(base)
        self.llm_adapters = LLMAdapters(config.llm_adapters, arch.decoder_layers(base), base.config.hidden_size,
                                        seed=config.llm.seed + 2, architecture=arch) if config.llm_adapters else None
        # Run a frozen prefix (stage 2's caption) without autograd; False gives the plain one-pass step.
        self.split_frozen_prefix = True
        self.set_stage(None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: AnyToAnyConfig, *, with_encoder: bool = True, device: str = "cpu") -> "AnyToAnyModel":
        tokenizer, base = load_tokenizer_and_llm(config.llm, config.signals, device)
        ids = TokenIds.from_tokenizer(tokenizer, config.signals)
        llm = wrap_lora(base, config.llm, ids.all_new)
        hidden = base.config.hidden_size
        torch.manual_seed(config.llm.seed + 1)
        bridge = build_bridge(cls._bridge_config(config, hidden))
        projections = {
            m: OutputProjection(llm_dim=hidden, **vars(p)) for m, p in config.output_projections.items()
        }
        encoder = load_encoder(config.encoder, device) if with_encoder else None
        return cls(config, tokenizer, llm, bridge, projections, encoder).to(device)

    @staticmethod
    def _bridge_config(config: AnyToAnyConfig, llm_dim: int) -> dict:
        """The bridge's own fields plus the widths (and tile size) it declares in its signature, filled from the encoder/LLM."""
        import inspect

        from projections import BRIDGE_REGISTRY

        bridge = dict(config.bridge)
        cls = BRIDGE_REGISTRY.get(bridge.get("type", "linear"))
        accepted = inspect.signature(cls.__init__).parameters if cls else {}
        ib = config.encoder.imagebind
        dims = {"input_dim": ib.embed_dim, "vision_dim": ib.vision_width, "audio_dim": ib.audio_width, "llm_dim": llm_dim,
                "tile_size": ib.image_size}
        for key, value in dims.items():
            if key in accepted and (key == "llm_dim" or key not in bridge):
                bridge[key] = value
        return bridge

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, path) -> None:
        """Write the trainable state (+ any random-init frozen part, so tiny folders are self-contained)."""
        from decoders.base import quiet_loading

        # transformers' "Writing model shards" bar, once per part and checkpoint, broke across the
        # training bar; a save of these small parts takes a moment
        with quiet_loading(True):
            self._save_pretrained(Path(path))

    def _save_pretrained(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        config = AnyToAnyConfig.from_dict(self.config.to_dict())
        if config.llm.name_or_path is None:
            self.llm.get_base_model().save_pretrained(path / "base_llm", state_dict=self.base_llm_state_dict())
            config.llm.name_or_path = "base_llm"
        if config.encoder.checkpoint is None and self.encoder is not None:
            (path / "encoder").mkdir(exist_ok=True)
            self.encoder.save_checkpoint(path / "encoder" / "imagebind.pth")
            config.encoder.checkpoint = "encoder/imagebind.pth"
        config.llm.tokenizer_name_or_path = "tokenizer"
        config.llm.chat_template_file = None  # the saved tokenizer carries the template
        self.tokenizer.save_pretrained(path / "tokenizer")
        # Only LoRA and the new token rows (trainable_tokens_delta): peft would otherwise also write the
        # whole resized embedding and lm_head (2 x 32k x 4096 for Vicuna-7B), which the base LLM already holds.
        self.llm.save_pretrained(path / "llm_adapter", save_embedding_layers=False)
        self.bridge.save_pretrained(path / "bridge")
        for m, proj in self.output_projections.items():
            proj.save_pretrained(path / "output_projections" / m)
        if self.llm_adapters is not None:
            self.llm_adapters.save_pretrained(path / "llm_adapters")
        config.save(path / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, path, *, with_encoder: bool = True, device: str = "cpu", config_overrides=None) -> "AnyToAnyModel":
        from peft import PeftModel

        path = Path(path)
        if not (path / CONFIG_NAME).is_file() and (path / "final" / CONFIG_NAME).is_file():
            path = path / "final"  # a training stage's output folder
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path} is not an anyany checkpoint folder (no {CONFIG_NAME})")
        config = AnyToAnyConfig.load(path / CONFIG_NAME)
        if config_overrides:
            config_overrides(config)
        for attr in ("name_or_path", "tokenizer_name_or_path"):
            value = getattr(config.llm, attr)
            if value and (path / value).exists():
                setattr(config.llm, attr, str(path / value))
        if config.encoder.checkpoint and (path / config.encoder.checkpoint).exists():
            config.encoder.checkpoint = str(path / config.encoder.checkpoint)
        # a self-contained folder (e.g. the shipped miniature model) names its decoders inside itself, so it
        # loads from any working directory and through every entry point (generate, app, serve)
        for dec in config.decoders.values():
            if dec.name_or_path and (path / dec.name_or_path).is_dir():
                dec.name_or_path = str(path / dec.name_or_path)
        tokenizer, base = load_tokenizer_and_llm(config.llm, config.signals, device)
        apply_base_overrides(base, path / BASE_OVERRIDES_NAME)
        llm = PeftModel.from_pretrained(base, path / "llm_adapter", is_trainable=True)
        bridge = load_bridge(path / "bridge")
        projections = {m: OutputProjection.from_pretrained(path / "output_projections" / m) for m in config.output_projections}
        encoder = load_encoder(config.encoder, device) if with_encoder else None
        model = cls(config, tokenizer, llm, bridge, projections, encoder)
        if model.llm_adapters is not None and (path / "llm_adapters").is_dir():  # else: fresh (identity) adapters
            model.llm_adapters.load_pretrained(path / "llm_adapters")
        return model.to(device)

    def base_llm_state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen LLM's own weights under their transformers names (peft wrappers removed)."""
        state = {}
        for name, tensor in self.llm.get_base_model().state_dict().items():
            if "lora_" in name or "trainable_tokens_delta" in name:
                continue
            state[name.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")] = tensor
        return state

    # ------------------------------------------------------------------ trainability
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"input_projection": list(self.bridge.parameters()),
                  "output_projections": list(self.output_projections.parameters()),
                  "lora": [], "new_token_rows": [],
                  "llm_adapters": list(self.llm_adapters.parameters()) if self.llm_adapters is not None else []}
        for name, p in self.llm.named_parameters():
            if "lora_" in name:
                groups["lora"].append(p)
            elif "trainable_tokens_delta" in name:
                groups["new_token_rows"].append(p)
        return groups

    def set_stage(self, stage: str | None) -> list[str]:
        """Freeze everything, then unfreeze the non-empty groups ``STAGE_TRAINABLE[stage]`` names
        (less those that a switched-on ``STAGE_EXCLUDED_BY`` config attribute takes out)."""
        if stage is not None and stage not in STAGE_TRAINABLE:
            raise ValueError(f"unknown stage {stage!r}; use one of {sorted(STAGE_TRAINABLE)}")
        self.requires_grad_(False)
        groups = self.parameter_groups()
        excluded = {g for attr, by_stage in STAGE_EXCLUDED_BY.items() if getattr(self.config, attr)
                    for g in by_stage.get(stage, ())}
        active = [g for g in STAGE_TRAINABLE.get(stage, ()) if g not in excluded and groups[g]]
        for name in active:
            for p in groups[name]:
                p.requires_grad_(True)
        self.stage = stage
        return list(active)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ media
    @property
    def device(self) -> torch.device:
        return self.bridge.device

    def load_media(self, path, modality: str | None = None) -> tuple[str, object]:
        """Read a file and prepare it as this model's bridge needs (``anyany.inputs.load_media``)."""
        from .inputs import load_media

        return load_media(path, modality, self.bridge.feature_kind, **self.bridge.image_options)

    @torch.no_grad()
    def encode_media(self, modality: str, inputs):
        """Preprocessed media -> the features the bridge consumes.

        ``inputs``: a batch ``[B, ...]``, or a list of single media (sizes may differ; tiled
        images are :class:`~projections.TiledImage`); the result has the same form. Pooled /
        tokens: ImageBind's pooled vector or tokens; tiles: every view through ImageBind (what
        the inner bridge reads), grid kept; pixels: the pixels themselves (no encoder).
        """
        self.bridge.check_modality(modality)  # e.g. patches take images only: fail before encoding
        if isinstance(inputs, (list, tuple)):  # one at a time: their sizes may differ
            return [self.encode_media(modality, x) if isinstance(x, TiledImage) else self.encode_media(modality, x[None])[0]
                    for x in inputs]
        kind = self.bridge.feature_kind
        if kind == "pixels":
            return inputs
        if kind == "tiles":
            if not isinstance(inputs, TiledImage):
                raise ValueError("the tiled bridge encodes TiledImage inputs (views + grid); prepare images with model.load_media")
            return TiledImage(self._encode(modality, inputs.views, self.bridge.inner_feature_kind), inputs.grid)
        return self._encode(modality, inputs, kind)

    def _encode(self, modality: str, inputs: torch.Tensor, feature_kind: str) -> torch.Tensor:
        if self.encoder is None:
            raise RuntimeError("this model was loaded without its encoder (with_encoder=False); pass cached features")
        enc_dtype = next(self.encoder.parameters()).dtype
        out = self.encoder.encode(modality, inputs.to(self.device, enc_dtype))
        return out.pooled if feature_kind == "pooled" else out.tokens

    def embed_inputs(self, input_ids, media_slots, media_features: dict) -> torch.Tensor:
        """Token embeddings with every media placeholder run replaced by its bridge output.

        ``media_features[modality]``: a stacked ``[N, ...]`` batch, or a list of single media
        (pixels of different sizes, tiled images) that go through the bridge one at a time.
        """
        embed = self.llm.get_input_embeddings()
        embeds = embed(input_ids)
        if not media_slots:
            return embeds
        projected: dict[str, object] = {}
        param = next(self.bridge.parameters())
        for modality, feats in media_features.items():
            kwargs = self._instruction_kwargs(embeds, media_slots, modality, len(feats))
            if isinstance(feats, torch.Tensor):
                projected[modality] = self.bridge(feats.to(param.device, param.dtype), modality, **kwargs)
            else:
                projected[modality] = [
                    self._bridge_one(x.to(param.device, param.dtype), modality, {k: v[i : i + 1] for k, v in kwargs.items()})
                    for i, x in enumerate(feats)
                ]
        mask = input_ids == self.token_ids.placeholder
        pieces = []
        for slot in sorted(media_slots, key=lambda s: (s.row, s.start)):
            tokens = projected[slot.modality][slot.feature_index]
            if tokens.shape[0] != slot.length:
                raise ValueError(f"{slot.modality} bridge gave {tokens.shape[0]} tokens, the prompt reserved {slot.length}")
            pieces.append(tokens)
        values = torch.cat(pieces).to(embeds.dtype)
        if int(mask.sum()) != values.shape[0]:
            raise ValueError(f"{int(mask.sum())} placeholder positions but {values.shape[0]} media tokens")
        return embeds.masked_scatter(mask.unsqueeze(-1), values)

    def _bridge_one(self, medium, modality: str, kwargs: dict) -> torch.Tensor:
        """One medium (no batch dim) -> its ``[n, llm_dim]`` bridge tokens."""
        if isinstance(medium, TiledImage):
            return self.bridge(medium.views[None], modality, grid=medium.grid, **kwargs)[0]
        return self.bridge(medium[None], modality, **kwargs)[0]

    def _instruction_kwargs(self, embeds, media_slots, modality: str, count: int) -> dict:
        """For instruction-aware bridges: each medium's human-turn text embeddings, padded, with a mask."""
        import inspect

        if "instruction" not in inspect.signature(self.bridge.forward).parameters:
            return {}
        spans = {s.feature_index: s for s in media_slots if s.modality == modality and s.instruction}
        if not spans:
            return {}
        longest = max(s.instruction[1] for s in spans.values())
        instruction = embeds.new_zeros(count, max(longest, 1), embeds.shape[-1])
        mask = torch.zeros(count, max(longest, 1), dtype=torch.bool, device=embeds.device)
        mask[:, 0] = True  # a medium with no text attends to one zero vector rather than to nothing (NaN)
        for index, s in spans.items():
            start, length = s.instruction
            instruction[index, :length] = embeds[s.row, start : start + length]
            mask[index, :length] = True
        return {"instruction": instruction, "instruction_mask": mask}

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        media_slots=(),
        signal_slots=(),
        media_features: dict | None = None,
        gen_targets: dict | None = None,
        prefix_states: PrefixStates | None = None,
    ) -> ModelOutput:
        """LM loss on ``labels`` + generation distance for each signal slot with a target.

        Stage 1 batches carry media and caption labels; stage 2 batches carry signal slots
        and decoder targets; stage 3 batches carry both. When gradients are on and the batch
        has a frozen prefix (stage 2, :mod:`anyany.frozen_prefix`), the LLM runs over it without
        autograd, or not at all when ``prefix_states`` (its cached pass) is given.
        """
        device = self.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        embeds = self.embed_inputs(input_ids, list(media_slots), media_features or {})
        base = self.llm.get_base_model()
        # Without gradients one pass costs the same, unless the prefix is given (e.g. the evaluation loss).
        split = prefix_states is not None or (self.split_frozen_prefix and torch.is_grad_enabled())
        lengths = frozen_prefix_lengths(self, input_ids, attention_mask, media_slots) if split else None
        if prefix_states is not None and (lengths is None or not torch.equal(prefix_states.lengths.to(device), lengths)):
            raise ValueError("prefix_states do not fit this batch (cached prefix lengths differ from the batch's "
                             "frozen prefixes); rebuild the prefix cache with this model and tokenizer")
        if lengths is not None:
            prefix = prefix_states if prefix_states is not None else compute_prefix(self, input_ids, lengths)
            hidden = forward_after_prefix(self, embeds, attention_mask, prefix)
        else:
            with self.llm_context(input_ids == self.token_ids.placeholder, embeds, attention_mask):
                hidden = base.model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        losses: dict[str, torch.Tensor] = {}
        if labels is not None:
            shifted = labels[:, 1:].to(device)
            keep = shifted != IGNORE_INDEX
            if keep.any():
                logits = base.lm_head(hidden[:, :-1][keep]).float()
                losses["lm"] = F.cross_entropy(logits, shifted[keep])
        conditioning = {}
        if signal_slots:
            by_modality: dict[str, list] = {}
            for slot in signal_slots:
                by_modality.setdefault(slot.modality, []).append(slot)
            for modality, slots in by_modality.items():
                states = self.signal_states(hidden, embeds, slots, modality)
                cond = self.output_projections[modality](states.to(self.output_projections[modality].dtype))
                conditioning[modality] = cond
                if gen_targets and modality in gen_targets:
                    target = gen_targets[modality][[s.target_index for s in slots]].to(states.device)
                    target = target if isinstance(cond, dict) else target.reshape(cond.shape)  # dict: packed rows
                    losses[f"gen_{modality}"] = generation_distance(cond, target, self.config.loss.distance)
        if not losses:
            raise ValueError("batch has neither labels nor generation targets: nothing to train on")
        if self.llm_adapters is not None and self.llm_adapters.trains():  # MoE-LoRA load balancing (weighted)
            aux = self.llm_adapters.aux_loss(weighted=True)
            if torch.is_tensor(aux):
                losses["moe_aux"] = aux
        weights = self.config.loss.weights
        total = sum(weights.get(k.removeprefix("gen_"), 1.0) * v for k, v in losses.items())
        return ModelOutput(loss=total, losses=losses, conditioning=conditioning)

    def llm_context(self, media_mask, embeds, attention_mask=None, *, decoding: bool = False):
        """The LLM adapters' context for a call over ``embeds`` (media at ``media_mask``); a no-op without adapters."""
        if self.llm_adapters is None:
            return nullcontext()
        return self.llm_adapters.context_for(embeds, media_mask, attention_mask, decoding=decoding)

    def signal_states(self, hidden, embeds, slots, modality: str) -> torch.Tensor:
        """[n_groups, N, H]: last-layer state at each signal token + that token's input embedding."""
        n = self.config.signals.count(modality)
        rows = torch.tensor([s.row for s in slots], device=hidden.device)
        cols = torch.tensor([s.start for s in slots], device=hidden.device)[:, None] + torch.arange(n, device=hidden.device)
        rows = rows[:, None].expand_as(cols)
        return hidden[rows, cols] + embeds[rows, cols]

    # ------------------------------------------------------------------ helpers for callers
    def collate(self, sequences) -> dict:
        return collate_sequences(sequences, self.tokenizer.pad_token_id)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def describe(self) -> str:
        return json.dumps({k: sum(p.numel() for p in v) for k, v in self.parameter_groups().items()})

