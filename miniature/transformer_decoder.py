"""A second world image decoder of today's family: a tiny SD3-style ``StableDiffusion3Pipeline``.

Where the world's first image decoder (``miniature.visual_decoders``) is an SD-1.5-style latent UNet
on one CLIP sequence, this one is built like Stable Diffusion 3, from config with diffusers' own
classes: an ``SD3Transformer2DModel`` (joint text/image attention, the pooled text in the time
embedding), a rectified-flow ``FlowMatchEulerDiscreteScheduler``, and three text encoders of its
own (two CLIP encoders with projection, whose penultimate states and pooled vectors it takes, and
a T5 encoder whose sequence is appended). Its conditioning is therefore the SD3 spec:
``prompt_embeds`` [77 + max_sequence_length, t5_dim] + ``pooled_prompt_embeds`` [2 * clip_hidden].
It is the decoder ``miniature.swap`` swaps in with stage 2 only.

Recipe (``SD3_RECIPE``):

* VAE: the world image decoder's trained ``AutoencoderKL`` (32x32 -> 8x8x4), frozen, when a folder
  is given (a fresh one is trained otherwise, e.g. in tests). SD3 decodes with
  ``latents / scaling_factor + shift_factor``, so both are set from the world's latents (their mean
  and the inverse std around it) on the saved copy, and training uses the same normalisation.
* Transformer: patch size 1 (64 image tokens, so position is resolved per latent pixel), trained
  with the flow-matching objective (``x_t = (1 - s) x_0 + s noise``, target ``noise - x_0``, timestep
  ``1000 s``), EMA weights, 10 % caption dropout to ``""`` for classifier-free guidance.
* Text encoders: random tiny CLIPs and T5 put "circle" and "square" captions at cosine 0.995, so
  the three are first fitted (``_fit_text_encoders``, a few hundred steps) to be additive in the
  attribute words, on the train captions and the partial captions they contain (as
  ``miniature.audio_decoder`` fits its CLAP), then frozen: held-out captions land where their words
  say. The T5 tokenizer has a piece per world word, so a caption fits its ``max_sequence_length``
  (8) tokens.
* Training sees the train combinations only (``miniature.data.split_items("train")``), jittered
  renders cached as latents; one thread, seeded, budgets in steps.

Measured at 1600 steps (seed 0, one thread on a shared 2-core machine, the VAE of a full build, which
itself reconstructs ~82 % of jittered shapes recognisably): 6.4 min wall / 4.5 min CPU to train;
from true captions, 15 steps, guidance 3, seeds 100-102: held-out combinations 17/18 right
(colour + shape + position), all 36 combinations 81/108 (colour 98 %, position 100 %, shape 77 %:
circles and squares come out as rounded blobs). Without the text fit (encoders trained jointly,
2000 steps): all 90/108 but held-out 9/18 (held-out colours wrong too: the joint encoders do not
compose); fit, 1000 steps: held-out 11/18. On a later build's VAE (``/work/scratch/home_b3``) 1600 steps
gave held-out 14/18 (shape 78 %) and 3200 steps (the recipe now) 17/18 (shape 94 %), 9.7 min wall with
another job on the second core.

``python -m miniature.transformer_decoder OUT [--vae FOLDER] [--steps N]`` trains and prints the
checker accuracy on the held-out and on all combinations.
"""
from __future__ import annotations

import argparse
import json
import string
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import split_items
from .optim import EMA, adamw
from .spec import IMAGE_SIZE, all_images, all_videos, all_audios, partial_captions, render_image
from .visual_decoders import (
    IMAGE_RECIPE, _build_vae, _encode_latents, _progress, _to_unit, _train_vae, _warmup_lr,
    evaluate_image_decoder,
)

KIND = "stable_diffusion_3"
SD3_RECIPE: dict[str, Any] = dict(
    # text encoders: two CLIPs (hidden 16 each: their penultimate states concatenated fill t5_dim) and a T5
    clip_hidden=16, clip_layers=2, clip_heads=2, t5_dim=32, t5_layers=2, max_sequence_length=8,
    # SD3 transformer on 8x8x4 latents
    layers=3, heads=4, head_dim=16, shift=1.0,
    # the text encoders are first fitted to be additive in the attribute words (fit_steps, fit_lr), then
    # frozen (text_lr 0; > 0 trains them on with the transformer)
    fit_steps=300, fit_lr=3e-3,
    # flow-matching training
    # (1000 -> 1600 steps: held-out 11/18 -> 17/18 from true captions, on a full build's VAE;
    # on the next build's VAE 1600 steps gave 14/18, 3200 steps 17/18, shape 78 -> 94 %)
    steps=3200, lr=1e-3, text_lr=0.0, warmup=30, ema=0.99, cfg_dropout=0.1, pool=24,
    # used only when no VAE folder is given
    vae_steps=IMAGE_RECIPE["vae_steps"],
    # sampling defaults written next to the pipeline (``sampling.json``)
    num_inference_steps=15, guidance_scale=3.0,
)


