"""Train the miniature world's image and video decoders as real diffusers pipelines.

``train_image_decoder`` builds a ``StableDiffusionPipeline`` (tiny CLIP text encoder, frozen and
random; a small ``AutoencoderKL`` trained first to reconstruct world images; a latent
``UNet2DConditionModel``) and ``train_video_decoder`` a ``TextToVideoSDPipeline`` (same text
encoder and kind of VAE, applied per frame; a latent ``UNet3DConditionModel``). Both are saved with
``save_pretrained`` so that ``decoders.build_decoder(DecoderConfig(kind=..., name_or_path=folder))``
loads them like hub checkpoints.

Recipe (tuned on checker accuracy, not loss; see ``IMAGE_RECIPE`` / ``VIDEO_RECIPE``):

* The VAE downsamples 32x32 frames to 8x8x4 (images) or 4x4x8 (video frames) latents; it is trained
  deterministically (posterior mode, a little latent noise for a robust decoder, tiny KL), and its
  ``scaling_factor`` is set so the latents have unit variance (as SD does). Coarse latents were
  what made position and motion learnable within minutes (16x16 latents did worse).
* Diffusion: cosine (``squaredcos_cap_v2``) betas, v-prediction, DDIM sampling with ``trailing``
  timesteps (so sampling starts where training saw pure noise), EMA of the UNet weights, AdamW
  with warmup + cosine decay, jittered renders, 10 % caption dropout to the empty prompt for
  classifier-free guidance (default guidance 3, 15 steps, saved in ``sampling.json``).
* Image UNet: cross-attention at every level, and the text also enters the time embedding
  (``addition_embed_type="text"`` pools ``encoder_hidden_states``, so the unmodified pipeline,
  which passes no class labels, drives it). The tiny CLIP text encoder (77 tokens, as SD) is
  trained jointly at a lower lr (``text_lr``): the random one barely separates "circle"/"square".
  The saved text encoder is the trained one, so ``encode_text`` stays what the decoder uses.
* Video UNet3D: cross-attention at every level (needed for the direction to follow the caption);
  12 of the 48 videos per step.
* Video tokenizer and text encoder: the tiny CLIP BPE with merges learnt from the world's captions
  (``spec.caption_words``), one token per word, as a real BPE gives the common words of its corpus,
  and the text encoder left frozen and random, as a real decoder's pretrained one is frozen. With
  "left" spelt ``l e f t`` the decoder moved the shape the wrong way in 23 % of videos (a frozen
  random encoder then gave the right axis but a random side). With one token per word but the
  encoder trained jointly (lr 3e-4), it drew "down" and "right" 29 % apart (other direction pairs
  49-92 %) and confused exactly those two: direction 90 % of the 48 videos x 2 seeds (held-out 75 %);
  frozen, 99 % (held-out 100 %), and each step is cheaper (the captions are encoded once).
* The video text encoder, random, is first fitted for a few seconds to be additive in the attribute
  words and then frozen (``_fit_additive``), as the audio decoder's CLAP is: left random, its
  end-of-text and padding positions (70 of the 77) held a value of the whole caption at once, the
  UNet read the caption from them, and a held-out combination was drawn as some train one.
* Training latents are cached: a pool of jittered renders is encoded once by the frozen VAE.

Command line: ``python -m miniature.visual_decoders image|video OUT [--minutes M] [--steps N]``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkers import image_colour, image_position, image_shape, video_direction
from .data import split_items
from .optim import EMA, adamw
from .progress import tick
from .spec import (COLOURS, DIRECTIONS, IMAGE_SIZE, SHAPES, VIDEO_FRAMES, VIDEO_SIZE, all_images, all_videos, caption_words,
                   partial_captions, render_image, render_video)

IMAGE_RECIPE: dict[str, Any] = dict(
    # VAE: 32x32 -> 8x8x4 latents, trained deterministically (posterior mode) with latent noise. At 400
    # steps its round trip alone drew 20 % of the squares as circles (shape 86 of 108 renders); 1200: 106 of 108.
    # Latent noise 0.1 of the latents' std: the whole decoder, given true captions (36 images x 20 seeds),
    # rounded the corners of 13 % of its squares (fill of the box 0.80-0.88, judged circles by the box-fill checker of then); 0.25: 7 %
    # (8 seeds), 0.4: 6 %, 0.6: 6 % (kept; train / held-out images 96 / 97 -> 98 / 100 %), same cost.
    vae_channels=(16, 32, 64), latent_channels=4, vae_groups=8, vae_steps=1200, vae_lr=3e-3, vae_kl=1e-6,
    vae_batch=12, vae_dec_noise=0.6,
    # UNet: cross-attention at every level + the pooled text in the time embedding
    unet_channels=(32, 64), cross_attn_all=True, unet_groups=8, attention_heads=4, layers_per_block=1,
    text_time=True,
    # diffusion training (text_lr > 0: the tiny CLIP text encoder is trained jointly)
    steps=800, lr=1e-3, text_lr=3e-4, warmup=30, ema=0.99, batch_repeat=1, cfg_dropout=0.1, pool=24,
    # sampling defaults written next to the pipeline (``sampling.json``)
    num_inference_steps=15, guidance_scale=3.0,
)
VIDEO_RECIPE: dict[str, Any] = dict(
    # per-frame VAE: 32x32 -> 4x4x8 latents (the UNet3D is expensive; coarse latents keep it cheap). At 250
    # steps of 12 frames its round trip alone turned red into yellow and triangles into circles (colour 71 %,
    # shape 38 % of the 48 videos): 700 steps of 24 gave 100 / 73 %, 1500 steps of 24 100 / 100 %.
    vae_channels=(16, 32, 64, 64), latent_channels=8, vae_groups=8, vae_steps=1500, vae_lr=2e-3, vae_kl=1e-6,
    vae_batch=24, vae_dec_noise=0.0,
    # cross-attention at every level (incl. the 2x2 one) was what made direction follow the caption
    unet_channels=(32, 64), cross_attn_all=True, unet_groups=8, attention_heads=4, layers_per_block=1,
    # text_lr 0: the text encoder stays frozen (trained jointly at 3e-4 it merged "down" with "right"; 1e-3: worse)
    steps=800, lr=2e-3, text_lr=0.0, warmup=20, ema=0.99, batch_repeat=1, cfg_dropout=0.1, pool=8, batch=12,
    num_inference_steps=15, guidance_scale=3.0,
    # the frozen text encoder first fitted to be additive in the attribute words (``_fit_additive``, 14 s):
    # every held-out video right from its caption, 8 seeds each (64 of 64; train 80 of 80), for training
    # seeds 0 and 1; without it seed 0 drew "a red square moving left" moving up 8 times of 8 (56 of 64)
    text_fit_steps=300,
)
TEXT_SIZES = dict(text_hidden=32, text_layers=2, text_heads=4, max_length=77)


# ------------------------------------------------------------------------------------ helpers


def _progress(iterable, enabled: bool, **kw):
    ticking = _ticking(iterable, kw.get("desc", "training"))
    if not enabled:
        return ticking
    from tqdm.auto import tqdm

    return tqdm(ticking, total=len(iterable), **kw)


def _ticking(steps, stage: str):
    """``steps`` (a range), reporting each step to the build's progress display."""
    for k in steps:
        tick(stage, k, len(steps))
        yield k
    tick(stage, len(steps), len(steps))


