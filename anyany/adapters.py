"""LLM-side adapters from the multimodal-LLM literature, switchable in ``AnyToAnyConfig.llm_adapters``.

Each entry of ``config.llm_adapters`` is a dict ``{"type": ..., fields}``:

``gated_xattn`` (Flamingo, Alayrac et al. 2022)
    Before every ``every``-th decoder layer (indices 0, k, 2k, ...) a gated cross-attention block
    plus a gated feed-forward block: ``x += tanh(a_attn) * XAttn(LN(x), LN(media))`` then
    ``x += tanh(a_ff) * FFW(LN(x))``, both ``a`` initialised at 0, so at init the model is exactly
    the plain model. The media are the sequence's own media tokens (the bridge outputs); a position
    attends to the media tokens at or before it (causal), a position with none before it gets no
    cross-attention output. Fields: ``every`` (1), ``heads`` (4), ``ff_mult`` (4).

``visual_expert`` (CogVLM, Wang et al. 2023)
    At media positions the adapted layers run their own q/k/v/o (and, with ``mlp``, gate/up/down)
    weights; text positions keep the frozen ones. ``rank=None``: each expert is a trainable full
    matrix initialised to the frozen weight, stored as *frozen weight + full delta (0 at init)*, which
    is the same function and optimiser trajectory as a copy but exact at init (identical logits).
    ``rank=r``: to keep memory small at real scale the expert is *frozen weight + a trainable
    low-rank delta* ``B @ A`` with ``B = 0`` at init (also identical at init). Keys/values computed at media positions go into the KV cache as usual.
    Fields: ``layers`` (None: all), ``mlp`` (True), ``rank`` (None).

``moe_lora`` (MoE-LLaVA, Lin et al. 2024)
    A sparse mixture of LoRA experts on chosen linear modules: a router (a linear map of the
    module's input hidden state) picks the top-k of E experts per token, output =
    ``base(x) + sum_k gate_k * LoRA_{e_k}(x)`` with gates the renormalised top-k router
    probabilities; every LoRA ``B`` starts at 0 (identity at init). A Switch/GShard load-balancing
    loss ``E * sum_e f_e * P_e`` (f_e: share of the token->expert assignments going to e, P_e: mean
    router probability of e, over non-padding tokens) is collected per forward. Fields: ``targets``
    (["up_proj", "down_proj"]; short LLaMA names or dotted paths inside a decoder layer),
    ``experts`` (4), ``top_k`` (2), ``r`` (8), ``alpha`` (16), ``layers`` (None: all),
    ``aux_weight`` (0.01).

Mechanism: :class:`LLMAdapters` owns every adapter's parameters (so they form one parameter group
and one safetensors file) and installs itself onto the base LLaMA's decoder layers with forward
hooks only (on any family of :mod:`anyany.architectures`, by its own module names): the LLM's module tree, its state dict and peft's LoRA wrappers are untouched. The hooks
read a per-forward :class:`AdapterContext` that the caller sets with :meth:`LLMAdapters.context`
around the LLM call; outside a context the media-dependent adapters do nothing (MoE-LoRA still
applies, it does not depend on media).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import ARCHITECTURES, ATTENTION, MLP, Architecture

# Where LLaMA's linear layers live inside one decoder layer.
LLAMA_LINEARS = dict(ARCHITECTURES["llama"].paths)
ATTENTION_LINEARS = ATTENTION
MLP_LINEARS = MLP


def base_linear(module: nn.Module) -> nn.Module:
    """The frozen ``nn.Linear`` under peft's wrappers (``LoraLayer.base_layer``, possibly nested)."""
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def resolve_linear(layer: nn.Module, name: str, arch: Architecture | None = None) -> nn.Module:
    """A linear of one decoder layer by short LLaMA name (``q_proj``; in a fused family the module
    computing it, e.g. Phi-3's ``qkv_proj``), the family's own name, or a dotted path (``self_attn.q_proj``)."""
    return layer.get_submodule((arch or ARCHITECTURES["llama"]).linear_path(name))


@dataclass
class AdapterContext:
    """What the adapters need to know about the tokens of one LLM call."""

    media_mask: torch.Tensor | None = None  # [B, L] True at media positions of the tokens run; None: all text
    media_tokens: torch.Tensor | None = None  # [B, M, H] the sequence's media tokens (bridge outputs)
    media_token_mask: torch.Tensor | None = None  # [B, M] False at padding
    media_positions: torch.Tensor | None = None  # [B, M] sequence index of each media token; None: all visible
    attention_mask: torch.Tensor | None = None  # [B, L] 0 at padding (left out of routing statistics)
    aux_losses: list = field(default_factory=list)  # (weight, loss) per MoE-LoRA module call


