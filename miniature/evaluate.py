"""Held-out evaluation of a model trained in the miniature world.

* stage 1: caption held-out media; a caption is right when every attribute word matches.
* stage 2: project the signal states of a held-out caption and retrieve the nearest candidate
  caption by the decoder's text embedding (top-1 among all captions of that modality).
* end to end: ask for held-out media in words, judge what the decoders produce with the checkers.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from . import spec

ATTRIBUTES = {
    "image": {"colour": list(spec.COLOURS), "shape": list(spec.SHAPES), "position": list(spec.POSITIONS)},
    "video": {"colour": list(spec.COLOURS), "shape": list(spec.SHAPES), "direction": list(spec.DIRECTIONS)},
    "audio": {"pitch": list(spec.PITCHES), "loudness": list(spec.LOUDNESS), "rhythm": list(spec.RHYTHMS)},
}
REQUEST = {"image": "draw {}", "video": "make a video of {}", "audio": "play {}"}  # the data's phrasing


def words_match(text: str, item, modality: str) -> dict[str, bool]:
    """Per attribute: the item's value is named and no other value of that attribute is."""
    words = set(text.lower().replace(".", " ").replace(",", " ").split())
    if modality == "image" and "center" in words:
        words.add("center")
    out = {}
    for attr, values in ATTRIBUTES[modality].items():
        named = {v for v in values if v in words}
        out[attr] = named == {getattr(item, attr)}
    return out


def _summarise(rows: list[dict[str, bool]]) -> dict[str, float]:
    if not rows:
        return {}
    keys = rows[0].keys()
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["all"] = float(np.mean([all(r.values()) for r in rows]))
    out["n"] = len(rows)
    return out


@torch.no_grad()
def stage1_caption_accuracy(pipe, media: list[tuple[str, object, str]], instruction: str, max_new_tokens=24, progress=True):
    """``media``: (modality, item, path). Greedy captions of each file, judged word by word."""
    per = {}
    for modality, item, path in tqdm(media, desc="eval stage 1", disable=not progress):
        msgs = pipe.check_inputs(instruction, None, [str(path)])
        turns, feats = pipe.encode_media(msgs)
        out = pipe.generate_text(pipe.prepare_inputs(turns, feats), generator=None, logits_processor=None,
                                 max_new_tokens=max_new_tokens, temperature=0.0)
        per.setdefault(modality, []).append(words_match(out.text, item, modality))
    return {m: _summarise(r) for m, r in per.items()}


@torch.no_grad()
def stage2_retrieval_accuracy(model, decoders, captions: dict[str, list[str]], candidates: dict[str, list[str]]):
    """Top-1 retrieval of each caption among ``candidates`` by its projected signal states."""
    result = {}
    for modality, caps in captions.items():
        cands = candidates[modality]
        bank = decoders(modality).encode_text(cands).float().flatten(1)
        seqs = [model.prompts.encode_segments(model.prompts.signal_segments(c, modality, i)) for i, c in enumerate(caps)]
        batch = model.collate(seqs)
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], signal_slots=batch["signal_slots"])
        pred = out.conditioning[modality].float().flatten(1)
        nearest = torch.cdist(pred, bank).argmin(1)
        hits = [cands[int(j)] == c for j, c in zip(nearest, caps)]
        result[modality] = {"top1": float(np.mean(hits)), "n": len(caps), "candidates": len(cands)}
    return result


def _judge(medium) -> dict:  # every attribute (position, video colour and shape, loudness and rhythm too)
    from .evaluate_edits import judge

    return judge(medium)


@torch.no_grad()
def end_to_end_accuracy(pipe, items: dict[str, list], seed: int = 0, progress=True):
    """Ask for each held-out item by caption; judge the generated medium of that modality."""
    from .evaluate_edits import ask_all

    per = {}
    for modality, its in items.items():
        outs = ask_all(pipe, [(REQUEST[modality].format(item.caption), (), None, seed + k) for k, item in enumerate(its)],
                       progress=progress, desc=f"eval e2e {modality}")
        for item, out in zip(its, outs):
            got = out.of(modality)
            if not got:
                row = {attr: False for attr in _judged_attributes(modality)}
                row["emitted"] = False
            else:
                judged = _judge(got[0])
                row = {attr: judged[attr] == getattr(item, attr) for attr in judged}
                row["emitted"] = True
            per.setdefault(modality, []).append(row)
    return {m: _summarise(r) for m, r in per.items()}


def _judged_attributes(modality: str) -> list[str]:
    return list(ATTRIBUTES[modality])
