"""Input bridges compared on the miniature world: NExT-GPT stage 1 only, every bridge under identical conditions.

    python bench/bridges.py --home DIR [--quick] [--seeds 3] [--lrs 3e-3,1e-2] [--steps 180] [--out docs/]

What is held fixed: the frozen world ImageBind and LLM (``DIR/frozen``, built with
``miniature.build`` if missing), the data (the world's stage-1 caption pairs: CC3M-, WebVid- and
AudioCaps-style JSON), one frozen-feature cache per feature kind shared by every bridge of that kind,
the number of steps, the batch size, the schedule, and the seeds. What varies: the bridge (its own
learning rate is the best of a small sweep, picked by mean held-out accuracy over the seeds).

Measured per bridge: LLM tokens per image / video / audio, trainable parameters (stage 1 trains only
the bridge), bridge latency and LLM prefill latency for one prompt with one medium (median of
``--repeats`` runs on one thread), and held-out stage-1 caption accuracy per attribute (greedy
captions of held-out media, judged word by word as ``miniature.evaluate`` does), for the
trained bridge (mean and min-max over seeds) and for the untrained bridge (the baseline).

Writes ``bench/bridges.json`` and, in ``--out``, ``bridges_comparison.md`` and ``bridges_comparison.png``
(summaries, markdown, plot and terminal table: ``bench/bridges_report.py``).
The last line printed is ``bridges_best_heldout_caption: <accuracy> (<bridge>)``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bench.bridges_report import (  # noqa: E402
    MODALITIES,
    NO_MATPLOTLIB,
    machine,
    mean_attribute_accuracy,
    print_table,
    ranking,
    summarise,
    write_markdown,
    write_plot,
)

# --------------------------------------------------------------------------- the bridges
# Sizes for the world's tiny geometry: ImageBind widths 64 (257 tokens per image, 15 clips per video,
# 3 x 229 per sound), LLM width 128. Query/latent bridges get 4-8 tokens; token bridges pool each
# clip's 16x16 patch grid to 2x2 (+CLS); attention cores are 2 layers of width 64.
BRIDGES: dict[str, dict] = {
    "linear": {"label": "linear (NExT-GPT, pooled)", "config": {"type": "linear"}},
    "token_linear": {"label": "token_linear (LLaVA-1, pool 2)", "config": {"type": "token_linear", "pool_tokens": 2}},
    "mlp_llava15": {"label": "mlp llava15 (tokens, pool 2)",
                    "config": {"type": "mlp", "preset": "llava15", "on_tokens": True, "pool_tokens": 2}},
    "resampler_flamingo": {"label": "resampler flamingo",
                           "config": {"type": "resampler", "preset": "flamingo", "width": 64, "num_latents": 8,
                                      "depth": 2, "heads": 4}},
    "resampler_qwen_vl": {"label": "resampler qwen_vl",
                          "config": {"type": "resampler", "preset": "qwen_vl", "num_latents": 4, "heads": 4}},
    "qformer_blip2": {"label": "qformer blip2",
                      "config": {"type": "qformer", "preset": "blip2", "width": 64, "num_queries": 8, "depth": 2,
                                 "heads": 4}},
    "qformer_instructblip": {"label": "qformer instructblip (instruction-aware)",
                             "config": {"type": "qformer", "preset": "instructblip", "width": 64, "num_queries": 8,
                                        "depth": 2, "heads": 4}},
    "context_content": {"label": "context_content (LLaMA-VID)", "config": {"type": "context_content", "width": 64}},
}
# Image-only bridges (they read pixels or tiles): compared on the world's images alone, if the model
# can run them (see ``image_only_bridges``).
IMAGE_ONLY: dict[str, dict] = {
    "tiled": {"label": "tiled (AnyRes, inner mlp pool 2)",
              "config": {"type": "tiled", "inner": {"type": "mlp", "on_tokens": True, "pool_tokens": 2}, "max_tiles": 4}},
    "patches": {"label": "patches (Fuyu, 8-px patches of the 32-px image)", "config": {"type": "patches", "patch_size": 8}},
}
STAGE1 = [("cc3m", "image"), ("webvid", "video"), ("audiocap", "audio")]
DEFAULT_LRS = (3e-3, 1e-2)  # the attention bridges do best at the first, the linear ones at the second


# --------------------------------------------------------------------------- setup
def has_frozen_parts(home: Path) -> bool:
    frozen = home / "frozen"
    parts = [frozen / "imagebind.pth", frozen / "llm"] + [frozen / "decoders" / m for m in MODALITIES]
    return all(p.exists() for p in parts) and (home / "world" / "train" / "cc3m.json").is_file()


def ensure_world(home: Path, quick: bool, seed: int, workers: int, progress: bool) -> dict:
    """The world and its frozen parts, built with ``miniature.build`` when ``home`` has none."""
    from miniature.build import BuildPlan, pretrain_frozen_parts
    from miniature.data import write_world

    if has_frozen_parts(home):
        return {}
    home.mkdir(parents=True, exist_ok=True)
    t = time.time()
    write_world(home / "world", seed=seed)
    times = {"world": time.time() - t}
    plan = BuildPlan.quick() if quick else BuildPlan()
    times.update({f"pretrain {k}": v for k, v in pretrain_frozen_parts(home, plan, seed, workers, progress)[0].items()})
    return times


def stage1_pairs(home: Path, split: str):
    from training.records import read_caption_pairs

    pairs = []
    for name, _ in STAGE1:
        pairs += read_caption_pairs(home / "world" / split / f"{name}.json")[0]
    return pairs


def heldout_media(home: Path) -> list[tuple[str, object, Path]]:
    """(modality, world item, file) of every held-out stage-1 medium, as ``evaluate_world`` reads them."""
    from training.records import read_caption_pairs

    from miniature.data import split_items

    lookup = {it.caption: it for items in split_items("heldout").values() for it in items}
    out = []
    for name, modality in STAGE1:
        for row in read_caption_pairs(home / "world" / "heldout" / f"{name}.json")[0]:
            out.append((modality, lookup[row.caption], Path(row.media)))
    return out


def make_model(config_dict: dict, bridge: dict, seed: int, with_encoder: bool = False):
    """The world model with ``bridge``; the bridge's initialisation is seeded by ``seed``."""
    from anyany.config import AnyToAnyConfig
    from anyany.model import AnyToAnyModel

    cfg = AnyToAnyConfig.from_dict(config_dict)
    cfg.bridge = dict(bridge)
    cfg.llm.seed = seed  # from_config seeds the bridge with llm.seed + 1 (LoRA is not trained in stage 1)
    return AnyToAnyModel.from_config(cfg, with_encoder=with_encoder)