def gather_media(embeds: torch.Tensor, media_mask: torch.Tensor):
    """``embeds[B, L, H]`` at ``media_mask[B, L]`` -> padded tokens [B, M, H], their mask [B, M], positions [B, M]."""
    counts = media_mask.sum(1)
    m = int(counts.max()) if counts.numel() else 0
    token_mask = torch.arange(m, device=embeds.device)[None, :] < counts[:, None]
    tokens = embeds.new_zeros(embeds.shape[0], m, embeds.shape[-1]).masked_scatter(token_mask[..., None], embeds[media_mask])
    positions = torch.zeros(token_mask.shape, dtype=torch.long, device=embeds.device)
    positions[token_mask] = media_mask.nonzero()[:, 1]
    return tokens, token_mask, positions


class _Adapter(nn.Module):
    """Base: ``DEFAULTS`` are the config fields; ``install`` registers hooks and returns their handles."""

    DEFAULTS: dict = {}

    @classmethod
    def fields(cls, spec: dict) -> dict:
        unknown = set(spec) - set(cls.DEFAULTS) - {"type"}
        if unknown:
            raise ValueError(f"{spec['type']}: unknown fields {sorted(unknown)}; known: {sorted(cls.DEFAULTS)}")
        return {**cls.DEFAULTS, **{k: v for k, v in spec.items() if k != "type"}}

    @staticmethod
    def layer_indices(layers, chosen) -> list[int]:
        n = len(layers)
        if chosen is None:
            return list(range(n))
        bad = [i for i in chosen if not -n <= i < n]
        if bad:
            raise ValueError(f"layer indices {bad} out of range for {n} decoder layers")
        return sorted({i % n for i in chosen})


# ---------------------------------------------------------------------------------------- Flamingo
class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"gated_xattn: hidden size {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.media_norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff_mult * dim, bias=False), nn.GELU(),
                                nn.Linear(ff_mult * dim, dim, bias=False))
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, ctx: AdapterContext) -> torch.Tensor:
        dtype = self.to_q.weight.dtype
        h = x.to(dtype)
        media = ctx.media_tokens.to(device=h.device, dtype=dtype)
        b, length, dim = h.shape
        m = media.shape[1]
        visible = torch.ones(b, 1, m, dtype=torch.bool, device=h.device)
        if ctx.media_token_mask is not None:
            visible = visible & ctx.media_token_mask[:, None, :]
        if ctx.media_mask is not None and ctx.media_positions is not None:  # a full sequence: causal
            visible = visible & (ctx.media_positions[:, None, :] <= torch.arange(length, device=h.device)[None, :, None])
        visible = visible.expand(b, length, m)[:, None]  # [B, 1, L, M]
        q = self.to_q(self.norm(h)).view(b, length, self.heads, -1).transpose(1, 2)
        k, v = (t.view(b, m, self.heads, -1).transpose(1, 2) for t in self.to_kv(self.media_norm(media)).chunk(2, -1))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        attn = scores.masked_fill(~visible, torch.finfo(scores.dtype).min).softmax(-1) * visible  # no media: 0
        out = self.to_out((attn @ v).transpose(1, 2).reshape(b, length, dim))
        x = x + (torch.tanh(self.attn_gate) * out).to(x.dtype)
        return x + (torch.tanh(self.ff_gate) * self.ff(x.to(dtype))).to(x.dtype)


