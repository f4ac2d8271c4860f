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

A second table does the same for today's decoder kinds (``decoders.checkpoints``: SDXL, SD3.5,
FLUX.1, Wan 2.1, CogVideoX, AudioLDM2, Stable Audio) around the ``anyany-2026`` core (Qwen2.5-7B):
their targets come from up to three text encoders (T5-XXL over 512 tokens for FLUX.1), and their
output projections produce the whole conditioning spec (e.g. 512 x 4096 + a pooled 768).

    python bench/stage2_flops.py [--caption-tokens 16] [--clap-tokens 512] [--no-today]
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
from gpu import QWEN25_7B as QWEN25_CONFIG  # noqa: E402

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


# Qwen2.5-7B-Instruct, the anyany-2026 core (its published config, kept in bench/gpu.py)
QWEN25_VOCAB = QWEN25_CONFIG["vocab_size"]
QWEN25_7B = {k: v for k, v in QWEN25_CONFIG.items() if k not in ("model_type", "vocab_size", "tie_word_embeddings")}
TODAY = {  # hub id -> modality
    "stabilityai/stable-diffusion-xl-base-1.0": "image", "stabilityai/stable-diffusion-3.5-large": "image",
    "black-forest-labs/FLUX.1-dev": "image", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "video",
    "THUDM/CogVideoX-5b": "video", "cvssp/audioldm2": "audio", "stabilityai/stable-audio-open-1.0": "audio",
}


def _component_flops(class_name: str, cfg: dict, tokens: int) -> float:
    """One text component's forward over ``tokens`` tokens (uninitialised weights; values do not
    change the count)."""
    import transformers

    model_cls = getattr(transformers, class_name)
    with torch.device("meta"):
        config = model_cls.config_class(**cfg)
        model = model_cls(config)
    zeros = torch.zeros(1, tokens, dtype=torch.long)
    with torch.no_grad():
        if class_name.startswith("Clap"):  # RoBERTa reads the ids' values: on the CPU, as above
            text = model.to_empty(device="cpu")
            if class_name == "ClapModel":  # its text tower and projection (the audio tower does not run)
                text = text.text_model
            return flops(lambda: text(input_ids=zeros + 5, attention_mask=zeros + 1, token_type_ids=zeros,
                                      position_ids=torch.arange(2, tokens + 2)[None]))
        return flops(lambda: model(input_ids=ids(tokens)))


def todays_text_flops(hub_id: str, config, caption_tokens: int, clap_tokens: int) -> float:
    """Every text component the pipeline runs to embed one caption (its stage-2 target)."""
    from decoders.checkpoints import KNOWN_CHECKPOINTS

    ckpt = KNOWN_CHECKPOINTS[hub_id]
    total = 0.0
    for name, (cls, cfg) in ckpt.text.items():
        if cls.startswith("CLIP"):
            tokens = 77  # CLIP pads to its 77 positions
        elif cls.startswith("Clap"):
            tokens = clap_tokens
        elif cls == "GPT2Model":  # AudioLDM2: CLAP + T5 projected (+4 special tokens), then 8 generated states
            tokens = 1 + caption_tokens + 4 + ckpt.spec_config["generated_tokens"]
        elif ckpt.kind == "audioldm2":
            tokens = caption_tokens  # AudioLDM2 pads T5 to the batch's longest caption
        elif ckpt.kind == "cogvideox":
            tokens = ckpt.spec_config["max_text_seq_length"]
        else:
            tokens = config.max_sequence_length
        total += _component_flops(cls, cfg, tokens)
    return total


def todays_table(args, signal_counts) -> dict[str, float]:
    from transformers import Qwen2Config, Qwen2Model

    from anyany.config import output_projection_for
    from decoders import DecoderConfig
    from decoders.checkpoints import KNOWN_CHECKPOINTS, checkpoint_spec
    from projections import OutputProjection

    with torch.device("meta"):
        llm = Qwen2Model(Qwen2Config(vocab_size=QWEN25_VOCAB, **QWEN25_7B)).requires_grad_(False)
        lm_head = torch.nn.Linear(QWEN25_7B["hidden_size"], QWEN25_VOCAB, bias=False).requires_grad_(False)
    hidden = QWEN25_7B["hidden_size"]
    print("\ntoday's decoders around Qwen2.5-7B (anyany-2026's core), GFLOPs per caption row")
    print(f"{'checkpoint':<42}{'spec':<44}{'text enc':>10}{'prefix':>9}{'signals':>9}{'proj':>7}"
          f"{'cached':>9}{'recomp':>9}{'recomp/cached':>15}{'frozen rows':>13}")
    ratios = {}
    for hub_id, modality in TODAY.items():
        config = DecoderConfig(kind=KNOWN_CHECKPOINTS[hub_id].kind, name_or_path=hub_id)
        spec = checkpoint_spec(config)
        n = signal_counts.count(modality)
        settings = vars(output_projection_for(spec, **PROJECTION))
        with torch.device("meta"):
            projection = OutputProjection(llm_dim=hidden, **settings)
        states = torch.zeros(1, n, hidden, device="meta")

        def step():
            out = projection(states)
            sum(v.sum() for v in (out.values() if isinstance(out, dict) else [out])).backward()

        proj = flops(step)
        text = todays_text_flops(hub_id, config, args.caption_tokens, args.clap_tokens)
        parts = llm_flops(llm, lm_head, args.caption_tokens, n)
        cached = parts["signals"] + proj
        recomputed = text + parts["prefix"] + cached
        frozen = (text + parts["prefix"] + parts["signals_forward"] + proj) / proj
        ratios[hub_id] = recomputed / cached
        g = 1e9
        print(f"{hub_id:<42}{spec.describe()[:43]:<44}{text / g:>10.1f}{parts['prefix'] / g:>9.1f}"
              f"{parts['signals'] / g:>9.1f}{proj / g:>7.1f}{cached / g:>9.1f}{recomputed / g:>9.1f}"
              f"{recomputed / cached:>14.1f}x{frozen:>12.0f}x")
    print("frozen rows: recomputed / projection alone, the speed-up if the signal rows stay frozen "
          "(--freeze-signal-rows): the signal states become cacheable features")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caption-tokens", type=int, default=16,
                        help="LLaMA tokens before the signal group: BOS + the caption (CC3M captions average ~10 words)")
    parser.add_argument("--clap-tokens", type=int, default=512,
                        help="tokens AudioLDM's CLAP text encoder runs over (it pads to the tokenizer's model_max_length)")
    parser.add_argument("--no-today", action="store_true", help="only the nextgpt-7b table")
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
    if not args.no_today:
        today = todays_table(args, signal_counts)
        best = max(today, key=today.get)
        print(f"today's decoders: the largest cache ratio is {best} ({today[best]:.1f}x): its T5 targets dominate")
    print(f"stage2_real_cache_flop_ratio_max: {max(ratios.values()):.1f}")


if __name__ == "__main__":
    main()
