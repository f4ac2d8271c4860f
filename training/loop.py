"""One training loop for every stage, on accelerate.

Read top to bottom: set up -> (resume) -> for each batch: resolve frozen inputs, forward,
backward, clip, step -> log / evaluate / checkpoint -> save the stage's model folder.

Checkpoints hold only what changes (trainable weights, optimizer, scheduler, RNG states,
position in the data, and the run's step count) and are written to a temp folder then renamed,
so a crash never leaves a half-written one; ``resume=True`` continues bit-exactly on the same
hardware. The last step is checkpointed too (after ``final/``), whenever the run checkpoints at
all, so resuming a finished run finds it finished instead of redoing the steps since the last
periodic checkpoint. A resumed run keeps the step count it was started with: its learning-rate
schedule is laid out over it.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import Collator, LengthGroupedSampler, resolve_frozen, sequence_lengths
from .recipes import TrainConfig

CHECKPOINTS = "checkpoints"
FINAL = "final"


@dataclass
class TrainResult:
    steps: int
    first_loss: float | None
    last_loss: float | None
    eval_loss: float | None
    output: Path
    already_finished: bool = False  # resume=True found the run finished: nothing trained, final/ kept


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def checkpoint_dirs(out: Path) -> list[Path]:
    """The complete checkpoints under ``out``, oldest first."""
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.name.startswith("step-") and (p / "state.json").is_file()),
                  key=lambda p: int(p.name.split("-")[1]))


def _named_trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, epoch: int, batch_in_epoch: int, keep_last: int,
                    total_steps: int | None = None):
    final = out / CHECKPOINTS / f"step-{step:07d}"
    tmp = out / CHECKPOINTS / f".tmp-step-{step:07d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in _named_trainable(model).items()}, str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                                "total_steps": total_steps}))
    with open(tmp / "state.json") as fh:  # make the content durable before the rename publishes it
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    for old in checkpoint_dirs(out)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> dict:
    trainable = _named_trainable(model)
    saved = load_file(str(folder / "trainable.safetensors"))
    if set(saved) != set(trainable):
        raise ValueError(f"{folder}: checkpoint trains {sorted(set(saved) ^ set(trainable))[:5]} differently from this run")
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(saved[n])
    states = torch.load(folder / "optimizer.pt", weights_only=False)  # our own file: optimizer state needs pickles
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    rng = torch.load(folder / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return json.loads((folder / "state.json").read_text())


def _check_resumable(out: Path, folder: Path, total: int) -> dict:
    """The state of checkpoint ``folder``, refused when a run of ``total`` steps cannot continue it
    bit-exactly: the learning-rate schedule (warmup and decay) is laid out over the step count."""
    state = json.loads((folder / "state.json").read_text())
    step, saved_total = state["step"], state.get("total_steps")  # (checkpoints before the count was kept: None)
    if saved_total == total or saved_total is None and step < total:
        return state
    if step == saved_total:
        raise ValueError(f"--resume: {out} finished at step {step} ({FINAL}/), and a run of {total} steps cannot "
                         f"continue it bit-exactly: its learning-rate schedule was laid out over {step} steps. To train "
                         f"on, start a new run from it: --init {out / FINAL} --out NEW_FOLDER")
    if saved_total is None:
        raise ValueError(f"--resume: {folder} is at step {step}, which leaves nothing of this run's {total} steps to "
                         "do; resume with the --max-steps (or --epochs, --batch-size and data) the run was started with")
    raise ValueError(f"--resume: {folder} is from a run of {saved_total} steps, not {total}; a resumed run keeps its "
                     "step count (its learning-rate schedule is laid out over it): resume with the --max-steps (or "
                     "--epochs, --batch-size and data) the run was started with")


def train_stage(
    model,
    dataset,
    cfg: TrainConfig,
    out,
    *,
    eval_dataset=None,
    decoders=None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``dataset`` for ``cfg.stage``; write checkpoints and ``out/final``."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from transformers import get_scheduler

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=_mixed_precision(cfg.mixed_precision),
        log_with="tensorboard",
        project_dir=str(out / "logs"),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # Stage batches need not touch every trainable group (e.g. no video in a batch).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)
    model.set_stage(cfg.stage)
    model.train()
    if model.encoder is not None:
        model.encoder.eval()
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                  foreach=True)  # one fused update for the many small trainable tensors (CPU too)
    collate = Collator(model.prompts, model.tokenizer.pad_token_id)
    if cfg.group_by_length:
        sampler = LengthGroupedSampler(sequence_lengths(dataset, collate), cfg.batch_size, cfg.seed)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers)
    else:
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, num_workers=cfg.num_workers)
    steps_per_epoch = math.ceil(len(loader) / max(1, accelerator.num_processes) / cfg.grad_accum)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup = max(cfg.min_warmup_steps, int(cfg.warmup_ratio * total))
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    core = accelerator.unwrap_model(model)

    step, epoch, skip = 0, 0, 0
    if resume:
        found = checkpoint_dirs(out)
        if not found:
            raise FileNotFoundError(f"--resume: no checkpoint under {out / CHECKPOINTS}")
        _check_resumable(out, found[-1], total)
        state = load_checkpoint(found[-1], core, optimizer, scheduler)
        step, epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
        if step == total:  # the run finished: its last step is this checkpoint, and final/ was written before it
            missing = not (out / FINAL).is_dir()
            accelerator.wait_for_everyone()  # every process has looked before the main one writes
            if missing and accelerator.is_main_process:  # (deleted since: the checkpoint holds the same weights)
                save_model_atomic(core, out / FINAL)
            accelerator.wait_for_everyone()
            accelerator.print(f"{out}: finished at step {step}; {FINAL}/ was missing and is written again from {found[-1]}"
                              if missing else f"{out}: finished at step {step} ({FINAL}/); nothing to resume")
            return TrainResult(step, None, None, None, out / FINAL, already_finished=True)
        accelerator.print(f"resumed from {found[-1]} (step {step})")
    accelerator.init_trackers(f"anyany-{cfg.stage}", config={k: str(v) for k, v in cfg.to_dict().items()})

    first_loss = last_loss = eval_loss = initial_eval_loss = None
    if eval_dataset is not None and step == 0:
        initial_eval_loss = evaluate(core, eval_dataset, cfg, decoders, collate)
        accelerator.log({"eval/loss": initial_eval_loss}, step=0)
    bar = tqdm(total=total, initial=step, desc=cfg.stage, disable=not (progress and accelerator.is_local_main_process))
    while step < total:
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        batch_in_epoch = skip
        for batch in batches:
            batch_in_epoch += 1
            with accelerator.accumulate(model):
                inputs = resolve_frozen(batch, core, decoders)
                output = model(**inputs)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and cfg.grad_clip:
                    accelerator.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            last_loss = accelerator.gather(output.loss.detach()[None]).mean().item()
            first_loss = last_loss if first_loss is None else first_loss
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if step % cfg.log_every == 0 or step == total:
                logs = {f"train/{k}": v.item() for k, v in output.losses.items()}
                accelerator.log({"train/loss": last_loss, "lr": scheduler.get_last_lr()[0], **logs}, step=step)
            if eval_dataset is not None and (step % cfg.eval_every == 0 or step == total):
                eval_loss = evaluate(core, eval_dataset, cfg, decoders, collate)
                accelerator.log({"eval/loss": eval_loss}, step=step)
            if step % cfg.save_every == 0 and step < total and accelerator.is_main_process:
                save_checkpoint(out, step, core, optimizer, scheduler, epoch, batch_in_epoch, cfg.keep_last, total)
            if step >= total:
                break
        else:
            epoch, skip = epoch + 1, 0
            continue
        break
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model_atomic(core, out / FINAL)
        (out / "train_summary.json").write_text(json.dumps(
            {"stage": cfg.stage, "steps": step, "processes": accelerator.num_processes, "first_loss": first_loss,
             "last_loss": last_loss, "initial_eval_loss": initial_eval_loss, "eval_loss": eval_loss}, indent=2))
        if cfg.save_every <= total:
            # the last step as a checkpoint too, written after final/: --resume then finds the run finished
            # (a crash between the two leaves the previous checkpoint, and a resume redoes the last steps)
            save_checkpoint(out, step, core, optimizer, scheduler, epoch, batch_in_epoch, cfg.keep_last, total)
    accelerator.end_training()
    return TrainResult(step, first_loss, last_loss, eval_loss, out / FINAL)


@torch.no_grad()
def evaluate(model, dataset, cfg: TrainConfig, decoders, collate) -> float:
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate)
    total, count = 0.0, 0
    for batch in loader:
        out = model(**resolve_frozen(batch, model, decoders))
        total += out.loss.item() * batch["input_ids"].shape[0]
        count += batch["input_ids"].shape[0]
    model.train(was_training)
    if model.encoder is not None:
        model.encoder.eval()
    return total / max(count, 1)


def save_model_atomic(model, folder: Path) -> None:
    tmp = folder.with_name(f".tmp-{folder.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
