"""Does the miniature model answer a question about a medium in lower case as it does capitalised?

The world's questions about media ("What is in this image?") are all capitalised and its requests
("draw a blue square") all lower-case, so a model can take the first letter as the cue and draw an
image when asked "what is in this image?" (docs/miniature.md). This asks every image, video and sound of the world
(train and held-out combinations, rendered afresh) one of the world's questions about it, once
capitalised and once in lower case, and counts the replies that describe it: no medium generated,
and the reply names every attribute of the item (its caption). The two cases are printed side by
side for each model given.

    python bench/question_case.py                                  # the shipped model
    python bench/question_case.py --checkpoint HOME/model --checkpoint shipped

Headline: the share of lower-case questions described, for the first model given.
"""
from __future__ import annotations

import argparse

import numpy as np
from anyany.pipeline import AnyToAnyPipeline
from miniature import evaluate_edits as ee
from miniature import spec
from miniature.data import DESCRIBE
from miniature.ship import shipped_model


def _media(rng: np.random.Generator):
    """(modality, item, in-memory medium) for every item of the world."""
    for m, every in (("image", spec.all_images), ("video", spec.all_videos), ("audio", spec.all_audios)):
        for item in every():
            yield m, item, ee.medium_in_memory(m, item, rng)


def judge(pipe: AnyToAnyPipeline, seed: int = 0) -> dict:
    """Per case ("capitalised", "lower-case", "after a history") and modality: questions asked,
    replies that describe."""
    rng = np.random.default_rng(seed)
    cases = ("capitalised", "lower-case", "after a history")
    counts = {case: {m: [0, 0] for m in ("image", "video", "audio")} for case in cases}
    histories = ee.edit_histories(pipe, [1 + k % 3 for k in range(12)])
    for k, (m, item, medium) in enumerate(_media(rng)):
        question = DESCRIBE[m][k % len(DESCRIBE[m])]  # the world's questions in turn, its caption request too
        for case, text, history in (("capitalised", question, None),
                                    ("lower-case", question[0].lower() + question[1:], None),
                                    ("after a history", question, histories[k % len(histories)])):
            out = pipe(text, media=[medium], messages=None if history is None else list(history), seed=seed)
            counts[case][m][0] += 1
            counts[case][m][1] += int(not out.media and item.caption in out.text)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", help="model folder, or 'shipped' (default: the shipped model)")
    args = parser.parse_args(argv)
    names = args.checkpoint or ["shipped"]
    first = None
    for name in names:
        folder = shipped_model() if name == "shipped" else name
        counts = judge(AnyToAnyPipeline.from_pretrained(str(folder), progress=False))
        print(f"{name}: replies that describe the medium (no medium made, every attribute named)")
        for m in ("image", "video", "audio"):
            cells = "   ".join(f"{case} {counts[case][m][1]:>2}/{counts[case][m][0]}" for case in counts)
            print(f"  {m:<6} {cells}")
        totals = {case: [sum(v[i] for v in counts[case].values()) for i in (0, 1)] for case in counts}
        print("  all    " + "   ".join(f"{case} {t[1]}/{t[0]} ({t[1] / t[0]:.0%})" for case, t in totals.items()))
        if first is None:
            first = totals["lower-case"][1] / totals["lower-case"][0]
    print(f"lowercase_questions_described: {first:.3f}")


if __name__ == "__main__":
    main()
