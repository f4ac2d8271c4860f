"""``anyany train stage1|stage2|stage3`` and ``anyany cache-features``."""
from __future__ import annotations

import argparse
import functools
from dataclasses import fields
from pathlib import Path

from .recipes import RECIPES


def register(sub) -> None:
    t = sub.add_parser("train", help="run one NExT-GPT training stage (accelerate; resumable)")
    t.add_argument("stage", choices=sorted(RECIPES), help="stage1: encoder-side, stage2: decoder-side, stage3: instruction tuning")
    t.add_argument("--data", action="append", required=True, help="dataset JSON/JSONL (repeatable); format by stage, see docs/data.md")
    t.add_argument("--media-root", help="folder the media names in --data are relative to (default: the JSON's folder)")
    t.add_argument("--modality", choices=["image", "video", "audio"], help="stage 2: target modality of the captions (default: from the row's *_name key)")
    t.add_argument("--eval-data", action="append", help="held-out JSON for the periodic evaluation loss")
    t.add_argument("--out", required=True, help="output folder: checkpoints/, logs/ (tensorboard), final/ (the model)")
    t.add_argument("--init", help="start from this anyany folder (e.g. the previous stage's --out); default: --preset")
    t.add_argument("--preset", default="tiny", help="preset to start from when no --init is given")
    t.add_argument("--media-cache", help="ImageBind feature cache folder (anyany cache-features media); encoder not run in steps")
    t.add_argument("--target-cache", help="decoder target cache folder (anyany cache-features targets)")
    t.add_argument("--prefix-cache", help="stage 2: the frozen LLM's pass over each caption (anyany cache-features prefixes)")
    t.add_argument("--resume", action="store_true", help="continue exactly from the newest checkpoint in --out")
    t.add_argument("--skip-bad-rows", action="store_true", help="skip malformed rows (counted and reported) instead of failing")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    for f in fields(RECIPES["stage1"].real):
        if f.name in ("stage", "betas"):
            continue
        t.add_argument(f"--{f.name.replace('_', '-')}", dest=f"hp_{f.name}", type=_type_of(f), default=None,
                       help=f"override the recipe's {f.name}")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("cache-features", help="precompute frozen ImageBind features or decoder text targets")
    c.add_argument("kind", choices=["media", "targets", "prefixes"],
                   help="media: ImageBind features of the files; targets: decoder embeddings of captions; "
                        "prefixes: the frozen LLM's keys/values over stage-2 captions")
    c.add_argument("--data", action="append", required=True, help="caption-pair / caption / conversation JSON files (repeatable)")
    c.add_argument("--media-root", help="folder the media names are relative to")
    c.add_argument("--out", required=True, help="cache folder (created or extended)")
    c.add_argument("--init", help="anyany folder whose encoder/decoders to use (default: --preset)")
    c.add_argument("--preset", default="tiny")
    c.add_argument("--modality", choices=["image", "video", "audio"], help="targets: caption modality when the file does not say")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_cache)


def _type_of(f):
    return {"int": int, "float": float, "str": str, "int | None": int}.get(str(f.type), str)


# ------------------------------------------------------------------------------------ helpers


def _load_model(args, with_encoder: bool):
    from anyany.config import get_preset
    from anyany.model import AnyToAnyModel

    if args.init:
        return AnyToAnyModel.from_pretrained(args.init, with_encoder=with_encoder)
    return AnyToAnyModel.from_config(get_preset(args.preset), with_encoder=with_encoder)


def _read_records(stage: str, paths, args):
    from .records import read_caption_pairs, read_conversations, read_text_captions

    on_error = "skip" if getattr(args, "skip_bad_rows", False) else "raise"
    records = []
    for path in paths:
        if stage == "stage1":
            rows, report = read_caption_pairs(path, args.media_root, on_error=on_error)
        elif stage == "stage2":
            rows, report = _read_captions(path, args.modality, on_error)
        else:
            rows, report = read_conversations(path, args.media_root, on_error=on_error)
        if report.n_skipped or getattr(args, "skip_bad_rows", False):
            print(f"{path}: {report.summary()}")
        records += rows
    if not records:
        raise ValueError(f"no usable rows in {', '.join(map(str, paths))}")
    return records


def _read_captions(path, modality, on_error):
    """Stage 2 captions; modality from --modality or from the row's *_name key."""
    import json

    from .records import read_text_captions

    if modality is None:
        first = json.loads(Path(path).read_text())[0] if str(path).endswith(".json") else {}
        for m in ("image", "video", "audio"):
            if f"{m}_name" in first:
                modality = m
        if modality is None:
            raise ValueError(f"{path}: cannot tell the target modality from the rows; pass --modality")
    return read_text_captions(path, modality, on_error=on_error)


def target_sources(model) -> dict[str, str]:
    """Identity of each modality's decoder text encoder, part of the target cache keys."""
    out = {}
    for m, cfg in model.config.decoders.items():
        origin = cfg.name_or_path or f"random-seed{(cfg.random_init or {}).get('seed', 0)}"
        out[m] = f"{cfg.kind}:{origin}"
    return out


