"""Issue 19's proof in the miniature world: swap the image decoder for one of another family, stage 2 only.

``swap_decoder_in_world(home)`` takes the built world model (``HOME/model``, stages 1-3 done with the
SD-1.5-style image decoder), trains (or reuses) a tiny SD3-style decoder
(``miniature.transformer_decoder``) into ``HOME/frozen/decoders/image_sd3``, swaps it in with
``training.swap.swap_decoder`` (a fresh image output projection for the SD3 conditioning spec),
caches the new decoder's stage-2 targets of the world's image captions, and runs stage 2 alone on
the image captions with the build's stage-2 steps and lr, in five ways:

* ``trained_rows``: stage 2 as NExT-GPT runs it (the image projection and the signal-token rows train);
* ``frozen_rows``: ``freeze_signal_rows`` (only the projection trains; the signal rows stay);
* ``frozen_rows_replies``: ``frozen_rows`` with the reply rows below added to the loop's data
  (``training.data.ReplyDataset``, what ``anyany train stage2 --replies`` does);
* ``frozen_rows_cached``: with frozen rows the signal tokens' states are a fixed function of the
  caption, so they are computed once per caption (one no-grad pass of the LLM) and stage 2 trains
  the projection alone on them: the same objective, optimiser, schedule, steps and batch size as
  ``training.loop.train_stage``, without the LLM in the step;
* ``frozen_rows_cached_replies``: as ``frozen_rows_cached``, plus the signal states of every image
  request in the world's instruction data (``HOME/world/train/mosit.json``, media features from
  ``HOME/cache/media``; a conversation is cut after its last image request and left out when it
  also asks for a video or a sound), teacher-forced: the instruction-tuned model emits its signal tokens at the
  end of a reply ("Here is a red circle on the left. <Img>[IMG0]...") after a human turn, not after
  a bare caption, and the projection is asked at generation for the states of that context. The
  targets are still the new decoder's encodings of each request's caption, so the data stays text
  plus cached features and nothing but the projection trains.

After each run the LLM, LoRA, bridge, the other projections (and, with frozen rows, the signal rows)
are asserted bit-identical to ``HOME/model``. Each result is judged like the build judges its own:
held-out stage-2 retrieval (top-1 among every image caption, by the packed SD3 conditioning) and
held-out end-to-end image accuracy over ``eval_seeds`` seeds, beside the original decoder's numbers
from ``HOME/report.json``. The report goes to ``HOME/swap_report.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .build import MODEL, BuildPlan

FAMILIES = {"sd3": "stable_diffusion_3"}
VARIANTS = ("trained_rows", "frozen_rows", "frozen_rows_replies", "frozen_rows_cached", "frozen_rows_cached_replies")
QUICK = dict(decoder_steps=20, vae_steps=10, pool=2, fit_steps=10, stage2_steps=20, eval_seeds=1)


def _check_home(home: Path) -> None:
    if not (home / MODEL / "anyany_config.json").is_file():
        raise ValueError(f"--home {home}: no built model in {home / MODEL} (anyany_config.json missing); "
                         "run `anyany world build --home HOME` first")
    if not (home / "world" / "train" / "captions_image.json").is_file():
        raise ValueError(f"--home {home}: no world data in {home / 'world'}; run `anyany world build --home HOME` first")


def ensure_decoder(home: Path, family: str, *, steps: int | None, quick: bool, seed: int, progress: bool) -> tuple[Path, dict]:
    """The family's decoder folder in ``HOME/frozen/decoders/image_<family>``, trained unless already there."""
    from .transformer_decoder import SD3_RECIPE, train_sd3_decoder

    folder = home / "frozen" / "decoders" / f"image_{family}"
    if steps is None:
        steps = QUICK["decoder_steps"] if quick else SD3_RECIPE["steps"]
    reused = (folder / "model_index.json").is_file() and (folder / "sampling.json").is_file()
    if reused and json.loads((folder / "sampling.json").read_text()).get("transformer_steps") != steps:
        reused = False  # trained to another budget (e.g. an older recipe): train it again
    if not reused:
        vae = home / "frozen" / "decoders" / "image" / "vae"
        extra = {k: QUICK[k] for k in ("vae_steps", "pool", "fit_steps")} if quick else {}
        train_sd3_decoder(folder, vae_from=vae if (vae / "config.json").is_file() else None, seed=seed, steps=steps,
                          progress=progress, **extra)
    sampling = json.loads((folder / "sampling.json").read_text())
    return folder, {"reused": reused, "seconds": sampling.get("seconds"), "steps": sampling.get("transformer_steps"),
                    "vae_from": sampling.get("vae_from")}


