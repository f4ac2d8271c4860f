"""The whole miniature NExT-GPT, end to end on a CPU.

world -> pretraining of the frozen parts (ImageBind, LLaMA, three diffusers decoders; run as
parallel single-thread jobs, one per core) -> frozen-feature caches -> stages 1, 2, 3 with the
real ``training`` loop -> held-out evaluation. Every phase's wall time goes in ``report.json``.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import active_children, get_context
from pathlib import Path

import torch

DEFAULT_HOME = Path(os.environ.get("ANYANY_HOME", Path.home() / ".cache" / "anyany")) / "miniature"
MODEL = "model"  # the final stage-3 model folder inside home
# Modules defining the world decoders' own component classes (named in their model_index.json).
COMPONENT_MODULES = {"audioldm": ["miniature.vocoder"]}


@dataclass
class BuildPlan:
    """Budgets of the frozen parts (steps, or wall minutes) and steps of the stages.
    ``quick`` is the CI-sized run."""

    # Steps, not minutes, so that a build gives the same frozen parts on a busy machine as on a quiet one
    # (1200 / 1750 steps are what 3.5 / 2 minutes gave on a quiet 2-core machine); minutes are used
    # when the steps are None.
    imagebind_minutes: float | None = None
    imagebind_steps: int | None = 1200
    llm_minutes: float | None = None
    llm_steps: int | None = 1750
    image_minutes: float | None = None
    image_steps: int | None = 1500
    image_vae_steps: int | None = None  # None: the recipe's (``visual_decoders.IMAGE_RECIPE``)
    video_minutes: float | None = None
    # video: 2400 steps, one token per caption word, text encoder frozen: direction 99 / 100 %, shape 98 / 95 %
    # of all 48 videos x 2 seeds from their true captions (training seeds 0 / 1); trained jointly 90 / 99 %
    video_steps: int | None = 2400
    video_vae_steps: int | None = None  # None: the recipe's (``visual_decoders.VIDEO_RECIPE``)
    audio_steps: int | None = 1600
    # stage 3: 1600 steps since the media-in edits and multi-turn edit scripts (~1150 rows, was ~700)
    stage_steps: dict = field(default_factory=lambda: {"stage1": 900, "stage2": 1500, "stage3": 1600})
    stage_lr: dict = field(default_factory=lambda: {"stage1": 3e-3, "stage2": 2e-3, "stage3": 2e-3})
    # Weight decay on the stage-1 bridge: held-out image captions 10/12 -> 12/12 on the same frozen parts.
    stage_weight_decay: dict = field(default_factory=lambda: {"stage1": 0.2, "stage2": 0.0, "stage3": 0.0})
    batch_size: int = 32
    eval_seeds: int = 3  # end-to-end generations per held-out item (different seeds)
    sweep_seeds: int = 2  # generations per combination when every combination is asked for (0: skipped)
    pairs_per_kind: int | None = 10  # held-out media-in requests per pair, spread over them (None: all 24-38)
    scripts: int | None = None  # multi-turn edit scripts judged (None: one per held-out video)
    demo_seeds: int = 4

    @classmethod
    def quick(cls) -> "BuildPlan":
        # Step budgets only (wall budgets made the bridge test's margins move from run to run). The counts
        # are what 1.0 / 0.8 / 0.7 / 0.7 minutes gave on a quiet 2-core machine; the decoders' VAEs use most
        # of their time, and the CI checks of stage 3 look at the signal tokens, not at the decoded media.
        return cls(imagebind_steps=330, llm_steps=700, image_steps=20, image_vae_steps=400, video_steps=20, video_vae_steps=250, audio_steps=300, eval_seeds=1,
                   sweep_seeds=0, pairs_per_kind=2, scripts=2, demo_seeds=1)


# ---------------------------------------------------------------------------- frozen parts


def _pretrain_job(name: str, home: str, seed: int, plan: dict, llm: str = "llama") -> tuple[str, float, dict]:
    """One frozen part, in its own process on one thread (two run side by side); its steps go to the
    queue the worker was started with. ``llm``: the LLM's family (``pretrain_llm.LLM_FAMILIES``)."""
    from .progress import attach, quiet_libraries

    quiet_libraries()
    attach(_WORKER_QUEUE, name)
    torch.set_num_threads(1)
    home = Path(home)
    frozen = home / "frozen"
    start, report = time.time(), {}
    if name == "imagebind":
        from .pretrain_encoder import train_imagebind

        train_imagebind(frozen / "imagebind.pth", seed=seed, minutes=plan["imagebind_minutes"], steps=plan["imagebind_steps"],
                        progress=False, report=report)
    elif name == "llm":
        from .data import world_text_corpus
        from .pretrain_llm import train_llm, world_corpus, world_language

        corpus = world_corpus(seed=seed) + world_text_corpus(seed) + world_language(seed=seed)
        train_llm(frozen / "llm", corpus, seed=seed, minutes=plan["llm_minutes"], steps=plan["llm_steps"], progress=False,
                  report=report, family=llm)
    elif name in ("image", "video"):
        from . import visual_decoders

        train = getattr(visual_decoders, f"train_{name}_decoder")
        vae = {"vae_steps": plan[f"{name}_vae_steps"]} if plan.get(f"{name}_vae_steps") else {}
        train(frozen / "decoders" / name, seed=seed, minutes=plan[f"{name}_minutes"], steps=plan[f"{name}_steps"],
              progress=False, **vae)
    elif name == "audio":
        from .audio_decoder import train_audio_decoder

        train_audio_decoder(frozen / "decoders" / "audio", seed=seed, steps=plan["audio_steps"], progress=False)
    else:
        raise ValueError(f"unknown job {name}")
    return name, time.time() - start, {k: v for k, v in report.items() if isinstance(v, (int, float, str, dict))}