def build_caches(home: Path, config_dict: dict, bridges: dict[str, dict], progress: bool) -> dict[str, str]:
    """One media cache per feature kind (train + held-out stage-1 media), shared by all bridges of that kind.

    ``pooled`` and ``tokens`` are the two outputs of one ImageBind pass, so each file is encoded once
    for both; ``pixels`` and ``tiles`` go through the model's own media path (``encode_file``).
    """
    from training.features import media_cache_meta
    from training.features import build_media_cache

    paths = [p.media for p in stage1_pairs(home, "train")] + [p for _, _, p in heldout_media(home)]
    folders, imagebind = {}, {}
    for name, spec in bridges.items():
        model = make_model(config_dict, spec["config"], 0, with_encoder=True)
        kind = model.bridge.feature_kind
        if kind in folders:
            continue
        folder = home / "bench_cache" / kind
        mods = spec.get("modalities", MODALITIES)
        use = [p for p in paths if _modality_of(p) in mods]
        if kind in ("pooled", "tokens"):
            def encode(path, model=model, kind=kind):
                return _imagebind(model, path, imagebind)[kind]
        else:
            def encode(path, model=model):
                return encode_file(model, path)
        build_media_cache(folder, use, encode, kind, media_cache_meta(model), progress=progress)
        folders[kind] = str(folder)
    return folders