class LazyDecoders:
    """Decoders built on first use, only when a target is not cached."""

    def __init__(self, model):
        self.model, self._built = model, {}

    def __call__(self, modality):
        from decoders import build_decoder

        if modality not in self._built:
            self._built[modality] = build_decoder(self.model.config.decoders[modality], progress=False)
        return self._built[modality]


def _media_meta(model) -> dict:
    """What the cached media features depend on besides the files (checked when a cache is opened)."""
    ib = model.config.encoder.imagebind
    meta = {"embed_dim": ib.embed_dim, "vision_width": ib.vision_width, "audio_width": ib.audio_width}
    meta.update(model.bridge.image_options)  # tiles: max_tiles, tile_size; pixels: max_image_size
    if model.bridge.feature_kind == "tiles":
        meta["tile_features"] = model.bridge.inner_feature_kind  # per-view pooled vectors or tokens
    return meta


def encode_media_file(model, path):
    """One media file -> what the media cache stores for this model's bridge (see ``build_media_cache``)."""
    modality, inputs = model.load_media(path)
    return model.encode_media(modality, [inputs])[0]


def build_dataset(stage: str, records, model, media_cache, target_cache, instruction, prefix_cache=None):
    from .data import CaptionDataset, ConversationDataset, MediaSource, PrefixSource, SignalDataset, TargetSource
    from .features import FeatureCache

    kind = model.bridge.feature_kind
    cache = FeatureCache.open(media_cache, {**_media_meta(model), "feature_kind": kind})
    media = MediaSource(cache, kind, model.bridge.image_options)
    targets = TargetSource(FeatureCache.open(target_cache), target_sources(model))
    if stage == "stage1":
        return CaptionDataset(records, media, instruction)
    if stage == "stage2":
        return SignalDataset(records, targets, PrefixSource(FeatureCache.open(prefix_cache, {"kind": "llm-prefixes"}), model))
    return ConversationDataset(records, media, targets)


def cmd_train(args) -> int:
    from .loop import train_stage

    if args.resume and not (Path(args.out) / "checkpoints").is_dir():
        raise FileNotFoundError(f"--resume: {args.out} has no checkpoints/ folder")
    records = _read_records(args.stage, args.data, args)
    eval_records = _read_records(args.stage, args.eval_data, args) if args.eval_data else None
    needs_encoder = args.stage != "stage2" and not args.media_cache
    model = _load_model(args, with_encoder=needs_encoder)
    cfg = RECIPES[args.stage].defaults(model.config.name)  # tiny models get CPU-sized defaults
    for f in fields(cfg):
        value = getattr(args, f"hp_{f.name}", None)
        if value is not None:
            setattr(cfg, f.name, value)
    instruction = model.config.stage1_instruction
    caches = (args.media_cache, args.target_cache, instruction, args.prefix_cache)
    dataset = build_dataset(args.stage, records, model, *caches)
    eval_dataset = build_dataset(args.stage, eval_records, model, *caches) if eval_records else None
    result = train_stage(model, dataset, cfg, args.out, eval_dataset=eval_dataset, decoders=LazyDecoders(model),
                         resume=args.resume, progress=not args.quiet)
    print(f"{args.stage}: {result.steps} steps, loss {result.first_loss:.4f} -> {result.last_loss:.4f}"
          + (f", eval {result.eval_loss:.4f}" if result.eval_loss is not None else ""))
    print(f"model written to {result.output}")
    return 0


def cmd_cache(args) -> int:
    import torch

    from .features import build_media_cache, build_prefix_cache, build_target_cache
    from .records import read_caption_pairs, read_conversations

    model = _load_model(args, with_encoder=args.kind == "media")
    if args.kind == "prefixes":
        pairs = [(r.caption, r.modality) for path in args.data for r in _read_captions(path, args.modality, "raise")[0]]
        cache = build_prefix_cache(args.out, pairs, model, progress=not args.quiet)
        print(f"{args.out}: {len(cache)} entries")
        return 0
    if args.kind == "media":
        paths = []
        for path in args.data:
            try:
                rows, _ = read_caption_pairs(path, args.media_root)
                paths += [r.media for r in rows]
            except ValueError:
                convs, _ = read_conversations(path, args.media_root)
                paths += [ref.path for c in convs for t in c.turns for ref in t.media_in]
        kind = model.bridge.feature_kind
        encode = functools.partial(encode_media_file, model)
        cache = build_media_cache(args.out, paths, encode, kind, _media_meta(model), progress=not args.quiet)
    else:
        captions: dict[str, list[str]] = {}
        for path in args.data:
            try:
                rows, _ = _read_captions(path, args.modality, "raise")
                for r in rows:
                    captions.setdefault(r.modality, []).append(r.caption)
            except ValueError:
                convs, _ = read_conversations(path, args.media_root, check_files=False)
                for c in convs:
                    for t in c.turns:
                        for req in t.media_out:
                            captions.setdefault(req.modality, []).append(req.caption)
        decoders = LazyDecoders(model)
        sources = target_sources(model)
        cache = None
        for modality, caps in captions.items():
            with torch.no_grad():
                cache = build_target_cache(args.out, caps, decoders(modality).encode_text, sources[modality],
                                           {}, progress=not args.quiet)
        if cache is None:
            raise ValueError("no captions found for targets in " + ", ".join(args.data))
    print(f"{args.out}: {len(cache)} entries")
    return 0