def pretrain_frozen_parts(home: Path, plan: BuildPlan, seed: int, workers: int, progress: bool, llm: str = "llama",
                          jobs: list[str] | None = None) -> tuple[dict, dict]:
    """Train the five frozen parts (or ``jobs`` of them), two processes side by side. Returns (seconds,
    report) per part. Each part's bar shows its current stage, step and ETA (``miniature.progress``)."""
    from .progress import PartBars

    # longest first, two workers: video | audio, image; then imagebind and llm on whichever is free
    jobs = jobs or ["video", "audio", "image", "imagebind", "llm"]
    times, reports = {}, {}
    context = get_context("spawn")
    queue = context.Queue()  # handed to the workers as they start (a queue cannot go with each job)
    with _terminate_raises_interrupt():
        others = set(active_children())
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init, initargs=(queue,)) as pool:
            futures = {pool.submit(_pretrain_job, j, str(home), seed, vars(plan), llm): j for j in jobs}
            bars = PartBars(jobs, enabled=progress)
            pending = set(futures)
            try:
                while pending:
                    bars.drain(queue, timeout=0.5)
                    for fut in [f for f in pending if f.done()]:
                        pending.discard(fut)
                        name, seconds, reports[name] = fut.result()
                        times[name] = seconds
                        bars.drain(queue, timeout=0.0)
                        bars.finish(name, seconds)
            except BaseException:
                # Ctrl-C, SIGTERM or a failed part: leaving the pool would wait for the running parts (up to
                # 25 min of both cores) and then start the queued ones, so stop them all now
                pool.shutdown(wait=False, cancel_futures=True)
                for child in set(active_children()) - others:
                    child.kill()
                raise
            finally:
                bars.close()
    return times, reports


_WORKER_QUEUE = None  # in a pretraining worker: where its parts report their steps


def _worker_init(queue) -> None:
    """A pretraining worker reports to ``queue``, leaves Ctrl-C to the build (which stops every worker)
    and, on Linux, dies with the build's process even when that is killed outright (no orphan training
    on for minutes)."""
    global _WORKER_QUEUE
    _WORKER_QUEUE = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            pass


