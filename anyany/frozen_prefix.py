"""The frozen prefix of a decoder-side alignment sequence (stage 2): the caption before the signal group.

In stage 2 only the new token rows and the output projections train. A caption's tokens are
old tokens, so the LLM's pass over them (every layer's keys and values, and the last-layer
states) is a frozen function of the caption, just like the decoder text encoder's target.
The step therefore runs that pass without autograd, or reads it from a cache
(:func:`training.features.build_prefix_cache`). Only the signal group runs with gradients,
and it attends to the prefix through the KV cache. The loss equals the one-pass loss up to
float rounding; ``tests/test_training.py`` checks this (loss, gradients, and what the LLM sees).

A row's prefix is everything before its first new token (signal or placeholder). The split
applies only when no media are in the batch and nothing in the LLM trains but the new token
rows. Stage 1 (the bridge feeds the LLM) and stage 3 (LoRA) run the LLM in one pass as before.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .generation import kv_cache_kwargs


@dataclass
class PrefixStates:
    """The LLM's pass over each row's prefix, right-padded to the longest prefix ``P``."""

    keys: list[torch.Tensor]  # per layer [B, kv_heads, P, head_dim]
    values: list[torch.Tensor]  # per layer [B, kv_heads, P, head_dim]
    hidden: torch.Tensor  # [B, P, H] last-layer states (after the final norm)
    lengths: torch.Tensor  # [B] prefix length of each row

    def row(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``i`` as the cache stores it: (kv ``[layers, 2, kv_heads, n, head_dim]``, hidden ``[n, H]``)."""
        n = int(self.lengths[i])
        kv = torch.stack([torch.stack([k[i, :, :n], v[i, :, :n]]) for k, v in zip(self.keys, self.values)])
        return kv, self.hidden[i, :n]

    @classmethod
    def stack(cls, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> "PrefixStates":
        """Cached rows ``(kv [layers, 2, kv_heads, n_i, head_dim], hidden [n_i, H])`` -> one padded batch."""
        lengths = torch.tensor([h.shape[0] for _, h in rows])
        longest = int(lengths.max())
        kv = torch.stack([torch.nn.functional.pad(k, (0, 0, 0, longest - k.shape[3])) for k, _ in rows])
        hidden = torch.stack([torch.nn.functional.pad(h, (0, 0, 0, longest - h.shape[0])) for _, h in rows])
        return cls([kv[:, layer, 0] for layer in range(kv.shape[1])], [kv[:, layer, 1] for layer in range(kv.shape[1])],
                   hidden, lengths)

    def to(self, device=None, dtype=None, non_blocking: bool = False) -> "PrefixStates":
        def move(x):
            return x.to(device=device, dtype=dtype, non_blocking=non_blocking)

        return PrefixStates([move(k) for k in self.keys], [move(v) for v in self.values], move(self.hidden),
                            self.lengths.to(device))


def llm_trains_only_new_rows(model) -> bool:
    """True when the only trainable LLM weights are the new token rows (stages 1 and 2)."""
    if model.llm_adapters is not None and any(p.requires_grad for p in model.llm_adapters.parameters()):
        return False
    return not any(p.requires_grad for n, p in model.llm.named_parameters() if "trainable_tokens_delta" not in n)


def frozen_prefix_lengths(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, media_slots) -> torch.Tensor | None:
    """Per row, the number of leading tokens no trainable weight touches, or None when the batch
    cannot be split (media in it, trainable LLM weights, a row without a new token or starting with one)."""
    if media_slots or not llm_trains_only_new_rows(model):
        return None
    new_ids = torch.tensor(model.token_ids.all_new, device=input_ids.device)
    is_new = torch.isin(input_ids, new_ids) & attention_mask.bool()
    if not bool(is_new.any(1).all()):
        return None
    first = is_new.int().argmax(1)
    return None if bool((first < 1).any()) else first


def prefix_ids(model, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The prefix tokens, right-padded with the pad token (so no new token hides in the padding)."""
    longest = int(lengths.max())
    keep = torch.arange(longest, device=input_ids.device)[None] < lengths[:, None]
    return torch.where(keep, input_ids[:, :longest], model.tokenizer.pad_token_id)


@torch.no_grad()
def compute_prefix(model, input_ids: torch.Tensor, lengths: torch.Tensor) -> PrefixStates:
    """Run the frozen LLM over each row's prefix (no autograd) and keep its KV cache and states."""
    ids = prefix_ids(model, input_ids, lengths)
    mask = (torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]).long()
    embeds = model.embed_inputs(ids, [], {})
    cache = DynamicCache()
    with model.llm_context(torch.zeros_like(mask, dtype=torch.bool), embeds, mask):
        llm = model.llm.get_base_model().model
        out = llm(inputs_embeds=embeds, attention_mask=mask, use_cache=True, **kv_cache_kwargs(llm, cache))
    return PrefixStates([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers],
                        out.last_hidden_state, lengths)


def forward_after_prefix(model, embeds: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixStates) -> torch.Tensor:
    """Last-layer states ``[B, T, H]`` of the whole right-padded batch: prefix positions from
    ``prefix`` (constants), the rest from one pass of the LLM over the suffixes with gradients."""
    batch, length, width = embeds.shape
    device = embeds.device
    lengths = prefix.lengths.to(device)
    suffix_len = int((attention_mask.sum(1) - lengths).max())
    positions = lengths[:, None] + torch.arange(suffix_len, device=device)  # original positions of the suffix
    gather_at = positions.clamp(max=length - 1)
    valid = (positions < length) & attention_mask.to(device).gather(1, gather_at).bool()
    suffix = embeds.gather(1, gather_at[..., None].expand(-1, -1, width))
    longest = prefix.hidden.shape[1]
    prefix_mask = torch.arange(longest, device=device)[None] < lengths[:, None]
    mask = torch.cat([prefix_mask, valid], 1).long()
    prefix = prefix.to(device, embeds.dtype)
    cache = DynamicCache(ddp_cache_data=list(zip(prefix.keys, prefix.values)))
    with model.llm_context(torch.zeros_like(valid), suffix, valid.long()):
        llm = model.llm.get_base_model().model
        out = llm(inputs_embeds=suffix, attention_mask=mask, position_ids=positions, use_cache=True,
                  **kv_cache_kwargs(llm, cache))
    # Reassemble in the original layout: position t of row r is prefix[r, t] or suffix[r, t - lengths[r]].
    t = torch.arange(length, device=device)[None].expand(batch, -1)
    from_prefix = (t < lengths[:, None])[..., None]
    at_prefix = t.clamp(max=longest - 1)[..., None].expand(-1, -1, width)
    at_suffix = (t - lengths[:, None]).clamp(0, suffix_len - 1)[..., None].expand(-1, -1, width)
    return torch.where(from_prefix, prefix.hidden.gather(1, at_prefix), out.last_hidden_state.gather(1, at_suffix))


def signal_prefix_ids(model, caption: str, modality: str) -> list[int]:
    """The frozen prefix of a stage-2 caption's sequence (what the prefix cache is keyed and filled by)."""
    ids = model.prompts.encode_segments(model.prompts.signal_segments(caption, modality, 0)).input_ids
    new = set(model.token_ids.all_new)
    return ids[: next(i for i, t in enumerate(ids) if t in new)]


def llm_fingerprint(model) -> str:
    """A content hash of everything that shapes a prefix pass: the frozen LLM weights (LoRA and
    adapters included, the new token rows excluded) and the tokenizer's vocabulary size."""
    digest = hashlib.sha256(f"vocab={len(model.tokenizer)}".encode())
    modules = [("llm", model.llm)] + ([("adapters", model.llm_adapters)] if model.llm_adapters is not None else [])
    for prefix, module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            if "trainable_tokens_delta" in name:
                continue
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{prefix}.{name}:{tuple(data.shape)}:{data.dtype}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:40]


def prefix_key(fingerprint: str, ids) -> str:
    return "prefix-" + hashlib.sha256(f"{fingerprint}\n{list(map(int, ids))}".encode()).hexdigest()[:40]
