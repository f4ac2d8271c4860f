"""``anyany train stage1|stage2|stage3`` and ``anyany cache-features``."""
from __future__ import annotations

import argparse
import contextlib
import functools
from dataclasses import fields
from pathlib import Path

from anyany.arguments import check_output_dir

from .recipes import RECIPES


def register(sub) -> None:
    t = sub.add_parser("train", help="run one NExT-GPT training stage (accelerate; resumable)")
    t.add_argument("stage", choices=sorted(RECIPES), help="stage1: encoder-side, stage2: decoder-side, stage3: instruction tuning")
    t.add_argument("--data", action="append", required=True,
                   help="dataset JSON/JSONL (repeatable), or FILE:MEDIA_FOLDER to give that dataset its own media folder; "
                        "format by stage, see docs/data.md")
    t.add_argument("--media-root", help="folder the media names in --data are relative to, for files without their own "
                                        "(default: the JSON's folder)")
    t.add_argument("--modality", choices=["image", "video", "audio"], help="stage 2: target modality of the captions (default: from the row's *_name key)")
    t.add_argument("--eval-data", action="append", help="held-out JSON for the periodic evaluation loss")
    t.add_argument("--out", required=True, help="output folder: checkpoints/, logs/ (tensorboard), final/ (the model)")
    t.add_argument("--init", help="start from this anyany folder (e.g. the previous stage's --out); default: --preset")
    t.add_argument("--preset", default="tiny", help="preset to start from when no --init is given")
    t.add_argument("--media-cache", help="ImageBind feature cache folder (anyany cache-features media); encoder not run in steps")
    t.add_argument("--target-cache", help="decoder target cache folder (anyany cache-features targets)")
    t.add_argument("--prefix-cache", help="stage 2: the frozen LLM's pass over each caption (anyany cache-features prefixes)")
    t.add_argument("--resume", action="store_true",
                   help="continue exactly from the newest checkpoint in --out (the last step is one too, so a "
                        "finished run is reported finished, not redone)")
    t.add_argument("--skip-bad-rows", action="store_true", help="skip malformed rows (counted and reported) instead of failing")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--decoder", action="append", metavar="MODALITY=KIND:PATH",
                   help="swap MODALITY's decoder for KIND from PATH (hub id or folder) before training; its output "
                        "projection starts fresh for the new decoder's conditioning spec (docs/decoders.md)")
    t.add_argument("--replies", action="append", metavar="FILE",
                   help="stage 2: instruction data (stage-3 format, repeatable) whose requests for the trained "
                        "modality join the captions as rows, so the projection also learns the signal states of a "
                        "reply (docs/decoders.md, the decoder swap)")
    t.add_argument("--freeze-signal-rows", action="store_true",
                   help="stage 2: keep the signal-token rows frozen, so only the output projections train")
    for f in fields(RECIPES["stage1"].real):
        if f.name in ("stage", "betas"):
            continue
        if str(f.type) == "bool":  # --group-by-length / --no-group-by-length
            t.add_argument(f"--{f.name.replace('_', '-')}", dest=f"hp_{f.name}", action=argparse.BooleanOptionalAction,
                           default=None, help=f"override the recipe's {f.name}")
            continue
        t.add_argument(f"--{f.name.replace('_', '-')}", dest=f"hp_{f.name}", type=_type_of(f), default=None,
                       help=f"override the recipe's {f.name}")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("cache-features", help="precompute frozen ImageBind features or decoder text targets")
    c.add_argument("kind", choices=["media", "targets", "prefixes"],
                   help="media: ImageBind features of the files; targets: decoder embeddings of captions; "
                        "prefixes: the frozen LLM's keys/values over stage-2 captions")
    c.add_argument("--data", action="append", required=True,
                   help="caption-pair / caption / conversation JSON files (repeatable; FILE:MEDIA_FOLDER as for train)")
    c.add_argument("--media-root", help="folder the media names are relative to")
    c.add_argument("--out", required=True, help="cache folder (created or extended)")
    c.add_argument("--init", help="anyany folder whose encoder/decoders to use (default: --preset)")
    c.add_argument("--preset", default="tiny")
    c.add_argument("--modality", choices=["image", "video", "audio"], help="targets: caption modality when the file does not say")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_cache)


