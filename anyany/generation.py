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

from .tokens import STOP_STRING, stop_markers


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
    finish_reason: str = "stop"  # "stop" | "length" (token budget spent) | "cancelled" (batched decoding only)


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
    stops, stop_string = stop_markers(model)

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
        if token in stops:
            break
        generated.append(token)
        bar.update(1)
        if current is None and stop_string and tokenizer.decode(generated[-4:]).rstrip().endswith(stop_string):
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
    return _finish(tokenizer, generated, signal_of, groups, stop_string=stop_string)


def _finish(tokenizer, generated: list[int], signal_of, groups: list[SignalGroup], finish_reason: str = "stop",
            stop_string: str | None = STOP_STRING) -> LLMOutput:
    raw = tokenizer.decode(generated, skip_special_tokens=False)
    raw = raw.split(stop_string)[0].rstrip() if stop_string and stop_string in raw else raw.rstrip()
    text = visible_text(tokenizer, generated, signal_of, stop_string).strip()
    return LLMOutput(token_ids=generated, raw_text=raw, text=text, groups=groups, finish_reason=finish_reason)


def visible_text(tokenizer, generated: list[int], signal_of, stop_string: str | None = STOP_STRING) -> str:
    """The reply as a person reads it (signal tokens and everything from the stop marker on dropped),
    not yet stripped: a streaming caller emits growing prefixes of it."""
    text = tokenizer.decode([t for t in generated if t not in signal_of], skip_special_tokens=True)
    return text.split(stop_string)[0] if stop_string else text


@dataclass
class _Row:
    """One sequence of a batched decode: the per-sequence state ``generate_with_signals`` keeps in locals."""

    budget: int
    temperature: float
    top_p: float
    generator: torch.Generator | None
    processors: list
    generated: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)
    current: dict | None = None
    groups: list[SignalGroup] = field(default_factory=list)
    finish_reason: str | None = None  # set once the row is finished


def _per_row(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} sequences; give one per sequence or a single value")
        return list(value)
    return [value] * n


