"""``anyany`` command line: generate, chat, train, cache-features, eval, demo, convert-nextgpt."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="named preset when no --checkpoint is given (tiny, nextgpt-7b, ...)")
    p.add_argument("--checkpoint", help="folder written by save_pretrained / a training stage (overrides --preset)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed for LLM sampling and every decoder (default 0)")
    p.add_argument("--max-new-tokens", type=int, help="LLM reply length cap (default from config)")
    p.add_argument("--temperature", type=float, help="0 = greedy (default from config)")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold")
    p.add_argument("--steps", type=int, help="diffusion steps for every decoder (default per decoder config)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale for every decoder")
    p.add_argument("--video-frames", type=int, help="frames of generated video")
    p.add_argument("--audio-seconds", type=float, help="length of generated audio in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _decoder_kwargs(args) -> dict:
    return {"video": {"num_frames": args.video_frames}, "audio": {"audio_length_s": args.audio_seconds}}


def _pipeline(args):
    from .pipeline import AnyToAnyPipeline

    source = args.checkpoint or args.preset
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"{args.checkpoint}: checkpoint folder not found")
    return AnyToAnyPipeline.from_pretrained(source, device=args.device, progress=not args.quiet)


def _call_kwargs(args) -> dict:
    return dict(
        seed=args.seed, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        num_inference_steps=args.steps, guidance_scale=args.guidance, decoder_kwargs=_decoder_kwargs(args),
    )


def _check_media_args(args) -> list[str]:
    from .media import MediaError, detect_modality

    media = []
    for modality, paths in (("image", args.image), ("video", args.video), ("audio", args.audio)):
        for path in paths or []:
            if not Path(path).is_file():
                raise MediaError(f"{path}: file not found")
            found = detect_modality(path)
            if found != modality:
                raise MediaError(f"{path}: passed as --{modality} but it is a {found} file")
            media.append(path)
    return media


def cmd_generate(args) -> int:
    media = _check_media_args(args)
    pipe = _pipeline(args)
    result = pipe(args.prompt, media=media, output_dir=args.out, **_call_kwargs(args))
    print(result.text)
    for path in result.files:
        print(f"wrote {path}")
    return 0


def cmd_chat(args) -> int:
    from .media import MediaError
    from .pipeline import Message

    pipe = _pipeline(args)
    history: list[Message] = []
    print("anyany chat — attach media with '/image PATH', '/video PATH', '/audio PATH'; '/reset' clears; Ctrl-D quits.")
    pending: list[str] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line == "/reset":
            history, pending = [], []
            continue
        if line.split(" ", 1)[0] in ("/image", "/video", "/audio"):
            kind, _, path = line.partition(" ")
            ns = argparse.Namespace(image=[], video=[], audio=[])
            getattr(ns, kind[1:]).append(path.strip())
            try:
                pending += _check_media_args(ns)
            except MediaError as err:
                print(f"error: {err}")
            continue
        try:
            result = pipe(line, media=pending, messages=history, output_dir=args.out, **_call_kwargs(args))
        except (MediaError, ValueError) as err:
            print(f"error: {err}")
            continue
        history += [Message("user", line, pending), Message("assistant", result.raw_text)]
        pending = []
        print(f"anyany> {result.text}")
        for path in result.files[:-1]:
            print(f"        wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyany", description="NExT-GPT-style any-to-any generation.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer one prompt (+ media) and write the reply's media files")
    g.add_argument("prompt", help="the user message")
    g.add_argument("--image", action="append", help="input image file (repeatable)")
    g.add_argument("--video", action="append", help="input video file (repeatable)")
    g.add_argument("--audio", action="append", help="input audio file (repeatable)")
    g.add_argument("--out", default="outputs", help="folder for the reply's files (never overwritten)")
    _add_model_args(g)
    _add_generation_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="multi-turn chat in the terminal")
    c.add_argument("--out", default="outputs", help="folder for generated files")
    _add_model_args(c)
    _add_generation_args(c)
    c.set_defaults(func=cmd_chat)

    for register in _registered_commands():
        register(sub)
    return parser


COMMAND_GROUP = "anyany.commands"


def _registered_commands() -> list:
    """``register(subparsers)`` functions of the installed packages that add subcommands (train,
    cache-features, convert-nextgpt, world, serve, ...): an entry-point group, so this core module
    never imports the layers that own them."""
    from importlib.metadata import entry_points

    found = sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name)
    return [ep.load() for ep in found]


def main(argv=None) -> int:
    from .media import MediaError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (MediaError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"anyany: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