def _decoder_settings(folder: Path) -> dict:
    from decoders import DecoderConfig

    sampling = json.loads((folder / "sampling.json").read_text())
    return {k: v for k, v in sampling.items() if k in DecoderConfig.__dataclass_fields__}


def _frozen_state(model, keep_rows: bool) -> dict[str, torch.Tensor]:
    """What a swap must leave untouched: every tensor except the image projection (and the signal rows
    unless ``keep_rows``)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("output_projections.image."):
            continue
        if not keep_rows and "trainable_tokens_delta" in name:
            continue
        out[name] = tensor.detach().clone()
    return out


def assert_untouched(reference: dict[str, torch.Tensor], model, keep_rows: bool) -> int:
    """Raise naming the first tensor that differs from ``reference``; return how many were compared."""
    now = _frozen_state(model, keep_rows)
    if set(now) != set(reference):
        raise AssertionError(f"the swapped model's tensors differ in names: {sorted(set(now) ^ set(reference))[:5]}")
    for name, tensor in reference.items():
        if not torch.equal(now[name], tensor):
            raise AssertionError(f"decoder swap changed {name}, which stage 2 with a new image decoder must leave as it was")
    return len(reference)


@torch.no_grad()
def retrieval(model, decoder, captions: list[str], candidates: list[str]) -> dict:
    """Top-1 retrieval of each caption among ``candidates``: its projected conditioning against the
    decoder's own (every tensor of the spec, packed)."""
    from decoders.spec import pack_conditioning

    bank = pack_conditioning(decoder.encode_text(candidates)).float()
    seqs = [model.prompts.encode_segments(model.prompts.signal_segments(c, "image", i)) for i, c in enumerate(captions)]
    batch = model.collate(seqs)
    out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], signal_slots=batch["signal_slots"])
    pred = pack_conditioning(out.conditioning["image"]).float()
    nearest = torch.cdist(pred, bank).argmin(1)
    hits = [candidates[int(j)] == c for j, c in zip(nearest, captions)]
    return {"top1": float(np.mean(hits)), "n": len(captions), "candidates": len(candidates)}


def end_to_end(path: Path, seeds: int, progress: bool) -> dict:
    """Held-out end-to-end image accuracy of the model in ``path``, averaged over seeds as the build does."""
    from anyany.pipeline import AnyToAnyPipeline
    from . import evaluate
    from .data import split_items

    pipe = AnyToAnyPipeline.from_pretrained(str(path), progress=False)
    items = {"image": split_items("heldout")["image"]}
    runs = [evaluate.end_to_end_accuracy(pipe, items, seed=s * 1000, progress=progress)["image"] for s in range(seeds)]
    return {k: (int(sum(r[k] for r in runs)) if k == "n" else sum(r[k] for r in runs) / seeds) for k in runs[0]}


@torch.no_grad()
def _projection_inputs(model, batches, modality: str = "image") -> torch.Tensor:
    """[signal groups, signal tokens, H]: what ``modality``'s projection reads in each batch (model
    keyword arguments), in the batches' signal-slot order: the frozen LLM's last-layer state at each
    signal token plus that token's embedding."""
    seen: list[torch.Tensor] = []
    hook = model.output_projections[modality].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().float().cpu()))
    try:
        for kwargs in batches:
            model(**kwargs)
    finally:
        hook.remove()
    return torch.cat(seen)


def signal_states(model, captions: list[str], batch_size: int = 64) -> torch.Tensor:
    """[captions, signal tokens, H]: what the image projection reads for each caption in stage 2's
    sequence (the caption, then the signal group)."""
    def batches():
        for start in range(0, len(captions), batch_size):
            chunk = captions[start : start + batch_size]
            batch = model.collate([model.prompts.encode_segments(model.prompts.signal_segments(c, "image", i))
                                   for i, c in enumerate(chunk)])
            yield dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                       signal_slots=batch["signal_slots"])

    return _projection_inputs(model, batches())


