"""Output projections: signal-token hidden states -> a decoder's text-conditioning space.

One projection per modality. For a decoder conditioned on one sequence (SD-1.5, Zeroscope,
AudioLDM) it returns that tensor; given ``outputs`` (a decoder's conditioning spec as a list,
``decoders.spec``) it returns a dict with every tensor of the spec: each sequence from its own
learned queries and output head, each pooled vector from one learned query with its own head,
each mask as a per-token probability from a head on its sequence's query states.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from decoders.spec import ConditioningSpec


class OutputProjection(ModelMixin, ConfigMixin):
    """NExT-GPT's "transformer" output projection.

    ``Linear(llm_dim -> d_model)`` on the N signal states, an encoder-decoder
    ``nn.Transformer`` whose decoder reads ``num_output_tokens`` learned queries, and
    ``Linear(d_model -> output_dim)``: e.g. 4 image signal states -> 77 x 768 for SD-1.5.
    """

    @register_to_config
    def __init__(
        self,
        llm_dim: int = 4096,
        num_output_tokens: int = 77,
        output_dim: int = 768,
        d_model: int = 512,
        num_heads: int = 4,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        ff_dim: int = 2048,
        dropout: float = 0.0,
        outputs: list | None = None,
    ):
        super().__init__()
        self.in_proj = nn.Linear(llm_dim, d_model)
        with warnings.catch_warnings():  # norm_first disables the nested-tensor fast path; that is expected
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(
                d_model=d_model,
                nhead=num_heads,
                num_encoder_layers=num_encoder_layers,
                num_decoder_layers=num_decoder_layers,
                dim_feedforward=ff_dim,
                dropout=dropout,
                norm_first=True,
                batch_first=True,
            )
        if outputs is None:
            self.queries = nn.Parameter(torch.randn(1, num_output_tokens, d_model) * 0.02)
            self.out_proj = nn.Linear(d_model, output_dim)
            return
        spec = ConditioningSpec.from_list(outputs)
        if spec.primary.shape != (num_output_tokens, output_dim):
            raise ValueError(f"num_output_tokens x output_dim ({num_output_tokens} x {output_dim}) must be the shape "
                             f"of the spec's first tensor {spec.primary.name} {spec.primary.shape}")
        # One query per token of every sequence, then one per pooled vector.
        n_queries = sum(t.shape[0] if t.role == "sequence" else 1 for t in spec.tensors if t.role != "mask")
        self.queries = nn.Parameter(torch.randn(1, n_queries, d_model) * 0.02)
        self.heads = nn.ModuleDict({
            t.name: nn.Linear(d_model, 1 if t.role == "mask" else t.shape[-1]) for t in spec.tensors
        })

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.config.num_output_tokens, self.config.output_dim)

    @property
    def spec(self) -> ConditioningSpec:
        """The tensors ``forward`` returns (one ``prompt_embeds`` sequence without ``outputs``)."""
        if self.config.outputs is None:
            return ConditioningSpec.single(self.output_shape)
        return ConditioningSpec.from_list(self.config.outputs)

    def forward(self, signal_states: torch.Tensor) -> torch.Tensor:
        """``signal_states``: [B, N, llm_dim] -> [B, num_output_tokens, output_dim]."""
        if signal_states.dim() != 3 or signal_states.shape[-1] != self.config.llm_dim:
            raise ValueError(f"expected signal states [B, N, {self.config.llm_dim}], got {tuple(signal_states.shape)}")
        src = self.in_proj(signal_states)
        tgt = self.queries.expand(src.shape[0], -1, -1)
        states = self.transformer(src, tgt)
        if self.config.outputs is None:
            return self.out_proj(states)
        spec, out, start, by_sequence = self.spec, {}, 0, {}
        for t in spec.tensors:
            if t.role == "mask":
                continue
            n = t.shape[0] if t.role == "sequence" else 1
            by_sequence[t.name] = part = states[:, start:start + n]
            start += n
            out[t.name] = self.heads[t.name](part if t.role == "sequence" else part[:, 0])
        for t in spec.tensors:
            if t.role == "mask":
                out[t.name] = torch.sigmoid(self.heads[t.name](by_sequence[t.of]).squeeze(-1))
        return {t.name: out[t.name] for t in spec.tensors}


def _distance(pred: torch.Tensor, target: torch.Tensor, kind: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    target = target.to(pred.dtype)
    if kind == "l2":
        per = (pred - target).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    elif kind == "mse":
        per = (pred - target).pow(2).mean(-1)
    else:
        raise ValueError(f"unknown distance {kind!r}; use 'l2' or 'mse'")
    if weight is None:
        return per.mean()
    weight = weight.to(per.dtype)
    return (per * weight).sum() / weight.sum().clamp_min(1.0)


def _infer_spec(pred: dict) -> ConditioningSpec:
    """The spec of a projection's output dict: [B, T, D] sequences, [B, D] pooled vectors, and
    [B, T] tensors named ``*mask`` (the diffusers pipelines' naming) masking the first sequence of T tokens."""
    items = []
    for name, v in pred.items():
        if v.dim() == 3:
            items.append((name, tuple(v.shape[1:])))
        elif name.endswith("mask"):
            of = next((n for n, w in pred.items() if w.dim() == 3 and w.shape[1] == v.shape[1]), None)
            items.append((name, tuple(v.shape[1:]), "mask", of))
        else:
            items.append((name, tuple(v.shape[1:]), "pooled"))
    return ConditioningSpec.build(*items)


def generation_distance(pred, target, kind: str = "l2", spec: ConditioningSpec | None = None) -> torch.Tensor:
    """Distance between projected conditioning and the decoder's caption embedding.

    ``l2``: mean Euclidean distance per token (the reference's choice); ``mse``: mean squared error.

    For a multi-tensor spec ``pred`` is the projection's dict and ``target`` the same dict or its
    packed rows (``decoders.spec``; how targets are cached). The result sums one term per tensor:
    the distance per token of each sequence (over the tokens its target mask attends, where the
    spec has a mask: masked tokens never reach the denoiser), the distance of each pooled vector,
    and the binary cross-entropy of each mask. ``spec`` defaults to the one ``pred`` implies.
    """
    if not isinstance(pred, dict):
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        return _distance(pred, target, kind)
    spec = spec or _infer_spec(pred)
    spec.check(pred, "prediction")
    if not isinstance(target, dict):
        target = spec.unpack(target)
    spec.check(target, "target")
    total = pred[spec.primary.name].new_zeros(())
    masks = {t.of: t.name for t in spec.tensors if t.role == "mask"}
    for t in spec.tensors:
        value, tgt = pred[t.name], target[t.name].to(pred[t.name].device)
        if t.role == "mask":
            total = total + F.binary_cross_entropy(value.float().clamp(1e-6, 1 - 1e-6), tgt.float())
        elif t.name in masks:
            total = total + _distance(value, tgt, kind, target[masks[t.name]].to(value.device))
        else:
            total = total + _distance(value, tgt, kind)
    return total
