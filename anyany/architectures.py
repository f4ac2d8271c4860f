"""Per-family facts about the causal LMs the core accepts: module names, decoder layers, tied embeddings.

LoRA targets and the LLM-side adapters (:mod:`anyany.adapters`) name linears by their LLaMA
names (``q_proj`` ... ``down_proj``); :class:`Architecture` translates those names into the
family's own modules (Phi-3 fuses ``q/k/v`` into ``qkv_proj`` and ``gate/up`` into
``gate_up_proj``). An architecture that is not in :data:`ARCHITECTURES` is refused with a
sentence naming its ``model_type``, instead of peft failing later on a missing module.

Each family also has a tiny stand-in for tests and the miniature world (``random_init`` with a
``model_type``): the transformers config class of the family at a few thousand parameters and a
tokenizer built in code (byte-level BPE or a sentencepiece-style Unigram, as the family uses)
carrying a chat template in the family's turn format (:func:`tiny_chat_tokenizer`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
_LLAMA_PATHS = {**{n: f"self_attn.{n}" for n in ATTENTION}, **{n: f"mlp.{n}" for n in MLP}}


@dataclass(frozen=True)
class Architecture:
    """Where the linears of one decoder layer live, under this family's names."""

    model_type: str
    paths: dict[str, str] = field(default_factory=lambda: dict(_LLAMA_PATHS))  # module name -> path in a layer
    fused: dict[str, str] = field(default_factory=dict)  # LLaMA name -> the fused module holding it
    tokenizer: str = "byte_bpe"  # what the family's tiny stand-in tokenizer is: "byte_bpe" | "sentencepiece"

    def module_name(self, name: str) -> str:
        """A LLaMA name (``q_proj``) as this family names the module computing it (``qkv_proj`` in Phi-3)."""
        return self.fused.get(name, name)

    def linear_path(self, name: str) -> str:
        """Path inside a decoder layer of a LLaMA-named linear, of this family's own name, or a dotted path."""
        if "." in name:
            return name
        own = self.module_name(name)
        if own not in self.paths:
            raise ValueError(f"{self.model_type} decoder layers have no linear {name!r}; "
                             f"known: {', '.join(sorted(set(self.paths) | set(self.fused)))}")
        return self.paths[own]

    def module_names(self, names) -> list[str]:
        """LLaMA names -> this family's module names, in order, each once (q/k/v -> one qkv_proj)."""
        out: list[str] = []
        for n in names:
            own = n if "." in n else self.module_name(n)
            if own not in out:
                out.append(own)
        return out

    @property
    def attention_linears(self) -> list[str]:
        return self.module_names(ATTENTION)

    @property
    def mlp_linears(self) -> list[str]:
        return self.module_names(MLP)

    def lora_targets(self, names) -> list[str] | str:
        """``LoRASettings.target_modules`` for peft: LLaMA names translated; peft's ``"all-linear"`` kept."""
        if isinstance(names, str):
            return names
        return [self.linear_path(n).rsplit(".", 1)[-1] for n in self.module_names(names)]

    @staticmethod
    def decoder_layers(causal_lm: nn.Module) -> nn.ModuleList:
        """The decoder layers of a ``*ForCausalLM`` (every supported family keeps them at ``model.layers``)."""
        return causal_lm.model.layers


_PHI3_PATHS = {"qkv_proj": "self_attn.qkv_proj", "o_proj": "self_attn.o_proj",
               "gate_up_proj": "mlp.gate_up_proj", "down_proj": "mlp.down_proj"}

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama"),
    "qwen2": Architecture("qwen2"),
    "qwen3": Architecture("qwen3"),
    "mistral": Architecture("mistral", tokenizer="sentencepiece"),
    "gemma2": Architecture("gemma2", tokenizer="sentencepiece"),
    "gemma3_text": Architecture("gemma3_text", tokenizer="sentencepiece"),
    "phi3": Architecture("phi3", paths=_PHI3_PATHS, tokenizer="sentencepiece",
                         fused={"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                                "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}),
}


def architecture(model_type: str | None) -> Architecture:
    """The table entry for ``model_type`` (a transformers ``config.model_type``)."""
    if model_type not in ARCHITECTURES:
        raise ValueError(f"LLM architecture {model_type!r} is not supported as the core; supported model_type "
                         f"values: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[model_type]


def architecture_of(causal_lm: nn.Module) -> Architecture:
    return architecture(getattr(causal_lm.config, "model_type", None))


# ---------------------------------------------------------------------------------------
# Tiny stand-ins: special tokens and chat templates in each family's turn format
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatFormat:
    """The special tokens of a family's instruct tokenizer and a chat template in its format."""

    template: str
    bos: str | None
    eos: str
    end_of_turn: str  # the token closing an assistant turn (what generation stops on)
    extra: tuple[str, ...] = ()  # further special tokens the template uses
    pad: str | None = None


# The templates reproduce each family's turn layout (roles, markers, newlines, BOS); they leave out
# tool calls, system-prompt variants and the like, which the core never renders.
_LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_QWEN2 = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_QWEN3 = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
)
_MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ ' ' + m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
_GEMMA = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_PHI3 = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
)

