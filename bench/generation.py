"""End-to-end any-to-any latency vs the sum of its parts measured alone (tiny preset, CPU).

Parts: LLM generation (KV cache, signal states collected on the way), output projections,
and each decoder call. A ratio near 1.0 means the pipeline adds no hidden work (no reloading
of decoders, no second LLM pass). Target <= 1.10.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from anyany.generation import ScriptedTokens, generate_with_signals
from anyany.pipeline import AnyToAnyPipeline




def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    pipe = AnyToAnyPipeline.from_pretrained(args.preset, progress=False)
    model, tok = pipe.model, pipe.model.tokenizer
    text = tok("Here you go: ", add_special_tokens=False).input_ids
    plan = text + [model.token_ids.signals["image"][0]] + text + [model.token_ids.signals["audio"][0]]

    def processors():
        return [ScriptedTokens(plan, tok.eos_token_id)]

    for m in ("image", "audio"):  # decoders are loaded once and kept, as in a served app
        pipe.decoder(m)
    pipe("warm up", logits_processor=processors())

    end_to_end, _ = timed(lambda: pipe("draw and play", logits_processor=processors(), seed=0), args.repeats)

    turns, feats = pipe.encode_media(pipe.check_inputs("draw and play", None, []))
    with torch.no_grad():
        embeds = pipe.prepare_inputs(turns, feats).inputs_embeds
        t_llm, llm_out = timed(lambda: generate_with_signals(model, embeds, max_new_tokens=model.config.generation.max_new_tokens,
                                                             logits_processor=processors()), args.repeats)
        t_proj, cond = timed(lambda: pipe.project_signals(llm_out), args.repeats)
        t_dec = {}
        for k, (modality, c) in enumerate(cond):
            t_dec[modality], _ = timed(lambda: pipe.decoder(modality).generate(c, seed=k, progress=False), args.repeats)
    parts = t_llm + t_proj + sum(t_dec.values())
    print(f"{'part':<22}{'median s':>10}")
    print(f"{'llm generate':<22}{t_llm:>10.4f}")
    print(f"{'output projections':<22}{t_proj:>10.4f}")
    for m, t in t_dec.items():
        print(f"{'decoder ' + m:<22}{t:>10.4f}")
    print(f"{'sum of parts':<22}{parts:>10.4f}")
    print(f"{'end to end':<22}{end_to_end:>10.4f}")
    print(f"end_to_end_over_parts: {end_to_end / parts:.3f}")


if __name__ == "__main__":
    main()