def world_words() -> list[str]:
    """Every word of every world caption, and "shape" (of the partial captions the text fit uses):
    the T5 tokenizer's word pieces."""
    words: list[str] = ["shape"]
    for item in [*all_images(), *all_videos(), *all_audios()]:
        for w in item.caption.split():
            if w not in words:
                words.append(w)
    return words


def world_t5_tokenizer(max_length: int):
    """A T5 (Unigram) tokenizer with one piece per world word (characters as the fallback)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(c, -5.0) for c in "▁" + string.ascii_letters + string.digits + string.punctuation]
    vocab += [("▁" + w, -1.0) for w in world_words()]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _text_components(r: dict, seed: int) -> dict:
    from decoders.tiny_parts import _clip_tokenizer
    from decoders.tiny_today import clip_encoder, t5_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip_sizes = dict(text_layers=r["clip_layers"], text_heads=r["clip_heads"], max_length=77)
        tok, tok_2 = _clip_tokenizer(77), _clip_tokenizer(77)
        tok_3 = world_t5_tokenizer(r["max_sequence_length"])
        return dict(
            tokenizer=tok, tokenizer_2=tok_2, tokenizer_3=tok_3,
            text_encoder=clip_encoder(r["clip_hidden"], clip_sizes, tok, projection=True),
            text_encoder_2=clip_encoder(r["clip_hidden"], clip_sizes, tok_2, projection=True),
            text_encoder_3=t5_encoder(dict(t5_dim=r["t5_dim"], text_layers=r["t5_layers"]), tok_3),
        )


ATTRIBUTES = ("colour", "shape", "position")  # in caption order


def _fitting_captions(items) -> tuple[list[str], list[dict[str, str]]]:
    """The train captions and every partial caption they contain ("a red shape", "a circle on the left", ...)."""
    def caption_of(it, names):
        colour = f"{it.colour} " if "colour" in names else ""
        shape = it.shape if "shape" in names else "shape"
        where = ""
        if "position" in names:
            where = " in the center" if it.position == "center" else f" on the {it.position}"
        return f"a {colour}{shape}{where}"

    return partial_captions(items, ATTRIBUTES, caption_of)


def _summaries(pipe, captions: list[str], max_sequence_length: int) -> list[torch.Tensor]:
    """What the fit makes additive, each normalised: the pooled vector, the mean CLIP state and the
    mean T5 state of each caption (the pipeline's own encoding)."""
    embeds, _, pooled, _ = pipe.encode_prompt(captions, None, None, device=torch.device("cpu"),
                                              do_classifier_free_guidance=False, max_sequence_length=max_sequence_length)
    return [F.normalize(x, dim=-1) for x in (pooled, embeds[:, :77].mean(1), embeds[:, 77:].mean(1))]


def _fit_text_encoders(pipe, items, r: dict, seed: int, progress: bool) -> float:
    """Make the three text encoders additive in the attribute words: per summary (``_summaries``),
    a caption -> the normalised sum of fixed orthonormal directions of its attribute values; ``""``
    -> orthogonal to all of them. Random tiny encoders put "circle" and "square" captions at cosine
    0.995 (and joint diffusion training alone did not separate them: shapes came out as blobs);
    fitting the partial captions too is what lets an unseen combination land where its words say
    (as ``miniature.audio_decoder`` does for its CLAP)."""
    values = [("colour", c) for c in ("red", "green", "blue", "yellow")] + [("shape", s) for s in ("circle", "square", "triangle")]
    values += [("position", p) for p in ("left", "center", "right")]
    captions, attrs = _fitting_captions(items)
    encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    params = [p for enc in encoders for p in enc.parameters()]
    for enc in encoders:
        enc.eval().requires_grad_(True)  # eval: no dropout, so the fitted geometry is the one used later
    g = torch.Generator().manual_seed(seed + 2)
    dims = [t.shape[-1] for t in _summaries(pipe, [""], r["max_sequence_length"])]
    bases = [dict(zip(values, torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, : len(values)].T)) for d in dims]
    targets = [F.normalize(torch.stack([sum(b[(a, v)] for a, v in at.items()) for at in attrs]), dim=-1) for b in bases]
    opt = torch.optim.Adam(params, lr=r["fit_lr"])
    loss = torch.zeros(())
    for step in _progress(range(r["fit_steps"]), progress, desc="SD3 text encoders"):
        pos = _summaries(pipe, captions, r["max_sequence_length"])
        neg = _summaries(pipe, [""], r["max_sequence_length"])
        loss = sum(((p * t).sum(-1) - 1).pow(2).mean() + (n @ torch.stack(list(b.values())).T).pow(2).mean()
                   for p, t, n, b in zip(pos, targets, neg, bases))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for enc in encoders:
        enc.requires_grad_(False)
    return float(loss.detach())


