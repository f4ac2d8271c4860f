"""Stage 3 with random batches against length-grouped ones, side by side on one built world.

A batch is padded to its longest row; the world's conversations run from about 20 to 110 tokens,
so random batches of 32 are mostly padding. ``training.data.LengthGroupedSampler`` (stage 3's
default, ``--no-group-by-length`` turns it off) batches rows of about one length. This trains the
same stage-3 steps from the same stage-2 model both ways, taking turns over rounds, and prints the
padding share, the seconds per step and the speed-up. It needs a built world (``anyany world build``).

    python bench/stage3_batches.py --home ~/.cache/anyany/miniature [--steps 150] [--rounds 2]

Headline: the speed-up of a stage-3 step from length-grouped batches.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", required=True, help="a built world (anyany world build --home)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="as the build's stages (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from decoders import DecoderSet
    from decoders.base import quiet_loading
    from miniature.build import BuildPlan
    from miniature.progress import quiet_libraries
    from training.data import Collator, LengthGroupedSampler, build_dataset, sequence_lengths
    from training.loop import train_stage
    from training.recipes import TrainConfig
    from training.records import read_conversations

    from anyany.model import AnyToAnyModel

    quiet_libraries()
    home = Path(args.home)
    init = home / "runs" / "stage2" / "final"
    if not init.is_dir():
        raise SystemExit(f"{init} is missing: build the world first (anyany world build --home {home})")
    plan = BuildPlan()
    with quiet_loading(True):
        model = AnyToAnyModel.from_pretrained(init)
    rows = read_conversations(home / "world" / "train" / "mosit.json")[0]

    def dataset(m):
        return build_dataset("stage3", rows, m, home / "cache" / "media", home / "cache" / "targets",
                             m.config.stage1_instruction, home / "cache" / "prefixes")

    collate = Collator(model.prompts, model.tokenizer.pad_token_id)
    lengths = np.array(sequence_lengths(dataset(model), collate))
    batch = plan.batch_size

    def padding(order: list[int]) -> float:
        cut = [np.array(order[k : k + batch]) for k in range(0, len(order), batch)]
        return 1 - lengths.sum() / sum(len(b) * lengths[b].max() for b in cut)

    sampler = LengthGroupedSampler(lengths, batch, seed=0)
    shares = {"random": padding(np.random.default_rng(0).permutation(len(lengths)).tolist()), "grouped": padding(list(sampler))}
    print(f"{len(lengths)} conversations of {lengths.min()}-{lengths.max()} tokens (mean {lengths.mean():.0f}); "
          f"padding in batches of {batch}: random {shares['random']:.0%}, grouped {shares['grouped']:.0%}")

    def run(grouped: bool) -> float:
        with quiet_loading(True):
            m = AnyToAnyModel.from_pretrained(init)
        cfg = TrainConfig("stage3", lr=plan.stage_lr["stage3"], max_steps=args.steps, batch_size=batch, weight_decay=0.0,
                          min_warmup_steps=20, seed=0, save_every=10**9, log_every=25, mixed_precision="no",
                          group_by_length=grouped)
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            train_stage(m, dataset(m), cfg, Path(out), decoders=DecoderSet(m.config.decoders, progress=False), progress=False)
            return (time.perf_counter() - t) / args.steps

    per_step = {"random": [], "grouped": []}
    for k in range(args.rounds):
        for name in per_step:
            per_step[name].append(run(name == "grouped"))
        print(f"round {k + 1}/{args.rounds}: " + ", ".join(f"{n} {s[-1]:.3f} s/step" for n, s in per_step.items()), flush=True)
    med = {n: statistics.median(s) for n, s in per_step.items()}
    print(f"\n{'stage-3 batches':<20}{'padding':>9}{'s/step':>9}")
    for name in per_step:
        print(f"{name:<20}{shares[name]:>9.0%}{med[name]:>9.3f}")
    print(f"stage 3 at the build's {plan.stage_steps['stage3']} steps: random {plan.stage_steps['stage3'] * med['random'] / 60:.1f} min, "
          f"grouped {plan.stage_steps['stage3'] * med['grouped'] / 60:.1f} min")
    print(f"stage3_grouped_batches_speedup: {med['random'] / med['grouped']:.2f}")


if __name__ == "__main__":
    main()