def _to_unit(img: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img)).float() / 127.5 - 1.0
    return t.movedim(-1, -3)


def _text_encoder_and_tokenizer(seed: int, words=None):
    """``words``: merged into one token each (default: the tiny BPE's own few words)."""
    from decoders.tiny import _clip_text_encoder, _clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = _clip_tokenizer(TEXT_SIZES["max_length"], **({} if words is None else {"words": words}))
        text_encoder = _clip_text_encoder(TEXT_SIZES, tokenizer)
    text_encoder.requires_grad_(False).eval()
    return text_encoder, tokenizer


@torch.no_grad()
def _encode_captions(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    return text_encoder(tokens.input_ids)[0]


def _seeded_setup(seed: int, modality: str):
    """Seeds, the train items of ``modality`` (held-out combinations stay unseen), the frozen text
    encoder and the token ids of their captions plus ``""`` (last row, for caption dropout)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    items = split_items("train")[modality]
    # the video decoder's tokenizer learns its merges from the world's captions: with "left"/"right" spelt
    # letter by letter the direction was its weakest attribute (77 % of all videos; 100 % with one token per
    # word). The image decoder keeps the letter-spelt words: one token per word gave it 86 vs 90 %.
    words = caption_words() if modality == "video" else None
    text_encoder, tokenizer = _text_encoder_and_tokenizer(seed, words)
    ids = tokenizer([it.caption for it in items] + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return rng, items, text_encoder, tokenizer, ids


def _fit_additive(text_encoder, tokenizer, items, steps: int, seed: int = 0) -> None:
    """Make the frozen text encoder additive in the attribute words, as the audio decoder's CLAP is:
    every output position after a caption's first attribute word -> the normalised sum of the
    directions (one fixed orthonormal direction per attribute value) of the words up to it, so the
    end-of-text and padding positions hold the sum of all of them; ""'s -> orthogonal to every one.
    The train captions and their partial ones ("a red square", "a square moving left") are fitted.

    A random causal encoder gives those positions, which are most of the 77, a value that depends on
    the whole caption at once, and the UNet read the caption from them: the build's decoder drew "a
    red square moving left", held out, as moving up in 8 of 8 seeds at every guidance scale, and with
    the padding of "a blue square moving left" put in, blue or green."""
    from .optim import adam

    attrs = ("colour", "shape", "direction")
    values = [(a, v) for a in attrs for v in {"colour": COLOURS, "shape": SHAPES, "direction": DIRECTIONS}[a]]
    g = torch.Generator().manual_seed(seed)
    dim = text_encoder.config.hidden_size
    basis = dict(zip(values, torch.linalg.qr(torch.randn(dim, dim, generator=g))[0][:, : len(values)].T))
    words = {v: (a, v) for a, v in values}

    def caption(it, names):  # "a red square moving left" with the attributes not named left out
        words = ["a"] + [getattr(it, a) for a in ("colour", "shape") if a in names]
        return " ".join(words + (["moving", it.direction] if "direction" in names else []))

    captions, _ = partial_captions(items, attrs, caption)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    target, mask = torch.zeros(len(captions), ids.shape[1], dim), torch.zeros(len(captions), ids.shape[1])
    for c, text in enumerate(captions):
        total = torch.zeros(dim)
        for k, w in enumerate(text.split(), start=1):  # one token per caption word, after the start token
            if w in words:
                total = total + basis[words[w]]
            if total.any():
                target[c, k], mask[c, k] = F.normalize(total, dim=0), 1.0
        target[c, k + 1:], mask[c, k + 1:] = F.normalize(total, dim=0), 1.0  # end of text and padding
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    directions = torch.stack(list(basis.values()))
    text_encoder.eval().requires_grad_(True)  # eval: no dropout, so the fitted geometry is the one used later
    opt = adam(text_encoder.parameters(), lr=3e-3)
    for step in range(steps):
        h = F.normalize(text_encoder(ids)[0], dim=-1)
        fit = (((h * target).sum(-1) - 1).pow(2) * mask).sum() / mask.sum()
        off = (F.normalize(text_encoder(empty)[0][:, 1:], dim=-1) @ directions.T).pow(2).mean()
        loss = fit + off
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tick("video text encoder", step + 1, steps)
    text_encoder.eval().requires_grad_(False)


def _build_vae(r: dict):
    from diffusers import AutoencoderKL

    n = len(r["vae_channels"])
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(r["vae_channels"]), layers_per_block=1,
        latent_channels=r["latent_channels"], norm_num_groups=r["vae_groups"],
        sample_size=IMAGE_SIZE, mid_block_add_attention=False,
    )


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
        clip_sample=False, set_alpha_to_one=True, steps_offset=1, timestep_spacing="trailing",
    )


def _warmup_lr(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _train_vae(vae, frames_fn, r: dict, rng: np.random.Generator, progress: bool, deadline: float | None, desc: str):
    """Reconstruction training on fresh jittered renders (``frames_fn(rng) -> uint8 [N, H, W, 3]``)."""
    vae.train().requires_grad_(True)
    opt = adamw(vae.parameters(), lr=r["vae_lr"], weight_decay=0.0)
    steps = r["vae_steps"]
    for step in _progress(range(steps), progress, desc=desc):
        for g in opt.param_groups:
            g["lr"] = r["vae_lr"] * _warmup_lr(step, 20, steps)
        x = frames_fn(rng)
        if r.get("vae_batch") and r["vae_batch"] < len(x):
            x = x[rng.choice(len(x), size=r["vae_batch"], replace=False)]
        x = _to_unit(x)
        post = vae.encode(x).latent_dist
        z = post.mode()
        if r.get("vae_dec_noise"):  # a decoder robust to imperfect latents snaps back to clean shapes
            z = z + r["vae_dec_noise"] * z.detach().std() * torch.randn_like(z)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + r["vae_kl"] * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
    vae.eval().requires_grad_(False)
    return float(loss.detach())


@torch.no_grad()
def _encode_latents(vae, x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    return torch.cat([vae.encode(x[i : i + chunk]).latent_dist.mean for i in range(0, len(x), chunk)])


def _diffusion_train(unet, scheduler, latents: torch.Tensor, text_encoder, ids: torch.Tensor,
                     r: dict, rng: np.random.Generator, progress: bool, deadline: float | None,
                     desc: str, batch: int | None = None):
    """``latents`` [pool, N, ...] (scaled); ``ids`` [N + 1, 77] token ids of the N captions and of
    ``""`` (last row). Trains ``unet`` (and, with ``text_lr > 0``, the text encoder jointly);
    returns the EMA UNet (the text encoder is left with its trained weights)."""
    unet.train().requires_grad_(True)
    ema = EMA(unet, r["ema"])
    groups = [{"params": list(unet.parameters()), "base_lr": r["lr"]}]
    train_text = r.get("text_lr", 0) > 0
    if train_text:
        text_encoder.train().requires_grad_(True)
        groups.append({"params": list(text_encoder.parameters()), "base_lr": r["text_lr"]})
    else:
        with torch.no_grad():
            fixed = text_encoder(ids)[0]
    opt = adamw(groups, lr=r["lr"], weight_decay=0.0)
    acp = scheduler.alphas_cumprod
    pool, n = latents.shape[:2]
    steps = r["steps"]
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    for step in _progress(range(steps), progress, desc=desc):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * _warmup_lr(step, r["warmup"], steps)
        idx = np.arange(n) if batch is None else rng.choice(n, size=batch, replace=False)
        idx = np.tile(idx, r["batch_repeat"])
        which = rng.integers(pool, size=len(idx))
        x0 = latents[which, idx]
        drop = rng.random(len(idx)) < r["cfg_dropout"]
        rows = torch.from_numpy(np.where(drop, n, idx))  # row n is the empty prompt
        c = text_encoder(ids[rows])[0] if train_text else fixed[rows]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = acp[t].view(-1, *([1] * (x0.dim() - 1)))
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        pred = unet(xt, t, encoder_hidden_states=c).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet, step)
        if deadline is not None and time.time() > deadline:
            break
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return ema.shadow, float(loss.detach()), step + 1


def _write_sampling(folder: Path, r: dict, info: dict) -> None:
    (folder / "sampling.json").write_text(json.dumps(
        {"num_inference_steps": r["num_inference_steps"], "guidance_scale": r["guidance_scale"],
         "height": IMAGE_SIZE, "width": IMAGE_SIZE, **info}, indent=2))


# -------------------------------------------------------------------------------------- image


def train_image_decoder(out_folder, *, seed: int = 0, minutes: float | None = None, steps: int | None = None,
                        progress: bool = True, **overrides: Any) -> Path:
    """Train the image decoder (``StableDiffusionPipeline``) and ``save_pretrained`` it to ``out_folder``.

    ``minutes`` caps the total wall time (the VAE runs its ``vae_steps``, the UNet stops early);
    ``steps`` overrides the UNet step count; other ``overrides`` update ``IMAGE_RECIPE``.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    r = {**IMAGE_RECIPE, **overrides, **({"steps": int(steps)} if steps is not None else {})}
    t0, c0 = time.time(), time.process_time()
    rng, items, text_encoder, tokenizer, ids = _seeded_setup(seed, "image")

    vae = _build_vae(r)
    vae_loss = _train_vae(vae, lambda g: np.stack([render_image(it, g) for it in items]), r, rng, progress,
                          None, "image VAE")
    x = _to_unit(np.stack([np.stack([render_image(it, rng) for it in items]) for _ in range(r["pool"])]))
    lat = _encode_latents(vae, x.flatten(0, 1))
    scale = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scale)
    lat = (lat * scale).view(r["pool"], len(items), *lat.shape[1:])
    t_vae = time.time() - t0

    n = len(r["unet_channels"])
    extra = dict(addition_embed_type="text", addition_embed_type_num_heads=r["attention_heads"]) if r["text_time"] else {}
    unet = UNet2DConditionModel(
        sample_size=lat.shape[-1], in_channels=r["latent_channels"], out_channels=r["latent_channels"],
        down_block_types=("CrossAttnDownBlock2D" if r["cross_attn_all"] else "DownBlock2D",)
        + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("CrossAttnUpBlock2D" if r["cross_attn_all"] else "UpBlock2D",),
        block_out_channels=tuple(r["unet_channels"]), layers_per_block=r["layers_per_block"],
        cross_attention_dim=TEXT_SIZES["text_hidden"], attention_head_dim=r["attention_heads"],
        norm_num_groups=r["unet_groups"], **extra,
    )
    scheduler = _scheduler()
    deadline = None if minutes is None else t0 + 60 * minutes
    ema_unet, loss, done = _diffusion_train(unet, scheduler, lat, text_encoder, ids, r, rng, progress, deadline, "image UNet")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=ema_unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    out = Path(out_folder)
    pipe.save_pretrained(out)
    _write_sampling(out, r, {"seed": seed, "unet_steps": done, "vae_loss": vae_loss, "loss": loss,
                             "vae_seconds": t_vae, "seconds": time.time() - t0,
                             "cpu_seconds": time.process_time() - c0})
    return out