def _world_vae(vae_from, r: dict, items, rng: np.random.Generator, progress: bool):
    """The world image decoder's VAE (frozen) or, without a folder, a freshly trained one."""
    if vae_from is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(vae_from))
        return vae.eval().requires_grad_(False), None
    vae = _build_vae({**IMAGE_RECIPE, "vae_steps": r["vae_steps"]})
    loss = _train_vae(vae, lambda g: np.stack([render_image(it, g) for it in items]),
                      {**IMAGE_RECIPE, "vae_steps": r["vae_steps"]}, rng, progress, None, "SD3 VAE")
    return vae, loss


def _flow_train(pipe, latents: torch.Tensor, captions: list[str], r: dict, rng: np.random.Generator,
                progress: bool):
    """Rectified-flow training of ``pipe.transformer`` (and, with ``text_lr > 0``, of its text
    encoders, through the pipeline's own ``encode_prompt``); returns (EMA transformer, last loss)."""
    transformer = pipe.transformer
    encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    train_text = r["text_lr"] > 0
    transformer.train().requires_grad_(True)
    groups = [{"params": list(transformer.parameters()), "base_lr": r["lr"]}]
    for enc in encoders:
        enc.train(train_text).requires_grad_(train_text)
        if train_text:
            groups.append({"params": list(enc.parameters()), "base_lr": r["text_lr"]})
    ema = EMA(transformer, r["ema"])
    opt = adamw(groups, lr=r["lr"], weight_decay=0.0)
    every = captions + [""]  # the last row is the empty prompt (caption dropout)

    def encode():
        embeds, _, pooled, _ = pipe.encode_prompt(every, None, None, device=torch.device("cpu"),
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=r["max_sequence_length"])
        return embeds, pooled

    if not train_text:
        with torch.no_grad():
            fixed = encode()
    pool, n = latents.shape[:2]
    steps = r["steps"]
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    loss = torch.zeros(())
    for step in _progress(range(steps), progress, desc="SD3 transformer"):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * _warmup_lr(step, r["warmup"], steps)
        idx = np.arange(n)
        x0 = latents[rng.integers(pool, size=n), idx]
        rows = torch.from_numpy(np.where(rng.random(n) < r["cfg_dropout"], n, idx))
        embeds, pooled = encode() if train_text else fixed
        u = torch.rand(n, generator=gen)
        sigma = r["shift"] * u / (1 + (r["shift"] - 1) * u)  # the scheduler's shift, applied to training too
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        pred = transformer(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=embeds[rows],
                           pooled_projections=pooled[rows]).sample
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        ema.update(transformer, step)
    transformer.eval().requires_grad_(False)
    for enc in encoders:
        enc.eval().requires_grad_(False)
    return ema.shadow, float(loss.detach())


def train_sd3_decoder(out_folder, *, vae_from=None, seed: int = 0, steps: int | None = None, progress: bool = True,
                      **overrides: Any) -> Path:
    """Train the SD3-style world image decoder and ``save_pretrained`` it to ``out_folder``.

    ``vae_from``: a trained ``AutoencoderKL`` folder to reuse frozen (e.g. ``HOME/frozen/decoders/image/vae``);
    ``steps`` overrides the transformer's step count; other ``overrides`` update ``SD3_RECIPE``.
    """
    unknown = set(overrides) - set(SD3_RECIPE)
    if unknown:
        raise ValueError(f"train_sd3_decoder: unknown recipe keys {sorted(unknown)}; known: {sorted(SD3_RECIPE)}")
    r = {**SD3_RECIPE, **overrides, **({"steps": int(steps)} if steps is not None else {})}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions on a shared machine: a second thread made it ~10x slower
    try:
        return _train(Path(out_folder), vae_from, seed, progress, r)
    finally:
        torch.set_num_threads(threads)