@torch.no_grad()
def _imagebind(model, path, memo: dict) -> dict:
    """ImageBind's pooled vector and tokens of one file (what ``encode_media`` returns for those kinds)."""
    from anyany.inputs import load_media

    if path not in memo:
        modality, x = load_media(path)
        out = model.encoder.encode(modality, x[None].to(next(model.encoder.parameters()).dtype))
        memo[path] = {"pooled": out.pooled[0], "tokens": out.tokens[0]}
    return memo[path]


def encode_file(model, path):
    """One file -> what the media cache stores for ``model``'s bridge (the training CLI's own encoder)."""
    from training.features import encode_media_file

    return encode_media_file(model, path)


def cached_medium(cache, path, kind: str):
    """A cached medium as the model takes it: a ``[1, ...]`` batch, or a one-item list (tiled images)."""
    from training.features import media_key

    key = media_key(path, kind)
    value = cache.get_media(key)
    value = value.to(torch.float32)
    return value[None] if isinstance(value, torch.Tensor) else [value]


def _modality_of(path) -> str:
    from anyany.media import detect_modality

    return detect_modality(Path(path))


# --------------------------------------------------------------------------- one run
_STATE: dict = {}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cached_features(folder: str, kind: str, meta: dict):
    from training.features import FeatureCache

    key = ("cache", folder)
    if key not in _STATE:
        _STATE[key] = FeatureCache.open(folder, {**meta, "feature_kind": kind, "kind": "media-features"})
    return _STATE[key]


@torch.no_grad()
def heldout_accuracy(model, media, cache, instruction: str, max_new_tokens: int = 24) -> dict:
    """Greedy captions of held-out media from cached features, judged as ``evaluate.stage1_caption_accuracy``."""
    from anyany.pipeline import AnyToAnyPipeline
    from anyany.tokens import ChatTurn
    from miniature.evaluate import _summarise, words_match

    was_training = model.training
    pipe = AnyToAnyPipeline(model, progress=False)
    per: dict[str, list] = {}
    kind = model.bridge.feature_kind
    for modality, item, path in media:
        feats = cached_medium(cache, path, kind)
        inputs = pipe.prepare_inputs([ChatTurn("human", instruction, [(modality, 0)])], {modality: feats})
        out = pipe.generate_text(inputs, generator=None, logits_processor=None, max_new_tokens=max_new_tokens,
                                 temperature=0.0)
        per.setdefault(modality, []).append(words_match(out.text, item, modality))
    model.train(was_training)
    return {m: _summarise(r) for m, r in per.items()}


def run_job(job: dict) -> dict:
    """Train one (bridge, lr, seed) in stage 1 and evaluate it (and, if asked, its untrained self)."""
    from training.data import build_dataset
    from training.features import media_cache_meta
    from training.loop import train_stage
    from training.recipes import TrainConfig

    t0 = time.time()
    model = make_model(job["config"], job["bridge"], job["seed"])
    kind = model.bridge.feature_kind
    cache = _cached_features(job["cache"], kind, media_cache_meta(model))
    media = [(m, it, Path(p)) for m, it, p in job["heldout"]]
    instruction = model.config.stage1_instruction
    result = {"name": job["name"], "lr": job["lr"], "seed": job["seed"]}
    if job["baseline"]:
        model.eval()
        result["baseline"] = heldout_accuracy(model, media, cache, instruction)
    ds = build_dataset("stage1", job["pairs"], model, job["cache"], None, instruction)
    cfg = TrainConfig("stage1", lr=job["lr"], max_steps=job["steps"], batch_size=job["batch_size"], weight_decay=0.0,
                      min_warmup_steps=job["warmup"], seed=job["seed"], save_every=10**9, eval_every=10**9,
                      log_every=10**9, mixed_precision="no")
    t = time.time()
    train = train_stage(model, ds, cfg, Path(job["out"]), progress=False)
    result["train_seconds"] = time.time() - t
    result["loss"] = [train.first_loss, train.last_loss]
    model.eval()
    result["heldout"] = heldout_accuracy(model, media, cache, instruction)
    shutil.rmtree(job["out"], ignore_errors=True)
    result["seconds"] = time.time() - t0
    return result


# --------------------------------------------------------------------------- latency
def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


