"""Output projections: signal-token hidden states -> a decoder's text-conditioning space."""
from __future__ import annotations

import warnings

import torch
from torch import nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


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
        self.queries = nn.Parameter(torch.randn(1, num_output_tokens, d_model) * 0.02)
        self.out_proj = nn.Linear(d_model, output_dim)

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.config.num_output_tokens, self.config.output_dim)

    def forward(self, signal_states: torch.Tensor) -> torch.Tensor:
        """``signal_states``: [B, N, llm_dim] -> [B, num_output_tokens, output_dim]."""
        if signal_states.dim() != 3 or signal_states.shape[-1] != self.config.llm_dim:
            raise ValueError(f"expected signal states [B, N, {self.config.llm_dim}], got {tuple(signal_states.shape)}")
        src = self.in_proj(signal_states)
        tgt = self.queries.expand(src.shape[0], -1, -1)
        return self.out_proj(self.transformer(src, tgt))


def generation_distance(pred: torch.Tensor, target: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Distance between projected conditioning and the decoder's caption embedding.

    ``l2``: mean Euclidean distance per token (the reference's choice); ``mse``: mean squared error.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    target = target.to(pred.dtype)
    if kind == "l2":
        return (pred - target).pow(2).sum(-1).clamp_min(1e-12).sqrt().mean()
    if kind == "mse":
        return (pred - target).pow(2).mean()
    raise ValueError(f"unknown distance {kind!r}; use 'l2' or 'mse'")