# -------------------------------------------------------------------------------------- video


def video_vae_frames(items, g: np.random.Generator) -> np.ndarray:
    """The video VAE's batch source: one random frame of a fresh jittered render of every item."""
    out = []
    for it in items:
        v = render_video(it, g)
        out.append(v[g.integers(len(v))])
    return np.stack(out)


def build_video_unet(r: dict, latent_size: int):
    """The video decoder's ``UNet3DConditionModel`` for recipe ``r`` on ``latent_size``-square latents."""
    from diffusers import UNet3DConditionModel

    n = len(r["unet_channels"])
    return UNet3DConditionModel(
        sample_size=latent_size, in_channels=r["latent_channels"], out_channels=r["latent_channels"],
        down_block_types=("CrossAttnDownBlock3D",) * (n - 1)
        + ("CrossAttnDownBlock3D" if r.get("cross_attn_all") else "DownBlock3D",),
        up_block_types=("CrossAttnUpBlock3D" if r.get("cross_attn_all") else "UpBlock3D",)
        + ("CrossAttnUpBlock3D",) * (n - 1),
        block_out_channels=tuple(r["unet_channels"]), layers_per_block=r["layers_per_block"],
        cross_attention_dim=TEXT_SIZES["text_hidden"], attention_head_dim=r["attention_heads"],
        norm_num_groups=r["unet_groups"],
    )