class GatedXAttn(_Adapter):
    DEFAULTS = {"every": 1, "heads": 4, "ff_mult": 4}

    def __init__(self, spec: dict, layers: nn.ModuleList, hidden: int, arch: Architecture | None = None):
        super().__init__()
        f = self.fields(spec)
        if f["every"] < 1:
            raise ValueError("gated_xattn: every must be >= 1")
        self.blocks = nn.ModuleDict({str(i): GatedCrossAttentionBlock(hidden, f["heads"], f["ff_mult"])
                                     for i in range(0, len(layers), f["every"])})

    def install(self, layers, get_ctx) -> list:
        handles = []
        for key, block in self.blocks.items():
            def pre_hook(layer, args, kwargs, block=block):
                ctx = get_ctx()
                if ctx is None or ctx.media_tokens is None or ctx.media_tokens.shape[1] == 0:
                    return None
                if args:
                    return (block(args[0], ctx), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": block(kwargs["hidden_states"], ctx)}

            handles.append(layers[int(key)].register_forward_pre_hook(pre_hook, with_kwargs=True))
        return handles


# ---------------------------------------------------------------------------------------- CogVLM
class ExpertLinear(nn.Module):
    """The media-position weights of one frozen linear ``W``: ``W + delta``, ``delta`` trainable and 0 at init.

    ``rank=None``: ``delta`` is a full matrix (+ bias), i.e. a trainable full copy of the expert
    written as its difference from ``W``: the same function and the same optimiser trajectory as a
    copy-initialised expert, bit-exact at init, and usable over a quantized ``W``.
    ``rank=r``: ``delta = B @ A`` (``B = 0`` at init), for memory at real scale.
    """

    def __init__(self, base: nn.Linear, rank: int | None):
        super().__init__()
        self.rank = rank
        if rank is None:
            self.weight_delta = nn.Parameter(torch.zeros(base.out_features, base.in_features))
            self.bias_delta = None if base.bias is None else nn.Parameter(torch.zeros(base.out_features))
        else:
            self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def media_output(self, x: torch.Tensor, frozen_out: torch.Tensor) -> torch.Tensor:
        """The expert's output for media rows ``x`` whose frozen output is ``frozen_out``."""
        if self.rank is None:
            delta = F.linear(x.to(self.weight_delta.dtype), self.weight_delta, self.bias_delta)
        else:
            delta = (x.to(self.lora_A.dtype) @ self.lora_A.T) @ self.lora_B.T
        return frozen_out.to(delta.dtype) + delta


class VisualExpert(_Adapter):
    DEFAULTS = {"layers": None, "mlp": True, "rank": None}

    def __init__(self, spec: dict, layers: nn.ModuleList, hidden: int, arch: Architecture | None = None):
        super().__init__()
        f = self.fields(spec)
        self.arch = arch = arch or ARCHITECTURES["llama"]
        names = arch.attention_linears + (arch.mlp_linears if f["mlp"] else [])  # Phi-3: the fused modules
        self.experts = nn.ModuleDict({
            f"{i}_{name}": ExpertLinear(base_linear(resolve_linear(layers[i], name, arch)), f["rank"])
            for i in self.layer_indices(layers, f["layers"]) for name in names
        })

    def install(self, layers, get_ctx) -> list:
        handles = []
        for key, expert in self.experts.items():
            index, name = key.split("_", 1)

            def hook(module, args, output, expert=expert):
                ctx = get_ctx()
                if ctx is None or ctx.media_mask is None:
                    return None
                mask = ctx.media_mask.to(output.device)
                if mask.shape != output.shape[:-1]:
                    raise ValueError(f"visual_expert: media_mask {tuple(mask.shape)} does not match the tokens {tuple(output.shape[:-1])}")
                if not mask.any():
                    return None
                new = expert.media_output(args[0][mask], output[mask])
                return output.masked_scatter(mask[..., None], new.to(output.dtype))

            # On the *base* linear: peft's LoRA (if any) still adds its delta on top, at every position.
            handles.append(base_linear(resolve_linear(layers[int(index)], name, self.arch)).register_forward_hook(hook))
        return handles


# ---------------------------------------------------------------------------------------- MoE-LLaVA
class MoELoRALinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, experts: int, top_k: int, r: int, alpha: float):
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"moe_lora: need 1 <= top_k <= experts, got top_k={top_k}, experts={experts}")
        self.top_k, self.scaling = top_k, alpha / r
        self.router = nn.Linear(in_features, experts, bias=False)
        self.lora_A = nn.Parameter(torch.empty(experts, r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(experts, out_features, r))
        for a in self.lora_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.last_topk: torch.Tensor | None = None  # [N, k] expert indices of the last call (inspection)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None):
        """``x[..., in]`` -> (MoE-LoRA delta [..., out], load-balancing loss)."""
        flat = x.reshape(-1, x.shape[-1]).to(self.lora_A.dtype)
        probs = self.router(flat).softmax(-1)  # [N, E]
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))
        self.last_topk = top_i.detach()
        # Dense over experts (E small, r small); unselected experts have gate 0 and get no gradient.
        h = torch.einsum("ni,eri->ner", flat, self.lora_A) * gates[..., None]
        delta = torch.einsum("ner,eor->no", h, self.lora_B) * self.scaling
        keep = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device) if token_mask is None \
            else token_mask.reshape(-1).to(flat.device).bool()
        experts = probs.shape[-1]
        if keep.any():
            assigned = F.one_hot(top_i[keep], experts).sum(1).float()  # [N', E]
            f = assigned.sum(0) / assigned.sum()
            p = probs[keep].mean(0)
            aux = experts * (f * p).sum()
        else:
            aux = probs.new_zeros(())
        return delta.reshape(*x.shape[:-1], -1), aux