def _on_error(args) -> str:
    return "skip" if getattr(args, "skip_bad_rows", False) else "raise"


@contextlib.contextmanager
def _media_remedy(flag: str, skip_flag: bool):
    """Name the flags that fix a missing media file, in place of the readers' Python remedy
    (``check_files=False``, which no command line has): the data file's own media folder
    (``FLAG FILE:FOLDER``), ``--media-root``, and with ``skip_flag`` ``--skip-bad-rows``."""
    from .records import DataFormatError
    from .records.common import MISSING_FILE_REMEDY

    try:
        yield
    except DataFormatError as err:
        message, python_remedy = str(err), f"; {MISSING_FILE_REMEDY})"
        if err.reason != "missing file" or err.row is None or not message.endswith(python_remedy):
            raise
        remedy = f"; give the folder the media are in: {flag} {err.file}:FOLDER or --media-root FOLDER"
        if skip_flag:
            remedy += ", or pass --skip-bad-rows to leave such rows out"
        raise DataFormatError(message[: -len(python_remedy)] + remedy + ")", file=err.file, row=err.row,
                              field=err.field, reason=err.reason) from None


def _type_of(f):
    return {"int": int, "float": float, "str": str, "int | None": int}.get(str(f.type), str)


# ------------------------------------------------------------------------------------ helpers


def _load_model(args, with_encoder: bool):
    from anyany.config import get_preset
    from anyany.model import AnyToAnyModel

    from decoders.base import quiet_loading

    # one line of ours while it loads (none with --quiet), not transformers' per-part weight bars
    with quiet_loading(getattr(args, "quiet", False), f"the model ({args.init or args.preset})"):
        if args.init:
            return AnyToAnyModel.from_pretrained(args.init, with_encoder=with_encoder)
        return AnyToAnyModel.from_config(get_preset(args.preset), with_encoder=with_encoder)


def cmd_train(args) -> int:
    from decoders import DecoderSet

    from .data import Collator, build_dataset, check_rows, read_stage_records
    from .loop import train_stage
    from .swap import parse_decoder_arg, swap_decoder

    from .loop import checkpoint_dirs

    check_output_dir(args.out, "--out")
    if args.resume and not (Path(args.out) / "checkpoints").is_dir():
        raise FileNotFoundError(f"--resume: {args.out} has no checkpoints/ folder")
    earlier = checkpoint_dirs(Path(args.out))
    if earlier and not args.resume:
        # a new run would rotate the old run's checkpoints into its own, and a later --resume could pick the old one
        raise ValueError(f"--out {args.out} holds another run's checkpoints (the newest {earlier[-1].name}): pass "
                         "--resume to continue that run, or choose another --out")
    with _media_remedy("--data", skip_flag=True):
        records, sources = read_stage_records(args.stage, args.data, args.media_root, args.modality, _on_error(args),
                                              with_sources=True)
    with _media_remedy("--eval-data", skip_flag=True):
        eval_records = (read_stage_records(args.stage, args.eval_data, args.media_root, args.modality, _on_error(args))
                        if args.eval_data else None)
    replies, reply_sources = [], []
    if args.replies:
        if args.stage != "stage2":
            raise ValueError(f"--replies is a stage-2 option (reply rows for the output projections); {args.stage} "
                             "reads its conversations from --data")
        if args.prefix_cache:
            raise ValueError("--replies with --prefix-cache: reply rows have no cached prefix; leave out --prefix-cache "
                             "(the prefix is then run without gradients in the step)")
        with _media_remedy("--replies", skip_flag=True):
            replies, reply_sources = read_stage_records("stage3", args.replies, args.media_root, None, _on_error(args),
                                                        with_sources=True)
    media_in_replies = any(t.media_in for c in replies for t in c.turns)
    needs_encoder = (args.stage != "stage2" or media_in_replies) and not args.media_cache
    swaps = [parse_decoder_arg(text) for text in args.decoder or []]
    model = _load_model(args, with_encoder=needs_encoder)
    for modality, kind, path in swaps:
        swap_decoder(model, modality, kind, path)
    if args.freeze_signal_rows:
        model.config.freeze_signal_rows = True
    cfg = RECIPES[args.stage].defaults(model.config.name)  # tiny models get CPU-sized defaults
    for f in fields(cfg):
        value = getattr(args, f"hp_{f.name}", None)
        if value is not None:
            setattr(cfg, f.name, value)
    instruction = model.config.stage1_instruction
    caches = (args.media_cache, args.target_cache, instruction, args.prefix_cache)
    dataset = build_dataset(args.stage, records, model, *caches)
    if replies:
        from torch.utils.data import ConcatDataset

        wanted = [m for m, _, _ in swaps] or ([args.modality] if args.modality else sorted({r.modality for r in records}))
        rows = build_dataset(args.stage, replies, model, *caches, replies_for=wanted)
        if not len(rows):
            raise ValueError(f"--replies {', '.join(args.replies)}: no conversation asks for {' or '.join(wanted)} "
                             "without also asking for another modality; nothing to add")
        print(f"stage2: {len(dataset)} caption rows + {len(rows)} reply rows ({' and '.join(wanted)} requests; "
              f"{rows.skipped} conversations that also ask for another modality left out)")
        sources = list(sources) + [reply_sources[i] for i in rows.kept_index]
        dataset = ConcatDataset([dataset, rows])
    dataset = check_rows(dataset, Collator(model.prompts, model.tokenizer.pad_token_id), sources,
                         skip=args.skip_bad_rows, progress=not args.quiet)
    eval_dataset = build_dataset(args.stage, eval_records, model, *caches) if eval_records else None
    result = train_stage(model, dataset, cfg, args.out, eval_dataset=eval_dataset, decoders=DecoderSet(model.config.decoders, progress=False),
                         resume=args.resume, progress=not args.quiet)
    if result.already_finished:  # --resume of a finished run: train_stage said so
        return 0
    print(f"{args.stage}: {result.steps} steps, loss {result.first_loss:.4f} -> {result.last_loss:.4f}"
          + (f", eval {result.eval_loss:.4f}" if result.eval_loss is not None else ""))
    print(f"model written to {result.output}")
    return 0


