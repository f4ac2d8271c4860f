"""The miniature audio decoder's guidance scale, side by side: held-out A→A requests and every sound
asked for in words, judged by the checkers at each scale, on one model with the same seeds.

The decoder's text encoder gives the conditioning it was trained on; a reply's sound gets the output
projection's instead, which lies near it but not on it. The guidance that follows the first best need
not follow the second best, so both are measured. Default model: the shipped one.

    python bench/audio_guidance.py [--model FOLDER] [--scales 2,4] [--seeds 3]

Measured 2026-12-05 (A→A right of 54, guidance 2 vs 4): the shipped model 48 vs 47; a build of
the code before the second A→A edit of every sound file 48 vs 41 (its other misses wrong replies);
today's full build 54 vs 53; a stage-3 model of the new data on an older stage-2 model 54 vs 47.

Headline: held-out A→A requests right at the first scale over those right at the last.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a model folder (default: the shipped miniature model)")
    parser.add_argument("--scales", default="2,4", help="guidance scales, comma-separated (default 2,4)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from anyany.pipeline import AnyToAnyPipeline
    from miniature import edits, spec
    from miniature import evaluate_edits as ee
    from miniature.data import HELDOUT_AUDIOS, REQUEST
    from miniature.progress import quiet_libraries
    from miniature.ship import shipped_model

    quiet_libraries()
    pipe = AnyToAnyPipeline.from_pretrained(args.model or str(shipped_model()), progress=False)
    seeds = range(args.seeds)
    every = ee.heldout_requests()
    sound_edits = [(k, r) for k, r in enumerate(every) if r.pair == "A→A"]
    with tempfile.TemporaryDirectory() as tmp:
        edit_calls = [(r.text[0].upper() + r.text[1:] + ".",
                       [ee._render_source("audio", r.source, Path(tmp) / f"{s}" / f"{k:03d}", np.random.default_rng([s, k]))],
                       None, 1000 * s + k) for s in seeds for k, r in sound_edits]
        edit_expect = [r.expect for _ in seeds for _, r in sound_edits]
        sounds = spec.all_audios()
        word_calls = [(REQUEST["audio"][k % 3].format(c=it.caption), (), None, 1000 * s + k)
                      for s in seeds for k, it in enumerate(sounds)]
        word_items = [it for _ in seeds for it in sounds]
        decoder = pipe.decoder("audio")
        rows = {}
        for scale in [float(x) for x in args.scales.split(",")]:
            decoder.config.guidance_scale = scale
            a2a = [ee.score(o, e)["all"] for o, e in zip(ee.ask_all(pipe, edit_calls), edit_expect)]
            words = [ee.score(o, [edits.Expect("audio", it)])["all"] for o, it in zip(ee.ask_all(pipe, word_calls), word_items)]
            held = [w for w, it in zip(words, word_items) if it in HELDOUT_AUDIOS]
            rows[scale] = sum(a2a), len(a2a)
            print(f"guidance {scale:g}: held-out A→A right {sum(a2a)}/{len(a2a)}, every sound in words "
                  f"{sum(words)}/{len(words)} (held-out {sum(held)}/{len(held)})", flush=True)
    first, last = rows[next(iter(rows))], rows[list(rows)[-1]]
    print(f"audio_guidance_a2a_right_ratio: {first[0] / max(last[0], 1):.2f}")


if __name__ == "__main__":
    main()