class MoELoRA(_Adapter):
    DEFAULTS = {"targets": ["up_proj", "down_proj"], "experts": 4, "top_k": 2, "r": 8, "alpha": 16,
                "layers": None, "aux_weight": 0.01}

    def __init__(self, spec: dict, layers: nn.ModuleList, hidden: int, arch: Architecture | None = None):
        super().__init__()
        f = self.fields(spec)
        self.aux_weight = float(f["aux_weight"])
        self.arch = arch = arch or ARCHITECTURES["llama"]
        modules, self._paths = {}, {}
        for i in self.layer_indices(layers, f["layers"]):
            for name in arch.module_names(f["targets"]):  # LLaMA names -> the family's (fused) modules, each once
                lin = base_linear(resolve_linear(layers[i], name, arch))
                key = f"{i}_{name.replace('.', '_')}"
                modules[key] = MoELoRALinear(lin.in_features, lin.out_features, f["experts"], f["top_k"], f["r"], f["alpha"])
                self._paths[key] = (i, name)
        self.moe = nn.ModuleDict(modules)

    def install(self, layers, get_ctx) -> list:
        handles = []
        for key, moe in self.moe.items():
            index, name = self._paths[key]

            def hook(module, args, output, moe=moe):
                ctx = get_ctx()
                token_mask = None
                if ctx is not None and ctx.attention_mask is not None and ctx.attention_mask.shape == output.shape[:-1]:
                    token_mask = ctx.attention_mask
                delta, aux = moe(args[0], token_mask)
                if ctx is not None:
                    ctx.aux_losses.append((self.aux_weight, aux))
                return output + delta.to(output.dtype)

            # On the outer module (peft's LoRA wrapper where there is one): base + LoRA + MoE-LoRA.
            handles.append(resolve_linear(layers[index], name, self.arch).register_forward_hook(hook))
        return handles


ADAPTER_TYPES: dict[str, type[_Adapter]] = {"gated_xattn": GatedXAttn, "visual_expert": VisualExpert, "moe_lora": MoELoRA}


# ---------------------------------------------------------------------------------------- the set
class LLMAdapters(nn.Module):
    """All configured adapters, installed onto ``layers`` (the base LLM's decoder layers) by hooks.

    ``architecture`` (:mod:`anyany.architectures`) names the family's linears; default LLaMA's."""

    def __init__(self, specs: list[dict], layers: nn.ModuleList, hidden_size: int, seed: int = 0,
                 architecture: Architecture | None = None):
        super().__init__()
        for spec in specs:
            if spec.get("type") not in ADAPTER_TYPES:
                raise ValueError(f"unknown llm adapter type {spec.get('type')!r}; use one of {sorted(ADAPTER_TYPES)}")
        with torch.random.fork_rng(devices=[]):  # building adapters leaves the global RNG as it was
            torch.manual_seed(seed)
            self.adapters = nn.ModuleList(ADAPTER_TYPES[s["type"]](s, layers, hidden_size, architecture) for s in specs)
        self._ctx: AdapterContext | None = None
        self._last: AdapterContext | None = None
        self._handles = [h for a in self.adapters for h in a.install(layers, lambda: self._ctx)]

    def remove(self) -> None:
        """Take the hooks off the LLM (the adapters' parameters stay)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextmanager
    def context(self, media_mask=None, media_tokens=None, media_token_mask=None, media_positions=None, attention_mask=None):
        """Set around one LLM call; see :class:`AdapterContext` for the fields."""
        previous = self._ctx
        self._ctx = self._last = AdapterContext(media_mask, media_tokens, media_token_mask, media_positions, attention_mask)
        try:
            yield self._ctx
        finally:
            self._ctx = previous

    def context_for(self, embeds: torch.Tensor, media_mask: torch.Tensor, attention_mask=None, *, decoding: bool = False):
        """The context of a call over ``embeds`` (the merged inputs, media at ``media_mask``).

        ``decoding=True``: the call runs new (text) tokens after the prompt ``embeds``; the
        prompt's media tokens stay visible to cross-attention.
        """
        tokens, token_mask, positions = gather_media(embeds, media_mask.to(embeds.device))
        if decoding:
            return self.context(None, tokens, token_mask)
        return self.context(media_mask, tokens, token_mask, positions, attention_mask)

    def trains(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def aux_loss(self, weighted: bool = False) -> torch.Tensor | float:
        """Summed MoE load-balancing loss of the last context (``weighted``: each times its ``aux_weight``); 0 if none."""
        if self._last is None or not self._last.aux_losses:
            return 0.0
        return sum((w if weighted else 1.0) * loss for w, loss in self._last.aux_losses)

    def save_pretrained(self, folder) -> None:
        from pathlib import Path

        from safetensors.torch import save_file

        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(Path(folder) / ADAPTERS_FILE))

    def load_pretrained(self, folder) -> None:
        from pathlib import Path

        from safetensors.torch import load_file

        self.load_state_dict(load_file(str(Path(folder) / ADAPTERS_FILE)), strict=True)


ADAPTERS_FILE = "adapters.safetensors"