def _train(out: Path, vae_from, seed: int, progress: bool, r: dict) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    t0, c0 = time.time(), time.process_time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    items = split_items("train")["image"]
    vae, vae_loss = _world_vae(vae_from, r, items, rng, progress)

    x = _to_unit(np.stack([np.stack([render_image(it, rng) for it in items]) for _ in range(r["pool"])]))
    with torch.no_grad():
        lat = _encode_latents(vae, x.flatten(0, 1))
    shift, scale = float(lat.mean()), float(1.0 / (lat - lat.mean()).std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    lat = ((lat - shift) * scale).view(r["pool"], len(items), *lat.shape[1:])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        transformer = SD3Transformer2DModel(
            sample_size=lat.shape[-1], patch_size=1, in_channels=lat.shape[2], out_channels=lat.shape[2],
            num_layers=r["layers"], attention_head_dim=r["head_dim"], num_attention_heads=r["heads"],
            joint_attention_dim=r["t5_dim"], caption_projection_dim=r["heads"] * r["head_dim"],
            pooled_projection_dim=2 * r["clip_hidden"], pos_embed_max_size=lat.shape[-1],
        )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=r["shift"]), vae=vae,
        image_encoder=None, feature_extractor=None, **_text_components(r, seed),
    )
    pipe.set_progress_bar_config(disable=True)
    fit_loss = _fit_text_encoders(pipe, items, r, seed, progress) if r["fit_steps"] else None
    pipe.transformer, loss = _flow_train(pipe, lat, [it.caption for it in items], r, rng, progress)
    pipe.save_pretrained(out)
    (out / "sampling.json").write_text(json.dumps({
        "num_inference_steps": r["num_inference_steps"], "guidance_scale": r["guidance_scale"],
        "height": IMAGE_SIZE, "width": IMAGE_SIZE, "max_sequence_length": r["max_sequence_length"],
        "seed": seed, "transformer_steps": r["steps"], "loss": loss, "text_fit_loss": fit_loss, "vae_loss": vae_loss,
        "vae_from": None if vae_from is None else str(vae_from),
        "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0,
    }, indent=2))
    return out


def decoder_config(folder, **config: Any):
    """The ``DecoderConfig`` of a trained folder, with the sampling defaults saved next to it."""
    from decoders import DecoderConfig

    folder = Path(folder)
    sampling = json.loads((folder / "sampling.json").read_text()) if (folder / "sampling.json").is_file() else {}
    known = {k: v for k, v in sampling.items() if k in DecoderConfig.__dataclass_fields__}
    return DecoderConfig(kind=KIND, name_or_path=str(folder), **{**known, **config})


def load_sd3_decoder(folder, **config: Any):
    """``build_decoder`` for a trained folder (its ``sampling.json`` defaults, overridable)."""
    from decoders import build_decoder

    return build_decoder(decoder_config(folder, **config), progress=False)


def evaluate_sd3_decoder(decoder, seeds=(0, 1), *, split: str | None = None, **kw: Any) -> dict:
    """Checker accuracy from true captions (``split``: "heldout", "train" or None for all 36)."""
    items = None if split is None else split_items(split)["image"]
    return evaluate_image_decoder(decoder, seeds, items=items, **kw)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m miniature.transformer_decoder", description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--vae", help="trained AutoencoderKL folder to reuse (default: train one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eval-seeds", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="recipe override")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    t0 = time.time()
    folder = train_sd3_decoder(args.out, vae_from=args.vae, seed=args.seed, steps=args.steps, **overrides)
    t1 = time.time()
    print(f"trained {KIND} in {(t1 - t0) / 60:.2f} min -> {folder}")
    dec = load_sd3_decoder(folder)
    seeds = tuple(range(100, 100 + args.eval_seeds))
    print("held-out:", json.dumps(evaluate_sd3_decoder(dec, seeds, split="heldout")))
    print("all:     ", json.dumps(evaluate_sd3_decoder(dec, seeds)))
    print(f"evaluated in {time.time() - t1:.1f} s")


if __name__ == "__main__":
    main()