def cmd_cache(args) -> int:
    import torch

    from decoders import DecoderSet

    from .data import read_captions, target_sources
    from .features import build_media_cache, build_prefix_cache, build_target_cache, encode_media_file, media_cache_meta
    from .records import parse_data_arg, read_caption_pairs, read_conversations

    check_output_dir(args.out, "--out")
    model = _load_model(args, with_encoder=args.kind == "media")
    data = [(path, root or args.media_root) for path, root in map(parse_data_arg, args.data)]
    if args.kind == "prefixes":
        pairs = [(r.caption, r.modality) for path, _ in data for r in read_captions(path, args.modality, "raise")[0]]
        cache = build_prefix_cache(args.out, pairs, model, progress=not args.quiet)
        print(f"{args.out}: {len(cache)} entries")
        return 0
    if args.kind == "media":
        paths = []
        for path, root in data:
            with _media_remedy("--data", skip_flag=False):
                try:
                    rows, _ = read_caption_pairs(path, root)
                    paths += [r.media for r in rows]
                except ValueError as err:
                    if getattr(err, "reason", None) == "missing file" and getattr(err, "row", None) is not None:
                        raise  # a caption row whose file is not there: no other reader would find it either
                    convs, _ = read_conversations(path, root)
                    paths += [ref.path for c in convs for t in c.turns for ref in t.media_in]
        kind = model.bridge.feature_kind
        encode = functools.partial(encode_media_file, model)
        cache = build_media_cache(args.out, paths, encode, kind, media_cache_meta(model), progress=not args.quiet)
    else:
        captions: dict[str, list[str]] = {}
        for path, root in data:
            try:
                rows, _ = read_captions(path, args.modality, "raise")
                for r in rows:
                    captions.setdefault(r.modality, []).append(r.caption)
            except ValueError:
                convs, _ = read_conversations(path, root, check_files=False)
                for c in convs:
                    for t in c.turns:
                        for req in t.media_out:
                            captions.setdefault(req.modality, []).append(req.caption)
        decoders = DecoderSet(model.config.decoders, progress=False)
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