def train_video_decoder(out_folder, *, seed: int = 0, minutes: float | None = None, steps: int | None = None,
                        progress: bool = True, **overrides: Any) -> Path:
    """Train the video decoder (``TextToVideoSDPipeline``) and ``save_pretrained`` it to ``out_folder``."""
    from diffusers import TextToVideoSDPipeline

    r = {**VIDEO_RECIPE, **overrides, **({"steps": int(steps)} if steps is not None else {})}
    t0, c0 = time.time(), time.process_time()
    rng, items, text_encoder, tokenizer, ids = _seeded_setup(seed, "video")
    if r.get("text_fit_steps"):
        _fit_additive(text_encoder, tokenizer, items, r["text_fit_steps"], seed)

    vae = _build_vae(r)
    vae_loss = _train_vae(vae, lambda g: video_vae_frames(items, g), r, rng, progress, None, "video VAE")
    vids = np.stack([np.stack([render_video(it, rng) for it in items]) for _ in range(r["pool"])])  # P N F H W 3
    x = _to_unit(vids)  # P N F 3 H W
    lat = _encode_latents(vae, x.flatten(0, 2))
    scale = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scale)
    lat = (lat * scale).view(r["pool"], len(items), VIDEO_FRAMES, *lat.shape[1:]).transpose(2, 3)  # P N C F h w
    t_vae = time.time() - t0

    unet = build_video_unet(r, lat.shape[-1])
    scheduler = _scheduler()
    deadline = None if minutes is None else t0 + 60 * minutes
    ema_unet, loss, done = _diffusion_train(unet, scheduler, lat, text_encoder, ids, r, rng, progress, deadline,
                                            "video UNet", batch=r.get("batch"))
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=ema_unet,
                                 scheduler=scheduler)
    out = Path(out_folder)
    pipe.save_pretrained(out)
    _write_sampling(out, r, {"seed": seed, "unet_steps": done, "vae_loss": vae_loss, "loss": loss,
                             "num_frames": VIDEO_FRAMES, "vae_seconds": t_vae, "seconds": time.time() - t0,
                             "cpu_seconds": time.process_time() - c0})
    return out