@torch.no_grad()
def generate_batch_with_signals(
    model,
    inputs_embeds: list[torch.Tensor],
    *,
    max_new_tokens,
    media_masks: list[torch.Tensor | None] | None = None,
    temperature=0.0,
    top_p=1.0,
    generators: list[torch.Generator | None] | None = None,
    logits_processors: list | None = None,
    repair_signal_groups: bool = True,
    on_token=None,
    should_stop=None,
) -> list[LLMOutput]:
    """Decode several sequences together; row ``i`` gets what ``generate_with_signals`` gives for it alone.

    ``inputs_embeds[i]``: ``[1, L_i, H]``. The prompts are left-padded into one batch with an
    attention mask and per-row positions, so each row's tokens sit at the positions they have
    alone; one forward per step serves every row still decoding. Signal groups are captured and
    repaired per row, exactly as in the single-sequence loop. ``max_new_tokens``, ``temperature``,
    ``top_p``: one value or one per row; ``generators`` / ``logits_processors``: one per row.
    ``on_token(i, token_id)`` is called after each token row ``i`` keeps (for streaming);
    ``should_stop(i)`` is asked before each of row ``i``'s steps and ends it with finish reason
    ``"cancelled"`` when true. Greedy results equal the single-sequence ones token for token; hidden
    states agree to float rounding (batched matrix products round differently).
    """
    from transformers import DynamicCache

    n = len(inputs_embeds)
    if n == 0:
        return []
    base = model.llm.get_base_model()
    embed = model.llm.get_input_embeddings()
    tokenizer = model.tokenizer
    signal_of = model.token_ids.signal_modality()
    groups_ids = model.token_ids.signals
    eos = tokenizer.eos_token_id
    stops, stop_string = stop_markers(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = inputs_embeds[0].device

    budgets = _per_row(max_new_tokens, n, "max_new_tokens")
    temps = _per_row(temperature, n, "temperature")
    top_ps = _per_row(top_p, n, "top_p")
    gens = _per_row(generators, n, "generators") if generators is not None else [None] * n
    procs = _per_row(logits_processors, n, "logits_processors") if logits_processors is not None else [None] * n
    masks = _per_row(media_masks, n, "media_masks") if media_masks is not None else [None] * n
    rows = [_Row(int(b), float(t), float(p), g, list(pr or ())) for b, t, p, g, pr in zip(budgets, temps, top_ps, gens, procs)]

    lengths = [int(e.shape[1]) for e in inputs_embeds]
    longest = max(lengths)
    width = inputs_embeds[0].shape[-1]
    padded = inputs_embeds[0].new_zeros(n, longest, width)
    attention = torch.zeros(n, longest, dtype=torch.long, device=device)
    media_mask = torch.zeros(n, longest, dtype=torch.bool, device=device)
    for i, (e, m) in enumerate(zip(inputs_embeds, masks)):
        start = longest - lengths[i]
        padded[i, start:] = e[0]
        attention[i, start:] = 1
        if m is not None:
            media_mask[i, start:] = m[0].to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    next_position = torch.tensor(lengths, device=device)

    cache = DynamicCache(config=base.config)
    kv = kv_cache_kwargs(base.model, cache)
    with model.llm_context(media_mask, padded, attention):
        hidden = base.model(inputs_embeds=padded, attention_mask=attention, position_ids=positions,
                            use_cache=True, **kv).last_hidden_state[:, -1]

    def finish(i: int, reason: str) -> None:
        rows[i].finish_reason = reason

    while True:
        live = [i for i, r in enumerate(rows) if r.finish_reason is None]
        if not live:
            break
        scores = None
        step = [pad] * n
        fed = [False] * n
        for i in live:
            row = rows[i]
            if should_stop is not None and should_stop(i):
                finish(i, "cancelled")
                continue
            if row.forced:
                token = row.forced.pop(0)
            else:
                if len(row.generated) >= row.budget:
                    finish(i, "length")
                    continue
                if scores is None:
                    scores = base.lm_head(hidden).float()
                row_scores = scores[i : i + 1]
                for proc in row.processors:
                    row_scores = proc(torch.tensor([row.generated], dtype=torch.long, device=row_scores.device), row_scores)
                token = _pick(row_scores[0], row.temperature, row.top_p, row.generator)
                if token in signal_of and row.current is None:
                    modality, index = signal_of[token]
                    group = list(groups_ids[modality])
                    if index != 0 and not repair_signal_groups:
                        raise ValueError(f"LLM emitted {tokenizer.convert_ids_to_tokens(token)} outside a group")
                    token, row.forced = group[0], group[1:]
                    row.current = {"modality": modality, "position": len(row.generated), "states": [], "repaired": index != 0}
            if token in stops:
                finish(i, "stop")
                continue
            row.generated.append(token)
            if on_token is not None:
                on_token(i, token)
            if row.current is None and stop_string and tokenizer.decode(row.generated[-4:]).rstrip().endswith(stop_string):
                finish(i, "stop")
                continue
            step[i], fed[i] = token, True
        if not any(fed):
            break
        fed_t = torch.tensor(fed, device=device)
        attention = torch.cat([attention, fed_t.long()[:, None]], dim=1)  # rows that sat this step out see nothing new
        token_embed = embed(torch.tensor(step, device=device)[:, None])
        with model.llm_context(media_mask, padded, decoding=True):
            hidden = base.model(inputs_embeds=token_embed, attention_mask=attention, position_ids=next_position[:, None],
                                use_cache=True, **kv).last_hidden_state[:, -1]
        next_position = next_position + fed_t.long()
        for i in range(n):
            row = rows[i]
            if fed[i] and row.current is not None:
                row.current["states"].append(hidden[i] + token_embed[i, 0])
                if not row.forced:
                    c = row.current
                    row.groups.append(SignalGroup(c["modality"], torch.stack(c["states"]), c["position"], c["repaired"]))
                    row.current = None
    return [_finish(tokenizer, r.generated, signal_of, r.groups, r.finish_reason or "stop", stop_string) for r in rows]


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