@contextmanager
def _terminate_raises_interrupt():
    """SIGTERM (``kill PID``, a job scheduler, ``timeout``) stops the build as Ctrl-C does, workers included."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- the model


def world_config(home: Path):
    """The miniature preset: the tiny preset's sizes with the world's frozen parts plugged in."""
    from decoders import DecoderConfig, build_decoder

    from anyany.config import tiny_output_projection
    from .pretrain_llm import world_model_config

    frozen = home / "frozen"
    cfg = world_model_config(frozen / "imagebind.pth", frozen / "llm")
    cfg.name = "miniature"
    kinds = {"image": "stable_diffusion", "video": "text_to_video_sd", "audio": "audioldm"}
    cfg.decoders, cfg.output_projections = {}, {}
    for m, kind in kinds.items():
        folder = frozen / "decoders" / m
        sampling = json.loads((folder / "sampling.json").read_text()) if (folder / "sampling.json").is_file() else {}
        known = {k: v for k, v in sampling.items() if k in DecoderConfig.__dataclass_fields__}
        dec_cfg = DecoderConfig(kind=kind, name_or_path=str(folder), component_modules=COMPONENT_MODULES.get(kind, []), **known)
        cfg.decoders[m] = dec_cfg
        shape = build_decoder(dec_cfg, progress=False).conditioning_shape
        cfg.output_projections[m] = tiny_output_projection(*shape)
    return cfg


def train_stages(home: Path, plan: BuildPlan, seed: int, progress: bool) -> dict:
    from decoders import DecoderSet
    from training.data import build_dataset, target_sources
    from training.features import (
        build_media_cache, build_prefix_cache, build_target_cache, encode_media_file, media_cache_meta,
    )
    from training.loop import train_stage
    from training.records import read_caption_pairs, read_conversations, read_text_captions
    from training.recipes import TrainConfig

    from anyany.model import AnyToAnyModel

    world = home / "world" / "train"
    times = {}
    t = time.time()
    model = AnyToAnyModel.from_config(world_config(home))
    decoders = DecoderSet(model.config.decoders, progress=False)
    pairs = []
    for name in ("cc3m", "webvid", "audiocap"):
        pairs += read_caption_pairs(world / f"{name}.json")[0]
    captions = []
    for m in ("image", "video", "audio"):
        captions += read_text_captions(world / f"captions_{m}.json", m)[0]
    convs = read_conversations(world / "mosit.json")[0]

    media_paths = [p.media for p in pairs] + [r.path for c in convs for turn in c.turns for r in turn.media_in]
    build_media_cache(home / "cache" / "media", media_paths, lambda p: encode_media_file(model, p), model.bridge.feature_kind, media_cache_meta(model), progress=progress)
    sources = target_sources(model)
    by_modality: dict[str, list[str]] = {}
    for c in captions:
        by_modality.setdefault(c.modality, []).append(c.caption)
    for c in convs:
        for turn in c.turns:
            for req in turn.media_out:
                by_modality.setdefault(req.modality, []).append(req.caption)
    with torch.no_grad():
        for m, caps in by_modality.items():
            build_target_cache(home / "cache" / "targets", caps, decoders(m).encode_text, sources[m], {}, progress=progress)
    build_prefix_cache(home / "cache" / "prefixes", [(c.caption, c.modality) for c in captions], model, progress=progress)
    times["caches"] = time.time() - t
    records = {"stage1": pairs, "stage2": captions, "stage3": convs}
    for stage in ("stage1", "stage2", "stage3"):
        t = time.time()
        ds = build_dataset(stage, records[stage], model, home / "cache" / "media", home / "cache" / "targets",
                           model.config.stage1_instruction, home / "cache" / "prefixes")
        cfg = TrainConfig(stage, lr=plan.stage_lr[stage], max_steps=plan.stage_steps[stage], batch_size=plan.batch_size,
                          weight_decay=plan.stage_weight_decay[stage], min_warmup_steps=20, seed=seed, save_every=10**9, log_every=25,
                          mixed_precision="no", group_by_length=stage == "stage3")
        train_stage(model, ds, cfg, home / "runs" / stage, decoders=decoders, progress=progress)
        times[stage] = time.time() - t
    model.save_pretrained(home / MODEL)
    return times


# ---------------------------------------------------------------------------- evaluation


def evaluate_world(home: Path, checkpoint=None, progress: bool = True, seeds: int = 1, plan: "BuildPlan | None" = None) -> dict:
    """Held-out report. Each stage is judged on its own output, as NExT-GPT's stages are meant:
    stage-1 captions on ``runs/stage1``, stage-2 retrieval on ``runs/stage2``, end to end on the
    final model (whose captions are reported too, as ``final_caption``). With ``checkpoint``
    every metric is taken on that one model (e.g. an untrained baseline), and its captions are
    ``final_caption`` only. ``plan`` sets how much of
    the media-in, multi-turn and every-combination evaluation runs (default: all of it, ``seeds`` seeds)."""
    from decoders import DecoderSet
    from training.records import read_caption_pairs

    from anyany.pipeline import AnyToAnyPipeline
    from . import evaluate
    from .data import split_items

    home = Path(home)

    def stage_output(stage: str) -> Path:
        if checkpoint is not None:
            return Path(checkpoint)
        folder = home / "runs" / stage / "final"
        return folder if folder.is_dir() else home / MODEL

    pipes: dict[Path, AnyToAnyPipeline] = {}

    def pipeline(path: Path) -> AnyToAnyPipeline:
        if path not in pipes:
            pipes[path] = AnyToAnyPipeline.from_pretrained(str(path), progress=False)
        return pipes[path]

    final = Path(checkpoint) if checkpoint is not None else home / MODEL
    held = home / "world" / "heldout"
    lookup = {it.caption: it for items in split_items("heldout").values() for it in items}
    media = []
    for name, modality in (("cc3m", "image"), ("webvid", "video"), ("audiocap", "audio")):
        for row in read_caption_pairs(held / f"{name}.json")[0]:
            media.append((modality, lookup[row.caption], row.media))
    instruction = pipeline(final).model.config.stage1_instruction
    report = {}
    # one model for every stage (a checkpoint, the shipped model): its captions are the final model's,
    # not stage 1's output, so they are not judged against the stage-1 target
    if stage_output("stage1") != final:
        report["stage1_caption"] = evaluate.stage1_caption_accuracy(pipeline(stage_output("stage1")), media, instruction, progress=progress)
    report["final_caption"] = evaluate.stage1_caption_accuracy(pipeline(final), media, instruction, progress=progress)
    every = {m: [it.caption for it in items] for m, items in split_items("train").items()}
    for m, items in split_items("heldout").items():
        every[m] += [it.caption for it in items]
    heldout_caps = {m: [it.caption for it in items] for m, items in split_items("heldout").items()}
    stage2 = pipeline(stage_output("stage2")).model
    report["stage2_retrieval"] = evaluate.stage2_retrieval_accuracy(stage2, DecoderSet(stage2.config.decoders, progress=False), heldout_caps, every)
    e2e = [evaluate.end_to_end_accuracy(pipeline(final), split_items("heldout"), seed=s * 1000, progress=progress) for s in range(seeds)]
    # over seeds: accuracies averaged, n = all generations judged
    report["end_to_end"] = {m: {k: (int(sum(r[m][k] for r in e2e)) if k == "n" else sum(r[m][k] for r in e2e) / seeds)
                                for k in e2e[0][m]} for m in e2e[0]}
    report.update(evaluate_edits_and_turns(pipeline(final), home, plan or BuildPlan(eval_seeds=seeds, sweep_seeds=seeds), progress))
    return report


def evaluate_edits_and_turns(pipe, home: Path, plan: "BuildPlan", progress: bool) -> dict:
    from . import evaluate_edits as ee

    seeds = range(plan.eval_seeds)
    out = {
        "media_to_media": ee.media_to_media(pipe, home / "eval_inputs", seeds, plan.pairs_per_kind, progress),
        "multi_turn": ee.multi_turn(pipe, seeds, plan.scripts, progress),
        "demo_prompt": ee.demo_prompt(pipe, range(plan.demo_seeds)),
    }
    if plan.sweep_seeds:
        out["every_combination"] = ee.every_combination(pipe, range(plan.sweep_seeds), progress)
    return out


def format_report(report: dict) -> str:
    lines = []
    for key, label in (("stage1_caption", "stage 1 caption "), ("final_caption", "final caption   ")):
        for m, r in report.get(key, {}).items():
            attrs = ", ".join(f"{k} {v:.0%}" for k, v in r.items() if k not in ("all", "n"))
            lines.append(f"{label} {m:<6} all attributes {r['all']:.0%}  ({attrs}; n={r['n']})")
    for m, r in report.get("stage2_retrieval", {}).items():
        lines.append(f"stage 2 retrieval {m:<6} top-1 {r['top1']:.0%}  (n={r['n']}, among {r['candidates']})")
    for m, r in report.get("end_to_end", {}).items():
        attrs = ", ".join(f"{k} {v:.0%}" for k, v in r.items() if k not in ("all", "n"))
        lines.append(f"end to end       {m:<6} correct {r['all']:.0%}  ({attrs}; n={r['n']})")
    from .evaluate_edits import format_edits

    return "\n".join(lines + format_edits(report))


def build(home=DEFAULT_HOME, *, quick: bool = False, seed: int = 0, workers: int = 2, progress: bool = True,
          llm: str = "llama", frozen_from=None, plan: BuildPlan | None = None) -> dict:
    """World -> frozen parts -> stages -> evaluation in ``home``; returns (and writes) the report.
    Library notices are silenced for the build only.

    ``llm``: the frozen LLM's family, ``"llama"`` (Vicuna-v0) or ``"qwen2"`` (ChatML, the tokenizer's
    chat template; ``miniature.pretrain_llm``). ``frozen_from``: another build's home (same ``seed``)
    whose ImageBind and decoders are copied in; only the LLM is pretrained here. ``plan``: other step
    counts than the default (or ``quick``) plan, e.g. ``bench/build_within_limit.py``'s."""
    from .pretrain_llm import check_family
    from .progress import quiet

    check_family(llm)
    if quick and plan is not None:
        raise ValueError("build: give quick=True or a plan, not both (quick is the plan BuildPlan.quick())")
    if frozen_from is not None:
        _check_frozen_source(Path(frozen_from), Path(home))
    with quiet():
        return _build(home, quick, seed, workers, progress, llm, frozen_from, plan)


