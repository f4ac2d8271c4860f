"""Does the miniature model make what a new request names when earlier turns made something else?

Every combination of every medium (train and held-out) is asked for in words, as ``anyany eval``
asks ("draw a red circle on the left"), once with no history and once after a conversation: the
first one to three turns of the held-out edit scripts ("draw …" → "now make it red" → "now animate
it moving up"), with the model's own replies and their signal tokens as the history, and once
after such a conversation that then asked about an attached file ("What is in this image?", with
the model's answer). A reply is right when it makes one medium, of the modality asked, with every
attribute the checkers judge right. The three are printed side by side for each model given.

    python bench/new_request_mid_conversation.py                         # the shipped model
    python bench/new_request_mid_conversation.py --checkpoint HOME/model --checkpoint shipped

Headline: the share right after a history, for the first model given.
"""
from __future__ import annotations

import argparse

import numpy as np

from anyany.pipeline import AnyToAnyPipeline, Message
from miniature import edits, spec
from miniature import evaluate_edits as ee
from miniature.data import DESCRIBE, REQUEST
from miniature.ship import shipped_model

EVERY = {"image": spec.all_images, "video": spec.all_videos, "audio": spec.all_audios}


def with_a_question(pipe: AnyToAnyPipeline, convs: list[list], seed: int = 0) -> list[list]:
    """Each conversation, then a question about a file of the world attached (the modalities in
    turn), with the model's answer."""
    rng = np.random.default_rng(seed)
    calls = []
    for k, conv in enumerate(convs):
        m = ("image", "video", "audio")[k % 3]
        items = EVERY[m]()
        medium = ee.medium_in_memory(m, items[int(rng.integers(len(items)))], rng)
        calls.append((DESCRIBE[m][k % len(DESCRIBE[m])], [medium], conv, k))
    outs = ee.ask_all(pipe, [(text, media, list(conv), k) for text, media, conv, k in calls])
    return [conv + [Message("user", text, media), Message("assistant", out.raw_text)]
            for (text, media, conv, _), out in zip(calls, outs)]


def judge(pipe: AnyToAnyPipeline) -> dict:
    """Per modality: [asked, right alone, right after a history, right modality after a history,
    right after a history that ends in a question about a file]."""
    convs = ee.edit_histories(pipe, [1 + k % 3 for k in range(12)])
    asked_about = with_a_question(pipe, convs)
    counts = {}
    for m, every in EVERY.items():
        items = every()
        texts = [REQUEST[m][k % len(REQUEST[m])].format(c=item.caption) for k, item in enumerate(items)]
        alone = ee.ask_all(pipe, [(text, (), None, k) for k, text in enumerate(texts)])
        after = ee.ask_all(pipe, [(text, (), list(convs[k % len(convs)]), k) for k, text in enumerate(texts)])
        after_q = ee.ask_all(pipe, [(text, (), list(asked_about[k % len(convs)]), k) for k, text in enumerate(texts)])
        counts[m] = [len(items), sum(ee.makes_only(o, edits.Expect(m, it)) for o, it in zip(alone, items)),
                     sum(ee.makes_only(o, edits.Expect(m, it)) for o, it in zip(after, items)),
                     sum([x.modality for x in o.media] == [m] for o in after),
                     sum(ee.makes_only(o, edits.Expect(m, it)) for o, it in zip(after_q, items))]
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", help="model folder, or 'shipped' (default: the shipped model)")
    args = parser.parse_args(argv)
    first = None
    for name in args.checkpoint or ["shipped"]:
        folder = shipped_model() if name == "shipped" else name
        counts = judge(AnyToAnyPipeline.from_pretrained(str(folder), progress=False))
        print(f"{name}: new requests right (one medium, every attribute), alone and after 1-3 earlier turns")
        for m, (n, alone, after, modality, after_q) in counts.items():
            print(f"  {m:<6} alone {alone:>2}/{n}   after a history {after:>2}/{n}   (right modality {modality}/{n})"
                  f"   after a history and a question {after_q:>2}/{n}")
        n, alone, after, _, after_q = (sum(v[i] for v in counts.values()) for i in range(5))
        print(f"  all    alone {alone}/{n} ({alone / n:.0%})   after a history {after}/{n} ({after / n:.0%})"
              f"   after a history and a question {after_q}/{n} ({after_q / n:.0%})")
        if first is None:
            first = after / n
    print(f"new_requests_after_history_right: {first:.3f}")


if __name__ == "__main__":
    main()
