"""``anyany world build``, ``anyany demo`` and ``anyany eval``: the miniature world from the command line."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    w = sub.add_parser("world", help="the miniature world: build (train everything end to end on a CPU)")
    wsub = w.add_subparsers(dest="world_command", required=True)
    b = wsub.add_parser("build", help="world -> pretraining of frozen parts -> stages 1-3 -> held-out evaluation")
    _home_args(b)
    b.add_argument("--quick", action="store_true", help="the reduced CI-sized run: frozen parts cut short, stages in full (about 13 minutes on 2 cores)")
    b.add_argument("--seed", type=int, default=0, help="the world's and every part's seed (the same seed builds the same model on one machine)")
    b.add_argument("--workers", type=int, default=2, help="parallel single-thread pretraining jobs (one per core)")
    b.add_argument("--no-ship", action="store_true",
                   help="do not copy the built model into the package (a full build ships it; --quick never does)")
    b.add_argument("--llm", choices=("llama", "qwen2"), default="llama",
                   help="the frozen LLM's core: llama (Vicuna-v0 prompts, the default) or qwen2 (ChatML, its chat "
                        "template; never shipped)")
    b.add_argument("--frozen-from", metavar="HOME",
                   help="reuse that build's trained ImageBind and decoders (copied); only the LLM is pretrained")
    b.set_defaults(func=cmd_build)

    d = sub.add_parser("demo", help="answer a prompt with the shipped miniature model (a package without one builds it first)")
    d.add_argument("prompt", nargs="?", default="draw a blue square on the left and play a low steady tone",
                   help="what to ask, in the world's words: shapes, colours, positions, motions, tones "
                        "(default: %(default)r)")
    d.add_argument("--out", default="outputs", help="folder for the reply's files")
    d.add_argument("--seed", type=int, default=0, help="generation seed (the same seed writes the same files)")
    d.add_argument("--checkpoint", help="model folder to answer with (default: the shipped model, else HOME/model)")
    _home_args(d)
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("eval", help="held-out evaluation of a miniature-world model")
    _home_args(e)
    e.add_argument("--checkpoint", help="model folder to evaluate (default: HOME/model; 'shipped': the shipped model)")
    e.add_argument("--seeds", type=int, default=1, help="end-to-end generations per held-out item")
    e.add_argument("--as-built", action="store_true",
                   help="the build's own evaluation (its seeds and request counts), e.g. to judge a built model again")
    e.add_argument("--json", help="also write the report here")
    e.set_defaults(func=cmd_eval)

    s = wsub.add_parser("swap-decoder", help="swap the built model's image decoder for an SD3-style one, stage 2 only "
                                             "(trained and frozen signal rows), and evaluate held out")
    _home_args(s)
    s.add_argument("--family", default="sd3", choices=["sd3"], help="family of the new image decoder")
    s.add_argument("--steps", type=int, default=None, help="training steps of the new decoder (default: its recipe's)")
    s.add_argument("--quick", action="store_true", help="CI-sized budgets (a minute; numbers not meaningful)")
    s.set_defaults(func=cmd_swap_decoder)


def _home_args(p) -> None:
    from .build import DEFAULT_HOME

    p.add_argument("--home", default=str(DEFAULT_HOME), help=f"where the world and models live (default {DEFAULT_HOME})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_build(args) -> int:
    from anyany.arguments import check_output_dir

    from .build import build, format_report
    from .ship import compare_reports, ship, shipped_report

    check_output_dir(args.home, "--home")
    report = build(args.home, quick=args.quick, seed=args.seed, workers=args.workers, progress=not args.quiet,
                   llm=args.llm, frozen_from=args.frozen_from)
    print(format_report(report))
    for phase, seconds in report["seconds"].items():
        print(f"time {phase}: {seconds / 60:.2f} min")
    if not args.quick:
        print("compared with the shipped model:")
        for line in compare_reports(report, shipped_report()):
            print(f"  {line}")
        if args.llm != "llama":  # the shipped model, the demo and the app are the LLaMA world
            print(f"not shipped: a --llm {args.llm} build stays in {args.home}")
        elif not args.no_ship:
            try:
                shipped = ship(args.home)
                print(f"shipped the model into {shipped['path']} ({shipped['bytes'] / 2**20:.1f} MiB)")
            except (OSError, ValueError) as exc:  # a read-only install or an over-size copy keeps the old one
                print(f"not shipped: {exc}")
    print(f"miniature_total_minutes: {report['seconds']['total'] / 60:.2f}")
    return 0


def _demo_pipeline(args):
    from anyany.pipeline import AnyToAnyPipeline
    from .build import MODEL, build
    from .ship import load_shipped, ship, shipped_model

    if args.checkpoint:
        return AnyToAnyPipeline.from_pretrained(args.checkpoint, progress=not args.quiet)
    if shipped_model() is not None:
        return load_shipped(progress=not args.quiet)
    home = Path(args.home)
    if not (home / MODEL / "anyany_config.json").is_file():
        print(f"no shipped model and none in {home}: training it now (about 40 minutes on 2 quiet cores; cached afterwards)")
        build(home, progress=not args.quiet)
        try:  # so that the app and the next demo start at once
            print(f"shipped the model into {ship(home)['path']}")
        except (OSError, ValueError) as exc:
            print(f"not shipped ({exc}); using {home / MODEL}")
    return AnyToAnyPipeline.from_pretrained(str(home / MODEL), progress=not args.quiet)


def cmd_demo(args) -> int:
    from .progress import quiet_libraries

    quiet_libraries()
    pipe = _demo_pipeline(args)
    result = pipe(args.prompt, seed=args.seed, output_dir=args.out)
    print(result.text)
    for path in result.files:
        print(f"wrote {path}")
    return 0


def cmd_eval(args) -> int:
    from .build import MODEL, BuildPlan, evaluate_world, format_report
    from .data import write_world
    from .progress import quiet_libraries
    from .ship import shipped_model, target_summary

    quiet_libraries()
    home, checkpoint = Path(args.home), args.checkpoint
    if checkpoint == "shipped":
        checkpoint = shipped_model()
        if checkpoint is None:
            raise SystemExit("--checkpoint shipped: no model is shipped yet; run `anyany world build`")
    if checkpoint is None and not (home / MODEL / "anyany_config.json").is_file():
        raise SystemExit(f"anyany eval: --home {home} holds no built model ({home / MODEL} is missing); "
                         "give the home of an `anyany world build`, or --checkpoint FOLDER / --checkpoint shipped")
    if not (home / "world" / "heldout" / "cc3m.json").is_file():
        write_world(home / "world")  # the held-out files the evaluation reads (seconds)
    plan = BuildPlan() if args.as_built else None
    report = evaluate_world(home, checkpoint, progress=not args.quiet, seeds=plan.eval_seeds if plan else args.seeds, plan=plan)
    print(format_report(report))
    print(target_summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def cmd_swap_decoder(args) -> int:
    from .swap import format_swap_report, swap_decoder_in_world

    report = swap_decoder_in_world(args.home, family=args.family, steps=args.steps, quick=args.quick,
                                   progress=not args.quiet)
    print(format_swap_report(report))
    print(f"report written to {Path(args.home) / 'swap_report.json'}")
    return 0