REUSED_PARTS = ("imagebind.pth", "decoders")  # inside frozen/: what ``frozen_from`` takes from another build


def _check_frozen_source(source: Path, home: Path) -> None:
    missing = [name for name in REUSED_PARTS if not (source / "frozen" / name).exists()]
    missing += [f"decoders/{m}" for m in ("image", "video", "audio") if not (source / "frozen" / "decoders" / m).is_dir()]
    if missing:
        raise ValueError(f"frozen_from {str(source)!r} is not a finished world build: frozen/{', frozen/'.join(missing)} "
                         "missing; give the home of a build whose frozen parts are trained")
    if source.resolve() == home.resolve():
        raise ValueError(f"frozen_from {str(source)!r} is the build's own home; give another build's home")


def reuse_frozen_parts(source: Path, home: Path) -> None:
    """``source``'s trained ImageBind and decoders copied into ``home/frozen`` (a few MB). Copies, not
    hard links: a rebuild of ``source`` rewrites its files in place, which would change this build's parts."""
    frozen = home / "frozen"
    frozen.mkdir(parents=True, exist_ok=True)
    for name in REUSED_PARTS:
        src, dst = source / "frozen" / name, frozen / name
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)


def _build(home, quick: bool, seed: int, workers: int, progress: bool, llm: str = "llama", frozen_from=None,
           plan: BuildPlan | None = None) -> dict:
    from .data import write_world

    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    plan = plan or (BuildPlan.quick() if quick else BuildPlan())
    times = {}
    t0 = t = time.time()
    write_world(home / "world", seed=seed)
    times["world"] = time.time() - t
    jobs = None
    if frozen_from is not None:
        reuse_frozen_parts(Path(frozen_from), home)
        jobs = ["llm"]
    part_seconds, part_reports = pretrain_frozen_parts(home, plan, seed, workers, progress, llm, jobs)
    times.update({f"pretrain {k}": v for k, v in part_seconds.items()})
    times["pretrain wall"] = time.time() - t0 - times["world"]
    times.update(train_stages(home, plan, seed, progress))
    # the phases so far, in case the evaluation fails (the model is saved; `anyany eval` redoes it)
    source = {"llm": llm, "frozen_from": None if frozen_from is None else str(Path(frozen_from).resolve())}
    (home / "report.json").write_text(json.dumps({"seconds": times, "plan": vars(plan), "evaluated": False, **source}, indent=2))
    t = time.time()
    report = evaluate_world(home, progress=progress, seeds=plan.eval_seeds, plan=plan)
    times["evaluation"] = time.time() - t
    times["total"] = time.time() - t0
    report["seconds"] = times
    report["plan"] = vars(plan)
    report["frozen_parts"] = {k: v for k, v in part_reports.items() if v}
    report.update(source)
    (home / "report.json").write_text(json.dumps(report, indent=2))
    return report
