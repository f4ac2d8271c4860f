"""Counted FLOPs of one stage-2 row at the real sizes: how much any cache can speed stage 2 up.

``bench/training_cache.py`` times the tiny preset on a CPU. This script asks the same question at
the real sizes (Vicuna-7B, SD-1.5's CLIP-L text encoder, Zeroscope's OpenCLIP-H text encoder,
AudioLDM's CLAP text encoder, NExT-GPT's 4+4-layer output projections), without weights: every
module is built on the ``meta`` device and ``torch.utils.flop_counter.FlopCounterMode`` counts the
matmuls and attention of the ops the step runs. At these sizes the step's time follows its FLOPs,
so the FLOP ratio is the speed-up a cache can give.

Per caption row (ratios do not depend on the batch size), stage 2 trains the output projection and
the new token rows; the LLM is frozen:

  frozen (cacheable)   the decoder's text encoder on the caption (the target), and the LLM's pass
                       over the caption before the signal group (``anyany.frozen_prefix``)
  trainable            the LLM's pass over the signal tokens and its backward to their input rows
                       (the rows train, so this depends on trainable weights), the LM head on the
                       signal positions, the output projection forward + backward

  cached      = trainable
  recomputed  = frozen + trainable (the split step without caches)
  one pass    = the reference: the LLM forward and backward over caption + signals, target cached

Also printed: the ceiling if stage 2 froze the new token rows too (then the signal states would be
frozen features and only the output projection would train).

    python bench/stage2_flops.py [--caption-tokens 16] [--clap-tokens 512]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu import BASE_VOCAB, CLIP_L14_TEXT, OUTPUT_PROJECTIONS, PROJECTION, VICUNA_7B  # noqa: E402

# Zeroscope v2's text encoder is OpenCLIP ViT-H/14's text tower (its penultimate layer: 23 layers).
OPENCLIP_H14_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu")
# AudioLDM's CLAP text encoder: RoBERTa-base and a 768 -> 512 projection.
CLAP_TEXT = dict(vocab_size=50265, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=514, type_vocab_size=1, projection_dim=512)


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def ids(n: int) -> torch.Tensor:
    return torch.zeros(1, n, dtype=torch.long, device="meta")


def text_encoder_flops(modality: str, clap_tokens: int) -> float:
    from transformers import ClapTextConfig, ClapTextModelWithProjection, CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        if modality == "audio":
            encoder, length = ClapTextModelWithProjection(ClapTextConfig(**CLAP_TEXT)), clap_tokens
        else:
            sizes = CLIP_L14_TEXT if modality == "image" else OPENCLIP_H14_TEXT
            encoder, length = CLIPTextModel(CLIPTextConfig(**sizes)), 77  # CLIP pads every caption to 77
    with torch.no_grad():
        if modality == "audio":
            # transformers' RoBERTa reads the ids' values (padding checks), which a meta tensor does not
            # have: run it on the CPU with uninitialised weights (values do not change the count)
            encoder = encoder.to_empty(device="cpu")
            zeros = torch.zeros(1, length, dtype=torch.long)  # explicit positions: the empty buffers hold garbage
            return flops(lambda: encoder(input_ids=zeros + 5, attention_mask=zeros + 1, token_type_ids=zeros,
                                         position_ids=torch.arange(2, length + 2)[None]))
        return flops(lambda: encoder(input_ids=ids(length)))


def llm_flops(llm, lm_head, prefix: int, signals: int) -> dict[str, float]:
    from transformers import DynamicCache

    from anyany.generation import kv_cache_kwargs

    hidden = llm.config.hidden_size
    cache = DynamicCache()
    with torch.no_grad():
        prefix_pass = flops(lambda: llm(input_ids=ids(prefix), use_cache=True, **kv_cache_kwargs(llm, cache)))

    def signal_pass(train: bool):
        """The signal group after the cached caption; ``train``: with the backward to its input rows."""
        embeds = torch.zeros(1, signals, hidden, device="meta", requires_grad=train)
        positions = torch.arange(prefix, prefix + signals, device="meta")[None]
        with torch.set_grad_enabled(train):
            out = llm(inputs_embeds=embeds, position_ids=positions, use_cache=True, **kv_cache_kwargs(llm, cache))
            if train:
                lm_head(out.last_hidden_state).sum().backward()
        cache.crop(-signals)  # drop the group: the next pass attends to the caption alone again

    def one_pass():
        embeds = torch.zeros(1, prefix + signals, hidden, device="meta", requires_grad=True)
        out = llm(inputs_embeds=embeds)
        lm_head(out.last_hidden_state[:, prefix - 1:]).sum().backward()  # LM loss on the signal group

    return {"prefix": prefix_pass, "signals": flops(lambda: signal_pass(True)),
            "signals_forward": flops(lambda: signal_pass(False)), "one_pass": flops(one_pass)}


def projection_flops(modality: str, signals: int) -> float:
    from projections import OutputProjection

    tokens, dim = OUTPUT_PROJECTIONS[modality]
    with torch.device("meta"):
        projection = OutputProjection(llm_dim=VICUNA_7B["hidden_size"], num_output_tokens=tokens, output_dim=dim,
                                      **PROJECTION)
    states = torch.zeros(1, signals, VICUNA_7B["hidden_size"], device="meta")
    return flops(lambda: projection(states).sum().backward())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caption-tokens", type=int, default=16,
                        help="LLaMA tokens before the signal group: BOS + the caption (CC3M captions average ~10 words)")
    parser.add_argument("--clap-tokens", type=int, default=512,
                        help="tokens AudioLDM's CLAP text encoder runs over (it pads to the tokenizer's model_max_length)")
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaModel

    from anyany.config import get_preset
    from anyany.tokens import new_token_strings

    signal_counts = get_preset("nextgpt-7b").signals
    vocab = BASE_VOCAB + len(new_token_strings(signal_counts))
    with torch.device("meta"):
        llm = LlamaModel(LlamaConfig(vocab_size=vocab, **VICUNA_7B)).requires_grad_(False)
        lm_head = torch.nn.Linear(VICUNA_7B["hidden_size"], vocab, bias=False).requires_grad_(False)

    print(f"stage-2 GFLOPs per caption row at the real sizes ({args.caption_tokens} caption tokens)")
    print(f"{'modality':<9}{'signals':>8}{'text enc':>10}{'prefix':>9}{'signals':>9}{'proj':>7}"
          f"{'cached':>9}{'recomp':>9}{'1-pass':>9}{'recomp/cached':>15}{'1-pass/cached':>15}")
    ratios, frozen_rows = {}, {}
    for modality in OUTPUT_PROJECTIONS:
        n = signal_counts.count(modality)
        text = text_encoder_flops(modality, args.clap_tokens)
        llm_parts = llm_flops(llm, lm_head, args.caption_tokens, n)
        projection = projection_flops(modality, n)
        cached = llm_parts["signals"] + projection
        recomputed = text + llm_parts["prefix"] + cached
        one_pass = llm_parts["one_pass"] + projection
        ratios[modality] = recomputed / cached
        frozen_rows[modality] = (text + llm_parts["prefix"] + llm_parts["signals_forward"] + projection) / projection
        g = 1e9
        print(f"{modality:<9}{n:>8}{text / g:>10.1f}{llm_parts['prefix'] / g:>9.1f}{llm_parts['signals'] / g:>9.1f}"
              f"{projection / g:>7.1f}{cached / g:>9.1f}{recomputed / g:>9.1f}{one_pass / g:>9.1f}"
              f"{recomputed / cached:>14.1f}x{one_pass / cached:>14.1f}x")
    print("the cached step keeps the LLM pass over the signal tokens: the new rows train, so it cannot be cached")
    print("if stage 2 froze the new rows (not the reference's recipe), the signal states would be cacheable too: "
          + ", ".join(f"{m} {r:.0f}x" for m, r in frozen_rows.items()))
    print(f"stage2_real_cache_flop_ratio_max: {max(ratios.values()):.1f}")


if __name__ == "__main__":
    main()