def reply_signal_states(model, conversations, media_cache, batch_size: int = 32) -> tuple[torch.Tensor, list[str]]:
    """The image projection's inputs at the image requests of ``conversations`` as stage 2's reply
    rows hold them (``training.data.ReplyDataset``: teacher-forced through the model's prompt format,
    media in from ``media_cache``), and each request's caption."""
    from training.data import Collator, build_dataset

    dataset = build_dataset("stage2", conversations, model, media_cache, None, model.config.stage1_instruction,
                            replies_for=["image"])
    if not len(dataset):
        raise ValueError("the instruction data asks for no image alone: no reply contexts to train the projection on")
    collate = Collator(model.prompts, model.tokenizer.pad_token_id)
    captions: list[str] = []

    def batches():
        for start in range(0, len(dataset), batch_size):
            examples = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            batch = collate(examples)
            asked = [value for ex in examples for _, _, value in ex.targets]  # uncached targets: the captions
            captions.extend(asked[s.target_index] for s in batch["signal_slots"])
            features = {m: value if kind == "features" else model.encode_media(m, value)
                        for m, (kind, value) in batch["media"].items()}
            yield dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                       media_slots=batch["media_slots"], signal_slots=batch["signal_slots"], media_features=features)

    states = _projection_inputs(model, batches())
    return states, captions


