"""A keyword reply policy for random tiny models, whose own choices are noise (tests, benchmarks, demos).

``Engine(pipe, logits_processor_factory=keyword_replies(pipe.model))`` makes the LLM write a short
text, then the signal group of each medium the last user message names ("draw" / "picture": image,
"video" / "film": video, "play" / "sound" / "tone": audio). The real model still runs every step;
only its token choice is steered, as ``anyany.generation.ScriptedTokens`` does.
"""
from __future__ import annotations

from anyany.generation import ScriptedTokens
from anyany.tokens import stop_markers

KEYWORDS = {"image": ("draw", "picture"), "video": ("video", "film"), "audio": ("play", "sound", "tone")}


def keyword_plan(model, text: str, reply: str = "Here you are: ") -> list[int]:
    tokenizer, signals = model.tokenizer, model.token_ids.signals
    plan = tokenizer(reply, add_special_tokens=False).input_ids
    lowered = text.lower()
    for modality, words in KEYWORDS.items():
        if modality in signals and any(w in lowered for w in words):
            plan.append(signals[modality][0])  # the decoder completes the group
    return plan


def stop_id(model) -> int:
    """A token that ends ``model``'s reply: EOS when its prompt format stops there, else one of its stop ids."""
    stops = stop_markers(model)[0]
    eos = model.tokenizer.eos_token_id
    return eos if eos in stops or not stops else min(stops)


def keyword_replies(model, reply: str = "Here you are: "):
    def factory(request):
        last = next((m for m in reversed(request.messages) if m.role == "user"), None)
        return [ScriptedTokens(keyword_plan(model, last.text if last else "", reply), stop_id(model))]

    return factory
