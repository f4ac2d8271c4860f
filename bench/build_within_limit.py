"""What a 20-minute budget buys: the whole miniature build with its step counts cut to fit, judged
against the same targets, side by side with the shipped model's figures.

The full recipe (``miniature.build.BuildPlan``) took about 39 minutes on the 2-core machine of
2026-12-03, its pretraining alone about 51 minutes of one core, more than the 40 that 20 minutes of
two cores hold. (On 2026-12-05's machine, with length-grouped stage-3 batches and the fused AdamW,
the full recipe took 18.2 minutes: README, the phase table.) This runs ``anyany world build``'s own code with every frozen part at about a third of its
steps and the stages at about two thirds (``CUT_PLAN``), the same evaluation, and prints each
target's figure for this build and for the shipped model, then how many targets each meets.

    python bench/build_within_limit.py [--home DIR] [--json FILE]      # about 19 minutes
    python bench/build_within_limit.py --report DIR/report.json        # print a finished run again

Headline: the targets this build meets, of all the targets.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from miniature.build import BuildPlan, build
from miniature.ship import shipped_report, target_checks

# About 1/3 of the frozen parts' steps (51 -> about 17 minutes of one core, 9.5 min on two) and about 2/3
# of the stages' (stage 3 1600 -> 1000); the VAEs inside the decoders are cut in proportion.
CUT_PLAN = dict(imagebind_steps=400, llm_steps=600, image_steps=500, image_vae_steps=450, video_steps=800,
                video_vae_steps=500, audio_steps=500, stage_steps={"stage1": 600, "stage2": 1000, "stage3": 1000})


def side_by_side(report: dict, shipped: dict | None) -> tuple[list[str], int, int, int]:
    """Lines of (target, this build, shipped), and the targets met by each and in all."""
    ours = target_checks(report)
    theirs = {what: value for what, value, _ in target_checks(shipped or {})}
    lines = [f"{'target':<52}{'cut build':>10}{'shipped':>9}{'target':>8}"]
    for what, value, target in ours:
        old = theirs.get(what)
        lines.append(f"{what:<52}{value:>10.1%}{'-' if old is None else f'{old:.1%}':>9}{f'≥ {target:.0%}':>8}"
                     + ("" if value >= target - 1e-9 else "  missed"))
    met = sum(value >= target - 1e-9 for _, value, target in ours)
    met_shipped = sum(theirs.get(what, -1) >= target - 1e-9 for what, _, target in ours)
    return lines, met, met_shipped, len(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default=None, help="the build's home (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the build's report here")
    parser.add_argument("--report", default=None, help="a finished run's report.json: print it again, build nothing")
    args = parser.parse_args()

    if args.report:
        report = json.loads(Path(args.report).read_text())
    else:
        home = Path(args.home or tempfile.mkdtemp(prefix="anyany-cut-"))
        t = time.time()
        report = build(home, plan=BuildPlan(**CUT_PLAN), progress=True)
        print(f"built in {(time.time() - t) / 60:.1f} min in {home}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    seconds = report.get("seconds", {})
    print("\nphases (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items() if not k.startswith("pretrain ")
                                         or k == "pretrain wall"))
    print("frozen parts (min of one core): " + ", ".join(f"{k[9:]} {v / 60:.1f}" for k, v in seconds.items()
                                                      if k.startswith("pretrain ") and k != "pretrain wall"))
    lines, met, met_shipped, total = side_by_side(report, shipped_report())
    print("\n" + "\n".join(lines))
    print(f"\nshipped model (full recipe): {met_shipped} of {total} targets; this build "
          f"({seconds.get('total', float('nan')) / 60:.1f} min): {met} of {total}")
    print(f"targets_met_by_a_build_cut_to_20_min: {met}/{total}")


if __name__ == "__main__":
    main()
