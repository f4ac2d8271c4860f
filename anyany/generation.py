"""Token-by-token decoding with a KV cache that keeps each signal token's hidden state.

Feeding a token through the cached model yields that token's last-layer state at its own
position, exactly what teacher-forced training uses, so signal states come straight from
the generation pass: no second forward over the whole sequence.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .tokens import STOP_STRING


def kv_cache_kwargs(llm_model, cache) -> dict:
    """``{name: cache}`` under the name this transformers version's forward takes: 5.2x renamed
    ``past_key_values`` to ``cache`` (the old name goes in 5.40)."""
    return {"cache" if "cache" in inspect.signature(llm_model.forward).parameters else "past_key_values": cache}


@dataclass
class SignalGroup:
    modality: str
    states: torch.Tensor  # [N, H]: last hidden state + input embedding of each signal token
    position: int  # index of the group's first token among the generated tokens
    repaired: bool = False


@dataclass
class LLMOutput:
    token_ids: list[int]
    raw_text: str  # with signal tokens, as the conversation history keeps it
    text: str  # what a person reads: signal tokens and the stop marker removed
    groups: list[SignalGroup] = field(default_factory=list)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_with_signals(
    model,
    inputs_embeds: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    logits_processor=None,
    repair_signal_groups: bool = True,
    progress: bool = False,
    media_mask: torch.Tensor | None = None,
) -> LLMOutput:
    """Decode one sequence (batch 1). ``logits_processor``: callables ``(generated_ids[1,t], scores[1,V]) -> scores``.

    ``media_mask[1, L]``: the media positions of ``inputs_embeds`` (``input_ids == placeholder``), for
    the model's LLM adapters; without it the prompt counts as all text.
    """
    from transformers import DynamicCache

    base = model.llm.get_base_model()
    embed = model.llm.get_input_embeddings()
    tokenizer = model.tokenizer
    signal_of = model.token_ids.signal_modality()
    groups_ids = model.token_ids.signals
    eos = tokenizer.eos_token_id

    if media_mask is None:
        media_mask = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
    cache = DynamicCache(config=base.config)
    with model.llm_context(media_mask, inputs_embeds):
        hidden = base.model(inputs_embeds=inputs_embeds, use_cache=True, **kv_cache_kwargs(base.model, cache)).last_hidden_state[:, -1]
    generated: list[int] = []
    forced: list[int] = []  # remaining ids of a signal group being completed
    current: dict | None = None
    groups: list[SignalGroup] = []
    bar = tqdm(total=max_new_tokens, desc="LLM", unit="tok", disable=not progress, leave=False)
    while len(generated) < max_new_tokens or forced:
        if forced:
            token = forced.pop(0)
        else:
            scores = base.lm_head(hidden).float()
            for proc in logits_processor or ():
                scores = proc(torch.tensor([generated], dtype=torch.long, device=scores.device), scores)
            token = _pick(scores[0], temperature, top_p, generator)
            if token in signal_of and current is None:
                modality, index = signal_of[token]
                group = list(groups_ids[modality])
                if index != 0 and not repair_signal_groups:
                    raise ValueError(f"LLM emitted {tokenizer.convert_ids_to_tokens(token)} outside a group")
                token, forced = group[0], group[1:]
                current = {"modality": modality, "position": len(generated), "states": [], "repaired": index != 0}
        if token == eos:
            break
        generated.append(token)
        bar.update(1)
        if current is None and tokenizer.decode(generated[-4:]).rstrip().endswith(STOP_STRING):
            break
        token_embed = embed(torch.tensor([[token]], device=inputs_embeds.device))
        with model.llm_context(media_mask, inputs_embeds, decoding=True):  # a text token; the prompt's media stay visible
            hidden = base.model(inputs_embeds=token_embed, use_cache=True, **kv_cache_kwargs(base.model, cache)).last_hidden_state[:, -1]
        if current is not None:
            current["states"].append(hidden[0] + token_embed[0, 0])
            if not forced:
                groups.append(SignalGroup(current["modality"], torch.stack(current["states"]), current["position"], current["repaired"]))
                current = None
    bar.close()
    raw = tokenizer.decode(generated, skip_special_tokens=False)
    raw = raw.split(STOP_STRING)[0].rstrip() if STOP_STRING in raw else raw.rstrip()
    visible = [t for t in generated if t not in signal_of]
    text = tokenizer.decode(visible, skip_special_tokens=True)
    text = text.split(STOP_STRING)[0].strip()
    return LLMOutput(token_ids=generated, raw_text=raw, text=text, groups=groups)


class ScriptedTokens:
    """A logits processor that makes the LLM emit ``plan`` (token ids), then ``eos``.

    Only consulted for steps the decoder does not force, so one id of a signal group stands for
    the whole group. For tests, benchmarks and scripted demos.
    """

    def __init__(self, plan, eos: int):
        self.plan, self.eos = list(plan), eos

    def __call__(self, generated: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        target = self.plan.pop(0) if self.plan else self.eos
        out = torch.full_like(scores, torch.finfo(scores.dtype).min)
        out[:, target] = 0.0
        return out