@torch.no_grad()
def measure_bridge(config_dict: dict, bridge: dict, caches: dict, media, repeats: int) -> dict:
    """Tokens, trainable parameters, and one-thread latency of the bridge and of the LLM prefill."""
    from training.features import media_cache_meta

    from anyany.pipeline import AnyToAnyPipeline
    from anyany.tokens import ChatTurn

    model = make_model(config_dict, bridge, 0).eval()
    model.set_stage("stage1")
    params = sum(p.numel() for p in model.trainable_parameters())
    model.set_stage(None)
    kind = model.bridge.feature_kind
    cache = _cached_features(caches[kind], kind, media_cache_meta(model))
    pipe = AnyToAnyPipeline(model, progress=False)
    base = model.llm.get_base_model()
    out = {"feature_kind": kind, "trainable_params": params, "tokens": {}, "bridge_ms": {}, "prefill_ms": {},
           "prompt_tokens": {}}
    seen = set()
    for modality, _, path in media:
        if modality in seen:
            continue
        seen.add(modality)
        feats = cached_medium(cache, path, kind)
        captured = {}

        def hook(module, args, kwargs, output):
            captured.update(args=args, kwargs=kwargs, tokens=output.shape[1])

        handle = model.bridge.register_forward_hook(hook, with_kwargs=True)
        embeds = pipe.prepare_inputs([ChatTurn("human", model.config.stage1_instruction, [(modality, 0)])], {modality: feats}).inputs_embeds
        handle.remove()
        out["tokens"][modality] = int(captured["tokens"])
        out["prompt_tokens"][modality] = int(embeds.shape[1])
        if repeats:
            out["bridge_ms"][modality] = _median_ms(lambda: model.bridge(*captured["args"], **captured["kwargs"]), repeats)
            out["prefill_ms"][modality] = _median_ms(lambda: base.model(inputs_embeds=embeds), repeats)
    return out