# --------------------------------------------------------------------------------- evaluation


def evaluate_image_decoder(decoder, seeds=(0, 1), *, items=None, batch: int = 36, progress: bool = False,
                           **generate_kwargs: Any) -> dict:
    """Generate every image caption once per seed and judge it with the checkers.

    Returns ``{"colour", "shape", "position", "colour_shape", "all", "n"}`` (fractions correct).
    """
    items = list(all_images() if items is None else items)
    hits = {"colour": 0, "shape": 0, "position": 0, "colour_shape": 0, "all": 0}
    total = 0
    for s in seeds:
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            imgs = decoder.generate(decoder.encode_text([it.caption for it in chunk]), seed=s, progress=progress,
                                    **generate_kwargs)
            for it, img in zip(chunk, imgs):
                a = np.asarray(img)[..., :3]
                c, sh, p = image_colour(a) == it.colour, image_shape(a) == it.shape, image_position(a) == it.position
                hits["colour"] += c
                hits["shape"] += sh
                hits["position"] += p
                hits["colour_shape"] += c and sh
                hits["all"] += c and sh and p
                total += 1
    return {**{k: v / total for k, v in hits.items()}, "n": total}


def evaluate_video_decoder(decoder, seeds=(0,), *, items=None, batch: int = 48, progress: bool = False,
                           **generate_kwargs: Any) -> dict:
    """Generate every video caption once per seed; ``{"direction", "colour", "shape", "n"}`` (colour
    and shape judged on the middle frame)."""
    items = list(all_videos() if items is None else items)
    hits = {"direction": 0, "colour": 0, "shape": 0}
    total = 0
    for s in seeds:
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            vids = decoder.generate(decoder.encode_text([it.caption for it in chunk]), seed=s, progress=progress,
                                    **generate_kwargs)
            for it, v in zip(chunk, vids):
                v = np.asarray(v)
                mid = v[len(v) // 2]
                hits["direction"] += video_direction(v) == it.direction
                hits["colour"] += image_colour(mid) == it.colour
                hits["shape"] += image_shape(mid) == it.shape
                total += 1
    return {**{k: v / total for k, v in hits.items()}, "n": total}


def load_decoder(folder, kind: str, **config: Any):
    """``build_decoder`` for a trained folder, with the sampling defaults saved next to it."""
    from decoders import DecoderConfig, build_decoder

    folder = Path(folder)
    sampling = json.loads((folder / "sampling.json").read_text()) if (folder / "sampling.json").exists() else {}
    defaults = dict(num_inference_steps=sampling.get("num_inference_steps", 15),
                    guidance_scale=sampling.get("guidance_scale", 3.0), height=IMAGE_SIZE, width=IMAGE_SIZE)
    if kind == "text_to_video_sd":
        defaults.update(num_frames=VIDEO_FRAMES, height=VIDEO_SIZE, width=VIDEO_SIZE)
    defaults.update(config)
    return build_decoder(DecoderConfig(kind=kind, name_or_path=str(folder), **defaults), progress=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m miniature.visual_decoders", description=__doc__.split("\n")[0])
    p.add_argument("which", choices=("image", "video"))
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eval-seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.which == "image":
        folder = train_image_decoder(args.out, seed=args.seed, minutes=args.minutes, steps=args.steps)
        kind, evaluate = "stable_diffusion", evaluate_image_decoder
    else:
        folder = train_video_decoder(args.out, seed=args.seed, minutes=args.minutes, steps=args.steps)
        kind, evaluate = "text_to_video_sd", evaluate_video_decoder
    t1 = time.time()
    print(f"trained {kind} in {(t1 - t0) / 60:.2f} min -> {folder}")
    acc = evaluate(load_decoder(folder, kind), seeds=tuple(range(100, 100 + args.eval_seeds)))
    print(f"accuracy ({time.time() - t1:.1f} s): {json.dumps(acc)}")


if __name__ == "__main__":
    main()
