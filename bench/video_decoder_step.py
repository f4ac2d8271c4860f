"""Where the build's longest job goes: the miniature video decoder's training step, and what speeds it up.

The video decoder (``miniature.visual_decoders.train_video_decoder``) is the longest frozen part of
``anyany world build`` and sets the wall of its pretraining phase. This times its real training
loops (``_train_vae``, ``_diffusion_train``) on one thread, as the build runs them. Each step time
is (time of n2 steps - time of n1 steps) / (n2 - n1), so setup cancels out, and the variants
take turns round after round, so that a machine that speeds up or slows down moves them all.

Variants of the UNet3D step, against the recipe as shipped (SDPA attention, fp32, batch 12, the
fused AdamW and foreach EMA of ``miniature.optim``):
* the same numbers, other kernels: the per-tensor AdamW the build used before 2026-12-05, the classic
  attention processor (``AttnProcessor``), and, with ``--compile``, ``torch.compile`` (about 4
  minutes to compile first);
* other numbers: bf16 autocast (this CPU has avx512_bf16), heads of 16 channels instead of 4
  (``attention_head_dim`` 16: 2-4 heads where the recipe has 8-16), batch 6 instead of 12.

Then the video job at the build's step counts, projected from the measured steps.
Headline: the fused AdamW's speed-up over the per-tensor one the build used before.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

import numpy as np
import torch


def unet_runner(variant: str, latents: torch.Tensor, text_encoder, ids: torch.Tensor):
    """``run(steps)``: a fresh seeded UNet3D trained ``steps`` steps by the build's own loop."""
    from diffusers.models.attention_processor import AttnProcessor

    from miniature import visual_decoders as vd

    r = dict(vd.VIDEO_RECIPE)
    if variant == "heads of 16":
        r["attention_heads"] = 16
    batch = 6 if variant == "batch 6" else r["batch"]

    def run(steps: int) -> None:
        torch.manual_seed(0)
        unet = vd.build_video_unet(r, latents.shape[-1])
        if variant == "classic attention":
            unet.set_attn_processor(AttnProcessor())
        if variant == "torch.compile":
            unet = torch.compile(unet)
        with contextlib.ExitStack() as stack:
            if variant == "bf16 autocast":
                stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            if variant == "per-tensor AdamW (before)":
                stack.enter_context(mock.patch.object(vd, "adamw", lambda params, **kw: torch.optim.AdamW(params, **kw)))
            vd._diffusion_train(unet, vd._scheduler(), latents, text_encoder, ids, {**r, "steps": steps},
                                np.random.default_rng(0), False, None, "bench", batch=batch)

    return run


def vae_runner(items):
    from miniature import visual_decoders as vd

    def run(steps: int) -> None:
        torch.manual_seed(0)
        vd._train_vae(vd._build_vae(vd.VIDEO_RECIPE), lambda g: vd.video_vae_frames(items, g), {**vd.VIDEO_RECIPE, "vae_steps": steps},
                      np.random.default_rng(0), False, None, "bench")

    return run


def timed(run, steps: int) -> float:
    t = time.perf_counter()
    run(steps)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n1", type=int, default=2)
    parser.add_argument("--n2", type=int, default=14)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (compiles once per round)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the build's pretraining jobs

    from miniature import visual_decoders as vd
    from miniature.build import BuildPlan
    from miniature.progress import quiet_libraries
    from miniature.spec import VIDEO_FRAMES, VIDEO_SIZE

    quiet_libraries()
    _rng, items, text_encoder, _tokenizer, ids = vd._seeded_setup(0, "video")
    r = vd.VIDEO_RECIPE
    side = VIDEO_SIZE // 2 ** (len(r["vae_channels"]) - 1)  # the VAE halves the frame at each level but the last
    latents = torch.randn(r["pool"], len(items), r["latent_channels"], VIDEO_FRAMES, side, side,
                          generator=torch.Generator().manual_seed(0))
    variants = ["as shipped", "per-tensor AdamW (before)", "classic attention", *(["torch.compile"] if args.compile else []),
                "bf16 autocast", "heads of 16", "batch 6"]
    runners = {v: unet_runner(v, latents, text_encoder, ids) for v in variants}
    runners["VAE step"] = vae_runner(items)
    for run in runners.values():  # first calls build kernels and caches: not part of any step
        run(1)
    per_step = {name: [] for name in runners}
    for k in range(args.rounds):
        for name, run in runners.items():
            t1, t2 = timed(run, args.n1), timed(run, args.n2)
            per_step[name].append((t2 - t1) / (args.n2 - args.n1))
        print(f"round {k + 1}/{args.rounds}: " + ", ".join(f"{n} {s[-1]:.3f}" for n, s in per_step.items()), flush=True)
    med = {name: statistics.median(s) for name, s in per_step.items()}
    base = med["as shipped"]
    same_numbers = {"as shipped", "per-tensor AdamW (before)", "classic attention", "torch.compile"}
    print(f"\n{'UNet3D step (batch of 12 videos x 12 frames)':<46}{'s/step':>8}{'speed-up':>10}  numbers")
    for name in variants:
        print(f"{name:<46}{med[name]:>8.3f}{base / med[name]:>9.2f}x  {'same' if name in same_numbers else 'other'}")
    plan = BuildPlan()
    vae_steps = plan.video_vae_steps or r["vae_steps"]
    vae_min, unet_min = vae_steps * med["VAE step"] / 60, plan.video_steps * base / 60
    print(f"\nVAE step (24 frames): {med['VAE step']:.3f} s")
    print(f"video job at the build's steps, projected: VAE {vae_steps} x {med['VAE step']:.3f} s = {vae_min:.1f} min, "
          f"UNet {plan.video_steps} x {base:.3f} s = {unet_min:.1f} min; {vae_min + unet_min:.1f} min of one core")
    best = max(base / med[n] for n in variants if n in same_numbers)
    print(f"best speed-up with the same numbers: {best:.2f}x")
    print(f"video_unet_step_fused_adamw_speedup: {med['per-tensor AdamW (before)'] / base:.2f}")


if __name__ == "__main__":
    main()
