"""The miniature video decoder with its text encoder fitted to be additive in the attribute words
(``VIDEO_RECIPE["text_fit_steps"]``) against left random, side by side: both trained from the same
seed (one process each, the two cores), then every held-out video asked from its caption with 8
noise seeds and every train video with 2, judged by the checkers on colour, shape and direction.

    python bench/video_text_fit.py [--seed 0] [--steps 2400] [--out DIR]

About 13 min on the 2-core machine (the build's 2400 UNet steps). Measured 2026-12-05, seeds 0
and 1: fitted 64/64 held-out and 80/80 train for both; seed 0 left random drew "a red square moving
left" moving up 8 times of 8 (56/64 held-out, 80/80 train).

Headline: held-out videos right with the fitted text encoder, over those right without it.
"""
from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def train_and_judge(folder: str, seed: int, steps: int, fit_steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from miniature import checkers, spec
    from miniature.data import HELDOUT_VIDEOS
    from miniature.progress import quiet_libraries
    from miniature.visual_decoders import load_decoder, train_video_decoder

    quiet_libraries()
    train_video_decoder(folder, seed=seed, steps=steps, progress=False, text_fit_steps=fit_steps)
    decoder = load_decoder(folder, "text_to_video_sd")
    held = sorted(HELDOUT_VIDEOS, key=lambda v: v.caption)
    result = {}
    for name, items, seeds in (("held-out", held, 8), ("train", [v for v in spec.all_videos() if v not in HELDOUT_VIDEOS], 2)):
        asks = [(it, s) for it in items for s in range(seeds)]
        cond = decoder.encode_text([it.caption for it, _ in asks])
        videos = []
        for i in range(0, len(asks), 16):
            gens = [torch.Generator().manual_seed(1000 + s) for _, s in asks[i : i + 16]]
            videos += decoder.generate(cond[i : i + 16], generator=gens, progress=False)
        wrong = Counter()
        for (it, _), v in zip(asks, videos):
            got = (checkers.video_colour(v), checkers.video_shape(v), checkers.video_direction(v))
            if got != (it.colour, it.shape, it.direction):
                wrong[f"{it.caption} -> {' '.join(got)}"] += 1
        result[name] = (len(asks) - sum(wrong.values()), len(asks), dict(wrong))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2400, help="UNet steps (the build's 2400)")
    parser.add_argument("--fit-steps", type=int, default=300, help="text-encoder fitting steps (the recipe's 300)")
    parser.add_argument("--out", default=None, help="where the two decoders are written (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        variants = {"fitted": args.fit_steps, "random": 0}
        with ProcessPoolExecutor(2) as pool:
            jobs = {name: pool.submit(train_and_judge, str(out / name), args.seed, args.steps, fit)
                    for name, fit in variants.items()}
            results = {name: job.result() for name, job in jobs.items()}
    for name, r in results.items():
        for split, (right, n, wrong) in r.items():
            print(f"{name:>6} text encoder, {split:<8} videos right {right}/{n}" + (f"; wrong: {wrong}" if wrong else ""))
    ratio = results["fitted"]["held-out"][0] / max(results["random"]["held-out"][0], 1)
    print(f"video_text_fit_heldout_ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