def train_projection_on_cached_states(model, states: torch.Tensor, targets: torch.Tensor, cfg, progress: bool) -> dict:
    """Stage 2 with frozen signal rows, the projection alone on cached signal states: the loop's
    objective, AdamW, warmup + schedule, gradient clipping, steps and batch size."""
    from projections import generation_distance
    from transformers import get_scheduler

    from .visual_decoders import _progress

    proj = model.output_projections["image"]
    model.requires_grad_(False)
    proj.requires_grad_(True).train()
    params = list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, foreach=True)
    total = cfg.max_steps
    sched = get_scheduler(cfg.scheduler, opt, num_warmup_steps=max(cfg.min_warmup_steps, int(cfg.warmup_ratio * total)),
                          num_training_steps=total)
    weight = model.config.loss.weights.get("image", 1.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    order, at = torch.randperm(len(states), generator=gen), 0
    first = last = None
    for _ in _progress(range(total), progress, desc="stage2 (cached signal states)"):
        if at + cfg.batch_size > len(order):  # a new epoch, as the loop's shuffled loader
            order, at = torch.randperm(len(states), generator=gen), 0
        idx = order[at : at + cfg.batch_size]
        at += cfg.batch_size
        cond = proj(states[idx].to(proj.dtype))
        loss = weight * generation_distance(cond, targets[idx], model.config.loss.distance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        last = float(loss.detach())
        first = last if first is None else first
    proj.eval().requires_grad_(False)
    return {"steps": total, "first_loss": first, "last_loss": last}


def _original_numbers(home: Path) -> dict | None:
    path = home / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    if not report.get("end_to_end"):
        return None
    return {"stage2_retrieval": report.get("stage2_retrieval", {}).get("image"),
            "end_to_end": report["end_to_end"].get("image"),
            "eval_seeds": report.get("plan", {}).get("eval_seeds")}


def swap_decoder_in_world(home, family: str = "sd3", steps: int | None = None, quick: bool = False,
                          progress: bool = True, *, seed: int = 0, eval_seeds: int | None = None,
                          stage2_steps: int | None = None, variants=VARIANTS) -> dict:
    """Swap the world model's image decoder for a ``family`` decoder with stage 2 only, three ways
    (``VARIANTS``); evaluate each; write and return ``HOME/swap_report.json``.

    ``steps``: the new decoder's transformer steps (default: its recipe's); ``quick``: CI-sized
    budgets (``QUICK``); ``stage2_steps`` / ``eval_seeds`` override the build plan's.
    """
    from decoders import DecoderSet
    from training.data import build_dataset, target_sources
    from training.features import build_prefix_cache, build_target_cache
    from training.loop import train_stage
    from training.records import read_conversations, read_text_captions
    from training.recipes import TrainConfig
    from training.swap import swap_decoder

    from anyany.model import AnyToAnyModel
    from .data import split_items
    from .progress import quiet
    from .transformer_decoder import evaluate_sd3_decoder, load_sd3_decoder

    if family not in FAMILIES:
        raise ValueError(f"--family {family!r}: no world decoder of that family is built; accepted: {', '.join(FAMILIES)}")
    unknown = set(variants) - set(VARIANTS)
    if unknown or not variants:
        raise ValueError(f"variants {sorted(variants)}: accepted are one or more of {VARIANTS}")
    home = Path(home)
    _check_home(home)
    plan = BuildPlan()
    stage2_steps = stage2_steps or (QUICK["stage2_steps"] if quick else plan.stage_steps["stage2"])
    eval_seeds = eval_seeds or (QUICK["eval_seeds"] if quick else plan.eval_seeds)
    kind = FAMILIES[family]
    out_root = home / "swap" / family
    report: dict = {"family": family, "kind": kind, "stage2_steps": stage2_steps, "eval_seeds": eval_seeds,
                    "batch_size": plan.batch_size, "lr": plan.stage_lr["stage2"], "seconds": {}}
    with quiet():
        t = time.time()
        folder, report["decoder"] = ensure_decoder(home, family, steps=steps, quick=quick, seed=seed, progress=progress)
        report["seconds"]["decoder"] = time.time() - t
        settings = _decoder_settings(folder)
        heldout = split_items("heldout")["image"]
        every = [it.caption for it in split_items("train")["image"]] + [it.caption for it in heldout]
        t = time.time()
        decoder = load_sd3_decoder(folder)
        report["decoder"]["alone_heldout"] = evaluate_sd3_decoder(decoder, tuple(range(eval_seeds)), split="heldout")
        report["decoder"]["spec"] = decoder.conditioning_spec.describe()
        report["seconds"]["decoder_eval"] = time.time() - t

        captions = read_text_captions(home / "world" / "train" / "captions_image.json", "image")[0]
        conversations = []
        if any(v.endswith("_replies") for v in variants):
            conversations = read_conversations(home / "world" / "train" / "mosit.json")[0]
        media_cache = home / "cache" / "media" if (home / "cache" / "media").is_dir() else None
        asked = sorted({r.caption for c in conversations for t in c.turns for r in t.media_out if r.modality == "image"})
        reference = AnyToAnyModel.from_pretrained(home / MODEL, with_encoder=False)
        untouched = {True: _frozen_state(reference, True), False: _frozen_state(reference, False)}
        del reference
        target_dir, prefix_dir = out_root / "cache" / "targets", out_root / "cache" / "prefixes"
        report["variants"] = {}
        for variant in variants:
            frozen = variant != "trained_rows"
            model = AnyToAnyModel.from_pretrained(home / MODEL, with_encoder=False)
            swap_decoder(model, "image", kind, str(folder), **settings)
            model.config.freeze_signal_rows = frozen
            decoders = DecoderSet(model.config.decoders, progress=False)
            source = target_sources(model)["image"]
            t = time.time()
            with torch.no_grad():
                targets = build_target_cache(target_dir, sorted({c.caption for c in captions} | set(asked)),
                                             decoders("image").encode_text, source, {}, progress=progress)
            cfg = TrainConfig("stage2", lr=plan.stage_lr["stage2"], max_steps=stage2_steps, batch_size=plan.batch_size,
                              weight_decay=plan.stage_weight_decay["stage2"], min_warmup_steps=20, seed=seed,
                              save_every=10**9, log_every=25, mixed_precision="no")
            run_dir = out_root / variant
            row: dict = {"freeze_signal_rows": frozen}
            if variant.startswith("frozen_rows_cached"):
                from training.features import caption_key

                model.eval()  # the states the projection reads at generation (no LoRA dropout)
                texts = [c.caption for c in captions]
                states = signal_states(model, texts)
                if variant == "frozen_rows_cached_replies":
                    more, requested = reply_signal_states(model, conversations, media_cache)
                    states, texts = torch.cat([states, more]), texts + requested
                    row["reply_contexts"] = len(requested)
                packed = torch.stack([targets.get(caption_key(c, source)).float() for c in texts])
                row["cache_seconds"] = time.time() - t
                t = time.time()
                row.update(train_projection_on_cached_states(model, states, packed, cfg, progress))
                row["stage2_seconds"] = time.time() - t
                model.save_pretrained(run_dir / "final")
            else:
                if variant == "frozen_rows_replies":  # as `anyany train stage2 ... --replies mosit.json`
                    from torch.utils.data import ConcatDataset

                    replies = build_dataset("stage2", conversations, model, media_cache, target_dir,
                                            model.config.stage1_instruction, replies_for=["image"])
                    dataset = ConcatDataset([build_dataset("stage2", captions, model, None, target_dir,
                                                           model.config.stage1_instruction), replies])
                    row["reply_rows"] = len(replies)
                else:
                    build_prefix_cache(prefix_dir, [(c.caption, "image") for c in captions], model, progress=progress)
                    dataset = build_dataset("stage2", captions, model, None, target_dir,
                                            model.config.stage1_instruction, prefix_dir)
                row["cache_seconds"] = time.time() - t
                t = time.time()
                result = train_stage(model, dataset, cfg, run_dir, decoders=decoders, progress=progress)
                row["stage2_seconds"] = time.time() - t
                row.update(steps=result.steps, first_loss=result.first_loss, last_loss=result.last_loss)
            model.eval()
            row["tensors_checked_untouched"] = assert_untouched(untouched[frozen], model, keep_rows=frozen)
            t = time.time()
            row["stage2_retrieval"] = retrieval(model, decoders("image"), [it.caption for it in heldout], every)
            del model, decoders
            row["end_to_end"] = end_to_end(run_dir / "final", eval_seeds, progress)
            row["eval_seconds"] = time.time() - t
            report["variants"][variant] = row
            (home / "swap_report.json").write_text(json.dumps(report, indent=2))  # each finished run is kept
    report["original"] = _original_numbers(home)  # read last: the build's evaluation may still be writing it
    for variant, row in report["variants"].items():
        report["seconds"][f"stage2 {variant}"] = row["stage2_seconds"]
    (home / "swap_report.json").write_text(json.dumps(report, indent=2))
    return report


def format_swap_report(report: dict) -> str:
    """A short table: the original decoder's held-out numbers beside each swap's."""
    def pct(x):
        return "   -" if x is None else f"{x:4.0%}"

    lines = [f"decoder swap to {report['kind']} ({report['decoder'].get('spec', '')}); stage 2 alone, "
             f"{report['stage2_steps']} steps, only the image projection (and trained rows) training; held-out end to end over {report['eval_seeds']} seed(s)",
             f"{'':<26} {'retrieval':>9} {'e2e all':>8} {'colour':>7} {'shape':>6} {'pos':>5} {'stage2 s':>9}"]
    orig = report.get("original")
    if orig:
        r, e = orig.get("stage2_retrieval") or {}, orig.get("end_to_end") or {}
        lines.append(f"{'original (SD-1.5 kind)':<26} {pct(r.get('top1')):>9} {pct(e.get('all')):>8} {pct(e.get('colour')):>7} "
                     f"{pct(e.get('shape')):>6} {pct(e.get('position')):>5} {'':>9}")
    for name, row in report.get("variants", {}).items():
        r, e = row["stage2_retrieval"], row["end_to_end"]
        lines.append(f"{name:<26} {pct(r['top1']):>9} {pct(e['all']):>8} {pct(e['colour']):>7} {pct(e['shape']):>6} "
                     f"{pct(e['position']):>5} {row['stage2_seconds']:>9.1f}")
    alone = report["decoder"].get("alone_heldout", {})
    lines.append(f"new decoder alone from true held-out captions: all {pct(alone.get('all'))} "
                 f"(colour {pct(alone.get('colour'))}, shape {pct(alone.get('shape'))}, position {pct(alone.get('position'))}; "
                 f"n={alone.get('n')}); {'reused' if report['decoder']['reused'] else 'trained'}"
                 + (f" in {report['decoder']['seconds'] / 60:.1f} min" if report['decoder'].get('seconds') else ""))
    return "\n".join(lines)


__all__ = ["FAMILIES", "VARIANTS", "assert_untouched", "format_swap_report", "reply_signal_states", "retrieval", "signal_states",
           "swap_decoder_in_world", "train_projection_on_cached_states"]
