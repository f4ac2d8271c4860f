"""``anyany`` command line: generate, chat, train, cache-features, eval, demo, convert-nextgpt."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named preset when no --checkpoint is given (tiny, nextgpt-7b, ...); with neither, "
                   "the shipped miniature model (else tiny)")
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
    from .arguments import check_device
    from .config import default_model
    from .pipeline import AnyToAnyPipeline

    check_device(args.device)
    if args.quiet:  # the libraries' own loading bars too, not only ours
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    source = args.checkpoint or args.preset or default_model()
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"{args.checkpoint}: checkpoint folder not found")
    return AnyToAnyPipeline.from_pretrained(source, device=args.device, progress=not args.quiet)


# (flag, kind, minimum, maximum): what each generation flag accepts, checked before any model loads
_GENERATION_LIMITS = {
    "seed": ("int", 0, 2**31 - 1),  # as the app and server accept
    "max_new_tokens": ("int", 1, 100_000),
    "temperature": ("float", 0.0, 100.0),
    "top_p": ("float", 0.0, 1.0),
    "steps": ("int", 1, 10_000),
    "guidance": ("float", 0.0, 1_000.0),
    "video_frames": ("int", 1, 10_000),
    "audio_seconds": ("float", 0.01, 3_600.0),
}


def _check_generation_args(args) -> None:
    from .arguments import ArgumentError, check_number

    problems = []
    for name, (kind, lo, hi) in _GENERATION_LIMITS.items():
        try:
            check_number("--" + name.replace("_", "-"), getattr(args, name), kind, lo, hi)
        except ArgumentError as err:
            problems.append(str(err))
    if problems:
        raise ArgumentError(" ".join(problems))
    if getattr(args, "out", None):  # before the model loads (chat would otherwise fail at every turn)
        from .arguments import check_output_dir

        check_output_dir(args.out)


def _call_kwargs(args) -> dict:
    return dict(
        seed=args.seed, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        num_inference_steps=args.steps, guidance_scale=args.guidance, decoder_kwargs=_decoder_kwargs(args),
    )


def _check_media(pairs) -> list[str]:
    """``(modality, path)`` pairs -> paths, each an existing file of that modality."""
    from .media import MediaError, detect_modality

    media = []
    for modality, path in pairs:
        if not Path(path).is_file():
            raise MediaError(f"{path}: {modality} file not found")
        found = detect_modality(path)
        if found != modality:
            raise MediaError(f"{path}: given as {modality} but it is a {found} file")
        media.append(path)
    return media


def _check_media_args(args) -> list[str]:
    return _check_media((m, p) for m in ("image", "video", "audio") for p in getattr(args, m) or [])


def _prompt_and_media(text: str) -> tuple[str, list[str]]:
    """The prompt checked as text, with the reference's inline <Image>path</Image> tags turned into media."""
    from .arguments import check_text
    from .inputs import split_inline_media

    text, inline = split_inline_media(check_text(text, 1_000_000, name="prompt"))
    return text, _check_media(inline)


def cmd_generate(args) -> int:
    _check_generation_args(args)
    prompt, inline = _prompt_and_media(args.prompt)
    media = inline + _check_media_args(args)
    pipe = _pipeline(args)
    result = pipe(prompt, media=media, output_dir=args.out, **_call_kwargs(args))
    print(result.text)
    for path in result.files:
        print(f"wrote {path}")
    return 0


_CHAT_HELP = """\
  /image PATH, /video PATH, /audio PATH   attach a file to your next message (or inline: <Image>PATH</Image>)
  /reset                                  forget the conversation and any attachments
  /help                                   this list
  /quit, /exit, Ctrl-D                    leave
Earlier replies stay in the conversation, so "now make it red" edits what was made last."""


def cmd_chat(args) -> int:
    from .media import MediaError
    from .pipeline import Message

    _check_generation_args(args)
    pipe = _pipeline(args)
    history: list[Message] = []
    print("anyany chat — attach media with '/image PATH', '/video PATH', '/audio PATH'; '/reset' clears; "
          "'/quit' or Ctrl-D quits; '/help' lists these.")
    pending: list[str] = []
    attach = ("/image", "/video", "/audio")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            history, pending = [], []
            print("(history and attachments cleared)")
            continue
        if line == "/help":
            print(_CHAT_HELP)
            continue
        word = line.split(" ", 1)[0]
        if re.fullmatch(r"/[A-Za-z]+", word) and word not in attach:
            # a mistyped command would otherwise go to the model as the prompt
            print(f"error: unknown command {word!r}; commands: /image PATH, /video PATH, /audio PATH, /reset, /help, /quit")
            continue
        if word in attach:
            kind, _, path = line.partition(" ")
            ns = argparse.Namespace(image=[], video=[], audio=[])
            getattr(ns, kind[1:]).append(path.strip())
            try:
                pending += _check_media_args(ns)
            except MediaError as err:
                print(f"error: {err}")
                continue
            # else the prompt came back with no answer, as if the line had been lost
            print(f"({kind[1:]} attached: {path.strip()}; it goes with your next message)")
            continue
        try:
            line, inline = _prompt_and_media(line)
            result = pipe(line, media=pending + inline, messages=history, **_call_kwargs(args))
        except (MediaError, ValueError) as err:
            print(f"error: {err}")
            continue
        pending += inline
        history += [Message("user", line, pending), Message("assistant", result.raw_text)]
        pending = []
        print(f"anyany> {result.text}")
        # the media only: the reply is on the screen (a text file per turn, unannounced, was clutter)
        for path in result.save(args.out, text=False) if result.media else []:
            print(f"        wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyany", description="NExT-GPT-style any-to-any generation.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer one prompt (+ media) and write the reply's media files")
    g.add_argument("prompt", help="the user message")
    g.add_argument("--image", action="append", help="input image file (repeatable)")
    g.add_argument("--video", action="append", help="input video file (repeatable)")
    g.add_argument("--audio", action="append", help="input audio file (repeatable)")
    g.add_argument("--out", default="outputs",
                   help="folder for the reply's media and its text, anyany-reply.txt (default: outputs; never overwritten)")
    _add_model_args(g)
    _add_generation_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="multi-turn chat in the terminal")
    c.add_argument("--out", default="outputs", help="folder for generated media (default: outputs; never overwritten)")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, before or after the subcommand
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    args = parser.parse_args(argv)
    from .extras import MissingExtra

    try:
        return args.func(args)
    except MissingExtra as err:
        print(f"anyany: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError) as err:
        # expected problems with the user's input (MediaError, DataFormatError, ArgumentError are ValueErrors)
        print(f"anyany: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anyany: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a short message, the trace kept for the bug report
        if debug:
            raise
        log = _write_trace()
        print(f"anyany: unexpected error: {type(err).__name__}: {_one_line(err)} (full traceback in {log}; "
              "--debug shows it here)", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return text.strip() or type(err).__name__


def _write_trace() -> str:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="anyany-error-", suffix=".log")
    with open(fd, "w") as fh:
        traceback.print_exc(file=fh)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