@torch.no_grad()
def measure_encoder(config_dict: dict, media, repeats: int) -> dict:
    """ImageBind's own latency per medium (the same for every ImageBind bridge; not part of the bridge)."""
    from anyany.inputs import load_media

    model = make_model(config_dict, {"type": "linear"}, 0, with_encoder=True).eval()
    out, seen = {}, set()
    for modality, _, path in media:
        if modality not in seen:
            seen.add(modality)
            _, x = load_media(path)
            out[modality] = _median_ms(lambda: model.encode_media(modality, x[None]), max(3, repeats // 4))
    return out


# --------------------------------------------------------------------------- the image-only bridges
def image_only_bridges(config_dict: dict, media) -> tuple[dict, dict]:
    """``tiled`` / ``patches`` if the model's media path runs them on a world image, else the reason why not."""
    from anyany.pipeline import AnyToAnyPipeline
    from anyany.tokens import ChatTurn

    image = next(p for m, _, p in media if m == "image")
    usable, skipped = {}, {}
    for name, spec in IMAGE_ONLY.items():
        try:
            model = make_model(config_dict, spec["config"], 0, with_encoder=True).eval()
            with torch.no_grad():
                feats = encode_file(model, image)
                feats = feats[None] if isinstance(feats, torch.Tensor) else [feats]
                pipe = AnyToAnyPipeline(model, progress=False)
                embeds = pipe.prepare_inputs([ChatTurn("human", "Describe this.", [("image", 0)])], {"image": feats}).inputs_embeds
                model.llm.get_base_model().model(inputs_embeds=embeds)
            usable[name] = {**spec, "modalities": ("image",)}
        except Exception as err:  # noqa: BLE001 - reported, not hidden
            skipped[name] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    return usable, skipped




# --------------------------------------------------------------------------- the comparison
def compare(home, *, bridges=None, seeds: int = 3, lrs=DEFAULT_LRS, steps=180, batch_size: int = 16,
            workers: int = 2, repeats: int = 30, quick_world: bool = False, world_seed: int = 0,
            progress: bool = True) -> dict:
    """Train every bridge in stage 1 (``seeds`` x ``lrs`` runs each) and measure it; returns the result dict.

    ``bridges``: names from :data:`BRIDGES` and :data:`IMAGE_ONLY` (default: all). ``lrs``: the sweep, the
    same for every bridge, or ``{bridge: [lr, ...]}``; ``steps`` likewise an int or ``{bridge: steps}``
    (the comparison keeps both the same for all; the CI test gives each bridge its own). ``repeats=0`` skips
    the latency timing (tokens and parameters are still counted).
    """
    t_start = time.time()
    home = Path(home).expanduser().resolve()
    built = ensure_world(home, quick_world, world_seed, workers, progress)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from miniature.build import world_config

        config_dict = world_config(home).to_dict()
        media = heldout_media(home)
        pairs = stage1_pairs(home, "train")

        wanted = list(bridges or [*BRIDGES, *IMAGE_ONLY])
        unknown = set(wanted) - set(BRIDGES) - set(IMAGE_ONLY)
        if unknown:
            raise ValueError(f"unknown bridges {sorted(unknown)}; choose from {[*BRIDGES, *IMAGE_ONLY]}")
        chosen = {n: dict(BRIDGES[n]) for n in wanted if n in BRIDGES}
        usable, skipped = image_only_bridges(config_dict, media) if set(wanted) & set(IMAGE_ONLY) else ({}, {})
        chosen.update({n: s for n, s in usable.items() if n in wanted})
        skipped = {n: why for n, why in skipped.items() if n in wanted}
        for n, why in skipped.items():
            print(f"[bridges] leaving out {n}: the model cannot run it ({why})", file=sys.stderr)

        t = time.time()
        caches = build_caches(home, config_dict, chosen, progress)
        cache_seconds = time.time() - t

        t = time.time()
        measured = {}
        for n, spec in tqdm(chosen.items(), desc="tokens, parameters, latency", disable=not progress):
            mods = spec.get("modalities", MODALITIES)
            measured[n] = measure_bridge(config_dict, spec["config"], caches, [x for x in media if x[0] in mods], repeats)
        imagebind_ms = measure_encoder(config_dict, media, repeats) if repeats else {}
        latency_seconds = time.time() - t

        scratch = Path(tempfile.mkdtemp(prefix="bench-bridges-"))
        jobs = []
        for name, spec in chosen.items():
            mods = spec.get("modalities", MODALITIES)
            n_steps = steps[name] if isinstance(steps, dict) else steps
            for seed in range(seeds):
                for k, lr in enumerate(lrs[name] if isinstance(lrs, dict) else lrs):
                    jobs.append({
                        "name": name, "bridge": spec["config"], "config": config_dict, "seed": seed, "lr": lr,
                        "steps": n_steps, "batch_size": batch_size, "warmup": max(1, n_steps // 10),
                        "cache": caches[measured[name]["feature_kind"]],
                        "pairs": [p for p in pairs if p.modality in mods],
                        "heldout": [(m, it, str(p)) for m, it, p in media if m in mods],
                        "baseline": k == 0,  # the untrained bridge depends on the seed only
                        "out": str(scratch / f"{name}-lr{lr:g}-s{seed}"),
                    })
        order = {n: i for i, n in enumerate(SLOWEST_FIRST)}
        jobs.sort(key=lambda j: order.get(j["name"], len(order)))  # the two workers then finish together
        runs: dict[str, list] = {n: [] for n in chosen}
        t = time.time()
        bar = tqdm(total=len(jobs), desc="stage-1 runs", unit="run", disable=not progress)

        def done(r):
            runs[r["name"]].append(r)
            bar.set_postfix_str(f"{r['name']} lr {r['lr']:g} seed {r['seed']}: {mean_attribute_accuracy(r['heldout']):.2f}")
            bar.update(1)

        try:
            if workers > 1:
                with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                         initargs=(1,)) as pool:
                    for fut in as_completed([pool.submit(run_job, j) for j in jobs]):
                        done(fut.result())
            else:
                for j in jobs:
                    done(run_job(j))
        finally:
            bar.close()
            shutil.rmtree(scratch, ignore_errors=True)
        train_seconds = time.time() - t
    finally:
        torch.set_num_threads(threads)

    result = {
        "meta": {
            "date": datetime.date.today().isoformat(), "machine": machine(),
            "steps": steps, "batch_size": batch_size, "seeds": list(range(seeds)),
            "warmup": {n: max(1, v // 10) for n, v in steps.items()} if isinstance(steps, dict) else max(1, steps // 10),
            "lrs": {n: list(v) for n, v in lrs.items()} if isinstance(lrs, dict) else list(lrs),
            "repeats": repeats, "workers": workers, "n_train_pairs": len(pairs),
            "imagebind_ms": imagebind_ms,
            "seconds": {**built, "caches": cache_seconds, "measure": latency_seconds, "training": train_seconds},
        },
        "bridges": {n: {"label": chosen[n]["label"], "config": chosen[n]["config"], **measured[n], **summarise(runs[n])}
                    for n in chosen},
        "skipped": skipped,
    }
    result["meta"]["wall_minutes"] = (time.time() - t_start) / 60
    return result


# The order jobs are started in: the slowest bridges first (the resamplers read every video token twice).
SLOWEST_FIRST = ["resampler_qwen_vl", "resampler_flamingo", "context_content", "mlp_llava15", "token_linear",
                 "qformer_instructblip", "qformer_blip2", "patches", "tiled", "linear"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, help="miniature world folder (frozen/ and world/ are built if missing)")
    p.add_argument("--quick", action="store_true",
                   help="reduced: 1 seed, 60 steps (and the quick frozen parts if they must be built)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per (bridge, lr) (default 3; --quick 1)")
    p.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in DEFAULT_LRS),
                   help="comma-separated learning rates, the same sweep for every bridge (default %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="stage-1 steps per run (default 180; --quick 60)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bridges", default=None, help="comma-separated subset of: " + ", ".join([*BRIDGES, *IMAGE_ONLY]))
    p.add_argument("--workers", type=int, default=2, help="parallel one-thread training processes (default 2)")
    p.add_argument("--repeats", type=int, default=30, help="latency: runs per median (0: no timing)")
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for bridges_comparison.md and .png")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "bridges.json")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--seed", type=int, default=0, help="world and frozen-part seed, when they are built")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only rewrite the markdown and the plot from this earlier bench/bridges.json (no runs)")
    args = p.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 3)
    if args.home is None and args.render is None:
        p.error("--home is required (unless --render)")
    args.lrs = [float(x) for x in args.lrs.split(",")]
    args.steps = args.steps or (60 if args.quick else 180)
    return args


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.no_plot:  # fail before the runs, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError as err:
            raise SystemExit(NO_MATPLOTLIB) from err
    out = args.out
    if args.render:
        result = json.loads(args.render.read_text())
    else:
        t0 = time.time()
        result = compare(args.home, bridges=args.bridges.split(",") if args.bridges else None, seeds=args.seeds,
                         lrs=args.lrs, steps=args.steps, batch_size=args.batch_size, workers=args.workers,
                         repeats=args.repeats, quick_world=args.quick, world_seed=args.seed, progress=not args.quiet)
        result["meta"]["command"] = "python bench/bridges.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out.mkdir(parents=True, exist_ok=True)
    result.pop("png", None)
    if not args.no_plot:
        write_plot(out / "bridges_comparison.png", result)
        result["png"] = _shown(out / "bridges_comparison.png")
    if not args.render:
        result["meta"]["wall_minutes"] = (time.time() - t0) / 60
    write_markdown(out / "bridges_comparison.md", result)
    if not args.render:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))

    bridges = result["bridges"]
    print_table(bridges)
    order = ranking(bridges)
    written = ([] if args.render else [_shown(args.json)]) + [_shown(out / "bridges_comparison.md")]
    written += [] if args.no_plot else [result["png"]]
    print(f"wall time {result['meta']['wall_minutes']:.1f} min; wrote {', '.join(written)}")
    best = order[0]  # all-modality bridges rank first
    print(f"bridges_best_heldout_caption: {bridges[best]['trained']['mean_attribute']['mean']:.2f} ({best})")
    return result


if __name__ == "__main__":
    main()