CHAT_FORMATS: dict[str, ChatFormat] = {
    "llama": ChatFormat(_LLAMA3, "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                        ("<|start_header_id|>", "<|end_header_id|>")),
    "qwen2": ChatFormat(_QWEN2, None, "<|im_end|>", "<|im_end|>", ("<|im_start|>",), pad="<|endoftext|>"),
    "qwen3": ChatFormat(_QWEN3, None, "<|im_end|>", "<|im_end|>", ("<|im_start|>", "<think>", "</think>"),
                        pad="<|endoftext|>"),
    "mistral": ChatFormat(_MISTRAL, "<s>", "</s>", "</s>", ("[INST]", "[/INST]")),
    "gemma2": ChatFormat(_GEMMA, "<bos>", "<eos>", "<end_of_turn>", ("<start_of_turn>",), pad="<pad>"),
    "gemma3_text": ChatFormat(_GEMMA, "<bos>", "<eos>", "<end_of_turn>", ("<start_of_turn>",), pad="<pad>"),
    "phi3": ChatFormat(_PHI3, "<s>", "<|endoftext|>", "<|end|>", ("<|user|>", "<|assistant|>", "<|system|>")),
}

# A few lines of text the tiny tokenizers learn their merges / pieces from (deterministic).
_CORPUS = [
    "a red circle on the left and a blue square at the top",
    "draw a green triangle moving to the right; play a low steady tone",
    "what is in this picture? describe the sound and the video.",
    "Here is a picture of it. Sure, a short clip: the shape slides down.",
    "the yellow star is small, the purple circle is large, a high tone rises",
    "Generate a caption for this. You are a helpful assistant.",
]


def tiny_chat_tokenizer(model_type: str):
    """A small tokenizer of the family's kind with its special tokens and chat template (no hub)."""
    from transformers import PreTrainedTokenizerFast

    from .tokens import sentencepiece_unigram_tokenizer, trained_byte_bpe_tokenizer

    arch = architecture(model_type)
    fmt = CHAT_FORMATS[model_type]
    specials = [t for t in ("<unk>", fmt.pad, fmt.bos, fmt.eos, fmt.end_of_turn, *fmt.extra) if t]
    specials = list(dict.fromkeys(specials))
    build = trained_byte_bpe_tokenizer if arch.tokenizer == "byte_bpe" else sentencepiece_unigram_tokenizer
    backend = build(_CORPUS, specials)
    extra = [t for t in (fmt.end_of_turn, *fmt.extra) if t not in (fmt.eos, fmt.bos, fmt.pad)]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=fmt.bos, eos_token=fmt.eos, unk_token="<unk>",
        pad_token=fmt.pad or "<unk>", additional_special_tokens=list(dict.fromkeys(extra)),
    )
    tok.chat_template = fmt.template
    return tok


def tiny_llm_config(model_type: str, tokenizer, spec: dict):
    """The family's transformers config at the sizes of ``spec`` (``random_init`` less ``model_type``).

    Vocabulary size: ``spec["vocab_size"]`` when given (a vocabulary padded past the tokenizer, as
    Qwen's is), else the tokenizer's length. Special token ids come from the tokenizer; like the
    real instruct checkpoints, ``eos_token_id`` lists EOS and the end-of-turn token.
    """
    from transformers import AutoConfig

    architecture(model_type)
    fmt = CHAT_FORMATS[model_type]
    spec = dict(spec)
    vocab = spec.pop("vocab_size", len(tokenizer))
    if vocab < len(tokenizer):
        raise ValueError(f"random_init vocab_size={vocab} is smaller than the tokenizer ({len(tokenizer)} tokens); "
                         "give at least that many or leave vocab_size out")
    eos_ids = list(dict.fromkeys(tokenizer.convert_tokens_to_ids([fmt.eos, fmt.end_of_turn])))
    defaults = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0],
                "pad_token_id": tokenizer.pad_token_id}
    probe = AutoConfig.for_model(model_type)
    if hasattr(probe, "head_dim") and "hidden_size" in spec and "num_attention_heads" in spec:
        defaults["head_dim"] = spec["hidden_size"] // spec["num_attention_heads"]
    return AutoConfig.for_model(model_type, vocab_size=vocab, **{**defaults, **spec})
